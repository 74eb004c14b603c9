"""What ``expandsearch train`` reads: parquet questions, preflight checks, retriever fail-over, policy settings."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from support import free_port

from data_prep.formats import QAExample, write_verl_parquet
from data_prep.synthetic import World, write_world
from expandsearch.config import ConfigError, config_from_dict
from expandsearch.rl.config import PolicySection, TrainConfig
from expandsearch.rl.sources import RunSetupError, load_policy, preflight, read_questions
from expandsearch.rl.tasks import build_task
from retriever_server.bm25 import BM25Index
from retriever_server.client import RetrieverUnavailableError
from retriever_server.corpus import Passage
from retriever_server.server import ServerThread, create_app


@pytest.fixture(scope="module")
def world_files(tiny_world: World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world_files")
    write_world(tiny_world, out)
    return out


def files_config(tmp_path: Path, **sections: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "run_dir": str(tmp_path / "run"),
        "data": {
            "world": None,
            "train_files": [str(tmp_path / "train.parquet")],
            "val_files": [str(tmp_path / "v.parquet")],
        },
        "policy": {"model": "smollm2"},
        "retriever": {"index": str(tmp_path / "index")},
        "warm_start": {"kind": "none"},
    }
    for key, value in sections.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return base


# --- questions -------------------------------------------------------------------------------------------------------


def test_world_parquet_becomes_episode_inputs_with_types(world_files: Path, tiny_world: World) -> None:
    questions = read_questions([str(world_files / "test.parquet")])
    examples = tiny_world.questions["test"]
    assert [item.question for item in questions.inputs] == [example.question for example in examples]
    assert [item.golden_answers for item in questions.inputs] == [tuple(e.golden_answers) for e in examples]
    assert questions.inputs[0].example_id == f"synthetic/{examples[0].id}"
    assert {questions.types[f"synthetic/{e.id}"] for e in examples} == {e.metadata["type"] for e in examples}


def test_limits_keep_file_order_or_a_seeded_sample(world_files: Path) -> None:
    path = [str(world_files / "train.parquet")]
    everything = read_questions(path)
    assert read_questions(path, limit=5).inputs == everything.inputs[:5]
    sample = read_questions(path, limit=5, shuffle_seed=3)
    assert sample.inputs == read_questions(path, limit=5, shuffle_seed=3).inputs
    assert sample.inputs != everything.inputs[:5]
    assert set(sample.types) == {item.example_id for item in sample.inputs}


def test_several_files_are_concatenated_and_ids_must_not_repeat(world_files: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.parquet"
    write_verl_parquet([QAExample("q1", "Who?", ["Ann"])], other, data_source="nq", split="train")
    both = read_questions([str(world_files / "test.parquet"), str(other)])
    assert both.inputs[-1].example_id == "nq/q1"
    assert both.types["nq/q1"] == "all"
    with pytest.raises(RunSetupError, match="appears twice"):
        read_questions([str(other), str(other)])


def test_task_reads_the_configured_files(world_files: Path, tmp_path: Path) -> None:
    data = {"train_files": [str(world_files / "train.parquet")], "val_files": [str(world_files / "test.parquet")]}
    config = config_from_dict(TrainConfig, files_config(tmp_path, data={**data, "max_train_questions": 7}))
    task = build_task(config)
    assert len(task.train.inputs) == 7
    assert len(task.held_out.inputs) == len(read_questions(data["val_files"]).inputs)
    assert task.score([]) == []


# --- validation and preflight ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"data": {"world": {"size": "tiny"}}}, "data.world and data.train_files"),
        ({"retriever": {"index": None}}, "no retriever"),
        ({"warm_start": {"kind": "sft"}}, "needs warm_start.sft.demonstrations"),
        ({"policy": {"model": "tiny"}}, "built by warm_start.kind world_expert"),
        ({"warm_start": {"kind": "world_expert"}}, "needs data.world"),
        ({"retriever": {"urls": ["http://127.0.0.1:1"]}}, "retriever.index and retriever.urls at once"),
        ({"algorithm": {"estimator": "gae", "filter_groups": {"enable": True}}}, "filter_groups filters GRPO"),
        ({"algorithm": {"filter_groups": {"max_num_gen_batches": 0}}}, "max_num_gen_batches must be >= 1"),
    ],
)
def test_inconsistent_sections_are_refused(tmp_path: Path, sections: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict(TrainConfig, files_config(tmp_path, **sections))


def write_files(tmp_path: Path, world_files: Path) -> None:
    for name, source in (("train.parquet", "train"), ("v.parquet", "test")):
        (tmp_path / name).write_bytes((world_files / f"{source}.parquet").read_bytes())


def test_preflight_names_what_to_fix(world_files: Path, tmp_path: Path, tiny_policy_dir: Path) -> None:
    from retriever_server.index_dir import build_index

    write_files(tmp_path, world_files)
    build_index(world_files / "corpus.jsonl", "bm25", tmp_path / "index", progress=False)
    good = files_config(tmp_path, policy={"model": str(tiny_policy_dir)})
    preflight(config_from_dict(TrainConfig, good))  # all there: no error
    pd.DataFrame({"question": ["x"]}).to_parquet(tmp_path / "plain.parquet")
    dead = f"http://127.0.0.1:{free_port()}"
    cases = [
        ({"data": {"train_files": [str(tmp_path / "missing.parquet")]}}, "data file not found"),
        ({"data": {"train_files": [str(tmp_path / "plain.parquet")]}}, "not a verl RL parquet"),
        ({"policy": {"model": str(tmp_path / "no_model")}}, "policy.model: no model at"),
        ({"retriever": {"index": str(tmp_path)}}, "is not an index directory"),
        ({"retriever": {"index": None, "urls": [dead]}}, "retriever.urls[0]"),
        ({"squeezer": f"openai:{dead}/v1#m"}, "squeezer: "),
        ({"squeezer": "bogus"}, "unknown kind"),
    ]
    for sections, message in cases:
        merged = {key: {**good[key], **value} if isinstance(value, dict) else value for key, value in sections.items()}
        with pytest.raises(RunSetupError, match=message.replace("[", r"\[")):
            preflight(config_from_dict(TrainConfig, {**good, **merged}))


# --- retriever fail-over ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live_server() -> Iterator[str]:
    passages = [Passage(str(i), f"Title {i}", f"passage number {i} about topic{i}") for i in range(20)]
    with ServerThread(create_app(BM25Index.build(passages))) as server:
        yield server.url


def test_failover_search_goes_on_past_a_dead_server(live_server: str) -> None:
    from agent_env.search import FailoverSearch

    dead = f"http://127.0.0.1:{free_port()}"

    async def run() -> tuple[list[Any], int]:
        search = FailoverSearch.from_urls([dead, live_server], retries=0, timeout=60)
        try:
            answers = [await search.search(["topic3", "topic4"], 2) for _ in range(4)]
        finally:
            await search.aclose()
        return answers, search.failovers

    answers, failovers = asyncio.run(run())
    assert all(hits[0][0].id == "3" and hits[1][0].id == "4" for hits in answers)
    assert failovers == 2  # the batches that started at the dead server (every other one) moved on


def test_failover_search_fails_when_every_server_is_down() -> None:
    from agent_env.search import FailoverSearch

    async def run() -> None:
        search = FailoverSearch.from_urls([f"http://127.0.0.1:{free_port()}"] * 2, retries=0, timeout=60)
        try:
            await search.search(["anything"], 2)
        finally:
            await search.aclose()

    with pytest.raises(RetrieverUnavailableError):
        asyncio.run(run())


# --- the policy's settings -------------------------------------------------------------------------------------------


def test_policy_settings_freeze_embeddings_and_checkpoint(tiny_policy_dir: Path) -> None:
    model, _ = load_policy(
        str(tiny_policy_dir), PolicySection(trainable="all_but_embeddings", gradient_checkpointing=True)
    )
    assert not model.get_input_embeddings().weight.requires_grad
    assert any(parameter.requires_grad for parameter in model.parameters())
    assert model.is_gradient_checkpointing
    model, _ = load_policy(str(tiny_policy_dir), PolicySection(dtype="bfloat16"))
    assert next(model.parameters()).dtype.is_floating_point
    assert str(next(model.parameters()).dtype) == "torch.bfloat16"
