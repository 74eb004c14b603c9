"""Tests for data_prep.training_mix: a Search-R1-style NQ + HotpotQA mix from real prepared splits."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from data_prep.benchmarks import prepare_benchmark, write_benchmark
from data_prep.formats import VERL_COLUMNS, QAFormatError, write_verl_parquet
from data_prep.training_mix import build_mix, parse_sizes, resolve_mix_input


def row_keys(frame: pd.DataFrame) -> list[tuple[str, str]]:
    return [(source, extra["id"]) for source, extra in zip(frame["data_source"], frame["extra_info"], strict=True)]


@pytest.fixture(scope="module")
def splits(real_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``prepare qa`` output directories of real NQ and HotpotQA questions, as split ``train``."""
    root = tmp_path_factory.mktemp("splits")
    sources = {"nq": "nq/nq_test1000.jsonl", "hotpotqa": "hotpotqa/hotpotqa_distractor_dev300.jsonl"}
    for name, file in sources.items():
        prepared = prepare_benchmark(name, real_data / file, split="train", limit=60, seed=1)
        write_benchmark(prepared, root / name)
    return {name: root / name for name in sources}


def test_mix_keeps_rows_and_data_sources(splits: dict[str, Path], tmp_path: Path) -> None:
    counts = build_mix([splits["nq"], splits["hotpotqa"] / "train.parquet"], tmp_path / "mix.parquet", seed=0)
    assert dict(counts) == {"nq": 60, "hotpotqa": 60}
    mixed = pd.read_parquet(tmp_path / "mix.parquet")
    assert list(mixed.columns) == list(VERL_COLUMNS)
    inputs = pd.concat([pd.read_parquet(splits[name] / "train.parquet") for name in ("nq", "hotpotqa")])
    assert sorted(row_keys(mixed)) == sorted(row_keys(inputs))
    assert row_keys(mixed) != row_keys(inputs)  # shuffled
    assert set(mixed["data_source"][:30]) == {"nq", "hotpotqa"}  # interleaved, not concatenated
    by_key = dict(zip(row_keys(inputs), inputs.to_dict("records"), strict=True))
    for key, row in zip(row_keys(mixed), mixed.to_dict("records"), strict=True):
        original = by_key[key]
        assert row["prompt"].tolist() == original["prompt"].tolist()
        assert row["reward_model"]["ground_truth"]["target"].tolist() == (
            original["reward_model"]["ground_truth"]["target"].tolist()
        )
        assert row["extra_info"] == original["extra_info"]


def test_mix_is_deterministic_and_sized(splits: dict[str, Path], tmp_path: Path) -> None:
    inputs = [splits["nq"], splits["hotpotqa"]]
    build_mix(inputs, tmp_path / "a.parquet", sizes=[40, None], seed=5)
    build_mix(inputs, tmp_path / "b.parquet", sizes=[40, None], seed=5)
    build_mix(inputs, tmp_path / "c.parquet", sizes=[40, None], seed=6)
    first, again, other = (pd.read_parquet(tmp_path / f"{name}.parquet") for name in "abc")
    assert row_keys(first) == row_keys(again)
    assert row_keys(first) != row_keys(other)
    assert first["data_source"].value_counts().to_dict() == {"hotpotqa": 60, "nq": 40}


def test_parse_sizes() -> None:
    assert parse_sizes(None, 2) == [None, None]
    assert parse_sizes("1000, all", 2) == [1000, None]
    with pytest.raises(ValueError, match="2 entries for 3 inputs"):
        parse_sizes("1,2", 3)
    with pytest.raises(ValueError, match="neither a row count nor 'all'"):
        parse_sizes("1,-2", 2)


def test_mix_errors(splits: dict[str, Path], real_data: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="has 60 rows; the mix asks for 61"):
        build_mix([splits["nq"]], tmp_path / "x.parquet", sizes=[61])
    with pytest.raises(FileNotFoundError, match=r"no test\.parquet \(parquet files there: train\.parquet\)"):
        resolve_mix_input(splits["nq"], split="test")
    with pytest.raises(FileNotFoundError, match="mix input not found"):
        build_mix([tmp_path / "absent.parquet"], tmp_path / "x.parquet")
    foreign = tmp_path / "foreign.parquet"
    pd.DataFrame({"question": ["q"], "data_source": ["nq"]}).to_parquet(foreign)
    with pytest.raises(QAFormatError, match="missing column\\(s\\) prompt, ability, reward_model"):
        build_mix([foreign], tmp_path / "x.parquet")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(QAFormatError, match=r"broken\.parquet: cannot read parquet \(") as caught:
        build_mix([broken], tmp_path / "x.parquet")
    assert "\n" not in str(caught.value)
    empty = tmp_path / "empty.parquet"
    write_verl_parquet([], empty, data_source="nq", split="train")
    with pytest.raises(QAFormatError, match="no rows"):
        build_mix([empty], tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="at least one input"):
        build_mix([], tmp_path / "x.parquet")
    assert not (tmp_path / "x.parquet").exists()
