"""Behaviour cloning: the loss sees only the expert's tokens, it trains and is deterministic; a short warm start
teaches a tiny policy the action format; the CLI writes a loadable policy directory."""

from __future__ import annotations

import asyncio
import json
import math
import random
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from support import run_expandsearch

from agent_env.episode import AgentEnv, EpisodeConfig, Trajectory
from agent_env.rollout import EpisodeInput, RolloutRunner
from agent_env.search import LocalSearch
from agent_env.squeezers import NoSqueezer
from agent_env.tiny_model import TinyQwen2Config, build_tiny_qwen2, train_tokenizer
from data_prep.expert_policy import expert_policy
from data_prep.formats import QAExample
from data_prep.synthetic import World, WorldData, WorldLexicon, write_world
from data_prep.tokenizer_corpus import tokenizer_corpus
from expandsearch.sft import (
    IGNORE_INDEX,
    BCConfig,
    bc_example,
    bc_loss,
    behaviour_cloning,
    collate,
    length_grouped_batches,
    lr_factor,
)
from expandsearch.world_expert import METRICS_FILE, NameShuffle, WarmStartConfig, evaluate_world_policy
from retriever_server.bm25 import BM25Index

MICRO = TinyQwen2Config(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1
)


@pytest.fixture(scope="module")
def tokenizer(tiny_world: World) -> Any:
    return train_tokenizer(tokenizer_corpus(tiny_world.passages, tiny_world.questions["train"][:100]), 2048)


def play_expert(world: World, tokenizer: Any, examples: list[QAExample]) -> list[Trajectory]:
    """The expert's episodes on ``examples``, played through the real environment."""

    async def play() -> list[Trajectory]:
        engine = expert_policy(tokenizer, examples, WorldLexicon.of(world))
        search = LocalSearch(BM25Index.build(world.passages))
        env = AgentEnv(engine, tokenizer, search, NoSqueezer(), EpisodeConfig())
        inputs = [EpisodeInput(example.question, tuple(example.golden_answers)) for example in examples]
        try:
            return await RolloutRunner(env).run(inputs)
        finally:
            await search.aclose()

    return asyncio.run(play())


@pytest.fixture(scope="module")
def trajectories(tiny_world: World, tokenizer: Any) -> list[Trajectory]:
    return play_expert(tiny_world, tokenizer, tiny_world.questions["train"][:40])


def micro_model(tokenizer: Any, seed: int = 0) -> Any:
    return build_tiny_qwen2(tokenizer, MICRO, seed)


def loss_of(model: Any, tokenizer: Any, trajectories: list[Trajectory]) -> float:
    with torch.no_grad():
        return bc_loss(model, collate([bc_example(t) for t in trajectories], tokenizer.pad_token_id)).item()


# --- the loss mask ---------------------------------------------------------------------------------------------------


def test_labels_are_the_policy_tokens_and_nothing_else(trajectories: list[Trajectory]) -> None:
    for trajectory in trajectories:
        input_ids, labels = bc_example(trajectory)
        assert input_ids == trajectory.prompt_ids + trajectory.response_ids
        offset = len(trajectory.prompt_ids)
        labelled = [position for position, label in enumerate(labels) if label != IGNORE_INDEX]
        policy = [offset + i for i, mask in enumerate(trajectory.response_mask) if mask == 1]
        assert labelled == policy
        assert all(labels[position] == input_ids[position] for position in labelled)


def test_loss_equals_full_logits_cross_entropy_on_policy_tokens(tokenizer: Any, trajectories: list[Trajectory]) -> None:
    """Computing logits only at labelled positions is exact: the same as the model's full logits, masked."""
    model = micro_model(tokenizer)
    batch = collate([bc_example(t) for t in trajectories[:4]], tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        reference = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1), ignore_index=IGNORE_INDEX
        )
        assert bc_loss(model, batch).item() == pytest.approx(reference.item(), rel=1e-5)


