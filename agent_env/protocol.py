"""The text protocol between the policy LLM and the search environment.

The policy writes tags (Search-R1 / ParallelSearch style)::

    <think> optional reasoning </think>
    <search> variant 1 ## variant 2 ## variant 3 </search>     (several query variants at once)
    <answer> final answer </answer>

and the environment replies with ``<information> … </information>`` (passages or a squeezer's summary),
or with a short corrective text after a turn it cannot parse.

This module holds everything about that text and nothing else: the stop strings that end a generated
turn, :func:`parse_action` (policy text → :class:`Action`), the observation and feedback renderers and
the prompt templates. The episode driver, the reward code and the evaluation all use it, so it stays
standard-library only and cheap to import.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeAlias

from retriever_server.corpus import split_contents

SEARCH_SEPARATOR = "##"
STOP_STRINGS = ("</search>", "</answer>")

ActionKind = Literal["search", "answer", "invalid"]

_ACTION_TAGS = ("search", "answer")
# Protocol tags that may not appear inside an action body; they are replaced by a space, keeping the
# text around them (a space so that removing a tag can never glue two halves into a new tag).
_STRAY_TAG_RE = re.compile(r"</?(?:search|answer|think|information)>")
# A run of two or more '#' separates variants, so '###' does not leave a '#' on the next variant,
# while a single '#' (as in "C# compiler") stays part of the query.
_SEPARATOR_RE = re.compile(r"#{2,}")
_ANY_CASE_TAG_RE = re.compile(r"</?(?:search|answer)>", re.IGNORECASE)


@dataclass(frozen=True)
class Action:
    """One parsed policy turn: a search with its query variants, a final answer, or an invalid turn."""

    kind: ActionKind
    queries: tuple[str, ...] = ()
    answer: str | None = None
    error: str | None = None  # a short human-readable reason, set only when kind == "invalid"

    @property
    def is_valid(self) -> bool:
        return self.kind != "invalid"


def invalid(reason: str) -> Action:
    """An invalid Action with its reason."""
    return Action(kind="invalid", error=reason)


def truncate_turn(text: str, stop: Sequence[str] = STOP_STRINGS) -> str:
    """Cut a generated turn after the first of the ``stop`` strings (``</search>`` or ``</answer>``).

    This is what stopping generation at :data:`STOP_STRINGS` does; use it when the engine did not stop
    by itself. Text containing none of them is returned unchanged.
    """
    ends = [pos + len(tag) for tag in stop if (pos := text.find(tag)) != -1]
    return text[: min(ends)] if ends else text


def parse_action(text: str, *, max_variants: int = 3, max_query_chars: int = 200) -> Action:
    """Parse one policy turn into an :class:`Action`; never raises for any ``text``.

    Rules:

    - Tags are case-sensitive (only ``<search>``, ``</search>``, ``<answer>``, ``</answer>``), like the
      stop strings that end generation; ``<Search>`` is invalid, with a reason saying so.
    - The first action to be *completed* wins: the earliest ``</search>`` or ``</answer>`` closes it,
      because generation stops there. So ``parse_action(t) == parse_action(truncate_turn(t))``, and
      text after the closing tag is ignored.
    - Its body starts after the innermost (last) matching opening tag before that close: in
      ``<search> a <search> b </search>`` the query is ``b``. Text before that opening tag (a
      ``<think>`` block or anything else) is ignored; ``<think>`` is optional and has no special role.
    - Stray protocol tags inside the body (``<answer>``, ``<think>``, ``<information>`` and their
      closers) are removed; the text between them is kept.
    - A closing tag with no matching opening tag before it (``q </search>``, ``<search> q </answer>``),
      or an opening tag that is never closed, makes the turn invalid.
    - Search body: split into variants on runs of two or more ``#``; each variant has its whitespace
      collapsed; empty variants are dropped; a variant longer than ``max_query_chars`` is cut, at the
      last space when that keeps at least half of it, else mid-word; duplicates (ignoring case, after
      cutting) are dropped, keeping the first; then the first ``max_variants`` are kept. No variant
      left → invalid.
    - ``max_variants=1`` is Search-R1's protocol: the body is not split, it is one query (``##`` in it
      is plain text).
    - Answer body: whitespace collapsed; empty → invalid. Non-ASCII text is kept as written.

    Raises ``ValueError`` only for ``max_variants < 1`` or ``max_query_chars < 1`` (a caller bug).
    """
    if max_variants < 1 or max_query_chars < 1:
        raise ValueError(f"max_variants and max_query_chars must be >= 1, got {max_variants}, {max_query_chars}")
    located = _locate_action(text)
    if isinstance(located, Action):
        return located
    kind, body = located
    if kind == "answer":
        answer = clean_answer(body)
        return Action(kind="answer", answer=answer) if answer else invalid("empty answer in <answer> </answer>")
    body = _STRAY_TAG_RE.sub(" ", body)
    parts = [body] if max_variants == 1 else _SEPARATOR_RE.split(body)
    queries = clean_queries(parts, max_variants, max_query_chars)
    if not queries:
        return invalid("empty search: no query between <search> and </search>")
    return Action(kind="search", queries=queries)


def _locate_action(text: str) -> tuple[str, str] | Action:
    """Find the first completed action: its kind and raw body, or an invalid Action saying why not."""
    closes = [(pos, kind) for kind in _ACTION_TAGS if (pos := text.find(f"</{kind}>")) != -1]
    if not closes:
        return invalid(_why_no_action(text))
    close_pos, kind = min(closes)
    open_tag = f"<{kind}>"
    open_pos = text.rfind(open_tag, 0, close_pos)
    if open_pos == -1:
        other = "answer" if kind == "search" else "search"
        if text.rfind(f"<{other}>", 0, close_pos) != -1:
            return invalid(f"mismatched tags: <{other}> closed by </{kind}>")
        return invalid(f"</{kind}> without a matching <{kind}>")
    return kind, text[open_pos + len(open_tag) : close_pos]


def _why_no_action(text: str) -> str:
    """The reason for a turn without any closing tag."""
    opens = [(pos, kind) for kind in _ACTION_TAGS if (pos := text.find(f"<{kind}>")) != -1]
    if opens:
        kind = min(opens)[1]
        return f"unclosed <{kind}> tag (missing </{kind}>)"
    if _ANY_CASE_TAG_RE.search(text):
        return "tags are case-sensitive: write <search> and <answer> in lower case"
    return "no <search> or <answer> action found"


def clean_answer(body: str) -> str:
    """An answer body as the protocols keep it: stray protocol tags removed, whitespace collapsed."""
    return " ".join(_STRAY_TAG_RE.sub(" ", body).split())


def clean_queries(parts: Iterable[str], max_variants: int, max_query_chars: int) -> tuple[str, ...]:
    """Raw query variants as every action format keeps them: stray tags removed, whitespace collapsed, over-long
    ones cut, empty ones and case-insensitive duplicates dropped, the first ``max_variants`` kept."""
    queries: list[str] = []
    seen: set[str] = set()
    for part in parts:
        query = _cut_query(" ".join(_STRAY_TAG_RE.sub(" ", part).split()), max_query_chars)
        key = query.casefold()
        if query and key not in seen:
            seen.add(key)
            queries.append(query)
        if len(queries) == max_variants:
            break
    return tuple(queries)


def _cut_query(query: str, max_chars: int) -> str:
    """Shorten an over-long (whitespace-collapsed) query, preferring a word boundary."""
    if len(query) <= max_chars:
        return query
    if query[max_chars] == " ":  # the cut already falls between two words
        return query[:max_chars].rstrip()
    head = query[:max_chars]
    space = head.rfind(" ")
    # Cutting at the last space is nicer, but not at the cost of throwing most of the query away.
    return head[:space] if space >= max_chars // 2 else head


def invalid_action_feedback(action: Action) -> str:
    """The corrective text the environment inserts after an invalid turn (not an ``<information>`` block).

    It is framed by blank lines like an observation, so the policy's next turn starts on a fresh line.
    """
    reason = action.error or "the turn has no complete action"
    message = (
        f"Your previous turn was not a valid action ({reason}). "
        f"To search, write one or more queries separated by {SEARCH_SEPARATOR}, like "
        f"<search> first query {SEARCH_SEPARATOR} second query </search>. "
        "To finish, write <answer> your short answer </answer>. Please try again."
    )
    return f"\n\n{message}\n\n"


class PassageLike(Protocol):
    """Anything with a passage title and text (retriever results, dataclasses, pydantic models)."""

    # read-only properties, so frozen dataclasses match too
    @property
    def title(self) -> str: ...

    @property
    def text(self) -> str: ...


Passage: TypeAlias = PassageLike | Mapping[str, Any]


def passage_title_text(passage: Passage) -> tuple[str, str]:
    """Return ``(title, text)`` of a passage object or dict.

    Accepted: objects with ``title``/``text`` attributes; dicts with ``"title"``/``"text"``; wiki-18
    dicts ``{"contents": "\\"Title\\"\\ntext"}`` (first line is the title, its surrounding quotes
    dropped; no newline → no title); and retrieval-API items ``{"document": {...}, "score": ...}``.
    """
    if isinstance(passage, Mapping):
        return _mapping_title_text(passage)
    title, text = getattr(passage, "title", None), getattr(passage, "text", None)
    if not isinstance(title, str) or not isinstance(text, str):
        raise TypeError(f"passage needs str 'title' and 'text' attributes, got {type(passage).__name__}")
    return title, text


def _mapping_title_text(passage: Mapping[str, Any]) -> tuple[str, str]:
    if "text" in passage:
        return str(passage.get("title") or ""), str(passage["text"])
    if "contents" in passage:
        return split_contents(str(passage["contents"]))
    if isinstance(passage.get("document"), Mapping):
        return _mapping_title_text(passage["document"])
    raise ValueError(f"passage dict needs 'text', 'contents' or 'document', got keys {sorted(passage)}")


def render_passages(passages: Sequence[Passage]) -> str:
    """One line per passage, numbered from 1: ``Doc 1 (Title: Some Title) passage text``.

    Whitespace inside titles and texts is collapsed so each passage stays on one line; a passage
    without a title is written ``Doc 1 passage text``. No passages → :func:`render_no_results`.
    """
    if not passages:
        return render_no_results()
    lines = []
    for number, passage in enumerate(passages, start=1):
        title, text = (" ".join(part.split()) for part in passage_title_text(passage))
        label = f"Doc {number} (Title: {title})" if title else f"Doc {number}"
        lines.append(f"{label} {text}".rstrip())
    return "\n".join(lines)


def render_no_results() -> str:
    """The observation body for a retrieval that found nothing (wrap it with :func:`render_observation`)."""
    return "No relevant passages were found."


def render_observation(body: str) -> str:
    """Wrap an observation body: ``"\\n\\n<information>" + body.strip() + "</information>\\n\\n"``.

    The body is stripped and sits directly against the tags (as in Search-R1); the blank lines around
    the block separate it from the policy's turns on both sides.
    """
    return f"\n\n<information>{body.strip()}</information>\n\n"


PROMPT_TEMPLATES: dict[str, str] = {
    "expandsearch": (
        "Answer the question below. Think step by step inside <think> and </think> whenever you get new "
        "information. If you need knowledge you do not have, call the search engine by writing "
        "<search> query 1 ## query 2 ## query 3 </search>: one search can hold up to {max_variants} query "
        "variants separated by ##, for example paraphrases of the question, the sub-questions it breaks "
        "into, or short keyword forms. All variants are searched at once, and the results come back between "
        "<information> and </information>. You may search as often as you need. When you know the answer, "
        "give it inside <answer> and </answer> in a few words, with no explanation, for example "
        "<answer> Beijing </answer>.\nQuestion: {question}\n"
    ),
    "search_r1": (
        "Answer the question below. Think step by step inside <think> and </think> whenever you get new "
        "information. If you need knowledge you do not have, call the search engine by writing one query "
        "as <search> query </search>; the results come back between <information> and </information>. "
        "You may search as often as you need. When you know the answer, give it inside <answer> and "
        "</answer> in a few words, with no explanation, for example <answer> Beijing </answer>.\n"
        "Question: {question}\n"
    ),
    # The two no-search baselines of the evaluation harness (``eval.methods``): one answering turn each.
    "direct": (
        "Answer the question below from your own knowledge; there is no search engine. You may think step by "
        "step inside <think> and </think> first. Give the answer inside <answer> and </answer> in a few words, "
        "with no explanation, for example <answer> Beijing </answer>.\nQuestion: {question}\n"
    ),
    # {question} here is rag_question(question, documents): the retrieved documents, then the question.
    "rag": (
        "Answer the question below. Documents retrieved for it are given between <information> and "
        "</information>; use them and what you know. You may think step by step inside <think> and </think> "
        "first. Give the answer inside <answer> and </answer> in a few words, with no explanation, for example "
        "<answer> Beijing </answer>.\n{question}\n"
    ),
}


def build_prompt(question: str, template: str = "expandsearch", max_variants: int = 3) -> str:
    """Fill a prompt template from :data:`PROMPT_TEMPLATES` with the question (and the variant limit)."""
    if template not in PROMPT_TEMPLATES:
        raise ValueError(f"unknown prompt template {template!r}; known: {', '.join(sorted(PROMPT_TEMPLATES))}")
    if max_variants < 1:
        raise ValueError(f"max_variants must be >= 1, got {max_variants}")
    return PROMPT_TEMPLATES[template].format(question=question.strip(), max_variants=max_variants)


def rag_question(question: str, documents: str) -> str:
    """What the ``rag`` template's ``{question}`` slot holds: the documents in an ``<information>`` block, then
    ``Question: …`` on its own line (the last line of every template)."""
    return f"<information>{documents.strip()}</information>\nQuestion: {question.strip()}"


def build_messages(question: str, template: str = "expandsearch", max_variants: int = 3) -> list[dict[str, str]]:
    """The prompt as a chat conversation (verl's ``prompt`` column): a single user message."""
    return [{"role": "user", "content": build_prompt(question, template, max_variants)}]
