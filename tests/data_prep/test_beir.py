"""BEIR loading on the real SciFact sample, its one-line errors, and the BEIR-style HotpotQA task."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from data_prep.beir import (
    BeirFormatError,
    hotpotqa_task,
    load_beir,
    load_qrels,
    pooled_task,
    relevant,
    sample_query_ids,
    write_beir,
    write_corpus,
)
from retriever_server.corpus import load_passages


@pytest.fixture(scope="module")
def scifact(real_data: Path) -> Path:
    return real_data / "beir" / "scifact"


def test_scifact_splits_load_with_their_published_sizes(scifact: Path) -> None:
    test = load_beir(scifact, "test")
    train = load_beir(scifact, "train")
    assert len(test.corpus) == 5183
    assert (len(test.queries), len(train.queries)) == (300, 809)
    assert list(test.queries) == list(test.qrels)  # queries in qrels order, only the judged ones
    assert all(relevant(judged) for judged in test.qrels.values())
    first = test.corpus[0]
    assert first.id == "4983"
    assert first.title.startswith("Microstructural development of human newborn cerebral white matter")


def test_the_converted_corpus_reads_back_as_our_corpus_format(scifact: Path, tmp_path: Path) -> None:
    task = load_beir(scifact, "test")
    count = write_corpus(task.corpus[:50], tmp_path / "corpus.jsonl")
    assert count == 50
    assert load_passages(tmp_path / "corpus.jsonl") == task.corpus[:50]


def _copy(scifact: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "scifact"
    shutil.copytree(scifact, folder)
    return folder


def test_missing_qrels_is_one_line(scifact: Path, tmp_path: Path) -> None:
    folder = _copy(scifact, tmp_path)
    (folder / "qrels" / "test.tsv").unlink()
    with pytest.raises(FileNotFoundError, match=r"qrels not found: .*test\.tsv") as error:
        load_beir(folder, "test")
    assert "\n" not in str(error.value)


def test_a_qrel_query_absent_from_queries_is_named(scifact: Path, tmp_path: Path) -> None:
    folder = _copy(scifact, tmp_path)
    with (folder / "qrels" / "test.tsv").open("a") as handle:
        handle.write("no-such-query\t4983\t1\n")
    with pytest.raises(BeirFormatError, match=r"query id 'no-such-query' is not in queries.jsonl \(1 of 301"):
        load_beir(folder, "test")


def test_a_qrel_document_absent_from_the_corpus_is_named(scifact: Path, tmp_path: Path) -> None:
    folder = _copy(scifact, tmp_path)
    with (folder / "qrels" / "test.tsv").open("a") as handle:
        handle.write("1\tno-such-doc\t1\n")
    with pytest.raises(BeirFormatError, match=r"corpus id 'no-such-doc' is not in corpus\.jsonl"):
        load_beir(folder, "test")


def test_an_empty_corpus_is_refused(scifact: Path, tmp_path: Path) -> None:
    folder = _copy(scifact, tmp_path)
    (folder / "corpus.jsonl").write_text("\n")
    with pytest.raises(BeirFormatError, match="the corpus is empty"):
        load_beir(folder, "test")


def test_a_non_integer_score_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "test.tsv"
    path.write_text("query-id\tcorpus-id\tscore\nq1\td1\thigh\n")
    with pytest.raises(BeirFormatError, match=r"test.tsv:2: score 'high' is not an integer"):
        load_qrels(path)


def test_hotpotqa_task_judges_supporting_paragraphs_in_a_shared_corpus(real_data: Path, tmp_path: Path) -> None:
    hotpot = real_data / "hotpotqa"
    tasks = hotpotqa_task(
        {"train": hotpot / "hotpotqa_distractor_dev300.jsonl", "test": hotpot / "hotpotqa_distractor_dev300b.jsonl"}
    )
    train, test = tasks["train"], tasks["test"]
    assert train.corpus is test.corpus
    assert (len(train.queries), len(test.queries)) == (300, 300)
    # distractor questions have two supporting paragraphs, each one corpus document
    assert all(len(judged) == 2 for judged in test.qrels.values())
    by_id = {passage.id: passage for passage in test.corpus}
    question_id, judged = next(iter(test.qrels.items()))
    assert all(doc in by_id for doc in judged)
    written = write_beir([train, test], tmp_path / "hotpot_beir")
    reloaded = load_beir(written, "test", name="hotpotqa")
    assert reloaded.qrels == test.qrels
    assert reloaded.queries[question_id] == test.queries[question_id]
    assert [p.id for p in reloaded.corpus] == [p.id for p in test.corpus]


def test_a_pooled_task_keeps_the_judged_and_the_top_ranked_documents_in_corpus_order(scifact: Path) -> None:
    task = load_beir(scifact, "test")
    chosen = sample_query_ids(task, 5, seed=3)
    assert chosen == sample_query_ids(task, 5, seed=3) != sample_query_ids(task, 5, seed=4)
    assert chosen == [query_id for query_id in task.queries if query_id in chosen]  # qrels order
    unjudged = [p.id for p in task.corpus if all(p.id not in judged for judged in task.qrels.values())]
    run = {query_id: unjudged[number * 4 : number * 4 + 4] for number, query_id in enumerate(chosen)}
    pooled = pooled_task(task, chosen, [run], depth=2)
    expected = {doc for q in chosen for doc in task.qrels[q]} | {doc for docs in run.values() for doc in docs[:2]}
    assert pooled.document_ids() == expected
    order = [p.id for p in task.corpus]
    assert [p.id for p in pooled.corpus] == sorted(expected, key=order.index)
    assert list(pooled.queries) == chosen
    assert pooled.qrels == {query_id: task.qrels[query_id] for query_id in chosen}
    assert sample_query_ids(task, 10_000) == list(task.queries)


def test_a_pool_refuses_unknown_queries_and_documents(scifact: Path) -> None:
    task = load_beir(scifact, "test")
    first = next(iter(task.queries))
    with pytest.raises(BeirFormatError, match="query id 'nope' is not judged in the test split"):
        pooled_task(task, ["nope"], [], depth=10)
    with pytest.raises(BeirFormatError, match="run names document 'ghost'"):
        pooled_task(task, [first], [{first: ["ghost"]}], depth=10)
    with pytest.raises(ValueError, match="depth must be >= 1"):
        pooled_task(task, [first], [], depth=0)
    with pytest.raises(ValueError, match="at least one query"):
        sample_query_ids(task, 0)
