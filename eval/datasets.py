"""Which QA files an evaluation reads: ``--datasets`` names resolved against ``--data-dir``, or explicit files.

``expandsearch prepare qa --dataset NAME --out DIR/NAME`` writes ``DIR/NAME/{split}.jsonl`` (FlashRAG layout) and
``expandsearch world --out DIR/world`` writes ``DIR/world/{train,validation,test}.jsonl``, so a name resolves to
``DATA_DIR/NAME/SPLIT.jsonl``; when the split is ``test`` and there is no test file (many benchmarks publish only
their dev set), ``dev.jsonl`` is used and the note says so. ``NAME=PATH.jsonl`` takes an explicit file::

    specs = resolve_datasets("nq,hotpotqa,bamboogle=/data/bamboogle.jsonl", data_dir=Path("data"), split="test")
    datasets = [load_dataset(spec, limit=100) for spec in specs]

Example ids must be unique within a file: results are resumed by id.

A distractor set's ``metadata["supporting_ids"]`` are ids in the ``corpus.jsonl`` that ``prepare qa`` wrote next to
the questions; :func:`for_index_corpus` drops them when the index was built over another corpus (HotpotQA
questions against wiki-18, say), where the same ids name unrelated passages, so recall falls back to titles.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from data_prep.benchmarks import CORPUS_FILE
from data_prep.formats import QAExample, read_qa_jsonl

SPLIT_FALLBACKS: dict[str, tuple[str, ...]] = {"test": ("dev",)}
"""Splits tried, in order, when the asked one has no file."""

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class DatasetError(ValueError):
    """A dataset that cannot be found or read as named (one line for the user)."""


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset's name (its folder under the output directory) and the QA file it is read from."""

    name: str
    path: Path
    note: str = ""
    """How the file was chosen, when that is worth saying (``no test.jsonl, using dev.jsonl``)."""


@dataclass(frozen=True)
class EvalDataset:
    """A resolved dataset with its examples (the first ``limit`` of the file)."""

    spec: DatasetSpec
    examples: tuple[QAExample, ...]

    @property
    def name(self) -> str:
        return self.spec.name


def resolve_datasets(names: str, data_dir: str | Path | None, split: str = "test") -> list[DatasetSpec]:
    """Resolve a comma-separated ``--datasets`` value; raises :class:`DatasetError` naming what is missing."""
    items = [item.strip() for item in names.split(",") if item.strip()]
    if not items:
        raise DatasetError("--datasets is empty; name at least one dataset")
    specs = [_resolve_one(item, None if data_dir is None else Path(data_dir), split) for item in items]
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise DatasetError(f"dataset {spec.name!r} is named twice in --datasets")
        seen.add(spec.name)
    return specs


def _resolve_one(item: str, data_dir: Path | None, split: str) -> DatasetSpec:
    name, explicit = (part.strip() for part in item.split("=", 1)) if "=" in item else (item, "")
    if not _NAME_RE.match(name):
        raise DatasetError(f"dataset name {name!r} must be letters, digits, '_', '.' or '-' (it names a folder)")
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise DatasetError(f"dataset {name}: no file {path}")
        return DatasetSpec(name, path.resolve())
    if data_dir is None:
        raise DatasetError(f"dataset {name}: give --data-dir DIR (reads DIR/{name}/{split}.jsonl) or {name}=FILE.jsonl")
    return _split_file(name, data_dir / name, split)


def split_candidates(split: str) -> tuple[str, ...]:
    """The split files looked for, in order: ``split`` itself, then its :data:`SPLIT_FALLBACKS`."""
    return (split, *SPLIT_FALLBACKS.get(split, ()))


def find_split_file(name: str, folder: Path, split: str) -> DatasetSpec | None:
    """``folder/{split}.jsonl``, else the first fallback that exists (the note says which); None when none does."""
    for index, candidate in enumerate(split_candidates(split)):
        path = folder / f"{candidate}.jsonl"
        if path.is_file():
            return DatasetSpec(name, path.resolve(), f"no {split}.jsonl, using {candidate}.jsonl" if index else "")
    return None


def _split_file(name: str, folder: Path, split: str) -> DatasetSpec:
    found = find_split_file(name, folder, split)
    if found is not None:
        return found
    candidates = split_candidates(split)
    tried = " nor ".join(str(folder / f"{candidate}.jsonl") for candidate in candidates)
    raise DatasetError(
        f"dataset {name}: neither {tried} exists" if len(candidates) > 1 else f"dataset {name}: no {tried}"
    )


def load_dataset(spec: DatasetSpec, limit: int | None = None) -> EvalDataset:
    """Read a dataset's FlashRAG file (its first ``limit`` examples); raises DatasetError for bad or clashing ids."""
    try:
        examples = read_qa_jsonl(spec.path)
    except (ValueError, OSError) as error:
        raise DatasetError(f"dataset {spec.name}: {error}") from error
    _check_unique_ids(spec, examples)
    return EvalDataset(spec, tuple(examples[:limit] if limit is not None else examples))


def _check_unique_ids(spec: DatasetSpec, examples: Sequence[QAExample]) -> None:
    seen: set[str] = set()
    for example in examples:
        if example.id in seen:
            raise DatasetError(f"dataset {spec.name}: example id {example.id!r} occurs twice in {spec.path}")
        seen.add(example.id)


def for_index_corpus(dataset: EvalDataset, corpus_sha256: str | None) -> EvalDataset:
    """``dataset`` as it can be scored against an index over the corpus with checksum ``corpus_sha256``.

    When the questions' own context corpus (``corpus.jsonl`` beside their file) is known and differs from the
    index's corpus, their ``supporting_ids`` would name unrelated passages there: they are dropped, so recall is
    measured by ``supporting_titles``. Unknown either side (a retriever server, a file without a corpus beside
    it), the ids are trusted and the dataset is returned as it is.
    """
    # imported here: retriever_server.index_dir loads every index module, which reading QA files never needs
    from retriever_server.index_dir import file_sha256

    corpus = dataset.spec.path.parent / CORPUS_FILE
    if corpus_sha256 is None or not corpus.is_file() or file_sha256(corpus) == corpus_sha256:
        return dataset
    return replace(dataset, examples=tuple(_without_supporting_ids(example) for example in dataset.examples))


def _without_supporting_ids(example: QAExample) -> QAExample:
    metadata = {key: value for key, value in example.metadata.items() if key != "supporting_ids"}
    return replace(example, metadata=metadata)
