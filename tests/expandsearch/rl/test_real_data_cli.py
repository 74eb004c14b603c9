"""``expandsearch train --config train_configs/smollm2_hotpotqa_cpu.yaml`` end to end through the CLI, at a tiny
budget: real HotpotQA parquet from ``prepare qa``, demonstrations from ``prepare demos``, a real retriever server on
a free port, and a tiny real model in place of SmolLM2."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import ONE_THREAD, run_expandsearch, served_retriever

from expandsearch.tracking import METRICS_FILE, read_metrics

pytestmark = pytest.mark.slow

HOTPOT = "hotpotqa/hotpotqa_distractor_dev300.jsonl"


@pytest.fixture(scope="module")
def artifacts(real_data: Path, tiny_policy_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files the SmolLM2 config names: verl parquet, a BM25 index over the questions' contexts, demonstrations."""
    root = tmp_path_factory.mktemp("real")
    hotpot = real_data / HOTPOT
    demos = run_expandsearch(
        "prepare", "demos", "--input", str(hotpot), "--out", str(root / "demos"), "--build-index",
        "--tokenizer", str(tiny_policy_dir), "--limit", "6", "--seed", "0", timeout=300, env=ONE_THREAD,
    )  # fmt: skip
    assert demos.returncode == 0, demos.stderr[-2000:]
    qa = run_expandsearch(
        "prepare", "qa", "--dataset", "hotpotqa", "--input", str(hotpot), "--split", "dev", "--out", str(root / "qa"),
        timeout=300, env=ONE_THREAD,
    )  # fmt: skip
    assert qa.returncode == 0, qa.stderr[-2000:]
    return root


@pytest.fixture(scope="module")
def served_index(artifacts: Path) -> Iterator[str]:
    with served_retriever(artifacts / "demos" / "index", env=ONE_THREAD) as url:
        yield url


def test_the_smollm2_config_trains_a_tiny_model_against_a_retriever_server(
    artifacts: Path, served_index: str, tiny_policy_dir: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    parquet = artifacts / "qa" / "dev.parquet"
    result = run_expandsearch(
        "train", "--config", "train_configs/smollm2_hotpotqa_cpu.yaml",
        f"run_dir={run_dir}", "steps=1", "checkpoint_every=1", "logging.progress=false", "logging.plots=false",
        f"data.train_files=[{parquet}]", f"data.val_files=[{parquet}]",
        "data.max_train_questions=8", "data.max_val_questions=4",
        f"policy.model={tiny_policy_dir}", "policy.trainable=all",
        "retriever.index=null", f"retriever.urls=[{served_index}]",
        f"warm_start.sft.demonstrations=[{artifacts / 'demos' / 'demos.jsonl'}]",
        "warm_start.sft.steps=2", "warm_start.sft.warmup_steps=0",
        "rollout.questions_per_step=2", "rollout.group_size=2", "rollout.episode.max_turn_tokens=24",
        "rollout.episode.max_turns=2", "algorithm.mini_batch_size=4", "algorithm.micro_batch_size=2",
        "eval.questions=4",
        timeout=600, env=ONE_THREAD,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "after RL" in summary["evaluations"]
    for evaluation in summary["evaluations"].values():
        assert evaluation["metrics"]["questions"] == 4
    assert (run_dir / "checkpoints" / "step_0000001" / "state.pt").is_file()
    assert (run_dir / "policy").is_dir()
    trained = [row for row in read_metrics(run_dir / METRICS_FILE) if "rollout/reward_mean" in row]
    assert [row["rollout/retriever_failovers"] for row in trained] == [0.0]  # searched over HTTP, nothing failed


def test_a_retriever_server_killed_mid_training_is_failed_over_and_the_run_goes_on(
    artifacts: Path, tiny_policy_dir: Path, tmp_path: Path
) -> None:
    """Two real servers behind ``retriever.urls``; one is stopped after the first RL step. Every later search batch
    that starts at it moves on to the other (counted in ``rollout/retriever_failovers``), no episode sees a failed
    search, and training steps on. The episodes are scripted (they search twice, then answer) so that every step
    searches; the tiny real model computes the log-probs and takes the updates."""
    from contextlib import ExitStack

    from agent_env.episode import AgentEnv
    from agent_env.scripted import ScriptedPolicy
    from agent_env.squeezers import make_squeezer
    from expandsearch.config import load_config
    from expandsearch.rl.config import TrainConfig
    from expandsearch.rl.sources import load_policy, make_searcher
    from expandsearch.rl.tasks import build_task
    from expandsearch.rl.trainer import Trainer
    from train_configs import config_path

    def respond(context: str) -> str:
        turns = context.rsplit("<|im_start|>assistant", 1)[-1].count("</information>")
        question = context.split("Question: ", 1)[1].split("\n", 1)[0]
        return f"<search> {question} ## {question[:30]} </search>" if turns < 2 else "<answer> unknown </answer>"

    parquet = artifacts / "qa" / "dev.parquet"
    index = artifacts / "demos" / "index"
    with ExitStack() as first, served_retriever(index, env=ONE_THREAD) as second:
        urls = [first.enter_context(served_retriever(index, env=ONE_THREAD)), second]
        config = load_config(TrainConfig, config_path("smollm2_hotpotqa_cpu"), [
            f"run_dir={tmp_path}", "steps=3", f"data.train_files=[{parquet}]", f"data.val_files=[{parquet}]",
            f"policy.model={tiny_policy_dir}", "policy.trainable=all", "warm_start.kind=none",
            "retriever.index=null", f"retriever.urls=[{','.join(urls)}]", "retriever.retries=1",
            "rollout.questions_per_step=2", "rollout.group_size=2", "algorithm.mini_batch_size=4",
            "algorithm.micro_batch_size=2", "rollout.episode.max_turns=3",
        ])  # fmt: skip
        model, tokenizer = load_policy(str(tiny_policy_dir), config.policy)
        search = make_searcher(config.retriever)()
        env = AgentEnv(
            ScriptedPolicy(tokenizer, respond), tokenizer, search, make_squeezer("extractive"), config.rollout.episode
        )
        trainer = Trainer(config, model, tokenizer, env, build_task(config))
        try:
            steps = [trainer.train_step()]
            first.close()  # the first server stops between two steps
            steps += [trainer.train_step(), trainer.train_step()]
        finally:
            trainer.close()
    assert [row["rollout/searches"] for row in steps] == [2.0, 2.0, 2.0]
    assert steps[0]["rollout/retriever_failovers"] == 0
    assert steps[-1]["rollout/retriever_failovers"] >= 2  # cumulative: the batches that started at the dead one
    assert all(row["rollout/retrieval_errors"] == 0 for row in steps)
    assert trainer.step == 3
