"""Held-out evaluation of a policy during and after training, through ``eval.runner``'s greedy evaluator.

:func:`evaluate_policy` plays a loaded model (the trainer's, between steps; the warm starts'); :func:`evaluate_model`
loads a saved one first (the main job's before/after-RL rows). Both play :func:`eval.runner.greedy_records` — the
episodes, rows and metrics of ``expandsearch eval`` — and summarise the rows with :func:`summarize`: metrics, EM by
question type and every question's EM, so two evaluations can be compared question by question
(:func:`paired_difference`). With ``out_file`` the rows are also written as ``expandsearch eval``'s jsonl.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from statistics import fmean
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent_env.episode import EpisodeConfig
    from agent_env.search import SearchBackend
    from data_prep.formats import QAExample
    from expandsearch.rl.config import PolicySection
    from expandsearch.rl.sources import Questions

SHOWN = (
    "em",
    "f1",
    "cover_em",
    "answered",
    "valid_action_rate",
    "searches",
    "variants_per_search",
    "turns",
    "answer_in_passages",
    "em_when_found",
)
"""Headline metrics (``eval.metrics.aggregate`` keys) kept in the summary."""


def evaluate_policy(
    model: Any,
    tokenizer: Any,
    search: SearchBackend,
    questions: Questions,
    episode: EpisodeConfig,
    squeezer: str,
    loop: asyncio.AbstractEventLoop | None = None,
    out_file: Path | None = None,
) -> dict[str, Any]:
    """``{"metrics": {...}, "em_by_type": {...}, "reward_by_question": {...}}`` of greedy episodes of ``model`` on
    ``questions`` (``search`` stays open: it is the caller's; ``loop`` is the one it was opened on)."""
    play = greedy_rows(model, tokenizer, lambda: search, as_examples(questions), episode, squeezer, close_search=False)
    rows = loop.run_until_complete(play) if loop is not None else asyncio.run(play)
    if out_file is not None:
        write_rows(rows, out_file)
    return summarize(rows, questions.types)


async def greedy_rows(
    model: Any,
    tokenizer: Any,
    searcher: Callable[[], SearchBackend],
    examples: Sequence[QAExample],
    episode: EpisodeConfig,
    squeezer: str,
    *,
    close_search: bool = True,
) -> list[dict[str, Any]]:
    """:func:`eval.runner.greedy_records` of ``model`` with a fresh engine and squeezer (closed afterwards)."""
    from agent_env.engine import TransformersEngine
    from agent_env.episode import AgentEnv
    from agent_env.squeezers import make_squeezer
    from eval.runner import greedy_records

    engine = TransformersEngine(model, tokenizer)
    env = AgentEnv(engine, tokenizer, searcher(), make_squeezer(squeezer), replace(episode, temperature=0.0))
    try:
        # every question in flight at once: the engine micro-batches them all, as the rollouts do
        return await greedy_records(env, examples, concurrency=max(1, len(examples)))
    finally:
        await engine.aclose()
        await env.squeezer.aclose()
        if close_search:
            await env.search.aclose()


def as_examples(questions: Questions) -> list[QAExample]:
    """The trainer's questions as ``eval``'s examples (the question type kept as metadata)."""
    from data_prep.formats import QAExample

    examples = []
    for number, item in enumerate(questions.inputs):
        example_id = item.example_id or f"question-{number}"
        metadata = {"type": questions.types[example_id]} if example_id in questions.types else {}
        examples.append(QAExample(example_id, item.question, list(item.golden_answers), metadata))
    return examples


def summarize(rows: Sequence[Mapping[str, Any]], types: Mapping[str, str]) -> dict[str, Any]:
    """The headline metrics of ``eval.metrics.aggregate``, EM per question type and each question's EM."""
    from eval.metrics import aggregate

    aggregated = aggregate(rows)
    metrics = {key: aggregated[key] for key in SHOWN if key in aggregated}
    metrics["questions"] = float(len(rows))
    by_type: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        by_type[types.get(row["id"], "all")].append(float(row["em"]))
    return {
        "metrics": metrics,
        "em_by_type": {kind: fmean(scores) for kind, scores in sorted(by_type.items())},
        # kept per question so two policies can be compared on the same questions (paired_difference)
        "reward_by_question": {row["id"]: float(row["em"]) for row in rows},
    }


def write_rows(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """``rows`` as ``expandsearch eval``'s jsonl (one question per line), replacing what ``path`` held."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def paired_difference(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """How ``after`` differs from ``before`` on the questions both answered (``reward_by_question`` maps).

    A held-out EM difference of a few points over a couple of hundred questions can be noise: a tiny policy's
    greedy answers flip both ways when its weights move. So the summary reports the questions gained and lost and
    the exact two-sided sign test on them (the chance of a split at least this uneven if gains and losses were
    equally likely), not only the two means.
    """
    shared = sorted(set(before) & set(after))
    if not shared:
        raise ValueError("the two evaluations share no question")
    gained = sum(after[key] > before[key] for key in shared)
    lost = sum(after[key] < before[key] for key in shared)
    difference = fmean(after[key] - before[key] for key in shared)
    return {"difference": difference, "gained": gained, "lost": lost, "sign_test_p": sign_test_p(gained, lost)}


def sign_test_p(wins: int, losses: int) -> float:
    """Exact two-sided binomial sign test of ``wins`` against ``losses`` (ties left out): 1.0 when there are none."""
    trials = wins + losses
    tail = sum(math.comb(trials, count) for count in range(min(wins, losses) + 1)) / 2**trials
    return min(1.0, 2 * tail)


def evaluate_model(
    spec: str,
    policy: PolicySection,
    searcher: Callable[[], SearchBackend],
    questions: Questions,
    episode: EpisodeConfig,
    squeezer: str,
    out_file: Path | None = None,
) -> dict[str, Any]:
    """:func:`summarize` of greedy episodes of the saved policy ``spec`` (loaded on the policy section's device
    and dtype) on ``questions``, searching a fresh ``searcher()``; the rows also go to ``out_file`` if given."""
    from agent_env.models import load_causal_lm
    from expandsearch.rl.sources import resolve_device

    model, tokenizer = load_causal_lm(spec, device=resolve_device(policy.device), dtype=policy.dtype)
    rows = asyncio.run(greedy_rows(model, tokenizer, searcher, as_examples(questions), episode, squeezer))
    if out_file is not None:
        write_rows(rows, out_file)
    result = summarize(rows, questions.types)
    result["policy"] = spec
    return result
