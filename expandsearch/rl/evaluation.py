"""Held-out evaluation of a policy during and after training: greedy episodes through the real environment.

:func:`evaluate_policy` plays a loaded model (the trainer's, between steps); :func:`evaluate_model` loads a saved
one first (the main job's before/after-RL rows). Both summarise with :func:`summarize`: metrics, EM by question
type and every question's reward, so two evaluations can be compared question by question
(:func:`paired_difference`).
"""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from statistics import fmean
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent_env.episode import EpisodeConfig, Trajectory
    from agent_env.rollout import EpisodeInput
    from agent_env.search import SearchBackend
    from expandsearch.rl.config import PolicySection
    from expandsearch.rl.sources import Questions

SHOWN = ("reward_mean", "valid_action_rate", "searches", "variants_per_search", "turns")
"""Headline metrics (``rollout/…`` keys without the prefix) kept in the summary."""


def evaluate_policy(
    model: Any,
    tokenizer: Any,
    search: SearchBackend,
    inputs: Sequence[EpisodeInput],
    episode: EpisodeConfig,
    squeezer: str,
    loop: asyncio.AbstractEventLoop | None = None,
    types: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """``{"metrics": {...}, "em_by_type": {...}, "reward_by_question": {...}}`` of greedy episodes of ``model`` on
    ``inputs`` (``search`` stays open: it is the caller's)."""
    play = greedy_episodes(model, tokenizer, lambda: search, inputs, episode, squeezer, close_search=False)
    trajectories = loop.run_until_complete(play) if loop is not None else asyncio.run(play)
    return summarize(trajectories, types or {})


async def greedy_episodes(
    model: Any,
    tokenizer: Any,
    searcher: Callable[[], SearchBackend],
    inputs: Sequence[EpisodeInput],
    episode: EpisodeConfig,
    squeezer: str,
    *,
    close_search: bool = True,
) -> list[Trajectory]:
    """Greedy episodes of ``model`` on ``inputs`` with a fresh engine and squeezer (closed afterwards)."""
    from agent_env.engine import TransformersEngine
    from agent_env.episode import AgentEnv
    from agent_env.rollout import RolloutRunner
    from agent_env.squeezers import make_squeezer

    engine = TransformersEngine(model, tokenizer)
    env = AgentEnv(engine, tokenizer, searcher(), make_squeezer(squeezer), replace(episode, temperature=0.0))
    try:
        return await RolloutRunner(env).run(list(inputs))
    finally:
        await engine.aclose()
        await env.squeezer.aclose()
        if close_search:
            await env.search.aclose()


def summarize(trajectories: Sequence[Trajectory], types: Mapping[str, str]) -> dict[str, Any]:
    from agent_env.rollout import summarize_rollouts

    summary = summarize_rollouts(trajectories)
    metrics = {key: summary[f"rollout/{key}"] for key in SHOWN if f"rollout/{key}" in summary}
    metrics["em"] = metrics.pop("reward_mean")
    metrics |= answer_scores(trajectories)
    metrics["questions"] = float(len(trajectories))
    by_type: dict[str, list[float]] = defaultdict(list)
    for trajectory in trajectories:
        by_type[types.get(trajectory.example_id or "", "all")].append(trajectory.reward)
    return {
        "metrics": metrics,
        "em_by_type": {kind: fmean(rewards) for kind, rewards in sorted(by_type.items())},
        # kept per question so two policies can be compared on the same questions (paired_difference)
        "reward_by_question": {t.example_id: t.reward for t in trajectories if t.example_id is not None},
    }


def answer_scores(trajectories: Sequence[Trajectory]) -> dict[str, float]:
    """Mean token F1 and cover-EM of the episodes' final answers against their golds (0 where none was given):
    the softer scores beside EM that show a policy answering close to the gold before it answers it exactly."""
    from agent_env.reward import cover_exact_match, f1_score

    if not trajectories:
        return {"f1": 0.0, "cover_em": 0.0}
    answers = [(t.answer or "", t.golden_answers) for t in trajectories]
    return {
        "f1": fmean(f1_score(answer, golds) if answer else 0.0 for answer, golds in answers),
        "cover_em": fmean(cover_exact_match(answer, golds) if answer else 0.0 for answer, golds in answers),
    }


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
) -> dict[str, Any]:
    """:func:`summarize` of greedy episodes of the saved policy ``spec`` (loaded on the policy section's device
    and dtype) on ``questions``, searching a fresh ``searcher()``."""
    from agent_env.models import load_causal_lm
    from expandsearch.rl.sources import resolve_device

    model, tokenizer = load_causal_lm(spec, device=resolve_device(policy.device), dtype=policy.dtype)
    play = greedy_episodes(model, tokenizer, searcher, questions.inputs, episode, squeezer)
    result = summarize(asyncio.run(play), questions.types)
    result["policy"] = spec
    return result
