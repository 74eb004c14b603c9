"""The agent loop as verl builds and calls it, in this process: ``hydra.utils.instantiate`` of our YAML entry with
verl's arguments, ``run`` on rows of our parquet read by verl's ``RLHFDataset``, a real ``EngineServer`` as the
server manager (the tiny random Qwen2 or a scripted policy), and a real BM25 retriever server on a free port.

What verl does after ``run`` (padding that never truncates, the reward on the last response token, one metrics
column per key of the first sample) is what these outputs must survive; tests/.../test_agent_loop_worker.py runs
verl's own worker over them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import verl_support
from support import hand_built_trajectory
from verl_support import (
    SECRET,
    compose_trainer_config,
    dataset_batch,
    row_kwargs,
    scripted_engine,
    write_rows,
)

from agent_env.engine import Generation, SamplingParams, TransformersEngine, end_of_turn_ids
from agent_env.episode import EpisodeConfig, TurnRecord
from data_prep.synthetic import World
from expandsearch.rl.config import RetrieverSection
from expandsearch.verl_backend.agent_loop import read_row
from expandsearch.verl_backend.engine import VERL_END_TOKENS, ServerManagerEngine, classify_stop
from expandsearch.verl_backend.engine_server import EngineServer, sampling_from_verl
from expandsearch.verl_backend.output import REWARD_EXTRA_KEYS, Limits, shape_response, to_agent_loop_output
from expandsearch.verl_backend.settings import AgentLoopSettings, read_settings
from train_configs import config_path

pytest.importorskip("verl")

SAMPLING = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "logprobs": True}


@pytest.fixture(scope="module")
def stamped_retriever(tiny_world: World) -> Iterator[str]:
    with verl_support.stamped_retriever(tiny_world) as url:
        yield url


@pytest.fixture(scope="module")
def rows_file(tiny_world: World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_rows(tiny_world.questions["test"][:4], tmp_path_factory.mktemp("verl_rows") / "test.parquet")


@pytest.fixture(scope="module")
def answers(tiny_world: World) -> dict[str, str]:
    return {example.question: example.golden_answers[0] for example in tiny_world.questions["test"][:4]}


@pytest.fixture(scope="module")
def tokenizer(tiny_policy_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_policy_dir, local_files_only=True)


def settings_for(url: str, **episode: Any) -> AgentLoopSettings:
    defaults = {"max_turns": 3, "max_turn_tokens": 100, "max_observation_tokens": 500, "topk": 1}
    config = EpisodeConfig(**{**defaults, **episode})
    return AgentLoopSettings(RetrieverSection(urls=(url,)), "none", config)


def make_loop(config: Any, server: Any, tokenizer: Any) -> Any:
    """Our loop exactly as verl's ``AgentLoopWorker._run_agent_loop`` instantiates it, from the shipped YAML."""
    import hydra
    from omegaconf import OmegaConf
    from verl.experimental.agent_loop.agent_loop import DictConfigWrap, ToolListWrap
    from verl.utils.dataset.rl_dataset import RLHFDataset

    (entry,) = OmegaConf.load(config_path("verl/agent_loops.yaml"))
    return hydra.utils.instantiate(
        config=entry,
        trainer_config=DictConfigWrap(config=config),
        server_manager=server,
        tokenizer=tokenizer,
        processor=None,
        hf_model_type="qwen2",
        dataset_cls=RLHFDataset,
        data_config=DictConfigWrap(config.data),
        tools=ToolListWrap([]),
    )


def run_rows(config: Any, server: Any, tokenizer: Any, rows_file: Path) -> list[Any]:
    batch = dataset_batch(config, tokenizer, rows_file)

    async def run_all() -> list[Any]:
        loops = [make_loop(config, server, tokenizer) for _ in range(len(batch))]
        return await asyncio.gather(*(loop.run(dict(SAMPLING), **row_kwargs(batch, i)) for i, loop in enumerate(loops)))

    return asyncio.run(run_all())


@pytest.fixture(scope="module")
def scripted_outputs(
    tiny_policy_dir: Path, stamped_retriever: str, rows_file: Path, answers: dict[str, str], tokenizer: Any
) -> list[Any]:
    config = compose_trainer_config(
        tiny_policy_dir, rows_file, settings_for(stamped_retriever), prompt_length=1024, response_length=400
    )
    server = EngineServer(lambda: scripted_engine(str(tiny_policy_dir), answers))
    return run_rows(config, server, tokenizer, rows_file)


def decode(tokenizer: Any, ids: list[int]) -> str:
    return str(tokenizer.decode(ids, skip_special_tokens=False))


# ------------------------------------------------------------------------------------------- whole episodes


