"""``expandsearch train`` end to end as a user runs it: the main job, a killed run resumed, config errors."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import EXPANDSEARCH, ONE_THREAD, comparable_metrics, require_console_script, run_expandsearch

from eval.store import ResultsFile
from expandsearch.tracking import METRICS_FILE, read_metrics

pytestmark = pytest.mark.slow


def quick_overrides(run_dir: Path) -> list[str]:
    """Seconds-scale settings: a one-layer policy cloned for a few steps, two small RL steps, 8 test questions."""
    return [
        f"run_dir={run_dir}",
        "steps=2",
        "checkpoint_every=1",
        "warm_start.world_expert.steps=30",
        "policy.tiny.hidden_size=32",
        "policy.tiny.intermediate_size=64",
        "policy.tiny.layers=1",
        "warm_start.world_expert.demonstrations=40",
        "rollout.questions_per_step=2",
        "rollout.group_size=2",
        "rollout.episode.max_turn_tokens=40",
        "algorithm.mini_batch_size=4",
        "algorithm.micro_batch_size=2",
        "eval.questions=8",
        "eval.during_training_questions=4",
        "logging.progress=false",
    ]


def test_main_job_writes_every_artifact(tmp_path: Path) -> None:
    require_console_script()
    run_dir = tmp_path / "run"
    result = run_expandsearch("train", *quick_overrides(run_dir), timeout=600, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]
    for heading in ("| policy | EM |", "| warm start |", "| after RL |", "| after RL, 1 query/search |"):
        assert heading in result.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert list(summary["evaluations"]) == ["warm start", "after RL", "after RL, 1 query/search"]
    for evaluation in summary["evaluations"].values():
        assert evaluation["metrics"]["questions"] == 8
        assert 0 <= evaluation["metrics"]["em"] <= 1
        assert len(evaluation["reward_by_question"]) == 8
    warm, after = (summary["evaluations"][name] for name in ("warm start", "after RL"))
    comparison = summary["paired"]["after RL vs warm start"]
    assert comparison["difference"] == pytest.approx(after["metrics"]["em"] - warm["metrics"]["em"])
    assert comparison["gained"] + comparison["lost"] <= 8
    assert "after RL vs warm start: EM " in result.stdout
    assert "after RL, 1 query/search vs after RL: EM " in result.stdout
    assert set(summary["timings_s"]) == {"world", "index", "warm start", "rl", "evaluation"}
    # every evaluated question as `expandsearch eval` writes it: the row the summary's EM is the mean of, and its trace
    for file_name, name in [
        ("warm_start", "warm start"),
        ("after_rl", "after RL"),
        ("after_rl_1_query_search", "after RL, 1 query/search"),
    ]:
        records = ResultsFile(run_dir / "eval" / "held_out" / f"{file_name}.jsonl").records
        assert {key: row["em"] for key, row in records.items()} == summary["evaluations"][name]["reward_by_question"]
        assert all(row["trace"] and row["golds"] for row in records.values())
    rows = read_metrics(run_dir / METRICS_FILE)
    assert [row["step"] for row in rows] == [0, 1, 2]  # step 0: the warm start's evaluation, where the EM curve starts
    assert "eval/em" in rows[0]
    assert "rollout/reward_mean" not in rows[0]
    assert (run_dir / "training_curves.png").stat().st_size > 1000
    assert any((run_dir / "tensorboard").iterdir())
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["steps"] == 2
    assert (run_dir / "checkpoints" / "step_0000002" / "state.pt").is_file()
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(run_dir / "policy").config.model_type == "qwen2"

    # the same command again reuses world, index and warm start; --resume with another config is refused
    changed = run_expandsearch("train", *quick_overrides(run_dir), "seed=1", "--resume", timeout=120, env=ONE_THREAD)
    assert changed.returncode == 2
    assert "differs from" in changed.stderr
    assert "seed" in changed.stderr


def test_bad_config_fails_before_anything_runs(tmp_path: Path) -> None:
    require_console_script()
    bad_file = tmp_path / "bad.yaml"
    bad_file.write_text("steps: [1,\n")
    for args, message in [
        (["rollout.grup_size=2"], "did you mean 'rollout.group_size'"),
        (["algorithm.estimator=ppo2"], "algorithm.estimator"),
        (["--config", str(bad_file)], "cannot parse config file"),
        (["algorithm.kl_loss_type=k9"], "unknown KL estimator"),
    ]:
        result = run_expandsearch("train", f"run_dir={tmp_path / 'run'}", *args, timeout=60, env=ONE_THREAD)
        assert result.returncode == 2, args
        assert message in result.stderr, (args, result.stderr)
    assert not (tmp_path / "run").exists()


def comparable_rows(run_dir: Path) -> list[dict[str, Any]]:
    return [comparable_metrics(row) for row in read_metrics(run_dir / METRICS_FILE)]


def test_killed_run_resumes_to_the_same_metrics(world_dir: Path, warm_policy_dir: Path, tmp_path: Path) -> None:
    require_console_script()
    common = [
        "steps=6",
        "checkpoint_every=2",
        f"data.world.path={world_dir}",
        f"policy.model={warm_policy_dir}",
        "warm_start.kind=none",
        "rollout.questions_per_step=4",
        "rollout.group_size=2",
        "rollout.episode.max_turn_tokens=60",
        "algorithm.mini_batch_size=4",
        "algorithm.micro_batch_size=2",
        "eval.questions=4",
        "eval.during_training_questions=4",
        "logging.progress=false",
        "logging.plots=false",
    ]
    reference = run_expandsearch("train", f"run_dir={tmp_path / 'whole'}", *common, timeout=600, env=ONE_THREAD)
    assert reference.returncode == 0, reference.stderr[-3000:]

    run_dir = tmp_path / "killed"
    process = subprocess.Popen(
        [EXPANDSEARCH, "train", f"run_dir={run_dir}", *common],
        env=ONE_THREAD,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_rows(run_dir / METRICS_FILE, 4, process)  # steps 0 (evaluation) to 3: past the step-2 checkpoint
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    assert not (run_dir / "summary.json").exists()  # it really died mid-training
    resumed = run_expandsearch("train", f"run_dir={run_dir}", *common, "--resume", timeout=600, env=ONE_THREAD)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert comparable_rows(run_dir) == comparable_rows(tmp_path / "whole")


def _wait_for_rows(path: Path, rows: int, process: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and len(read_metrics(path)) >= rows:
            return
        assert process.poll() is None, "the training process ended before it could be killed"
        time.sleep(0.05)
    raise AssertionError(f"no {rows} metric rows in {path} after {timeout} s")
