"""The OpenAI-compatible server and its clients, over real uvicorn servers on free ports.

The main server serves the tiny random-weight Qwen2 through a micro-batching TransformersEngine; a second
TransformersEngine on the same weights, called directly, says what the answers must be. Small hand-written apps
stand in for what cannot run here (vLLM/SGLang answers, a 503, a server that hangs).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import torch
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from support import free_port

from agent_env.engine import SamplingParams, TransformersEngine
from agent_env.models import load_causal_lm
from agent_env.openai_compat import (
    OpenAIChatSqueezer,
    OpenAICompletionsEngine,
    OpenAIRequestError,
    OpenAIUnavailableError,
    api_base_url,
    create_llm_app,
)
from agent_env.squeezers import SqueezeRequest, make_squeezer, squeezer_messages, unusable_reason
from data_prep.synthetic import World
from retriever_server.server import ServerThread

MODEL_NAME = "tiny-policy"
GREEDY = SamplingParams(max_new_tokens=16, temperature=0.0, stop=())


class RecordBodies:
    """ASGI middleware keeping ``[path, JSON body or None]`` of every request, to see exactly what clients sent."""

    def __init__(self, app: Any, log: list[list[Any]]) -> None:
        self.app = app
        self.log = log

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record: list[Any] = [scope["path"], None]
        self.log.append(record)  # on arrival: a GET never reads a body
        chunks: list[bytes] = []

        async def recording_receive() -> MutableMapping[str, Any]:
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
                raw = b"".join(chunks)
                if raw and not message.get("more_body", False):
                    record[1] = parsed(raw)
            return message

        await self.app(scope, recording_receive, send)


def parsed(raw: bytes) -> Any:
    try:
        return httpx.Response(200, content=raw).json()
    except ValueError:  # the malformed bodies some tests send on purpose
        return raw


@dataclass
class Served:
    url: str
    engine: TransformersEngine
    bodies: list[list[Any]] = field(default_factory=list)

    def sent_to(self, path: str, since: int = 0) -> list[Any]:
        return [body for where, body in self.bodies[since:] if where == path]


@pytest.fixture(scope="module")
def policy(tiny_policy_dir: Any) -> tuple[Any, Any]:
    return load_causal_lm(tiny_policy_dir, device="cpu")


@pytest.fixture(scope="module")
def tokenizer(policy: tuple[Any, Any]) -> Any:
    return policy[1]


@pytest.fixture(scope="module")
def served(policy: tuple[Any, Any]) -> Iterator[Served]:
    model, tokenizer = policy
    engine = TransformersEngine(model, tokenizer)
    served = Served("", engine)
    app = create_llm_app(engine, tokenizer, MODEL_NAME)
    app.add_middleware(RecordBodies, log=served.bodies)
    with ServerThread(app) as server:
        served.url = server.url
        yield served


@pytest.fixture(scope="module")
def direct(policy: tuple[Any, Any]) -> TransformersEngine:
    """The same weights behind an engine called in-process: the reference answers."""
    return TransformersEngine(*policy)


@pytest.fixture(scope="module")
def prompt_ids(tokenizer: Any) -> list[int]:
    return list(tokenizer("Where was the company headquarters")["input_ids"])


def post(url: str, body: Any) -> httpx.Response:
    return httpx.post(url, json=body, timeout=60)


# ---------------------------------------------------------------------------------------------- engine client


@pytest.mark.asyncio
async def test_greedy_round_trip_equals_the_engine_called_directly(
    served: Served, direct: TransformersEngine, prompt_ids: list[int]
) -> None:
    engine = OpenAICompletionsEngine(served.url, timeout_s=60)
    since = len(served.bodies)
    try:
        got = await engine.generate(prompt_ids, GREEDY)
    finally:
        await engine.aclose()
    [expected] = direct.generate_batch([prompt_ids], GREEDY)
    assert got.token_ids == expected.token_ids
    assert got.logprobs == pytest.approx(expected.logprobs, abs=1e-6)
    assert got.stop_reason == expected.stop_reason == "length"
    assert (engine.model, engine.max_context_tokens) == (MODEL_NAME, 4096)  # learned from /v1/models
    [body] = served.sent_to("/v1/completions", since)
    assert body["prompt"] == prompt_ids
    assert (body["logprobs"], body["return_tokens_as_token_ids"], body["include_stop_str_in_output"]) == (0, True, True)
    assert body["skip_special_tokens"] is False


@pytest.mark.asyncio
async def test_stop_strings_end_generation_and_are_reported_like_vllm(
    served: Served, direct: TransformersEngine, tokenizer: Any, prompt_ids: list[int]
) -> None:
    [free] = direct.generate_batch([prompt_ids], GREEDY)
    stop = tokenizer.decode(free.token_ids[:3])
    ends_at = next(k for k in range(1, 17) if stop in tokenizer.decode(free.token_ids[:k]))
    engine = OpenAICompletionsEngine(f"{served.url}/v1/", MODEL_NAME)
    try:
        got = await engine.generate(prompt_ids, SamplingParams(16, 0.0, stop=("never appears", stop)))
    finally:
        await engine.aclose()
    assert got.token_ids == free.token_ids[:ends_at]
    assert got.logprobs == pytest.approx(free.logprobs[:ends_at], abs=1e-6)
    assert got.stop_reason == "stop"
    for include, text in ((True, stop), (False, "")):
        body = {"prompt": prompt_ids, "max_tokens": 16, "temperature": 0, "stop": [stop]}
        [choice] = post(f"{served.url}/v1/completions", {**body, "include_stop_str_in_output": include}).json()[
            "choices"
        ]
        assert (choice["finish_reason"], choice["stop_reason"], choice["text"]) == ("stop", stop, text)


@pytest.mark.asyncio
async def test_eos_is_reported_as_eos(
    policy: tuple[Any, Any], direct: TransformersEngine, prompt_ids: list[int]
) -> None:
    model, tokenizer = policy
    [free] = direct.generate_batch([prompt_ids], GREEDY)
    end_of_turn = free.token_ids[0]  # an engine for which the model's favourite token ends the turn
    app = create_llm_app(TransformersEngine(model, tokenizer, extra_stop_token_ids=[end_of_turn]), tokenizer, "eos")
    with ServerThread(app) as server:
        engine = OpenAICompletionsEngine(server.url)
        try:
            got = await engine.generate(prompt_ids, GREEDY)
        finally:
            await engine.aclose()
        choices = [
            post(f"{server.url}/v1/completions", {"prompt": prompt_ids, "temperature": 0, **extra}).json()["choices"][0]
            for extra in ({}, {"include_stop_str_in_output": True})
        ]
    assert (got.token_ids, got.stop_reason) == ([end_of_turn], "eos")
    assert got.logprobs == pytest.approx(free.logprobs[:1], abs=1e-6)
    assert [(choice["finish_reason"], choice["stop_reason"]) for choice in choices] == [("stop", None)] * 2
    assert [choice["text"] for choice in choices] == ["", tokenizer.decode([end_of_turn])]


@pytest.mark.asyncio
async def test_max_tokens_and_the_context_limit(served: Served, prompt_ids: list[int]) -> None:
    engine = OpenAICompletionsEngine(served.url)
    trusting = OpenAICompletionsEngine(served.url, max_context_tokens=10**6)  # skips the local check
    try:
        got = await engine.generate(prompt_ids, SamplingParams(3, 0.0, stop=()))
        assert (len(got.token_ids), len(got.logprobs), got.stop_reason) == (3, 3, "length")
        with pytest.raises(ValueError, match="context is 4096"):
            await engine.generate([5] * 4096, GREEDY)
        with pytest.raises(OpenAIRequestError, match="context is 4096") as raised:
            await trusting.generate([5] * 4096, GREEDY)
        assert raised.value.status == 400
        assert raised.value.url == f"{served.url}/v1/completions"
    finally:
        await engine.aclose()
        await trusting.aclose()


@pytest.mark.asyncio
async def test_sampled_logprobs_are_the_models_own(
    served: Served, policy: tuple[Any, Any], prompt_ids: list[int]
) -> None:
    model, _ = policy
    engine = OpenAICompletionsEngine(served.url)
    try:
        got = await engine.generate(prompt_ids, SamplingParams(10, temperature=1.3, top_p=0.9, stop=()))
    finally:
        await engine.aclose()
    with torch.inference_mode():
        logits = model(torch.tensor([prompt_ids + got.token_ids])).logits[0].float()
    steps = torch.log_softmax(logits, dim=-1)[len(prompt_ids) - 1 : -1]
    expected = steps.gather(-1, torch.tensor(got.token_ids).unsqueeze(-1)).squeeze(-1).tolist()
    assert got.logprobs == pytest.approx(expected, abs=1e-4)  # before temperature and top-p, as vLLM reports


@pytest.mark.asyncio
async def test_concurrent_requests_share_decoding_batches(served: Served, prompt_ids: list[int]) -> None:
    engine = OpenAICompletionsEngine(served.url)
    before = len(served.engine.batch_stats.batch_sizes)
    try:
        await engine.discover()
        results = await asyncio.gather(
            *(engine.generate(prompt_ids[: 3 + index], SamplingParams(24, 1.0, stop=())) for index in range(8))
        )
    finally:
        await engine.aclose()
    assert [len(result.token_ids) for result in results] == [24] * 8
    sizes = served.engine.batch_stats.batch_sizes[before:]
    assert sum(sizes) == 8
    assert max(sizes) > 1, sizes


@pytest.mark.asyncio
async def test_down_server_raises_after_retries() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for model, path in ((None, "/v1/models"), ("named", "/v1/completions")):
        engine = OpenAICompletionsEngine(url, model, retries=2, backoff_s=0.01)
        with pytest.raises(OpenAIUnavailableError, match=r"unavailable after 3 attempt\(s\)") as raised:
            await engine.generate([1, 2, 3], GREEDY)
        assert raised.value.url == f"{url}{path}"
        assert url in str(raised.value)
        await engine.aclose()


@pytest.mark.asyncio
async def test_4xx_raises_at_once_with_the_servers_message(served: Served, prompt_ids: list[int]) -> None:
    engine = OpenAICompletionsEngine(served.url, "some-other-model", retries=3)
    since = len(served.bodies)
    try:
        with pytest.raises(OpenAIRequestError, match="`some-other-model` does not exist") as raised:
            await engine.generate(prompt_ids, GREEDY)
    finally:
        await engine.aclose()
    assert raised.value.status == 404
    assert f"{served.url}/v1/completions answered 404" in str(raised.value)
    assert len(served.sent_to("/v1/completions", since)) == 1  # no retries for the caller's mistake


def vllm_choice(token_ids: list[int], finish_reason: str, **extra: Any) -> dict[str, Any]:
    """A /v1/completions answer as vLLM writes it for logprobs=0 and return_tokens_as_token_ids."""
    tokens = [f"token_id:{token}" for token in token_ids]
    logprobs = [-0.5 * (index + 1) for index in range(len(token_ids))]
    block = {
        "text_offset": list(range(len(tokens))),
        "token_logprobs": logprobs,
        "tokens": tokens,
        "top_logprobs": [{token: value} for token, value in zip(tokens, logprobs, strict=True)],
    }
    choice = {"index": 0, "text": extra.pop("text", "x"), "logprobs": block, "finish_reason": finish_reason}
    return {"id": "cmpl-1", "object": "text_completion", "model": "m", "choices": [{**choice, **extra}], "usage": {}}


@pytest.mark.asyncio
async def test_retries_5xx_and_reads_vllm_and_sglang_answers() -> None:
    """What vLLM and SGLang send (they cannot run here), replayed by a real server after one 503."""
    answers: list[tuple[int, dict[str, Any]]] = [
        (503, {"error": {"message": "warming up", "type": "ServiceUnavailableError", "code": 503}}),
        (200, vllm_choice([5, 6], "stop", stop_reason="</search>")),  # vLLM: a stop string
        (200, vllm_choice([5, 7], "stop", stop_reason=None)),  # vLLM: EOS
        (200, vllm_choice([5], "length", stop_reason=None)),
        (200, vllm_choice([8], "stop", matched_stop=151645)),  # SGLang: a stop token
        (200, vllm_choice([9], "stop", text="a </search>")),  # says nothing: the text ends with a stop string
        (200, {"choices": [{"text": "x", "logprobs": {"tokens": ["x"], "token_logprobs": [0.0]}}]}),
    ]
    calls: list[Any] = []
    app = FastAPI()

    @app.post("/v1/completions")
    async def completions(body: dict[str, Any]) -> JSONResponse:
        calls.append(body)
        status, answer = answers.pop(0)
        return JSONResponse(answer, status_code=status)

    with ServerThread(app) as server:
        engine = OpenAICompletionsEngine(server.url, "m", retries=2, backoff_s=0.01)
        sampling = SamplingParams(8, 0.0, stop=("</search>",))
        try:
            results = [await engine.generate([1, 2], sampling) for _ in range(5)]
            with pytest.raises(OpenAIRequestError, match="ignored return_tokens_as_token_ids"):
                await engine.generate([1, 2], sampling)
        finally:
            await engine.aclose()
    assert len(calls) == 7  # one retry after the 503
    assert [(result.token_ids, result.stop_reason) for result in results] == [
        ([5, 6], "stop"),
        ([5, 7], "eos"),
        ([5], "length"),
        ([8], "eos"),
        ([9], "stop"),
    ]
    assert results[0].logprobs == [-0.5, -1.0]


@pytest.mark.asyncio
async def test_api_key(policy: tuple[Any, Any], prompt_ids: list[int]) -> None:
    model, tokenizer = policy
    app = create_llm_app(TransformersEngine(model, tokenizer), tokenizer, MODEL_NAME, api_key="sekret")
    with ServerThread(app) as server:
        assert httpx.get(f"{server.url}/health").status_code == 200
        refused = httpx.get(f"{server.url}/v1/models")
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == 401
        engine = OpenAICompletionsEngine(server.url, api_key="sekret")
        try:
            assert len((await engine.generate(prompt_ids, SamplingParams(2, 0.0, stop=()))).token_ids) == 2
        finally:
            await engine.aclose()


def test_base_urls() -> None:
    assert api_base_url("http://h:1") == api_base_url("http://h:1/v1/") == "http://h:1/v1"
    with pytest.raises(ValueError, match="http"):
        api_base_url("h:1")


# ---------------------------------------------------------------------------------------------- server wire format


def test_models_and_health(served: Served) -> None:
    assert httpx.get(f"{served.url}/health").json() == {"status": "ok", "model": MODEL_NAME}
    models = httpx.get(f"{served.url}/v1/models").json()
    assert models["object"] == "list"
    [card] = models["data"]
    assert (card["id"], card["object"], card["max_model_len"]) == (MODEL_NAME, "model", 4096)


def test_completions_answer_in_vllm_format(served: Served, direct: TransformersEngine, prompt_ids: list[int]) -> None:
    body = {
        "model": MODEL_NAME,
        "prompt": [prompt_ids, prompt_ids[:3]],
        "max_tokens": 4,
        "temperature": 0,
        "logprobs": 0,
        "return_token_ids": True,
        "skip_special_tokens": False,
    }
    answer = post(f"{served.url}/v1/completions", body).json()
    assert (answer["object"], answer["model"]) == ("text_completion", MODEL_NAME)
    assert answer["id"].startswith("cmpl-")
    assert [choice["index"] for choice in answer["choices"]] == [0, 1]
    assert answer["usage"] == {
        "prompt_tokens": len(prompt_ids) + 3,
        "completion_tokens": 8,
        "total_tokens": 8 + 3 + len(prompt_ids),
    }
    first = answer["choices"][0]
    [expected] = direct.generate_batch([prompt_ids], SamplingParams(4, 0.0, stop=()))
    assert (first["token_ids"], first["prompt_token_ids"]) == (expected.token_ids, prompt_ids)
    assert (first["finish_reason"], first["stop_reason"]) == ("length", None)
    logprobs = first["logprobs"]
    assert "".join(logprobs["tokens"]) == first["text"]  # text pieces, as return_tokens_as_token_ids is off
    assert logprobs["text_offset"] == [sum(len(token) for token in logprobs["tokens"][:i]) for i in range(4)]
    assert logprobs["top_logprobs"] == [
        {token: value} for token, value in zip(logprobs["tokens"], logprobs["token_logprobs"], strict=True)
    ]


def test_text_prompts_are_tokenized_with_the_models_tokenizer(served: Served, tokenizer: Any) -> None:
    body = {"prompt": "Where was the company headquarters", "max_tokens": 2, "return_token_ids": True}
    [choice] = post(f"{served.url}/v1/completions", body).json()["choices"]
    assert choice["prompt_token_ids"] == tokenizer("Where was the company headquarters")["input_ids"]
    assert choice["logprobs"] is None  # not asked for


def test_chat_completions(served: Served, direct: TransformersEngine, tokenizer: Any) -> None:
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": [{"type": "text", "text": "Where was "}, {"type": "text", "text": "it?"}]},
    ]
    answer = post(
        f"{served.url}/v1/chat/completions",
        {"model": MODEL_NAME, "messages": messages, "max_tokens": 5, "temperature": 0},
    ).json()
    assert (answer["object"], answer["model"]) == ("chat.completion", MODEL_NAME)
    assert answer["id"].startswith("chatcmpl-")
    [choice] = answer["choices"]
    flat = [messages[0], {"role": "user", "content": "Where was it?"}]
    prompt = tokenizer(tokenizer.apply_chat_template(flat, tokenize=False, add_generation_prompt=True))["input_ids"]
    [expected] = direct.generate_batch([prompt], SamplingParams(5, 0.0, stop=()))
    assert answer["usage"]["prompt_tokens"] == len(prompt)
    assert answer["usage"]["completion_tokens"] == len(expected.token_ids)
    assert choice["message"] == {
        "role": "assistant",
        "content": tokenizer.decode(
            expected.token_ids[:-1] if expected.stop_reason == "eos" else expected.token_ids, skip_special_tokens=True
        ),
    }
    assert choice["finish_reason"] == {"length": "length", "eos": "stop"}[expected.stop_reason]


BAD_REQUESTS = [
    ("/v1/completions", {"max_tokens": 2}, 400, "prompt"),
    ("/v1/completions", {"prompt": [1.5]}, 400, "list of token ids"),
    ("/v1/completions", {"prompt": [10**6]}, 400, "out of vocabulary"),
    ("/v1/completions", {"prompt": []}, 400, "empty"),
    ("/v1/completions", {"prompt": [[]]}, 400, "empty"),
    ("/v1/completions", {"prompt": [5] * 4096}, 400, "context is 4096"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "temperature": -1}, 400, "temperature"),
    ("/v1/completions", {"prompt": "hi", "top_p": 0}, 400, "top_p"),
    ("/v1/completions", {"prompt": "hi", "stop": [""]}, 400, "stop strings must be non-empty"),
    ("/v1/completions", {"prompt": "hi", "stop": [3]}, 400, "stop"),
    ("/v1/completions", {"prompt": "hi", "logprobs": -1}, 400, "logprobs"),
    ("/v1/completions", {"prompt": "hi", "stream": True}, 400, "stream"),
    ("/v1/completions", {"prompt": "hi", "n": 2}, 400, "n > 1"),
    ("/v1/completions", {"prompt": "hi", "n": 0}, 400, "n: Input should be greater than or equal to 1"),
    ("/v1/completions", {"prompt": "hi", "echo": True}, 400, "echo"),
    ("/v1/completions", {"prompt": "hi", "model": "nope"}, 404, "`nope` does not exist"),
    ("/v1/completions", [1, 2], 400, "body"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"messages": "hi"}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "text"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": -3}, 400, "max_tokens"),
]


@pytest.mark.parametrize(("path", "body", "status", "fragment"), BAD_REQUESTS)
def test_bad_requests_get_4xx_json(served: Served, path: str, body: Any, status: int, fragment: str) -> None:
    response = post(f"{served.url}{path}", body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == status
    assert fragment in error["message"]
    assert isinstance(error["type"], str)


def test_malformed_http_gets_4xx_json(served: Served) -> None:
    responses = [
        httpx.post(f"{served.url}/v1/completions", content=b"{not json", headers={"content-type": "application/json"}),
        httpx.post(f"{served.url}/v1/completions", content=b"prompt=hi"),
        httpx.get(f"{served.url}/v1/completions"),
        httpx.get(f"{served.url}/v1/nothing-here"),
    ]
    assert [response.status_code for response in responses] == [400, 400, 405, 404]
    assert all(response.json()["error"]["code"] == response.status_code for response in responses)


# ---------------------------------------------------------------------------------------------- squeezer


def squeeze_request(world: World) -> SqueezeRequest:
    example = next(iter(world.questions.values()))[0]
    return SqueezeRequest(example.question, ("first variant", "second variant"), tuple(world.passages[:3]))


@pytest.mark.asyncio
async def test_squeezer_sends_exactly_the_squeezer_messages(served: Served, tiny_world: World) -> None:
    request = squeeze_request(tiny_world)
    squeezer = make_squeezer(f"openai:{served.url}/v1", max_tokens=8)
    since = len(served.bodies)
    try:
        result = await squeezer.squeeze(request)
    finally:
        await squeezer.aclose()
    [body] = served.sent_to("/v1/chat/completions", since)
    assert body == {"model": MODEL_NAME, "messages": squeezer_messages(request), "max_tokens": 8, "temperature": 0.0}
    assert len(served.sent_to("/v1/models", since)) == 1  # the model name was learned from the server
    # the squeezer returns what the server answers to exactly that body, or the fallback when that is unusable
    [choice] = post(f"{served.url}/v1/chat/completions", body).json()["choices"]
    reason = unusable_reason(choice["message"]["content"])
    assert (result.fell_back, result.error) == (reason is not None, reason)
    if reason is None:
        assert result.text == choice["message"]["content"].strip()


@pytest.mark.asyncio
async def test_squeezer_model_from_the_spec(served: Served, tiny_world: World) -> None:
    squeezer = make_squeezer(
        f"openai:{served.url}#{MODEL_NAME}", max_tokens=4, extra_body={"top_p": 0.5, "messages": []}
    )
    since = len(served.bodies)
    try:
        await squeezer.squeeze(squeeze_request(tiny_world))
    finally:
        await squeezer.aclose()
    [body] = served.sent_to("/v1/chat/completions", since)
    assert (body["model"], body["top_p"]) == (MODEL_NAME, 0.5)
    assert body["messages"] == squeezer_messages(squeeze_request(tiny_world))  # extra_body cannot replace them
    assert served.sent_to("/v1/models", since) == []
    with pytest.raises(ValueError, match="two model names"):
        make_squeezer(f"openai:{served.url}#a", model="b")


@pytest.mark.asyncio
async def test_squeezer_falls_back_when_the_server_is_down(tiny_world: World) -> None:
    request = squeeze_request(tiny_world)
    squeezer = OpenAIChatSqueezer(f"http://127.0.0.1:{free_port()}", model="m", retries=0)
    result = await squeezer.squeeze(request)
    await squeezer.aclose()
    assert result.fell_back
    assert "OpenAIUnavailableError" in str(result.error)
    assert result.text.startswith("Doc 1 (Title:")


@pytest.mark.asyncio
async def test_squeezer_falls_back_when_the_server_hangs(tiny_world: World) -> None:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def hang() -> dict[str, Any]:
        await asyncio.sleep(1.5)
        return {"choices": [{"message": {"role": "assistant", "content": "too late"}}]}

    with ServerThread(app) as server:
        squeezer = OpenAIChatSqueezer(server.url, model="m", timeout_s=0.3)
        result = await squeezer.squeeze(squeeze_request(tiny_world))
        await squeezer.aclose()
    assert (result.fell_back, result.error) == (True, "timed out after 0.3 s")