def test_a_scripted_episode_searches_answers_and_is_rewarded(scripted_outputs: list[Any], tokenizer: Any) -> None:
    for output in scripted_outputs:
        assert output.reward_score == 1.0
        assert output.extra_fields["termination"] == "answer"
        assert output.num_turns == 4  # prompt, search turn, tool reply, answer turn
        lengths = {len(output.response_ids), len(output.response_mask), len(output.response_logprobs)}
        assert len(lengths) == 1
        assert output.response_mask[-1] == 1  # the reward lands on a policy token
        assert decode(tokenizer, output.response_ids).rstrip().endswith("</answer>")
        info = output.extra_fields["reward_extra_info"]
        assert (info["em"], info["searches"], info["variants_per_search"]) == (1.0, 1.0, 2.0)


def test_the_secret_reaches_the_response_only_as_environment_tokens(
    scripted_outputs: list[Any], tokenizer: Any
) -> None:
    for output in scripted_outputs:
        ids, mask = output.response_ids, output.response_mask
        assert SECRET in decode(tokenizer, ids), "vacuous unless the passages came back"
        policy_text = decode(tokenizer, [token for token, bit in zip(ids, mask, strict=True) if bit])
        assert SECRET not in policy_text
        environment = [token for token, bit in zip(ids, mask, strict=True) if not bit]
        assert SECRET in decode(tokenizer, environment)
        assert all(lp == 0.0 for lp, bit in zip(output.response_logprobs, mask, strict=True) if not bit)


def test_every_sample_reports_the_same_float_metrics(scripted_outputs: list[Any]) -> None:
    for output in scripted_outputs:
        info = output.extra_fields["reward_extra_info"]
        assert tuple(info) == REWARD_EXTRA_KEYS
        assert all(isinstance(value, float) for value in info.values())


def test_the_random_model_turns_fit_the_budget_and_each_gets_what_is_left(
    tiny_policy_dir: Path, stamped_retriever: str, rows_file: Path, tokenizer: Any
) -> None:
    response_length = 60
    config = compose_trainer_config(
        tiny_policy_dir,
        rows_file,
        settings_for(stamped_retriever, max_turn_tokens=40),
        prompt_length=1024,
        response_length=response_length,
    )
    server = EngineServer(lambda: TransformersEngine.from_pretrained(str(tiny_policy_dir), max_batch_size=8))
    outputs = run_rows(config, server, tokenizer, rows_file)
    for output in outputs:
        assert 0 < len(output.response_ids) <= response_length
        assert output.response_mask[-1] == 1
        policy_logprobs = [lp for lp, bit in zip(output.response_logprobs, output.response_mask, strict=True) if bit]
        assert all(lp <= 0.0 for lp in policy_logprobs)
        assert any(lp < 0.0 for lp in policy_logprobs)
    assert max(server.max_tokens_seen) == 40
    assert min(server.max_tokens_seen) < 40  # a later turn was offered only what was left of the 60


def test_an_over_long_prompt_is_cut_from_the_left_before_it_is_sent(
    tiny_policy_dir: Path, stamped_retriever: str, rows_file: Path, answers: dict[str, str], tokenizer: Any
) -> None:
    config = compose_trainer_config(
        tiny_policy_dir, rows_file, settings_for(stamped_retriever), prompt_length=48, response_length=400
    )
    server = EngineServer(lambda: scripted_engine(str(tiny_policy_dir), answers))
    for output in run_rows(config, server, tokenizer, rows_file):
        assert len(output.prompt_ids) == 48
        assert output.extra_fields["reward_extra_info"]["prompt_truncated"] == 1.0
        assert output.reward_score == 1.0  # the question, at the prompt's end, survived the cut


# ------------------------------------------------------------------------------------------- shaping


def search_turn() -> TurnRecord:
    return TurnRecord("<search> q </search>", "search", "stop", ["q"], observation="o", observation_tokens=1)


def test_trailing_environment_tokens_are_dropped_so_the_reward_sits_on_a_policy_token() -> None:
    trajectory = hand_built_trajectory([search_turn(), search_turn()], None)  # (policy, policy, env) twice
    assert trajectory.response_mask[-1] == 0
    shaped = shape_response(trajectory, response_length=100)
    assert (shaped.mask, shaped.dropped_env_tokens, shaped.cut_policy_tokens) == ([1, 1, 0, 1, 1], 1, 0)


def test_a_response_over_the_limit_is_cut_and_loses_its_reward() -> None:
    trajectory = hand_built_trajectory([search_turn(), search_turn()], None)
    trajectory.reward = 1.0
    output = to_agent_loop_output(trajectory, Limits(prompt_length=3, response_length=4))
    assert output.response_mask == [1, 1, 0, 1]
    assert len(output.response_ids) == len(output.response_logprobs) == 4
    assert len(output.prompt_ids) == 3
    assert output.reward_score == 0.0  # the end of the rewarded turn was cut away
    info = output.extra_fields["reward_extra_info"]
    assert (info["response_truncated"], info["prompt_truncated"]) == (1.0, 0.0)


