"""Tests for data_prep.formats: FlashRAG QA jsonl and the verl parquet schema (docs/formats.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from support import plain

from agent_env import AGENT_LOOP_NAME
from agent_env.protocol import build_messages
from data_prep.formats import ABILITY, QAExample, QAFormatError, read_qa_jsonl, write_qa_jsonl, write_verl_parquet

EXAMPLES = [
    QAExample("q0", "Who wrote Hamlet?", ["William Shakespeare", "Shakespeare"], {"type": "single_hop", "hops": 1}),
    QAExample("q1", "Where is the Eiffel Tower?", ["Paris"]),
    QAExample("q2", "Wie heißt die Hauptstadt von Österreich?", ["Wien", "Vienna"], {"lang": "de", "tags": ["a"]}),
]

VERL_COLUMNS = ["data_source", "prompt", "ability", "reward_model", "extra_info", "agent_name"]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# --- FlashRAG jsonl ---------------------------------------------------------------------------------------------


def test_qa_jsonl_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "qa.jsonl"
    assert write_qa_jsonl(iter(EXAMPLES), path) == len(EXAMPLES)
    assert read_qa_jsonl(path) == EXAMPLES
    lines = path.read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0]) == {
        "id": "q0",
        "question": "Who wrote Hamlet?",
        "golden_answers": ["William Shakespeare", "Shakespeare"],
        "metadata": {"type": "single_hop", "hops": 1},
    }
    assert "Österreich" in lines[2]  # UTF-8, not \u escapes


def test_read_qa_jsonl_defaults_and_coercion(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "qa.jsonl",
        [
            json.dumps({"question": "no id", "golden_answers": ["x"]}),
            "",
            json.dumps({"id": 7, "question": "numeric id and gold", "golden_answers": [1999], "metadata": None}),
        ],
    )
    examples = read_qa_jsonl(path)
    assert examples == [
        QAExample("0", "no id", ["x"], {}),
        QAExample("7", "numeric id and gold", ["1999"], {}),
    ]


def test_read_qa_jsonl_sample_nq(real_data: Path) -> None:
    path = real_data / "nq" / "nq_test1000.jsonl"
    examples = read_qa_jsonl(path)
    assert len(examples) == 1000
    assert all(example.golden_answers for example in examples)
    assert all(isinstance(gold, str) and gold for example in examples for gold in example.golden_answers)
    assert all(example.question.strip() for example in examples)
    assert len({example.id for example in examples}) == 1000
    with path.open(encoding="utf-8") as handle:
        first = json.loads(handle.readline())
    assert examples[0] == QAExample(first["id"], first["question"], first["golden_answers"], {})


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        (json.dumps({"id": "1", "question": "q"}), "golden_answers"),
        (json.dumps({"id": "1", "question": "q", "golden_answers": []}), "non-empty list"),
        (json.dumps({"id": "1", "question": "q", "golden_answers": "Paris"}), "non-empty list"),
        (json.dumps({"id": "1", "golden_answers": ["Paris"]}), "question"),
        ('{"id": "1", "question": "q", "golden_answers": ["a"]', "FlashRAG"),
        (json.dumps(["a", "list"]), "FlashRAG"),
        (json.dumps({"id": "1", "question": "q", "golden_answers": ["a"], "metadata": "abc"}), "metadata"),
    ],
    ids=["missing-golds", "empty-golds", "string-golds", "missing-question", "bad-json", "not-an-object", "bad-meta"],
)
def test_read_qa_jsonl_errors_name_the_line(tmp_path: Path, bad_line: str, message: str) -> None:
    good = json.dumps({"id": "0", "question": "fine", "golden_answers": ["ok"]})
    path = write_lines(tmp_path / "qa.jsonl", [good, "", bad_line, good])
    with pytest.raises(QAFormatError, match=message) as caught:
        read_qa_jsonl(path)
    assert f"{path}:3:" in str(caught.value)


def test_empty_parquet_keeps_the_schema(tmp_path: Path) -> None:
    write_verl_parquet([], tmp_path / "empty.parquet", data_source="nq", split="test")
    frame = pd.read_parquet(tmp_path / "empty.parquet")
    assert len(frame) == 0
    assert list(frame.columns) == list(VERL_COLUMNS)


def test_qa_format_error_is_a_value_error() -> None:
    assert issubclass(QAFormatError, ValueError)


def test_read_qa_jsonl_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_qa_jsonl(tmp_path / "absent.jsonl")


# --- verl parquet -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def verl_frame(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    path = tmp_path_factory.mktemp("verl") / "train.parquet"
    assert write_verl_parquet(EXAMPLES, path, data_source="nq", split="train") == len(EXAMPLES)
    return pd.read_parquet(path)


def test_verl_parquet_columns(verl_frame: pd.DataFrame) -> None:
    assert list(verl_frame.columns) == VERL_COLUMNS
    assert len(verl_frame) == len(EXAMPLES)


def test_verl_parquet_rows_field_by_field(verl_frame: pd.DataFrame) -> None:
    for index, (example, row) in enumerate(zip(EXAMPLES, verl_frame.to_dict("records"), strict=True)):
        assert row["data_source"] == "nq"
        prompt = plain(row["prompt"])
        assert prompt == build_messages(example.question)
        assert len(prompt) == 1
        assert prompt[0]["role"] == "user"
        assert example.question in prompt[0]["content"]
        assert row["ability"] == ABILITY == "fact-reasoning"
        assert plain(row["reward_model"]) == {"style": "rule", "ground_truth": {"target": example.golden_answers}}
        extra_info = plain(row["extra_info"])
        assert {key: extra_info[key] for key in ("split", "index", "question")} == {
            "split": "train",
            "index": index,
            "question": example.question,
        }
        assert row["agent_name"] == AGENT_LOOP_NAME


def test_verl_parquet_prompt_template_option(tmp_path: Path, verl_frame: pd.DataFrame) -> None:
    path = tmp_path / "search_r1.parquet"
    write_verl_parquet(EXAMPLES, path, data_source="hotpotqa", split="test", template="search_r1")
    frame = pd.read_parquet(path)
    assert list(frame.columns) == VERL_COLUMNS
    for example, prompt, default_prompt in zip(EXAMPLES, frame["prompt"], verl_frame["prompt"], strict=True):
        assert plain(prompt) == build_messages(example.question, template="search_r1")
        assert plain(prompt) != plain(default_prompt)
        assert example.question in plain(prompt)[0]["content"]
        assert "##" not in plain(prompt)[0]["content"]  # one query per search
    assert set(frame["data_source"]) == {"hotpotqa"}
    assert {plain(extra)["split"] for extra in frame["extra_info"]} == {"test"}


def test_verl_parquet_max_variants_option(tmp_path: Path) -> None:
    path = tmp_path / "five.parquet"
    write_verl_parquet(EXAMPLES[:1], path, data_source="nq", split="train", max_variants=5)
    prompt = plain(pd.read_parquet(path)["prompt"].iloc[0])
    assert prompt == build_messages(EXAMPLES[0].question, max_variants=5)
    assert "up to 5" in prompt[0]["content"]


def test_verl_parquet_unknown_template(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown prompt template"):
        write_verl_parquet(EXAMPLES, tmp_path / "x.parquet", data_source="nq", split="train", template="nope")


def test_verl_parquet_from_sample_nq(real_data: Path, tmp_path: Path) -> None:
    examples = read_qa_jsonl(real_data / "nq" / "nq_test1000.jsonl")[:50]
    path = tmp_path / "nq.parquet"
    write_verl_parquet(examples, path, data_source="nq", split="test")
    frame = pd.read_parquet(path)
    assert len(frame) == 50
    assert [plain(rm)["ground_truth"]["target"] for rm in frame["reward_model"]] == [
        example.golden_answers for example in examples
    ]
    assert [plain(extra)["index"] for extra in frame["extra_info"]] == list(range(50))
