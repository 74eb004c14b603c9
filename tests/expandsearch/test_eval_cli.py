"""``expandsearch eval`` through the real console script: reports, resuming a killed larger run, refusing another
run's directory, one-line setup errors, a retriever server with a real benchmark file, a prepared distractor set.

The policy is the random-weight tiny Qwen2: it never writes a valid action, so these tests check plumbing (files,
counts, resumption, which metrics are measured), not scores; ``tests/eval/test_runner.py`` checks scores with the
scripted expert.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import require_console_script, run_expandsearch, served_retriever

from expandsearch.cli import main
from retriever_server.index_dir import build_index

ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
METHODS = ("direct", "rag", "search_r1", "expandsearch")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def world_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(data_dir, index_dir)``: a tiny world written as ``data_dir/world`` and its BM25 index, by the CLI."""
    folder = tmp_path_factory.mktemp("eval_world")
    world = run_expandsearch("world", "--size", "tiny", "--out", folder / "data" / "world", env=ONE_THREAD)
    assert world.returncode == 0, world.stderr
    corpus = folder / "data" / "world" / "corpus.jsonl"
    index = run_expandsearch("index", "--corpus", corpus, "--kind", "bm25", "--out", folder / "index", env=ONE_THREAD)
    assert index.returncode == 0, index.stderr
    return folder / "data", folder / "index"


def quick(policy: Path, *args: str | Path) -> list[str]:
    """Arguments of a seconds-scale run: two turns of 16 tokens."""
    return ["eval", "--model", str(policy), "--turn-tokens", "16", "--max-turns", "2", *map(str, args)]


