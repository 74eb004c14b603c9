"""Index directories: one folder per built index, described by a ``manifest.json``, loaded as a ``Retriever``.

Layout (``kind`` is bm25, dense or hybrid; hybrid has both sub-folders)::

    DIR/manifest.json      format version, kind, corpus path + sha256 + passage count, encoder, FAISS kind, time
    DIR/passages.arrow     the memory-mapped PassageStore (the only copy of the corpus)
    DIR/bm25/              bm25s index files
    DIR/dense/             embedding shards (embeddings/shard_*.npy) and faiss.index

The manifest is written last, so a directory whose build stopped part-way has none and ``load_index``
refuses it; re-running the build resumes dense encoding from the shards already written.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from retriever_server.base import Retriever
from retriever_server.bm25 import BM25Index
from retriever_server.dense import FAISS_KINDS, DenseIndex, encoder_for
from retriever_server.hybrid import HybridRetriever, Reranker
from retriever_server.store import PassageStore

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STORE_FILE = "passages.arrow"
BM25_DIR = "bm25"
DENSE_DIR = "dense"
INDEX_KINDS = ("bm25", "dense", "hybrid")


class IndexDirError(ValueError):
    """An index directory that cannot be loaded: no or unreadable manifest, another version, inconsistent parts."""


def file_sha256(path: str | Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def build_index(
    corpus_path: str | Path,
    kind: str,
    out_dir: str | Path,
    *,
    encoder: str = "minilm",
    faiss: str = "flat",
    batch_size: int = 64,
    chunk_rows: int = 10_000,
    device: str | None = None,
    language: str = "english",
    progress: bool = True,
    bm25_k1: float = 1.5,
    bm25_b: float = 0.75,
) -> dict[str, Any]:
    """Build an index directory of ``kind`` over a corpus file; returns the manifest written."""
    if kind not in INDEX_KINDS:
        raise ValueError(f"unknown index kind {kind!r}; choose one of {', '.join(INDEX_KINDS)}")
    if kind != "bm25" and faiss not in FAISS_KINDS:
        raise ValueError(f"unknown FAISS index kind {faiss!r}; choose one of {', '.join(FAISS_KINDS)}")
    if not Path(corpus_path).is_file():
        raise FileNotFoundError(f"corpus file not found: {corpus_path}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # A rebuild replaces the old manifest only at the end: until then the directory does not load.
    (out / MANIFEST).unlink(missing_ok=True)
    checksum = file_sha256(corpus_path)
    store = PassageStore.build(corpus_path, out / STORE_FILE)
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "corpus": {"path": str(Path(corpus_path).resolve()), "sha256": checksum, "passages": len(store)},
        "store": STORE_FILE,
    }
    if kind in ("bm25", "hybrid"):
        BM25Index.build(store, language=language, k1=bm25_k1, b=bm25_b).save(out / BM25_DIR, with_corpus=False)
        manifest["bm25"] = {"language": language, "library": "bm25s", "k1": bm25_k1, "b": bm25_b}
    if kind in ("dense", "hybrid"):
        model = encoder_for(encoder, device=device, batch_size=batch_size)
        dense = DenseIndex.build(
            store,
            model,
            out / DENSE_DIR,
            kind=faiss,
            chunk_rows=chunk_rows,
            corpus_checksum=checksum,
            progress=progress,
        )
        manifest["dense"] = {
            "encoder": encoder,
            "encoder_path": model.path,
            "dim": model.dim,
            "pooling": model.family.pooling,
            "query_prefix": model.family.query_prefix,
            "passage_prefix": model.family.passage_prefix,
            "faiss": faiss,
            "bytes_per_vector": dense.describe()["bytes_per_vector"],
        }
    manifest["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(index_dir: str | Path) -> dict[str, Any]:
    """The validated manifest of an index directory; raises ``IndexDirError`` naming what is wrong."""
    path = Path(index_dir) / MANIFEST
    if not path.is_file():
        raise IndexDirError(f"{index_dir}: no {MANIFEST} (not an index directory, or its build did not finish)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise IndexDirError(f"{path}: corrupt manifest, not valid JSON ({error})") from error
    if not isinstance(manifest, dict):
        raise IndexDirError(f"{path}: corrupt manifest, expected a JSON object")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise IndexDirError(f"{path}: index format version {version!r}; this code reads {FORMAT_VERSION} (rebuild)")
    if manifest.get("kind") not in INDEX_KINDS:
        raise IndexDirError(f"{path}: unknown index kind {manifest.get('kind')!r}")
    missing = [key for key in ("corpus", "store", *_parts(manifest["kind"])) if key not in manifest]
    if missing:
        raise IndexDirError(f"{path}: manifest lacks {', '.join(missing)}")
    return manifest


def _parts(kind: str) -> tuple[str, ...]:
    return {"bm25": ("bm25",), "dense": ("dense",), "hybrid": ("bm25", "dense")}[kind]


def open_store(index_dir: str | Path) -> PassageStore:
    """The passage store of an index directory alone (passage texts by row or id), without loading the index."""
    index_dir = Path(index_dir)
    return _open_store(index_dir, read_manifest(index_dir))


def _open_store(index_dir: Path, manifest: dict[str, Any]) -> PassageStore:
    try:
        store = PassageStore.open(index_dir / manifest["store"])
    except (FileNotFoundError, ValueError) as error:
        raise IndexDirError(f"{index_dir}: cannot open the passage store: {error}") from error
    expected = manifest["corpus"].get("passages")
    if len(store) != expected:
        raise IndexDirError(f"{index_dir}: manifest says {expected} passages but the store holds {len(store)}")
    return store


def _load_dense(index_dir: Path, store: PassageStore, spec: dict[str, Any], device: str | None) -> DenseIndex:
    encoder = encoder_for(spec["encoder"], device=device)
    if encoder.dim != spec["dim"] or encoder.family.pooling != spec["pooling"]:
        raise IndexDirError(
            f"{index_dir}: encoder {spec['encoder']!r} now gives dim {encoder.dim} / {encoder.family.pooling} pooling, "
            f"the index was built with dim {spec['dim']} / {spec['pooling']}"
        )
    try:
        return DenseIndex.load(store, encoder, index_dir / DENSE_DIR, kind=spec["faiss"])
    except (FileNotFoundError, ValueError) as error:
        raise IndexDirError(f"{index_dir}: dense index unusable: {error}") from error


def load_index(
    index_dir: str | Path,
    *,
    device: str | None = None,
    reranker: str | Path | None = None,
    ef_search: int | None = None,
    nprobe: int | None = None,
) -> Retriever:
    """Open an index directory as a ``Retriever`` (BM25Index, DenseIndex or HybridRetriever)."""
    index_dir = Path(index_dir)
    manifest = read_manifest(index_dir)
    store = _open_store(index_dir, manifest)
    parts: dict[str, Retriever] = {}
    if "bm25" in _parts(manifest["kind"]):
        parts["bm25"] = BM25Index.load(index_dir / BM25_DIR, passages=store, mmap=True)
    if "dense" in _parts(manifest["kind"]):
        dense = _load_dense(index_dir, store, manifest["dense"], device)
        dense.set_search_params(ef_search=ef_search, nprobe=nprobe)
        parts["dense"] = dense
    if manifest["kind"] == "hybrid":
        return HybridRetriever(parts["bm25"], parts["dense"], reranker=Reranker(reranker) if reranker else None)
    return parts[manifest["kind"]]
