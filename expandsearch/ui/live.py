"""Live episodes for the browser: one question in, its turns out as events while they are generated.

:class:`LiveAgent` holds one environment (policy engine, search backend, squeezer) for every browser at once:
each request plays its own episode as a task on the server's event loop, so the engine micro-batches the turns of
all episodes in flight, and an episode waiting on its retriever or squeezer holds up no other. The events::

    start  {"question", "settings", "squeezer"}
    turn   {"phase": "generated" | "retrieved" | "observed", "turn": views.turn_view(...)}   (one turn, growing)
    end    {"answer", "termination", "metrics"}
    error  {"message"}                                   (the episode could not go on: e.g. the engine failed)

A retriever or squeezer failure is not an ``error``: the episode goes on (the policy is told the search failed,
or reads the raw passages) and the turn's view says what failed (``search_error``, ``squeezer_error``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, replace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from agent_env.episode import AgentEnv, EpisodeConfig, TurnRecord, run_episode
from agent_env.squeezers import NoSqueezer, Squeezer
from expandsearch.ui.views import turn_view


@dataclass(frozen=True)
class LiveLimits:
    """What one request may ask for; over a limit, the request gets a clear 4xx and nothing runs."""

    max_question_chars: int = 1_000
    max_concurrent_episodes: int = 8
    """Episodes in flight at once over all browsers (a side-by-side replay is a second episode)."""
    max_body_bytes: int = 16_384

    def check(self) -> None:
        for name in ("max_question_chars", "max_concurrent_episodes", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


class EpisodeRequest(BaseModel):
    """One question and the page's settings (missing settings: the server's episode defaults)."""

    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, description="the question (at most the server's max_question_chars)")
    max_variants: int | None = Field(None, ge=1, le=8, description="most query variants per search")
    topk: int | None = Field(None, ge=1, le=20, description="passages per variant")
    max_turns: int | None = Field(None, ge=1, le=8, description="policy turns, the answer included")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="0: greedy")
    squeezer: bool = Field(True, description="false: the raw passages go to the policy")
    one_query: bool = Field(False, description="search only the first variant of each search (the ablation)")
    seed: int | None = Field(None, description="sampling seed (temperature > 0), for a replay that samples alike")


class TooManyEpisodes(RuntimeError):
    """Every episode slot is taken."""


class LiveAgent:
    """Plays episodes for the browser over one shared environment."""

    def __init__(self, env: AgentEnv, squeezer_spec: str, limits: LiveLimits | None = None) -> None:
        self.env = env
        self.squeezer_spec = squeezer_spec
        self.limits = limits or LiveLimits()
        self.limits.check()
        self._raw: Squeezer = NoSqueezer()
        self._episodes: set[asyncio.Task[Any]] = set()

    def settings(self) -> dict[str, Any]:
        """The episode defaults a request starts from (shown on the page)."""
        config = self.env.config
        return {
            "max_variants": config.max_variants,
            "topk": config.topk,
            "max_turns": config.max_turns,
            "temperature": config.temperature,
            "protocol": config.protocol,
            "template": config.template,
        }

    def check(self, request: EpisodeRequest) -> None:
        """ValueError with the reason when the request is over a limit."""
        question = request.question.strip()
        if not question:
            raise ValueError("the question is empty")
        if len(question) > self.limits.max_question_chars:
            raise ValueError(
                f"the question has {len(question)} characters; the limit is {self.limits.max_question_chars}"
            )

    def episode_config(self, request: EpisodeRequest) -> EpisodeConfig:
        given = {
            name: getattr(request, name)
            for name in ("max_variants", "topk", "max_turns", "temperature")
            if getattr(request, name) is not None
        }
        return replace(self.env.config, **given, search_variants=1 if request.one_query else None)

    @property
    def running(self) -> int:
        """Episodes in flight."""
        return len(self._episodes)

    def start(self, request: EpisodeRequest) -> LiveEpisode:
        """Start the request's episode now (TooManyEpisodes when every slot is taken); its slot is free again
        when the episode task ends, however it ends, so a client that never reads its stream leaks nothing."""
        if self.running >= self.limits.max_concurrent_episodes:
            raise TooManyEpisodes(
                f"{self.running} episodes are running, the most this server plays at once; try again when one has ended"
            )
        config = self.episode_config(request)
        squeezer = self.env.squeezer if request.squeezer else self._raw
        env = AgentEnv(self.env.engine, self.env.tokenizer, self.env.search, squeezer, config)
        question = request.question.strip()
        queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()

        def observe(phase: str, number: int, record: TurnRecord) -> None:
            queue.put_nowait(("turn", {"phase": phase, "turn": turn_view(asdict(record), number)}))

        task = asyncio.create_task(run_episode(env, question, seed=request.seed, observer=observe))
        self._episodes.add(task)
        task.add_done_callback(self._episodes.discard)
        started = {
            "question": question,
            "settings": {**self.settings(), **_request_settings(config, request)},
            "squeezer": self.squeezer_spec if request.squeezer else "none",
        }
        return LiveEpisode(started, task, queue)


@dataclass
class LiveEpisode:
    """One running episode and the events its observer queued."""

    started: dict[str, Any]
    task: asyncio.Task[Any]
    queue: asyncio.Queue[tuple[str, dict[str, Any]]]

    async def events(self) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """``start``, the turns as they come, then ``end`` or ``error``; leaving early cancels the episode (a
        browser that went away)."""
        try:
            yield "start", self.started
            while not self.task.done() or not self.queue.empty():
                next_event = asyncio.ensure_future(self.queue.get())
                await asyncio.wait({next_event, self.task}, return_when=asyncio.FIRST_COMPLETED)
                if next_event.done():
                    yield next_event.result()
                else:
                    next_event.cancel()  # the episode ended first; anything it queued is read next round
            yield _final_event(self.task)
        finally:
            if not self.task.done():
                self.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self.task


def _request_settings(config: EpisodeConfig, request: EpisodeRequest) -> dict[str, Any]:
    return {
        "max_variants": config.max_variants,
        "topk": config.topk,
        "max_turns": config.max_turns,
        "temperature": config.temperature,
        "squeezer": request.squeezer,
        "one_query": request.one_query,
    }


def _final_event(episode: asyncio.Task[Any]) -> tuple[str, dict[str, Any]]:
    error = episode.exception()
    if error is not None:
        return "error", {"message": f"the episode failed: {type(error).__name__}: {error}"[:500]}
    trajectory = episode.result()
    return "end", {
        "answer": trajectory.answer,
        "termination": trajectory.termination,
        "metrics": trajectory.metrics,
        "prompt_tokens": len(trajectory.prompt_ids),
    }
