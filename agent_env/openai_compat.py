"""The OpenAI-compatible HTTP API, both sides: serve a model with our stack, and call any such server.

One wire format, vLLM's flavour of the OpenAI API (what ``vllm serve MODEL`` and SGLang speak):

- :func:`create_llm_app` — a server over any :class:`~agent_env.engine.LLMEngine` (normally the micro-batching
  :class:`~agent_env.engine.TransformersEngine`, so concurrent requests share a decoding batch): ``GET /health``,
  ``GET /v1/models``, ``POST /v1/completions`` (a text or token-id prompt, or a list of them; vLLM's extensions
  ``return_tokens_as_token_ids``, ``return_token_ids``, ``include_stop_str_in_output``, ``skip_special_tokens``,
  ``add_special_tokens``) and ``POST /v1/chat/completions`` (the tokenizer's chat template). Choices carry vLLM's
  ``stop_reason``: the stop string that ended generation, or null (EOS, length). Errors are
  ``{"error": {"message", "type", "param", "code"}}`` with ``code`` the HTTP status, as vLLM sends them; bad
  requests get a 4xx, never a 500. ``expandsearch serve-llm`` runs it under uvicorn.
- :class:`OpenAICompletionsEngine` — the generation interface (docs/formats.md) over such a server, token ids in and
  token ids out: the prompt goes as ids, the sampled ids come back through ``return_tokens_as_token_ids`` and their
  log-probs through ``logprobs=0`` (the sampled token's own log-prob only), so nothing is ever re-tokenized.
- :class:`OpenAIChatSqueezer` — squeezer kind ``openai``: the squeezer prompt
  (:func:`~agent_env.squeezers.squeezer_messages`) sent to ``/v1/chat/completions``.

The clients accept a base URL with or without ``/v1``, learn the model name (and vLLM's ``max_model_len``) from
``/v1/models`` when not given one, retry connection errors, timeouts and 5xx with exponential backoff, and raise
:class:`OpenAIRequestError` (4xx, malformed answer) or :class:`OpenAIUnavailableError` (after the retries), both
naming the URL.

What this server does not do, by design: streaming, ``n > 1``, ``echo``, beam search; ``logprobs=k`` returns the
sampled token's log-prob only (``top_logprobs`` holds that one token, whatever k); chat answers carry no log-probs.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import math
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from http import HTTPStatus
from typing import Annotated, Any

import httpx
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr
from starlette.exceptions import HTTPException

from agent_env.engine import Generation, LLMEngine, SamplingParams, StopReason, check_prompt, derive_seed
from agent_env.squeezers import FALLBACK_CHARS, Squeezer, SqueezeRequest, squeezer_messages

TOKEN_ID_PREFIX = "token_id:"
"""How vLLM writes a token when ``return_tokens_as_token_ids`` is set: ``token_id:123``."""
MIN_LOGPROB = -9999.0
"""vLLM clamps log-probs to this, since JSON has no -inf."""
DEFAULT_COMPLETION_MAX_TOKENS = 16  # vLLM's (and OpenAI's) default for /v1/completions
DEFAULT_CHAT_MAX_TOKENS = 512  # chat without max_tokens when the context length is unknown


# ---------------------------------------------------------------------------------------------- client errors


class OpenAICompatError(Exception):
    """Base class of the clients' errors."""


class OpenAIRequestError(OpenAICompatError):
    """The server rejected the request (4xx) or answered something that is not the expected format."""

    def __init__(self, url: str, status: int, message: str) -> None:
        super().__init__(f"{url} answered {status}: {message}")
        self.url = url
        self.status = status
        self.message = message


class OpenAIUnavailableError(OpenAICompatError):
    """No usable answer after every retry (connection refused, timeouts, 5xx)."""

    def __init__(self, url: str, attempts: int, last_error: str) -> None:
        super().__init__(f"LLM server at {url} unavailable after {attempts} attempt(s); last error: {last_error}")
        self.url = url
        self.attempts = attempts
        self.last_error = last_error


# ---------------------------------------------------------------------------------------------- HTTP with retries


