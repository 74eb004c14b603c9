"""``expandsearch serve-llm`` as a real subprocess on a free port, serving the tiny policy."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support import free_port, require_console_script, run_expandsearch, wait_for_health

KEY_VAR = "EXPANDSEARCH_TEST_LLM_KEY"


@pytest.fixture
def served(tiny_policy_dir: Path, tmp_path: Path) -> Iterator[str]:
    script = require_console_script()
    port = free_port()
    log = tmp_path / "serve-llm.log"
    command = [str(script), "serve-llm", "--model", str(tiny_policy_dir), "--port", str(port)]
    command += ["--name", "tiny", "--device", "cpu", "--max-batch-size", "8", "--api-key-env", KEY_VAR]
    with log.open("w") as output:
        # output to a file, not a pipe: a pipe nobody reads would block the server once its buffer fills
        process = subprocess.Popen(
            command, env={**os.environ, KEY_VAR: "cli-key"}, stdout=output, stderr=subprocess.STDOUT, text=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, process, log.read_text)
        yield url
    finally:
        process.terminate()  # uvicorn shuts down cleanly on SIGTERM
        process.wait(timeout=30)


def test_serve_llm_answers_health_models_and_completions(served: str) -> None:
    assert httpx.get(f"{served}/health").json() == {"status": "ok", "model": "tiny"}
    assert httpx.get(f"{served}/v1/models").status_code == 401
    headers = {"Authorization": "Bearer cli-key"}
    [card] = httpx.get(f"{served}/v1/models", headers=headers).json()["data"]
    assert (card["id"], card["max_model_len"]) == ("tiny", 4096)
    body = {"model": "tiny", "prompt": [5, 6, 7], "max_tokens": 4, "temperature": 0, "logprobs": 0}
    body |= {"return_tokens_as_token_ids": True}
    [choice] = httpx.post(f"{served}/v1/completions", json=body, headers=headers, timeout=60).json()["choices"]
    assert len(choice["logprobs"]["tokens"]) == len(choice["logprobs"]["token_logprobs"])
    assert all(token.startswith("token_id:") for token in choice["logprobs"]["tokens"])
    assert choice["finish_reason"] in ("stop", "length")
    chat = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 3}
    answer = httpx.post(f"{served}/v1/chat/completions", json=chat, headers=headers, timeout=60).json()
    assert answer["choices"][0]["message"]["role"] == "assistant"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_expandsearch("serve-llm", *args, timeout=60, env=env)


def assert_one_line_error(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert fragment in result.stderr


def test_missing_model_is_a_user_error(tmp_path: Path) -> None:
    assert_one_line_error(run_cli("--model", str(tmp_path / "nothing-here")), "no model at")


def test_unset_api_key_variable_is_a_user_error(tiny_policy_dir: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != KEY_VAR}
    assert_one_line_error(run_cli("--model", str(tiny_policy_dir), "--api-key-env", KEY_VAR, env=env), KEY_VAR)
