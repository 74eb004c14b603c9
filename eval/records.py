"""One evaluated question as a JSON line: its metrics (``eval.metrics``) and a compact trace of its episode.

The trace keeps what a reader needs to see why a question was won or lost — each turn's text, action, queries,
the ids and titles each query retrieved, and the start of the observation — and drops what only training needs
(token ids, masks, log-probs) and the passage texts, which the index holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agent_env.episode import Trajectory, TurnRecord
from data_prep.formats import QAExample
from eval.metrics import example_metrics

OBSERVATION_CHARS = 400
"""Characters of each observation kept in the trace."""


def example_record(
    example: QAExample,
    trajectory: Trajectory,
    *,
    environment_turns: Sequence[TurnRecord] = (),
    retrieves: bool = True,
    answer_fallback: str = "none",
) -> dict[str, Any]:
    """The jsonl record of one question: id, question, golds, the metrics of :func:`example_metrics`, trace."""
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
        **metrics,
        "trace": compact_trace([*environment_turns, *trajectory.turns]),
    }


def compact_trace(turns: Sequence[TurnRecord]) -> list[dict[str, Any]]:
    """Each turn without the passage texts; empty fields left out."""
    return [_compact_turn(turn) for turn in turns]


def _compact_turn(turn: TurnRecord) -> dict[str, Any]:
    compact: dict[str, Any] = {"action": turn.action, "text": turn.policy_text}
    if turn.queries:
        compact["queries"] = list(turn.queries)
    if turn.answer is not None:
        compact["answer"] = turn.answer
    if turn.error:
        compact["error"] = turn.error
    if turn.hits_per_query:
        compact["hits"] = [[{"id": hit["id"], "title": hit["title"]} for hit in hits] for hits in turn.hits_per_query]
    if turn.observation:
        compact["observation"] = turn.observation[:OBSERVATION_CHARS]
    if turn.squeezer_fell_back:
        compact["squeezer_error"] = turn.squeezer_error
    return compact
