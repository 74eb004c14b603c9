"""Tasks: what the trainer's episodes are about and how a batch of them is scored.

A task owns its data and its reward (as nanochat's task objects do): the trainer asks it for the questions of a
step and hands it the step's trajectories in the reward stage, and never names a dataset. Scoring takes the
*whole batch*, so a task whose reward compares episodes with each other (co-augmentation's in-batch retrieval
metric) fits the same door as the per-episode exact match; verl's optional ``reward_score`` is the same idea.

``TASKS`` maps ``TrainConfig.task`` to a builder; :func:`build_task` reads a config's data through it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from expandsearch.rl.sources import Questions, read_questions

if TYPE_CHECKING:
    from agent_env.episode import Trajectory
    from expandsearch.rl.config import TrainConfig


class Task(Protocol):
    """The trainer's view of a task."""

    @property
    def name(self) -> str: ...

    @property
    def train(self) -> Questions:
        """Training questions (the trainer draws each step's from these in a seeded order)."""
        ...

    @property
    def held_out(self) -> Questions:
        """Held-out questions: the evaluations during training and at the end."""
        ...

    def score(self, trajectories: Sequence[Trajectory]) -> list[float]:
        """One outcome reward per trajectory, in order (put on its last policy token by the trainer)."""
        ...


@dataclass(frozen=True)
class QAExactMatch:
    """Question answering scored by the episode's own reward (``rollout.episode.reward``: exact match, or
    Search-R1's format-shaped variant), computed from policy-sampled text only."""

    train: Questions
    held_out: Questions
    name: str = "qa_em"

    def score(self, trajectories: Sequence[Trajectory]) -> list[float]:
        return [trajectory.reward for trajectory in trajectories]

    @classmethod
    def from_config(cls, config: TrainConfig) -> QAExactMatch:
        data = config.data
        seed = config.seed if data.shuffle_seed is None else data.shuffle_seed
        # the files' order is kept unless a subset is asked for, which is then a seeded sample
        train = read_questions(
            data.train_files, limit=data.max_train_questions, shuffle_seed=seed if data.max_train_questions else None
        )
        held_out = read_questions(data.val_files, limit=data.max_val_questions)
        if not train.inputs or not held_out.inputs:
            raise ValueError("data.train_files and data.val_files must hold at least one question each")
        return cls(train, held_out)


def _coaug(config: TrainConfig) -> Task:
    from expandsearch.rl.coaug import CoAugTask  # the trainer and torch: only when the task is chosen

    return CoAugTask.from_config(config)


TASKS: dict[str, Callable[[TrainConfig], Task]] = {"qa_em": QAExactMatch.from_config, "coaug": _coaug}
"""``TrainConfig.task`` → builder (its names are ``expandsearch.rl.config.TASKS``)."""


def build_task(config: TrainConfig) -> Task:
    """The configured task over the configured data files (a world run passes its own files)."""
    return TASKS[config.task](config)
