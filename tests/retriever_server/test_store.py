"""Tests for retriever_server.store (Arrow passage store) and the DPR tsv reader in retriever_server.corpus."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pytest

from retriever_server.corpus import CorpusFormatError, Passage, iter_passages, write_wiki18_jsonl
from retriever_server.store import PassageStore, write_store


@pytest.fixture(scope="module")
def wiki_passages(wiki18_passages: tuple[Passage, ...]) -> list[Passage]:
    return list(wiki18_passages[:500])


@pytest.fixture(scope="module")
def store(wiki_passages: list[Passage], tmp_path_factory: pytest.TempPathFactory) -> PassageStore:
    folder = tmp_path_factory.mktemp("store")
    write_wiki18_jsonl(wiki_passages, folder / "corpus.jsonl")
    # small batches so the file really has several record batches
    return PassageStore.build(folder / "corpus.jsonl", folder / "passages.arrow", batch_rows=64)


def write_dpr_tsv(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["id", "text", "title"])
        writer.writerows(rows)
    return path


# --- the store --------------------------------------------------------------------------------------------------


def test_store_round_trips_every_passage(store: PassageStore, wiki_passages: list[Passage]) -> None:
    assert len(store) == len(wiki_passages)
    assert list(store) == wiki_passages
    assert store.get(0) == wiki_passages[0]
    assert store[-1] == wiki_passages[-1]
    assert store[10:13] == wiki_passages[10:13]


def test_rows_keeps_the_requested_order(store: PassageStore, wiki_passages: list[Passage]) -> None:
    assert store.rows([7, 3, 7, 499]) == [wiki_passages[i] for i in (7, 3, 7, 499)]
    assert store.rows([]) == []


def test_row_of_finds_every_id(store: PassageStore, wiki_passages: list[Passage]) -> None:
    # the sample's ids ("trace0", …) are not row numbers, so this exercises the id map
    assert all(store.row_of(passage.id) == row for row, passage in enumerate(wiki_passages))
    with pytest.raises(KeyError, match="no passage with id"):
        store.row_of("not-an-id")


def test_row_of_numeric_ids(tmp_path: Path) -> None:
    passages = [Passage(str(i + 1), f"T{i}", f"text {i}") for i in range(5)]  # DPR ids start at 1
    write_store(passages, tmp_path / "s.arrow")
    store = PassageStore.open(tmp_path / "s.arrow")
    assert [store.row_of(str(i + 1)) for i in range(5)] == list(range(5))
    with pytest.raises(KeyError):
        store.row_of("99")


def test_iter_batches_covers_the_store_in_order(store: PassageStore, wiki_passages: list[Passage]) -> None:
    batches = list(store.iter_batches(128))
    assert [len(batch) for batch in batches] == [128, 128, 128, 116]
    assert [passage for batch in batches for passage in batch] == wiki_passages


@pytest.mark.parametrize("row", [500, -501])
def test_get_out_of_range(store: PassageStore, row: int) -> None:
    with pytest.raises(IndexError, match="out of range"):
        store.get(row)


def test_store_is_memory_mapped(store: PassageStore) -> None:
    assert store.path is not None
    before = pa.total_allocated_bytes()
    reopened = PassageStore.open(store.path)
    # Opening allocates (next to) nothing on the Arrow heap: the columns point into the mapped file.
    assert pa.total_allocated_bytes() - before < store.path.stat().st_size // 10
    assert reopened.get(123) == store.get(123)


def test_write_store_leaves_no_partial_file(tmp_path: Path) -> None:
    write_store([Passage("a", "A", "alpha")], tmp_path / "s.arrow")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["s.arrow"]


def test_empty_corpus_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CorpusFormatError, match="empty"):
        write_store([], tmp_path / "s.arrow")
    assert not list(tmp_path.iterdir())


def test_open_rejects_other_files(tmp_path: Path) -> None:
    (tmp_path / "bad.arrow").write_text("not arrow")
    with pytest.raises(CorpusFormatError, match="not an Arrow passage store"):
        PassageStore.open(tmp_path / "bad.arrow")
    with pytest.raises(FileNotFoundError):
        PassageStore.open(tmp_path / "missing.arrow")


def test_store_from_a_json_list(real_data: Path, tmp_path: Path) -> None:
    records = json.loads((real_data / "2wikimultihopqa" / "2wiki_corpus6119.json").read_text())[:50]
    (tmp_path / "corpus.json").write_text(json.dumps(records))
    store = PassageStore.build(tmp_path / "corpus.json", tmp_path / "s.arrow")
    assert len(store) == 50
    assert store.get(49).title == records[49]["title"]
    assert store.get(49).id == "49"


# --- DPR tsv ----------------------------------------------------------------------------------------------------


def test_dpr_tsv_is_read_with_quoting(tmp_path: Path) -> None:
    rows = [
        ("1", 'Aaron is a prophet "of" the Bible.\tTabbed.', "Aaron"),
        ("2", "Plain text.", "  Spaced   title "),
    ]
    path = write_dpr_tsv(tmp_path / "psgs_w100.tsv", rows)
    assert list(iter_passages(path)) == [
        Passage("1", "Aaron", 'Aaron is a prophet "of" the Bible.\tTabbed.'),
        Passage("2", "Spaced title", "Plain text."),
    ]
    store = PassageStore.build(path, tmp_path / "s.arrow")
    assert store.row_of("2") == 1


def test_dpr_tsv_needs_its_header(tmp_path: Path) -> None:
    (tmp_path / "c.tsv").write_text("id\ttitle\ttext\n1\tA\tB\n")
    with pytest.raises(CorpusFormatError, match="DPR header"):
        list(iter_passages(tmp_path / "c.tsv"))


def test_dpr_tsv_reports_a_bad_line(tmp_path: Path) -> None:
    (tmp_path / "c.tsv").write_text("id\ttext\ttitle\n1\tok\tA\n2\tmissing title\n")
    with pytest.raises(CorpusFormatError, match=r"c\.tsv:3: expected 3 tab-separated fields, got 2"):
        list(iter_passages(tmp_path / "c.tsv"))
