"""The one view of a turn that the live page and the trace browser both render.

A turn comes either as a live :class:`~agent_env.episode.TurnRecord` (as a dict: hits carry their texts) or as a
turn of an evaluation trace (``eval.records.compact_trace``: hits carry ids and titles, the observation is cut);
:func:`turn_view` reads both, so an episode opened from a trace file looks exactly as it did live, with passage
texts looked up in the index when one is at hand (``passage_text``)::

    view = turn_view(asdict(record), number=0)
    view["variants"][1]["hits"][0]["found_by"]   # [0, 1]: the first two variants both retrieved this passage
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from eval.metrics import passage_key

PassageText = Callable[[str], str | None]
"""A passage id → its text (None when unknown): how a trace view gets back the texts traces leave out."""

_THINK_RE = re.compile(r"<think>(.*?)(?:</think>|$)", re.DOTALL)
TIMINGS = ("generation_s", "retrieval_s", "squeezer_s")
TOKEN_COUNTS = ("policy_tokens", "observation_tokens")


def thinking(text: str) -> list[str]:
    """The policy's ``<think>`` passages, in order (an unclosed one runs to the end of the turn)."""
    return [match.strip() for match in _THINK_RE.findall(text) if match.strip()]


def turn_view(turn: Mapping[str, Any], number: int, passage_text: PassageText | None = None) -> dict[str, Any]:
    """What the page shows of one turn: thinking, variants with their passages, observation, answer, costs."""
    queries = [str(query) for query in turn.get("queries") or []]
    hits = turn.get("hits_per_query") if "hits_per_query" in turn else turn.get("hits")
    view: dict[str, Any] = {
        "number": number,
        "action": turn.get("action", ""),
        "text": turn.get("policy_text", turn.get("text", "")),
        "queries": queries,
        "variants": variant_views(queries, hits or [], passage_text),
        "observation": turn.get("observation", ""),
        "observation_chars": turn.get("observation_chars"),
        "observation_kind": observation_kind(turn),
        "answer": turn.get("answer"),
        "error": turn.get("error"),
        "search_error": turn.get("search_error"),
        "squeezer_error": turn.get("squeezer_error") if turn.get("squeezer_fell_back", True) else None,
    }
    view["thinking"] = thinking(view["text"])
    view.update({key: turn.get(key) or 0 for key in (*TOKEN_COUNTS, *TIMINGS)})  # a trace leaves zeros out
    return view


def observation_kind(turn: Mapping[str, Any]) -> str:
    """What the text after a turn is: ``feedback`` on an invalid action, ``search_failed`` when the retriever
    failed, ``raw_passages`` when the squeezer failed and the passages went in unsqueezed, else ``summary``."""
    if turn.get("action") == "invalid":
        return "feedback"
    if turn.get("search_error"):
        return "search_failed"
    if turn.get("squeezer_error") and turn.get("squeezer_fell_back", True):
        return "raw_passages"
    return "summary"


def variant_views(
    queries: Sequence[str], hits_per_query: Sequence[Sequence[Mapping[str, Any]]], passage_text: PassageText | None
) -> list[dict[str, Any]]:
    """Each variant with its passages; every passage says which variants found it (``found_by``, numbered from
    0) and whether an earlier variant already had it (``repeat``), so duplicates across variants stand out.

    A variant without hits was written but not searched (a one-query-per-search run searches only the first)."""
    found_by: dict[tuple[str, ...], list[int]] = {}
    for variant, hits in enumerate(hits_per_query):
        for hit in hits:
            found_by.setdefault(passage_key(hit), []).append(variant)
    views = []
    for variant, query in enumerate(queries):
        searched = variant < len(hits_per_query)
        hits = hits_per_query[variant] if searched else []
        views.append(
            {
                "query": query,
                "searched": searched,
                "hits": [_hit_view(hit, found_by, variant, passage_text) for hit in hits],
            }
        )
    return views


def _hit_view(
    hit: Mapping[str, Any],
    found_by: Mapping[tuple[str, ...], list[int]],
    variant: int,
    passage_text: PassageText | None,
) -> dict[str, Any]:
    variants = found_by[passage_key(hit)]
    text = hit.get("text")
    if text is None and passage_text is not None and hit.get("id") is not None:
        text = passage_text(str(hit["id"]))
    return {
        "id": hit.get("id"),
        "title": hit.get("title", ""),
        "text": text,
        "score": hit.get("score"),
        "found_by": variants,
        "repeat": variants[0] != variant,
    }


def episode_view(turns: Sequence[Mapping[str, Any]], passage_text: PassageText | None = None) -> list[dict[str, Any]]:
    """Every turn of an episode as :func:`turn_view` shows it."""
    return [turn_view(turn, number, passage_text) for number, turn in enumerate(turns)]
