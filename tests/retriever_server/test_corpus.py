"""Tests for retriever_server.corpus: every supported layout, contents splitting, errors, round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retriever_server.corpus import (
    CorpusFormatError,
    Passage,
    iter_passages,
    load_passages,
    passage_from_record,
    split_contents,
    write_wiki18_jsonl,
)


def write_jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


# --- split_contents ---------------------------------------------------------------------------------------------


def test_split_contents_quoted_title_line() -> None:
    assert split_contents('"Eiffel Tower"\nThe tower is in Paris.') == ("Eiffel Tower", "The tower is in Paris.")


def test_split_contents_without_newline_has_no_title() -> None:
    assert split_contents("  just a passage, no title line  ") == ("", "just a passage, no title line")


def test_split_contents_title_without_quotes_is_kept_whole() -> None:
    assert split_contents("Eiffel Tower\nThe tower.") == ("Eiffel Tower", "The tower.")


def test_split_contents_only_one_pair_of_title_quotes_is_removed() -> None:
    # wiki-18 keeps the dump's doubled quotes: only the outer pair on the title line is markup.
    title, text = split_contents('""Voyager 2""\nNASA\'s ""Voyager 2"" spacecraft.')
    assert title == '"Voyager 2"'
    assert text == 'NASA\'s ""Voyager 2"" spacecraft.'


def test_split_contents_keeps_inner_quotes_and_later_lines() -> None:
    title, text = split_contents('"He said "hi""\nfirst line\nsecond line\n')
    assert title == 'He said "hi"'
    assert text == "first line\nsecond line"


def test_split_contents_single_quote_character_is_not_stripped() -> None:
    assert split_contents('"\ntext') == ('"', "text")


def test_split_contents_empty_quoted_title() -> None:
    assert split_contents('""\ntext') == ("", "text")


# --- layouts ----------------------------------------------------------------------------------------------------


def test_wiki18_jsonl_with_contents_only(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "corpus.jsonl",
        [
            {"id": "0", "contents": '"Alpha"\nAlpha is the first letter.'},
            {"id": "1", "contents": '"Beta"\nBeta comes second.'},
        ],
    )
    assert load_passages(path) == [
        Passage("0", "Alpha", "Alpha is the first letter."),
        Passage("1", "Beta", "Beta comes second."),
    ]


def test_wiki18_jsonl_title_field_wins_over_contents(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "corpus.jsonl", [{"id": "7", "title": "Clean Title", "contents": '"Raw"\nbody'}])
    assert load_passages(path) == [Passage("7", "Clean Title", "body")]


def test_empty_title_field_falls_back_to_contents_title(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "corpus.jsonl", [{"id": "7", "title": "", "contents": '"Raw"\nbody'}])
    assert load_passages(path)[0].title == "Raw"


def test_id_title_text_jsonl(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "corpus.jsonl",
        [
            {"id": "doc-a", "title": "Alpha", "text": "Alpha text."},
            {"id": 12, "title": "Beta", "text": "Beta text."},
        ],
    )
    passages = load_passages(path)
    assert passages == [Passage("doc-a", "Alpha", "Alpha text."), Passage("12", "Beta", "Beta text.")]
    assert all(isinstance(passage.id, str) for passage in passages)


def test_missing_ids_fall_back_to_record_index_and_underscore_id_is_read(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "corpus.jsonl",
        [{"title": "A", "text": "a"}, {"_id": "x9", "title": "B", "text": "b"}, {"contents": '"C"\nc'}],
    )
    assert [passage.id for passage in load_passages(path)] == ["0", "x9", "2"]


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl"
    path.write_text('\n{"id": "0", "title": "A", "text": "a"}\n\n   \n{"id": "1", "title": "B", "text": "b"}\n')
    assert [passage.id for passage in load_passages(path)] == ["0", "1"]


def test_text_without_title_gets_empty_title() -> None:
    assert passage_from_record({"id": "1", "text": "body"}, "0") == Passage("1", "", "body")


def test_iter_passages_is_lazy_and_matches_load(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "corpus.jsonl", [{"id": str(i), "title": f"T{i}", "text": "x"} for i in range(5)])
    iterator = iter_passages(path)
    assert next(iterator) == Passage("0", "T0", "x")
    assert [next(iterator), *iterator] == load_passages(path)[1:]


def test_json_list_of_title_text(tmp_path: Path) -> None:
    path = tmp_path / "corpus.json"
    path.write_text(json.dumps([{"title": "Alpha", "text": "a text"}, {"title": "Beta", "text": "b text"}]))
    assert load_passages(path) == [Passage("0", "Alpha", "a text"), Passage("1", "Beta", "b text")]


def test_passage_contents_and_to_wiki18() -> None:
    passage = Passage("3", "Title", "Body text.")
    assert passage.contents == '"Title"\nBody text.'
    assert passage.to_wiki18() == {"id": "3", "title": "Title", "contents": '"Title"\nBody text.'}
    assert split_contents(passage.contents) == ("Title", "Body text.")


# --- real data --------------------------------------------------------------------------------------------------


def test_sample_wiki18_sample(real_data: Path) -> None:
    path = real_data / "wiki18_sample" / "wiki18_passages7923.jsonl"
    passages = load_passages(path)
    assert len(passages) == 7923
    assert len({passage.id for passage in passages}) == 7923
    with path.open(encoding="utf-8") as handle:
        first_record = json.loads(handle.readline())
    first = passages[0]
    assert first.id == first_record["id"]
    assert first.title == first_record["title"]
    # the title equals the quoted first line of contents
    assert first_record["contents"].split("\n", 1)[0] == f'"{first.title}"'
    assert first.contents == first_record["contents"]
    assert all(passage.title and passage.text for passage in passages)
    # The dump's doubled quotes survive loading.
    assert '""Voyager 2""' in first.text


def test_sample_2wiki_json_corpus(real_data: Path) -> None:
    path = real_data / "2wikimultihopqa" / "2wiki_corpus6119.json"
    passages = load_passages(path)
    assert len(passages) == 6119
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert passages[0] == Passage("0", raw[0]["title"], raw[0]["text"])
    assert passages[-1] == Passage("6118", raw[-1]["title"], raw[-1]["text"])
    assert [passage.id for passage in passages] == [str(i) for i in range(6119)]


# --- errors -----------------------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl"):
        load_passages(tmp_path / "nope.jsonl")


def test_directory_is_not_a_corpus_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_passages(tmp_path)


def test_invalid_json_line_names_path_and_line(tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"id": "0", "title": "A", "text": "a"}\n\n{"id": "1", "title": oops}\n')
    with pytest.raises(CorpusFormatError) as caught:
        load_passages(path)
    assert f"{path}:3:" in str(caught.value)
    assert "not valid JSON" in str(caught.value)


def test_record_without_contents_or_text_names_path_and_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "corpus.jsonl", [{"id": "0", "text": "a"}, {"id": "1", "title": "only a title"}])
    with pytest.raises(CorpusFormatError, match="needs a string 'contents' or 'text'") as caught:
        load_passages(path)
    assert f"{path}:2:" in str(caught.value)
    assert "title" in str(caught.value)  # the keys it did find


def test_record_that_is_not_an_object(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "corpus.jsonl", [["0", "a list, not an object"]])
    with pytest.raises(CorpusFormatError, match="expected a JSON object, got list") as caught:
        load_passages(path)
    assert f"{path}:1:" in str(caught.value)


def test_json_record_without_text(tmp_path: Path) -> None:
    path = tmp_path / "corpus.json"
    path.write_text(json.dumps([{"title": "A", "text": "a"}, {"title": "B"}]))
    with pytest.raises(CorpusFormatError, match="needs a string 'contents' or 'text'"):
        load_passages(path)


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_jsonl_corpus(tmp_path: Path, content: str) -> None:
    path = tmp_path / "corpus.jsonl"
    path.write_text(content)
    with pytest.raises(CorpusFormatError, match="empty"):
        load_passages(path)


def test_empty_json_list_corpus(tmp_path: Path) -> None:
    path = tmp_path / "corpus.json"
    path.write_text("[]")
    with pytest.raises(CorpusFormatError, match="empty"):
        load_passages(path)


@pytest.mark.parametrize("payload", [{"title": "A", "text": "a"}, "a string", 3])
def test_json_corpus_must_be_a_list(tmp_path: Path, payload: object) -> None:
    path = tmp_path / "corpus.json"
    path.write_text(json.dumps(payload))
    with pytest.raises(CorpusFormatError, match="must be a list") as caught:
        load_passages(path)
    assert str(path) in str(caught.value)


def test_invalid_json_corpus_file_names_path(tmp_path: Path) -> None:
    path = tmp_path / "corpus.json"
    path.write_text('[{"title": "A", "text": "a"},\n')
    with pytest.raises(CorpusFormatError) as caught:
        load_passages(path)
    assert str(path) in str(caught.value)


def test_bad_item_in_json_corpus_names_path_and_item(tmp_path: Path) -> None:
    path = tmp_path / "corpus.json"
    path.write_text(json.dumps([{"title": "A", "text": "a"}, {"title": "B"}]))
    with pytest.raises(CorpusFormatError, match="item 1") as caught:
        load_passages(path)
    assert str(path) in str(caught.value)


def test_null_fields_are_not_text(tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl"
    path.write_text(json.dumps({"id": "1", "title": None, "text": "body"}) + "\n")
    assert load_passages(path)[0].title == ""
    path.write_text(json.dumps({"id": "1", "title": "T", "text": None}) + "\n")
    with pytest.raises(CorpusFormatError, match="string 'contents' or 'text'"):
        load_passages(path)


def test_a_title_with_a_newline_survives_a_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl"
    path.write_text(json.dumps({"id": "1", "title": "A\nB", "text": "body"}) + "\n")
    passage = load_passages(path)[0]
    assert (passage.title, passage.text) == ("A B", "body")
    write_wiki18_jsonl([passage], tmp_path / "again.jsonl")
    assert load_passages(tmp_path / "again.jsonl") == [passage]


def test_format_error_is_a_value_error() -> None:
    assert issubclass(CorpusFormatError, ValueError)


# --- round trip -------------------------------------------------------------------------------------------------


def test_write_wiki18_jsonl_round_trip(tmp_path: Path) -> None:
    passages = [
        Passage("0", "Alpha", "Alpha is the first letter."),
        Passage("p-1", 'The "Quoted" Film', 'It starred ""Someone"" (1999).'),
        Passage("2", "Zürich", "Zürich liegt am Zürichsee — ein Satz mit Umlauten. 東京"),
        Passage("3", "Multi-line", "first line\nsecond line"),
        Passage("4", "", "a passage with an empty title"),
    ]
    path = tmp_path / "out.jsonl"
    assert write_wiki18_jsonl(iter(passages), path) == len(passages)
    assert load_passages(path) == passages
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(passages)
    assert json.loads(lines[2]) == passages[2].to_wiki18()
    assert "Zürich" in lines[2]  # written as UTF-8, not \u escapes


def test_round_trip_of_a_sample_slice(wiki18_passages: tuple[Passage, ...], tmp_path: Path) -> None:
    passages = list(wiki18_passages[:300])
    path = tmp_path / "slice.jsonl"
    write_wiki18_jsonl(passages, path)
    assert load_passages(path) == passages
