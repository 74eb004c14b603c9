"""verl's ``server_manager.generate`` behind our :class:`~agent_env.engine.LLMEngine` protocol.

One :class:`ServerManagerEngine` serves one trajectory: every turn goes out under the same ``request_id`` (verl's
load balancer keeps a request id on one server, whose prefix cache then holds the episode's context), with the
remaining response budget as ``max_tokens`` (verl's server would otherwise default every turn to the whole
``response_length``) and our stop strings with ``include_stop_str_in_output`` (the closing ``</search>`` is part of
what the policy sampled and must stay in its tokens).

verl's server reports ``stop_reason="completed"`` both for a stop and for running out of ``max_tokens``; the episode
needs to tell them apart (a cut turn has no action; an end token is not repeated by the next frame), so
:func:`classify_stop` reads it off the tokens themselves.

Log-probs are passed through exactly as the server returns them. Under verl's default
``rollout.logprobs_mode: processed_logprobs`` vLLM returns the log-probs of the temperature-scaled distribution
(``log_softmax(logits / T)``), which is what verl's actor recomputes (it divides its logits by the rollout
temperature), so ``rollout_log_probs`` and the actor's old log-probs agree; nothing is rescaled here. (Our own
engines return untempered log-probs; :mod:`.engine_server` passes those through unchanged too, and at ``T = 1``
the two conventions coincide.)
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from agent_env.engine import Generation, SamplingParams, StopReason, end_of_turn_ids

logger = logging.getLogger(__name__)


VERL_END_TOKENS = ("<|im_end|>", "<|endoftext|>")
"""Tokens that end a turn as an EOS does when a verl server stops on them (Qwen's generation config names both)."""


def verl_top_p(sampling_params: Mapping[str, Any]) -> float:
    """verl's ``top_p`` as a nucleus mass in (0, 1]: a top_p of 0 (some configs' "off") means no nucleus cut."""
    value = float(sampling_params.get("top_p", 1.0))
    return value if 0 < value <= 1 else 1.0


def classify_stop(
    token_ids: Sequence[int],
    max_tokens: int,
    stop: Sequence[str],
    *,
    tokenizer: Any,
    end_ids: Collection[int],
    server_reason: str | None,
) -> StopReason:
    """Why a turn ended, from its tokens: an end-of-turn token (``eos``), a completed stop string (``stop``), or
    neither with the budget used up or the request aborted (``length``: a cut turn)."""
    if token_ids and token_ids[-1] in end_ids:
        return "eos"
    text = tokenizer.decode(list(token_ids), skip_special_tokens=False) if token_ids else ""
    if any(string in text for string in stop):
        return "stop"
    if len(token_ids) >= max_tokens or server_reason in ("aborted", "abort"):
        return "length"
    return "eos"  # the server stopped for a reason of its own (a stop token id of its config): the turn is whole


class ServerManagerEngine:
    """An ``LLMEngine`` whose turns are ``await server_manager.generate(request_id, prompt_ids=, sampling_params=)``.

    ``base_params`` are verl's per-trajectory sampling parameters (temperature, top_p, top_k, repetition_penalty,
    logprobs); each turn overrides ``max_tokens``, ``stop``, ``include_stop_str_in_output`` and ``logprobs`` (always
    requested: ``response_logprobs`` must be real wherever the mask is 1) and takes temperature and top_p from the
    episode, which the agent loop sets from verl's.

    ``prompt_limit`` is verl's ``rollout.prompt_length``: a longer first prompt is left-truncated *before* it is sent
    (as verl's own loops do), so the server conditions on exactly the prompt the trainer will see; ``overflow`` is how
    many tokens were dropped. ``response_limit`` caps every turn's ``max_tokens`` by what is left of the response.
    """

    def __init__(
        self,
        server_manager: Any,
        request_id: str,
        tokenizer: Any,
        *,
        base_params: dict[str, Any],
        prompt_limit: int,
        response_limit: int,
        max_context_tokens: int | None = None,
        end_ids: Collection[int] = (),
    ) -> None:
        self.server_manager = server_manager
        self.request_id = request_id
        self.tokenizer = tokenizer
        self.base_params = dict(base_params)
        self.prompt_limit = prompt_limit
        self.response_limit = response_limit
        self._max_context_tokens = max_context_tokens
        self.end_ids = frozenset(end_ids) or end_of_turn_ids(tokenizer, names=VERL_END_TOKENS)
        self.prompt_tokens: int | None = None
        """Length of the episode's prompt as the episode built it (set by the first turn)."""
        self.overflow = 0
        self.turns = 0
        self.num_preempted = -1
        self.server_extra: dict[str, Any] = {}
        """The first turn's ``TokenOutput.extra_fields`` (global steps of the weights that served it)."""

    @property
    def max_context_tokens(self) -> int | None:
        return self._max_context_tokens

    async def generate(self, prompt_ids: Sequence[int], sampling: SamplingParams) -> Generation:
        context = self._context(prompt_ids)
        max_tokens = self._max_tokens(prompt_ids, sampling)
        params = {
            **self.base_params,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": max_tokens,
            "stop": list(sampling.stop),
            "include_stop_str_in_output": True,
            "logprobs": True,
        }
        output = await self.server_manager.generate(self.request_id, prompt_ids=context, sampling_params=params)
        self._record(output)
        token_ids = [int(token) for token in output.token_ids]
        logprobs = _logprobs(output.log_probs, len(token_ids))
        reason = classify_stop(
            token_ids,
            max_tokens,
            sampling.stop,
            tokenizer=self.tokenizer,
            end_ids=self.end_ids,
            server_reason=output.stop_reason,
        )
        return Generation(token_ids, logprobs, reason)

    def _context(self, prompt_ids: Sequence[int]) -> list[int]:
        """The context as the server sees it: the episode's context less the prompt's left overflow."""
        if self.prompt_tokens is None:
            self.prompt_tokens = len(prompt_ids)
            self.overflow = max(0, len(prompt_ids) - self.prompt_limit)
            if self.overflow:
                logger.warning(
                    "prompt of %d tokens exceeds rollout.prompt_length=%d; left-truncated",
                    len(prompt_ids),
                    self.prompt_limit,
                )
        return [int(token) for token in prompt_ids[self.overflow :]]

    def _max_tokens(self, prompt_ids: Sequence[int], sampling: SamplingParams) -> int:
        assert self.prompt_tokens is not None
        left = self.response_limit - (len(prompt_ids) - self.prompt_tokens)
        return max(1, min(sampling.max_new_tokens, left))

    def _record(self, output: Any) -> None:
        self.turns += 1
        preempted = getattr(output, "num_preempted", None)
        if preempted is not None:
            self.num_preempted = max(self.num_preempted, 0) + int(preempted)
        if not self.server_extra:
            self.server_extra = dict(getattr(output, "extra_fields", None) or {})


def _logprobs(values: Sequence[float] | None, count: int) -> list[float]:
    """The server's log-probs, one per token; zeros (with a warning) from a server that returned none."""
    if values is None:
        logger.warning("the server returned no log-probs; rollout_log_probs are 0.0 for this turn")
        return [0.0] * count
    if len(values) != count:
        raise ValueError(f"the server returned {len(values)} log-probs for {count} tokens")
    return [float(value) for value in values]
