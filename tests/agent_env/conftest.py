"""Fixtures and helpers for the episode, rollout and search tests.

Everything is real: a random-weight tiny Qwen2 with its locally trained tokenizer, BM25 over the tiny synthetic
world, a uvicorn retriever server on a free port. Policies that must write specific actions are
:class:`~agent_env.scripted.ScriptedPolicy` scripts; :class:`RecordingEngine` wraps any engine and keeps every
call, so tests can compare the trajectory with exactly what the engine produced.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support import CountingBM25

from agent_env.engine import Generation, LLMEngine, SamplingParams, TransformersEngine
from agent_env.scripted import ScriptedPolicy
from data_prep.synthetic import World
from retriever_server.bm25 import BM25Index
from retriever_server.corpus import Passage
from retriever_server.server import ServerThread, create_app

SECRET = "ZEBRA-SECRET-7731"
"""Stamped into retrieved passages: it must never count as policy-sampled text."""

ASSISTANT = "<|im_start|>assistant"
FEEDBACK_END = "Please try again."
"""The last words of the invalid-action feedback (``agent_env.protocol.invalid_action_feedback``)."""


@pytest.fixture(scope="session")
def policy_tokenizer(tiny_policy_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_policy_dir, local_files_only=True)


@pytest.fixture(scope="session")
def world_index(tiny_world: World) -> CountingBM25:
    index = CountingBM25.build(tiny_world.passages)
    assert isinstance(index, CountingBM25)
    index.search("warm up numba")  # the first numba retrieval compiles for seconds
    return index


@pytest.fixture(scope="session")
def secret_index(tiny_world: World) -> BM25Index:
    """The world's passages, each stamped with :data:`SECRET`."""
    stamped = [Passage(p.id, p.title, f"{p.text} Internal note {SECRET} ends here.") for p in tiny_world.passages]
    index = BM25Index.build(stamped)
    index.search("warm up numba")
    return index


@pytest.fixture(scope="session")
def world_server(world_index: CountingBM25) -> Iterator[str]:
    """A real retriever server over the world index; its ``/info`` counters show how requests were batched."""
    with ServerThread(create_app(world_index)) as server:
        yield server.url


@pytest.fixture(scope="module")
def tiny_engine(tiny_policy_dir: Path) -> Iterator[TransformersEngine]:
    """The random-weight tiny Qwen2 behind the micro-batching engine, decoding on one CPU thread.

    One thread: on a machine shared with other test workers, two torch threads fight over the cores and decode
    several times slower.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield TransformersEngine.from_pretrained(str(tiny_policy_dir), device="cpu", seed=0)
    torch.set_num_threads(threads)


def assistant_text(context: str) -> str:
    """What follows the generation prompt: the policy's turns and the environment's insertions so far.

    (The prompt template itself mentions ``<information>``, so scripts must not look before this point.)
    """
    return context.rsplit(ASSISTANT, 1)[-1]


def turns_taken(context: str) -> int:
    """Policy turns so far, counted by the environment replies that followed them."""
    tail = assistant_text(context)
    return tail.count("</information>") + tail.count(FEEDBACK_END)


def question_of(context: str) -> str:
    """The question of the episode, read back from the prompt template's ``Question: …`` line."""
    return context.split("Question: ", 1)[1].split("\n", 1)[0]


def script(tokenizer: Any, turns: Sequence[str], **options: Any) -> ScriptedPolicy:
    """A policy writing ``turns[i]`` as its i-th turn (the last one again once they run out)."""
    return ScriptedPolicy(tokenizer, lambda context: turns[min(turns_taken(context), len(turns) - 1)], **options)


@dataclass
class Call:
    prompt_ids: list[int]
    sampling: SamplingParams
    generation: Generation


class RecordingEngine:
    """Wraps an engine and keeps every call (prompt, sampling, generation) in order."""

    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self.calls: list[Call] = []

    @property
    def max_context_tokens(self) -> int | None:
        return self.engine.max_context_tokens

    async def generate(self, prompt_ids: Sequence[int], sampling: SamplingParams) -> Generation:
        generation = await self.engine.generate(prompt_ids, sampling)
        self.calls.append(Call(list(prompt_ids), sampling, generation))
        return generation


class ScriptThenModel:
    """Scripted first turns (with a recognisable log-prob), then the real model writes the rest."""

    SCRIPT_LOGPROB = -0.25

    def __init__(self, tokenizer: Any, first_turns: Sequence[str], model: LLMEngine) -> None:
        self.tokenizer = tokenizer
        self.first_turns = list(first_turns)
        self.model = model

    @property
    def max_context_tokens(self) -> int | None:
        return self.model.max_context_tokens

    async def generate(self, prompt_ids: Sequence[int], sampling: SamplingParams) -> Generation:
        turn = turns_taken(self.tokenizer.decode(list(prompt_ids), skip_special_tokens=False))
        if turn >= len(self.first_turns):
            return await self.model.generate(prompt_ids, sampling)
        ids = list(self.tokenizer.encode(self.first_turns[turn], add_special_tokens=False))[: sampling.max_new_tokens]
        return Generation(ids, [self.SCRIPT_LOGPROB] * len(ids), "stop")


# ---------------------------------------------------------------------------------------------- trajectories


def mask_runs(mask: Sequence[int]) -> list[tuple[int, int, int]]:
    """Maximal runs of equal mask values as ``(value, start, end)``."""
    runs: list[tuple[int, int, int]] = []
    start = 0
    for position in range(1, len(mask) + 1):
        if position == len(mask) or mask[position] != mask[start]:
            runs.append((mask[start], start, position))
            start = position
    return runs


def run_texts(tokenizer: Any, ids: Sequence[int], mask: Sequence[int], value: int) -> list[str]:
    """Each maximal run of ``mask == value`` decoded on its own."""
    return [
        tokenizer.decode(list(ids[start:end]), skip_special_tokens=False)
        for run_value, start, end in mask_runs(mask)
        if run_value == value
    ]


def token_windows(decode: Callable[[list[int]], str], ids: Sequence[int], needle: str) -> list[range]:
    """For each occurrence of ``needle`` in the decoded ids, the smallest token range whose text contains it."""
    windows: list[range] = []
    start = 0
    while True:
        end = start
        while end <= len(ids) and needle not in decode(list(ids[start:end])):
            end += 1
        if end > len(ids):
            return windows
        first = end - 1
        while needle not in decode(list(ids[first:end])):
            first -= 1
        windows.append(range(first, end))
        start = end
