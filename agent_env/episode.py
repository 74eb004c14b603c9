"""The multi-turn episode driver: think → search with several variants → squeeze → observe → … → answer.

``await run_episode(env, question, golden_answers)`` plays one episode and returns a :class:`Trajectory` in the
form of docs/formats.md. The loop is fixed and reads like the protocol (as PrimeIntellect ``verifiers``'
``MultiTurnEnv``): generate a turn → parse the action → act (search all variants in one batched retrieval,
de-duplicate the passages across variants, squeeze them) → append the observation → stop?

Two rules keep the training data honest:

- Token in, token out. The context is ``prompt_ids + response_ids`` as token ids; the policy's tokens are kept
  exactly as the engine sampled them and the environment's text is tokenized on its own and appended. Nothing
  is ever decoded and re-tokenized, so the ids the trainer sees are the ids the policy produced.
- ``response_mask`` is 1 on policy-sampled tokens and 0 on everything the environment inserted (observations,
  feedback, the final-turn notice), and ``response_logprobs`` is 0.0 there. The answer and the reward come only
  from policy-sampled text.

Stops: an answer; ``max_turns`` (the last turn is told to answer, and a search there ends the episode unanswered);
the response token budget or the model's context running out.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from agent_env.action_formats import PROTOCOLS, ActionFormat, make_action_format, templates
from agent_env.engine import Generation, LLMEngine, SamplingParams, derive_seed
from agent_env.protocol import STOP_STRINGS, Action
from agent_env.retrieval import merge_variant_hits
from agent_env.reward import exact_match, format_reward, is_valid_trajectory
from agent_env.search import SearchBackend
from agent_env.squeezers import Squeezer, SqueezeRequest, SqueezeResult
from retriever_server.base import SearchHit

Termination = Literal["answer", "max_turns", "response_budget", "context_full"]

FINAL_TURN_NOTICE = "This is your last turn: give your final answer now, as <answer> your answer </answer>.\n\n"
"""Appended (as environment tokens) to the observation before the last turn, so the last turn answers."""

SEARCH_FAILED_TEXT = "Search failed ({reason}). You can search again or answer with what you know."

MIN_TURN_TOKENS = 16
"""An observation is cut (or the episode ends) so that the policy keeps at least this many tokens to reply (or
max_turn_tokens, when that is smaller)."""


@dataclass(frozen=True)
class EpisodeConfig:
    """How one episode runs (defaults: Search-R1 budgets, ExpandSearch's three variants)."""

    protocol: str = "tags"
    """Action format: ``tags`` (<search> a ## b </search>) or ``tool_calls`` (hermes <tool_call> with a query_list)."""
    template: str = "expandsearch"
    """Prompt template of the protocol's PROMPT_TEMPLATES (``search_r1``: one query per search)."""
    max_variants: int = 3
    """Most query variants per search; 1 is Search-R1's single-query protocol."""
    search_variants: int | None = None
    """Most of the written variants actually run per search (None: all). ``1`` restricts a multi-variant policy
    to its first query with the prompt unchanged: the ablation of what the extra variants bring."""
    topk: int = 3
    """Passages retrieved per variant, before de-duplication across variants."""
    max_turns: int = 4
    """Policy turns per episode, the answering turn included."""
    max_turn_tokens: int = 500
    """Most tokens the policy may generate in one turn."""
    max_observation_tokens: int = 500
    """Most tokens of one observation body (the squeezer's summary or the raw passages)."""
    max_response_tokens: int = 4096
    """Budget of the whole response (policy and environment tokens), like verl's ``response_length``."""
    max_context_tokens: int | None = None
    """Prompt + response limit; None takes the engine's context length."""
    temperature: float = 1.0
    """Sampling temperature of the policy (0: greedy, for evaluation)."""
    top_p: float = 1.0
    """Nucleus sampling of the policy."""
    max_query_chars: int = 200
    """Longer variants are cut (at a word boundary)."""
    reward: str = "em"
    """Reward function in ``REWARDS``: ``em`` (exact match) or ``format`` (Search-R1 v0.3 format-shaped)."""
    final_turn_notice: bool = True
    """Tell the policy before its last turn that it must answer now."""

    def __post_init__(self) -> None:
        positive = ("max_variants", "topk", "max_turns", "max_turn_tokens", "max_observation_tokens")
        if self.search_variants is not None and self.search_variants < 1:
            raise ValueError(f"search_variants must be >= 1 or None, got {self.search_variants}")
        for name in (*positive, "max_response_tokens", "max_query_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.reward not in REWARDS:
            raise ValueError(f"unknown reward {self.reward!r}; known: {', '.join(sorted(REWARDS))}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}; known: {', '.join(PROTOCOLS)}")
        if self.protocol != "tags" and (self.template not in templates(self.protocol) or self.reward != "em"):
            known = ", ".join(templates(self.protocol))
            raise ValueError(f"protocol {self.protocol} takes the em reward and a template in: {known}")
        self.sampling(1)  # a bad temperature or top_p fails here, not in the first turn of every episode

    def sampling(
        self, max_new_tokens: int, seed: int | None = None, stop: tuple[str, ...] = STOP_STRINGS
    ) -> SamplingParams:
        return SamplingParams(max_new_tokens, self.temperature, self.top_p, stop, seed)


def _em(answer: str | None, golds: Sequence[str], policy_turns: Sequence[str]) -> float:
    return 0.0 if answer is None else exact_match(answer, golds)


def _format(answer: str | None, golds: Sequence[str], policy_turns: Sequence[str]) -> float:
    return format_reward(answer, golds, valid_format=is_valid_trajectory(policy_turns))


REWARDS: dict[str, Callable[[str | None, Sequence[str], Sequence[str]], float]] = {"em": _em, "format": _format}
"""Reward name → ``(answer, golds, policy_turns) -> reward``; all computed from policy-sampled text only."""


@dataclass
class AgentEnv:
    """Everything an episode talks to. The engine, search backend and squeezer batch across episodes."""

    engine: LLMEngine
    tokenizer: Any
    search: SearchBackend
    squeezer: Squeezer
    config: EpisodeConfig = field(default_factory=EpisodeConfig)
    action_format: ActionFormat = field(init=False)
    """The config's protocol for this tokenizer (its chat-template frames cut once, here)."""

    def __post_init__(self) -> None:
        self.action_format = make_action_format(self.config.protocol, self.tokenizer)

    @property
    def max_context_tokens(self) -> int | None:
        return self.config.max_context_tokens or self.engine.max_context_tokens


@dataclass
class TurnRecord:
    """What happened in one turn, for traces, the chat view and debugging."""

    policy_text: str
    action: str
    stop_reason: str
    queries: list[str] = field(default_factory=list)
    answer: str | None = None
    error: str | None = None
    hits_per_query: list[list[dict[str, Any]]] = field(default_factory=list)
    observation: str = ""
    squeezer_fell_back: bool = False
    squeezer_error: str | None = None
    search_error: str | None = None
    """Why this turn's search failed (the retriever was down or refused); the observation then says so."""
    policy_tokens: int = 0
    """Tokens the policy generated in this turn."""
    observation_tokens: int = 0
    """Environment tokens appended after this turn (observation or feedback, with their frame)."""
    generation_s: float = 0.0
    retrieval_s: float = 0.0
    squeezer_s: float = 0.0


EpisodeObserver = Callable[[str, int, TurnRecord], None]
"""Called as an episode unfolds, with a phase, the turn's number (from 0) and its record so far: ``generated``
(the policy's text and action are in), ``retrieved`` (each variant's hits), ``observed`` (the observation or
feedback the policy reads next). Live views use it; it must not block (it runs on the episode's event loop)."""


@dataclass
class Trajectory:
    """One episode as the trainer consumes it (docs/formats.md), plus its trace."""

    prompt_ids: list[int]
    response_ids: list[int]
    response_mask: list[int]
    response_logprobs: list[float]
    reward: float
    answer: str | None
    num_turns: int
    termination: Termination
    metrics: dict[str, float]
    turns: list[TurnRecord]
    question: str
    golden_answers: list[str]
    example_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trajectory:
        turns = [TurnRecord(**turn) for turn in data["turns"]]
        return cls(**{**data, "turns": turns})


@dataclass
class _Response:
    """The growing response: token ids with their mask and log-probs, always the same length."""

    ids: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)

    def add_policy(self, generation: Generation) -> None:
        self.ids += generation.token_ids
        self.mask += [1] * len(generation.token_ids)
        self.logprobs += generation.logprobs

    def add_environment(self, token_ids: list[int]) -> None:
        self.ids += token_ids
        self.mask += [0] * len(token_ids)
        self.logprobs += [0.0] * len(token_ids)


@dataclass
class _Counters:
    searches: int = 0
    variants: int = 0
    unique_passages: int = 0
    retrieval_s: float = 0.0
    retrieval_errors: int = 0
    squeezer_s: float = 0.0
    squeezer_fallbacks: int = 0
    observation_tokens: int = 0
    generation_s: float = 0.0
    invalid_actions: int = 0


def encode_chat_prompt(
    tokenizer: Any, messages: list[dict[str, str]], tools: list[dict[str, Any]] | None = None
) -> list[int]:
    """Token ids of a chat prompt ready for the assistant's reply (chat template + generation prompt; ``tools``
    rendered as the template renders them, e.g. Qwen2.5's hermes system prompt)."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
    else:  # a base model without a chat template reads the user message as plain text
        text = "\n\n".join(message["content"] for message in messages) + "\n"
    return list(tokenizer.encode(text, add_special_tokens=False))


class _Episode:
    """The state of one running episode; :func:`run_episode` drives it."""

    def __init__(
        self,
        env: AgentEnv,
        question: str,
        golden_answers: Sequence[str],
        seed: int | None = None,
        observer: EpisodeObserver | None = None,
    ) -> None:
        self.env = env
        self.seed = seed
        self.observer = observer
        self.config = env.config
        self.question = question
        self.golden_answers = list(golden_answers)
        self.format = env.action_format
        messages = self.format.messages(question, self.config.template, self.config.max_variants)
        self.prompt_ids = encode_chat_prompt(env.tokenizer, messages, self.format.tools())
        self.policy_end = ""
        """The end-of-turn text the policy's last turn stopped on (its end token), which a frame does not repeat."""
        self.response = _Response()
        self.turns: list[TurnRecord] = []
        self.counters = _Counters()
        self.answer: str | None = None

    @property
    def reserve(self) -> int:
        """Tokens kept free after an observation, so that the policy can still reply to it."""
        return min(self.config.max_turn_tokens, MIN_TURN_TOKENS)

    def room(self) -> int:
        """Tokens the response may still grow by, under both the response budget and the context length."""
        left = self.config.max_response_tokens - len(self.response.ids)
        context = self.env.max_context_tokens
        if context is not None:
            left = min(left, context - len(self.prompt_ids) - len(self.response.ids))
        return left

    async def policy_turn(self) -> tuple[Action, TurnRecord]:
        budget = min(self.config.max_turn_tokens, self.room())
        started = time.perf_counter()
        turn_seed = None if self.seed is None else derive_seed(self.seed, len(self.turns))
        sampling = self.config.sampling(budget, turn_seed, self.format.stop)
        generation = await self.env.engine.generate(self.prompt_ids + self.response.ids, sampling)
        elapsed = time.perf_counter() - started
        self.counters.generation_s += elapsed
        self.response.add_policy(generation)
        tokenizer = self.env.tokenizer
        text = tokenizer.decode(generation.token_ids, skip_special_tokens=True)
        ended = generation.stop_reason == "eos" and generation.token_ids
        self.policy_end = tokenizer.decode(generation.token_ids[-1:]) if ended else ""
        action = self.format.parse(
            text, max_variants=self.config.max_variants, max_query_chars=self.config.max_query_chars
        )
        record = TurnRecord(
            text, action.kind, generation.stop_reason, list(action.queries), action.answer, action.error
        )
        record.policy_tokens, record.generation_s = len(generation.token_ids), elapsed
        self.turns.append(record)
        self.notify("generated")
        return action, record

    def notify(self, phase: str) -> None:
        if self.observer is not None:
            self.observer(phase, len(self.turns) - 1, self.turns[-1])

    async def search_and_squeeze(self, action: Action, record: TurnRecord) -> str:
        """The observation body for a search: the squeezed (or raw) de-duplicated passages, or an error text."""
        queries = action.queries[: self.config.search_variants]
        hits = await self._retrieve(queries, record)
        self.notify("retrieved")
        if hits is None:
            return record.observation
        passages = merge_variant_hits(hits)
        self.counters.unique_passages += len(passages)
        request = SqueezeRequest(self.question, queries, tuple(passages))
        result = await self.env.squeezer.squeeze(request)
        self._count_squeeze(result, record)
        return result.text

    async def _retrieve(self, queries: tuple[str, ...], record: TurnRecord) -> list[list[SearchHit]] | None:
        self.counters.searches += 1
        self.counters.variants += len(queries)
        started = time.perf_counter()
        try:
            hits = await self.env.search.search(list(queries), self.config.topk)
        except Exception as error:  # a retriever outage must not end the episode: the policy is told and goes on
            self.counters.retrieval_errors += 1
            record.search_error = f"{type(error).__name__}: {error}"[:200]
            record.observation = SEARCH_FAILED_TEXT.format(reason=record.search_error)
            return None
        finally:
            record.retrieval_s = time.perf_counter() - started
            self.counters.retrieval_s += record.retrieval_s
        record.hits_per_query = [[_hit_dict(hit) for hit in variant_hits] for variant_hits in hits]
        return hits

    def _count_squeeze(self, result: SqueezeResult, record: TurnRecord) -> None:
        self.counters.squeezer_s += result.latency_s
        record.squeezer_s = result.latency_s
        self.counters.squeezer_fallbacks += int(result.fell_back)
        record.squeezer_fell_back, record.squeezer_error = result.fell_back, result.error

    def append_observation(self, text: str, *, wrap: bool, notice: str = "") -> bool:
        """Tokenize and append environment text (cut to fit); False when no room is left for another turn."""
        tokenizer = self.env.tokenizer
        body_ids = tokenizer.encode(text.strip(), add_special_tokens=False)[: self.config.max_observation_tokens]
        reserve = self.reserve
        frame_ids = self._frame_ids("", wrap, notice)
        body_room = self.room() - reserve - len(frame_ids)
        if body_room < 0:
            return False
        body = tokenizer.decode(body_ids[:body_room], skip_special_tokens=True) if wrap else text
        ids = self._frame_ids(body, wrap, notice)
        if len(ids) > self.room() - reserve:  # re-tokenizing the cut body can shift a token or two
            ids = ids[: self.room() - reserve]
        self.counters.observation_tokens += len(ids)
        self.response.add_environment(ids)
        self.turns[-1].observation = self.turns[-1].observation or body
        self.turns[-1].observation_tokens = len(ids)
        self.notify("observed")
        return True

    def _frame_ids(self, body: str, wrap: bool, notice: str) -> list[int]:
        frame = self.format.observation if wrap else self.format.reply
        text = frame(body, notice, self.policy_end)
        return list(self.env.tokenizer.encode(text, add_special_tokens=False))

    def trajectory(self, termination: Termination, example_id: str | None) -> Trajectory:
        policy_turns = [turn.policy_text for turn in self.turns]
        reward = REWARDS[self.config.reward](self.answer, self.golden_answers, policy_turns)
        return Trajectory(
            prompt_ids=self.prompt_ids,
            response_ids=self.response.ids,
            response_mask=self.response.mask,
            response_logprobs=self.response.logprobs,
            reward=reward,
            answer=self.answer,
            num_turns=len(self.turns),
            termination=termination,
            metrics=self._metrics(),
            turns=self.turns,
            question=self.question,
            golden_answers=self.golden_answers,
            example_id=example_id,
        )

    def _metrics(self) -> dict[str, float]:
        counters = self.counters
        valid = sum(turn.action != "invalid" for turn in self.turns)
        return {
            "turns": float(len(self.turns)),
            "searches": float(counters.searches),
            "variants_per_search": counters.variants / counters.searches if counters.searches else 0.0,
            "unique_passages_per_search": counters.unique_passages / counters.searches if counters.searches else 0.0,
            "valid_action_rate": valid / len(self.turns) if self.turns else 0.0,
            "invalid_actions": float(counters.invalid_actions),
            "answered": float(self.answer is not None),
            "retrieval_latency_s": counters.retrieval_s,
            "retrieval_errors": float(counters.retrieval_errors),
            "squeezer_latency_s": counters.squeezer_s,
            "squeezer_fallbacks": float(counters.squeezer_fallbacks),
            "observation_tokens": float(counters.observation_tokens),
            "generation_latency_s": counters.generation_s,
            "policy_tokens": float(sum(self.response.mask)),
            "response_tokens": float(len(self.response.ids)),
        }


def _hit_dict(hit: SearchHit) -> dict[str, Any]:
    return {"id": hit.id, "title": hit.title, "text": hit.text, "score": hit.score}


async def run_episode(
    env: AgentEnv,
    question: str,
    golden_answers: Sequence[str] = (),
    *,
    example_id: str | None = None,
    seed: int | None = None,
    observer: EpisodeObserver | None = None,
) -> Trajectory:
    """Play one episode to its end and return its trajectory (never raises for anything the policy writes).

    With a ``seed`` every turn is sampled from its own seeded generator, so the episode is reproducible whatever
    else the engine batches it with; without one the engine's shared generator is used. ``observer`` sees each
    turn as it is generated, searched and answered (:data:`EpisodeObserver`).
    """
    episode = _Episode(env, question, golden_answers, seed, observer)
    config = env.config
    for turn in range(config.max_turns):
        if episode.room() < episode.reserve:  # the same bar as append_observation's: its observation gets a reply
            return episode.trajectory(_out_of_room(episode), example_id)
        action, record = await episode.policy_turn()
        if action.kind == "answer":
            episode.answer = action.answer
            return episode.trajectory("answer", example_id)
        if turn == config.max_turns - 1:
            break
        notice = FINAL_TURN_NOTICE if config.final_turn_notice and turn == config.max_turns - 2 else ""
        if action.kind == "search":
            body = await episode.search_and_squeeze(action, record)
            fits = episode.append_observation(body, wrap=True, notice=notice)
        else:
            episode.counters.invalid_actions += 1
            fits = episode.append_observation(episode.format.feedback(action), wrap=False, notice=notice)
        if not fits:
            return episode.trajectory(_out_of_room(episode), example_id)
    return episode.trajectory("max_turns", example_id)


def _out_of_room(episode: _Episode) -> Termination:
    left = episode.config.max_response_tokens - len(episode.response.ids)
    return "response_budget" if left <= episode.room() else "context_full"