def evaluate(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return run_expandsearch(*args, timeout=timeout, env=ONE_THREAD)


def results_of(out: Path) -> dict[str, Any]:
    return dict(json.loads((out / "results.json").read_text()))


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_world_run_reports_then_a_killed_larger_run_resumes_and_other_settings_are_refused(
    tiny_policy_dir: Path, world_data: tuple[Path, Path], tmp_path: Path
) -> None:
    data_dir, index = world_data
    out = tmp_path / "out"
    args = quick(tiny_policy_dir, "--data-dir", data_dir, "--datasets", "world", "--index", index, "--out", out)
    first = evaluate(*args, "--limit", "3")
    assert first.returncode == 0, first.stderr[-3000:]
    assert f"world: 3 questions from {(data_dir / 'world' / 'test.jsonl').resolve()}" in first.stdout
    check_reports(out, first.stdout, tiny_policy_dir)

    # a larger run of one method, killed mid-way, then the same command again
    path = out / "world" / "expandsearch.jsonl"
    before = path.read_text()
    larger = [*args, "--methods", "expandsearch", "--limit", "40", "--concurrency", "1"]
    finished = kill_after(larger, path, lines=6)
    assert results_of(out)["results"]["world"]["expandsearch"]["n"] == 3, "it really died mid-run"
    assert 6 <= finished < 40
    resumed = evaluate(*larger)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{finished} already in" in resumed.stdout
    assert path.read_text().startswith(before), "finished lines are kept as written"
    records = jsonl(path)
    assert len(records) == len({record["id"] for record in records}) == 40
    metrics = results_of(out)["results"]["world"]["expandsearch"]
    assert (metrics["n"], metrics["played"]) == (40, 40 - finished)

    refused = evaluate(*larger, "--topk", "5")
    assert refused.returncode == 2
    assert "holds results of another run" in refused.stderr
    assert "episode.topk: was 3, now 5" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def check_reports(out: Path, stdout: str, policy: Path) -> None:
    """results.json, results.md (as printed), results.png, run.json and one jsonl per method, of 3 questions."""
    results = results_of(out)
    assert list(results["results"]["world"]) == list(METHODS)
    for method in METHODS:
        assert results["results"]["world"][method]["n"] == results["results"]["world"][method]["played"] == 3
        assert len(jsonl(out / "world" / f"{method}.jsonl")) == 3
    assert "recall" in results["results"]["world"]["rag"], "the world's questions carry supporting_ids"
    assert "recall" not in results["results"]["world"]["direct"]
    table = (out / "results.md").read_text()
    assert table.strip() in stdout
    assert "| world | expandsearch | 3 |" in table
    assert (out / "results.png").read_bytes().startswith(PNG_SIGNATURE)
    assert json.loads((out / "run.json").read_text())["settings"]["model"]["path"] == str(policy.resolve())


def complete_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.is_file() else 0


def kill_after(args: list[str], path: Path, lines: int) -> int:
    """Run ``expandsearch ARGS``, SIGKILL it once ``path`` has ``lines`` lines; the complete lines it left."""
    process = subprocess.Popen(
        [str(require_console_script()), *args], env=ONE_THREAD, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 120
        while complete_lines(path) < lines:
            assert process.poll() is None, "the evaluation ended before it could be killed"
            assert time.monotonic() < deadline, f"fewer than {lines} lines in {path} after 120 s"
            time.sleep(0.02)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    return complete_lines(path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "/no/such/model"], "no model at /no/such/model"),
        (["--index", "/no/such/index"], "cannot load index /no/such/index"),
        (["--retriever-url", "http://127.0.0.1:9"], "is not reachable"),
        (["--datasets", "nq=/no/such.jsonl"], "dataset nq: no file /no/such.jsonl"),
        (["--datasets", "nq"], "dataset nq: give --data-dir"),
        (["--methods", "rag,ircot"], "unknown method 'ircot'"),
        (["--squeezer", "magic"], "unknown squeezer 'magic'"),
        (["--limit", "0"], "--limit must be >= 1"),
    ],
)
def test_setup_errors_are_one_line_before_the_model_loads(
    args: list[str],
    message: str,
    tiny_policy_dir: Path,
    world_data: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data_dir, index = world_data
    defaults = {"--model": str(tiny_policy_dir), "--datasets": f"world={data_dir / 'world' / 'test.jsonl'}"}
    if "--retriever-url" not in args:
        defaults["--index"] = str(index)
    overrides = dict(zip(args[::2], args[1::2], strict=True))
    pairs = {**defaults, **overrides, "--out": str(tmp_path / "o")}
    assert main(["eval", *(item for pair in pairs.items() for item in pair)]) == 2  # in-process: the same CLI
    stderr = capsys.readouterr().err
    assert message in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists(), "nothing is written before the setup stands"


@pytest.fixture(scope="module")
def wiki18_index(real_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("eval_wiki18")
    build_index(real_data / "wiki18_sample" / "wiki18_passages7923.jsonl", "bm25", folder / "index", progress=False)
    return folder / "index"


@pytest.fixture
def served_wiki18(wiki18_index: Path) -> Iterator[str]:
    """``expandsearch serve-retriever`` over the wiki-18 sample's index, on a free port."""
    with served_retriever(wiki18_index, env=ONE_THREAD) as url:
        yield url


@pytest.mark.slow
def test_flashrag_nq_against_a_retriever_server_over_the_wiki18_sample(
    tiny_policy_dir: Path, real_data: Path, served_wiki18: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    nq = real_data / "nq" / "nq_test1000.jsonl"
    args = quick(tiny_policy_dir, "--datasets", f"nq={nq}", "--retriever-url", served_wiki18, "--out", out)
    result = evaluate(*args, "--methods", "direct,rag", "--squeezer", "none", "--limit", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "run.json").read_text())["settings"]["retriever"] == {"url": served_wiki18}
    metrics = results_of(out)["results"]["nq"]
    assert (metrics["rag"]["n"], metrics["rag"]["searches"]) == (3, 1)
    assert "answer_in_passages" in metrics["rag"]
    assert "answer_in_passages" not in metrics["direct"]
    assert "recall" not in metrics["rag"], "NQ has no supporting-passage ground truth: not measured, not 0"
    assert "| nq | rag | 3 |" in result.stdout
    record = jsonl(out / "nq" / "rag.jsonl")[0]
    assert record["recall"] is None
    assert len(record["trace"][0]["hits"][0]) == 3, "top-3 passages came over HTTP"
    assert record["trace"][0]["observation"].startswith("Doc 1 (Title: ")  # raw passages with --squeezer none


@pytest.mark.slow
def test_a_prepared_distractor_set_measures_supporting_passage_recall(
    tiny_policy_dir: Path, real_data: Path, tmp_path: Path
) -> None:
    """``expandsearch prepare qa`` (HotpotQA, dev split only), its context corpus indexed, eval falling back to dev."""
    source = real_data / "hotpotqa" / "hotpotqa_distractor_dev300.jsonl"
    folder = tmp_path / "data" / "hotpotqa"
    prepared = run_expandsearch(
        "prepare", "qa", "--dataset", "hotpotqa", "--input", source, "--out", folder, "--split", "dev", "--limit", "10"
    )
    assert prepared.returncode == 0, prepared.stderr
    build_index(folder / "corpus.jsonl", "bm25", tmp_path / "idx", progress=False)
    out = tmp_path / "out"
    args = quick(tiny_policy_dir, "--data-dir", tmp_path / "data", "--datasets", "hotpotqa", "--out", out)
    result = evaluate(*args, "--index", str(tmp_path / "idx"), "--methods", "rag", "--limit", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(no test.jsonl, using dev.jsonl)" in result.stdout
    rag = results_of(out)["results"]["hotpotqa"]["rag"]
    assert 0 < rag["recall"] <= 1, "BM25 with the question finds some supporting paragraphs of its own context"


@pytest.mark.slow
def test_an_answer_fallback_is_reported_apart_and_recorded_so_a_strict_rerun_is_refused(
    tiny_policy_dir: Path, world_data: tuple[Path, Path], tmp_path: Path
) -> None:
    data_dir, index = world_data
    out = tmp_path / "out"
    args = quick(tiny_policy_dir, "--data-dir", data_dir, "--datasets", "world", "--index", index, "--out", out)
    args += ["--methods", "direct", "--limit", "2"]
    result = evaluate(*args, "--answer-fallback", "last-turn")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "run.json").read_text())["settings"]["answer_fallback"] == "last-turn"
    metrics = results_of(out)["results"]["world"]["direct"]
    assert metrics["answered"] + metrics["fallback_used"] <= 1
    assert "fallback_em" in metrics
    assert "| EM +fallback |" in (out / "results.md").read_text()
    assert all("fallback_prediction" in record for record in jsonl(out / "world" / "direct.jsonl"))
    refused = evaluate(*args)
    assert refused.returncode == 2
    assert "answer_fallback: was 'last-turn', now 'none'" in refused.stderr
