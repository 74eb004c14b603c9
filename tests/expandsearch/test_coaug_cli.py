"""``expandsearch coaug``: augment → index → eval on a SciFact slice with a tiny real model and real BM25."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from data_prep.beir import load_beir
from expandsearch.cli import main
from retriever_server.corpus import load_passages

QUERIES = 8
DISTRACTORS = 40


@pytest.fixture(scope="module")
def scifact_slice(real_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BEIR folder: the first test queries, their relevant abstracts and some other abstracts."""
    source = real_data / "beir" / "scifact"
    task = load_beir(source, "test")
    chosen = dict(list(task.qrels.items())[:QUERIES])
    wanted = {doc for judged in chosen.values() for doc in judged}
    others = [p.id for p in task.corpus if p.id not in wanted][:DISTRACTORS]
    keep = wanted | set(others)
    folder = tmp_path_factory.mktemp("scifact_slice")
    (folder / "qrels").mkdir()
    with (source / "corpus.jsonl").open() as lines, (folder / "corpus.jsonl").open("w") as out:
        out.writelines(line for line in lines if json.loads(line)["_id"] in keep)
    shutil.copy(source / "queries.jsonl", folder / "queries.jsonl")
    with (folder / "qrels" / "test.tsv").open("w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["query-id", "corpus-id", "score"])
        writer.writerows([query, doc, score] for query, judged in chosen.items() for doc, score in judged.items())
    return folder


def cli(*args: str | Path) -> None:
    assert main([str(arg) for arg in args]) == 0


def test_augment_index_eval_on_a_scifact_slice(scifact_slice: Path, tiny_policy_dir: Path, tmp_path: Path) -> None:
    tiny: list[str | Path] = [
        "--model",
        tiny_policy_dir,
        "--max-new-tokens",
        "8",
        "--batch-size",
        "16",
        "--no-think",
        "--no-progress",
    ]
    cli("coaug", "prepare", "--beir", scifact_slice, "--out", tmp_path / "corpus.jsonl")
    cli("coaug", "augment", "--beir", scifact_slice, "--side", "documents", "--kind", "sparse", *tiny,
        "--out", tmp_path / "docs")  # fmt: skip
    cli("coaug", "augment", "--beir", scifact_slice, "--side", "queries", "--kind", "sparse", *tiny,
        "--out", tmp_path / "queries")  # fmt: skip
    augmented = load_passages(tmp_path / "docs" / "corpus.jsonl")
    original = load_passages(tmp_path / "corpus.jsonl")
    assert [p.id for p in augmented] == [p.id for p in original]
    assert sum(a.title != o.title for a, o in zip(augmented, original, strict=True)) > 0
    stats = json.loads((tmp_path / "docs" / "stats.json").read_text())["runs"][0]
    assert stats["items"] == len(original)
    assert stats["items_per_s"] > 0
    assert stats["generated_tokens_per_item"] > 0
    bm25 = ["--kind", "bm25", "--k1", "0.9", "--b", "0.4"]
    cli("index", "--corpus", tmp_path / "corpus.jsonl", *bm25, "--out", tmp_path / "idx")
    cli("index", "--corpus", tmp_path / "docs" / "corpus.jsonl", *bm25, "--out", tmp_path / "idx_aug")
    cli("coaug", "eval", "--beir", scifact_slice, "--index", tmp_path / "idx", "--augmented-index",
        tmp_path / "idx_aug", "--query-augmentations", tmp_path / "queries", "--out", tmp_path / "results")  # fmt: skip
    results = json.loads((tmp_path / "results" / "results.json").read_text())
    assert list(results["results"]) == ["none", "query only", "documents only", "both"]
    for metrics in results["results"].values():
        assert metrics["n"] == QUERIES
        assert 0 < metrics["ndcg@10"] <= 1
        assert metrics["bm25"] == {"language": "english", "library": "bm25s", "k1": 0.9, "b": 0.4}
    assert results["results"]["query only"]["queries_augmented"] > 0
    # 48 documents: a relevant one is missed only without a query term in common (BM25 returns no zero scores)
    assert 0.5 < results["results"]["none"]["recall@100"] <= 1.0
    assert set(results["paired_vs_none"]) == {"query only", "documents only", "both"}
    table = (tmp_path / "results" / "results.md").read_text()
    assert "| both | bm25 k1=0.9 b=0.4 | 8 |" in table
    rows = (tmp_path / "results" / "per_query.jsonl").read_text().splitlines()
    assert len(rows) == 4 * QUERIES


def test_bad_inputs_are_one_line_errors(
    scifact_slice: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(scifact_slice, broken)
    (broken / "qrels" / "test.tsv").unlink()
    assert main(["coaug", "eval", "--beir", str(broken), "--index", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("expandsearch coaug: error: qrels not found:")
    assert error.count("\n") == 1
    (broken / "corpus.jsonl").write_text("")
    args = ["coaug", "augment", "--beir", str(broken), "--side", "documents", "--kind", "sparse"]
    assert main([*args, "--model", "smollm2", "--out", str(tmp_path / "a")]) == 2
    assert "the corpus is empty" in capsys.readouterr().err


def test_pool_writes_a_smaller_beir_folder_that_eval_reads(
    real_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent_env.augment import combine_query
    from retriever_server.index_dir import load_index

    scifact = real_data / "beir" / "scifact"
    full = load_beir(scifact, "test")
    # every query's augmentation is the same few terms, so its top 5 differ from the original query's
    augmentations = tmp_path / "queries.jsonl"
    augmentations.write_text(
        "".join(json.dumps({"id": q, "answer": "mouse liver insulin"}) + "\n" for q in full.queries)
    )
    cli("coaug", "prepare", "--beir", scifact, "--out", tmp_path / "corpus.jsonl")
    cli("index", "--corpus", tmp_path / "corpus.jsonl", "--kind", "bm25", "--k1", "0.9", "--b", "0.4",
        "--out", tmp_path / "idx")  # fmt: skip
    cli("coaug", "pool", "--beir", scifact, "--index", tmp_path / "idx", "--queries", "20", "--depth", "5",
        "--query-augmentations", augmentations, "--out", tmp_path / "pool")  # fmt: skip
    pooled = load_beir(tmp_path / "pool", "test")
    assert len(pooled.queries) == 20
    assert pooled.qrels == {query_id: full.qrels[query_id] for query_id in pooled.queries}
    index = load_index(tmp_path / "idx")
    for text in pooled.queries.values():
        for asked in (text, combine_query(text, "mouse liver insulin", "sparse")):
            assert {hit.id for hit in index.batch_search([asked], 5)[0]} <= pooled.document_ids()
    judged = {doc for judged in pooled.qrels.values() for doc in judged}
    assert len(judged) + 5 < len(pooled.corpus) <= 2 * 20 * 5 + len(judged)
    pool = json.loads((tmp_path / "pool" / "pool.json").read_text())
    assert (pool["queries"], pool["documents"], pool["depth"], pool["pooled_runs"], pool["index_kind"]) == (
        20, len(pooled.corpus), 5, ["none", "query only"], "bm25",
    )  # fmt: skip
    cli("coaug", "prepare", "--beir", tmp_path / "pool", "--out", tmp_path / "pool_corpus.jsonl")
    cli("index", "--corpus", tmp_path / "pool_corpus.jsonl", "--kind", "bm25", "--k1", "0.9", "--b", "0.4",
        "--out", tmp_path / "pool_idx")  # fmt: skip
    cli("coaug", "eval", "--beir", tmp_path / "pool", "--index", tmp_path / "pool_idx", "--out", tmp_path / "r")
    on_pool = json.loads((tmp_path / "r" / "results.json").read_text())["results"]["none"]
    assert on_pool["n"] == 20
    assert 0 < on_pool["ndcg@10"] <= 1
    again = ["coaug", "pool", "--beir", str(scifact), "--index", str(tmp_path / "idx"), "--out", str(tmp_path / "pool")]
    assert main(again) == 2
    assert "already holds a BEIR corpus" in capsys.readouterr().err
