"""Convert a retrieval corpus to wiki-18 jsonl (``{"id", "title", "contents": "\\"Title\\"\\ntext"}``).

``expandsearch prepare corpus`` calls :func:`convert_corpus`; the readers are ``retriever_server.corpus``'s.
Formats (:data:`CORPUS_FORMATS`):

- ``wiki18``: one JSON object per line, ``{"id", "contents"}`` or ``{"id", "title", "text"}``;
- ``dpr_tsv``: DPR's ``psgs_w100.tsv`` (header ``id<TAB>text<TAB>title``);
- ``title_text``: a JSON list of ``{"title", "text"}`` (HippoRAG / 2Wiki corpora; ids = list positions),
  or the same objects one per line.

``auto`` reads the format off the file's start (``[`` a list, the DPR header, ``{`` jsonl), not its suffix,
so ``psgs_w100.tsv.txt`` or a ``.json`` with one object per line still convert. Passages stream: a 21M-passage
DPR file is converted without holding it in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from retriever_server import corpus as corpus_io
from retriever_server.corpus import CorpusFormatError, Passage, write_wiki18_jsonl


def _iter_title_text(path: Path) -> Iterator[Passage]:
    # a {title, text} list as one JSON document or as JSON lines, whatever the file's suffix
    if _first_char(path) == "[":
        yield from corpus_io.iter_json_list_passages(path)
    else:
        yield from corpus_io.iter_jsonl_passages(path)


# retriever_server.corpus reads by suffix; these readers let a forced --format read any file name.
CORPUS_FORMATS: dict[str, Callable[[Path], Iterator[Passage]]] = {
    "wiki18": corpus_io.iter_jsonl_passages,
    "dpr_tsv": corpus_io.iter_dpr_tsv_passages,
    "title_text": _iter_title_text,
}


def _first_char(path: Path) -> str:
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                return line.lstrip()[0]
    return ""


def detect_corpus_format(path: str | Path) -> str:
    """``title_text`` for a JSON list, ``dpr_tsv`` for the DPR header, ``wiki18`` for JSON lines."""
    path = Path(path)
    with path.open(encoding="utf-8") as handle:
        first_line = handle.readline()
    if first_line.rstrip("\r\n").split("\t") == list(corpus_io.DPR_COLUMNS):
        return "dpr_tsv"
    start = _first_char(path)
    if start == "[":
        return "title_text"
    if start == "{":
        return "wiki18"
    if not start:
        raise CorpusFormatError(f"{path}: the corpus is empty")
    raise CorpusFormatError(
        f"{path}: unknown corpus format (starts with {first_line[:40]!r}); known: {', '.join(CORPUS_FORMATS)}"
    )


def iter_corpus(path: str | Path, corpus_format: str = "auto") -> Iterator[Passage]:
    """The passages of ``path`` read as ``corpus_format`` (``auto`` detects it)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"corpus file not found: {path}")
    if corpus_format != "auto" and corpus_format not in CORPUS_FORMATS:
        raise CorpusFormatError(f"unknown corpus format {corpus_format!r}; known: auto, {', '.join(CORPUS_FORMATS)}")
    used = detect_corpus_format(path) if corpus_format == "auto" else corpus_format
    return CORPUS_FORMATS[used](path)


def convert_corpus(source: str | Path, out: str | Path, corpus_format: str = "auto") -> tuple[str, int]:
    """Write ``source`` as wiki-18 jsonl at ``out``; returns (format read, passages written).

    An empty corpus is an error and leaves no output file behind."""
    out = Path(out)
    if Path(source).is_file() and out.exists() and out.resolve() == Path(source).resolve():
        raise CorpusFormatError(f"{out}: the output would overwrite the input corpus")
    used = detect_corpus_format(source) if corpus_format == "auto" and Path(source).is_file() else corpus_format
    passages = iter_corpus(source, used)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        count = write_wiki18_jsonl(passages, out)
    except BaseException:
        out.unlink(missing_ok=True)  # a half-written corpus would look complete to the indexer
        raise
    if count == 0:
        out.unlink()
        raise CorpusFormatError(f"{source}: the corpus is empty")
    return used, count