def test_environment_tokens_carry_no_loss(tokenizer: Any, trajectories: list[Trajectory]) -> None:
    """Appending tokens as environment tokens leaves the loss as it was; the same tokens as policy tokens change it,
    and changing the ids of environment tokens changes no gradient of the logits at them."""
    model = micro_model(tokenizer)
    extra = tokenizer.encode("\n\n<information>Doc 1 (Title: Secret) A planted passage.</information>\n\n")

    def extended(mask_value: int) -> list[Trajectory]:
        return [
            replace(t, response_ids=t.response_ids + extra, response_mask=t.response_mask + [mask_value] * len(extra))
            for t in trajectories[:4]
        ]

    before = loss_of(model, tokenizer, trajectories[:4])
    assert loss_of(model, tokenizer, extended(0)) == pytest.approx(before, rel=1e-6)
    assert abs(loss_of(model, tokenizer, extended(1)) - before) > 1e-4  # an untrained model: every token near ln V

    batch = collate([bc_example(t) for t in trajectories[:2]], tokenizer.pad_token_id)
    hidden = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    hidden.retain_grad()
    logits = model.get_output_embeddings()(hidden)
    logits.retain_grad()
    targets = batch["labels"][:, 1:]
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX
    )
    loss.backward()
    assert logits.grad is not None
    no_target = torch.nn.functional.pad(targets == IGNORE_INDEX, (0, 1), value=True)
    assert logits.grad[no_target].abs().max().item() == 0.0
    assert logits.grad[~no_target].abs().max().item() > 0.0


def test_collate_right_pads_with_an_attention_mask() -> None:
    batch = collate([([5, 6, 7], [IGNORE_INDEX, 6, 7]), ([8], [IGNORE_INDEX])], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [IGNORE_INDEX] * 3]


def test_a_trajectory_set_without_policy_tokens_is_refused(tokenizer: Any, trajectories: list[Trajectory]) -> None:
    silent = [replace(t, response_mask=[0] * len(t.response_mask)) for t in trajectories[:3]]
    with pytest.raises(ValueError, match="no trajectory has a policy token"):
        behaviour_cloning(micro_model(tokenizer), tokenizer, silent, steps=1)


def test_name_shuffle_renames_consistently_within_an_example(
    tiny_world: World, tokenizer: Any, trajectories: list[Trajectory]
) -> None:
    shuffle = NameShuffle.from_lexicon(tokenizer, WorldLexicon.of(tiny_world))
    person_ids = set(max(shuffle.groups, key=len))
    assert len(person_ids) > 50  # given and family names of people: one token each
    input_ids, labels = bc_example(trajectories[0])
    renamed, renamed_labels = shuffle(input_ids, labels, random.Random(0))
    assert renamed != input_ids
    mapping = dict(zip(input_ids, renamed, strict=True))  # a function: each token always becomes the same one
    assert all(mapping[old] == new for old, new in zip(input_ids, renamed, strict=True))
    assert len(set(mapping.values())) == len(mapping)  # and a permutation: two names never merge
    renamed_tokens = {old for old, new in mapping.items() if old != new}
    assert renamed_tokens <= set().union(*shuffle.groups)  # only names are renamed
    assert [label == IGNORE_INDEX for label in renamed_labels] == [label == IGNORE_INDEX for label in labels]
    assert all(label in (IGNORE_INDEX, token) for label, token in zip(renamed_labels, renamed, strict=True))
    assert shuffle(input_ids, labels, random.Random(0)) == (renamed, renamed_labels)
    assert NameShuffle(shuffle.groups, probability=0.0)(input_ids, labels, random.Random(0)) == (input_ids, labels)


# --- batching and schedule -------------------------------------------------------------------------------------------


def test_length_grouped_batches_cover_each_epoch_once_with_little_padding() -> None:
    lengths = [(7 * i) % 50 + 1 for i in range(40)]
    config = BCConfig(batch_size=4, group_batches=5, seed=3)
    stream = length_grouped_batches(lengths, config)
    epoch = [next(stream) for _ in range(10)]
    assert sorted(index for batch in epoch for index in batch) == list(range(40))
    assert all(len(batch) == 4 for batch in epoch)
    assert epoch == [next(length_grouped_batches(lengths, config)) for _ in range(1)] + epoch[1:]
    spread = sum(max(lengths[i] for i in batch) - min(lengths[i] for i in batch) for batch in epoch) / len(epoch)
    assert spread < 20  # random batches of 4 from lengths 1..50 spread about 30


def test_lr_warms_up_then_decays_to_the_floor() -> None:
    config = BCConfig(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    warmup = [lr_factor(step, config) for step in range(10)]
    assert warmup == sorted(warmup)
    assert warmup[0] < 0.2
    assert lr_factor(10, config) == pytest.approx(1.0)
    assert lr_factor(99, config) == pytest.approx(0.1, abs=0.01)
    decay = [lr_factor(step, config) for step in range(10, 100)]
    assert decay == sorted(decay, reverse=True)


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="steps"):
        BCConfig(steps=0)
    with pytest.raises(ValueError, match="lr"):
        BCConfig(lr=0.0)


# --- training --------------------------------------------------------------------------------------------------------


