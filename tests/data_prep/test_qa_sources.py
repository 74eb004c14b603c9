"""Tests for data_prep.qa_sources: records out of jsonl, JSON lists, parquet and Hugging Face dataset directories.

The real samples are read as they are; altered copies (other containers, broken lines) live in tmp dirs.
Hub names are tested through the console script with HF_HUB_OFFLINE=1 (tests/expandsearch/test_prepare_cli.py),
because the hub's offline switch is read when ``datasets`` is first imported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support import raw_rows

from data_prep.formats import QAFormatError
from data_prep.qa_sources import read_source

QA_FILES = [
    "nq/nq_test1000.jsonl",
    "triviaqa/triviaqa_test1000.jsonl",
    "popqa/popqa_test1000.jsonl",
    "bamboogle/bamboogle_test125.jsonl",
    "hotpotqa/hotpotqa_distractor_dev300.jsonl",
    "hotpotqa/hotpotqa_distractor_dev300b.jsonl",
    "2wikimultihopqa/2wiki_dev_with_context80.jsonl",
    "musique/musique_ans_dev100.jsonl",
]


@pytest.fixture(scope="module")
def hotpot_rows(real_data: Path) -> list[dict[str, Any]]:
    return raw_rows(real_data / "hotpotqa" / "hotpotqa_distractor_dev300.jsonl", 12)


# --- files ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", QA_FILES)
def test_every_sample_qa_file_reads_record_for_record(real_data: Path, name: str) -> None:
    path = real_data / name
    records = read_source(path)
    assert [record.fields for record in records] == raw_rows(path)
    assert records[0].where == f"{path}:1"
    assert records[-1].where == f"{path}:{len(records)}"


def test_json_list_names_records_by_position(real_data: Path, tmp_path: Path) -> None:
    rows = raw_rows(real_data / "2wikimultihopqa" / "2wiki_dev_with_context80.jsonl", 5)
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    records = read_source(path)
    assert [record.fields for record in records] == rows
    assert [record.where for record in records[:2]] == [f"{path}: record 1", f"{path}: record 2"]


def test_kind_comes_from_content_not_suffix(hotpot_rows: list[dict[str, Any]], tmp_path: Path) -> None:
    lines_as_json = tmp_path / "lines.json"
    lines_as_json.write_text("\n".join(json.dumps(row) for row in hotpot_rows), encoding="utf-8")
    list_as_jsonl = tmp_path / "list.jsonl"
    list_as_jsonl.write_text(json.dumps(hotpot_rows), encoding="utf-8")
    assert [r.fields for r in read_source(lines_as_json)] == [r.fields for r in read_source(list_as_jsonl)]


def test_parquet_file(hotpot_rows: list[dict[str, Any]], tmp_path: Path) -> None:
    path = tmp_path / "hotpot.parquet"
    pq.write_table(pa.Table.from_pylist(hotpot_rows), path)
    records = read_source(path)
    assert [record.fields for record in records] == hotpot_rows
    assert records[1].where == f"{path}: row 2"


# --- Hugging Face directories -------------------------------------------------------------------------------------


def test_save_to_disk_dataset_dict_and_split_aliases(hotpot_rows: list[dict[str, Any]], tmp_path: Path) -> None:
    import datasets

    splits = {"train": hotpot_rows[:4], "validation": hotpot_rows[4:]}
    datasets.DatasetDict({name: datasets.Dataset.from_list(rows) for name, rows in splits.items()}).save_to_disk(
        tmp_path / "dd"
    )
    assert [r.fields for r in read_source(tmp_path / "dd", split="validation")] == hotpot_rows[4:]
    dev = read_source(tmp_path / "dd", split="dev")  # FlashRAG's name for the validation split
    assert [r.fields for r in dev] == hotpot_rows[4:]
    assert dev[0].where == f"{tmp_path / 'dd'}[validation]: record 1"
    with pytest.raises(QAFormatError, match=r"no split 'test' \(splits: train, validation\)"):
        read_source(tmp_path / "dd", split="test")


def test_save_to_disk_single_dataset(hotpot_rows: list[dict[str, Any]], tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_list(hotpot_rows).save_to_disk(tmp_path / "one")
    assert [r.fields for r in read_source(tmp_path / "one", split="test")] == hotpot_rows


def test_directory_of_parquet_files(hotpot_rows: list[dict[str, Any]], tmp_path: Path) -> None:
    data = tmp_path / "hotpot_qa" / "data"
    data.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(hotpot_rows[:6]), data / "validation-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(hotpot_rows[6:]), data / "train-00000-of-00001.parquet")
    assert [r.fields for r in read_source(tmp_path / "hotpot_qa", split="validation")] == hotpot_rows[:6]
    assert [r.fields for r in read_source(tmp_path / "hotpot_qa", split="train")] == hotpot_rows[6:]


def test_directory_of_flashrag_jsonl_files(real_data: Path, tmp_path: Path) -> None:
    rows = raw_rows(real_data / "popqa" / "popqa_test1000.jsonl", 9)
    folder = tmp_path / "popqa"
    folder.mkdir()
    for name, part in (("dev", rows[:4]), ("test", rows[4:])):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in part), encoding="utf-8")
    assert [r.fields for r in read_source(folder, split="test")] == rows[4:]
    assert [r.fields for r in read_source(folder, split="dev")] == rows[:4]


def test_forced_hf_on_a_file(hotpot_rows: list[dict[str, Any]], tmp_path: Path) -> None:
    path = tmp_path / "hotpot.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in hotpot_rows), encoding="utf-8")
    records = read_source(path, hf=True)
    assert [r.fields for r in records] == hotpot_rows
    assert records[0].where.startswith(f"{path}[")


def test_directory_without_data_files(tmp_path: Path) -> None:
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(QAFormatError, match="cannot load it as a Hugging Face dataset") as caught:
        read_source(tmp_path / "empty_dir")
    assert "\n" not in str(caught.value)


# --- errors -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "the file is empty"),
        ("\n  \n", "the file is empty"),
        ("[]", "no records"),
        ("question,answer\nq,a\n", "not JSON lines, a JSON list or parquet"),
        ('[{"question": "q"}, 3]', "record 2: expected a JSON object, got int"),
        ('[{"question": "q"', "not valid JSON"),
    ],
    ids=["empty", "blank-lines", "empty-list", "csv", "list-of-non-objects", "broken-list"],
)
def test_unreadable_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "qa.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(QAFormatError, match=message) as caught:
        read_source(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [('{"question": "q", "answer": ["a"]', "not valid JSON"), ('["a", "list"]', "expected a JSON object")],
)
def test_bad_jsonl_line_is_named(tmp_path: Path, bad_line: str, message: str) -> None:
    path = tmp_path / "qa.jsonl"
    good = json.dumps({"question": "q", "answer": ["a"]})
    path.write_text("\n".join([good, "", bad_line, good]) + "\n", encoding="utf-8")
    with pytest.raises(QAFormatError, match=message) as caught:
        read_source(path)
    assert str(caught.value).startswith(f"{path}:3:")


def test_unreadable_parquet(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(QAFormatError, match="cannot read parquet"):
        read_source(path)


@pytest.mark.parametrize("missing", ["absent.jsonl", "./data", "/nowhere/at/all"])
def test_missing_local_path_is_not_a_hub_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, missing: str) -> None:
    monkeypatch.chdir(tmp_path)  # "./data" must be missing whatever folder the tests run from
    source = str(tmp_path / missing) if missing.endswith(".jsonl") else missing
    with pytest.raises(FileNotFoundError, match="input not found"):
        read_source(source)
