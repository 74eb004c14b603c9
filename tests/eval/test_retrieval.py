"""Retrieval-only evaluation: metrics on hand-made hits, data resolution, ``expandsearch eval-retrieval`` end to end.

The end-to-end tests prepare a 20-question slice of the sample HotpotQA file with ``data_prep`` (questions plus
their context corpus), build a real BM25 index over it, and run the console script in a subprocess; NQ questions
against the same index have no supporting passages, so their recall must be absent, not 0.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import run_expandsearch, served_retriever

from data_prep.benchmarks import prepare_benchmark, write_benchmark
from data_prep.formats import QAExample, write_qa_jsonl
from eval.datasets import DatasetError, DatasetSpec, EvalDataset, load_dataset
from eval.retrieval import (
    RetrievalSource,
    aggregate_rows,
    evaluate_dataset,
    open_index_source,
    parse_ks,
    question_row,
    resolve_data,
    results_table,
)
from retriever_server.base import SearchHit
from retriever_server.corpus import Passage, write_wiki18_jsonl
from retriever_server.index_dir import build_index


def hit(passage_id: str, title: str, text: str) -> SearchHit:
    return SearchHit(passage_id, title, text, 1.0)


HITS = [
    hit("7", "Alpha", "Alpha was founded in 1984 by Ann Lee."),
    hit("3", "Beta", "Beta is a river."),
    hit("9", "Gamma", "The Gamma prize went to Bo."),
]


def example(golds: list[str], **metadata: object) -> QAExample:
    return QAExample("q", "question?", golds, dict(metadata))


# --- metrics on hand-made examples ------------------------------------------------------------------------------


def test_recall_by_ids_per_k() -> None:
    row = question_row(example(["Ann Lee"], supporting_ids=["7", "9"]), HITS, (1, 2, 3))
    assert row["retrieved"] == ["7", "3", "9"]
    assert [row[f"recall@{k}"] for k in (1, 2, 3)] == [0.5, 0.5, 1.0]
    assert [row[f"all_supporting@{k}"] for k in (1, 2, 3)] == [0.0, 0.0, 1.0]
    assert [row[f"answer_in_passages@{k}"] for k in (1, 2, 3)] == [1.0, 1.0, 1.0]


def test_recall_falls_back_to_titles_case_and_space_insensitive() -> None:
    row = question_row(example(["x"], supporting_titles=["beta", "  Gamma "]), HITS, (2, 3))
    assert row["recall@2"] == 0.5
    assert row["recall@3"] == 1.0


def test_answer_in_passages_is_a_whole_token_span_after_normalisation() -> None:
    assert question_row(example(["1"]), HITS, (3,))["answer_in_passages@3"] == 0.0  # "1" is not in "1984"
    assert question_row(example(["the river"]), HITS, (3,))["answer_in_passages@3"] == 1.0  # articles dropped
    assert question_row(example(["Gamma prize"]), HITS, (2,))["answer_in_passages@2"] == 0.0  # third passage only
    assert question_row(example(["gamma"]), HITS, (3,))["answer_in_passages@3"] == 1.0  # the title counts


def test_missing_ground_truth_is_none_not_zero() -> None:
    row = question_row(example(["---", ")"]), HITS, (3,))  # golds that normalise to nothing
    assert row["recall@3"] is None
    assert row["all_supporting@3"] is None
    assert row["answer_in_passages@3"] is None


def test_aggregate_averages_only_measured_rows_and_omits_unmeasured_keys() -> None:
    rows = [
        question_row(example(["Ann Lee"], supporting_ids=["7", "8"]), HITS, (3,)),
        question_row(example(["Bo"]), HITS, (3,)),  # no supporting passages
        question_row(example(["nowhere"], supporting_ids=["3"]), HITS, (3,)),
    ]
    metrics = aggregate_rows(rows, (3,))
    assert metrics == {
        "n": 3.0,
        "n_supporting": 2.0,
        "n_answers": 3.0,
        "recall@3": 0.75,
        "all_supporting@3": 0.5,
        "answer_in_passages@3": pytest.approx(2 / 3),
    }
    open_domain = aggregate_rows([question_row(example(["Bo"]), HITS, (3, 10))], (3, 10))
    assert set(open_domain) == {"n", "n_answers", "answer_in_passages@3", "answer_in_passages@10"}


def test_no_hits_scores_zero_where_ground_truth_exists() -> None:
    row = question_row(example(["Bo"], supporting_ids=["1"]), [], (3,))
    assert row["recall@3"] == 0.0
    assert row["answer_in_passages@3"] == 0.0


@pytest.mark.parametrize(("text", "expected"), [("3,10", (3, 10)), ("10, 3,3", (3, 10)), ("5", (5,))])
def test_parse_ks(text: str, expected: tuple[int, ...]) -> None:
    assert parse_ks(text) == expected


@pytest.mark.parametrize("text", ["", "0,3", "three", "3,,x"])
def test_parse_ks_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="--topk"):
        parse_ks(text)


def test_table_marks_unmeasured_metrics() -> None:
    results = {
        "results": {"nq": {"n": 2.0, "answer_in_passages@3": 0.5}},
        "topk": [3],
        "retriever": {"kind": "bm25", "index": "idx"},
    }
    table = results_table(results)
    assert "| nq | 2 | - | - | 0.500 |" in table


def test_a_search_that_loses_queries_is_an_error() -> None:
    source = RetrievalSource(lambda queries, k: [[]], {"url": "x"})
    dataset = load_dataset_from([example(["a"]), QAExample("q2", "other?", ["b"])])
    with pytest.raises(RuntimeError, match="1 hit lists for 2 queries"):
        evaluate_dataset(source, dataset, (3,))


def load_dataset_from(examples: list[QAExample]) -> EvalDataset:
    return EvalDataset(DatasetSpec("hand", Path("hand.jsonl")), tuple(examples))


# --- data resolution --------------------------------------------------------------------------------------------


def test_resolve_data_forms(tmp_path: Path) -> None:
    folder = tmp_path / "nq"
    folder.mkdir()
    write_qa_jsonl([example(["a"])], folder / "dev.jsonl")
    by_folder = resolve_data(str(folder))
    assert (by_folder.name, by_folder.path.name) == ("nq", "dev.jsonl")
    assert "using dev.jsonl" in by_folder.note
    assert resolve_data(str(folder / "dev.jsonl")).name == "nq"  # a split file is named by its folder
    assert resolve_data(f"mine={folder / 'dev.jsonl'}").name == "mine"
    with pytest.raises(DatasetError, match=r"no test.jsonl or dev.jsonl"):
        resolve_data(str(tmp_path))  # a folder without split files
    with pytest.raises(DatasetError, match="no file or folder"):
        resolve_data(str(tmp_path / "missing.jsonl"))


# --- end to end on a real slice ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hotpot_slice(real_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``prepare qa`` output for 20 HotpotQA questions: ``dev.jsonl`` + their context ``corpus.jsonl``."""
    prepared = prepare_benchmark(
        "hotpotqa", real_data / "hotpotqa" / "hotpotqa_distractor_dev300.jsonl", split="dev", limit=20
    )
    out = tmp_path_factory.mktemp("retrieval") / "hotpotqa"
    write_benchmark(prepared, out)
    return out


