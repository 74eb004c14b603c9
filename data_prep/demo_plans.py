"""What a real-data demonstration must find, hop by hop, read off what each multi-hop dataset already gives.

:func:`plan_question` turns one record of HotpotQA, 2WikiMultihopQA or MuSiQue (as :mod:`data_prep.benchmarks`
reads it, plus the raw record for the sentence lists the reader joins) into a :class:`DemoPlan`: the hops, each
with the paragraph that states it, the sentence(s) that state it, the query wordings to search it with, and the
entity it finds. :mod:`data_prep.demos` plays plans through the real environment.

- HotpotQA: the supporting titles and sentences. Bridge questions: the hop whose paragraph the question names
  first, then the bridge entity (the other supporting title, as the first hop's sentence mentions it) with the
  question's relation words. Comparison questions: the two titles, independent hops.
- 2WikiMultihopQA: the ``evidences`` triples ``(subject, relation, object)`` aligned with ``supporting_facts``
  (paragraph titles and sentence ids); a triple whose subject is an earlier triple's object is a bridge hop.
- MuSiQue: the ``question_decomposition`` sub-questions, ``#k`` filled with hop k's answer (``X >> relation``
  becomes ``X relation``); the evidence is the sentences of the supporting paragraph that hold the hop's answer.

A record without what its dataset's plan needs gives a :class:`PlanError` (counted as ``no_plan``).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_env.squeezers import split_sentences
from data_prep.benchmarks import BenchmarkQuestion, context_pairs, read_benchmark, sample_indices
from data_prep.formats import QAExample, QAFormatError
from data_prep.qa_sources import read_source

DATA_SOURCES = {"hotpotqa": "hotpotqa", "hotpotqa_hf": "hotpotqa", "2wiki": "2wikimultihopqa", "musique": "musique"}
"""Record layout → the ``data_source`` name (verl's, as ``prepare qa`` writes it)."""

YES_NO = frozenset({"yes", "no"})

# Words a query gains nothing from: question words and function words (relation words are what is left).
_QUESTION_WORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "of",
        "in",
        "on",
        "at",
        "to",
        "for",
        "from",
        "by",
        "with",
        "and",
        "or",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "which",
        "what",
        "who",
        "whom",
        "whose",
        "where",
        "when",
        "why",
        "how",
        "did",
        "does",
        "do",
        "that",
        "this",
        "these",
        "those",
        "it",
        "its",
        "as",
        "than",
        "then",
        "there",
        "their",
        "they",
        "he",
        "she",
        "his",
        "her",
        "him",
        "them",
        "also",
        "same",
        "both",
        "either",
        "one",
        "two",
        "many",
        "much",
        "more",
        "most",
        "first",
        "second",
        "other",
        "another",
        "has",
        "have",
        "had",
    ]
)
_PARENTHETICAL = re.compile(r"\s*\([^()]*\)\s*$")
_HOP_REF = re.compile(r"#(\d+)")


class PlanError(ValueError):
    """A record lacks what its dataset's demonstration plan needs (supporting facts, evidences, a decomposition)."""


@dataclass(frozen=True)
class Hop:
    """One fact to find: where it is stated, how to search for it, and what it yields."""

    title: str
    """Title of the paragraph that states it (as the corpus and the observation label write it)."""
    evidence: tuple[str, ...]
    """Sentences of that paragraph that state it; the hop is shown when an observation shows one of them."""
    queries: tuple[str, ...]
    """Search wordings, best first, distinct ignoring case."""
    need: str
    """What the ``<think>`` says is being looked for ("the director of Bloody Moon")."""
    value: str | None = None
    """What it finds (the bridge entity, the hop's answer), when the dataset says."""
    after: int | None = None
    """Index of the hop whose ``value`` this hop's queries use (a bridge), or None for a hop the question names."""
    bridge: str | None = None
    """The mention of that earlier value the queries carry; an earlier observation must show it."""


@dataclass(frozen=True)
class DemoPlan:
    """One question's demonstration plan."""

    example: QAExample
    data_source: str
    hops: tuple[Hop, ...]
    answer: str
    """The answer the demonstration gives: the first gold."""
    comparison: bool
    """A comparison question: its answer may be yes/no or one of the entities the question names."""


