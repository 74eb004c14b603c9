"""``expandsearch chat``: the CLI end to end with the tiny policy, its errors, and the turn-by-turn view."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest
from rich.console import Console
from support import run_expandsearch

from agent_env.episode import AgentEnv, EpisodeConfig, run_episode
from agent_env.models import load_tokenizer
from agent_env.scripted import ScriptedPolicy
from agent_env.search import LocalSearch
from agent_env.squeezers import Squeezer, SqueezeRequest
from data_prep.synthetic import World
from expandsearch.cli import main
from expandsearch.commands.chat import show_trajectory
from retriever_server.corpus import write_wiki18_jsonl
from retriever_server.index_dir import build_index, load_index


@pytest.fixture(scope="module")
def world_index_dir(tiny_world: World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("chat_index")
    write_wiki18_jsonl(tiny_world.passages, folder / "corpus.jsonl")
    build_index(folder / "corpus.jsonl", "bm25", folder / "index", progress=False)
    return folder / "index"


def chat(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return run_expandsearch("chat", *args, timeout=timeout)


def test_once_json_prints_the_full_trace(tiny_policy_dir: Path, world_index_dir: Path, tiny_world: World) -> None:
    question = tiny_world.questions["test"][0].question
    result = chat(
        "--model",
        str(tiny_policy_dir),
        "--index",
        str(world_index_dir),
        "--once",
        question,
        "--json",
        "--turn-tokens",
        "32",
    )
    assert result.returncode == 0, result.stderr
    trace = json.loads(result.stdout)
    assert trace["question"] == question
    assert trace["num_turns"] == len(trace["turns"]) >= 1
    assert len(trace["response_ids"]) == len(trace["response_mask"]) == len(trace["response_logprobs"])
    assert trace["prompt_ids"], "the trace carries the prompt's token ids"


def test_once_prints_turns_and_the_answer_line(tiny_policy_dir: Path, world_index_dir: Path) -> None:
    result = chat(
        "--model",
        str(tiny_policy_dir),
        "--index",
        str(world_index_dir),
        "--once",
        "Who founded Xol?",
        "--max-turns",
        "2",
    )
    assert result.returncode == 0, result.stderr
    assert "turn 1" in result.stdout
    assert "turn 2" in result.stdout
    assert "answer:" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "/no/such/model", "--index", "{index}"], "no model at /no/such/model"),
        (["--model", "{model}", "--index", "/no/such/index"], "cannot load index /no/such/index"),
        (["--model", "{model}", "--retriever-url", "http://127.0.0.1:9"], "is not reachable"),
        (["--model", "{model}", "--index", "{index}", "--squeezer", "magic"], "unknown squeezer 'magic'"),
    ],
)
def test_setup_errors_are_one_clear_line(
    args: list[str], message: str, tiny_policy_dir: Path, world_index_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    filled = [arg.format(model=tiny_policy_dir, index=world_index_dir) for arg in args]
    assert main(["chat", *filled, "--once", "anything"]) == 2  # in-process: the same CLI, without the start-up
    stderr = capsys.readouterr().err
    assert message in stderr
    assert len(stderr.strip().splitlines()) == 1


class _EchoSqueezer(Squeezer):
    name = "echo"

    async def _summarize(self, request: SqueezeRequest) -> str:
        return f"SUMMARY of {len(request.passages)} passages for {' | '.join(request.queries)}"


def test_view_shows_thinking_variants_passages_summary_and_answer(
    tiny_policy_dir: Path, world_index_dir: Path, tiny_world: World
) -> None:
    tokenizer = load_tokenizer(tiny_policy_dir)
    name = tiny_world.passages[0].title

    def respond(context: str) -> str:
        if "<information>" in context.split("<|im_start|>assistant")[-1]:
            return "<think> found it </think><answer> Kalmar </answer>"
        return f"<think> look up the founder </think><search> {name} founder ## {name} founded by </search>"

    env = AgentEnv(
        ScriptedPolicy(tokenizer, respond),
        tokenizer,
        LocalSearch(load_index(world_index_dir)),
        _EchoSqueezer(),
        EpisodeConfig(),
    )
    trajectory = asyncio.run(run_episode(env, f"Who founded {name}?"))
    console = Console(record=True, width=200)
    show_trajectory(trajectory, console)
    shown = console.export_text()
    for expected in (
        "look up the founder",
        f"variant 1: {name} founder",
        f"variant 2: {name} founded by",
        "SUMMARY of",
    ):
        assert expected in shown
    first_title = trajectory.turns[0].hits_per_query[0][0]["title"]
    assert first_title in shown, "the top passage of each variant is listed"
    assert "answer: Kalmar" in shown
