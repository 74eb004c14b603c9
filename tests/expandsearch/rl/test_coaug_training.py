"""The joint RL loop of co-augmentation (``task: coaug``) on a SciFact slice: real BEIR files, a tiny real Qwen2,
the real batch-level reward, the embedded trainer's update, checkpoints and resume, and the CLI end to end."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from support import ONE_THREAD, require_console_script, run_expandsearch

from data_prep.beir import load_beir
from expandsearch.config import config_from_dict
from expandsearch.rl.coaug import (
    NEGATIVE,
    POSITIVE,
    QUERY,
    CoAugTask,
    CoAugTrainer,
    prompt_key_parts,
    query_policies,
)
from expandsearch.rl.config import TrainConfig

TRAIN_QUERIES, TEST_QUERIES, DISTRACTORS = 4, 3, 30


@pytest.fixture(scope="module")
def scifact_slice(real_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BEIR folder with train and test qrels: the first queries of each split, their abstracts and others."""
    source = real_data / "beir" / "scifact"
    splits = {split: dict(list(load_beir(source, split).qrels.items())[:count]) for split, count in
              (("train", TRAIN_QUERIES), ("test", TEST_QUERIES))}  # fmt: skip
    wanted = {doc for qrels in splits.values() for judged in qrels.values() for doc in judged}
    with (source / "corpus.jsonl").open() as handle:
        rows = [json.loads(line) for line in handle]
    others = [row["_id"] for row in rows if row["_id"] not in wanted][:DISTRACTORS]
    keep = wanted | set(others)
    folder = tmp_path_factory.mktemp("scifact_coaug")
    (folder / "qrels").mkdir()
    with (folder / "corpus.jsonl").open("w") as out:
        out.writelines(json.dumps(row) + "\n" for row in rows if row["_id"] in keep)
    shutil.copy(source / "queries.jsonl", folder / "queries.jsonl")
    for split, qrels in splits.items():
        with (folder / "qrels" / f"{split}.tsv").open("w", newline="") as handle:
            writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
            writer.writerow(["query-id", "corpus-id", "score"])
            writer.writerows([query, doc, score] for query, judged in qrels.items() for doc, score in judged.items())
    return folder


def coaug_config(
    folder: Path,
    policy: Path | str,
    run_dir: Path,
    mini_batch_size: int = 30,
    rollout: tuple[int, int] = (2, 3),
    **coaug: Any,
) -> TrainConfig:
    """``rollout``: (questions per step, group size)."""
    return config_from_dict(
        TrainConfig,
        {
            "run_dir": str(run_dir),
            "steps": 2,
            "checkpoint_every": 1,
            "task": "coaug",
            "data": {"world": None, "beir": str(folder)},
            "policy": {"model": str(policy)},
            "warm_start": {"kind": "none"},
            "coaug": {"positives": 2, "negatives": 2, "max_new_tokens": 8, "think": False, **coaug},
            "rollout": {
                "questions_per_step": rollout[0],
                "group_size": rollout[1],
                "episode": {"temperature": 1.2},
            },
            "algorithm": {
                "norm_adv_by_std": False,
                "use_kl_loss": False,
                "mini_batch_size": mini_batch_size,
                "micro_batch_size": 6,
            },
            "optim": {"lr": 1e-2, "warmup_steps": 0},
            "logging": {"progress": False, "tensorboard": False, "plots": False},
        },
    )


def test_a_step_prompts_each_query_with_its_positives_and_random_negatives(
    scifact_slice: Path, tiny_policy_dir: Path, tmp_path: Path
) -> None:
    task = CoAugTask.from_config(coaug_config(scifact_slice, tiny_policy_dir, tmp_path))
    query_ids = [item.example_id or "" for item in task.train.inputs][:2]
    prompts = task.step_prompts(query_ids, step=1)
    assert len(prompts) == 2 * (1 + 2 + 2)
    assert prompts == task.step_prompts(query_ids, step=1)  # seeded by the step
    for prompt in prompts:
        judged = task.train_split.qrels[prompt.query_id]
        if prompt.tag == QUERY:
            assert prompt.doc_id is None
            assert prompt.original == task.train_split.queries[prompt.query_id]
        elif prompt.tag == POSITIVE:
            assert judged.get(prompt.doc_id or "", 0) > 0
        else:
            assert prompt.tag == NEGATIVE
            assert prompt.doc_id not in judged
        assert prompt_key_parts(prompt.key) == (prompt.tag, prompt.query_id, prompt.doc_id)
    alone = CoAugTask.from_config(coaug_config(scifact_slice, tiny_policy_dir, tmp_path, 6, train="query"))
    assert [p.tag for p in alone.step_prompts(query_ids, step=1)] == [QUERY, QUERY]


