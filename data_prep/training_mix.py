"""A shuffled, deterministic training mix of several verl parquet files (Search-R1 trains on NQ + HotpotQA train).

``expandsearch prepare mix`` calls :func:`build_mix`::

    counts = build_mix(["data/nq", "data/hotpotqa/train.parquet"], "data/mix/train.parquet", sizes=[None, 5000])

An input is a parquet file in the verl schema (``data_prep.formats.VERL_COLUMNS``) or a directory holding
``{split}.parquet`` (what ``prepare qa`` writes). Each input is sub-sampled to its size with
:func:`data_prep.benchmarks.sample_indices` (None keeps every row), the rows are concatenated and shuffled with
one seeded permutation, and written unchanged otherwise: each row keeps its ``data_source``, prompt, golds and
``extra_info``. The same inputs, sizes and seed give the same file.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from data_prep.benchmarks import sample_indices
from data_prep.formats import VERL_COLUMNS, QAFormatError
from data_prep.qa_sources import read_parquet_table


def resolve_mix_input(source: str | Path, split: str = "train") -> Path:
    """The parquet file an input names: itself, or ``DIR/{split}.parquet`` for a directory."""
    path = Path(source)
    if path.is_dir():
        candidate = path / f"{split}.parquet"
        if not candidate.is_file():
            present = ", ".join(sorted(p.name for p in path.glob("*.parquet"))) or "none"
            raise FileNotFoundError(f"{path}: no {split}.parquet (parquet files there: {present})")
        return candidate
    if not path.is_file():
        raise FileNotFoundError(f"mix input not found: {path}")
    return path


def parse_sizes(text: str | None, inputs: int) -> list[int | None]:
    """``"1000,all,500"`` → ``[1000, None, 500]``; one entry per input (None: all rows)."""
    if text is None:
        return [None] * inputs
    entries = [entry.strip() for entry in text.split(",")]
    if len(entries) != inputs:
        raise ValueError(f"--sizes has {len(entries)} entries for {inputs} inputs")
    sizes: list[int | None] = []
    for entry in entries:
        if entry == "all":
            sizes.append(None)
        elif entry.isdigit():
            sizes.append(int(entry))
        else:
            raise ValueError(f"--sizes entry {entry!r} is neither a row count nor 'all'")
    return sizes


def _read_verl_table(path: Path) -> Any:
    """The table of a verl parquet file; QAFormatError when it is unreadable, lacks a verl column, or is empty."""
    table = read_parquet_table(path)
    missing = [column for column in VERL_COLUMNS if column not in table.column_names]
    if missing:
        raise QAFormatError(
            f"{path}: not in the verl schema, missing column(s) {', '.join(missing)} "
            f"(columns: {', '.join(table.column_names)}); write it with `expandsearch prepare qa`"
        )
    if table.num_rows == 0:
        raise QAFormatError(f"{path}: no rows")
    return table


def build_mix(
    sources: Sequence[str | Path],
    out: str | Path,
    *,
    sizes: Sequence[int | None] | None = None,
    seed: int = 0,
    split: str = "train",
) -> Counter[str]:
    """Write the shuffled mix of ``sources`` to ``out``; returns the rows written per ``data_source``, in input
    order. ``split`` names the file read from a directory input."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not sources:
        raise ValueError("a mix needs at least one input")
    sizes = list(sizes) if sizes is not None else [None] * len(sources)
    if len(sizes) != len(sources):
        raise ValueError(f"{len(sizes)} sizes for {len(sources)} inputs")
    tables, counts = [], Counter[str]()
    for source, size in zip(sources, sizes, strict=True):
        path = resolve_mix_input(source, split)
        table = _read_verl_table(path)
        if size is not None and size > table.num_rows:
            raise ValueError(f"{path} has {table.num_rows} rows; the mix asks for {size}")
        tables.append(table.take(sample_indices(table.num_rows, size, seed)))
        counts.update(tables[-1].column("data_source").to_pylist())
    # "permissive" unifies struct fields that differ between files (e.g. extra_info written by other tools).
    mixed = pa.concat_tables(tables, promote_options="permissive")
    order = list(range(mixed.num_rows))
    random.Random(seed).shuffle(order)
    mixed = mixed.take(order)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(mixed, out)
    return counts
