"""Per-question evaluation metrics: pure functions over one episode's trajectory, its gold answers and metadata.

:func:`example_metrics` scores one question (answer metrics, whether retrieval found the answer and the
supporting passages, what the episode cost); :func:`aggregate` averages the rows of one dataset x method. Both
are plain functions with no I/O, so the runner, the report and the tests share one definition of every number::

    row = example_metrics(trajectory, example.golden_answers, example.metadata)
    metrics = aggregate([row, ...])        # {"n": …, "em": …, "recall": …, "variants_per_search": …}

A question's *retrieved passages* are the union of every passage any search of its episode returned, over all
turns and all query variants (plus what the environment retrieved before the episode, for naive RAG). Metrics
that cannot be measured are ``None`` in a row and left out of the aggregate, never reported as 0: answer-in-
passages for a method that does not retrieve, supporting-passage recall for data without ground truth.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from statistics import fmean
from typing import Any

from agent_env.episode import Trajectory, TurnRecord
from agent_env.reward import cover_exact_match, exact_match, f1_score
from eval.fallback import ANSWER_FALLBACKS, last_turn_answer

MEAN_KEYS = ("em", "f1", "cover_em", "answered", "valid_action_rate", "turns", "searches", "tokens", "context_tokens")
"""Row keys averaged over every question of a dataset x method."""
FALLBACK_KEYS = ("fallback_em", "fallback_f1", "fallback_cover_em", "fallback_used")
"""Row keys of a run with an answer fallback (``eval.fallback``); absent from the rows of a run without one."""
OPTIONAL_MEAN_KEYS = ("answer_in_passages", "recall", *FALLBACK_KEYS)
"""Row keys averaged over the questions where they are measured (not None); left out when none are."""


def retrieved_passages(turns: Iterable[TurnRecord]) -> list[dict[str, Any]]:
    """Every distinct passage the turns retrieved (all variants of all searches), in first-retrieved order.

    Passages are the hit dicts of :attr:`TurnRecord.hits_per_query` (``id``, ``title``, ``text``, ``score``);
    one retrieved by several variants or turns counts once (by id; by title and text when it has no id).
    """
    seen: set[tuple[str, ...]] = set()
    union: list[dict[str, Any]] = []
    for turn in turns:
        for hits in turn.hits_per_query:
            for hit in hits:
                key = passage_key(hit)
                if key not in seen:
                    seen.add(key)
                    union.append(hit)
    return union


def passage_key(hit: Mapping[str, Any]) -> tuple[str, ...]:
    """What makes two hits the same passage: its id, or its title and text when it has none."""
    passage_id = hit.get("id")
    if passage_id is not None and str(passage_id) != "":
        return ("id", str(passage_id))
    return ("text", str(hit.get("title", "")), str(hit.get("text", "")))


def answer_in_passages(passages: Sequence[Mapping[str, Any]], golds: Sequence[str]) -> float:
    """1.0 when some gold answer occurs in some passage (title or text) as whole normalised tokens, else 0.0.

    The test is cover-EM's (SQuAD normalisation, whole-token span), so gold "1" is not found in "1984".
    """
    return float(any(cover_exact_match(f"{hit.get('title', '')} {hit.get('text', '')}", golds) for hit in passages))


def supporting_recall(passages: Sequence[Mapping[str, Any]], metadata: Mapping[str, Any]) -> float | None:
    """The share of a question's supporting passages among the retrieved ones; None without ground truth.

    ``metadata["supporting_ids"]`` (passage ids of the corpus the index was built from) is matched against the
    retrieved passages' ids; without it, ``metadata["supporting_titles"]`` against their titles (case and
    whitespace ignored), as distractor-style sets (HotpotQA, 2Wiki) give titles.
    """
    supporting_ids = _strings(metadata.get("supporting_ids"))
    if supporting_ids:
        found_ids = {str(hit.get("id")) for hit in passages}
        return sum(passage_id in found_ids for passage_id in supporting_ids) / len(supporting_ids)
    supporting_titles = {_title_key(title) for title in _strings(metadata.get("supporting_titles"))}
    if supporting_titles:
        found_titles = {_title_key(str(hit.get("title", ""))) for hit in passages}
        return len(supporting_titles & found_titles) / len(supporting_titles)
    return None


def _strings(value: Any) -> list[str]:
    """The distinct strings of a metadata list (a bare string is one item), in order."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    return list(dict.fromkeys(str(item) for item in items))


def _title_key(title: str) -> str:
    return " ".join(title.split()).casefold()