def api_base_url(url: str) -> str:
    """``http://host:port``, ``http://host:port/v1`` or ``…/v1/`` → ``http://host:port/v1``."""
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"expected an http:// or https:// URL for the LLM server, got {url!r}")
    return url if url.endswith("/v1") else f"{url}/v1"


class _JSONClient:
    """JSON requests under ``base_url`` (the ``/v1`` root): transport errors and 5xx retry, 4xx raise at once."""

    def __init__(self, base_url: str, *, timeout_s: float, retries: int, backoff_s: float, api_key: str | None) -> None:
        if timeout_s <= 0 or retries < 0 or backoff_s < 0:
            raise ValueError("timeout_s must be > 0, retries and backoff_s >= 0")
        self.base_url = api_base_url(base_url)
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._http is None or self._loop is not loop:
            # An httpx pool belongs to the loop that opened its connections: a new loop (each asyncio.run of a
            # script or test) gets a new client instead of failing on the old loop's sockets.
            self._http = httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout_s, headers=self._headers)
            self._loop = loop
        return self._http

    async def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        url = f"{self.base_url}{path}"
        last_error = ""
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                response = await self._client().request(method, path, json=body)
            except httpx.TransportError as error:  # refused, reset, timeouts, protocol errors
                last_error = f"{type(error).__name__}: {error}"
                continue
            if response.status_code >= 500:
                last_error = f"HTTP {response.status_code}: {_error_message(response)}"
                continue
            if response.status_code >= 400:
                raise OpenAIRequestError(url, response.status_code, _error_message(response))
            return _json_object(response, url)
        raise OpenAIUnavailableError(url, self.retries + 1, last_error)

    async def aclose(self) -> None:
        http, self._http = self._http, None
        if http is not None and self._loop is asyncio.get_running_loop():
            await http.aclose()


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    if not isinstance(body, dict):
        return str(body)[:500]
    # OpenAI and new vLLM nest {"error": {"message"}}; old vLLM puts "message" on top; FastAPI says "detail"
    error = body.get("error")
    message = error.get("message", error) if isinstance(error, dict) else error
    return str(message or body.get("message") or body.get("detail") or body)[:500]


def _json_object(response: httpx.Response, url: str) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError as error:
        raise OpenAIRequestError(url, response.status_code, f"answer is not JSON: {response.text[:200]!r}") from error
    if not isinstance(body, dict):
        raise OpenAIRequestError(url, response.status_code, f"answer is not a JSON object: {body!r:.200}")
    return body


def _model_cards(answer: dict[str, Any], url: str) -> list[dict[str, Any]]:
    cards = answer.get("data")
    if not isinstance(cards, list) or not all(isinstance(card, dict) and "id" in card for card in cards):
        raise OpenAIRequestError(url, 200, f"expected {{'data': [{{'id': ...}}, ...]}}, got {answer!r:.200}")
    return cards


def _only_model(cards: list[dict[str, Any]], url: str) -> str:
    names = [str(card["id"]) for card in cards]
    if len(names) != 1:
        listed = ", ".join(names) or "none"
        raise OpenAIRequestError(url, 200, f"cannot choose a model: the server lists {listed}; pass model=")
    return names[0]


# ---------------------------------------------------------------------------------------------- the engine client