def test_hard_negatives_are_the_unjudged_documents_bm25_ranks_highest_for_the_query(
    scifact_slice: Path, tiny_policy_dir: Path, tmp_path: Path
) -> None:
    config = coaug_config(scifact_slice, tiny_policy_dir, tmp_path, 42, negatives=4, hard_negatives=3, hard_pool=5)
    task = CoAugTask.from_config(config)
    query_id = task.train.inputs[0].example_id or ""
    judged = task.train_split.qrels[query_id]
    scores = task.similarity([task.train_split.queries[query_id]], list(task._documents.values()))[0]
    ranked = [doc for _, doc in sorted(zip(-scores, task._documents, strict=True)) if doc not in judged]
    pool = task._hard_pool(query_id)
    assert len(pool) == 5
    assert not set(pool) & set(judged)
    # the pool's documents score at least as high as any unjudged document left out of it
    assert min(scores[list(task._documents).index(doc)] for doc in pool) >= max(
        scores[list(task._documents).index(doc)] for doc in ranked[5:]
    )
    negatives = [p.doc_id for p in task.step_prompts([query_id], step=3) if p.tag == NEGATIVE]
    assert len(negatives) == len(set(negatives)) == 4
    assert len(set(negatives) & set(pool)) >= 3
    assert not set(negatives) & set(judged)
    with pytest.raises(ValueError, match="hard_negatives"):
        coaug_config(scifact_slice, tiny_policy_dir, tmp_path, negatives=2, hard_negatives=3)


def test_group_filtering_is_refused_for_a_task_scored_batch_by_batch() -> None:
    sections = {"task": "coaug", "data": {"world": None, "beir": "scifact"}, "policy": {"model": "smollm2"}}
    sections |= {"warm_start": {"kind": "none"}, "algorithm": {"filter_groups": {"enable": True}}}
    with pytest.raises(ValueError, match="cannot pick its groups"):
        config_from_dict(TrainConfig, sections)


def test_the_query_table_compares_policies_only_when_the_query_side_was_trained(tmp_path: Path) -> None:
    for side, rows in (("both", 2), ("query", 2), ("document", 0)):
        config = coaug_config(tmp_path, "smollm2", tmp_path / side, mini_batch_size=6, train=side)
        trained = {"query only, prompted": "smollm2", "query only, after RL": str(tmp_path / side / "policy")}
        assert query_policies(config, tmp_path / side) == (trained if rows else {})


