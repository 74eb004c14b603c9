"""The generation interface over vLLM in this process (GPU machines; ``pip install -e .[gpu]``).

:class:`VLLMEngine` wraps vLLM's ``AsyncLLMEngine`` (in vLLM ≥ 0.10 an alias of ``vllm.v1.engine.async_llm.AsyncLLM``):
token ids in (``TokensPrompt``), token ids, the sampled tokens' log-probs and a stop reason out, the same
:class:`~agent_env.engine.Generation` as :class:`~agent_env.engine.TransformersEngine`. vLLM batches concurrent
``generate`` calls itself (continuous batching), so there is no micro-batcher here.

Importing this module never needs vLLM; constructing an engine without it raises an ImportError saying what to
install. Log-probs are vLLM's default ``raw_logprobs``: the model's own, before temperature and top-p, as
:class:`~agent_env.engine.TransformersEngine` reports them.
"""

from __future__ import annotations

import importlib
import itertools
from collections.abc import Sequence
from typing import Any

from agent_env.engine import Generation, SamplingParams, StopReason, check_prompt
from agent_env.models import PACKAGED_MODELS

INSTALL_HINT = "VLLMEngine needs vLLM, which is not installed here: pip install -e .[gpu] (on a CUDA machine)"


def import_vllm() -> Any:
    """The ``vllm`` module, or an ImportError that says how to install it."""
    try:
        import vllm
    except ImportError as error:
        raise ImportError(INSTALL_HINT) from error
    return vllm


class VLLMEngine:
    """In-process vLLM behind the engine protocol.

    ``model`` is a hub id or local path as vLLM takes it, or a packaged name from
    :data:`agent_env.models.PACKAGED_MODELS` (for a GGUF file also pass ``tokenizer=``). Other keyword arguments go
    to ``vllm.AsyncEngineArgs`` (``gpu_memory_utilization``, ``max_model_len``, ``dtype``, ``tensor_parallel_size``,
    ...). ``extra_stop_token_ids`` end a turn besides the model's EOS, as in
    :class:`~agent_env.engine.TransformersEngine`.
    """

    def __init__(self, model: str, *, extra_stop_token_ids: Sequence[int] = (), **engine_args: Any) -> None:
        self._vllm = import_vllm()
        # one output per request, the finished one, instead of one per decoding step
        self._final_only = importlib.import_module("vllm.sampling_params").RequestOutputKind.FINAL_ONLY
        path = str(PACKAGED_MODELS[model]()) if model in PACKAGED_MODELS else model
        args = self._vllm.AsyncEngineArgs(model=path, **engine_args)
        self._engine = self._vllm.AsyncLLMEngine.from_engine_args(args)
        self.extra_stop_token_ids = list(extra_stop_token_ids)
        self._request_ids = itertools.count()

    @property
    def max_context_tokens(self) -> int | None:
        config = getattr(self._engine, "model_config", None)
        length = getattr(config, "max_model_len", None)
        return int(length) if length else None

    async def generate(self, prompt_ids: Sequence[int], sampling: SamplingParams) -> Generation:
        check_prompt(prompt_ids, self.max_context_tokens)
        prompt = self._vllm.TokensPrompt(prompt_token_ids=list(prompt_ids))
        request_id = f"expandsearch-{next(self._request_ids)}"
        final: Any = None
        async for output in self._engine.generate(prompt, self._params(len(prompt_ids), sampling), request_id):
            final = output
        if final is None or not final.outputs:
            raise RuntimeError(f"vLLM returned no output for request {request_id}")
        completion = final.outputs[0]
        return generation_from_vllm(
            completion.token_ids, completion.logprobs, completion.finish_reason, completion.stop_reason
        )

    def _params(self, prompt_length: int, sampling: SamplingParams) -> Any:
        context = self.max_context_tokens
        room = context - prompt_length if context else sampling.max_new_tokens
        return self._vllm.SamplingParams(
            n=1,
            max_tokens=min(sampling.max_new_tokens, room),
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=sampling.seed,
            stop=list(sampling.stop),
            stop_token_ids=self.extra_stop_token_ids,
            include_stop_str_in_output=True,  # the token that completes a stop string stays, as in our engines
            skip_special_tokens=False,  # stop strings are matched against the text with every token in it
            logprobs=0,  # the sampled token's log-prob only
            output_kind=self._final_only,
        )

    async def aclose(self) -> None:
        shutdown = getattr(self._engine, "shutdown", None)  # vLLM's v1 engine; the old one stops with the process
        if shutdown is not None:
            shutdown()


_FINISH_REASONS: dict[str, StopReason] = {"length": "length", "stop": "eos"}
"""vLLM's finish_reason → ours; a "stop" caused by a stop string (``stop_reason`` is that string) is ours "stop"."""


def generation_from_vllm(
    token_ids: Sequence[int], logprobs: Any, finish_reason: str | None, stop_reason: int | str | None
) -> Generation:
    """A :class:`Generation` from one vLLM ``CompletionOutput``'s fields (``logprobs``: one mapping per sampled
    token, token id → an object with ``.logprob``, as vLLM returns for ``logprobs=0``)."""
    if finish_reason not in _FINISH_REASONS:
        raise RuntimeError(f"vLLM ended generation with finish_reason {finish_reason!r}")
    if logprobs is None or len(logprobs) != len(token_ids):
        raise RuntimeError("vLLM returned no log-prob for some sampled tokens (was logprobs=0 set?)")
    ids = [int(token) for token in token_ids]
    values = [float(step[token].logprob) for step, token in zip(logprobs, ids, strict=True)]
    reason = "stop" if finish_reason == "stop" and isinstance(stop_reason, str) else _FINISH_REASONS[finish_reason]
    return Generation(ids, values, reason)
