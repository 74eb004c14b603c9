"""A finished episode as verl's ``AgentLoopOutput``, shaped so that verl's post-processing cannot corrupt it.

Three things verl does after ``run`` returns, and what this module does about each:

- Its padding (``tokenizer.pad(..., padding="max_length")``) pads but never truncates: a prompt longer than
  ``rollout.prompt_length`` or a response longer than ``rollout.response_length`` breaks the batch's shapes. So the
  prompt is cut to its last ``prompt_length`` tokens (the engine already sent the server that same cut) and the
  response, its mask and its log-probs to ``response_length``. A cut that removes policy tokens removes the end of
  the answering turn the reward was computed from, so such a trajectory's reward is 0.
- It puts ``reward_score`` on the last response token, and under GAE a reward on an environment token (mask 0) is
  dropped (``core_algos.compute_gae_advantage_return`` carries no TD error through them). So trailing environment
  tokens (an observation the policy never answered) are removed: every response ends on a policy token.
- ``AgentLoopMetrics`` keeps only its own fields, and ``_postprocess`` builds one numpy column per key of the *first*
  sample's ``extra_fields["reward_extra_info"]``. So our rollout metrics go there, always under the same
  :data:`REWARD_EXTRA_KEYS`, all floats (verl averages them per data source in validation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent_env.episode import Trajectory

EPISODE_METRIC_KEYS = (
    "turns",
    "searches",
    "variants_per_search",
    "unique_passages_per_search",
    "valid_action_rate",
    "invalid_actions",
    "answered",
    "retrieval_latency_s",
    "retrieval_errors",
    "squeezer_latency_s",
    "squeezer_fallbacks",
    "observation_tokens",
    "generation_latency_s",
    "policy_tokens",
    "response_tokens",
)
"""The episode driver's metrics (``Trajectory.metrics``) passed on to verl; a key an episode lacks reads 0.0."""

REWARD_EXTRA_KEYS = (
    "em",
    *EPISODE_METRIC_KEYS,
    "terminated_by_answer",
    "response_truncated",
    "prompt_truncated",
    "dropped_env_tokens",
)
"""Every sample's ``reward_extra_info`` keys, in this order (never ``reward``: verl's validation adds that itself)."""


@dataclass(frozen=True)
class Limits:
    """verl's fixed tensor widths: ``rollout.prompt_length`` and ``rollout.response_length``."""

    prompt_length: int
    response_length: int


@dataclass(frozen=True)
class ShapedResponse:
    """A response cut to fit verl and ending on a policy token, with what the cut took away."""

    ids: list[int]
    mask: list[int]
    logprobs: list[float]
    cut_policy_tokens: int
    """Policy tokens beyond ``response_length`` (their turn's end, and the reward that rested on it, are lost)."""
    dropped_env_tokens: int
    """Environment tokens removed: beyond the limit, or trailing after the last policy token."""


def shape_response(trajectory: Trajectory, response_length: int) -> ShapedResponse:
    """The trajectory's response cut to ``response_length`` and stripped of trailing environment tokens."""
    ids = list(trajectory.response_ids[:response_length])
    mask = list(trajectory.response_mask[:response_length])
    logprobs = [float(value) for value in trajectory.response_logprobs[:response_length]]
    cut_mask = trajectory.response_mask[response_length:]
    cut_policy = sum(cut_mask)
    dropped = len(cut_mask) - cut_policy
    end = max((index + 1 for index, bit in enumerate(mask) if bit), default=0)
    dropped += len(mask) - end
    return ShapedResponse(ids[:end], mask[:end], logprobs[:end], cut_policy, dropped)


def reward_extra_info(
    trajectory: Trajectory, reward: float, shaped: ShapedResponse, prompt_overflow: int
) -> dict[str, float]:
    """The sample's rollout metrics under :data:`REWARD_EXTRA_KEYS` (the same keys, floats, for every sample)."""
    values = {key: float(trajectory.metrics.get(key, 0.0)) for key in EPISODE_METRIC_KEYS}
    values.update(
        em=float(reward),
        terminated_by_answer=float(trajectory.termination == "answer"),
        response_truncated=float(shaped.cut_policy_tokens > 0),
        prompt_truncated=float(prompt_overflow > 0),
        dropped_env_tokens=float(shaped.dropped_env_tokens),
    )
    return {key: values[key] for key in REWARD_EXTRA_KEYS}


def chat_turns(trajectory: Trajectory) -> int:
    """verl's ``num_turns`` convention (user, assistant and tool messages): the prompt, each policy turn, and each
    environment reply."""
    replies = sum(turn.observation_tokens > 0 for turn in trajectory.turns)
    return 1 + trajectory.num_turns + replies


def to_agent_loop_output(
    trajectory: Trajectory,
    limits: Limits,
    *,
    prompt_overflow: int = 0,
    num_preempted: int = -1,
    extra_fields: dict[str, Any] | None = None,
) -> Any:
    """The ``AgentLoopOutput`` of a finished episode (see the module docstring for what is cut and why).

    ``prompt_overflow`` is how many leading prompt tokens the engine did not send (the prompt is cut the same way
    here, and at least to ``prompt_length``)."""
    from verl.experimental.agent_loop.agent_loop import AgentLoopMetrics, AgentLoopOutput

    prompt = list(trajectory.prompt_ids[prompt_overflow:])[-limits.prompt_length :]
    shaped = shape_response(trajectory, limits.response_length)
    reward = 0.0 if shaped.cut_policy_tokens else float(trajectory.reward)
    metrics = trajectory.metrics
    loop_metrics = AgentLoopMetrics(
        generate_sequences=float(metrics.get("generation_latency_s", 0.0)),
        tool_calls=float(metrics.get("retrieval_latency_s", 0.0)) + float(metrics.get("squeezer_latency_s", 0.0)),
        num_preempted=num_preempted,
    )
    fields = {
        **(extra_fields or {}),
        "reward_extra_info": reward_extra_info(trajectory, reward, shaped, prompt_overflow),
        "termination": trajectory.termination,
    }
    return AgentLoopOutput(
        prompt_ids=prompt,
        response_ids=shaped.ids,
        response_mask=shaped.mask,
        response_logprobs=shaped.logprobs,
        reward_score=reward,
        num_turns=chat_turns(trajectory),
        metrics=loop_metrics,
        extra_fields=fields,
    )