@pytest.mark.slow
def test_the_joint_update_uses_the_batch_reward_and_dr_grpo_advantages(
    scifact_slice: Path, tiny_policy_dir: Path, tmp_path: Path
) -> None:
    """One step by hand with SmolLM2-135M (real words, so the sampled augmentations move the rankings):
    single-turn augmentations (all policy tokens), the task's batch-level rewards and advantages on the batch
    (mean-centred per prompt, documents scaled by 0.2 / 0.1), then a real update of the policy."""
    from expandsearch.rl.sources import load_policy

    # four queries with one positive and four negatives each: 24 documents per draw, so a sampled augmentation
    # can move a ranking (with fewer, every row's positives top it and every reward is the same)
    config = coaug_config(
        scifact_slice,
        "smollm2",
        tmp_path,
        48,
        (4, 2),
        positives=1,
        negatives=4,
        max_new_tokens=12,
        max_prompt_tokens=64,
    )
    config = replace(config, policy=replace(config.policy, trainable="all_but_embeddings"))
    task = CoAugTask.from_config(config)
    model, tokenizer = load_policy("smollm2", config.policy)
    trainer = CoAugTrainer(config, model, tokenizer, task)
    try:
        trainer.step = 1
        trajectories = trainer.rollout()
        assert len(trajectories) == config.episodes_per_step == 4 * 6 * 2
        assert all(t.response_mask == [1] * len(t.response_ids) for t in trajectories)
        assert len({tuple(t.response_ids) for t in trajectories}) > 1  # one seed per sample: the samples differ
        batch = trainer.reward(trajectories)
        expected = task.score_batch(trajectories, rng=np.random.default_rng(0))
        assert [t.reward for t in trajectories] == pytest.approx(batch.rewards.tolist())
        assert float(batch.rewards.min()) >= 0.0
        assert float(batch.rewards.max()) <= 1.0
        trainer.advantages(batch)
        assert batch.advantages is not None
        per_sequence = batch.advantages.sum(-1) / batch.response_mask.sum(-1).clamp(min=1)
        for key in {t.example_id for t in trajectories}:
            rows = [i for i, t in enumerate(trajectories) if t.example_id == key]
            assert float(per_sequence[rows].sum()) == pytest.approx(0.0, abs=1e-5)  # Dr. GRPO: centred per prompt
            tag = prompt_key_parts(key or "")[0]
            centred = batch.rewards[rows] - batch.rewards[rows].mean()
            scale = {QUERY: 1.0, POSITIVE: 0.2, NEGATIVE: 0.1}[tag]
            assert per_sequence[rows].tolist() == pytest.approx((scale * centred).tolist(), abs=1e-5)
        assert (batch.advantages * (1 - batch.response_mask)).abs().sum() == 0
        assert batch.extra["skipped"] == float(expected.skip)
        before = [parameter.detach().clone() for parameter in model.parameters()]
        metrics = trainer.train_step()
        moved = any(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters(), strict=True))
        assert not metrics["batch/skipped"]  # SmolLM2's samples differ in what they retrieve
        assert moved
        assert metrics["batch/advantage_abs_mean"] > 0
        for key in ("rollout/reward_mean", "rollout/query_reward_mean", "rollout/document_answer_rate"):
            assert key in metrics
    finally:
        trainer.close()


@pytest.mark.slow
def test_train_cli_runs_coaug_resumes_and_reports_the_query_table(
    scifact_slice: Path, tiny_policy_dir: Path, tmp_path: Path
) -> None:
    require_console_script()
    run_dir = tmp_path / "run"
    overrides = [
        f"run_dir={run_dir}",
        f"data.beir={scifact_slice}",
        f"policy.model={tiny_policy_dir}",
        "coaug.positives=1",
        "coaug.negatives=1",
        "coaug.max_new_tokens=6",
        "rollout.questions_per_step=2",
        "rollout.group_size=2",
        "algorithm.mini_batch_size=12",
        "algorithm.micro_batch_size=6",
        "checkpoint_every=1",
        "logging.progress=false",
    ]
    config = ["--config", "train_configs/smollm2_scifact_coaug_cpu.yaml"]
    missing = run_expandsearch("train", *config, f"data.beir={tmp_path / 'nowhere'}", timeout=120, env=ONE_THREAD)
    assert missing.returncode == 2
    assert "data.beir: " in missing.stderr
    assert "qrels/train.tsv" in missing.stderr
    first = run_expandsearch("train", *config, *overrides, "steps=1", timeout=600, env=ONE_THREAD)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "| none |" in first.stdout
    assert "| query only, after RL |" in first.stdout
    resumed = run_expandsearch("train", *config, *overrides, "steps=2", "--resume", timeout=600, env=ONE_THREAD)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    results = summary["coaug"]["results"]
    assert list(results) == ["none", "query only, prompted", "query only, after RL"]
    assert all(row["n"] == TEST_QUERIES and 0 <= row["ndcg@10"] <= 1 for row in results.values())
    assert results["none"]["bm25"]["k1"] == 0.9
    assert set(summary["coaug"]["paired_vs_none"]) == {"query only, prompted", "query only, after RL"}
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    assert (run_dir / "checkpoints" / "step_0000002" / "state.pt").is_file()
    assert (run_dir / "eval" / "results.md").is_file()
