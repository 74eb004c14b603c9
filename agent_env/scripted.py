"""A policy whose turns are written by a Python function instead of sampled from a model.

:class:`ScriptedPolicy` speaks the same token-in/token-out ``generate`` as the model engines: it decodes the
context, asks ``respond(context_text)`` for the next turn's text, tokenizes it and applies the sampling limits
(stop strings, max new tokens) the way a model engine does. Uses: a scripted expert played through the real
environment (its trajectories get exactly the tokens and masks the trainer will see), fault-injection tests that
need a policy writing malformed actions on purpose, and benchmarks that separate environment cost from model cost.
Its log-probs are 0.0 (probability 1: the script is deterministic).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from agent_env.engine import Generation, SamplingParams, StopReason, check_prompt


class ScriptedPolicy:
    """An engine that writes ``respond(decoded_context)`` as its turn."""

    def __init__(self, tokenizer: Any, respond: Callable[[str], str], *, max_context_tokens: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.respond = respond
        self._max_context_tokens = max_context_tokens
        self.calls = 0

    @property
    def max_context_tokens(self) -> int | None:
        return self._max_context_tokens

    async def generate(self, prompt_ids: Sequence[int], sampling: SamplingParams) -> Generation:
        check_prompt(prompt_ids, self._max_context_tokens)
        self.calls += 1
        await asyncio.sleep(0)  # yield like a real engine, so concurrent episodes interleave
        context = self.tokenizer.decode(list(prompt_ids), skip_special_tokens=False)
        token_ids = list(self.tokenizer.encode(self.respond(context), add_special_tokens=False))
        token_ids, reason = self._limit(token_ids, sampling)
        return Generation(token_ids, [0.0] * len(token_ids), reason)

    def _limit(self, token_ids: list[int], sampling: SamplingParams) -> tuple[list[int], StopReason]:
        """Cut at the token completing the first stop string, else at max_new_tokens, as model engines do."""
        allowed = min(len(token_ids), sampling.max_new_tokens)
        if self._has_stop(token_ids[:allowed], sampling):
            # A prefix that holds a stop string stays holding one when it grows, so the shortest such prefix
            # (where a model engine would have stopped) is found by bisection, not by decoding every prefix.
            low, high = 1, allowed
            while low < high:
                middle = (low + high) // 2
                low, high = (low, middle) if self._has_stop(token_ids[:middle], sampling) else (middle + 1, high)
            return token_ids[:low], "stop"
        if len(token_ids) > sampling.max_new_tokens:
            return token_ids[: sampling.max_new_tokens], "length"
        return token_ids, "eos"

    def _has_stop(self, token_ids: list[int], sampling: SamplingParams) -> bool:
        text = self.tokenizer.decode(token_ids, skip_special_tokens=False)
        return any(stop in text for stop in sampling.stop)