# --- text helpers ---------------------------------------------------------------------------------------------------


def norm_text(text: str) -> str:
    """NFC, whitespace collapsed: how a sentence is compared with the decoded observation."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def one_line(title: Any) -> str:
    return " ".join(str(title).split())


def bare_title(title: str) -> str:
    """``Tinted Windows (band)`` → ``Tinted Windows``: the entity as passages mention it."""
    return _PARENTHETICAL.sub("", title).strip() or title


def contains(text: str, part: str) -> bool:
    """Case-insensitive containment of ``part`` in ``text`` after :func:`norm_text`."""
    return bool(part.strip()) and norm_text(part).casefold() in norm_text(text).casefold()


def relation_words(question: str, *known: str, limit: int = 6) -> str:
    """The first ``limit`` content words of the question that no ``known`` text holds ("first performance city")."""
    taken = {word.casefold() for text in known for word in re.findall(r"\w+", text)}
    words = [w for w in re.findall(r"[\w'-]+", question) if w.casefold() not in _QUESTION_WORDS | taken]
    return " ".join(list(dict.fromkeys(words))[:limit])


def distinct(queries: Sequence[str]) -> tuple[str, ...]:
    """Queries with whitespace collapsed, empties and case-insensitive repeats dropped (as the parser would)."""
    seen: dict[str, str] = {}
    for query in queries:
        query = " ".join(query.replace("#", " ").split())
        if query and query.casefold() not in seen:
            seen[query.casefold()] = query
    return tuple(seen.values())


# --- per dataset --------------------------------------------------------------------------------------------------


def plan_question(
    question: BenchmarkQuestion, record: Mapping[str, Any], layout: str, *, max_hops: int | None = None
) -> DemoPlan:
    """The plan of one question read with ``layout``; raises PlanError when the record cannot give one."""
    fields = _record_fields(record, layout)
    source = _data_source(fields, layout)
    example = question.example
    if source == "musique":
        hops, comparison = _musique_hops(example, fields), False
    elif source == "2wikimultihopqa":
        hops, comparison = _twowiki_hops(example, fields), "comparison" in str(fields.get("type", ""))
    else:
        hops, comparison = _hotpot_hops(example, fields), fields.get("type") == "comparison"
    if not hops:
        raise PlanError("no hops")
    if max_hops is not None and len(hops) > max_hops:
        raise PlanError(f"{len(hops)} hops, more than {max_hops}")
    return DemoPlan(example, source, tuple(hops), example.golden_answers[0], comparison)


def _record_fields(record: Mapping[str, Any], layout: str) -> Mapping[str, Any]:
    if layout == "flashrag":  # FlashRAG's multi-hop files keep the source record in metadata
        return record.get("metadata") or {}
    return record


def _data_source(fields: Mapping[str, Any], layout: str) -> str:
    if layout in DATA_SOURCES:
        return DATA_SOURCES[layout]
    if "paragraphs" in fields:
        return "musique"
    if "evidences" in fields:
        return "2wikimultihopqa"
    if "context" in fields and "supporting_facts" in fields:
        return "hotpotqa"
    raise PlanError(f"layout {layout}: no supporting facts, evidences or decomposition to plan from")


def _sentences_by_title(fields: Mapping[str, Any]) -> dict[str, list[str]]:
    if fields.get("context") is None:
        raise PlanError("no context")
    pairs = context_pairs(fields["context"], None)
    return {one_line(title): [str(sentence).strip() for sentence in sentences] for title, sentences in pairs}


def _fact_sentences(example: QAExample, fields: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(title, sentence)`` of every supporting fact the context has, in the source's order."""
    sentences = _sentences_by_title(fields)
    facts = []
    for title, sent_id in example.metadata.get("supporting_facts") or []:
        title = one_line(title)
        if isinstance(sent_id, int) and 0 <= sent_id < len(sentences.get(title, [])):
            facts.append((title, sentences[title][sent_id]))
    if not facts:
        raise PlanError("no supporting fact found in the context")
    return facts


