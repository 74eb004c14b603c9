"""Tests for data_prep.benchmarks: every layout on the real samples, context corpora, sampling, the files.

Each sample QA file is read in its own layout; the other layouts (original HotpotQA list, NQ-open, FlashRAG with
context in its metadata, 2Wiki in Hugging Face columns) are built in tmp dirs from the same real records, so the
tests can check that every route gives the same questions, golds and corpus.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from support import plain, raw_rows

from agent_env import AGENT_LOOP_NAME
from agent_env.protocol import build_messages
from data_prep.benchmarks import (
    DATASETS,
    LAYOUTS,
    PreparedBenchmark,
    context_corpus,
    golden_answers,
    load_benchmark,
    prepare_benchmark,
    read_benchmark,
    sample_indices,
    write_benchmark,
)
from data_prep.formats import ABILITY, VERL_COLUMNS, QAExample, QAFormatError, read_qa_jsonl
from retriever_server.corpus import load_passages

HOTPOT = "hotpotqa/hotpotqa_distractor_dev300.jsonl"
TWOWIKI = "2wikimultihopqa/2wiki_dev_with_context80.jsonl"
MUSIQUE = "musique/musique_ans_dev100.jsonl"

SAMPLE_QA = [
    ("nq", "nq/nq_test1000.jsonl", "flashrag", 1000),
    ("triviaqa", "triviaqa/triviaqa_test1000.jsonl", "flashrag", 1000),
    ("popqa", "popqa/popqa_test1000.jsonl", "flashrag", 1000),
    ("bamboogle", "bamboogle/bamboogle_test125.jsonl", "flashrag", 125),
    ("hotpotqa", HOTPOT, "hotpotqa_hf", 300),
    ("hotpotqa", "hotpotqa/hotpotqa_distractor_dev300b.jsonl", "hotpotqa_hf", 300),
    ("2wikimultihopqa", TWOWIKI, "2wiki", 80),
    ("musique", MUSIQUE, "musique", 100),
]


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def hotpot_original(row: dict[str, Any]) -> dict[str, Any]:
    """A Hugging Face hotpot_qa row in the original HotpotQA json layout (what hotpot_dev_distractor_v1.json holds)."""
    context, facts = row["context"], row["supporting_facts"]
    return {
        "_id": row["id"],
        "question": row["question"],
        "answer": row["answer"],
        "type": row["type"],
        "level": row["level"],
        "supporting_facts": [list(pair) for pair in zip(facts["title"], facts["sent_id"], strict=True)],
        "context": [[title, sents] for title, sents in zip(context["title"], context["sentences"], strict=True)],
    }


@pytest.fixture(scope="module")
def hotpot(real_data: Path) -> PreparedBenchmark:
    return prepare_benchmark("hotpotqa", real_data / HOTPOT)


# --- every real sample in its own layout ------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "file", "layout", "rows"), SAMPLE_QA, ids=[item[1] for item in SAMPLE_QA])
def test_sample_sample_reads_in_its_layout(real_data: Path, name: str, file: str, layout: str, rows: int) -> None:
    prepared = prepare_benchmark(name, real_data / file)
    assert prepared.layout == layout
    assert prepared.source_questions == len(prepared.examples) == rows
    assert len({example.id for example in prepared.examples}) == rows
    assert all(example.question.strip() for example in prepared.examples)
    assert all(gold and gold == gold.strip() for example in prepared.examples for gold in example.golden_answers)
    first = raw_rows(real_data / file, 1)[0]
    assert prepared.examples[0].id == first.get("id", first.get("_id"))
    assert prepared.examples[0].question == first["question"].strip()
    distractor = layout in ("hotpotqa_hf", "2wiki", "musique")
    assert bool(prepared.corpus) == distractor
    assert all(("supporting_ids" in example.metadata) == distractor for example in prepared.examples)


@pytest.mark.parametrize("file", ["nq/nq_test1000.jsonl", "triviaqa/triviaqa_test1000.jsonl"])
def test_flashrag_keeps_every_alias(real_data: Path, file: str) -> None:
    examples = load_benchmark("triviaqa", real_data / file)
    rows = raw_rows(real_data / file)
    assert [example.golden_answers for example in examples] == [row["golden_answers"] for row in rows]
    assert max(len(example.golden_answers) for example in examples) > 5  # the alias lists survive


def test_flashrag_metadata_passes_through(real_data: Path) -> None:
    examples = load_benchmark("popqa", real_data / "popqa" / "popqa_test1000.jsonl")
    first = raw_rows(real_data / "popqa" / "popqa_test1000.jsonl", 1)[0]
    assert examples[0] == QAExample(first["id"], first["question"], first["golden_answers"], first["metadata"])


# --- HotpotQA ---------------------------------------------------------------------------------------------------


def test_hotpot_corpus_and_supporting_ids(real_data: Path, hotpot: PreparedBenchmark) -> None:
    rows = raw_rows(real_data / HOTPOT)
    by_id = {passage.id: passage for passage in hotpot.corpus}
    assert [passage.id for passage in hotpot.corpus] == [str(i) for i in range(len(hotpot.corpus))]
    assert len({(p.title, p.text) for p in hotpot.corpus}) == len(hotpot.corpus)  # deduplicated
    assert len(hotpot.corpus) < sum(len(row["context"]["title"]) for row in rows)  # questions share paragraphs
    for row, example in zip(rows, hotpot.examples, strict=True):
        titles = list(dict.fromkeys(row["supporting_facts"]["title"]))
        assert example.metadata["supporting_titles"] == titles
        assert [by_id[pid].title for pid in example.metadata["supporting_ids"]] == titles
        assert example.golden_answers == [row["answer"]]
        assert example.metadata["type"] == row["type"]
        assert example.metadata["level"] == "hard"
        assert example.metadata["supporting_facts"] == [
            [title, sent]
            for title, sent in zip(row["supporting_facts"]["title"], row["supporting_facts"]["sent_id"], strict=True)
        ]
        assert "context" not in example.metadata  # it is in the corpus
    # Sentences carry their leading space: the paragraph is their plain concatenation.
    first = rows[0]["context"]
    passage = by_id[hotpot.examples[0].metadata["supporting_ids"][0]]
    position = first["title"].index(passage.title)
    assert passage.text == "".join(first["sentences"][position]).strip()


def test_hotpot_original_list_layout_matches_the_hf_layout(
    real_data: Path, tmp_path: Path, hotpot: PreparedBenchmark
) -> None:
    rows = [hotpot_original(row) for row in raw_rows(real_data / HOTPOT)]
    path = tmp_path / "hotpot_dev_distractor_v1.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    original = prepare_benchmark("hotpotqa", path)
    assert original.layout == "hotpotqa"
    assert original.examples == hotpot.examples
    assert original.corpus == hotpot.corpus


def test_hotpot_quote_split_sentences_join_without_space(hotpot: PreparedBenchmark) -> None:
    # HotpotQA splits some sentences inside a quotation ('... "Kerrang!' + '" magazine ...'); "" keeps them whole.
    texts = [passage.text for passage in hotpot.corpus]
    assert any('"Kerrang!" magazine' in text for text in texts)
    assert not any('"Kerrang! " magazine' in text for text in texts)


def test_flashrag_with_context_in_metadata(real_data: Path, tmp_path: Path, hotpot: PreparedBenchmark) -> None:
    rows = raw_rows(real_data / HOTPOT)
    flashrag = [
        {
            "id": row["id"],
            "question": row["question"],
            "golden_answers": [row["answer"]],
            "metadata": {key: row[key] for key in ("type", "level", "supporting_facts", "context")},
        }
        for row in rows
    ]
    prepared = prepare_benchmark("hotpotqa", write_jsonl(tmp_path / "dev.jsonl", flashrag))
    assert prepared.layout == "flashrag"
    assert prepared.examples == hotpot.examples
    assert prepared.corpus == hotpot.corpus


# --- 2Wiki ------------------------------------------------------------------------------------------------------


def test_2wiki_context_corpus(real_data: Path) -> None:
    rows = raw_rows(real_data / TWOWIKI)
    prepared = prepare_benchmark("2wikimultihopqa", real_data / TWOWIKI)
    by_id = {passage.id: passage for passage in prepared.corpus}
    texts = {(p.title, p.text) for p in prepared.corpus}
    for row, example in zip(rows, prepared.examples, strict=True):
        assert example.id == row["_id"]
        assert example.metadata["evidences"] == row["evidences"]
        assert example.metadata["type"] == row["type"]
        titles = list(dict.fromkeys(title for title, _ in row["supporting_facts"]))
        assert example.metadata["supporting_titles"] == titles
        assert [by_id[pid].title for pid in example.metadata["supporting_ids"]] == titles
        for title, sentences in row["context"]:  # sentences without their own spaces: joined with " "
            assert (title, " ".join(sentences).strip()) in texts
    # A question whose context repeats a paragraph gets it once.
    repeated = next(i for i, row in enumerate(rows) if row["_id"] == "72cfea12086711ebbd5eac1f6bf848b6")
    titles = [title for title, _ in rows[repeated]["context"]]
    assert titles.count("Seven Guns to Mesa") == 2
    assert sum(p.title == "Seven Guns to Mesa" for p in prepared.corpus) == 1


def test_2wiki_in_hf_columns_and_with_aliases(real_data: Path, tmp_path: Path) -> None:
    rows = raw_rows(real_data / TWOWIKI, 10)
    reference = prepare_benchmark("2wikimultihopqa", real_data / TWOWIKI, limit=None)
    columns = [
        {
            **row,
            "context": {"title": [c[0] for c in row["context"]], "sentences": [c[1] for c in row["context"]]},
            "supporting_facts": {
                "title": [f[0] for f in row["supporting_facts"]],
                "sent_id": [f[1] for f in row["supporting_facts"]],
            },
            "answer_aliases": ["an alias", row["answer"]],
        }
        for row in rows
    ]
    prepared = prepare_benchmark("2wikimultihopqa", write_jsonl(tmp_path / "dev.jsonl", columns))
    assert prepared.layout == "2wiki"
    for example, row in zip(prepared.examples, rows, strict=True):
        assert example.golden_answers == [row["answer"], "an alias"]  # deduplicated, answer first
    texts = {(p.title, p.text) for p in reference.corpus}
    assert {(p.title, p.text) for p in prepared.corpus} <= texts


# --- MuSiQue ----------------------------------------------------------------------------------------------------


def test_musique_aliases_and_supporting_paragraphs(real_data: Path) -> None:
    rows = raw_rows(real_data / MUSIQUE)
    prepared = prepare_benchmark("musique", real_data / MUSIQUE)
    by_id = {passage.id: passage for passage in prepared.corpus}
    assert any(row["answer_aliases"] for row in rows)
    for row, example in zip(rows, prepared.examples, strict=True):
        assert example.golden_answers == golden_answers(row["answer"], row["answer_aliases"])
        assert example.golden_answers[0] == row["answer"]
        assert set(row["answer_aliases"]) <= set(example.golden_answers)
        # Supporting paragraphs, in the decomposition's hop order, each by its own text (titles repeat).
        hops = [step["paragraph_support_idx"] for step in row["question_decomposition"]]
        expected = [row["paragraphs"][idx] for idx in hops]
        assert all(paragraph["is_supporting"] for paragraph in expected)
        assert [by_id[pid].text for pid in example.metadata["supporting_ids"]] == [
            p["paragraph_text"].strip() for p in expected
        ]
        assert example.metadata["answerable"] is True
        assert example.metadata["question_decomposition"] == row["question_decomposition"]
        assert "paragraphs" not in example.metadata


def test_musique_same_title_paragraphs_stay_apart(real_data: Path) -> None:
    prepared = prepare_benchmark("musique", real_data / MUSIQUE)
    example = next(e for e in prepared.examples if e.id == "2hop__29367_29376")
    assert example.metadata["supporting_titles"] == ["Liberal Party of Australia"]
    assert len(set(example.metadata["supporting_ids"])) == 2


# --- NQ-open ------------------------------------------------------------------------------------------------------


def test_nq_open_layout(real_data: Path, tmp_path: Path) -> None:
    rows = raw_rows(real_data / "nq" / "nq_test1000.jsonl", 50)
    path = write_jsonl(
        tmp_path / "NQ-open.dev.jsonl", [{"question": r["question"], "answer": r["golden_answers"]} for r in rows]
    )
    used, questions = read_benchmark(path, split="dev")
    assert used == "nq_open"
    assert [q.example.golden_answers for q in questions] == [r["golden_answers"] for r in rows]
    assert [q.example.question for q in questions] == [r["question"] for r in rows]
    assert [q.example.id for q in questions[:2]] == ["dev_0", "dev_1"]  # no ids in NQ-open: split_position


# --- sub-sampling ---------------------------------------------------------------------------------------------------


def test_sample_indices_is_deterministic_sorted_and_nested() -> None:
    assert sample_indices(300, 50, seed=3) == sample_indices(300, 50, seed=3)
    assert sample_indices(300, 50, seed=3) != sample_indices(300, 50, seed=4)
    small, large = sample_indices(300, 50, seed=3), sample_indices(300, 120, seed=3)
    assert small == sorted(small)
    assert len(set(small)) == 50
    assert set(small) <= set(large)
    assert sample_indices(10, None) == sample_indices(10, 10) == sample_indices(10, 99) == list(range(10))
    with pytest.raises(ValueError, match="limit"):
        sample_indices(10, -1)


def test_limit_subsamples_questions_and_their_corpus(real_data: Path, hotpot: PreparedBenchmark) -> None:
    first = prepare_benchmark("hotpotqa", real_data / HOTPOT, limit=20, seed=7)
    again = prepare_benchmark("hotpotqa", real_data / HOTPOT, limit=20, seed=7)
    other = prepare_benchmark("hotpotqa", real_data / HOTPOT, limit=20, seed=8)
    assert first == again
    assert [e.id for e in first.examples] != [e.id for e in other.examples]
    order = [e.id for e in hotpot.examples]
    positions = [order.index(e.id) for e in first.examples]
    assert positions == sorted(positions)  # source order kept
    assert first.source_questions == 300
    assert len(first.corpus) <= 20 * 10
    # The corpus is rebuilt for the chosen questions: their ids index it and nothing else is in it.
    titles = {title for e in first.examples for title in e.metadata["supporting_titles"]}
    by_id = {p.id: p for p in first.corpus}
    assert {by_id[pid].title for e in first.examples for pid in e.metadata["supporting_ids"]} == titles


def test_context_corpus_passes_open_domain_questions_through(real_data: Path) -> None:
    _, questions = read_benchmark(real_data / "bamboogle" / "bamboogle_test125.jsonl")
    passages, examples = context_corpus(questions)
    assert passages == []
    assert examples == [question.example for question in questions]


# --- errors -------------------------------------------------------------------------------------------------------


def test_missing_field_names_file_line_layout_and_field(real_data: Path, tmp_path: Path) -> None:
    rows = raw_rows(real_data / HOTPOT, 3)
    del rows[2]["answer"]
    path = write_jsonl(tmp_path / "dev.jsonl", rows)
    with pytest.raises(QAFormatError) as caught:
        read_benchmark(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:3: layout hotpotqa_hf: missing field 'answer'")
    assert "fields seen: context, id, level, question, supporting_facts, type" in message


@pytest.mark.parametrize(
    ("layout", "record", "message"),
    [
        ("flashrag", {"id": "1", "question": "q", "golden_answers": "Paris"}, "'golden_answers' must be a list"),
        ("flashrag", {"id": "1", "question": "q", "golden_answers": ["", " "]}, "no gold answer"),
        ("flashrag", {"id": "1", "question": " ", "golden_answers": ["a"]}, "'question' is empty"),
        ("flashrag", {"question": "q", "golden_answers": ["a"], "metadata": [1]}, "'metadata' must be an object"),
        ("musique", {"id": "1", "question": "q", "answer": "a"}, "missing field 'paragraphs'"),
        ("musique", {"question": "q", "answer": "a", "paragraphs": [{"title": "t"}]}, "paragraphs\\[0\\] needs"),
        ("nq_open", {"question": "q"}, "missing field 'answer'"),
        ("hotpotqa", {"question": "q", "answer": "a", "context": {"title": []}, "supporting_facts": []}, "pairs"),
        ("hotpotqa_hf", {"question": "q", "answer": "a", "context": [], "supporting_facts": []}, "columns"),
        (
            "hotpotqa_hf",
            {
                "question": "q",
                "answer": "a",
                "context": {"title": ["t"], "sentences": [["s"]]},
                "supporting_facts": {"title": ["t", "u"], "sent_id": [0]},
            },
            "sent_id must be a list as long as supporting_facts.title",
        ),
        ("2wiki", {"question": "q", "answer": "a", "context": [["t", "not a list"]], "supporting_facts": []}, "pairs"),
    ],
)
def test_forced_layout_errors(tmp_path: Path, layout: str, record: dict[str, Any], message: str) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", [record])
    with pytest.raises(QAFormatError, match=message) as caught:
        read_benchmark(path, layout)
    assert str(caught.value).startswith(f"{path}:1: layout {layout}:")


def test_unknown_layout_names_fields_and_known_layouts(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", [{"query": "q", "label": "a"}])
    with pytest.raises(QAFormatError, match="unknown layout") as caught:
        read_benchmark(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:1:")
    assert "fields seen: label, query" in message
    assert all(layout in message for layout in LAYOUTS)
    assert "\n" not in message


def test_layout_is_detected_from_the_first_record_only(real_data: Path, tmp_path: Path) -> None:
    good = raw_rows(real_data / "nq" / "nq_test1000.jsonl", 2)
    path = write_jsonl(tmp_path / "qa.jsonl", [*good, {"question": "q", "answer": ["a"]}])
    with pytest.raises(QAFormatError, match=f"{path}:3: layout flashrag: missing field 'golden_answers'"):
        read_benchmark(path)


def test_unknown_names(real_data: Path) -> None:
    with pytest.raises(QAFormatError, match="unknown dataset 'hotpot'; known: nq, triviaqa"):
        prepare_benchmark("hotpot", real_data / HOTPOT)
    with pytest.raises(QAFormatError, match="unknown layout 'squad'"):
        read_benchmark(real_data / HOTPOT, "squad")


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(QAFormatError, match="empty"):
        load_benchmark("nq", tmp_path / "empty.jsonl")


# --- output files -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("template", ["expandsearch", "search_r1"])
def test_written_files_field_by_field(real_data: Path, tmp_path: Path, template: str) -> None:
    prepared = prepare_benchmark("musique", real_data / MUSIQUE, limit=15, seed=2, split="test")
    paths = write_benchmark(prepared, tmp_path / "musique", template=template)
    assert paths == {
        "jsonl": tmp_path / "musique" / "test.jsonl",
        "parquet": tmp_path / "musique" / "test.parquet",
        "corpus": tmp_path / "musique" / "corpus.jsonl",
    }
    assert read_qa_jsonl(paths["jsonl"]) == prepared.examples
    assert load_passages(paths["corpus"]) == prepared.corpus
    first_line = json.loads(paths["corpus"].read_text(encoding="utf-8").splitlines()[0])
    passage = prepared.corpus[0]
    assert first_line == {"id": "0", "title": passage.title, "contents": f'"{passage.title}"\n{passage.text}'}

    frame = pd.read_parquet(paths["parquet"])
    assert list(frame.columns) == list(VERL_COLUMNS)
    assert len(frame) == 15
    for index, (example, row) in enumerate(zip(prepared.examples, frame.to_dict("records"), strict=True)):
        assert row["data_source"] == "musique"
        assert plain(row["prompt"]) == build_messages(example.question, template=template)
        assert row["ability"] == ABILITY
        assert plain(row["reward_model"]) == {"style": "rule", "ground_truth": {"target": example.golden_answers}}
        assert plain(row["extra_info"]) == {
            "split": "test",
            "index": index,
            "question": example.question,
            "id": example.id,
            "type": example.metadata.get("type"),
        }
        assert row["agent_name"] == AGENT_LOOP_NAME
    assert any(len(plain(rm)["ground_truth"]["target"]) > 1 for rm in frame["reward_model"])  # aliases


def test_open_domain_sets_write_no_corpus(real_data: Path, tmp_path: Path) -> None:
    prepared = prepare_benchmark("nq", real_data / "nq" / "nq_test1000.jsonl", split="train", limit=5)
    paths = write_benchmark(prepared, tmp_path / "nq")
    assert set(paths) == {"jsonl", "parquet"}
    assert not (tmp_path / "nq" / "corpus.jsonl").exists()
    assert set(pd.read_parquet(paths["parquet"])["data_source"]) == {"nq"}


def test_a_second_split_may_not_share_a_context_corpus(real_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "hotpotqa"
    write_benchmark(prepare_benchmark("hotpotqa", real_data / HOTPOT, limit=5, split="train"), out)
    write_benchmark(prepare_benchmark("hotpotqa", real_data / HOTPOT, limit=6, split="train"), out)  # same split
    with pytest.raises(QAFormatError, match=r"train\.jsonl, whose supporting_ids index"):
        write_benchmark(prepare_benchmark("hotpotqa", real_data / HOTPOT, limit=5, split="test"), out)
    assert not (out / "test.jsonl").exists()


def test_bad_split_and_template_write_nothing(real_data: Path, tmp_path: Path) -> None:
    prepared = prepare_benchmark("nq", real_data / "nq" / "nq_test1000.jsonl", limit=3)
    with pytest.raises(ValueError, match="cannot name a file"):
        write_benchmark(PreparedBenchmark("nq", "../x", "flashrag", prepared.examples, [], 3), tmp_path / "a")
    with pytest.raises(ValueError, match="unknown prompt template"):
        write_benchmark(prepared, tmp_path / "b", template="nope")
    assert not (tmp_path / "b" / "test.jsonl").exists()


def test_dataset_names_are_the_seven_benchmarks() -> None:
    assert DATASETS == ("nq", "triviaqa", "popqa", "hotpotqa", "2wikimultihopqa", "musique", "bamboogle")


def test_null_ids_fall_back_to_split_and_position(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "qa.jsonl",
        [{"id": None, "question": "q0", "golden_answers": ["a"]}, {"id": 0, "question": "q1", "golden_answers": ["b"]}],
    )
    assert [e.id for e in load_benchmark("nq", path, split="dev")] == ["dev_0", "0"]