class OpenAICompletionsEngine:
    """The generation interface over ``POST /v1/completions`` of vLLM, SGLang or ``expandsearch serve-llm``.

    Token ids go out as the prompt and come back through vLLM's ``return_tokens_as_token_ids``; log-probs are the
    server's for the sampled tokens (vLLM's default: the raw model's, before temperature and top-p). Stop strings
    are kept in the output (``include_stop_str_in_output``), as :class:`~agent_env.engine.TransformersEngine`
    keeps them. ``model`` and ``max_context_tokens`` default to what ``/v1/models`` says (vLLM: ``max_model_len``).
    """

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        timeout_s: float = 300.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        api_key: str | None = None,
        max_context_tokens: int | None = None,
    ) -> None:
        self._http = _JSONClient(base_url, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s, api_key=api_key)
        self.model = model
        self._max_context = max_context_tokens
        self._discovered = False

    @property
    def base_url(self) -> str:
        return self._http.base_url

    @property
    def max_context_tokens(self) -> int | None:
        """The context length given or learned from ``/v1/models`` (None until the first request learns it)."""
        return self._max_context

    async def discover(self) -> str:
        """The model name, asking ``/v1/models`` once for what was not given (name, context length)."""
        if not self._discovered:
            try:
                answer = await self._http.request("GET", "/models")
                self._adopt(_model_cards(answer, f"{self.base_url}/models"))
            except OpenAICompatError:
                if self.model is None:
                    raise
                # the name was given: a server without /v1/models is still usable, only the context stays unknown
            self._discovered = True
        assert self.model is not None
        return self.model

    def _adopt(self, cards: list[dict[str, Any]]) -> None:
        if self.model is None:
            self.model = _only_model(cards, f"{self.base_url}/models")
        card = next((card for card in cards if card["id"] == self.model), {})
        length = card.get("max_model_len")
        if self._max_context is None and isinstance(length, int) and length > 0:
            self._max_context = length

    async def generate(self, prompt_ids: Sequence[int], sampling: SamplingParams) -> Generation:
        model = await self.discover()
        check_prompt(prompt_ids, self._max_context)
        answer = await self._http.request("POST", "/completions", self._body(model, prompt_ids, sampling))
        return completion_generation(answer, sampling.stop, f"{self.base_url}/completions")

    def _body(self, model: str, prompt_ids: Sequence[int], sampling: SamplingParams) -> dict[str, Any]:
        max_tokens = sampling.max_new_tokens
        if self._max_context is not None:
            # older vLLM rejects prompt + max_tokens beyond the context instead of generating what fits
            max_tokens = min(max_tokens, self._max_context - len(prompt_ids))
        return {
            "model": model,
            "prompt": list(prompt_ids),
            "max_tokens": max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            **({} if sampling.seed is None else {"seed": sampling.seed}),
            "stop": list(sampling.stop),
            "n": 1,
            "stream": False,
            "logprobs": 0,  # the sampled token's log-prob, no alternatives
            "return_tokens_as_token_ids": True,
            "include_stop_str_in_output": True,
            "skip_special_tokens": False,
        }

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> OpenAICompletionsEngine:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def completion_generation(answer: dict[str, Any], stops: Sequence[str], url: str) -> Generation:
    """A :class:`Generation` from a ``/v1/completions`` answer asked with ``logprobs`` and token ids."""
    choices = answer.get("choices")
    if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
        raise OpenAIRequestError(url, 200, f"expected exactly one choice, got {choices!r:.200}")
    choice = choices[0]
    try:
        token_ids, logprobs = _sampled_tokens(choice)
    except (KeyError, TypeError, ValueError) as error:
        raise OpenAIRequestError(url, 200, f"cannot read the sampled tokens: {error}") from error
    return Generation(token_ids, logprobs, _stop_reason(choice, stops, url))


def _sampled_tokens(choice: dict[str, Any]) -> tuple[list[int], list[float]]:
    block = choice["logprobs"]
    if not isinstance(block, dict):
        raise ValueError("the answer has no logprobs (the server ignored logprobs=0)")
    values = block["token_logprobs"]
    ids = choice.get("token_ids")  # vLLM's return_token_ids, when a server sends it anyway
    if not isinstance(ids, list):
        ids = [_token_id(token) for token in block["tokens"]]
    if len(ids) != len(values) or any(value is None for value in values):
        raise ValueError(f"{len(ids)} tokens but log-probs {values!r:.200}")
    return [int(token) for token in ids], [float(value) for value in values]


def _token_id(token: str) -> int:
    if not token.startswith(TOKEN_ID_PREFIX):
        raise ValueError(f"token {token!r} is not 'token_id:N' (the server ignored return_tokens_as_token_ids)")
    return int(token[len(TOKEN_ID_PREFIX) :])


_MATCHED_STOP_KEYS = ("stop_reason", "matched_stop")
"""Where servers say what stopped a choice: vLLM's ``stop_reason``, SGLang's ``matched_stop`` (a stop string, a
stop token id, or null for EOS)."""


