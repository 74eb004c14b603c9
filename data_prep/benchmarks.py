"""The QA benchmarks in the layouts users have, as FlashRAG examples (and context corpora where they exist).

Public API (what ``expandsearch prepare qa`` and the evaluation harness call)::

    examples = load_benchmark("nq", "nq/test.jsonl")                      # list[QAExample]
    prepared = prepare_benchmark("hotpotqa", "hotpot_dev_distractor_v1.json", limit=500, seed=0)
    prepared.examples    # list[QAExample]; metadata["supporting_ids"] index prepared.corpus
    prepared.corpus      # list[Passage]: the union of the questions' context paragraphs (distractor sets)
    write_benchmark(prepared, "data/hotpotqa")   # {split}.jsonl, {split}.parquet, corpus.jsonl

Layouts (:data:`LAYOUTS`, detected from the first record unless forced):

- ``flashrag``: ``id, question, golden_answers, metadata`` (all seven sets as FlashRAG ships them); a
  ``metadata`` holding HotpotQA/2Wiki ``context`` + ``supporting_facts`` or MuSiQue ``paragraphs`` gives a corpus.
- ``hotpotqa``: the original JSON list, ``context: [[title, [sentences]]]``, ``supporting_facts: [[title, i]]``.
- ``hotpotqa_hf``: the Hugging Face ``hotpot_qa`` columns, ``context{title[], sentences[][]}``,
  ``supporting_facts{title[], sent_id[]}``.
- ``2wiki``: 2WikiMultihopQA (HotpotQA's list shape plus ``evidences``).
- ``musique``: ``paragraphs[{idx, title, paragraph_text, is_supporting}]``, ``answer``, ``answer_aliases``.
- ``nq_open``: ``{"question", "answer": [...]}`` (NQ-open jsonl, and the HF ``nq_open`` dataset).

``hf`` is not a record layout but a source: it forces loading through ``datasets`` (a ``save_to_disk`` dir, a
directory of data files, or a hub ``NAME[:CONFIG]``), whose records are then detected as above; directories
and hub names are read that way under ``auto`` too (:mod:`data_prep.qa_sources`).

Golds carry every alias the source offers (FlashRAG lists, MuSiQue ``answer_aliases``, any ``aliases``).
Context paragraphs become passages deduplicated by (title, text), ids = row numbers as strings; each question's
metadata gets ``supporting_ids`` (ids in that corpus, in the source's evidence order) and ``supporting_titles``.
Source fields we do not consume (``type``, ``level``, ``evidences``, ``question_decomposition``, ...) pass into
the metadata unchanged. Sub-sampling (:func:`sample_indices`) is deterministic and keeps source order.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

from data_prep.formats import QAExample, QAFormatError, write_qa_jsonl, write_verl_parquet
from data_prep.qa_sources import SourceRecord, read_source
from retriever_server.corpus import Passage, write_wiki18_jsonl

DATASETS = ("nq", "triviaqa", "popqa", "hotpotqa", "2wikimultihopqa", "musique", "bamboogle")
"""The benchmark names (each becomes the parquet ``data_source``, as Search-R1 and verl's reward code name them)."""

CORPUS_FILE = "corpus.jsonl"


@dataclass(frozen=True)
class ContextParagraph:
    """One context paragraph of a distractor-style question."""

    title: str
    text: str


@dataclass(frozen=True)
class BenchmarkQuestion:
    """A question as read from its source: the FlashRAG example and, for distractor sets, its paragraphs.

    ``supporting`` indexes ``paragraphs`` in the source's evidence order; ``supporting_titles`` may name a title
    no paragraph has (a few HotpotQA train records cite a page missing from their context)."""

    example: QAExample
    paragraphs: tuple[ContextParagraph, ...] = ()
    supporting: tuple[int, ...] = ()
    supporting_titles: tuple[str, ...] = ()


@dataclass(frozen=True)
class PreparedBenchmark:
    """Sub-sampled examples of one benchmark split, with the context corpus their ``supporting_ids`` index."""

    name: str
    split: str
    layout: str
    examples: list[QAExample]
    corpus: list[Passage]
    source_questions: int  # questions in the source before sub-sampling


class _FieldError(Exception):
    """A record problem, raised by a layout reader; the caller adds where the record is and what it holds."""


# --- small field helpers ----------------------------------------------------------------------------------------


def _require(fields: Mapping[str, Any], key: str) -> Any:
    if fields.get(key) is None:
        raise _FieldError(f"missing field {key!r}")
    return fields[key]


def _as_list(value: Any, key: str) -> list[Any]:
    if not isinstance(value, list):
        raise _FieldError(f"field {key!r} must be a list, got {type(value).__name__}")
    return value


def _one_line_title(title: Any) -> str:
    # A title is one line: a newline in it would corrupt the wiki-18 "contents" we write.
    return " ".join(str(title).split())


def golden_answers(answer: Any, *aliases: Any) -> list[str]:
    """The answer(s) then every alias, as stripped strings, deduplicated in order, empties dropped."""
    golds: list[str] = []
    for value in (answer, *aliases):
        for gold in value if isinstance(value, list) else [value]:
            text = "" if gold is None else str(gold).strip()
            if text and text not in golds:
                golds.append(text)
    return golds


def _golds(answer: Any, *aliases: Any) -> list[str]:
    golds = golden_answers(answer, *aliases)
    if not golds:
        raise _FieldError("no gold answer (the answer field is empty)")
    return golds


def sentence_separator(paragraphs: Sequence[Sequence[Any]]) -> str:
    """How a source's sentences join: "" when they carry their leading space (HotpotQA: a split inside a quote,
    ``'"Kerrang!'`` + ``'" magazine'``, must not gain a space), else " " (2Wiki)."""
    later = [str(sentence) for sentences in paragraphs for sentence in list(sentences)[1:] if str(sentence)]
    return "" if later and sum(sentence[0].isspace() for sentence in later) * 2 >= len(later) else " "


def _question_fields(fields: Mapping[str, Any], fallback_id: str) -> tuple[str, str]:
    question = str(_require(fields, "question")).strip()
    if not question:
        raise _FieldError("field 'question' is empty")
    # None as well as absence means "no id": Hugging Face fills columns a record lacks with None.
    qid = next((fields[key] for key in ("id", "_id") if fields.get(key) is not None), fallback_id)
    return str(qid), question


def _leftover(fields: Mapping[str, Any], consumed: Iterable[str]) -> dict[str, Any]:
    """Source fields a reader did not consume: they pass into the metadata (type, level, evidences, ...)."""
    skip = set(consumed)
    return {key: value for key, value in fields.items() if key not in skip}


# --- distractor context (HotpotQA / 2Wiki / MuSiQue) -------------------------------------------------------------

# "pairs": [[title, [...]]] (the original files); "columns": {title: [...], ...} (Hugging Face); None: either.
ContextShape = Literal["pairs", "columns"] | None
ALIAS_FIELDS = ("answer_aliases", "aliases")
_DISTRACTOR_FIELDS = ("id", "_id", "question", "answer", "context", "supporting_facts", *ALIAS_FIELDS)


def context_pairs(value: Any, shape: ContextShape) -> list[tuple[str, list[Any]]]:
    """``context`` as (title, sentences) pairs, from ``[[title, [s...]]]`` or ``{title[], sentences[][]}``."""
    if shape == "columns" or (shape is None and isinstance(value, dict)):
        if not isinstance(value, dict) or not isinstance(value.get("title"), list):
            raise _FieldError("field 'context' must be {title: [...], sentences: [[...]]} (Hugging Face columns)")
        sentences = value.get("sentences", value.get("content"))
        if not isinstance(sentences, list) or len(sentences) != len(value["title"]):
            raise _FieldError("context.sentences must be a list as long as context.title")
        return [(str(title), list(sents)) for title, sents in zip(value["title"], sentences, strict=True)]
    if isinstance(value, dict):
        raise _FieldError("field 'context' must hold [title, [sentences]] pairs, got Hugging Face columns (a dict)")
    pairs = []
    for item in _as_list(value, "context"):
        if not isinstance(item, list) or len(item) != 2 or not isinstance(item[1], list):
            raise _FieldError("field 'context' must hold [title, [sentences]] pairs")
        pairs.append((str(item[0]), item[1]))
    return pairs


def _supporting_fact_pairs(value: Any, shape: ContextShape) -> list[list[Any]]:
    """``supporting_facts`` as [title, sentence id] pairs, from either shape."""
    if shape == "columns" or (shape is None and isinstance(value, dict)):
        if not isinstance(value, dict) or not isinstance(value.get("title"), list):
            raise _FieldError("field 'supporting_facts' must be {title: [...], sent_id: [...]} (Hugging Face columns)")
        sent_ids = value.get("sent_id") or [None] * len(value["title"])
        if not isinstance(sent_ids, list) or len(sent_ids) != len(value["title"]):
            # zipping unequal columns would silently drop supporting titles, and with them supporting_ids
            raise _FieldError("supporting_facts.sent_id must be a list as long as supporting_facts.title")
        return [[str(title), sent_id] for title, sent_id in zip(value["title"], sent_ids, strict=True)]
    pairs = [item for item in _as_list(value, "supporting_facts") if isinstance(item, list) and len(item) == 2]
    if len(pairs) != len(value):
        raise _FieldError("field 'supporting_facts' must hold [title, sentence_id] pairs")
    return [[str(title), sent_id] for title, sent_id in pairs]


@dataclass(frozen=True)
class _Context:
    """What a layout reader found about a record's context (see :class:`BenchmarkQuestion`)."""

    paragraphs: tuple[ContextParagraph, ...]
    supporting: tuple[int, ...]
    supporting_titles: tuple[str, ...]
    supporting_facts: list[list[Any]] | None = None  # sentence-level [title, sent_id] pairs, where the source has them


def _titled_context(fields: Mapping[str, Any], shape: ContextShape, separator: str | None) -> _Context:
    """Paragraphs, supporting indices and titles of a HotpotQA/2Wiki-style record (supporting by title).

    ``separator`` joins sentences ("" HotpotQA, " " 2Wiki); None reads it off the record's own sentences."""
    pairs = context_pairs(_require(fields, "context"), shape)
    facts = _supporting_fact_pairs(_require(fields, "supporting_facts"), shape)
    joiner = sentence_separator([sents for _, sents in pairs]) if separator is None else separator
    paragraphs = tuple(
        ContextParagraph(_one_line_title(title), joiner.join(map(str, sents)).strip()) for title, sents in pairs
    )
    titles = tuple(dict.fromkeys(_one_line_title(title) for title, _ in facts))
    supporting = tuple(index for title in titles for index, p in enumerate(paragraphs) if p.title == title)
    return _Context(paragraphs, supporting, titles, facts)


def _musique_context(fields: Mapping[str, Any]) -> _Context:
    """Paragraphs and supporting indices of a MuSiQue record (supporting by the paragraph's own flag)."""
    paragraphs, flagged, position_of_idx = [], [], {}
    for position, item in enumerate(_as_list(_require(fields, "paragraphs"), "paragraphs")):
        if not isinstance(item, dict) or "paragraph_text" not in item:
            raise _FieldError(f"paragraphs[{position}] needs 'title' and 'paragraph_text'")
        paragraphs.append(ContextParagraph(_one_line_title(item.get("title", "")), str(item["paragraph_text"]).strip()))
        position_of_idx[item.get("idx", position)] = position
        if item.get("is_supporting"):
            flagged.append(position)
    # Hop order, where the decomposition gives it (each step names its paragraph's idx).
    steps = fields.get("question_decomposition") or []
    hops = [position_of_idx.get(step.get("paragraph_support_idx")) for step in steps if isinstance(step, dict)]
    supporting = [index for index in hops if index in flagged] + [index for index in flagged if index not in hops]
    titles = tuple(dict.fromkeys(paragraphs[index].title for index in supporting))
    return _Context(tuple(paragraphs), tuple(dict.fromkeys(supporting)), titles)


# --- layout readers: fields of one record -> BenchmarkQuestion ------------------------------------------------------

LayoutReader = Callable[[Mapping[str, Any], str], BenchmarkQuestion]


def _question(
    qid: str, question: str, golds: list[str], metadata: dict[str, Any], context: _Context | None = None
) -> BenchmarkQuestion:
    if context is None:
        return BenchmarkQuestion(QAExample(qid, question, golds, metadata))
    if context.supporting_facts is not None:
        metadata = {**metadata, "supporting_facts": context.supporting_facts}
    example = QAExample(qid, question, golds, metadata)
    return BenchmarkQuestion(example, context.paragraphs, context.supporting, context.supporting_titles)


def _read_flashrag(fields: Mapping[str, Any], fallback_id: str) -> BenchmarkQuestion:
    qid, question = _question_fields(fields, fallback_id)
    answers = _require(fields, "golden_answers")
    if not isinstance(answers, list):
        raise _FieldError(f"field 'golden_answers' must be a list, got {type(answers).__name__}")
    metadata = fields.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise _FieldError("field 'metadata' must be an object")
    context, consumed = _metadata_context(metadata)
    return _question(qid, question, _golds(answers), _leftover(metadata, consumed), context)


def _metadata_context(metadata: Mapping[str, Any]) -> tuple[_Context | None, tuple[str, ...]]:
    """FlashRAG's multi-hop files may keep the source's context in ``metadata``; read it when they do."""
    if "paragraphs" in metadata:
        return _musique_context(metadata), ("paragraphs",)
    if "context" in metadata and "supporting_facts" in metadata:
        return _titled_context(metadata, None, None), ("context", "supporting_facts")
    return None, ()


def _read_distractor(
    fields: Mapping[str, Any], fallback_id: str, *, shape: ContextShape, separator: str
) -> BenchmarkQuestion:
    qid, question = _question_fields(fields, fallback_id)
    golds = _golds(_require(fields, "answer"), *(fields.get(key) for key in ALIAS_FIELDS))
    context = _titled_context(fields, shape, separator)
    return _question(qid, question, golds, _leftover(fields, _DISTRACTOR_FIELDS), context)


def _read_musique(fields: Mapping[str, Any], fallback_id: str) -> BenchmarkQuestion:
    qid, question = _question_fields(fields, fallback_id)
    golds = _golds(_require(fields, "answer"), *(fields.get(key) for key in ALIAS_FIELDS))
    consumed = ("id", "question", "answer", "paragraphs", *ALIAS_FIELDS)
    return _question(qid, question, golds, _leftover(fields, consumed), _musique_context(fields))


def _read_nq_open(fields: Mapping[str, Any], fallback_id: str) -> BenchmarkQuestion:
    qid, question = _question_fields(fields, fallback_id)
    golds = _golds(_require(fields, "answer"), *(fields.get(key) for key in ALIAS_FIELDS))
    return _question(qid, question, golds, _leftover(fields, ("id", "_id", "question", "answer", *ALIAS_FIELDS)))


LAYOUTS: dict[str, LayoutReader] = {
    "flashrag": _read_flashrag,
    "hotpotqa": partial(_read_distractor, shape="pairs", separator=""),
    "hotpotqa_hf": partial(_read_distractor, shape="columns", separator=""),
    "2wiki": partial(_read_distractor, shape=None, separator=" "),  # 2Wiki is shared in both shapes
    "musique": _read_musique,
    "nq_open": _read_nq_open,
}
"""Record layout name → reader of one record's fields (``fallback_id`` names records without an id)."""

LAYOUT_CHOICES = ("auto", *LAYOUTS, "hf")

# Detection: the first layout whose test passes on the first record wins, so the more specific come first.
_DETECTORS: tuple[tuple[str, Callable[[Mapping[str, Any]], bool]], ...] = (
    ("flashrag", lambda f: "golden_answers" in f),
    ("musique", lambda f: "paragraphs" in f and "answer" in f),
    ("2wiki", lambda f: {"context", "supporting_facts", "evidences"} <= f.keys()),
    ("hotpotqa_hf", lambda f: {"context", "supporting_facts"} <= f.keys() and isinstance(f["context"], dict)),
    ("hotpotqa", lambda f: {"context", "supporting_facts"} <= f.keys()),
    ("nq_open", lambda f: {"question", "answer"} <= f.keys()),
)
_LAYOUT_FIELDS = {
    "flashrag": "id, question, golden_answers, metadata",
    "musique": "id, question, answer, answer_aliases, paragraphs",
    "2wiki": "_id, question, answer, context, supporting_facts, evidences",
    "hotpotqa_hf": "id, question, answer, context{title,sentences}, supporting_facts{title,sent_id}",
    "hotpotqa": "_id, question, answer, context[[title,[sentences]]], supporting_facts",
    "nq_open": "question, answer",
}


def detect_layout(record: SourceRecord) -> str:
    """The layout of ``record``; an unknown one raises, naming the fields seen and the layouts known."""
    for layout, matches in _DETECTORS:
        if matches(record.fields):
            return layout
    known = "; ".join(f"{name} ({fields})" for name, fields in _LAYOUT_FIELDS.items())
    raise QAFormatError(
        f"{record.where}: unknown layout, fields seen: {', '.join(sorted(record.fields)) or 'none'}; known layouts: "
        f"{known}"
    )


# --- reading, sampling, corpus ------------------------------------------------------------------------------------


def read_benchmark(
    source: str | Path, layout: str = "auto", *, split: str = "test"
) -> tuple[str, list[BenchmarkQuestion]]:
    """Read every question of ``source`` (file, HF directory or hub name); returns (layout used, questions)."""
    if layout not in LAYOUT_CHOICES:
        raise QAFormatError(f"unknown layout {layout!r}; known: {', '.join(LAYOUT_CHOICES)}")
    records = read_source(source, split=split, hf=layout == "hf")
    record_layout = layout if layout in LAYOUTS else detect_layout(records[0])
    reader = LAYOUTS[record_layout]
    return record_layout, [
        _read_record(reader, record_layout, record, split, index) for index, record in enumerate(records)
    ]


def _read_record(reader: LayoutReader, layout: str, record: SourceRecord, split: str, index: int) -> BenchmarkQuestion:
    try:
        return reader(record.fields, f"{split}_{index}")
    except _FieldError as error:
        raise QAFormatError(
            f"{record.where}: layout {layout}: {error} (fields seen: {', '.join(sorted(record.fields))})"
        ) from error


def sample_indices(total: int, limit: int | None, seed: int = 0) -> list[int]:
    """Indices of ``limit`` of ``total`` items, the same for the same (limit, seed), in ascending order.

    They are the first ``limit`` of one seeded permutation, so a larger limit keeps every question a smaller one
    chose (N=100 ⊂ N=200 for the same seed). ``None`` or a limit >= total keeps everything."""
    if limit is None or limit >= total:
        return list(range(total))
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    order = list(range(total))
    random.Random(seed).shuffle(order)
    return sorted(order[:limit])


def context_corpus(questions: Sequence[BenchmarkQuestion]) -> tuple[list[Passage], list[QAExample]]:
    """The union of the questions' paragraphs as passages (deduplicated by title and text, ids "0", "1", ...)
    and the examples with ``supporting_ids`` / ``supporting_titles`` in their metadata (questions without
    paragraphs pass through unchanged)."""
    ids: dict[tuple[str, str], str] = {}
    examples = []
    for question in questions:
        local_ids = [ids.setdefault((p.title, p.text), str(len(ids))) for p in question.paragraphs]
        if not question.paragraphs:
            examples.append(question.example)
            continue
        support = list(dict.fromkeys(local_ids[index] for index in question.supporting))
        metadata = {
            **question.example.metadata,
            "supporting_ids": support,
            "supporting_titles": list(question.supporting_titles),
        }
        examples.append(replace(question.example, metadata=metadata))
    passages = [Passage(passage_id, title, text) for (title, text), passage_id in ids.items()]
    return passages, examples


def prepare_benchmark(
    name: str,
    source: str | Path,
    *,
    layout: str = "auto",
    split: str = "test",
    limit: int | None = None,
    seed: int = 0,
) -> PreparedBenchmark:
    """Read ``source`` as benchmark ``name``, sub-sample ``limit`` questions with ``seed``, build the corpus."""
    if name not in DATASETS:
        raise QAFormatError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    used_layout, questions = read_benchmark(source, layout, split=split)
    chosen = [questions[index] for index in sample_indices(len(questions), limit, seed)]
    corpus, examples = context_corpus(chosen)
    return PreparedBenchmark(name, split, used_layout, examples, corpus, len(questions))


def load_benchmark(
    name: str,
    source: str | Path,
    layout: str = "auto",
    *,
    split: str = "test",
    limit: int | None = None,
    seed: int = 0,
) -> list[QAExample]:
    """The examples of :func:`prepare_benchmark` (their ``supporting_ids`` index its corpus for the same args)."""
    return prepare_benchmark(name, source, layout=layout, split=split, limit=limit, seed=seed).examples


_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def write_benchmark(
    prepared: PreparedBenchmark, out_dir: str | Path, *, template: str = "expandsearch"
) -> dict[str, Path]:
    """Write ``{split}.jsonl`` (FlashRAG), ``{split}.parquet`` (verl, ``data_source`` = the name) and, when
    there is a context corpus, ``corpus.jsonl`` (wiki-18); returns the paths written by kind."""
    if not _SPLIT_NAME.match(prepared.split):
        raise ValueError(f"split {prepared.split!r} cannot name a file (letters, digits, '_', '-', '.')")
    out = Path(out_dir)
    if prepared.corpus:
        _refuse_mixed_corpus(out, prepared.split)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"jsonl": out / f"{prepared.split}.jsonl", "parquet": out / f"{prepared.split}.parquet"}
    # Parquet first: an unknown template fails before any file is written.
    write_verl_parquet(
        prepared.examples, paths["parquet"], data_source=prepared.name, split=prepared.split, template=template
    )
    write_qa_jsonl(prepared.examples, paths["jsonl"])
    if prepared.corpus:
        paths["corpus"] = out / CORPUS_FILE
        write_wiki18_jsonl(prepared.corpus, paths["corpus"])
    return paths


def _refuse_mixed_corpus(out: Path, split: str) -> None:
    """corpus.jsonl belongs to one split's questions: writing a second split there would leave the first
    split's supporting_ids pointing into the wrong corpus."""
    if not (out / CORPUS_FILE).is_file():
        return
    others = sorted(path.name for path in out.glob("*.jsonl") if path.name not in (CORPUS_FILE, f"{split}.jsonl"))
    if others:
        raise QAFormatError(
            f"{out} already holds {', '.join(others)}, whose supporting_ids index {out / CORPUS_FILE}; write each "
            f"split of a distractor-style set to its own directory"
        )
