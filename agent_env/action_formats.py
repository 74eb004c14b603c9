"""How the policy writes its actions and how the environment's replies are framed: ``tags`` or ``tool_calls``.

An :class:`ActionFormat` is everything of an episode that depends on the format (``EpisodeConfig.protocol``):
the prompt, the stop strings, the parser, and the text of an observation or a corrective reply. The episode
driver (:mod:`agent_env.episode`) is the same loop for both, with the same metrics.

- ``tags`` (:mod:`agent_env.protocol`): ``<search> a ## b </search>``; observations are ``<information>``
  blocks inside the assistant's own text, as Search-R1 and the tiny world's tokenizer expect.
- ``tool_calls`` (:mod:`agent_env.tool_calls`): hermes ``<tool_call>`` JSON with a ``query_list``; observations
  are the chat template's tool-response turn, corrective replies a user turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from agent_env import protocol, tool_calls
from agent_env.protocol import Action

ProtocolName = Literal["tags", "tool_calls"]
PROTOCOLS: tuple[str, ...] = ("tags", "tool_calls")


class ActionFormat(Protocol):
    """The format-dependent half of an episode."""

    @property
    def stop(self) -> tuple[str, ...]: ...

    def messages(self, question: str, template: str, max_variants: int) -> list[dict[str, str]]: ...

    def tools(self) -> list[dict[str, Any]] | None: ...

    def parse(self, text: str, *, max_variants: int, max_query_chars: int) -> Action: ...

    def observation(self, body: str, notice: str, policy_end: str) -> str: ...

    def feedback(self, action: Action) -> str: ...

    def reply(self, text: str, notice: str, policy_end: str) -> str: ...


def templates(name: str) -> Sequence[str]:
    """The prompt templates a format knows."""
    return tuple(protocol.PROMPT_TEMPLATES if name == "tags" else tool_calls.PROMPT_TEMPLATES)


@dataclass(frozen=True)
class TagsFormat:
    """``<search>`` / ``<answer>`` tags, observations as ``<information>`` blocks in the assistant's text."""

    stop: tuple[str, ...] = protocol.STOP_STRINGS

    def messages(self, question: str, template: str, max_variants: int) -> list[dict[str, str]]:
        return protocol.build_messages(question, template, max_variants)

    def tools(self) -> list[dict[str, Any]] | None:
        return None

    def parse(self, text: str, *, max_variants: int, max_query_chars: int) -> Action:
        return protocol.parse_action(text, max_variants=max_variants, max_query_chars=max_query_chars)

    def observation(self, body: str, notice: str, policy_end: str) -> str:
        return protocol.render_observation(body) + notice

    def feedback(self, action: Action) -> str:
        return protocol.invalid_action_feedback(action)

    def reply(self, text: str, notice: str, policy_end: str) -> str:
        return text + notice


@dataclass(frozen=True)
class ToolCallsFormat:
    """Hermes tool calls; observations as the template's tool-response turn, corrections as a user turn."""

    frames: tool_calls.ChatFrames
    stop: tuple[str, ...] = tool_calls.STOP_STRINGS

    def messages(self, question: str, template: str, max_variants: int) -> list[dict[str, str]]:
        prompt = tool_calls.PROMPT_TEMPLATES[template].format(question=question.strip(), max_variants=max_variants)
        return [{"role": "user", "content": prompt}]

    def tools(self) -> list[dict[str, Any]] | None:
        return [tool_calls.SEARCH_TOOL]

    def parse(self, text: str, *, max_variants: int, max_query_chars: int) -> Action:
        return tool_calls.parse_tool_call_action(text, max_variants=max_variants, max_query_chars=max_query_chars)

    def observation(self, body: str, notice: str, policy_end: str) -> str:
        return self.frames.tool.render(_with_notice(body, notice), policy_ended_turn=policy_end)

    def feedback(self, action: Action) -> str:
        return tool_calls.invalid_action_feedback(action)

    def reply(self, text: str, notice: str, policy_end: str) -> str:
        return self.frames.user.render(_with_notice(text, notice), policy_ended_turn=policy_end)


def _with_notice(content: str, notice: str) -> str:
    """A turn's content with the final-turn notice inside it: after a frame comes the policy's generation prompt."""
    return f"{content.strip()}\n\n{notice.strip()}" if notice.strip() else content.strip()


def make_action_format(name: str, tokenizer: Any) -> ActionFormat:
    """The format ``name`` (``EpisodeConfig.protocol``) for a policy with ``tokenizer``."""
    if name == "tags":
        return TagsFormat()
    if name == "tool_calls":
        return ToolCallsFormat(tool_calls.chat_frames(tokenizer))
    raise ValueError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}")