def example_metrics(
    trajectory: Trajectory,
    golds: Sequence[str],
    metadata: Mapping[str, Any],
    *,
    environment_turns: Sequence[TurnRecord] = (),
    retrieves: bool = True,
    answer_fallback: str = "none",
) -> dict[str, Any]:
    """One question's row: answer metrics, retrieval metrics and the episode's cost.

    ``environment_turns`` are retrievals the environment made before the episode (naive RAG's search with the
    question); they count as searches and their passages as retrieved. ``retrieves=False`` (a method that never
    searches) leaves answer-in-passages and recall unmeasured (None). Keys: ``prediction`` (None: no answer),
    ``em``, ``f1``, ``cover_em``, ``answered``, ``valid_action_rate`` (share of the policy's turns that parsed),
    ``answer_in_passages``, ``recall``, ``turns`` (policy turns),
    ``searches``, ``variants`` (query variants run, over all searches), ``tokens`` (policy-generated tokens),
    ``context_tokens`` (prompt + response, what the model read and wrote), ``termination``.

    The answer metrics and ``answered`` are always those of the tagged answer. ``answer_fallback="last-turn"``
    adds the keys of :func:`fallback_metrics`; ``"none"`` adds nothing.
    """
    if answer_fallback not in ANSWER_FALLBACKS:
        raise ValueError(f"unknown answer fallback {answer_fallback!r}; known: {', '.join(ANSWER_FALLBACKS)}")
    answer = trajectory.answer
    passages = retrieved_passages([*environment_turns, *trajectory.turns])
    episode_searches = trajectory.metrics.get("searches", 0.0)
    episode_variants = round(trajectory.metrics.get("variants_per_search", 0.0) * episode_searches)
    return {
        "prediction": answer,
        "em": 0.0 if answer is None else exact_match(answer, golds),
        "f1": 0.0 if answer is None else f1_score(answer, golds),
        "cover_em": 0.0 if answer is None else cover_exact_match(answer, golds),
        "answered": float(answer is not None),
        "valid_action_rate": trajectory.metrics.get("valid_action_rate", 0.0),
        "answer_in_passages": answer_in_passages(passages, golds) if retrieves else None,
        "recall": supporting_recall(passages, metadata) if retrieves else None,
        "turns": trajectory.num_turns,
        "searches": int(episode_searches) + len(environment_turns),
        "variants": episode_variants + sum(len(turn.queries) for turn in environment_turns),
        "tokens": int(sum(trajectory.response_mask)),
        "context_tokens": len(trajectory.prompt_ids) + len(trajectory.response_ids),
        "termination": trajectory.termination,
        **(fallback_metrics(trajectory, golds) if answer_fallback == "last-turn" else {}),
    }


def fallback_metrics(trajectory: Trajectory, golds: Sequence[str]) -> dict[str, Any]:
    """The answer metrics with the last-turn fallback: the tagged answer when there is one, else the cleaned text
    of the policy's last turn (:func:`eval.fallback.last_turn_answer`).

    Keys: ``fallback_prediction`` (the last-turn text; None when the episode was answered in tags or left no
    text), ``fallback_used`` (1.0 when the scored prediction is that text), ``fallback_em``, ``fallback_f1``,
    ``fallback_cover_em`` (0 when there is no prediction at all). Equal to the strict metrics on tagged answers.
    """
    answer = trajectory.answer
    fallback = last_turn_answer([turn.policy_text for turn in trajectory.turns]) if answer is None else None
    prediction = answer if answer is not None else fallback
    return {
        "fallback_prediction": fallback,
        "fallback_used": float(fallback is not None),
        "fallback_em": 0.0 if prediction is None else exact_match(prediction, golds),
        "fallback_f1": 0.0 if prediction is None else f1_score(prediction, golds),
        "fallback_cover_em": 0.0 if prediction is None else cover_exact_match(prediction, golds),
    }


def aggregate(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Averages of a dataset x method's rows; ``{}`` for no rows.

    ``variants_per_search`` is total variants over total searches (each search weighs the same), left out when
    nothing was searched; ``answer_in_passages`` and ``recall`` average the rows that measure them;
    ``em_when_found`` is the EM of the rows whose passages held a gold answer (absent when none did).
    """
    if not rows:
        return {}
    metrics: dict[str, float] = {"n": float(len(rows))}
    for key in MEAN_KEYS:
        metrics[key] = fmean(float(row[key]) for row in rows)
    for key in OPTIONAL_MEAN_KEYS:
        measured = [float(row[key]) for row in rows if row.get(key) is not None]
        if measured:
            metrics[key] = fmean(measured)
    # the reader's share of the retriever's hits: EM where a gold answer was in front of the policy, which tells a
    # policy that cannot search from one that cannot read what it found
    found = [float(row["em"]) for row in rows if row.get("answer_in_passages")]
    if found:
        metrics["em_when_found"] = fmean(found)
    searches = sum(row["searches"] for row in rows)
    if searches:
        metrics["variants_per_search"] = sum(row["variants"] for row in rows) / searches
    return metrics
