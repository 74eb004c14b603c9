"""The ``tool_calls`` action format, for instruction models trained on function calls (Qwen2.5's hermes style).

The policy searches by calling one tool, with a list of query variants per call (the schema of verl's former
search tool, which the ExpandSearch reference code trains with)::

    <tool_call>
    {"name": "search", "arguments": {"query_list": ["variant 1", "variant 2"]}}
    </tool_call>

and answers as in the ``tags`` format, ``<answer> … </answer>``. The environment returns the passages as the chat
template's tool-response turn (Qwen2.5: a ``user`` turn holding ``<tool_response> … </tool_response>``; a
ChatML template without tool support: a ``tool`` turn), and a corrective text after an unparsable turn as a user
turn. Those turns are token ids appended to the response, cut from the template once per tokenizer
(:func:`chat_frames`), so nothing the policy wrote is ever decoded and encoded again.

:func:`parse_tool_call_action` gives the same guarantees as :func:`agent_env.protocol.parse_action`: it never
raises, the first completed action wins, and the variants are cleaned the same way. Standard library only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent_env import protocol
from agent_env.protocol import Action, clean_answer, clean_queries, invalid

TOOL_NAME = "search"
TOOL_CALL_CLOSE = "</tool_call>"
STOP_STRINGS = (TOOL_CALL_CLOSE, "</answer>")
"""Generation stops after the first tool call or answer, like the tags format's stop strings."""
_CLOSES = {"</tool_call>": "<tool_call>", "</answer>": "<answer>"}

SEARCH_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": TOOL_NAME,
        "description": "Searches a text corpus with several query variants at once and returns the passages found.",
        "parameters": {
            "type": "object",
            "properties": {
                "query_list": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "Query variants: paraphrases, sub-questions or keyword forms of what to look up.",
                }
            },
            "required": ["query_list"],
        },
    },
}
"""The tool as ``apply_chat_template(..., tools=[SEARCH_TOOL])`` takes it (OpenAI function schema)."""

PROMPT_TEMPLATES: dict[str, str] = {
    "expandsearch": (
        "Answer the question below. Think step by step inside <think> and </think> whenever you get new "
        "information. If you need knowledge you do not have, call the search tool, with up to {max_variants} "
        "query variants in one call (paraphrases of the question, the sub-questions it breaks into, or short "
        'keyword forms): <tool_call>{{"name": "search", "arguments": {{"query_list": ["query 1", "query 2"]}}}}'
        "</tool_call>. All variants are searched at once and the passages come back as the tool's response. "
        "You may search as often as you need. When you know the answer, give it inside <answer> and </answer> "
        "in a few words, with no explanation, for example <answer> Beijing </answer>.\nQuestion: {question}\n"
    ),
    "search_r1": (
        "Answer the question below. Think step by step inside <think> and </think> whenever you get new "
        "information. If you need knowledge you do not have, call the search tool with one query: "
        '<tool_call>{{"name": "search", "arguments": {{"query_list": ["query"]}}}}</tool_call>; the passages '
        "come back as the tool's response. You may search as often as you need. When you know the answer, give "
        "it inside <answer> and </answer> in a few words, with no explanation, for example "
        "<answer> Beijing </answer>.\nQuestion: {question}\n"
    ),
}
"""The ``tool_calls`` format's prompts, under the names of the ``tags`` format's (same wording otherwise)."""


def format_tool_call(queries: list[str]) -> str:
    """A search call as the policy writes it (demonstrations, tests)."""
    call = {"name": TOOL_NAME, "arguments": {"query_list": list(queries)}}
    return f"<tool_call>\n{json.dumps(call, ensure_ascii=False)}\n</tool_call>"


def truncate_turn(text: str) -> str:
    """Cut a turn after its first ``</tool_call>`` or ``</answer>``, as stopping generation there does."""
    return protocol.truncate_turn(text, STOP_STRINGS)


