"""Corpus loading: passages with an id, a title and a text.

Reads the layouts users have (docs/formats.md):

- wiki-18 / FlashRAG jsonl, one passage per line: ``{"id": "0", "contents": "\\"Title\\"\\npassage text"}``
  (the quoted title on the first line), or ``{"id", "title", "text"}``;
- a JSON list of ``{"title", "text"}`` objects (HippoRAG / 2Wiki corpora);
- DPR's ``psgs_w100.tsv``: a header ``id\ttext\ttitle``, then one tab-separated passage per line.

This module keeps passages as a plain list; it is the in-process corpus the foundation needs (the
synthetic world, tests). Million-passage corpora get a memory-mapped store in the retriever issue.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class CorpusFormatError(ValueError):
    """A corpus file or record that does not match any supported layout."""


@dataclass(frozen=True)
class Passage:
    """One retrievable passage; ``contents`` is the wiki-18 form (quoted title line, then text)."""

    id: str
    title: str
    text: str

    @property
    def contents(self) -> str:
        return f'"{self.title}"\n{self.text}'

    def to_wiki18(self) -> dict[str, str]:
        return {"id": self.id, "title": self.title, "contents": self.contents}


def split_contents(contents: str) -> tuple[str, str]:
    """Split wiki-18 ``contents`` into (title, text); the title is the first line without its quotes."""
    first_line, newline, rest = contents.partition("\n")
    if not newline:
        return "", contents.strip()
    title = first_line.strip()
    if len(title) >= 2 and title[0] == title[-1] == '"':
        title = title[1:-1]
    return title, rest.strip()


def passage_from_record(record: dict[str, Any], fallback_id: str) -> Passage:
    """Build a passage from one corpus record in any supported layout."""
    if not isinstance(record, dict):
        raise CorpusFormatError(f"record {fallback_id}: expected a JSON object, got {type(record).__name__}")
    passage_id = str(record.get("id", record.get("_id", fallback_id)))
    body_key = next((key for key in ("contents", "text") if isinstance(record.get(key), str)), None)
    if body_key is None:
        raise CorpusFormatError(f"record {passage_id}: needs a string 'contents' or 'text' (keys: {sorted(record)})")
    title, text = split_contents(record[body_key]) if body_key == "contents" else ("", record[body_key].strip())
    # A separate "title" field (the shared wiki-18 sample has one) is the cleaner source.
    title = str(record.get("title") or title)
    # A title is one line: a newline in it would corrupt the wiki-18 "contents" we write back.
    return Passage(passage_id, " ".join(title.split()), text)


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield line_number, json.loads(line)
            except json.JSONDecodeError as error:
                raise CorpusFormatError(f"{path}:{line_number}: not valid JSON ({error.msg})") from error


def iter_json_list_passages(path: Path) -> Iterator[Passage]:
    """The passages of a JSON list of ``{title, text}`` (or ``contents``) objects."""
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise CorpusFormatError(f"{path}: not valid JSON ({error.msg}, line {error.lineno})") from error
    if not isinstance(records, list):
        raise CorpusFormatError(f"{path}: a .json corpus must be a list of {{title, text}} objects")
    for index, record in enumerate(records):
        try:
            yield passage_from_record(record, str(index))
        except CorpusFormatError as error:
            raise CorpusFormatError(f"{path}: item {index}: {error}") from error


DPR_COLUMNS = ("id", "text", "title")


def iter_dpr_tsv_passages(path: Path) -> Iterator[Passage]:
    """The passages of a DPR ``psgs_w100.tsv`` (header ``id<TAB>text<TAB>title``)."""
    # DPR quotes texts that hold tabs or quotes (csv "excel-tab" dialect); a few passages exceed csv's default
    # 128 KiB field limit, so lift it for this reader.
    csv.field_size_limit(sys.maxsize)
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t")
        header = next(reader, None)
        if header is None or [column.strip() for column in header] != list(DPR_COLUMNS):
            raise CorpusFormatError(f"{path}: a .tsv corpus needs the DPR header 'id<TAB>text<TAB>title', got {header}")
        for row in reader:
            if not row:
                continue
            if len(row) != len(DPR_COLUMNS):
                raise CorpusFormatError(f"{path}:{reader.line_num}: expected 3 tab-separated fields, got {len(row)}")
            passage_id, text, title = row
            yield Passage(passage_id, " ".join(title.split()), text.strip())


def iter_jsonl_passages(path: Path) -> Iterator[Passage]:
    """The passages of a JSON-lines corpus (wiki-18 ``{id, contents}`` or ``{id, title, text}`` records)."""
    for index, (line_number, record) in enumerate(_iter_jsonl(path)):
        try:
            yield passage_from_record(record, str(index))
        except CorpusFormatError as error:
            raise CorpusFormatError(f"{path}:{line_number}: {error}") from error


READERS_BY_SUFFIX: dict[str, Callable[[Path], Iterator[Passage]]] = {
    ".json": iter_json_list_passages,
    ".tsv": iter_dpr_tsv_passages,
}
"""How :func:`iter_passages` reads a file by its suffix; any other suffix is JSON lines."""


def iter_passages(path: str | Path) -> Iterator[Passage]:
    """Yield the passages of a corpus file (``.jsonl`` one record per line, ``.json`` a list, ``.tsv`` DPR)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"corpus file not found: {path}")
    yield from READERS_BY_SUFFIX.get(path.suffix, iter_jsonl_passages)(path)


def load_passages(path: str | Path) -> list[Passage]:
    passages = list(iter_passages(path))
    if not passages:
        raise CorpusFormatError(f"{path}: the corpus is empty")
    return passages


def write_wiki18_jsonl(passages: Iterable[Passage], path: str | Path) -> int:
    """Write passages as wiki-18 jsonl; returns how many were written."""
    count = 0
    with Path(path).open("w", encoding="utf-8") as handle:
        for passage in passages:
            handle.write(json.dumps(passage.to_wiki18(), ensure_ascii=False) + "\n")
            count += 1
    return count
