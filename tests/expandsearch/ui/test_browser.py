"""The page in a real headless Chromium (Debian's chromium and chromedriver, driven by Selenium).

The live view serves ``expandsearch train``'s warm-started tiny policy (``warm_policy_dir``: a real trained model
that searches with several variants) over the tiny world's BM25 index; the trace browser reads an evaluation that
same policy played; the hostile-passage test uses a scripted policy that searches for it. Each view's screenshot
is saved to ``$EXPANDSEARCH_SCREENSHOTS`` (``make screenshots`` sets docs/images) or the test's temporary folder.
The tests skip, saying why, only where no Chromium or chromedriver is installed (the Makefile installs both).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ui_support import EVIL_QUERY, EVIL_TEXT, EVIL_TITLE, ui_server

from agent_env.assembly import EnvSpec, build_env, close_env
from agent_env.episode import AgentEnv, EpisodeConfig, Trajectory, run_episode
from agent_env.models import load_tokenizer
from agent_env.scripted import ScriptedPolicy
from agent_env.search import LocalSearch
from agent_env.squeezers import make_squeezer
from data_prep.synthetic import World
from eval.datasets import DatasetSpec, EvalDataset
from eval.runner import evaluate
from expandsearch.commands.serve_ui import _passage_lookup
from expandsearch.ui.traces import TraceLibrary
from retriever_server.index_dir import load_index

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="no chromium / chromedriver on PATH (`make test` installs Debian's chromium and chromium-driver)",
)
WAIT_S = 120


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    # no sandbox as root; no background networking: this machine's closed network refuses Google's hosts
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    yield browser
    browser.quit()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("EXPANDSEARCH_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def warm_spec(warm_policy_dir: Path, ui_index_dir: Path) -> EnvSpec:
    return EnvSpec(
        str(warm_policy_dir), index_dir=str(ui_index_dir), config=EpisodeConfig(temperature=0.0, max_turn_tokens=120)
    )


def searching_question(spec: EnvSpec, world: World) -> tuple[str, Trajectory]:
    """A held-out question whose greedy episode searches with two or more variants, and that episode."""

    async def find() -> tuple[str, Trajectory]:
        env = await build_env(spec)
        try:
            for example in world.questions["test"][:40]:
                trajectory = await run_episode(env, example.question)
                if any(len(turn.queries) >= 2 and turn.hits_per_query for turn in trajectory.turns):
                    return example.question, trajectory
        finally:
            await close_env(env)
        raise AssertionError("the warm start searched with one variant on 40 questions")

    return asyncio.run(find())


def wait_for(driver: Any, css: str, count: int = 1) -> list[Any]:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, WAIT_S).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, css)) >= count)
    return list(driver.find_elements(By.CSS_SELECTOR, css))


def texts(driver: Any, css: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [element.text for element in driver.find_elements(By.CSS_SELECTOR, css)]


def save_page(driver: Any, path: Path) -> None:
    """A screenshot of the whole page: the window grown to the page's height for the shot."""
    width, height = driver.get_window_size()["width"], driver.get_window_size()["height"]
    page_height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.set_window_size(width, min(max(height, page_height + 120), 4000))
    driver.save_screenshot(str(path))
    driver.set_window_size(width, height)


def ask_in_page(driver: Any, url: str, question: str, *, one_query: bool = False) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url)
    wait_for(driver, "#tab-live.active")
    box = driver.find_element(By.ID, "question")
    box.clear()
    box.send_keys(question)
    if one_query:
        driver.find_element(By.ID, "one-query").click()
    driver.find_element(By.ID, "ask-button").click()