def _stop_reason(choice: dict[str, Any], stops: Sequence[str], url: str) -> StopReason:
    finish = choice.get("finish_reason")
    if finish == "length":
        return "length"
    if finish != "stop":
        raise OpenAIRequestError(url, 200, f"generation ended with finish_reason {finish!r}")
    key = next((key for key in _MATCHED_STOP_KEYS if key in choice), None)
    if key is not None:
        return "stop" if isinstance(choice[key], str) else "eos"
    # A server that does not say what stopped it: a matched stop string ends the text (include_stop_str_in_output).
    text = str(choice.get("text") or "")
    return "stop" if any(text.endswith(stop) for stop in stops) else "eos"


# ---------------------------------------------------------------------------------------------- the squeezer


class OpenAIChatSqueezer(Squeezer):
    """Squeezer kind ``openai``: :func:`~agent_env.squeezers.squeezer_messages` sent to ``/v1/chat/completions``.

    Spec forms for :func:`~agent_env.squeezers.make_squeezer`: ``openai:http://127.0.0.1:8001/v1`` (with or
    without ``/v1``; the model is then the one the server lists) or ``openai:http://host:8001/v1#MODEL`` (a URL
    fragment is never sent, so ``#`` safely carries the model name); ``model=`` as an option does the same.
    ``api_key`` defaults to ``$OPENAI_API_KEY``; ``extra_body`` adds fields to every request (for example
    ``{"chat_template_kwargs": {"enable_thinking": False}}`` for vLLM serving a thinking model) but cannot replace
    the model, the messages, ``max_tokens`` or ``temperature``. Failures and
    timeouts fall back to the raw passages (see :class:`~agent_env.squeezers.Squeezer`).
    """

    name = "openai"

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        max_tokens: int = 512,
        temperature: float = 0.0,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        fallback_chars: int = FALLBACK_CHARS,
        retries: int = 1,
        backoff_s: float = 0.5,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(timeout_s=timeout_s, fallback_chars=fallback_chars)
        url, _, named = base_url.partition("#")
        if model and named and model != named:
            raise ValueError(f"two model names for the openai squeezer: {named!r} in the URL and model={model!r}")
        if max_tokens < 1 or temperature < 0:
            raise ValueError(f"max_tokens must be >= 1 and temperature >= 0, got {max_tokens} and {temperature}")
        self.model = model or named or None
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.extra_body = dict(extra_body or {})
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self._http = _JSONClient(url, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s, api_key=key)

    @property
    def base_url(self) -> str:
        return self._http.base_url

    async def _summarize(self, request: SqueezeRequest) -> str:
        body = {
            **self.extra_body,  # first, so that nothing in it can replace the squeezer prompt
            "model": await self._model(),
            "messages": squeezer_messages(request),
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }
        answer = await self._http.request("POST", "/chat/completions", body)
        return chat_content(answer, f"{self.base_url}/chat/completions")

    async def _model(self) -> str:
        if self.model is None:
            url = f"{self.base_url}/models"
            self.model = _only_model(_model_cards(await self._http.request("GET", "/models"), url), url)
        return self.model

    async def aclose(self) -> None:
        await self._http.aclose()


def chat_content(answer: dict[str, Any], url: str) -> str:
    """The assistant's text in a ``/v1/chat/completions`` answer (empty when the server sent null)."""
    try:
        content = answer["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError) as error:
        raise OpenAIRequestError(url, 200, f"no choices[0].message.content in {answer!r:.200}") from error
    return "" if content is None else str(content)


# ---------------------------------------------------------------------------------------------- server: requests


class _Lenient(BaseModel):
    # Like vLLM: fields this server does not know are ignored, so any OpenAI client's request is accepted.
    model_config = ConfigDict(extra="allow")


class _OpenAIBody(_Lenient):
    """The sampling fields completions and chat share."""

    model: str | None = None
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    stop: StrictStr | list[StrictStr] | None = None
    n: int = Field(1, ge=1)
    stream: bool = False
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True


TokenId = Annotated[StrictInt, Field(ge=0)]


class CompletionBody(_OpenAIBody):
    """``POST /v1/completions``: the OpenAI fields this server honours plus vLLM's token-level extensions."""

    prompt: StrictStr | list[TokenId] | list[StrictStr] | list[list[TokenId]]
    max_tokens: int | None = Field(DEFAULT_COMPLETION_MAX_TOKENS, ge=1)
    logprobs: int | None = Field(None, ge=0)
    echo: bool = False
    add_special_tokens: bool = True
    return_tokens_as_token_ids: bool = False
    return_token_ids: bool = False


class ChatMessage(_Lenient):
    role: StrictStr
    content: StrictStr | list[dict[str, Any]] | None = None


class ChatBody(_OpenAIBody):
    """``POST /v1/chat/completions``; without a token limit the answer may fill the context, as in vLLM."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class _APIError(Exception):
    """A request the server cannot serve; becomes ``{"error": {...}}`` with this status."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


_ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    500: "InternalServerError",
}