# ------------------------------------------------------------------------------------------- turns and rows


def test_classify_stop_tells_a_stop_an_end_token_and_a_cut_turn_apart(tokenizer: Any) -> None:
    stop = ("</search>", "</answer>")
    ends = end_of_turn_ids(tokenizer, names=VERL_END_TOKENS)
    searched = tokenizer.encode("<search> a </search>", add_special_tokens=False)
    cut = tokenizer.encode("<search> a b c", add_special_tokens=False)

    def classify(ids: list[int], max_tokens: int) -> str:
        return classify_stop(ids, max_tokens, stop, tokenizer=tokenizer, end_ids=ends, server_reason="completed")

    assert classify(searched, 100) == "stop"
    assert classify(cut, len(cut)) == "length"
    assert classify([*cut, tokenizer.eos_token_id], 100) == "eos"


def test_the_engine_sends_one_request_id_and_the_remaining_budget(tiny_policy_dir: Path, tokenizer: Any) -> None:
    seen: list[tuple[str, int]] = []

    class Recording(EngineServer):
        async def generate(self, request_id: str, **kwargs: Any) -> Any:
            seen.append((request_id, kwargs["sampling_params"]["max_tokens"]))
            return await super().generate(request_id, **kwargs)

    server = Recording(lambda: TransformersEngine.from_pretrained(str(tiny_policy_dir)))
    engine = ServerManagerEngine(
        server, "trajectory-7", tokenizer, base_params=SAMPLING, prompt_limit=100, response_limit=30
    )

    prompt = tokenizer.encode("Question: who?", add_special_tokens=False)
    observation = tokenizer.encode(" observation ", add_special_tokens=False)

    async def two_turns() -> tuple[Generation, Generation]:
        first = await engine.generate(prompt, SamplingParams(max_new_tokens=20, stop=("</search>",)))
        context = [*prompt, *first.token_ids, *observation]
        return first, await engine.generate(context, SamplingParams(max_new_tokens=20, stop=("</search>",)))

    first, second = asyncio.run(two_turns())
    assert [request_id for request_id, _ in seen] == ["trajectory-7", "trajectory-7"]
    left = 30 - len(first.token_ids) - len(observation)
    assert [max_tokens for _, max_tokens in seen] == [20, max(1, min(20, left))]
    assert len(second.token_ids) <= seen[1][1]


def test_verl_sampling_params_become_ours() -> None:
    params = sampling_from_verl({"temperature": 0, "top_p": 1.0, "max_tokens": 7, "stop": ["</answer>"]})
    assert (params.max_new_tokens, params.temperature, params.stop) == (7, 0.0, ("</answer>",))
    assert sampling_from_verl({"temperature": 0.7, "top_k": 1}).temperature == 0.0


def test_rows_give_question_golds_and_id_and_bad_rows_say_what_is_missing(
    tiny_policy_dir: Path, rows_file: Path, tokenizer: Any, stamped_retriever: str, tiny_world: World
) -> None:
    import numpy as np

    config = compose_trainer_config(
        tiny_policy_dir, rows_file, settings_for(stamped_retriever), prompt_length=512, response_length=64
    )
    row = read_row(row_kwargs(dataset_batch(config, tokenizer, rows_file), 0))
    first = tiny_world.questions["test"][0]
    assert (row.question, row.golden_answers) == (first.question, tuple(first.golden_answers))
    assert row.example_id == f"synthetic/{first.id}"
    numpy_golds = {"ground_truth": {"target": np.array(["a", "b"], dtype=object)}}
    assert read_row({"extra_info": {"question": "q"}, "reward_model": numpy_golds}).golden_answers == ("a", "b")
    with pytest.raises(ValueError, match=r"reward_model\.ground_truth\.target"):
        read_row({"extra_info": {"question": "q"}})


def test_settings_come_from_the_custom_slot_and_the_yaml_wins(
    tiny_policy_dir: Path, rows_file: Path, stamped_retriever: str
) -> None:
    config = compose_trainer_config(
        tiny_policy_dir, rows_file, settings_for(stamped_retriever), prompt_length=512, response_length=64
    )
    assert read_settings(config).retriever.urls == (stamped_retriever,)
    assert read_settings(config, {"episode": {"max_turns": 2}, "squeezer": "extractive"}).episode.max_turns == 2
    with pytest.raises(ValueError, match=r"custom\.expandsearch: unknown config key 'episode\.bogus'"):
        read_settings(config, {"episode": {"bogus": 1}})
    config.actor_rollout_ref.rollout.custom = None
    with pytest.raises(ValueError, match=r"needs retriever\.urls"):
        read_settings(config)
