"""``expandsearch serve-ui``'s API over HTTP: a real server on a free port, real BM25, real squeezers and engines.

The policy is a :class:`~agent_env.scripted.ScriptedPolicy` where a test needs a known action (two variants that
retrieve the same passage, a search for the hostile passage) and the tiny random Qwen2 where any action will do.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from ui_support import EVIL_QUERY, EVIL_TEXT, EVIL_TITLE, ui_app_server, ui_server

from agent_env.assembly import EnvSpec, build_env, close_env
from agent_env.episode import AgentEnv, EpisodeConfig
from agent_env.models import load_tokenizer
from agent_env.openai_compat import OpenAIChatSqueezer
from agent_env.scripted import ScriptedPolicy
from agent_env.search import HttpSearch, LocalSearch
from agent_env.squeezers import make_squeezer
from data_prep.synthetic import World
from expandsearch.ui.live import LiveLimits
from retriever_server.index_dir import load_index
from retriever_server.server import ServerThread, create_app


def read_events(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in response.text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in lines:
            events.append((lines["event"], json.loads(lines["data"])))
    return events


def two_variant_policy(tokenizer: Any, name: str) -> Callable[[str], str]:
    """Searches ``name`` with two variants (which retrieve passages in common), then answers."""

    def respond(context: str) -> str:
        if "<information>" in context.split("<|im_start|>assistant")[-1]:
            return "<think> the summary names it </think><answer> Kalmar </answer>"
        return f"<think> look {name} up </think><search> {name} ## {name} founded </search>"

    return respond


def scripted_env(tokenizer: Any, respond: Callable[[str], str], search: Any, squeezer: Any) -> AgentEnv:
    return AgentEnv(ScriptedPolicy(tokenizer, respond), tokenizer, search, squeezer, EpisodeConfig(temperature=0.0))


@pytest.fixture(scope="module")
def tokenizer(tiny_policy_dir: Path) -> Any:
    return load_tokenizer(tiny_policy_dir)


@pytest.fixture(scope="module")
def scripted_url(tokenizer: Any, ui_index_dir: Path, tiny_world: World) -> Iterator[str]:
    name = tiny_world.passages[0].title

    async def build() -> AgentEnv:
        search = LocalSearch(load_index(ui_index_dir))
        return scripted_env(tokenizer, two_variant_policy(tokenizer, name), search, make_squeezer("extractive"))

    with ui_server(build, limits=LiveLimits(max_question_chars=200, max_concurrent_episodes=2)) as url:
        yield url


def ask(url: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{url}/api/episodes", json=body, timeout=120)


def test_an_episode_streams_its_turns_then_the_answer(scripted_url: str, tiny_world: World) -> None:
    name = tiny_world.passages[0].title
    response = ask(scripted_url, question=f"Who founded {name}?")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = read_events(response)
    names = [event for event, _ in events]
    assert names == ["start", "turn", "turn", "turn", "turn", "end"]
    assert [data["phase"] for event, data in events if event == "turn"] == [
        "generated",
        "retrieved",
        "observed",
        "generated",
    ]
    first = events[3][1]["turn"]  # turn 1 after its observation: everything in
    assert first["thinking"] == [f"look {name} up"]
    assert first["queries"] == [name, f"{name} founded"]
    assert all(variant["searched"] and variant["hits"] for variant in first["variants"])
    assert first["observation_kind"] == "summary"
    assert first["observation"]
    assert first["policy_tokens"] > 0
    assert first["observation_tokens"] > 0
    assert first["generation_s"] > 0
    shared = [hit for hit in first["variants"][1]["hits"] if hit["repeat"]]
    assert shared, "a passage of variant 1 found again by variant 2 is marked"
    assert all(hit["found_by"][0] == 0 for hit in shared)
    assert events[-1][1]["answer"] == "Kalmar"
    assert events[-1][1]["termination"] == "answer"


def test_settings_reach_the_episode(scripted_url: str, tiny_world: World) -> None:
    name = tiny_world.passages[0].title
    events = read_events(ask(scripted_url, question=f"Who founded {name}?", topk=1, one_query=True, squeezer=False))
    start = events[0][1]
    assert start["settings"]["topk"] == 1
    assert start["settings"]["one_query"]
    assert start["squeezer"] == "none"
    turn = [data["turn"] for event, data in events if event == "turn"][2]
    assert turn["variants"][0]["searched"]
    assert len(turn["variants"][0]["hits"]) == 1
    assert not turn["variants"][1]["searched"], "one query per search: the second variant is written, not run"
    assert turn["observation"].startswith("Doc 1 (Title: "), "squeezer off: the raw passages"
    one_turn = read_events(ask(scripted_url, question=f"Who founded {name}?", max_turns=1))
    assert [event for event, _ in one_turn].count("turn") == 1
    assert one_turn[-1][1]["termination"] == "max_turns"


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"question": "x" * 201}, 422, "the question has 201 characters; the limit is 200"),
        ({"question": "   "}, 422, "the question is empty"),
        ({"question": "q", "max_variants": 99}, 422, "max_variants"),
        ({"question": "q", "topk": 0}, 422, "topk"),
        ({"question": "q", "surprise": 1}, 422, "surprise"),
        ({}, 422, "question"),
    ],
)
def test_bad_requests_get_a_clear_error(scripted_url: str, body: dict[str, Any], status: int, message: str) -> None:
    response = ask(scripted_url, **body)
    assert response.status_code == status
    assert message in response.json()["error"]


def test_bodies_that_are_too_large_or_not_json(scripted_url: str) -> None:
    big = httpx.post(f"{scripted_url}/api/episodes", content=b"{" + b" " * 20_000 + b"}", timeout=30)
    assert big.status_code == 413
    broken = httpx.post(
        f"{scripted_url}/api/episodes", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert broken.status_code == 400
    assert "not valid JSON" in broken.json()["error"]


def test_the_page_and_its_safety_headers(scripted_url: str) -> None:
    page = httpx.get(scripted_url)
    assert page.status_code == 200
    assert "<title>ExpandSearch</title>" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    script = httpx.get(f"{scripted_url}/static/app.js")
    assert script.status_code == 200
    html_sinks = re.findall(r"(?:inner|outer)HTML\s*\+?=|insertAdjacentHTML|document\.write|\beval\(", script.text)
    assert not html_sinks, "the page never parses data as HTML"
    info = httpx.get(f"{scripted_url}/api/info").json()
    assert info["live"]
    assert not info["traces"]
    assert info["settings"]["max_variants"] == 3


def test_the_hostile_passage_travels_as_data(tokenizer: Any, ui_index_dir: Path) -> None:
    def respond(context: str) -> str:
        if "<information>" in context.split("<|im_start|>assistant")[-1]:
            return "<answer> quaxite </answer>"
        return f"<search> {EVIL_QUERY} </search>"

    async def build() -> AgentEnv:
        return scripted_env(tokenizer, respond, LocalSearch(load_index(ui_index_dir)), make_squeezer("none"))

    with ui_server(build) as url:
        events = read_events(ask(url, question="What is Zorbulon?"))
    hits = [data["turn"] for event, data in events if event == "turn"][1]["variants"][0]["hits"]
    assert hits[0]["title"] == EVIL_TITLE
    assert hits[0]["text"] == EVIL_TEXT


class ThreadedPolicy(ScriptedPolicy):
    """A scripted policy whose turns are written in a worker thread, so a turn may block without blocking the
    server's event loop (as a model engine's decoding does)."""

    async def generate(self, prompt_ids: Any, sampling: Any) -> Any:
        return await asyncio.to_thread(asyncio.run, ScriptedPolicy.generate(self, prompt_ids, sampling))


def blocking_server(tokenizer: Any, ui_index_dir: Path, release: threading.Event) -> Any:
    """A one-slot UI server whose policy waits for ``release`` before every turn."""

    def slow(context: str) -> str:
        release.wait(30)
        return "<answer> done </answer>"

    async def build() -> AgentEnv:
        search = LocalSearch(load_index(ui_index_dir))
        return AgentEnv(ThreadedPolicy(tokenizer, slow), tokenizer, search, make_squeezer("none"), EpisodeConfig())

    return ui_server(build, limits=LiveLimits(max_concurrent_episodes=1))


def test_too_many_episodes_at_once_get_429(tokenizer: Any, ui_index_dir: Path) -> None:
    release = threading.Event()
    with blocking_server(tokenizer, ui_index_dir, release) as url:
        streaming = threading.Event()

        def first_browser() -> None:
            with httpx.stream("POST", f"{url}/api/episodes", json={"question": "one"}, timeout=60) as response:
                streaming.set()  # the response has started: its episode holds the one slot
                response.read()

        first = threading.Thread(target=first_browser)
        first.start()
        assert streaming.wait(30)
        refused = ask(url, question="two")
        release.set()
        first.join(30)
        assert refused.status_code == 429
        assert "episodes are running" in refused.json()["error"]
        assert ask(url, question="three").status_code == 200, "the slot is free again once the episode ended"


def test_a_browser_that_goes_away_cancels_its_episode(tokenizer: Any, ui_index_dir: Path) -> None:
    release = threading.Event()
    with blocking_server(tokenizer, ui_index_dir, release) as url:
        with httpx.stream("POST", f"{url}/api/episodes", json={"question": "one"}, timeout=60) as response:
            assert response.status_code == 200  # then the connection closes with the episode still waiting
        deadline = time.monotonic() + 20
        while (status := opened_status(url, "two")) == 429 and time.monotonic() < deadline:
            time.sleep(0.2)
        release.set()
        assert status == 200, "the slot of an episode nobody reads any more is freed without waiting for it"


def opened_status(url: str, question: str) -> int:
    """The status of an episode request, the stream closed unread (which cancels the episode)."""
    with httpx.stream("POST", f"{url}/api/episodes", json={"question": question}, timeout=60) as response:
        return response.status_code


def test_a_retriever_that_goes_down_shows_in_the_episode_and_the_server_goes_on(
    tokenizer: Any, ui_index_dir: Path, tiny_world: World
) -> None:
    retriever = ServerThread(create_app(load_index(ui_index_dir))).start()
    name = tiny_world.passages[0].title

    async def build() -> AgentEnv:
        search = HttpSearch.from_url(retriever.url)
        return scripted_env(tokenizer, two_variant_policy(tokenizer, name), search, make_squeezer("extractive"))

    with ui_server(build, close_env=close_env) as url:
        healthy = read_events(ask(url, question=f"Who founded {name}?"))
        assert [data["turn"] for event, data in healthy if event == "turn"][2]["observation_kind"] == "summary"
        retriever.stop()
        events = read_events(ask(url, question=f"Who founded {name}?"))
        turn = [data["turn"] for event, data in events if event == "turn"][2]
        assert turn["search_error"]
        assert turn["observation_kind"] == "search_failed"
        assert "Search failed" in turn["observation"]
        assert events[-1][0] == "end", "the episode goes on after the failed search"
        assert httpx.get(f"{url}/api/info").status_code == 200


def test_a_squeezer_that_fails_falls_back_visibly(tokenizer: Any, ui_index_dir: Path, tiny_world: World) -> None:
    name = tiny_world.passages[0].title

    async def build() -> AgentEnv:
        squeezer = OpenAIChatSqueezer("http://127.0.0.1:9#squeezer", timeout_s=5)  # nothing listens on port 9
        return scripted_env(
            tokenizer, two_variant_policy(tokenizer, name), LocalSearch(load_index(ui_index_dir)), squeezer
        )

    with ui_server(build, squeezer="openai:http://127.0.0.1:9") as url:
        events = read_events(ask(url, question=f"Who founded {name}?"))
    turn = [data["turn"] for event, data in events if event == "turn"][2]
    assert turn["squeezer_error"]
    assert turn["observation_kind"] == "raw_passages"
    assert events[-1][1]["answer"] == "Kalmar"


def test_an_engine_failure_is_an_error_event(tokenizer: Any, ui_index_dir: Path) -> None:
    def broken(context: str) -> str:
        raise RuntimeError("the policy server fell over")

    async def build() -> AgentEnv:
        return scripted_env(tokenizer, broken, LocalSearch(load_index(ui_index_dir)), make_squeezer("none"))

    with ui_server(build) as url:
        events = read_events(ask(url, question="anything"))
        assert events[-1][0] == "error"
        assert "the policy server fell over" in events[-1][1]["message"]
        assert ask(url, question="again").status_code == 200, "the server keeps serving"


def test_the_bearer_token(scripted_url: str, tokenizer: Any, ui_index_dir: Path) -> None:
    async def build() -> AgentEnv:
        return scripted_env(
            tokenizer,
            lambda context: "<answer> x </answer>",
            LocalSearch(load_index(ui_index_dir)),
            make_squeezer("none"),
        )

    with ui_server(build, token="s3cret") as url:
        assert httpx.get(url).status_code == 200, "the page itself holds no data"
        assert httpx.get(f"{url}/api/info").status_code == 401
        assert ask(url, question="q").status_code == 401
        assert httpx.get(f"{url}/api/traces").status_code == 401
        authorized = {"authorization": "Bearer s3cret"}
        assert httpx.get(f"{url}/api/info", headers=authorized).status_code == 200
        wrong = httpx.post(f"{url}/api/episodes", json={"question": "q"}, headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401


def test_concurrent_browsers_share_the_tiny_models_batches(
    tiny_policy_dir: Path, ui_index_dir: Path, tiny_world: World
) -> None:
    config = EpisodeConfig(max_turn_tokens=24, temperature=0.0)
    spec = EnvSpec(str(tiny_policy_dir), index_dir=str(ui_index_dir), config=config)

    async def build() -> AgentEnv:
        return await build_env(spec)

    questions = [example.question for example in tiny_world.questions["test"][:6]]
    results: dict[str, list[tuple[str, dict[str, Any]]]] = {}

    def browser(question: str) -> None:
        results[question] = read_events(ask(url, question=question))

    with ui_app_server(build, close_env=close_env) as (url, app):
        threads = [threading.Thread(target=browser, args=(question,)) for question in questions]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        stats = app.state.agent.env.engine.batch_stats
    assert set(results) == set(questions)
    for question, events in results.items():
        assert events[0][0] == "start"
        assert events[0][1]["question"] == question
        assert events[-1][0] == "end"
    assert stats.largest_batch > 1, "episodes of different browsers were generated in one batch"


HUNG_S = 8.0


def test_an_episode_stuck_on_its_squeezer_holds_up_no_other(
    tokenizer: Any, ui_index_dir: Path, tiny_world: World
) -> None:
    name = tiny_world.passages[0].title
    silent = socket.socket()  # accepts connections (the kernel's backlog) and never answers: a hung squeezer server
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    squeezer_url = f"http://127.0.0.1:{silent.getsockname()[1]}#squeezer"

    async def build() -> AgentEnv:
        squeezer = OpenAIChatSqueezer(squeezer_url, timeout_s=HUNG_S)
        search = LocalSearch(load_index(ui_index_dir))
        await search.search([name], 1)  # BM25's first search compiles its kernels: not what this test times
        return scripted_env(tokenizer, two_variant_policy(tokenizer, name), search, squeezer)

    finished: dict[str, float] = {}

    def browser(label: str, squeezer: bool) -> None:
        events = read_events(ask(url, question=f"Who founded {name}?", squeezer=squeezer))
        assert events[-1][0] == "end"
        finished[label] = time.monotonic()

    with ui_server(build, squeezer=squeezer_url) as url:
        started = time.monotonic()
        slow = threading.Thread(target=browser, args=("hung squeezer", True))
        slow.start()
        time.sleep(0.5)  # the slow episode is waiting on its squeezer
        browser("raw passages", False)
        slow.join(60)
    silent.close()
    assert finished["raw passages"] < finished["hung squeezer"], "the second browser did not wait for the first"
    assert finished["raw passages"] - started < HUNG_S
    assert finished["hung squeezer"] - started >= HUNG_S, "the first one fell back only after its squeezer timed out"
