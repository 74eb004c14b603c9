"""Any of our ``LLMEngine`` s served with the signature of verl's rollout servers, as a Ray actor.

verl's ``LLMServerClient`` asks its load balancer for a server and awaits
``server.generate.remote(request_id=, prompt_ids=, sampling_params=, image_data=, video_data=)``, expecting a
``TokenOutput``. :class:`EngineServer` answers that call with a :class:`~agent_env.engine.TransformersEngine` (or a
scripted policy), so verl's real ``AgentLoopWorker``, client and load balancer run end to end on CPU, where verl's
vLLM/SGLang replicas cannot (tests/expandsearch/verl_backend). It behaves as verl's servers do where the agent loop
depends on it: ``max_tokens`` caps the turn, the stop strings end it with the stop string kept, log-probs are
returned when asked for, and ``stop_reason`` is ``"completed"`` whether the turn stopped or ran out of tokens.

Log-probs are our engines' (untempered, ``log_softmax(logits)``); vLLM's under verl's default
``logprobs_mode: processed_logprobs`` are tempered. At temperature 1 the two agree; the tests sample at 1.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from agent_env.engine import LLMEngine, SamplingParams
from agent_env.protocol import STOP_STRINGS
from expandsearch.verl_backend.engine import verl_top_p

DEFAULT_MAX_TOKENS = 512
"""``max_tokens`` when a request gives none (verl's servers default to the whole response length)."""


def sampling_from_verl(params: Mapping[str, Any]) -> SamplingParams:
    """verl's sampling-parameter dict as our :class:`SamplingParams` (temperature 0 or ``top_k == 1``: greedy)."""
    stop = params.get("stop") or STOP_STRINGS
    temperature = float(params.get("temperature", 1.0))
    if int(params.get("top_k", -1)) == 1:
        temperature = 0.0
    return SamplingParams(
        max_new_tokens=int(params.get("max_tokens") or DEFAULT_MAX_TOKENS),
        temperature=temperature,
        top_p=verl_top_p(params),
        stop=tuple(stop),
        seed=params.get("seed"),
    )


class EngineServer:
    """``generate`` of a verl rollout server over the engine ``engine_factory()`` builds (in the actor's process).

    ``requests`` counts the calls by the ``request_id`` verl's client passes on (a fresh one per turn, unless
    ``full_determinism``); ``turns`` counts them all."""

    def __init__(self, engine_factory: Callable[[], LLMEngine], global_steps: int = 0) -> None:
        self.engine = engine_factory()
        self.global_steps = global_steps
        self.turns = 0
        self.max_tokens_seen: list[int] = []

    async def generate(
        self,
        request_id: str,
        *,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        image_data: Any = None,
        video_data: Any = None,
        **kwargs: Any,
    ) -> Any:
        from verl.workers.rollout.replica import TokenOutput

        if image_data or video_data:
            raise ValueError("EngineServer serves text-only policies")
        sampling = sampling_from_verl(sampling_params)
        self.turns += 1
        self.max_tokens_seen.append(sampling.max_new_tokens)
        generation = await self.engine.generate(prompt_ids, sampling)
        return TokenOutput(
            token_ids=list(generation.token_ids),
            log_probs=list(generation.logprobs) if sampling_params.get("logprobs") else None,
            stop_reason="completed",  # as verl's servers: a stop and the length limit read the same
            extra_fields={"global_steps": self.global_steps},
        )

    def stats(self) -> dict[str, Any]:
        """Turns served and the ``max_tokens`` of each (to check the agent loop passes the remaining budget)."""
        return {"turns": self.turns, "max_tokens": list(self.max_tokens_seen)}
