"""Shared pieces of the verl-backend tests: verl's own trainer config composed for a tiny local policy, our parquet
read by verl's ``RLHFDataset`` into rows exactly as verl's workers see them, and engines to serve."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from agent_env.engine import LLMEngine
from agent_env.scripted import ScriptedPolicy
from data_prep.formats import QAExample, write_verl_parquet
from data_prep.synthetic import World
from expandsearch.verl_backend.settings import CUSTOM_KEY, AgentLoopSettings
from retriever_server.bm25 import BM25Index
from retriever_server.corpus import Passage
from retriever_server.server import ServerThread, create_app
from train_configs import config_path

SECRET = "ZQXSECRETQZX"
"""Stamped into every passage of the test index: it may reach a response only as environment tokens."""


@contextlib.contextmanager
def stamped_retriever(world: World) -> Iterator[str]:
    """A real retriever server (free port) over the world's passages, each stamped with :data:`SECRET`."""
    passages = [Passage(p.id, p.title, f"{p.text} Internal note {SECRET} ends here.") for p in world.passages]
    index = BM25Index.build(passages)
    index.search("compile the kernels now, not under the first request's timeout", 1)
    with ServerThread(create_app(index)) as server:
        yield server.url


def verl_config_dir() -> str:
    import verl

    return str(Path(verl.__file__).parent / "trainer" / "config")


def compose_trainer_config(
    model_dir: Path,
    data_file: Path,
    settings: AgentLoopSettings,
    *,
    prompt_length: int,
    response_length: int,
    overrides: Sequence[str] = (),
) -> Any:
    """verl 0.9.1's ``ppo_trainer`` config with our agent loop, our parquet and a tiny local policy."""
    import hydra
    from omegaconf import OmegaConf

    with hydra.initialize_config_dir(config_dir=verl_config_dir(), version_base=None):
        config = hydra.compose(
            "ppo_trainer",
            overrides=[
                f"actor_rollout_ref.model.path={model_dir}",
                "actor_rollout_ref.rollout.name=vllm",
                f"actor_rollout_ref.rollout.prompt_length={prompt_length}",
                f"actor_rollout_ref.rollout.response_length={response_length}",
                f"data.max_prompt_length={prompt_length}",
                f"data.max_response_length={response_length}",
                "actor_rollout_ref.rollout.multi_turn.enable=true",
                "actor_rollout_ref.rollout.calculate_log_probs=true",
                f"actor_rollout_ref.rollout.agent.agent_loop_config_path={config_path('verl/agent_loops.yaml')}",
                f"data.train_files=[{data_file}]",
                f"data.val_files=[{data_file}]",
                # verl drops rows whose prompt is over max_prompt_length; the agent loop must cut them itself
                "data.filter_overlong_prompts=false",
                *overrides,
            ],
        )
    OmegaConf.set_struct(config, False)
    config.actor_rollout_ref.rollout.custom = {CUSTOM_KEY: settings.to_mapping()}
    return config


def write_rows(examples: Sequence[QAExample], path: Path) -> Path:
    write_verl_parquet(examples, path, data_source="synthetic", split="test")
    return path


def dataset_batch(config: Any, tokenizer: Any, data_file: Path) -> Any:
    """Our parquet through verl's ``RLHFDataset`` and ``collate_fn``, as a ``DataProto`` (what the trainer hands its
    rollout manager, before the ``n``-fold repeat)."""
    from verl.protocol import DataProto
    from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn

    dataset = RLHFDataset(data_files=[str(data_file)], tokenizer=tokenizer, config=config.data)
    return DataProto.from_single_dict(collate_fn([dataset[index] for index in range(len(dataset))]))


def row_kwargs(batch: Any, position: int) -> dict[str, Any]:
    """Row ``position`` of a batch as verl's ``AgentLoopWorker`` passes it to ``run`` (numpy values included)."""
    return {key: values[position] for key, values in batch.non_tensor_batch.items()}


class SearchThenAnswer:
    """A scripted policy's turns: search for the question (two variants), then, once passages came back, answer
    with the gold of the question in the context."""

    def __init__(self, answers: Mapping[str, str]) -> None:
        self.answers = dict(answers)

    def __call__(self, context: str) -> str:
        question = next((q for q in self.answers if q in context), "")
        if SECRET not in context:
            return f"<think> look it up </think> <search> {question} ## {question} who </search>"
        return f"<think> found it </think> <answer> {self.answers.get(question, 'unknown')} </answer>"


def scripted_engine(model_dir: str, answers: Mapping[str, str]) -> LLMEngine:
    """The factory of a :class:`ScriptedPolicy` playing :class:`SearchThenAnswer` (runs in a Ray actor too)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    return ScriptedPolicy(tokenizer, SearchThenAnswer(answers))
