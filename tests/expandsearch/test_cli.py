"""Tests for the ``expandsearch`` console script, run as a real subprocess."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from support import run_expandsearch

from data_prep.formats import read_qa_jsonl
from retriever_server.corpus import load_passages

SUBCOMMANDS = ("world", "demo")
WORLD_FILES = [
    "corpus.jsonl",
    "world.json",
    *(f"{split}.{ext}" for split in ("train", "validation", "test") for ext in ("jsonl", "parquet")),
]
QUESTION_TYPES = ("single_hop", "bridge", "three_hop", "comparison")


def expandsearch(*args: str | Path, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run_expandsearch(*args, timeout=timeout, cwd=cwd)


def assert_user_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Exit status 2, one line on stderr naming the problem, no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


# --- help and usage ---------------------------------------------------------------------------------------------


def test_help_lists_subcommands() -> None:
    result = expandsearch("--help")
    assert result.returncode == 0, result.stderr
    assert "usage: expandsearch" in result.stdout
    for name in SUBCOMMANDS:
        assert name in result.stdout


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_subcommand_help(name: str) -> None:
    result = expandsearch(name, "--help")
    assert result.returncode == 0, result.stderr
    assert f"usage: expandsearch {name}" in result.stdout
    for option in ("--out", "--seed", "--size"):
        assert option in result.stdout


def test_no_subcommand_prints_usage() -> None:
    result = expandsearch()
    assert result.returncode != 0
    assert "usage: expandsearch" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_subcommand() -> None:
    result = expandsearch("teleport")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


# --- world ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three tiny worlds: seed 3 twice (in different working directories), seed 4 once."""
    base = tmp_path_factory.mktemp("worlds")
    runs = {"a": 3, "b": 3, "c": 4}
    for name, seed in runs.items():
        cwd = base / f"cwd-{name}"
        cwd.mkdir()
        result = expandsearch("world", "--out", base / name, "--size", "tiny", "--seed", str(seed), cwd=cwd)
        assert result.returncode == 0, result.stderr
        assert f"seed {seed}" in result.stdout
    return {name: base / name for name in runs}


def test_world_writes_all_files(worlds: dict[str, Path]) -> None:
    out = worlds["a"]
    assert sorted(path.name for path in out.iterdir()) == sorted(WORLD_FILES)
    assert all((out / name).stat().st_size > 0 for name in WORLD_FILES)
    record = json.loads((out / "world.json").read_text(encoding="utf-8"))
    assert record["config"]["seed"] == 3
    assert record["counts"]["passages"] == len((out / "corpus.jsonl").read_text(encoding="utf-8").splitlines())
    for split in ("train", "validation", "test"):
        assert record["counts"][split] == len((out / f"{split}.jsonl").read_text(encoding="utf-8").splitlines())


def test_world_outputs_load_with_project_readers(worlds: dict[str, Path]) -> None:
    out = worlds["a"]
    assert load_passages(out / "corpus.jsonl")
    for split in ("train", "validation", "test"):
        examples = read_qa_jsonl(out / f"{split}.jsonl")
        frame = pd.read_parquet(out / f"{split}.parquet")
        assert len(frame) == len(examples) > 0
        assert set(frame["data_source"]) == {"synthetic"}


def test_world_same_seed_is_byte_identical(worlds: dict[str, Path]) -> None:
    for name in WORLD_FILES:
        assert (worlds["a"] / name).read_bytes() == (worlds["b"] / name).read_bytes(), name


def test_world_other_seed_differs(worlds: dict[str, Path]) -> None:
    for name in WORLD_FILES:
        assert (worlds["a"] / name).read_bytes() != (worlds["c"] / name).read_bytes(), name


def test_world_bad_size(tmp_path: Path) -> None:
    result = expandsearch("world", "--out", tmp_path / "w", "--size", "huge")
    assert_user_error(result, "expandsearch world: error:", "huge", "tiny")
    assert not (tmp_path / "w").exists()


def test_world_requires_out() -> None:
    result = expandsearch("world", "--size", "tiny")
    assert result.returncode == 2
    assert "--out" in result.stderr


# --- demo -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["--topk", "--max-turns"])
def test_demo_rejects_non_positive_settings(tmp_path: Path, option: str) -> None:
    result = expandsearch("demo", "--out", tmp_path / "d", "--size", "tiny", option, "0")
    assert_user_error(result, "expandsearch demo: error:", option)
    assert not (tmp_path / "d").exists()


def test_demo_bad_size(tmp_path: Path) -> None:
    result = expandsearch("demo", "--out", tmp_path / "d", "--size", "huge")
    assert_user_error(result, "expandsearch demo: error:", "huge")


@pytest.mark.slow
def test_demo_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = expandsearch("demo", "--out", out, "--size", "tiny", timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr

    for qtype in (*QUESTION_TYPES, "all"):
        assert qtype in result.stdout
    assert "EM 1q" in result.stdout
    assert "EM 3v" in result.stdout
    assert "summary.json" in result.stdout

    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["world"]["size"] == "tiny"
    results = summary["results"]
    assert set(results) == {"1q", "3v"}
    for mode in ("1q", "3v"):
        assert set(results[mode]) == {*QUESTION_TYPES, "all"}
        for metrics in results[mode].values():
            assert 0.0 <= metrics["exact_match"] <= 1.0
            assert metrics["questions"] > 0
        assert results[mode]["all"]["questions"] == summary["world"]["test_questions"]
        assert sum(results[mode][qtype]["questions"] for qtype in QUESTION_TYPES) == results[mode]["all"]["questions"]
    assert results["3v"]["all"]["exact_match"] > results["1q"]["all"]["exact_match"]
    assert results["1q"]["all"]["variants_per_search"] == 1.0
    assert 1.0 < results["3v"]["all"]["variants_per_search"] <= 3.0

    lines = (out / "transcripts.jsonl").read_text(encoding="utf-8").splitlines()
    assert lines
    records = [json.loads(line) for line in lines]
    assert {record["mode"] for record in records} == {"1q", "3v"}
    for record in records:
        assert "<search>" in record["transcript"]
        assert "<answer>" in record["transcript"]
    assert any("##" in record["transcript"] for record in records if record["mode"] == "3v")
    assert (out / "world" / "corpus.jsonl").is_file()
    assert (out / "index" / "corpus.jsonl").is_file()