def test_loss_decreases(tokenizer: Any, trajectories: list[Trajectory]) -> None:
    logged: list[dict[str, float]] = []
    metrics = behaviour_cloning(
        micro_model(tokenizer), tokenizer, trajectories, steps=25, batch_size=4, log=logged.append, log_every=5
    )
    losses = [row["bc/loss"] for row in metrics["history"]]
    assert all(math.isfinite(loss) for loss in losses)
    assert metrics["bc/final_loss"] < metrics["bc/first_loss"] - 1.0
    assert [row["bc/step"] for row in logged] == [1, 6, 11, 16, 21, 25]


def test_training_is_deterministic_for_a_seed(tokenizer: Any, trajectories: list[Trajectory]) -> None:
    def train(seed: int) -> tuple[list[float], dict[str, torch.Tensor]]:
        model = micro_model(tokenizer)
        metrics = behaviour_cloning(model, tokenizer, trajectories, steps=6, batch_size=4, seed=seed)
        return [row["bc/loss"] for row in metrics["history"]], model.state_dict()

    losses, weights = train(seed=1)
    again_losses, again_weights = train(seed=1)
    other_losses, _ = train(seed=2)
    assert losses == again_losses
    assert all(torch.equal(weights[name], again_weights[name]) for name in weights)
    assert losses != other_losses


# --- the tiny world policy -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world_dir(tiny_world: World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    write_world(tiny_world, out)
    return out


@pytest.fixture(scope="module")
def demonstrations(tiny_world: World, tokenizer: Any) -> list[Trajectory]:
    return play_expert(tiny_world, tokenizer, tiny_world.questions["train"][:120])


@pytest.mark.slow
def test_a_short_warm_start_teaches_the_action_format(
    tiny_world: World, tokenizer: Any, demonstrations: list[Trajectory]
) -> None:
    """A random-weight policy never writes a valid action; 100 cloning steps make it search with several variants."""
    size = TinyQwen2Config(
        hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
    )
    model = build_tiny_qwen2(tokenizer, size)
    config = WarmStartConfig(
        eval_questions=12, squeezer="none", episode=EpisodeConfig(temperature=0.0, max_turn_tokens=96)
    )
    world = WorldData(tiny_world.passages, tiny_world.questions, WorldLexicon.of(tiny_world))
    index = BM25Index.build(tiny_world.passages)
    untrained = evaluate_world_policy(model, tokenizer, world, index, config)
    assert untrained["eval/valid_action_rate"] == 0.0

    metrics = behaviour_cloning(model, tokenizer, demonstrations, steps=100, lr=1e-2, warmup_steps=10)
    assert metrics["bc/final_loss"] < metrics["bc/first_loss"] / 4
    trained = evaluate_world_policy(model, tokenizer, world, index, config)
    assert trained["eval/valid_action_rate"] >= 0.3, trained
    assert trained["eval/searches"] > 0.5
    assert trained["eval/variants_per_search"] >= 2.0


def expandsearch(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return run_expandsearch(*args, timeout=timeout)


@pytest.mark.slow
def test_cli_writes_a_loadable_policy_and_its_metrics(world_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "policy"
    result = expandsearch(
        "warm-start", "--world", world_dir, "--out", out, "--steps", "3", "--batch-size", "4", "--demos", "12",
        "--eval-questions", "3", "--hidden-size", "32", "--layers", "1", "--vocab-size", "1024", "--seed", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "bc/final_loss" in result.stdout
    assert "eval/valid_action_rate" in result.stdout
    record = json.loads((out / METRICS_FILE).read_text())
    metrics = record["metrics"]
    assert math.isfinite(metrics["bc/final_loss"])
    assert metrics["bc/steps"] == 3
    assert metrics["eval/questions"] == 3
    assert 0.0 <= metrics["eval/valid_action_rate"] <= 1.0
    assert record["config"]["model"]["hidden_size"] == 32
    assert record["config"]["bc"]["seed"] == 1

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.model_type == "qwen2"
    assert model.config.vocab_size == len(tokenizer)
    initial = build_tiny_qwen2(tokenizer, TinyQwen2Config(**record["config"]["model"]), seed=1)
    changed = [
        name for name, tensor in model.state_dict().items() if not torch.equal(tensor, initial.state_dict()[name])
    ]
    assert changed, "training left every parameter as initialised"


def test_cli_refuses_a_directory_that_is_not_a_world(tmp_path: Path) -> None:
    result = expandsearch("warm-start", "--world", tmp_path, "--out", tmp_path / "policy")
    assert result.returncode == 2
    assert "expandsearch world" in result.stderr
    assert "Traceback" not in result.stderr
