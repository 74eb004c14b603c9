"""Tests for data_prep.corpora: the sample wiki-18 sample and 2Wiki {title,text} corpus, a DPR tsv built from
real passages, format detection by content, forced formats and the error paths."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from data_prep.corpora import CORPUS_FORMATS, convert_corpus, detect_corpus_format, iter_corpus
from retriever_server.corpus import CorpusFormatError, Passage, load_passages

WIKI18 = "wiki18_sample/wiki18_passages7923.jsonl"
TWOWIKI_CORPUS = "2wikimultihopqa/2wiki_corpus6119.json"


def write_dpr_tsv(path: Path, passages: list[Passage]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["id", "text", "title"])
        for passage in passages:
            writer.writerow([passage.id, passage.text, passage.title])
    return path


def test_wiki18_sample_round_trips(real_data: Path, wiki18_passages: tuple[Passage, ...], tmp_path: Path) -> None:
    used, count = convert_corpus(real_data / WIKI18, tmp_path / "out.jsonl")
    assert (used, count) == ("wiki18", 7923)
    assert tuple(load_passages(tmp_path / "out.jsonl")) == wiki18_passages
    first = json.loads((tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert set(first) == {"id", "title", "contents"}
    assert first["contents"].startswith(f'"{first["title"]}"\n')


def test_2wiki_title_text_list(real_data: Path, tmp_path: Path) -> None:
    used, count = convert_corpus(real_data / TWOWIKI_CORPUS, tmp_path / "2wiki.jsonl")
    assert (used, count) == ("title_text", 6119)
    records = json.loads((real_data / TWOWIKI_CORPUS).read_text(encoding="utf-8"))
    passages = load_passages(tmp_path / "2wiki.jsonl")
    assert [p.id for p in passages[:3]] == ["0", "1", "2"]
    assert [(p.title, p.text) for p in passages] == [(r["title"], r["text"].strip()) for r in records]


def test_dpr_tsv_from_real_passages(wiki18_passages: tuple[Passage, ...], tmp_path: Path) -> None:
    passages = list(wiki18_passages[:300])  # real texts, with quotes the tsv must escape
    assert any('"' in passage.text for passage in passages)
    source = write_dpr_tsv(tmp_path / "psgs_w100.tsv", passages)
    assert detect_corpus_format(source) == "dpr_tsv"
    used, count = convert_corpus(source, tmp_path / "wiki.jsonl")
    assert (used, count) == ("dpr_tsv", 300)
    assert load_passages(tmp_path / "wiki.jsonl") == passages


def test_detection_reads_content_not_suffix(
    real_data: Path, wiki18_passages: tuple[Passage, ...], tmp_path: Path
) -> None:
    tsv_as_txt = write_dpr_tsv(tmp_path / "psgs.txt", list(wiki18_passages[:5]))
    list_as_jsonl = tmp_path / "list.jsonl"
    records = json.loads((real_data / TWOWIKI_CORPUS).read_text(encoding="utf-8"))[:4]
    list_as_jsonl.write_text(json.dumps(records, indent=1), encoding="utf-8")
    assert detect_corpus_format(tsv_as_txt) == "dpr_tsv"
    assert detect_corpus_format(list_as_jsonl) == "title_text"
    assert [p.title for p in iter_corpus(tsv_as_txt)] == [p.title for p in wiki18_passages[:5]]
    assert [p.title for p in iter_corpus(list_as_jsonl)] == [r["title"] for r in records]


def test_forced_formats_on_any_file_name(wiki18_passages: tuple[Passage, ...], tmp_path: Path) -> None:
    tsv = write_dpr_tsv(tmp_path / "psgs.data", list(wiki18_passages[:4]))
    assert list(iter_corpus(tsv, "dpr_tsv")) == list(wiki18_passages[:4])
    lines = tmp_path / "title_text.json"  # {title,text} objects one per line, under a .json name
    lines.write_text(
        "".join(json.dumps({"title": p.title, "text": p.text}) + "\n" for p in wiki18_passages[:3]), encoding="utf-8"
    )
    assert [(p.id, p.title) for p in iter_corpus(lines, "title_text")] == [
        (str(i), p.title) for i, p in enumerate(wiki18_passages[:3])
    ]
    assert [p.text for p in iter_corpus(lines, "wiki18")] == [p.text for p in wiki18_passages[:3]]


def test_forced_wrong_format_fails_clearly(real_data: Path, tmp_path: Path) -> None:
    with pytest.raises(CorpusFormatError, match="DPR header"):
        convert_corpus(real_data / WIKI18, tmp_path / "out.jsonl", "dpr_tsv")
    assert not (tmp_path / "out.jsonl").exists()  # nothing half-written is left


@pytest.mark.parametrize(
    ("content", "message"),
    [("", "the corpus is empty"), ("\n\n", "the corpus is empty"), ("id,text,title\n1,a,b\n", "unknown corpus format")],
    ids=["empty", "blank", "csv"],
)
def test_unreadable_corpora(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "corpus.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(CorpusFormatError, match=message):
        convert_corpus(path, tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


def test_header_only_tsv_and_empty_list_are_empty(tmp_path: Path) -> None:
    tsv = write_dpr_tsv(tmp_path / "psgs.tsv", [])
    (tmp_path / "list.json").write_text("[]", encoding="utf-8")
    for source in (tsv, tmp_path / "list.json"):
        with pytest.raises(CorpusFormatError, match="the corpus is empty"):
            convert_corpus(source, tmp_path / "out.jsonl")
        assert not (tmp_path / "out.jsonl").exists()


def test_bad_record_names_the_line(real_data: Path, tmp_path: Path) -> None:
    lines = (real_data / WIKI18).read_text(encoding="utf-8").splitlines()[:3]
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join([*lines, json.dumps({"id": "x", "title": "no body"})]) + "\n", encoding="utf-8")
    with pytest.raises(CorpusFormatError, match=f"{path}:4: .*'contents' or 'text'"):
        convert_corpus(path, tmp_path / "out.jsonl")


def test_missing_input_unknown_format_and_self_overwrite(real_data: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="corpus file not found"):
        convert_corpus(tmp_path / "absent.tsv", tmp_path / "out.jsonl")
    with pytest.raises(CorpusFormatError, match="unknown corpus format 'xml'"):
        convert_corpus(real_data / WIKI18, tmp_path / "out.jsonl", "xml")
    copy = tmp_path / "copy.jsonl"
    copy.write_text((real_data / WIKI18).read_text(encoding="utf-8")[:5000].rsplit("\n", 1)[0] + "\n")
    with pytest.raises(CorpusFormatError, match="overwrite the input"):
        convert_corpus(copy, copy)


def test_format_names() -> None:
    assert tuple(CORPUS_FORMATS) == ("wiki18", "dpr_tsv", "title_text")
