"""Raw benchmark records from wherever users keep them: jsonl, a JSON list, parquet, or a Hugging Face dataset.

This module only gets records (plain dicts) out of a source and says where each came from; what the fields
mean is :mod:`data_prep.benchmarks`' business. Use::

    records = read_source("hotpot_dev_distractor_v1.json")           # a JSON list (original HotpotQA)
    records = read_source("nq/test.jsonl")                            # one JSON object per line
    records = read_source("hf_dir", split="validation")               # datasets.save_to_disk dir, or a
                                                                      # directory of parquet/json files
    records = read_source("hotpotqa/hotpot_qa:distractor", hf=True)   # a hub NAME[:CONFIG]

Every :class:`SourceRecord` carries ``where`` ("file.jsonl:12", "file.json: record 3", "hf_dir[test]:
record 5") so errors can name the record. A file's kind is read from its content, not its suffix (HotpotQA's
``.json`` is a list, 2Wiki dumps come both ways), except ``.parquet``. Paths that do not exist and do not look
like file paths are tried as hub names through ``datasets.load_dataset``; offline that fails with one line.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_prep.formats import QAFormatError

# Suffixes that mark a string as a local file path (so a missing one is "file not found", not a hub name).
DATA_FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".arrow", ".csv", ".tsv", ".gz")
# datasets names a "dev.jsonl" file's split "validation"; FlashRAG and the originals say "dev".
SPLIT_ALIASES = {"dev": ("validation", "val"), "validation": ("dev", "val"), "val": ("validation", "dev")}
# The builder `datasets.load_dataset` needs for a single data file forced through --layout hf.
HF_FILE_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv", ".arrow": "arrow"}


@dataclass(frozen=True)
class SourceRecord:
    """One raw record and where it came from (a location string for error messages)."""

    where: str
    fields: dict[str, Any]


def read_source(source: str | Path, *, split: str = "test", hf: bool = False) -> list[SourceRecord]:
    """All records of ``source``: a file, a Hugging Face dataset directory, or (missing path) a hub name.

    ``split`` picks the split of a multi-split Hugging Face dataset (``dev``/``validation`` are aliases; a
    dataset with one split uses it). ``hf`` forces loading through the ``datasets`` library, files included.
    Raises :class:`QAFormatError` (a ``ValueError``) with a one-line message on anything unreadable or empty.
    """
    path = Path(source)
    if path.is_dir():
        return _read_hf(str(path), split, _load_hf_directory, "cannot load it as a Hugging Face dataset")
    if path.is_file():
        records = _read_hf(str(path), split, _load_hf_file, "cannot load it with datasets") if hf else _read_file(path)
    elif _looks_like_path(str(source)):
        raise FileNotFoundError(f"input not found: {source}")
    else:
        records = _read_hf(str(source), split, _load_hf_hub, f"no such local path, and the hub failed{_offline_hint()}")
    if not records:
        raise QAFormatError(f"{source}: no records (the input is empty)")
    return records


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or source.lower().endswith(DATA_FILE_SUFFIXES)


# --- files ------------------------------------------------------------------------------------------------------


def _read_file(path: Path) -> list[SourceRecord]:
    if path.suffix == ".parquet":
        return list(_read_parquet(path))
    text = path.read_text(encoding="utf-8")
    start = text.lstrip()[:1]
    if not start:
        raise QAFormatError(f"{path}: the file is empty")
    if start == "[":
        return list(_read_json_list(path, text))
    if start == "{":
        return list(_read_jsonl(path, text))
    raise QAFormatError(f"{path}: not JSON lines, a JSON list or parquet (starts with {start!r})")


def _read_jsonl(path: Path, text: str) -> Iterator[SourceRecord]:
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{line_number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise QAFormatError(f"{where}: not valid JSON ({error.msg})") from error
        yield SourceRecord(where, _as_object(record, where))


def _read_json_list(path: Path, text: str) -> Iterator[SourceRecord]:
    try:
        records = json.loads(text)
    except json.JSONDecodeError as error:
        raise QAFormatError(f"{path}: not valid JSON ({error.msg}, line {error.lineno})") from error
    for index, record in enumerate(records, start=1):
        where = f"{path}: record {index}"
        yield SourceRecord(where, _as_object(record, where))


def read_parquet_table(path: Path) -> Any:
    """The ``pyarrow.Table`` of a parquet file; QAFormatError (one line) when it cannot be read."""
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path)
    except Exception as error:  # pyarrow raises several unrelated types for unreadable files
        raise QAFormatError(f"{path}: cannot read parquet ({_one_line(error)})") from error


def _read_parquet(path: Path) -> Iterator[SourceRecord]:
    for index, row in enumerate(read_parquet_table(path).to_pylist(), start=1):
        yield SourceRecord(f"{path}: row {index}", row)


def _as_object(record: Any, where: str) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise QAFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
    return record


# --- Hugging Face datasets ----------------------------------------------------------------------------------------


def _offline_hint() -> str:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return " (HF_HUB_OFFLINE is set: download the dataset elsewhere and pass its directory)"
    return ""


def _read_hf(source: str, split: str, load: Callable[[str, str, str], Any], failure: str) -> list[SourceRecord]:
    import datasets

    # The CLI prints one summary line; datasets' progress bars would bury it.
    datasets.disable_progress_bars()
    # Local data files are converted to Arrow in a throw-away cache: the records are copied out below, and a
    # cache kept per temporary path would only grow. Hub downloads use the normal cache (see _load_hf_hub).
    with tempfile.TemporaryDirectory(prefix="expandsearch-hf-") as cache_dir:
        try:
            loaded = load(source, split, cache_dir)
        except QAFormatError:
            raise
        except Exception as error:  # datasets/hub errors come in many types; the user needs one line, not a trace
            raise QAFormatError(f"{source}: {failure}: {_one_line(error)}") from error
        dataset, split_name = _pick_split(loaded, split, source)
        where = f"{source}[{split_name}]: record"
        return [SourceRecord(f"{where} {index}", dict(row)) for index, row in enumerate(dataset, start=1)]


def _load_hf_directory(path: str, split: str, cache_dir: str) -> Any:
    import datasets

    # save_to_disk writes dataset_dict.json (DatasetDict) or state.json (Dataset); anything else is a folder
    # of data files that load_dataset reads by their suffixes, naming splits from the file names.
    if any((Path(path) / marker).is_file() for marker in ("dataset_dict.json", "state.json")):
        return datasets.load_from_disk(path)
    return datasets.load_dataset(path, cache_dir=cache_dir)


def _load_hf_file(path: str, split: str, cache_dir: str) -> Any:
    import datasets

    suffix = Path(path).suffix
    if suffix not in HF_FILE_BUILDERS:
        raise QAFormatError(f"{path}: --layout hf reads {', '.join(HF_FILE_BUILDERS)} files, not {suffix or 'this'}")
    return datasets.load_dataset(HF_FILE_BUILDERS[suffix], data_files=path, split="train", cache_dir=cache_dir)


def _load_hf_hub(name: str, split: str, cache_dir: str) -> Any:
    import datasets

    del cache_dir  # a hub download is worth keeping in the user's datasets cache
    repo, _, config = name.partition(":")
    return datasets.load_dataset(repo, config or None, split=split)


def _pick_split(loaded: Any, split: str, source: str) -> tuple[Any, str]:
    """The requested split of a DatasetDict (or its only split); a plain Dataset is used as it is."""
    if not hasattr(loaded, "keys"):
        return loaded, split
    available = list(loaded.keys())
    for name in (split, *SPLIT_ALIASES.get(split, ())):
        if name in loaded:
            return loaded[name], name
    if len(available) == 1:
        return loaded[available[0]], available[0]
    raise QAFormatError(f"{source}: no split {split!r} (splits: {', '.join(available)}); choose one with --split")


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
