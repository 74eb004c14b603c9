"""Tests for ``expandsearch prepare {qa,corpus,mix,demos}`` through the installed console script, in a subprocess.

Every real QA sample goes through ``prepare qa`` and is read back (jsonl, parquet field by field, corpus);
the error paths check exit status 2 with one line naming the file, the record and the field.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from support import free_port, plain, run_expandsearch

from agent_env import AGENT_LOOP_NAME
from agent_env.protocol import build_messages
from data_prep.benchmarks import LAYOUT_CHOICES, prepare_benchmark
from data_prep.corpora import CORPUS_FORMATS
from data_prep.formats import ABILITY, VERL_COLUMNS, read_qa_jsonl
from expandsearch.commands import prepare
from retriever_server.corpus import load_passages

SAMPLE_QA = [
    ("nq", "nq/nq_test1000.jsonl", 1000),
    ("triviaqa", "triviaqa/triviaqa_test1000.jsonl", 1000),
    ("popqa", "popqa/popqa_test1000.jsonl", 1000),
    ("bamboogle", "bamboogle/bamboogle_test125.jsonl", 125),
    ("hotpotqa", "hotpotqa/hotpotqa_distractor_dev300.jsonl", 300),
    ("hotpotqa", "hotpotqa/hotpotqa_distractor_dev300b.jsonl", 300),
    ("2wikimultihopqa", "2wikimultihopqa/2wiki_dev_with_context80.jsonl", 80),
    ("musique", "musique/musique_ans_dev100.jsonl", 100),
]
DISTRACTOR = {"hotpotqa", "2wikimultihopqa", "musique"}


def expandsearch(*args: str | Path, tmp: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if tmp is not None:  # keep datasets' caches of hub attempts out of the user's home
        env["HF_HOME"] = str(tmp / "hf_home")
    return run_expandsearch(*args, timeout=120, env=env)


def assert_user_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Exit status 2, one line on stderr naming the problem, no traceback; returns that line."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


# --- help -----------------------------------------------------------------------------------------------------------


def test_help_lists_the_jobs_and_flags() -> None:
    result = expandsearch("prepare", "--help")
    assert result.returncode == 0, result.stderr
    for job in ("qa", "corpus", "mix", "demos"):
        assert job in result.stdout
    qa_help = expandsearch("prepare", "qa", "--help").stdout
    for flag in ("--dataset", "--input", "--out", "--split", "--layout", "--limit", "--seed", "--template"):
        assert flag in qa_help
    assert "    prepare " in expandsearch("--help").stdout  # registered as a top-level subcommand


def test_cli_choices_match_the_library() -> None:
    assert prepare.LAYOUT_CHOICES == LAYOUT_CHOICES
    assert tuple(CORPUS_FORMATS) == prepare.CORPUS_FORMAT_CHOICES[1:]


# --- prepare qa on every real sample -------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "file", "rows"), SAMPLE_QA, ids=[item[1] for item in SAMPLE_QA])
def test_prepare_qa_on_every_sample(real_data: Path, tmp_path: Path, name: str, file: str, rows: int) -> None:
    out = tmp_path / name
    result = expandsearch("prepare", "qa", "--dataset", name, "--input", real_data / file, "--out", out)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1
    assert result.stdout.startswith(f"{name} test: {rows} questions")
    assert str(out) in result.stdout
    examples = read_qa_jsonl(out / "test.jsonl")
    assert examples == prepare_benchmark(name, real_data / file).examples
    frame = pd.read_parquet(out / "test.parquet")
    assert list(frame.columns) == list(VERL_COLUMNS)
    assert len(frame) == rows
    for index, (example, row) in enumerate(zip(examples, frame.to_dict("records"), strict=True)):
        assert row["data_source"] == name
        assert plain(row["prompt"]) == build_messages(example.question)
        assert row["ability"] == ABILITY
        assert plain(row["reward_model"]) == {"style": "rule", "ground_truth": {"target": example.golden_answers}}
        assert plain(row["extra_info"]) == {
            "split": "test",
            "index": index,
            "question": example.question,
            "id": example.id,
            "type": example.metadata.get("type"),  # HotpotQA's and 2Wiki's question types; None elsewhere
        }
        assert row["agent_name"] == AGENT_LOOP_NAME
    assert (out / "corpus.jsonl").is_file() == (name in DISTRACTOR)
    if name in DISTRACTOR:
        corpus_ids = {passage.id for passage in load_passages(out / "corpus.jsonl")}
        assert "context passages" in result.stdout
        for example in examples:
            assert example.metadata["supporting_ids"]
            assert set(example.metadata["supporting_ids"]) <= corpus_ids
            assert example.metadata["supporting_titles"]


def test_prepare_qa_limit_seed_and_template(real_data: Path, tmp_path: Path) -> None:
    source = real_data / "hotpotqa" / "hotpotqa_distractor_dev300.jsonl"
    args = ("prepare", "qa", "--dataset", "hotpotqa", "--input", source, "--limit", "25", "--seed", "4")
    first = expandsearch(*args, "--out", tmp_path / "a", "--split", "dev", "--template", "search_r1")
    again = expandsearch(*args, "--out", tmp_path / "b", "--split", "dev", "--template", "search_r1")
    assert first.returncode == again.returncode == 0, first.stderr + again.stderr
    assert "25 questions (25 of 300, seed 4; layout hotpotqa_hf)" in first.stdout
    for name in ("dev.jsonl", "corpus.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    frame = pd.read_parquet(tmp_path / "a" / "dev.parquet")
    assert plain(frame["prompt"].iloc[0]) == build_messages(frame["extra_info"].iloc[0]["question"], "search_r1")
    assert {extra["split"] for extra in frame["extra_info"]} == {"dev"}


def test_prepare_qa_from_a_hf_dataset_dir(real_data: Path, tmp_path: Path) -> None:
    import datasets

    lines = (real_data / "hotpotqa" / "hotpotqa_distractor_dev300.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines[:30]]
    datasets.DatasetDict({"validation": datasets.Dataset.from_list(rows)}).save_to_disk(tmp_path / "hotpot_qa")
    result = expandsearch(
        "prepare", "qa", "--dataset", "hotpotqa", "--input", tmp_path / "hotpot_qa", "--out", tmp_path / "out",
        "--split", "test", "--hf-split", "validation", "--layout", "hf",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "hotpotqa test: 30 questions (all 30; layout hotpotqa_hf)" in result.stdout
    assert [e.id for e in read_qa_jsonl(tmp_path / "out" / "test.jsonl")] == [row["id"] for row in rows]


# --- prepare corpus and mix -------------------------------------------------------------------------------------------


def test_prepare_corpus(real_data: Path, tmp_path: Path) -> None:
    source = real_data / "2wikimultihopqa" / "2wiki_corpus6119.json"
    result = expandsearch("prepare", "corpus", "--input", source, "--out", tmp_path / "c" / "2wiki.jsonl")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"corpus: 6119 passages (title_text) written to {tmp_path / 'c' / '2wiki.jsonl'}"
    assert len(load_passages(tmp_path / "c" / "2wiki.jsonl")) == 6119
    forced = expandsearch(
        "prepare", "corpus", "--input", real_data / "wiki18_sample" / "wiki18_passages7923.jsonl",
        "--out", tmp_path / "w.jsonl", "--format", "wiki18",
    )  # fmt: skip
    assert forced.returncode == 0, forced.stderr
    assert "7923 passages (wiki18)" in forced.stdout


def test_prepare_mix(real_data: Path, tmp_path: Path) -> None:
    for name, file in (("nq", "nq/nq_test1000.jsonl"), ("hotpotqa", "hotpotqa/hotpotqa_distractor_dev300.jsonl")):
        result = expandsearch(
            "prepare", "qa", "--dataset", name, "--input", real_data / file, "--out", tmp_path / name,
            "--split", "train", "--limit", "50",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    args = ("prepare", "mix", "--input", tmp_path / "nq", tmp_path / "hotpotqa", "--sizes", "30,all", "--seed", "9")
    result = expandsearch(*args, "--out", tmp_path / "mix" / "train.parquet")
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout.strip()
        == f"mix: 80 rows (nq 30, hotpotqa 50; seed 9) written to {tmp_path / 'mix' / 'train.parquet'}"
    )
    mixed = pd.read_parquet(tmp_path / "mix" / "train.parquet")
    assert mixed["data_source"].value_counts().to_dict() == {"hotpotqa": 50, "nq": 30}
    assert expandsearch(*args, "--out", tmp_path / "again.parquet").returncode == 0
    again = pd.read_parquet(tmp_path / "again.parquet")
    assert [e["id"] for e in again["extra_info"]] == [e["id"] for e in mixed["extra_info"]]


# --- errors ---------------------------------------------------------------------------------------------------------


def test_missing_field_names_file_line_and_field(real_data: Path, tmp_path: Path) -> None:
    lines = (real_data / "musique" / "musique_ans_dev100.jsonl").read_text(encoding="utf-8").splitlines()[:4]
    broken = json.loads(lines[3])
    del broken["answer"]
    path = tmp_path / "musique.jsonl"
    path.write_text("\n".join([*lines[:3], json.dumps(broken)]) + "\n", encoding="utf-8")
    result = expandsearch("prepare", "qa", "--dataset", "musique", "--input", path, "--out", tmp_path / "out")
    assert_user_error(result, f"{path}:4:", "layout musique", "missing field 'answer'")
    assert not (tmp_path / "out").exists()


def test_unknown_layout_names_fields_and_layouts(tmp_path: Path) -> None:
    path = tmp_path / "squad.jsonl"
    path.write_text(json.dumps({"context": "text", "qas": []}) + "\n", encoding="utf-8")
    result = expandsearch("prepare", "qa", "--dataset", "nq", "--input", path, "--out", tmp_path / "out")
    line = assert_user_error(result, f"{path}:1:", "unknown layout", "fields seen: context, qas")
    assert all(layout in line for layout in ("flashrag", "hotpotqa_hf", "2wiki", "musique", "nq_open"))


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("", encoding="utf-8")
    result = expandsearch("prepare", "qa", "--dataset", "nq", "--input", path, "--out", tmp_path / "out")
    assert_user_error(result, str(path), "empty")
    corpus = expandsearch("prepare", "corpus", "--input", path, "--out", tmp_path / "c.jsonl")
    assert_user_error(corpus, str(path), "the corpus is empty")


def test_offline_hub_name_is_one_line(tmp_path: Path) -> None:
    result = expandsearch(
        "prepare", "qa", "--dataset", "hotpotqa", "--input", "hotpotqa/hotpot_qa:distractor", "--out", tmp_path / "o",
        tmp=tmp_path,
    )  # fmt: skip
    assert_user_error(result, "hotpotqa/hotpot_qa:distractor", "hub", "HF_HUB_OFFLINE")


def test_other_user_errors(real_data: Path, tmp_path: Path) -> None:
    nq = real_data / "nq" / "nq_test1000.jsonl"
    assert_user_error(
        expandsearch("prepare", "qa", "--dataset", "hotpot", "--input", nq, "--out", tmp_path / "o"),
        "unknown dataset 'hotpot'",
    )
    assert_user_error(
        expandsearch("prepare", "qa", "--dataset", "nq", "--input", tmp_path / "absent.jsonl", "--out", tmp_path / "o"),
        "input not found",
    )
    assert_user_error(
        expandsearch("prepare", "qa", "--dataset", "nq", "--input", nq, "--out", tmp_path / "o", "--limit", "0"),
        "--limit must be >= 1",
    )
    assert_user_error(
        expandsearch("prepare", "qa", "--dataset", "nq", "--input", nq, "--out", tmp_path / "o", "--layout", "musique"),
        f"{nq}:1: layout musique: missing field 'answer'",
    )
    assert_user_error(
        expandsearch("prepare", "mix", "--input", tmp_path / "none", "--out", tmp_path / "m.parquet"),
        "mix input not found",
    )
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder", encoding="utf-8")
    assert_user_error(
        expandsearch("prepare", "qa", "--dataset", "nq", "--input", nq, "--out", a_file, "--limit", "2"),
        "File exists",
        str(a_file),
    )
    assert_user_error(
        expandsearch("prepare", "corpus", "--input", nq, "--out", a_file / "c.jsonl", "--format", "wiki18"),
        str(a_file),
    )
    bad_layout = expandsearch(
        "prepare", "qa", "--dataset", "nq", "--input", nq, "--out", tmp_path / "o", "--layout", "x"
    )
    assert bad_layout.returncode == 2
    assert "invalid choice: 'x'" in bad_layout.stderr


# --- prepare demos --------------------------------------------------------------------------------------------------

DEMO_SAMPLES = (
    "hotpotqa/hotpotqa_distractor_dev300.jsonl",
    "2wikimultihopqa/2wiki_dev_with_context80.jsonl",
    "musique/musique_ans_dev100.jsonl",
)


def test_prepare_demos_end_to_end(real_data: Path, tmp_path: Path, tiny_policy_dir: Path) -> None:
    """--build-index on a slice of the three samples, then the same job over that index with --index."""
    files = [real_data / name for name in DEMO_SAMPLES]
    common = ["--tokenizer", tiny_policy_dir, "--limit", "5", "--seed", "3"]
    built = expandsearch("prepare", "demos", "--input", *files, "--out", tmp_path / "a", "--build-index", *common)
    assert built.returncode == 0, built.stderr
    summary = json.loads((tmp_path / "a" / "demos_summary.json").read_text())
    assert built.stdout.startswith(f"demos: {summary['kept']} of 15 questions (hotpotqa ")
    assert (tmp_path / "a" / "index").is_dir()
    assert (tmp_path / "a" / "corpus.jsonl").is_file()
    records = [json.loads(line) for line in (tmp_path / "a" / "demos.jsonl").read_text().splitlines()]
    assert len(records) == summary["kept"] > 0
    assert {record["tokenizer"] for record in records} == {str(tiny_policy_dir.resolve())}
    for record in records:
        assert set(record) >= {"id", "data_source", "question", "golden_answers", "breadth", "messages"}
        assert len(record["response_ids"]) == len(record["response_mask"])
        assert [m["role"] for m in record["messages"][:2]] == ["user", "assistant"]
    again = expandsearch(
        "prepare", "demos", "--input", *files, "--out", tmp_path / "b", "--index", tmp_path / "a" / "index", *common
    )
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "b" / "demos.jsonl").read_text() == (tmp_path / "a" / "demos.jsonl").read_text()


def test_prepare_demos_user_errors(real_data: Path, tmp_path: Path, tiny_policy_dir: Path) -> None:
    hotpot = real_data / DEMO_SAMPLES[0]
    base = ["prepare", "demos", "--out", tmp_path / "o", "--tokenizer", tiny_policy_dir]
    assert_user_error(
        expandsearch(*base, "--input", tmp_path / "absent.jsonl", "--build-index"), "input not found", "absent.jsonl"
    )
    assert_user_error(
        expandsearch(*base, "--input", real_data / "nq" / "nq_test1000.jsonl", "--build-index"),
        "layout flashrag has no supporting facts",
    )
    assert_user_error(expandsearch(*base, "--input", hotpot, "--build-index", "--variant-mix", "1,4"), "1..3")
    assert_user_error(expandsearch(*base, "--input", hotpot, "--build-index", "--variant-mix", "a"), "--variant-mix")
    assert_user_error(expandsearch(*base, "--input", hotpot, "--index", tmp_path / "no_index"), "cannot load index")
    assert_user_error(
        expandsearch(*base, "--input", hotpot, "--retriever-url", f"http://127.0.0.1:{free_port()}", "--limit", "2"),
        "is not reachable",
    )
    no_model = ["prepare", "demos", "--out", tmp_path / "o2", "--tokenizer", tmp_path / "no_model"]
    assert_user_error(expandsearch(*no_model, "--input", hotpot, "--build-index"), "no model at")
    assert not (tmp_path / "o2").exists()  # the cheap checks come before anything is written
    neither = expandsearch(*base, "--input", hotpot)
    assert neither.returncode == 2
    assert "one of the arguments --index --retriever-url --build-index is required" in neither.stderr
