"""Which QA files an evaluation reads: ``--datasets`` names resolved against ``--data-dir``, or explicit files.

``expandsearch prepare qa --dataset NAME --out DIR/NAME`` writes ``DIR/NAME/{split}.jsonl`` (FlashRAG layout) and
``expandsearch world --out DIR/world`` writes ``DIR/world/{train,validation,test}.jsonl``, so a name resolves to
``DATA_DIR/NAME/SPLIT.jsonl``; when the split is ``test`` and there is no test file (many benchmarks publish only
their dev set), ``dev.jsonl`` is used and the note says so. ``NAME=PATH.jsonl`` takes an explicit file::

    specs = resolve_datasets("nq,hotpotqa,bamboogle=/data/bamboogle.jsonl", data_dir=Path("data"), split="test")
    datasets = [load_dataset(spec, limit=100) for spec in specs]

Example ids must be unique within a file: results are resumed by id.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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


def _split_file(name: str, folder: Path, split: str) -> DatasetSpec:
    candidates = (split, *SPLIT_FALLBACKS.get(split, ()))
    for index, candidate in enumerate(candidates):
        path = folder / f"{candidate}.jsonl"
        if path.is_file():
            note = f"no {split}.jsonl, using {candidate}.jsonl" if index else ""
            return DatasetSpec(name, path.resolve(), note)
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
