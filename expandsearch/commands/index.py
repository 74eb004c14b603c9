"""``expandsearch index``: build a BM25, dense or hybrid index directory over a corpus file."""

from __future__ import annotations

import argparse
import time

HELP = "build a retrieval index directory (bm25, dense or hybrid) over a corpus file (jsonl, json list, DPR tsv)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", required=True, help="corpus file: wiki-18 jsonl, {id,title,text} jsonl, json, tsv")
    parser.add_argument("--kind", required=True, choices=["bm25", "dense", "hybrid"], help="index kind")
    parser.add_argument("--out", required=True, help="index directory to write (created if missing)")
    parser.add_argument("--encoder", default="minilm", help="dense encoder: 'minilm' or a local model directory")
    parser.add_argument("--faiss", default="flat", choices=["flat", "hnsw", "ivfpq", "sq8"], help="FAISS index kind")
    parser.add_argument("--batch-size", type=int, default=64, help="encoder batch size (default 64)")
    parser.add_argument("--chunk-rows", type=int, default=10_000, help="passages per embedding shard (default 10000)")
    parser.add_argument("--device", default=None, help="torch device for the encoder (default: cuda if available)")
    parser.add_argument("--k1", type=float, default=1.5, help="BM25 k1 (default 1.5, bm25s'; BEIR anchors: 0.9)")
    parser.add_argument("--b", type=float, default=0.75, help="BM25 b (default 0.75, bm25s'; BEIR anchors: 0.4)")


def run(args: argparse.Namespace) -> int:
    from retriever_server.index_dir import build_index

    if args.batch_size < 1 or args.chunk_rows < 1:
        raise ValueError("--batch-size and --chunk-rows must be >= 1")
    if args.k1 < 0 or not 0 <= args.b <= 1:
        raise ValueError(f"--k1 must be >= 0 and --b in [0, 1], got {args.k1} and {args.b}")
    started = time.perf_counter()
    manifest = build_index(
        args.corpus,
        args.kind,
        args.out,
        encoder=args.encoder,
        faiss=args.faiss,
        batch_size=args.batch_size,
        chunk_rows=args.chunk_rows,
        device=args.device,
        bm25_k1=args.k1,
        bm25_b=args.b,
    )
    dense = manifest.get("dense")
    detail = f", encoder {dense['encoder']} (dim {dense['dim']}), faiss {dense['faiss']}" if dense else ""
    print(
        f"{manifest['kind']} index of {manifest['corpus']['passages']} passages{detail} "
        f"written to {args.out} in {time.perf_counter() - started:.1f} s"
    )
    return 0
