"""eval.datasets: --datasets names against --data-dir (with the dev fallback), explicit files, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.datasets import DatasetError, DatasetSpec, for_index_corpus, load_dataset, resolve_datasets


def write_qa(path: Path, ids: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"id": i, "question": f"question {i}?", "golden_answers": [f"gold {i}"]}) for i in ids]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_names_resolve_to_the_split_file_and_fall_back_to_dev(tmp_path: Path) -> None:
    write_qa(tmp_path / "nq" / "test.jsonl", ["1"])
    write_qa(tmp_path / "nq" / "dev.jsonl", ["2"])
    write_qa(tmp_path / "hotpotqa" / "dev.jsonl", ["3"])
    nq, hotpotqa = resolve_datasets("nq, hotpotqa", tmp_path)
    assert nq == DatasetSpec("nq", (tmp_path / "nq" / "test.jsonl").resolve(), "")
    assert hotpotqa.path == (tmp_path / "hotpotqa" / "dev.jsonl").resolve()
    assert hotpotqa.note == "no test.jsonl, using dev.jsonl"
    (validation,) = resolve_datasets("nq", tmp_path, split="dev")
    assert validation.path.name == "dev.jsonl"


def test_name_equals_path_takes_an_explicit_file(tmp_path: Path) -> None:
    path = write_qa(tmp_path / "anywhere.jsonl", ["1"])
    (spec,) = resolve_datasets(f"bamboogle={path}", None)
    assert spec == DatasetSpec("bamboogle", path.resolve())


@pytest.mark.parametrize(
    ("names", "data_dir", "message"),
    [
        ("nq", "{tmp}", r"dataset nq: neither .*nq/test\.jsonl nor .*nq/dev\.jsonl exists"),
        ("nq", None, r"dataset nq: give --data-dir DIR \(reads DIR/nq/test\.jsonl\) or nq=FILE\.jsonl"),
        ("nq=/no/such.jsonl", None, r"dataset nq: no file /no/such\.jsonl"),
        ("nq=/x,nq=/x", None, "named twice"),
        ("../up", "{tmp}", "must be letters"),
        (" , ", "{tmp}", "--datasets is empty"),
    ],
)
def test_unresolvable_names_say_why(names: str, data_dir: str | None, message: str, tmp_path: Path) -> None:
    write_qa(tmp_path / "x.jsonl", ["1"])
    with pytest.raises(DatasetError, match=message):
        resolve_datasets(names.replace("/x", str(tmp_path / "x.jsonl")), data_dir and data_dir.format(tmp=tmp_path))


def test_load_reads_the_first_limit_examples(tmp_path: Path) -> None:
    path = write_qa(tmp_path / "nq.jsonl", ["a", "b", "c"])
    dataset = load_dataset(DatasetSpec("nq", path), limit=2)
    assert dataset.name == "nq"
    assert [example.id for example in dataset.examples] == ["a", "b"]
    assert len(load_dataset(DatasetSpec("nq", path)).examples) == 3


def test_duplicate_ids_and_bad_files_are_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="example id 'a' occurs twice"):
        load_dataset(DatasetSpec("nq", write_qa(tmp_path / "dup.jsonl", ["a", "b", "a"])))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "1", "question": "q"}\n')
    with pytest.raises(DatasetError, match=r"dataset nq: .*bad\.jsonl:1: expected FlashRAG fields"):
        load_dataset(DatasetSpec("nq", bad))


def test_supporting_ids_of_another_corpus_are_dropped_and_titles_kept(tmp_path: Path) -> None:
    from retriever_server.index_dir import file_sha256

    path = tmp_path / "hotpotqa" / "dev.jsonl"
    path.parent.mkdir()
    record = {"id": "1", "question": "q?", "golden_answers": ["a"]}
    record["metadata"] = {"supporting_ids": ["0"], "supporting_titles": ["Alpha"], "type": "bridge"}
    path.write_text(json.dumps(record) + "\n")
    (path.parent / "corpus.jsonl").write_text(json.dumps({"id": "0", "contents": '"Alpha"\ntext'}) + "\n")
    dataset = load_dataset(DatasetSpec("hotpotqa", path))
    assert for_index_corpus(dataset, file_sha256(path.parent / "corpus.jsonl")) is dataset  # the same corpus
    assert for_index_corpus(dataset, None) is dataset  # unknown (a server): ids trusted
    (other,) = for_index_corpus(dataset, "0" * 64).examples
    assert other.metadata == {"supporting_titles": ["Alpha"], "type": "bridge"}
    (path.parent / "corpus.jsonl").unlink()
    assert for_index_corpus(dataset, "0" * 64) is dataset  # no corpus beside the questions: ids trusted