def _by_title(facts: Sequence[tuple[str, str]]) -> dict[str, tuple[str, ...]]:
    grouped: dict[str, list[str]] = {}
    for title, sentence in facts:
        grouped.setdefault(title, []).append(sentence)
    return {title: tuple(sentences) for title, sentences in grouped.items()}


def _hotpot_hops(example: QAExample, fields: Mapping[str, Any]) -> list[Hop]:
    evidence = _by_title(_fact_sentences(example, fields))
    question = example.question
    titles = list(evidence)
    answer = example.golden_answers[0]
    final = None if answer.casefold() in YES_NO else answer  # the last hop's paragraph states the answer
    if fields.get("type") == "comparison" or len(titles) == 1:
        value = final if len(titles) == 1 else None
        return [_named_hop(t, evidence[t], question, first=i == 0, value=value) for i, t in enumerate(titles)]
    titles = _bridge_order(titles, evidence, question)
    entities = [bare_title(title) for title in titles]
    hops: list[Hop] = []
    for index, (title, entity) in enumerate(zip(titles, entities, strict=True)):
        value = entities[index + 1] if index + 1 < len(titles) else final
        if index == 0 or contains(question, entity):  # named by the question: searchable from the start
            hops.append(_named_hop(title, evidence[title], question, first=index == 0, value=value))
            continue
        # The relation words of this hop: what the question asks beyond what the earlier paragraphs stated.
        read = " ".join(sentence for earlier in titles[:index] for sentence in evidence[earlier])
        rest = relation_words(question, *entities, read, limit=4)
        queries = distinct([f"{entity} {rest}", entity, f"{title} {rest}"])
        hops.append(Hop(title, evidence[title], queries, f"out about {entity}", value, index - 1, entity))
    return hops


def _named_hop(title: str, evidence: tuple[str, ...], question: str, *, first: bool, value: str | None = None) -> Hop:
    entity = bare_title(title)
    rest = relation_words(question, entity)
    wordings = [question, f"{entity} {rest}", entity] if first else [f"{entity} {rest}", entity, question]
    return Hop(title, evidence, distinct(wordings), f"out about {entity}", value)


def _bridge_order(titles: list[str], evidence: Mapping[str, tuple[str, ...]], question: str) -> list[str]:
    """The question's own title first: the one a later title's entity is mentioned in, else the one the question
    names; the bridge entity (named in that first paragraph's evidence, not in the question) after it."""

    def mentioned_elsewhere(title: str) -> bool:
        return any(contains(" ".join(evidence[other]), bare_title(title)) for other in titles if other != title)

    def score(title: str) -> tuple[bool, int]:
        return (mentioned_elsewhere(title) and not contains(question, bare_title(title)), titles.index(title))

    return sorted(titles, key=score)


def _twowiki_hops(example: QAExample, fields: Mapping[str, Any]) -> list[Hop]:
    facts = _fact_sentences(example, fields)
    triples = [t for t in fields.get("evidences") or [] if isinstance(t, list) and len(t) == 3]
    if not triples:
        raise PlanError("no evidences triples")
    if len(triples) != len(facts):
        raise PlanError(f"{len(triples)} evidences for {len(facts)} supporting facts")
    hops: list[Hop] = []
    objects = [str(obj).strip() for _, _, obj in triples]
    for index, ((subject, relation, _), (title, sentence)) in enumerate(zip(triples, facts, strict=True)):
        subject, relation = str(subject).strip(), str(relation).strip()
        after = next((i for i in range(index) if objects[i].casefold() == subject.casefold()), None)
        mention = _mention(subject, title, facts[after][1]) if after is not None else subject
        queries = distinct([f"{mention} {relation}", bare_title(title), f"{relation} of {mention}"])
        hop = Hop(title, (sentence,), queries, f"the {relation} of {mention}", objects[index], after)
        hops.append(hop if after is None else _bridged(hop, mention))
    return hops


def _mention(entity: str, title: str, earlier_sentence: str) -> str:
    """How the earlier hop's sentence names an entity: its paragraph's bare title or the dataset's label."""
    return next((name for name in (bare_title(title), entity) if contains(earlier_sentence, name)), entity)