def test_live_view_shows_variants_passages_summary_and_answer(
    driver: Any, warm_policy_dir: Path, ui_index_dir: Path, tiny_world: World, screenshots: Path
) -> None:
    spec = warm_spec(warm_policy_dir, ui_index_dir)
    question, expected = searching_question(spec, tiny_world)

    async def build() -> AgentEnv:
        return await build_env(spec)

    with ui_server(build, close_env=close_env) as url:
        ask_in_page(driver, url, question, one_query=True)
        wait_for(driver, ".episode .outcome .footer", count=2)  # both episodes ended
        multi = '.episode[data-kind="multi"]'
        shown_queries = texts(driver, f"{multi} .variant .query")
        assert shown_queries == [query for turn in expected.turns for query in turn.queries]
        shown_titles = set(texts(driver, f"{multi} .passage .title"))
        expected_titles = {hit["title"] for turn in expected.turns for hits in turn.hits_per_query for hit in hits}
        assert shown_titles == expected_titles
        summaries = texts(driver, f'{multi} .observation[data-kind="summary"]')
        assert summaries
        assert all(summary.startswith("summary") for summary in summaries)
        answer = expected.answer if expected.answer is not None else "no answer"
        assert answer in driver.find_element("css selector", f"{multi} .outcome").text
        single = '.episode[data-kind="one-query"]'
        assert "one query per search" in driver.find_element("css selector", f"{single} .settings-line").text
        assert texts(driver, f"{single} .variant .badge"), "the one-query replay marks the variants it did not run"
        save_page(driver, screenshots / "ui_live.png")


def test_trace_browser_opens_and_compares_an_episode(
    driver: Any, warm_policy_dir: Path, ui_index_dir: Path, tiny_world: World, screenshots: Path, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    spec = warm_spec(warm_policy_dir, ui_index_dir)
    dataset = EvalDataset(DatasetSpec("world", tmp_path / "world.jsonl"), tuple(tiny_world.questions["test"][:12]))
    out = tmp_path / "eval"

    async def play() -> None:
        env = await build_env(spec)
        try:
            await evaluate(env, [dataset], ["expandsearch", "search_r1"], out, log=lambda line: None)
        finally:
            await close_env(env)

    asyncio.run(play())
    library = TraceLibrary([tmp_path], *_passage_lookup(str(ui_index_dir)))
    with ui_server(None, library=library) as url:
        driver.get(f"{url}/#traces")
        rows = wait_for(driver, "#trace-questions tbody tr", count=12)
        Select(driver.find_element(By.ID, "trace-method")).select_by_value("expandsearch")
        rows = wait_for(driver, "#trace-questions tbody tr", count=12)
        question = rows[0].find_element(By.TAG_NAME, "td").text
        rows[0].click()
        wait_for(driver, '#trace-episodes .episode[data-kind="trace"] .turn')
        column = driver.find_element(By.CSS_SELECTOR, "#trace-episodes .episode")
        assert question in column.text
        Select(driver.find_element(By.ID, "trace-compare")).select_by_value("search_r1")
        wait_for(driver, '#trace-episodes .episode[data-kind="trace"]', count=2)
        headings = texts(driver, "#trace-episodes .episode h2")
        assert headings == ["expandsearch", "search_r1"]
        save_page(driver, screenshots / "ui_traces.png")


def test_a_passage_holding_script_is_shown_as_text(
    driver: Any, tiny_policy_dir: Path, ui_index_dir: Path, screenshots: Path
) -> None:
    tokenizer = load_tokenizer(tiny_policy_dir)

    def respond(context: str) -> str:
        if "<information>" in context.split("<|im_start|>assistant")[-1]:
            return (
                "<think> the passage says <b>quaxite</b> </think><answer> <script>window.__pwned = 4</script> </answer>"
            )
        return f"<think> search it </think><search> {EVIL_QUERY} ## <img src=x onerror=window.__pwned=5> </search>"

    async def build() -> AgentEnv:
        search = LocalSearch(load_index(ui_index_dir))
        return AgentEnv(ScriptedPolicy(tokenizer, respond), tokenizer, search, make_squeezer("none"), EpisodeConfig())

    with ui_server(build) as url:
        ask_in_page(driver, url, 'What is <img src=x onerror="window.__pwned=6"> Zorbulon?')
        wait_for(driver, ".episode .outcome .footer")
        page = driver.find_element("css selector", "#live-episodes").text
        assert EVIL_TITLE in page, "the passage's markup is on the page, as text"
        assert EVIL_TEXT in page
        assert "<script>window.__pwned = 4</script>" in page
        assert "<img src=x onerror=window.__pwned=5>" in page
        assert driver.execute_script("return window.__pwned === undefined")
        assert not driver.find_elements("css selector", "#live-episodes script, #live-episodes img")
        save_page(driver, screenshots / "ui_hostile_passage.png")
