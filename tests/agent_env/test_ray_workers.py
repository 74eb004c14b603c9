"""Ray mode: environment workers (real Ray actors, local ``ray.init``) against one policy server and one retriever.

The policy is the tiny random-weight Qwen2 behind our OpenAI-compatible server, the retriever a real BM25
server; both run on free ports in this process, and the Ray workers reach them over HTTP like a cluster would.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_env.assembly import EnvSetupError, EnvSpec
from agent_env.engine import TransformersEngine
from agent_env.episode import EpisodeConfig
from agent_env.openai_compat import create_llm_app
from agent_env.ray_workers import EnvWorker, run_rollouts_on_ray, split_evenly, start_workers
from agent_env.rollout import EpisodeInput
from data_prep.synthetic import World
from retriever_server.server import ServerThread

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def policy_server(tiny_policy_dir: Path) -> Iterator[tuple[str, TransformersEngine]]:
    engine = TransformersEngine.from_pretrained(str(tiny_policy_dir), max_batch_size=64)
    with ServerThread(create_llm_app(engine, engine.tokenizer, "tiny")) as server:
        yield server.url, engine


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def spec_for(policy_dir: Path, policy_url: str, retriever_url: str) -> EnvSpec:
    config = EpisodeConfig(max_turn_tokens=16, max_turns=2, temperature=1.0)
    return EnvSpec(
        model=str(policy_dir), engine_url=policy_url, retriever_url=retriever_url, squeezer="none", config=config
    )


@pytest.mark.usefixtures("local_ray")
def test_workers_play_every_episode_in_input_order(
    tiny_policy_dir: Path, policy_server: tuple[str, TransformersEngine], world_server: str, tiny_world: World
) -> None:
    url, engine = policy_server
    examples = tiny_world.questions["test"][:10]
    inputs = [EpisodeInput(example.question, tuple(example.golden_answers), example.id) for example in examples]
    batches_before = engine.batch_stats.batches
    requests_before = engine.batch_stats.requests

    trajectories = run_rollouts_on_ray(
        spec_for(tiny_policy_dir, url, world_server), inputs, num_workers=3, samples_per_input=2
    )

    assert [trajectory.example_id for trajectory in trajectories] == [e.id for e in examples for _ in range(2)]
    assert [trajectory.question for trajectory in trajectories] == [e.question for e in examples for _ in range(2)]
    for trajectory in trajectories:
        assert trajectory.num_turns >= 1
        assert len(trajectory.response_ids) == len(trajectory.response_mask) == len(trajectory.response_logprobs)
        assert sum(trajectory.response_mask) > 0, "every episode sampled tokens from the shared policy server"
    served = engine.batch_stats.requests - requests_before
    assert served >= len(trajectories)
    assert served > engine.batch_stats.batches - batches_before, "the workers' requests shared decoding batches"


@pytest.mark.usefixtures("local_ray")
def test_workers_are_reusable_across_calls(
    tiny_policy_dir: Path, policy_server: tuple[str, TransformersEngine], world_server: str, tiny_world: World
) -> None:
    spec = spec_for(tiny_policy_dir, policy_server[0], world_server)
    workers = start_workers(spec, 2)
    inputs = [EpisodeInput(example.question) for example in tiny_world.questions["test"][:3]]
    first = run_rollouts_on_ray(spec, inputs, workers=workers)
    second = run_rollouts_on_ray(spec, inputs[:1], workers=workers)
    assert [trajectory.question for trajectory in first] == [item.question for item in inputs]
    assert [trajectory.question for trajectory in second] == [inputs[0].question]


def test_workers_need_a_shared_policy_endpoint(tiny_policy_dir: Path) -> None:
    with pytest.raises(ValueError, match="engine_url"):
        EnvWorker(EnvSpec(model=str(tiny_policy_dir), retriever_url="http://127.0.0.1:1"))


def test_spec_needs_exactly_one_retriever(tiny_policy_dir: Path) -> None:
    with pytest.raises(EnvSetupError, match="exactly one"):
        EnvSpec(model=str(tiny_policy_dir))
    with pytest.raises(EnvSetupError, match="exactly one"):
        EnvSpec(model=str(tiny_policy_dir), index_dir="x", retriever_url="http://127.0.0.1:1")


@pytest.mark.parametrize(("count", "parts"), [(10, 3), (2, 3), (0, 2), (7, 1)])
def test_split_evenly_keeps_order_and_balances(count: int, parts: int) -> None:
    shares = split_evenly(list(range(count)), parts)
    assert len(shares) == parts
    assert [item for share in shares for item in share] == list(range(count))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