def _bridged(hop: Hop, mention: str) -> Hop:
    return Hop(hop.title, hop.evidence, hop.queries, hop.need, hop.value, hop.after, mention)


def _musique_hops(example: QAExample, fields: Mapping[str, Any]) -> list[Hop]:
    steps = [step for step in fields.get("question_decomposition") or [] if isinstance(step, dict)]
    if not steps:
        raise PlanError("no question_decomposition")
    if fields.get("answerable") is False:
        raise PlanError("unanswerable question")
    paragraphs = {p.get("idx", i): p for i, p in enumerate(fields.get("paragraphs") or []) if isinstance(p, dict)}
    answers = [str(step.get("answer", "")).strip() for step in steps]
    hops = []
    for index, step in enumerate(steps):
        paragraph = paragraphs.get(step.get("paragraph_support_idx"))
        if paragraph is None:
            raise PlanError(f"decomposition step {index + 1} names no paragraph of the record")
        refs = [int(ref) - 1 for ref in _HOP_REF.findall(str(step.get("question", "")))]
        if any(not 0 <= ref < index for ref in refs):
            raise PlanError(f"decomposition step {index + 1} refers to a later step")
        text = _HOP_REF.sub(lambda match: answers[int(match.group(1)) - 1], str(step["question"]))
        hops.append(_musique_hop(example.question, paragraph, text, answers[index], refs, answers, first=index == 0))
    return hops


def _musique_hop(
    question: str,
    paragraph: Mapping[str, Any],
    text: str,
    answer: str,
    refs: list[int],
    answers: list[str],
    *,
    first: bool,
) -> Hop:
    title = one_line(paragraph.get("title", ""))
    sentences = split_sentences(str(paragraph.get("paragraph_text", "")))
    evidence = tuple(s for s in sentences if contains(s, answer)) or tuple(sentences)
    if ">>" in text:  # Wikidata form: "Van Hook Township >> located in the administrative territorial entity"
        subject, _, relation = (part.strip() for part in text.partition(">>"))
        queries = [f"{subject} {relation}", subject, question if first else f"{relation} of {subject}"]
        need = f"the {relation} of {subject}"
    else:
        queries = [text, relation_words(text), question if first else bare_title(title)]
        need = f"the answer to: {text.rstrip('?')}"
    after = refs[-1] if refs else None
    return Hop(title, evidence, distinct(queries), need, answer, after, answers[after] if after is not None else None)


# --- reading input files ------------------------------------------------------------------------------------------


@dataclass
class PlannedInput:
    """One input file read and planned: the chosen questions' plans, and the ones that gave no plan."""

    path: Path
    layout: str
    questions: list[BenchmarkQuestion]
    plans: list[DemoPlan]
    unplanned: dict[str, Counter[str]]  # data_source -> PlanError reasons ("no_plan")
    totals: Counter[str]  # data_source -> questions chosen


def plan_file(
    path: str | Path, *, limit: int | None = None, seed: int = 0, max_hops: int | None = None
) -> PlannedInput:
    """Read one raw benchmark file (any layout ``data_prep.benchmarks`` reads), choose ``limit`` questions with
    ``seed`` (as ``prepare qa --limit`` does) and plan each; raises QAFormatError / FileNotFoundError."""
    layout, questions = read_benchmark(path)
    records = read_source(path)  # the raw records: the reader joins HotpotQA/2Wiki sentences into paragraphs
    chosen = sample_indices(len(questions), limit, seed)
    planned = PlannedInput(Path(path), layout, [questions[i] for i in chosen], [], {}, Counter())
    for index in chosen:
        fields = records[index].fields
        source = DATA_SOURCES.get(layout) or _source_or_none(_record_fields(fields, layout))
        if source is None:
            raise QAFormatError(f"{path}: layout {layout} has no supporting facts to plan demonstrations from")
        planned.totals[source] += 1
        try:
            planned.plans.append(plan_question(questions[index], fields, layout, max_hops=max_hops))
        except PlanError:
            planned.unplanned.setdefault(source, Counter())["no_plan"] += 1
    return planned


def _source_or_none(fields: Mapping[str, Any]) -> str | None:
    try:
        return _data_source(fields, "flashrag")
    except PlanError:
        return None
