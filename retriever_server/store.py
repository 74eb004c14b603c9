"""A memory-mapped passage store: millions of passages on disk, read row by row without Python objects for all.

``PassageStore.build(corpus_path, out_path)`` converts any corpus layout that ``corpus.iter_passages`` reads
(wiki-18 jsonl, ``{id,title,text}`` jsonl, a ``{title,text}`` JSON list, DPR ``psgs_w100.tsv``) into an Arrow
IPC file with string columns ``id``, ``title``, ``text``, written one record batch at a time so memory stays
flat. ``PassageStore.open(path)`` memory-maps it: the operating system pages passages in as rows are read, so
a 21M-passage wiki-18 store opens instantly and costs little resident memory.

Retrievers address passages by row (FAISS and bm25s return row numbers); ``row_of(id)`` maps an id back.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from retriever_server.corpus import CorpusFormatError, Passage, iter_passages

if TYPE_CHECKING:
    import pyarrow as pa

COLUMNS = ("id", "title", "text")
DEFAULT_BATCH_ROWS = 50_000


def _schema() -> pa.Schema:
    import pyarrow as pa

    # large_string: a 21M-passage text column exceeds the 2 GiB offset limit of plain string columns.
    return pa.schema([(name, pa.large_string()) for name in COLUMNS])


def _record_batch(passages: list[Passage]) -> pa.RecordBatch:
    import pyarrow as pa

    columns = [[getattr(passage, name) for passage in passages] for name in COLUMNS]
    return pa.record_batch(columns, schema=_schema())


def _batched(passages: Iterable[Passage], size: int) -> Iterator[list[Passage]]:
    batch: list[Passage] = []
    for passage in passages:
        batch.append(passage)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def write_store(passages: Iterable[Passage], out_path: str | Path, *, batch_rows: int = DEFAULT_BATCH_ROWS) -> int:
    """Write passages to an Arrow IPC file batch by batch; returns the passage count.

    The file appears under its final name only when complete, so an interrupted build never leaves a
    truncated store that would later open as a smaller corpus.
    """
    import pyarrow as pa

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(out_path.name + ".partial")
    count = 0
    with pa.OSFile(str(partial), "wb") as sink, pa.ipc.new_file(sink, _schema()) as writer:
        for batch in _batched(passages, batch_rows):
            writer.write_batch(_record_batch(batch))
            count += len(batch)
    if count == 0:
        partial.unlink()
        raise CorpusFormatError("the corpus is empty: nothing to store")
    partial.replace(out_path)
    return count


class PassageStore(Sequence[Passage]):
    """Read-only, memory-mapped passages addressed by row (0-based, corpus order)."""

    def __init__(self, table: pa.Table, path: Path | None = None) -> None:
        self._table = table
        self.path = path
        self._ids = table.column("id")
        self._titles = table.column("title")
        self._texts = table.column("text")
        self._row_by_id: dict[str, int] | None = None

    @classmethod
    def build(
        cls, corpus_path: str | Path, out_path: str | Path, *, batch_rows: int = DEFAULT_BATCH_ROWS
    ) -> PassageStore:
        """Convert a corpus file to an Arrow store at ``out_path`` and open it."""
        write_store(iter_passages(corpus_path), out_path, batch_rows=batch_rows)
        return cls.open(out_path)

    @classmethod
    def open(cls, path: str | Path) -> PassageStore:
        import pyarrow as pa

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"passage store not found: {path}")
        try:
            table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
        except pa.ArrowInvalid as error:
            raise CorpusFormatError(f"{path}: not an Arrow passage store ({error})") from error
        missing = [name for name in COLUMNS if name not in table.column_names]
        if missing:
            raise CorpusFormatError(f"{path}: passage store lacks column(s) {missing}")
        return cls(table, path)

    def __len__(self) -> int:
        return self._table.num_rows

    @overload
    def __getitem__(self, row: int) -> Passage: ...

    @overload
    def __getitem__(self, row: slice) -> list[Passage]: ...

    def __getitem__(self, row: int | slice) -> Passage | list[Passage]:
        if isinstance(row, slice):
            return self.rows(range(len(self))[row])
        return self.get(row)

    def get(self, row: int) -> Passage:
        """The passage at ``row`` (negative rows count from the end, as for lists)."""
        size = len(self)
        if not -size <= row < size:
            raise IndexError(f"row {row} out of range for a store of {size} passages")
        row %= size
        return Passage(self._ids[row].as_py(), self._titles[row].as_py(), self._texts[row].as_py())

    def rows(self, rows: Iterable[int]) -> list[Passage]:
        """The passages at several rows, in the order given (one Arrow ``take``, not a Python loop of gets)."""
        import pyarrow as pa

        wanted = pa.array(list(rows), type=pa.int64())
        if len(wanted) == 0:
            return []
        taken = self._table.take(wanted).to_pydict()
        return [Passage(*fields) for fields in zip(*(taken[name] for name in COLUMNS), strict=True)]

    def row_of(self, passage_id: str) -> int:
        """The row of a passage id; raises ``KeyError`` for an unknown id."""
        # wiki-18 and DPR ids are usually the row number (or row + 1): check those before building the map.
        if passage_id.isdigit():
            for guess in (int(passage_id), int(passage_id) - 1):
                if 0 <= guess < len(self) and self._ids[guess].as_py() == passage_id:
                    return guess
        if self._row_by_id is None:
            self._row_by_id = {passage_id: row for row, passage_id in enumerate(self._ids.to_pylist())}
        try:
            return self._row_by_id[passage_id]
        except KeyError:
            raise KeyError(f"no passage with id {passage_id!r} in the store") from None

    def iter_batches(self, batch_rows: int = 10_000) -> Iterator[list[Passage]]:
        """The passages in corpus order, ``batch_rows`` at a time."""
        for start in range(0, len(self), batch_rows):
            yield self.slice(start, start + batch_rows)

    def slice(self, start: int, stop: int) -> list[Passage]:
        """Passages ``start`` to ``stop`` (exclusive) as a list; a zero-copy Arrow slice underneath."""
        part = self._table.slice(start, max(0, stop - start)).to_pydict()
        return [Passage(*fields) for fields in zip(*(part[name] for name in COLUMNS), strict=True)]

    def __iter__(self) -> Iterator[Passage]:
        for batch in self.iter_batches():
            yield from batch

    def describe(self) -> dict[str, Any]:
        return {"passages": len(self), "path": str(self.path) if self.path else None, "format": "arrow-ipc"}