def _error(status: int, message: str, param: str | None = None) -> JSONResponse:
    kind = _ERROR_TYPES.get(status, HTTPStatus(status).phrase.replace(" ", "") + "Error")
    error = {"message": message, "type": kind, "param": param, "code": status}
    return JSONResponse({"error": error}, status_code=status)


# ---------------------------------------------------------------------------------------------- server: generation


class _LLMServer:
    """What the routes do, over one engine and its tokenizer."""

    def __init__(self, engine: LLMEngine, tokenizer: Any, model_name: str) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.vocab_size = len(tokenizer)
        self.created = int(time.time())

    def models(self) -> dict[str, Any]:
        card = {
            "id": self.model_name,
            "object": "model",
            "created": self.created,
            "owned_by": "expandsearch",
            "root": self.model_name,
            "parent": None,
            "max_model_len": self.engine.max_context_tokens,
        }
        return {"object": "list", "data": [card]}

    async def complete(self, body: CompletionBody) -> dict[str, Any]:
        self._check_request(body, echo=body.echo)
        prompts = self._prompts(body)
        sampling = self._sampling(body.max_tokens or DEFAULT_COMPLETION_MAX_TOKENS, body)
        generations = await self._generate_all(prompts, sampling)
        choices = [
            self._completion_choice(index, prompt, generation, sampling.stop, body)
            for index, (prompt, generation) in enumerate(zip(prompts, generations, strict=True))
        ]
        return self._response("cmpl", "text_completion", choices, prompts, generations)

    async def chat(self, body: ChatBody) -> dict[str, Any]:
        self._check_request(body, echo=False)
        prompt = self._chat_prompt(body.messages)
        sampling = self._sampling(body.max_completion_tokens or body.max_tokens or self._room(prompt), body)
        [generation] = await self._generate_all([prompt], sampling)
        matched = self._matched_stop(generation, sampling.stop)
        text = self._text(generation, matched, body)
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": _FINISH_REASONS[generation.stop_reason],
            "stop_reason": matched,
        }
        return self._response("chatcmpl", "chat.completion", [choice], [prompt], [generation])

    def _check_request(self, body: _OpenAIBody, *, echo: bool) -> None:
        if body.model is not None and body.model != self.model_name:
            raise _APIError(404, f"The model `{body.model}` does not exist; this server serves `{self.model_name}`.")
        unsupported = {"stream": body.stream, "n > 1": body.n != 1, "echo": echo}
        named = [name for name, asked in unsupported.items() if asked]
        if named:
            raise _APIError(400, f"not supported by this server: {', '.join(named)}")

    def _prompts(self, body: CompletionBody) -> list[list[int]]:
        prompt = body.prompt
        items: list[Any] = [prompt] if isinstance(prompt, str) or _is_id_list(prompt) else list(prompt)
        if not items:
            raise _APIError(400, "prompt is empty", "prompt")
        prompts = [self._tokenize(item, body.add_special_tokens) if isinstance(item, str) else item for item in items]
        for ids in prompts:
            self._check_ids(ids)
        return prompts

    def _tokenize(self, text: str, add_special_tokens: bool) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def _check_ids(self, ids: list[int]) -> None:
        too_large = [token for token in ids if token >= self.vocab_size]
        if too_large:
            raise _APIError(400, f"token id {too_large[0]} is out of vocabulary (size {self.vocab_size})", "prompt")
        try:
            check_prompt(ids, self.engine.max_context_tokens)
        except ValueError as error:
            raise _APIError(400, f"{error}; shorten the prompt", "prompt") from error

    def _chat_prompt(self, messages: list[ChatMessage]) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise _APIError(400, "the served model has no chat template; use /v1/completions", "messages")
        conversation = [{"role": message.role, "content": _message_text(message)} for message in messages]
        try:
            text = self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        except Exception as error:  # templates raise on what they do not accept (roles out of order, ...)
            raise _APIError(400, f"the chat template rejected the messages: {error}", "messages") from error
        ids = self._tokenize(str(text), add_special_tokens=False)  # the template already wrote any special tokens
        self._check_ids(ids)
        return ids

    def _room(self, prompt: list[int]) -> int:
        context = self.engine.max_context_tokens
        return max(1, context - len(prompt)) if context else DEFAULT_CHAT_MAX_TOKENS

    def _sampling(self, max_tokens: int, body: _OpenAIBody) -> SamplingParams:
        stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        temperature = 1.0 if body.temperature is None else body.temperature
        try:
            return SamplingParams(max_tokens, temperature, 1.0 if body.top_p is None else body.top_p, stop, body.seed)
        except ValueError as error:
            raise _APIError(400, str(error)) from error

    async def _generate_all(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Generation]:
        # concurrently, so the engine's micro-batcher can decode the prompts of one request as one batch
        if sampling.seed is None:
            requests = [sampling] * len(prompts)
        else:  # n samples of one seeded request must still differ
            requests = [replace(sampling, seed=derive_seed(sampling.seed, index)) for index in range(len(prompts))]
        return list(await asyncio.gather(*map(self.engine.generate, prompts, requests)))

    def _completion_choice(
        self, index: int, prompt: list[int], generation: Generation, stops: Sequence[str], body: CompletionBody
    ) -> dict[str, Any]:
        matched = self._matched_stop(generation, stops)
        choice: dict[str, Any] = {
            "index": index,
            "text": self._text(generation, matched, body),
            "logprobs": None if body.logprobs is None else self._logprobs(generation, body.return_tokens_as_token_ids),
            "finish_reason": _FINISH_REASONS[generation.stop_reason],
            "stop_reason": matched,
            "prompt_logprobs": None,
        }
        if body.return_token_ids:
            choice.update(token_ids=list(generation.token_ids), prompt_token_ids=prompt)
        return choice

    def _matched_stop(self, generation: Generation, stops: Sequence[str]) -> str | None:
        """The stop string that ended generation: the one completed first in the generated text."""
        if generation.stop_reason != "stop":
            return None
        text = self.tokenizer.decode(generation.token_ids, skip_special_tokens=False)
        ends = [(text.find(stop) + len(stop), stop) for stop in stops if stop in text]
        return min(ends)[1] if ends else None

    def _text(self, generation: Generation, matched: str | None, body: _OpenAIBody) -> str:
        """The choice's text as vLLM writes it: cut at the stop string, the stop string and EOS text optional."""
        ids = generation.token_ids
        if generation.stop_reason == "eos" and not body.include_stop_str_in_output:
            ids = ids[:-1]
        text = str(self.tokenizer.decode(ids, skip_special_tokens=body.skip_special_tokens))
        if matched is None or matched not in text:
            return text
        end = text.index(matched) + len(matched)
        return text[:end] if body.include_stop_str_in_output else text[: end - len(matched)]

    def _logprobs(self, generation: Generation, as_token_ids: bool) -> dict[str, Any]:
        pieces = list(self.tokenizer.batch_decode([[token] for token in generation.token_ids]))
        tokens = [f"{TOKEN_ID_PREFIX}{token}" for token in generation.token_ids] if as_token_ids else pieces
        values = [_json_logprob(value) for value in generation.logprobs]
        offsets = list(itertools.accumulate((len(piece) for piece in pieces), initial=0))[: len(pieces)]
        return {
            "text_offset": offsets,
            "token_logprobs": values,
            "tokens": tokens,
            # only the sampled token: the engine computes no alternatives
            "top_logprobs": [{token: value} for token, value in zip(tokens, values, strict=True)],
        }

    def _response(
        self,
        prefix: str,
        kind: str,
        choices: list[dict[str, Any]],
        prompts: list[list[int]],
        generations: list[Generation],
    ) -> dict[str, Any]:
        prompt_tokens = sum(len(prompt) for prompt in prompts)
        completion_tokens = sum(len(generation.token_ids) for generation in generations)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        return {
            "id": f"{prefix}-{uuid.uuid4().hex}",
            "object": kind,
            "created": int(time.time()),
            "model": self.model_name,
            "choices": choices,
            "usage": usage,
        }


