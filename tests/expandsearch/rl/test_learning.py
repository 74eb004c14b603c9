"""The learning proof at reduced scale: GRPO measurably improves the warm-started agent on what it practises.

Real pieces only: the session's warm start (tiny world, search-result pretraining, behaviour cloning), GRPO steps
through the real environment (micro-batched decoding, BM25, the extractive squeezer, the EM reward), and greedy
episodes before and after. At this scale the improvement is measured on a fixed pool of training questions that
the warm start answers wrongly, where a dozen steps move it far beyond noise; the held-out claim (test questions
about people RL never saw) needs the full budget and is measured over three seeds by
``benchmarks/learning_proof.py`` (docs/benchmarks.md). Deterministic on CPU for the fixed seed.
"""

from __future__ import annotations

from pathlib import Path
from statistics import fmean
from typing import Any

import pytest

from expandsearch.rl.main_job import build_world_trainer, evaluate_trainer_policy, greedy_evaluation
from expandsearch.rl.sources import Questions
from expandsearch.rl.tasks import build_task
from expandsearch.rl.trainer import Trainer
from expandsearch.rl.world import world_artifacts

pytestmark = pytest.mark.slow

POOL = 8
"""Single-hop training questions the agent practises (each once per step): ones the warm start answers wrongly."""
CANDIDATES = 40
"""Single-hop training questions the pool is picked from (the warm start gets about a third of them wrong)."""
STEPS = 12


def greedy_em(trainer: Trainer) -> float:
    return evaluate_trainer_policy(trainer, trainer.questions)["em"]


def answered_wrongly(trainer: Trainer) -> set[str]:
    """Ids of the trainer's questions that its policy answers wrongly, greedily."""
    rewards = greedy_evaluation(trainer, trainer.questions)["reward_by_question"]
    return {question for question, reward in rewards.items() if reward == 0}


def test_grpo_raises_the_exact_match_of_the_questions_it_practises(
    world_dir: Path, warm_policy_dir: Path, make_config: Any, tmp_path: Path
) -> None:
    config = make_config(
        tmp_path / "run",
        steps=STEPS,
        rollout={
            "questions_per_step": POOL,
            "group_size": 8,
            "episode": {"reward": "em", "max_turns": 4, "temperature": 1.0},
        },
        algorithm={"mini_batch_size": POOL * 8, "micro_batch_size": 16},
        optim={"lr": 1e-3, "warmup_steps": 1},
    )

    train = build_task(world_artifacts(config, world_dir, tmp_path / "unused", str(warm_policy_dir))).train
    candidates = [item for item in train.inputs if train.types[item.example_id or ""] == "single_hop"]

    def practising(examples: list[Any]) -> Trainer:
        questions = Questions(examples, train.types)
        return build_world_trainer(config, warm_policy_dir, world_dir, tmp_path / "index", train=questions)

    probe = practising(candidates[:CANDIDATES])
    try:
        wrong = answered_wrongly(probe)
    finally:
        probe.close()
    pool = [item for item in candidates[:CANDIDATES] if item.example_id in wrong][:POOL]
    assert len(pool) == POOL, f"the warm start answers all but {len(wrong)} of {CANDIDATES} questions"
    trainer = practising(pool)
    try:
        before = greedy_em(trainer)
        rewards = [trainer.train_step()["rollout/reward_mean"] for _ in range(STEPS)]
        after = greedy_em(trainer)
    finally:
        trainer.close()
    # sampled reward (8 samples of each of the 8 questions per step): the last three steps against the first two
    assert fmean(rewards[-3:]) >= fmean(rewards[:2]) + 0.15, rewards
    assert before == 0.0
    assert after >= before + 0.25, (before, after, rewards)
