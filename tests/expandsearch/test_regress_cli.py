"""``expandsearch regress`` through the real console script: a self-made YAML with passing, failing and broken
conditions (exit status, OK / FAIL lines, the report, reused setup), ``expandsearch eval``'s results read by the
runner, bad files as one-line errors, and one real shipped condition.

The self-made conditions run over the tiny synthetic world. Their expected scores are computed here, in-process,
with ``eval.retrieval`` over a BM25 index of the same world; the agent condition (naive RAG of the random tiny
policy, ``expandsearch eval``) must find the same recall and answer-in-passages, since naive RAG retrieves with
the question alone, as the retrieval-only evaluation does.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from support import run_expandsearch

from data_prep.synthetic import World
from eval.datasets import DatasetSpec, EvalDataset
from eval.retrieval import RetrievalSource, evaluate_dataset
from retriever_server.bm25 import BM25Index

ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
QUESTIONS = 20

SETUP = """
    setup:
      - run: expandsearch world --size tiny --out {work}/data/world
        creates: "{work}/data/world/test.jsonl"
      - run: expandsearch index --corpus {work}/data/world/corpus.jsonl --kind bm25 --out {work}/indexes/world
        creates: "{work}/indexes/world/manifest.json\""""
RETRIEVAL = (
    "expandsearch eval-retrieval --data {work}/data/world --index {work}/indexes/world "
    f"--topk 3 --limit {QUESTIONS} --out {{out}}"
)


def regress(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return run_expandsearch("regress", *args, timeout=600, env=ONE_THREAD)


@pytest.fixture(scope="module")
def world_scores(tiny_world: World) -> dict[str, float]:
    """recall@3 and answer_in_passages@3 of the world's first test questions, measured in-process."""
    index = BM25Index.build(tiny_world.passages)
    source = RetrievalSource(lambda queries, k: index.batch_search(queries, k), {"kind": "bm25"})
    dataset = EvalDataset(DatasetSpec("world", Path("test.jsonl")), tuple(tiny_world.questions["test"][:QUESTIONS]))
    return evaluate_dataset(source, dataset, (3,)).metrics


def self_made_yaml(path: Path, scores: dict[str, float], policy: Path) -> Path:
    recall, found = scores["recall@3"], scores["answer_in_passages@3"]
    agent = (
        f"expandsearch eval --model {policy} --datasets world --data-dir {{work}}/data --index {{work}}/indexes/world "
        f"--methods rag --topk 3 --limit {QUESTIONS} --squeezer none --turn-tokens 16 --out {{out}}"
    )
    path.write_text(
        f"""
tolerance: 0.005
conditions:
  - name: retrieval-pass
{SETUP}
    command: {RETRIEVAL}
    expected:
      results.world.n: {{value: {QUESTIONS}, tolerance: 0}}
      results.world.recall@3: {recall}
      results.world.answer_in_passages@3: {found}
  - name: retrieval-fail
    description: deliberately wrong
{SETUP}
    command: {RETRIEVAL}
    expected:
      results.world.recall@3: {recall + 0.2}
  - name: broken-setup
    setup:
      - expandsearch index --corpus {{work}}/missing.jsonl --kind bm25 --out {{work}}/indexes/none
    command: {RETRIEVAL}
    expected:
      results.world.n: 1
  - name: agent-rag
{SETUP}
    command: {agent}
    expected:
      results.world.rag.recall: {recall}
      results.world.rag.answer_in_passages: {found}
"""
    )
    return path


@pytest.mark.slow
def test_self_made_regressions_pass_fail_and_report(
    world_scores: dict[str, float], tiny_policy_dir: Path, tmp_path: Path
) -> None:
    regression = self_made_yaml(tmp_path / "mine.yaml", world_scores, tiny_policy_dir)
    work, report = tmp_path / "work", tmp_path / "report.md"
    result = regress(regression, "--work", work, "--report", report)
    out = result.stdout
    assert result.returncode == 1, result.stderr + out
    assert f"OK   retrieval-pass  results.world.recall@3  expected {world_scores['recall@3']:.4f}" in out
    assert "OK   retrieval-pass  results.world.n  expected 20.0000 ± 0  got 20.0000" in out
    wrong = world_scores["recall@3"] + 0.2
    assert f"FAIL retrieval-fail  results.world.recall@3  expected {wrong:.4f} ± 0.005  got " in out
    assert "FAIL broken-setup: setup failed: exit status 2" in out
    assert "corpus file not found" in out  # the tail of the failing step's log
    assert "OK   agent-rag  results.world.rag.recall" in out
    assert "OK   agent-rag  results.world.rag.answer_in_passages" in out
    assert "2 of 4 conditions OK" in out
    assert "failed: retrieval-fail, broken-setup" in out

    text = report.read_text()
    assert "2 of 4 conditions OK" in text
    assert "| retrieval-pass | mine.yaml | `results.world.recall@3` |" in text
    assert f"| {wrong:.4f} | 0.005 | {world_scores['recall@3']:.4f} | FAIL |" in text
    assert "| retrieval-pass | " in text
    assert "| 2 / 0 |" in text  # the first condition made the world and its index
    assert "| retrieval-fail | 0.0 | 0 / 2 |" in text  # the others reused them
    assert "- **broken-setup**: setup failed: exit status 2" in text
    assert (work / "logs" / "broken-setup" / "setup-1.log").read_text().startswith("$ ")
    assert (work / "runs" / "agent-rag" / "results.json").is_file()


def test_bad_files_and_names_are_one_line_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("conditions:\n  - name: x\n    comand: expandsearch eval\n    expected: {a: 1}\n")
    result = regress(bad)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1
    assert str(bad) in line
    assert "conditions.0.comand: unknown field" in line
    assert "conditions.0.command: missing field" in line
    unknown = regress("--only", "no-such-condition")
    assert unknown.returncode == 2
    assert "no condition named no-such-condition" in unknown.stderr
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    work_is_a_file = regress("--only", "2wiki-bm25", "--work", a_file)  # refused before anything runs
    assert work_is_a_file.returncode == 2
    assert "Traceback" not in work_is_a_file.stderr
    assert "File exists" in work_is_a_file.stderr
    assert "2wiki-bm25" not in work_is_a_file.stdout


def test_list_and_a_file_without_conditions(tmp_path: Path) -> None:
    listed = regress("--list")
    assert listed.returncode == 0
    assert "hotpotqa-bm25\t" in listed.stdout
    assert "open-domain-minilm\t" in listed.stdout  # --list shows the full set too
    assert "tiny-agent-world\t" in listed.stdout
    empty = tmp_path / "empty.yaml"
    empty.write_text("description: nothing yet\nconditions: []\n")
    nothing = regress(empty)
    assert nothing.returncode == 0
    assert "no conditions" in nothing.stdout


@pytest.mark.slow
def test_a_shipped_condition_reproduces(real_data: Path, tmp_path: Path) -> None:
    result = regress("--only", "2wiki-bm25", "--work", tmp_path, "--samples", real_data)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("OK   2wiki-bm25") == 7
    assert "1 of 1 conditions OK" in result.stdout
    assert "OK" in (tmp_path / "report.md").read_text()  # the default report path: WORK/report.md
