"""The trace browser over a real evaluation folder: ``eval.runner.evaluate`` writes it, the UI's API reads it.

An episode opened from the trace must look as it did live: the same turn view, with the passage texts (which
traces leave out) looked up in the index.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import pytest
from ui_support import ui_server

from agent_env.episode import AgentEnv, EpisodeConfig, run_episode
from agent_env.models import load_tokenizer
from agent_env.scripted import ScriptedPolicy
from agent_env.search import LocalSearch
from agent_env.squeezers import make_squeezer
from data_prep.formats import QAExample
from data_prep.synthetic import World
from eval.datasets import DatasetSpec, EvalDataset
from eval.runner import evaluate
from eval.store import write_run_settings
from expandsearch.commands.serve_ui import _passage_lookup
from expandsearch.ui.traces import TraceLibrary
from expandsearch.ui.views import episode_view
from retriever_server.index_dir import load_index, read_manifest


def respond(context: str) -> str:
    """Searches the question's subject with two variants, then answers "Kalmar" (right for one question)."""
    reply = context.split("<|im_start|>assistant")[-1]
    if "<information>" in reply or "Doc 1" in reply:
        return "<think> read it </think><answer> Kalmar </answer>"
    subject = context.split("Question:")[-1].split("?")[0].split()[-1]
    return f"<think> look {subject} up </think><search> {subject} ## {subject} founded </search>"


@pytest.fixture(scope="module")
def env(tiny_policy_dir: Path, ui_index_dir: Path) -> AgentEnv:
    tokenizer = load_tokenizer(tiny_policy_dir)
    search = LocalSearch(load_index(ui_index_dir))
    return AgentEnv(ScriptedPolicy(tokenizer, respond), tokenizer, search, make_squeezer("extractive"), EpisodeConfig())


