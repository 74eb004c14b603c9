"""The embedded trainer on a real warm-started tiny policy: stages, GRPO and PPO steps, checkpoints and resume."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from support import comparable_metrics

from expandsearch.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from expandsearch.rl.main_job import build_world_trainer
from expandsearch.rl.trainer import DataOrder, Trainer


@pytest.fixture
def make_trainer(world_dir: Path, warm_policy_dir: Path, make_config: Any, tmp_path: Path) -> Iterator[Any]:
    made: list[Trainer] = []

    def make(**sections: Any) -> Trainer:
        config = make_config(tmp_path / "run", **sections)
        made.append(build_world_trainer(config, warm_policy_dir, world_dir, tmp_path / "index"))
        return made[-1]

    yield make
    for trainer in made:
        trainer.close()


def parameters(model: Any) -> list[torch.Tensor]:
    return [parameter.detach().clone() for parameter in model.parameters()]


def changed(before: list[torch.Tensor], model: Any) -> bool:
    return any(not torch.equal(old, new) for old, new in zip(before, model.parameters(), strict=True))


def test_grpo_step_runs_the_stages_in_order_and_updates_the_policy(make_trainer: Any) -> None:
    # temperature 1: the engine reports the raw model's log-probs, comparable with the trainer's only there
    trainer = make_trainer(rollout={"episode": {"temperature": 1.0}})
    before = parameters(trainer.policy)
    metrics = trainer.train_step()
    stages = [key.removeprefix("timing/") for key in metrics if key.startswith("timing/")]
    assert stages == ["rollout", "reward", "old_log_prob", "ref_log_prob", "advantages", "update_actor", "step"]
    assert metrics["rollout/episodes"] == 8
    for key in ("rollout/reward_mean", "actor/pg_loss", "actor/kl", "actor/entropy", "actor/grad_norm", "actor/lr"):
        assert key in metrics
    assert changed(before, trainer.policy)
    # the trainer's recomputed log-probs are the sampler's: same model, same tokens, no re-tokenization
    assert metrics["batch/rollout_logprob_gap"] < 1e-4


def test_below_temperature_1_no_log_prob_gap_is_claimed(make_trainer: Any) -> None:
    metrics = make_trainer(rollout={"episode": {"temperature": 0.7}}).train_step()
    assert "batch/rollout_logprob_gap" not in metrics  # the sampler's raw log-probs are not the tempered ones
    assert "actor/pg_loss" in metrics


def test_grpo_group_with_equal_rewards_has_no_policy_gradient(make_trainer: Any) -> None:
    trainer = make_trainer(algorithm={"use_kl_loss": False})
    trajectories = trainer.rollout()
    for trajectory in trajectories:
        trajectory.reward = 1.0
    batch = trainer.reward(trajectories)
    batch.old_log_probs = trainer.log_probs(trainer.policy, batch)
    trainer.advantages(batch)
    assert batch.advantages is not None
    assert torch.count_nonzero(batch.advantages) == 0


class ScriptedScores:
    """The trainer's task, but a group of a question in ``mixed`` scores [1, 0, …] and every other group 0;
    ``scored`` counts the trajectories it was asked to score."""

    def __init__(self, task: Any, mixed: set[str]) -> None:
        self.task, self.mixed, self.scored = task, mixed, 0
        self.name, self.train, self.held_out = task.name, task.train, task.held_out

    def score(self, trajectories: Any) -> list[float]:
        self.scored += len(trajectories)
        seen: set[str] = set()
        scores = []
        for trajectory in trajectories:
            scores.append(float(trajectory.question in self.mixed and trajectory.question not in seen))
            seen.add(trajectory.question)
        return scores


def filtering(make_trainer: Any, mixed: Any, batches: int = 3) -> Trainer:
    trainer = make_trainer(algorithm={"filter_groups": {"enable": True, "max_num_gen_batches": batches}})
    trainer.task = ScriptedScores(trainer.task, set(mixed(trainer)))
    return trainer


def questions_of(trajectories: Any, group_size: int = 2) -> list[str]:
    groups = [trajectories[start : start + group_size] for start in range(0, len(trajectories), group_size)]
    assert all(len({t.question for t in group}) == 1 for group in groups)  # groups stay whole
    return [group[0].question for group in groups]


def test_filter_groups_with_every_group_mixed_samples_what_the_plain_rollout_does(make_trainer: Any) -> None:
    plain = make_trainer().rollout()
    trainer = filtering(make_trainer, lambda trainer: {q.question for q in trainer.questions})
    filtered = trainer.rollout()
    assert [t.response_ids for t in filtered] == [t.response_ids for t in plain]
    assert trainer.sampling_metrics["rollout/sampled_batches"] == 1
    assert trainer.sampling_metrics["rollout/sampled_mixed_groups"] == 1.0


def test_filter_groups_without_a_mixed_group_samples_every_batch_and_keeps_the_first(make_trainer: Any) -> None:
    first_batch = questions_of(make_trainer().rollout())
    trainer = filtering(make_trainer, lambda trainer: set())
    kept = trainer.rollout()
    assert questions_of(kept) == first_batch  # the step keeps its shape: 4 questions x 2
    assert trainer.data.position == 12  # three batches of 4 questions were drawn
    assert trainer.sampling_metrics == {
        "rollout/sampled_batches": 3.0,
        "rollout/sampled_reward_mean": 0.0,
        "rollout/sampled_mixed_groups": 0.0,
    }


def test_filter_groups_keeps_the_mixed_groups_first(make_trainer: Any) -> None:
    trainer = filtering(make_trainer, lambda trainer: {q.question for q in trainer.questions[::2]}, batches=2)
    drawn = [trainer.questions[index].question for index in DataOrder(len(trainer.questions), 0).next_indices(8)]
    mixed = [q for q in drawn if q in trainer.task.mixed]
    kept = questions_of(trainer.rollout())
    assert 0 < len(mixed) < 8
    if len(mixed) < 4:  # the second batch was needed, and the uniform groups fill the step in order
        assert kept == (mixed + [q for q in drawn if q not in trainer.task.mixed])[:4]
    else:
        assert kept == mixed[:4]
    trainer.train_step()  # and the step trains on them


def test_a_step_scores_its_episodes_once_and_trains_on_those_scores(make_trainer: Any) -> None:
    trainer = filtering(make_trainer, lambda trainer: {q.question for q in trainer.questions}, batches=1)
    trajectories, rewards = trainer.scored_rollout()
    assert trainer.task.scored == len(trajectories) == 8
    assert rewards == [1.0, 0.0] * 4
    batch = trainer.reward(trajectories, rewards)
    assert trainer.task.scored == 8  # the reward stage took the rollout's scores
    assert batch.rewards.tolist() == rewards
    trainer.train_step()
    assert trainer.task.scored == 16  # one scoring per step


def test_ppo_critic_warms_up_before_the_actor_moves(make_trainer: Any) -> None:
    trainer = make_trainer(algorithm={"estimator": "gae", "critic_warmup": 1, "gamma": 1.0, "lam": 0.95})
    assert trainer.critic is not None
    policy_before, critic_before = parameters(trainer.policy), parameters(trainer.critic)
    first = trainer.train_step()
    assert "timing/update_actor" not in first
    assert not changed(policy_before, trainer.policy)
    assert changed(critic_before, trainer.critic)
    assert {"critic/vf_loss", "critic/grad_norm", "critic/values_mean"} <= set(first)
    second = trainer.train_step()
    assert "timing/update_actor" in second
    assert changed(policy_before, trainer.policy)


def test_kl_in_reward_shapes_the_rewards(make_trainer: Any) -> None:
    trainer = make_trainer(algorithm={"use_kl_loss": False, "use_kl_in_reward": True, "kl_reward_coef": 0.1})
    trainer.train_step()  # the policy moves away from the reference
    metrics = trainer.train_step()
    assert "batch/reward_kl" in metrics
    assert "actor/kl" in metrics  # still reported, though not in the loss


def test_data_order_covers_every_question_once_per_epoch_and_resumes() -> None:
    order = DataOrder(size=10, seed=3)
    first_epoch = order.next_indices(6) + order.next_indices(4)
    assert sorted(first_epoch) == list(range(10))
    state = order.state_dict()
    continued = order.next_indices(7)
    resumed = DataOrder(size=10, seed=3)
    resumed.load_state_dict(state)
    assert resumed.next_indices(7) == continued
    assert continued != first_epoch[:7]  # a new shuffle each epoch


def test_resumed_run_continues_exactly_like_an_uninterrupted_one(make_trainer: Any, tmp_path: Path) -> None:
    uninterrupted = make_trainer(steps=4)
    expected = [comparable_metrics(uninterrupted.train_step()) for _ in range(4)]

    killed = make_trainer(steps=4)
    for _ in range(2):
        killed.train_step()
    save_checkpoint(tmp_path / "resume", killed.step, killed.state_dict())
    killed.train_step()  # a step after the checkpoint, lost with the process

    resumed = make_trainer(steps=4)
    checkpoint = latest_checkpoint(tmp_path / "resume")
    assert checkpoint is not None
    resumed.load_state_dict(load_checkpoint(checkpoint))
    assert resumed.step == 2
    assert [comparable_metrics(resumed.train_step()) for _ in range(2)] == expected[2:]
