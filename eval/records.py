"""One evaluated question as a JSON line: its metrics (``eval.metrics``) and a compact trace of its episode.

The trace keeps what a reader needs to see why a question was won or lost — each turn's text, action, queries,
the ids, titles and scores each query retrieved, and the start of the observation — and drops what only training needs
(token ids, masks, log-probs) and the passage texts, which the index holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agent_env.episode import Trajectory, TurnRecord
from data_prep.formats import QAExample
from eval.metrics import example_metrics

OBSERVATION_CHARS = 1000
"""Characters of each observation kept in the trace."""
TIMING_KEYS = ("generation_s", "retrieval_s", "squeezer_s")
"""Per-turn seconds kept in the trace (what the UI's trace view shows beside each turn)."""


def example_record(
    example: QAExample,
    trajectory: Trajectory,
    *,
    environment_turns: Sequence[TurnRecord] = (),
    retrieves: bool = True,
    answer_fallback: str = "none",
) -> dict[str, Any]:
    """The jsonl record of one question: id, question, golds, its question type (None when the data has none), the
    metrics of :func:`example_metrics`, and the trace."""
    metrics = example_metrics(
        trajectory,
        example.golden_answers,
        example.metadata,
        environment_turns=environment_turns,
        retrieves=retrieves,
        answer_fallback=answer_fallback,
    )
    return {
        "id": example.id,
        "question": example.question,
        "golds": list(example.golden_answers),
        "type": example.metadata.get("type"),
        **metrics,
        "trace": compact_trace([*environment_turns, *trajectory.turns]),
    }


def compact_trace(turns: Sequence[TurnRecord]) -> list[dict[str, Any]]:
    """Each turn without the passage texts; empty fields left out."""
    return [_compact_turn(turn) for turn in turns]


def _compact_hit(hit: dict[str, Any]) -> dict[str, Any]:
    score = hit.get("score")
    return {"id": hit["id"], "title": hit["title"], "score": None if score is None else round(float(score), 4)}


def _compact_turn(turn: TurnRecord) -> dict[str, Any]:
    compact: dict[str, Any] = {"action": turn.action, "text": turn.policy_text}
    if turn.queries:
        compact["queries"] = list(turn.queries)
    if turn.answer is not None:
        compact["answer"] = turn.answer
    if turn.error:
        compact["error"] = turn.error
    if turn.hits_per_query:
        compact["hits"] = [[_compact_hit(hit) for hit in hits] for hits in turn.hits_per_query]
    if turn.observation:
        compact["observation"] = turn.observation[:OBSERVATION_CHARS]
        if len(turn.observation) > OBSERVATION_CHARS:
            compact["observation_chars"] = len(turn.observation)  # the trace keeps the start: say how much there was
    if turn.squeezer_fell_back:
        compact["squeezer_error"] = turn.squeezer_error
    if turn.search_error:
        compact["search_error"] = turn.search_error
    if turn.policy_tokens:
        compact["policy_tokens"] = turn.policy_tokens
    if turn.observation_tokens:
        compact["observation_tokens"] = turn.observation_tokens
    for key in TIMING_KEYS:
        if seconds := getattr(turn, key):
            compact[key] = round(seconds, 4)
    return compact
