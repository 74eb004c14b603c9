"""verl's own ``AgentLoopWorker`` (a Ray actor, local ``ray.init``) running our agent loop from the shipped YAML on
rows of our parquet, through verl's real ``LLMServerClient`` and ``GlobalRequestLoadBalancer``, routed to
:class:`EngineServer` actors (the tiny random Qwen2, then a scripted policy that answers correctly) and a real BM25
retriever server. The ``DataProto`` that comes back is what verl's trainer would train on: its shapes, masks,
log-probs, reward placement and metric columns are checked, and verl's ``core_algos`` turn it into advantages.

This is as deep as verl runs on CPU: ``main_ppo`` itself needs GPUs (nccl, GPU resource pools, vLLM or SGLang)."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import verl_support
from support import free_port
from verl_support import SECRET, compose_trainer_config, dataset_batch, scripted_engine, write_rows

from agent_env.engine import TransformersEngine
from agent_env.episode import EpisodeConfig
from data_prep.synthetic import World
from expandsearch.rl.config import RetrieverSection
from expandsearch.verl_backend.engine_server import EngineServer
from expandsearch.verl_backend.output import REWARD_EXTRA_KEYS
from expandsearch.verl_backend.settings import AgentLoopSettings

ray = pytest.importorskip("ray")
pytest.importorskip("verl")
pytestmark = pytest.mark.slow

PROMPT_LENGTH, RESPONSE_LENGTH, GROUP = 1024, 200, 2
QUESTIONS = 4


@pytest.fixture(scope="module")
def retriever(tiny_world: World) -> Iterator[str]:
    with verl_support.stamped_retriever(tiny_world) as url:
        yield url


@pytest.fixture(scope="module")
def setup(
    tiny_policy_dir: Path, tiny_world: World, retriever: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """Ray, the two engine servers, verl's load balancer (serving the model first), client and worker."""
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker
    from verl.workers.rollout.llm_server import LLMServerClient
    from verl.workers.rollout.router import GlobalRequestLoadBalancer

    examples = tiny_world.questions["test"][:QUESTIONS]
    rows = write_rows(examples, tmp_path_factory.mktemp("verl_worker") / "test.parquet")
    episode = EpisodeConfig(max_turns=3, max_turn_tokens=100, max_observation_tokens=500, topk=1)
    # a server that is down first in the list: every search fails over to the live one
    urls = (f"http://127.0.0.1:{free_port()}", retriever)
    settings = AgentLoopSettings(RetrieverSection(urls=urls, retries=0), "none", episode)
    config = compose_trainer_config(
        tiny_policy_dir, rows, settings, prompt_length=PROMPT_LENGTH, response_length=RESPONSE_LENGTH
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(verl_support)  # tests/lib is not on the workers' path
    answers = {example.question: example.golden_answers[0] for example in examples}
    model = functools.partial(TransformersEngine.from_pretrained, str(tiny_policy_dir), max_batch_size=16)
    servers = {
        "model": ray.remote(EngineServer).remote(model),
        "scripted": ray.remote(EngineServer).remote(functools.partial(scripted_engine, str(tiny_policy_dir), answers)),
    }
    balancer = ray.remote(GlobalRequestLoadBalancer).remote(servers={"model": servers["model"]})
    worker = ray.remote(AgentLoopWorker).remote(config, LLMServerClient(config, balancer))
    try:
        yield {"config": config, "rows": rows, "servers": servers, "balancer": balancer, "worker": worker}
    finally:
        ray.shutdown()


def generate(setup: dict[str, Any], tokenizer: Any, server: str) -> Any:
    """One rollout step as verl's trainer runs it: the dataset batch repeated ``n`` times, sent to the worker."""
    others = [name for name in setup["servers"] if name != server]
    ray.get(setup["balancer"].remove_servers.remote(others))
    ray.get(setup["balancer"].add_servers.remote({server: setup["servers"][server]}))
    batch = dataset_batch(setup["config"], tokenizer, setup["rows"]).repeat(repeat_times=GROUP, interleave=True)
    batch.non_tensor_batch["uid"] = np.repeat(np.arange(QUESTIONS).astype(str), GROUP).astype(object)
    batch.meta_info["global_steps"] = 1
    return ray.get(setup["worker"].generate_sequences.remote(batch))


@pytest.fixture(scope="module")
def tokenizer(tiny_policy_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_policy_dir, local_files_only=True)


@pytest.fixture(scope="module")
def model_batch(setup: dict[str, Any], tokenizer: Any) -> Any:
    return generate(setup, tokenizer, "model")


@pytest.fixture(scope="module")
def scripted_batch(setup: dict[str, Any], tokenizer: Any, model_batch: Any) -> Any:
    return generate(setup, tokenizer, "scripted")  # after the model batch: the balancer is switched over


def last_response_positions(batch: Any) -> Any:
    prompt_length = batch.batch["prompts"].shape[1]
    return batch.batch["attention_mask"][:, prompt_length:].sum(dim=1) - 1


def test_the_batch_has_verls_shapes_and_masks(model_batch: Any) -> None:
    tensors = model_batch.batch
    size = QUESTIONS * GROUP
    assert tuple(tensors["prompts"].shape) == (size, PROMPT_LENGTH)
    assert tuple(tensors["responses"].shape) == (size, RESPONSE_LENGTH)
    assert tuple(tensors["input_ids"].shape) == (size, PROMPT_LENGTH + RESPONSE_LENGTH)
    response_attention = tensors["attention_mask"][:, PROMPT_LENGTH:]
    assert bool((tensors["response_mask"] <= response_attention).all())  # policy tokens are real tokens
    logprobs, mask = tensors["rollout_log_probs"], tensors["response_mask"]
    assert bool((logprobs[mask == 0] == 0).all())  # environment and padding: 0.0
    assert bool((logprobs[mask == 1] < 0).any())
    assert bool((logprobs[mask == 1] <= 0).all())


def test_the_reward_sits_on_each_responses_last_token_which_is_the_policys(model_batch: Any) -> None:
    tensors = model_batch.batch
    last = last_response_positions(model_batch)
    rows = np.arange(len(last))
    assert bool((tensors["response_mask"][rows, last] == 1).all())
    off_last = tensors["rm_scores"].clone()
    off_last[rows, last] = 0
    assert bool((off_last == 0).all())


def test_our_metrics_are_columns_of_every_sample(model_batch: Any) -> None:
    columns = model_batch.non_tensor_batch
    for key in REWARD_EXTRA_KEYS:
        assert len(columns[key]) == QUESTIONS * GROUP
        assert all(isinstance(float(value), float) for value in columns[key])
    assert list(model_batch.meta_info["reward_extra_keys"]) == list(REWARD_EXTRA_KEYS)
    assert all(value >= 1.0 for value in columns["turns"])
    assert set(columns["__num_turns__"]) <= set(range(2, 2 * 3 + 1))


def test_the_scripted_policy_is_rewarded_and_the_secret_stays_environment(scripted_batch: Any, tokenizer: Any) -> None:
    tensors = scripted_batch.batch
    last = last_response_positions(scripted_batch)
    rows = np.arange(len(last))
    assert bool((tensors["rm_scores"][rows, last] == 1.0).all())
    secret = set(tokenizer.encode(SECRET, add_special_tokens=False))
    for row in rows:
        length = int(last[row]) + 1
        ids = tensors["responses"][row, :length].tolist()
        mask = tensors["response_mask"][row, :length].tolist()
        assert SECRET in tokenizer.decode(ids), "vacuous unless the passages came back"
        policy = [token for token, bit in zip(ids, mask, strict=True) if bit]
        assert SECRET not in tokenizer.decode(policy)
        assert not secret <= set(policy)


def test_gae_and_grpo_give_the_rewarded_trajectories_nonzero_advantages(scripted_batch: Any) -> None:
    import torch
    from verl.trainer.ppo import core_algos

    tensors = scripted_batch.batch
    mask = tensors["response_mask"].float()
    rewards = tensors["rm_scores"].clone()
    rewards[1] = 0  # question 0's group: one trajectory rewarded, one not
    advantages, returns = core_algos.compute_gae_advantage_return(
        rewards, torch.zeros_like(rewards), mask, torch.tensor(1.0), torch.tensor(1.0)
    )
    assert bool((returns[0][mask[0] == 1] == 1.0).all())  # the reward flows back to every policy token
    grpo, _ = core_algos.compute_grpo_outcome_advantage(rewards, mask, scripted_batch.non_tensor_batch["uid"])
    for name, values in (("gae", advantages), ("grpo", grpo)):
        assert float(values[0][mask[0] == 1].min()) > 0 > float(values[1][mask[1] == 1].max()), name


def test_a_process_coalesces_its_trajectories_searches_and_fails_over(scripted_batch: Any, retriever: str) -> None:
    import httpx

    searches = float(np.sum(scripted_batch.non_tensor_batch["searches"]))
    assert searches == QUESTIONS * GROUP  # the scripted policy searches once per trajectory
    assert float(np.sum(scripted_batch.non_tensor_batch["retrieval_errors"])) == 0.0  # the dead server was skipped
    served = httpx.get(f"{retriever}/info").json()["stats"]["requests"]
    # one worker process, one search client: concurrent trajectories' searches share requests
    assert served < searches