@pytest.fixture(scope="module")
def eval_dir(env: AgentEnv, tiny_world: World, ui_index_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ui_eval") / "run"
    examples = tuple(
        QAExample(f"world/{n}", example.question, ["Kalmar"] if n == 0 else example.golden_answers, example.metadata)
        for n, example in enumerate(tiny_world.questions["test"][:8])
    )
    dataset = EvalDataset(DatasetSpec("world", out / "world.jsonl"), examples)
    corpus = read_manifest(ui_index_dir)["corpus"]
    write_run_settings(
        out, {"model": {"path": "scripted"}, "retriever": {"kind": "bm25", "corpus_sha256": corpus["sha256"]}}
    )
    asyncio.run(evaluate(env, [dataset], ["expandsearch", "search_r1"], out, log=lambda line: None))
    return out


@pytest.fixture(scope="module")
def url(eval_dir: Path, ui_index_dir: Path) -> Any:
    library = TraceLibrary([eval_dir.parent], *_passage_lookup(str(ui_index_dir)))
    with ui_server(None, library=library) as base:
        yield base


def get(url: str, path: str, **params: Any) -> Any:
    response = httpx.get(f"{url}{path}", params=params, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_runs_list_datasets_and_methods_with_their_em(url: str, eval_dir: Path) -> None:
    info = get(url, "/api/info")
    assert info["traces"]
    assert not info["live"]
    (run,) = get(url, "/api/traces")["runs"]
    assert run["run"] == str(eval_dir)
    assert run["settings"]["model"] == "scripted"
    assert {(entry["dataset"], entry["method"]) for entry in run["results"]} == {
        ("world", "expandsearch"),
        ("world", "search_r1"),
    }
    assert all(entry["questions"] == 8 and entry["em"] == pytest.approx(1 / 8) for entry in run["results"])


def test_questions_filter_by_correctness_type_and_text(url: str, eval_dir: Path, tiny_world: World) -> None:
    where = {"run": str(eval_dir), "dataset": "world", "method": "expandsearch"}
    everything = get(url, "/api/traces/questions", **where)
    assert everything["total"] == len(everything["rows"]) == 8
    expected_types = sorted({example.metadata["type"] for example in tiny_world.questions["test"][:8]})
    assert everything["types"] == expected_types
    correct = get(url, "/api/traces/questions", **where, correct="true")["rows"]
    assert [row["id"] for row in correct] == ["world/0"]
    assert len(get(url, "/api/traces/questions", **where, correct="false")["rows"]) == 7
    kind = expected_types[0]
    typed = get(url, "/api/traces/questions", **where, type=kind)["rows"]
    assert typed
    assert all(row["type"] == kind for row in typed)
    word = tiny_world.questions["test"][3].question.split()[-1].rstrip("?")
    assert any(row["id"] == "world/3" for row in get(url, "/api/traces/questions", **where, text=word.upper())["rows"])


def test_an_episode_from_the_trace_looks_as_it_did_live(
    url: str, eval_dir: Path, env: AgentEnv, tiny_world: World
) -> None:
    example = tiny_world.questions["test"][0]
    opened = get(url, "/api/traces/episode", run=str(eval_dir), dataset="world", method="expandsearch", id="world/0")
    assert opened["record"]["prediction"] == "Kalmar"
    assert opened["record"]["em"] == 1.0
    assert opened["other_methods"] == ["search_r1"]
    live = asyncio.run(run_episode(env, example.question))
    live_view = episode_view([asdict(turn) for turn in live.turns])
    trace_view = opened["turns"]
    assert len(trace_view) == len(live_view) == 2
    for traced, played in zip(trace_view, live_view, strict=True):
        for key in ("action", "text", "thinking", "queries", "observation_kind", "answer"):
            assert traced[key] == played[key], key
        assert played["observation"].startswith(traced["observation"])
        for traced_variant, played_variant in zip(traced["variants"], played["variants"], strict=True):
            assert [
                (hit["id"], hit["title"], hit["text"], hit["found_by"], hit["repeat"]) for hit in traced_variant["hits"]
            ] == [
                (hit["id"], hit["title"], hit["text"], hit["found_by"], hit["repeat"]) for hit in played_variant["hits"]
            ], "the passage texts come back from the index"


def test_unknown_runs_and_questions_are_404(url: str, eval_dir: Path) -> None:
    for params in (
        {"run": "/etc", "dataset": "world", "method": "expandsearch"},
        {"run": str(eval_dir), "dataset": "..", "method": "expandsearch"},
        {"run": str(eval_dir), "dataset": "world", "method": "../../run"},
    ):
        response = httpx.get(f"{url}/api/traces/questions", params=params)
        assert response.status_code == 404
        assert "no results for run" in response.json()["error"]
    missing = httpx.get(
        f"{url}/api/traces/episode",
        params={"run": str(eval_dir), "dataset": "world", "method": "expandsearch", "id": "x"},
    )
    assert missing.status_code == 404
    assert "no question 'x'" in missing.json()["error"]


def test_a_run_on_another_corpus_gets_no_passage_texts(eval_dir: Path, ui_index_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    (other / "world").mkdir(parents=True)
    (other / "world" / "expandsearch.jsonl").write_bytes((eval_dir / "world" / "expandsearch.jsonl").read_bytes())
    write_run_settings(other, {"retriever": {"kind": "bm25", "corpus_sha256": "0" * 64}})
    library = TraceLibrary([tmp_path], *_passage_lookup(str(ui_index_dir)))
    opened = library.episode(str(other), "world", "expandsearch", "world/0")
    hits = opened["turns"][0]["variants"][0]["hits"]
    assert hits
    assert all(hit["text"] is None for hit in hits), "ids of another corpus would name other passages"


def test_a_line_being_written_is_skipped_and_new_lines_show_up(eval_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "growing"
    (run / "world").mkdir(parents=True)
    lines = (eval_dir / "world" / "expandsearch.jsonl").read_text().splitlines()
    path = run / "world" / "expandsearch.jsonl"
    path.write_text(lines[0] + "\n" + lines[1][:40])
    library = TraceLibrary([tmp_path])
    assert library.questions(str(run), "world", "expandsearch")["total"] == 1
    path.write_text("\n".join(lines) + "\n")
    assert library.questions(str(run), "world", "expandsearch")["total"] == 8
