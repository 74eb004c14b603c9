"""Running many episodes at once on one event loop, and summarising them into namespaced metrics.

``RolloutRunner(env).run(inputs, samples_per_input=n)`` starts every episode as a coroutine (at most
``max_concurrency`` at a time). Episodes spend their time waiting on the engine, the search backend and the
squeezer, each of which coalesces the requests waiting at the same moment into one batch, so a few hundred
concurrent episodes turn into large generation, retrieval and squeezing batches. Results come back in input
order (the ``n`` samples of an input together, as GRPO groups them). For several processes or machines, see
:mod:`agent_env.ray_workers`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import fmean
from typing import Any, get_args

from agent_env.engine import derive_seed
from agent_env.episode import AgentEnv, Termination, Trajectory, run_episode


@dataclass(frozen=True)
class EpisodeInput:
    """One question to play: its text, gold answers (for the reward) and an id."""

    question: str
    golden_answers: tuple[str, ...] = ()
    example_id: str | None = None

    @classmethod
    def from_mapping(cls, record: Mapping[str, Any]) -> EpisodeInput:
        """From a FlashRAG-style dict: ``{"id", "question", "golden_answers"}``."""
        golds = record.get("golden_answers")
        # a bare string is one gold (not one per character); lists, tuples and parquet's numpy arrays hold several
        golds = () if golds is None else (golds,) if isinstance(golds, str) else golds
        return cls(str(record["question"]), tuple(str(gold) for gold in golds), _optional_str(record.get("id")))


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


class RolloutRunner:
    """Plays many episodes concurrently against one :class:`~agent_env.episode.AgentEnv`."""

    def __init__(self, env: AgentEnv, *, max_concurrency: int = 256) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.env = env
        self.max_concurrency = max_concurrency
        self.last_duration_s = 0.0

    async def run(
        self, inputs: Sequence[EpisodeInput], *, samples_per_input: int = 1, seed: int | None = None
    ) -> list[Trajectory]:
        """All episodes' trajectories, input-major: ``samples_per_input`` consecutive ones per input.

        With a ``seed``, episode ``j`` of the list samples from seeds derived from ``(seed, j)``: the rollout is
        then reproducible whatever the concurrency and batching (up to the engine's numerics).

        An exception in any episode (a broken engine, say) cancels the others and propagates as itself (not
        wrapped in an ``ExceptionGroup``): a rollout with silently missing episodes would bias training.
        """
        if samples_per_input < 1:
            raise ValueError(f"samples_per_input must be >= 1, got {samples_per_input}")
        slots = asyncio.Semaphore(self.max_concurrency)
        jobs = [item for item in inputs for _ in range(samples_per_input)]

        async def play(job: int, item: EpisodeInput) -> Trajectory:
            episode_seed = None if seed is None else derive_seed(seed, job)
            async with slots:
                return await run_episode(
                    self.env, item.question, item.golden_answers, example_id=item.example_id, seed=episode_seed
                )

        started = time.perf_counter()
        # gather, not asyncio.TaskGroup: Python 3.10 has no TaskGroup, and the caller gets the episode's own
        # exception rather than an ExceptionGroup around it.
        tasks = [asyncio.ensure_future(play(job, item)) for job, item in enumerate(jobs)]
        try:
            trajectories = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        self.last_duration_s = time.perf_counter() - started
        return list(trajectories)


def summarize_rollouts(trajectories: Sequence[Trajectory]) -> dict[str, float]:
    """Mean reward and episode metrics under ``rollout/…``, with the share of each way episodes ended."""
    if not trajectories:
        return {}
    summary = {"rollout/episodes": float(len(trajectories))}
    summary["rollout/reward_mean"] = fmean(trajectory.reward for trajectory in trajectories)
    for key in trajectories[0].metrics:
        summary[f"rollout/{key}"] = fmean(trajectory.metrics[key] for trajectory in trajectories)
    searching = [trajectory for trajectory in trajectories if trajectory.metrics["searches"] > 0]
    if searching:  # per-search averages over the episodes that searched, not diluted by those that did not
        for key in ("variants_per_search", "unique_passages_per_search"):
            summary[f"rollout/{key}"] = fmean(trajectory.metrics[key] for trajectory in searching)
    for termination in get_args(Termination):
        share = sum(trajectory.termination == termination for trajectory in trajectories) / len(trajectories)
        summary[f"rollout/ended_{termination}"] = share
    return summary