_FINISH_REASONS: dict[StopReason, str] = {"stop": "stop", "eos": "stop", "length": "length"}
"""Our stop reason → OpenAI's finish_reason (EOS and stop strings are both "stop"; ``stop_reason`` tells which)."""


def _is_id_list(prompt: Any) -> bool:
    return isinstance(prompt, list) and all(isinstance(item, int) for item in prompt)


def _message_text(message: ChatMessage) -> str:
    content = message.content
    if content is None or isinstance(content, str):
        return content or ""
    if any(part.get("type") != "text" for part in content):
        raise _APIError(400, "only text content parts are supported", "messages")
    return "".join(str(part.get("text", "")) for part in content)


def _json_logprob(value: float) -> float:
    return MIN_LOGPROB if math.isnan(value) else max(value, MIN_LOGPROB)


# ---------------------------------------------------------------------------------------------- server: the app


def create_llm_app(engine: LLMEngine, tokenizer: Any, model_name: str, *, api_key: str | None = None) -> FastAPI:
    """An OpenAI-compatible app (see the module docstring) over ``engine``; ``api_key`` requires a bearer token
    on ``/v1/*``. The caller owns the engine (and closes it)."""
    server = _LLMServer(engine, tokenizer, model_name)
    app = FastAPI(
        title="ExpandSearch LLM server",
        version="1.0",
        description="OpenAI-compatible completions and chat over a local model (vLLM's wire format).",
    )
    app.state.llm = server
    app.add_exception_handler(_APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
    auth = Depends(_auth_dependency(api_key))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness (no token needed)."""
        return {"status": "ok", "model": model_name}

    @app.get("/v1/models", dependencies=[auth])
    async def models() -> dict[str, Any]:
        """The served model, with its context length as vLLM's ``max_model_len``."""
        return server.models()

    @app.post("/v1/completions", dependencies=[auth])
    async def completions(body: CompletionBody) -> dict[str, Any]:
        """Complete text or token-id prompts."""
        return await server.complete(body)

    @app.post("/v1/chat/completions", dependencies=[auth])
    async def chat_completions(body: ChatBody) -> dict[str, Any]:
        """Answer a conversation, formatted with the tokenizer's chat template."""
        return await server.chat(body)

    return app


def _auth_dependency(api_key: str | None) -> Any:
    expected = api_key.encode() if api_key else None

    def check(request: Request) -> None:
        if expected is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        # compare_digest: the time taken must not reveal how much of a guessed key was right
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), expected):
            raise _APIError(401, "missing or wrong API key (send 'Authorization: Bearer KEY')")

    return check


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, _APIError)
    return _error(exc.status, exc.message, exc.param)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if any(error.get("type") == "json_invalid" for error in errors):
        return _error(400, "the request body is not valid JSON")
    # one message per top-level field: pydantic reports every alternative a union field tried, so those fields
    # get a description of what they accept instead
    first: dict[str, str] = {}
    for error in errors:
        location = tuple(error.get("loc", ()))
        field = str(location[1]) if len(location) > 1 else "body"
        first.setdefault(field, _FIELD_HINTS.get(field, str(error.get("msg", "invalid"))))
    summary = "; ".join(f"{field}: {message}" for field, message in list(first.items())[:5])
    return _error(400, f"invalid request: {summary}", next(iter(first), None))


_FIELD_HINTS = {
    "prompt": "expected a string, a list of token ids (integers >= 0), a list of strings or a list of such lists",
    "stop": "expected a string or a list of strings",
    "messages": "expected a non-empty list of {'role': str, 'content': str | list of text parts}",
}


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return _error(exc.status_code, str(exc.detail))


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    return _error(500, f"internal server error: {type(exc).__name__}: {exc}")
