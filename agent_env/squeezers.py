"""Squeezers: what turns one search's retrieved passages into the text the policy reads inside ``<information>``.

A frozen "squeezer" LLM reads the question, the query variants and every retrieved passage, and writes only the
facts needed to answer (ExpandSearch). One interface, several kinds (see :data:`SQUEEZER_KINDS` and
:func:`make_squeezer`):

- ``none``: the raw passages, numbered (Search-R1's observation);
- ``extractive``: no LLM; the retrieved sentences that best match the question and variants, within a budget;
- ``local:PATH``: a local transformers model (a model dir, a ``.gguf`` file, or ``smollm2``), micro-batched;
- ``openai:URL``: any OpenAI-compatible chat endpoint (``vllm serve MODEL``, SGLang, ``expandsearch serve-llm``).

:meth:`Squeezer.squeeze` never raises: a timeout, an exception or an unusable summary (empty, no words, protocol
tags) falls back to the first :data:`FALLBACK_CHARS` characters of the raw passages (as the ExpandSearch
reference code does), and the result says so, so episodes count fallbacks in their metrics.
"""

from __future__ import annotations

import asyncio
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from agent_env.protocol import PassageLike, render_no_results, render_passages

FALLBACK_CHARS = 1000
"""Raw-passage characters kept when the squeezer fails (ExpandSearch reference code: about 1000)."""

SQUEEZER_SYSTEM_PROMPT = (
    "You condense search results for a question-answering agent. Keep only the facts from the documents that "
    "help answer the question, stated concisely, with the names, dates and numbers exactly as written. Do not "
    "answer from your own knowledge and do not add explanations. If no document is relevant, say so in one "
    "sentence."
)

SQUEEZER_USER_TEMPLATE = (
    "Question: {question}\n"
    "Search queries: {queries}\n"
    "Documents:\n{passages}\n\n"
    "Write only the facts from these documents that are needed to answer the question, as briefly as possible."
)


@dataclass(frozen=True)
class SqueezeRequest:
    """One search action's input to the squeezer: the question, its query variants, the merged passages."""

    question: str
    queries: tuple[str, ...]
    passages: tuple[PassageLike, ...]


@dataclass(frozen=True)
class SqueezeResult:
    """The observation body (without ``<information>`` tags) and how it was obtained."""

    text: str
    fell_back: bool = False
    """True when the squeezer failed and ``text`` is the truncated raw passages."""
    error: str | None = None
    """Why it fell back (timeout, exception text, unusable output)."""
    latency_s: float = 0.0


def squeezer_messages(request: SqueezeRequest) -> list[dict[str, str]]:
    """The chat messages every LLM squeezer sends: the one place the squeezer prompt is built."""
    user = SQUEEZER_USER_TEMPLATE.format(
        question=request.question.strip(),
        queries=" ## ".join(request.queries),
        passages=render_passages(request.passages),
    )
    return [{"role": "system", "content": SQUEEZER_SYSTEM_PROMPT}, {"role": "user", "content": user}]


def fallback_text(request: SqueezeRequest, max_chars: int = FALLBACK_CHARS) -> str:
    """The raw passages, numbered, cut to ``max_chars`` at a word boundary."""
    text = render_passages(request.passages)
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    space = cut.rfind(" ")
    return (cut[:space] if space > max_chars // 2 else cut).rstrip() + " …"


_PROTOCOL_TAG_RE = re.compile(r"</?(?:search|answer|information|think)>")
_WORD_RE = re.compile(r"\w{2,}")


def unusable_reason(summary: str) -> str | None:
    """Why a squeezer's output cannot go to the policy, or None when it can."""
    if not summary.strip():
        return "empty summary"
    if not _WORD_RE.search(summary):
        return "summary has no words"
    if _PROTOCOL_TAG_RE.search(summary):
        # a summary that writes <answer> or <search> would be mistaken for the policy's own actions
        return "summary contains protocol tags"
    return None


class Squeezer(ABC):
    """Base of every squeezer: timeout, validation and fallback live here; subclasses write summaries."""

    name: str = "squeezer"

    def __init__(self, *, timeout_s: float = 60.0, fallback_chars: int = FALLBACK_CHARS) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.timeout_s = timeout_s
        self.fallback_chars = fallback_chars

    @abstractmethod
    async def _summarize(self, request: SqueezeRequest) -> str:
        """Write the summary of one request (may raise; the caller falls back)."""

    async def squeeze(self, request: SqueezeRequest) -> SqueezeResult:
        """The summary of one search's passages; never raises (falls back to truncated raw passages)."""
        if not request.passages:
            return SqueezeResult(render_no_results())
        started = time.perf_counter()
        try:
            summary = await asyncio.wait_for(self._summarize(request), self.timeout_s)
            problem = unusable_reason(summary)
        except TimeoutError:
            problem = f"timed out after {self.timeout_s:g} s"
        except Exception as error:  # any failure of the squeezer must not end the episode
            problem = f"{type(error).__name__}: {error}"
        latency = time.perf_counter() - started
        if problem is not None:
            return SqueezeResult(fallback_text(request, self.fallback_chars), True, problem, latency)
        return SqueezeResult(summary.strip(), False, None, latency)

    async def squeeze_many(self, requests: Sequence[SqueezeRequest]) -> list[SqueezeResult]:
        return list(await asyncio.gather(*(self.squeeze(request) for request in requests)))

    async def aclose(self) -> None:  # noqa: B027 -- optional hook, most squeezers hold nothing
        """Release clients or batchers (nothing by default)."""


class NoSqueezer(Squeezer):
    """Search-R1's observation: the raw passages, numbered, unchanged."""

    name = "none"

    async def _summarize(self, request: SqueezeRequest) -> str:
        return render_passages(request.passages)


SQUEEZER_KINDS: dict[str, Callable[..., Squeezer]] = {}
"""Squeezer kind → factory ``(argument, **options) -> Squeezer``; filled below and by the modules that add kinds."""


def make_squeezer(spec: str, **options: Any) -> Squeezer:
    """A squeezer from ``KIND`` or ``KIND:ARGUMENT``: ``none``, ``extractive``, ``local:PATH``, ``openai:URL``."""
    kind, _, argument = spec.partition(":")
    if kind not in SQUEEZER_KINDS:
        raise ValueError(f"unknown squeezer {spec!r}; known kinds: {', '.join(sorted(SQUEEZER_KINDS))}")
    return SQUEEZER_KINDS[kind](argument, **options)


SQUEEZER_KINDS["none"] = lambda argument, **options: NoSqueezer(**options)


def _openai_squeezer(argument: str, **options: Any) -> Squeezer:
    from agent_env.openai_compat import OpenAIChatSqueezer  # imports httpx; only when asked for

    return OpenAIChatSqueezer(argument, **options)


SQUEEZER_KINDS["openai"] = _openai_squeezer