@pytest.fixture(scope="module")
def nq_slice(real_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("retrieval") / "nq" / "test.jsonl"
    out.parent.mkdir()
    lines = (real_data / "nq" / "nq_test1000.jsonl").read_text(encoding="utf-8").splitlines()[:10]
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def hotpot_index(hotpot_slice: Path) -> Path:
    index = hotpot_slice.parent / "index-bm25"
    build_index(hotpot_slice / "corpus.jsonl", "bm25", index, progress=False)
    return index


def expandsearch(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return run_expandsearch(*args, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_eval_retrieval_end_to_end(hotpot_slice: Path, nq_slice: Path, hotpot_index: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = expandsearch(
        "eval-retrieval", "--data", hotpot_slice, nq_slice, "--split", "dev", "--index", hotpot_index,
        "--topk", "3,10", "--out", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "| hotpotqa | 20 |" in result.stdout
    results = json.loads((out / "results.json").read_text())
    hotpot, nq = results["results"]["hotpotqa"], results["results"]["nq"]
    assert hotpot["n"] == 20
    assert hotpot["n_supporting"] == 20
    assert results["datasets"]["hotpotqa"]["support"] == "ids"
    assert 0 < hotpot["recall@3"] <= hotpot["recall@10"] <= 1
    assert hotpot["all_supporting@3"] <= hotpot["all_supporting@10"]
    assert "recall@3" not in nq
    assert "all_supporting@10" not in nq
    assert set(nq) >= {"n", "answer_in_passages@3", "answer_in_passages@10"}
    assert results["topk"] == [3, 10]
    assert results["retriever"]["kind"] == "bm25"
    rows = [json.loads(line) for line in (out / "hotpotqa.jsonl").read_text().splitlines()]
    assert len(rows) == 20
    assert all(len(row["retrieved"]) == 10 for row in rows)
    assert sum(row["recall@3"] for row in rows) / 20 == pytest.approx(hotpot["recall@3"])
    assert (out / "results.md").read_text().startswith("| dataset |")


def test_supporting_ids_of_another_corpus_fall_back_to_titles(
    hotpot_slice: Path, wiki18_passages: tuple[Passage, ...], tmp_path: Path
) -> None:
    corpus = tmp_path / "other.jsonl"
    write_wiki18_jsonl(wiki18_passages[:50], corpus)  # ids "0", "1", … like the slice's corpus, other passages
    build_index(corpus, "bm25", tmp_path / "index", progress=False)
    with open_index_source(tmp_path / "index") as source:
        item = evaluate_dataset(source, load_dataset(resolve_data(str(hotpot_slice), "dev")), (10,))
    assert item.support == "titles"
    assert item.metrics["recall@10"] == 0.0  # none of these wiki-18 passages is a HotpotQA supporting title


def test_eval_retrieval_user_errors(hotpot_slice: Path, tmp_path: Path) -> None:
    missing_index = expandsearch("eval-retrieval", "--data", hotpot_slice, "--index", tmp_path / "none")
    assert missing_index.returncode == 2
    assert "manifest.json" in missing_index.stderr
    bad_topk = expandsearch("eval-retrieval", "--data", hotpot_slice, "--index", tmp_path, "--topk", "0")
    assert bad_topk.returncode == 2
    assert "--topk" in bad_topk.stderr
    missing_data = expandsearch("eval-retrieval", "--data", tmp_path / "none.jsonl", "--index", tmp_path)
    assert missing_data.returncode == 2
    assert "no file or folder" in missing_data.stderr
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder", encoding="utf-8")
    out_is_a_file = expandsearch("eval-retrieval", "--data", hotpot_slice, "--index", tmp_path, "--out", a_file)
    assert out_is_a_file.returncode == 2
    assert f"--out {a_file} is a file" in out_is_a_file.stderr
    for result in (missing_index, bad_topk, missing_data, out_is_a_file):
        assert "Traceback" not in result.stderr


@pytest.fixture
def served(hotpot_index: Path) -> Iterator[str]:
    with served_retriever(hotpot_index) as url:
        yield url


@pytest.mark.slow
def test_eval_retrieval_over_http_matches_the_index(hotpot_slice: Path, hotpot_index: Path, served: str) -> None:
    with open_index_source(hotpot_index) as source:
        expected = evaluate_dataset(source, load_dataset(resolve_data(str(hotpot_slice), "dev")), (3, 10)).metrics
    result = expandsearch(
        "eval-retrieval", "--data", hotpot_slice, "--split", "dev", "--retriever-url", served, "--topk", "3,10"
    )
    assert result.returncode == 0, result.stderr
    assert f"| hotpotqa | 20 | {expected['recall@3']:.3f} |" in result.stdout
