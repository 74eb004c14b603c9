"""``expandsearch serve-ui`` as a real subprocess on a free port, and its one-line setup errors."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import pytest
from support import free_port, require_console_script, wait_for_health

from data_prep.synthetic import World
from expandsearch.cli import main

TOKEN_VAR = "EXPANDSEARCH_TEST_UI_TOKEN"


def test_the_command_serves_the_page_and_live_episodes_with_a_token(
    tiny_policy_dir: Path, ui_index_dir: Path, tiny_world: World, tmp_path: Path
) -> None:
    port = free_port()
    command = [
        str(require_console_script()),
        "serve-ui",
        "--model",
        str(tiny_policy_dir),
        "--index",
        str(ui_index_dir),
        "--traces",
        str(tmp_path),
        "--port",
        str(port),
        "--token-env",
        TOKEN_VAR,
        "--turn-tokens",
        "16",
    ]
    env = {**os.environ, TOKEN_VAR: "ui-token", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(f"{url}/api", process, lambda: process.stdout.read() if process.stdout else "")
        assert "<title>ExpandSearch</title>" in httpx.get(url).text
        assert httpx.get(f"{url}/api/info").status_code == 401
        headers = {"authorization": "Bearer ui-token"}
        info = httpx.get(f"{url}/api/info", headers=headers).json()
        assert info["live"]
        assert info["traces"]
        assert info["served"]["model"] == str(tiny_policy_dir)
        question = tiny_world.questions["test"][0].question
        episode = httpx.post(f"{url}/api/episodes", json={"question": question}, headers=headers, timeout=120)
        assert episode.status_code == 200
        assert "event: end" in episode.text
        assert httpx.get(f"{url}/api/traces", headers=headers).json() == {"runs": []}
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "nothing to serve"),
        (["--index", "{index}"], "needs --model too"),
        (["--model", "{model}"], "needs --index DIR or --retriever-url URL"),
        (["--model", "/no/such/model", "--index", "{index}"], "no model at /no/such/model"),
        (["--model", "{model}", "--index", "{index}", "--squeezer", "magic"], "unknown squeezer 'magic'"),
        (["--traces", "/no/such/folder"], "--traces /no/such/folder: no such folder"),
        (["--traces", "{index}", "--token-env", "EXPANDSEARCH_UNSET_VARIABLE"], "unset or empty"),
    ],
)
def test_setup_errors_are_one_line(
    args: list[str], message: str, tiny_policy_dir: Path, ui_index_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    filled = [arg.format(model=tiny_policy_dir, index=ui_index_dir) for arg in args]
    assert main(["serve-ui", *filled]) == 2
    stderr = capsys.readouterr().err
    assert message in stderr
    assert len(stderr.strip().splitlines()) == 1


def test_a_server_on_another_address_warns(tmp_path: Path) -> None:
    command = [str(require_console_script()), "serve-ui", "--traces", str(tmp_path), "--host", "0.0.0.0", "--port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        assert "warning: serving on 0.0.0.0" in process.stderr.readline()
    finally:
        process.terminate()
        process.wait(timeout=30)