def parse_tool_call_action(text: str, *, max_variants: int = 3, max_query_chars: int = 200) -> Action:
    """Parse one policy turn of the ``tool_calls`` format into an :class:`Action`; never raises for any ``text``.

    - The first completed ``</tool_call>`` or ``</answer>`` closes the action (so ``parse(t) ==
      parse(truncate_turn(t))``); its body starts after the last matching opening tag before it.
    - A tool call's body is one JSON object ``{"name": "search", "arguments": {...}}``; ``arguments`` may also
      be a JSON string holding that object (some models write it so). The variants are ``query_list`` (a list
      of strings) or a single ``query`` string. Anything else (bad JSON, another tool, a non-string variant)
      is invalid, with the reason.
    - Variants are cleaned as in the tags format (whitespace collapsed, over-long ones cut, case-insensitive
      duplicates and empty ones dropped, the first ``max_variants`` kept); none left → invalid.
    - Answer body: stray tags removed, whitespace collapsed; empty → invalid.
    """
    if max_variants < 1 or max_query_chars < 1:
        raise ValueError(f"max_variants and max_query_chars must be >= 1, got {max_variants}, {max_query_chars}")
    closes = [(pos, tag) for tag in _CLOSES if (pos := text.find(tag)) != -1]
    if not closes:
        return invalid(_why_no_action(text))
    close_pos, close_tag = min(closes)
    open_tag = _CLOSES[close_tag]
    open_pos = text.rfind(open_tag, 0, close_pos)
    if open_pos == -1:
        return invalid(f"{close_tag} without a matching {open_tag}")
    body = text[open_pos + len(open_tag) : close_pos]
    if close_tag == "</answer>":
        answer = clean_answer(body)
        return Action(kind="answer", answer=answer) if answer else invalid("empty answer in <answer> </answer>")
    variants = _call_variants(body)
    if isinstance(variants, Action):
        return variants
    queries = clean_queries(variants, max_variants, max_query_chars)
    if not queries:
        return invalid("empty search: no query in the call's query_list")
    return Action(kind="search", queries=queries)


def _why_no_action(text: str) -> str:
    for open_tag, close_tag in (("<tool_call>", "</tool_call>"), ("<answer>", "</answer>")):
        if open_tag in text:
            return f"unclosed {open_tag} (missing {close_tag})"
    return "no <tool_call> or <answer> action found"


def _call_variants(body: str) -> list[str] | Action:
    """The raw query variants of a tool call's JSON body, or an invalid Action saying what is wrong."""
    call = _json_object(body)
    if call is None:
        return invalid('the tool call is not a JSON object like {"name": "search", "arguments": {...}}')
    name = call.get("name")
    if name != TOOL_NAME:
        return invalid(f"unknown tool {str(name)[:40]!r}: the only tool is {TOOL_NAME!r}")
    arguments = call.get("arguments", call.get("parameters"))
    if isinstance(arguments, str):
        arguments = _json_object(arguments)
    if not isinstance(arguments, Mapping):
        return invalid('the search call needs "arguments": {"query_list": [...]}')
    variants = arguments.get("query_list", arguments.get("query"))
    if isinstance(variants, str):
        variants = [variants]
    if not isinstance(variants, list) or not all(isinstance(variant, str) for variant in variants):
        return invalid('"query_list" must be a list of strings')
    return variants


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: thousands of nested brackets
        return None
    return value if isinstance(value, dict) else None


def invalid_action_feedback(action: Action) -> str:
    """The corrective text after an unparsable turn (sent as a user turn)."""
    reason = action.error or "the turn has no complete action"
    return (
        f"Your previous turn was not a valid action ({reason}). To search, call the search tool as "
        f"{format_tool_call(['first query', 'second query'])}. To finish, write <answer> your short answer "
        "</answer>. Please try again."
    )


# --- the template's turns --------------------------------------------------------------------------------------------

_POLICY_MARK = "\x00POLICY\x00"
_BODY_MARK = "\x00BODY\x00"


@dataclass(frozen=True)
class TurnFrame:
    """The text a chat template puts around an inserted turn's body, from the end of the policy's last turn (its
    end-of-turn token included) to the generation prompt of the policy's next turn."""

    before: str
    after: str

    def render(self, body: str, *, policy_ended_turn: str = "") -> str:
        """The turn around ``body``; ``policy_ended_turn``: the end-of-turn text the policy already wrote (its
        last token, when it stopped on it), which is not repeated."""
        before = self.before
        if policy_ended_turn and before.startswith(policy_ended_turn):
            before = before[len(policy_ended_turn) :]
        return before + body + self.after


@dataclass(frozen=True)
class ChatFrames:
    """The template's tool-response turn and user turn (see :func:`chat_frames`)."""

    tool: TurnFrame
    user: TurnFrame


def chat_frames(tokenizer: Any) -> ChatFrames:
    """Cut the tool-response and user turns out of ``tokenizer``'s chat template, by rendering a conversation with
    marker strings and keeping the text between the policy's marker and the end; ValueError without a template."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tool_calls format needs a tokenizer with a chat template (use protocol: tags)")
    return ChatFrames(tool=_frame(tokenizer, "tool"), user=_frame(tokenizer, "user"))


def _frame(tokenizer: Any, role: str) -> TurnFrame:
    messages = [
        {"role": "user", "content": "question"},
        {"role": "assistant", "content": _POLICY_MARK},
        {"role": role, "content": _BODY_MARK},
    ]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    _, found, tail = text.partition(_POLICY_MARK)
    before, found_body, after = tail.partition(_BODY_MARK)
    if not found or not found_body:
        raise ValueError(f"the chat template does not render a {role!r} turn after an assistant turn")
    return TurnFrame(before, after)
