"""The scripted expert played through the real environment, as an engine: demonstrations for behaviour cloning.

:func:`data_prep.expert.run_expert` drives the expert with its own small loop. For a warm start we want the
expert's episodes *as the trainer will see them*: the prompt built by the environment, the policy turns as token
ids with ``response_mask == 1``, the observations (squeezed or raw, cut to the observation budget, with the
final-turn notice) as environment tokens with ``response_mask == 0``. So :func:`expert_policy` wraps the expert in
an :class:`~agent_env.scripted.ScriptedPolicy` and lets :func:`agent_env.episode.run_episode` (or a
:class:`~agent_env.rollout.RolloutRunner`) play it like any model.

The engine keeps no state between calls: each call finds the question in the decoded context, replays a fresh
:class:`~data_prep.expert.ExpertEpisode` over the ``<information>`` blocks the environment inserted, and writes the
next turn. Replaying is deterministic, so it gives the same turn as a live episode would, and any number of
concurrent episodes (several samples of one question included) can share one engine.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from typing import Any

from agent_env.episode import FINAL_TURN_NOTICE
from agent_env.scripted import ScriptedPolicy
from data_prep.expert import ExpertEpisode, FactReader
from data_prep.formats import QAExample
from data_prep.synthetic import WorldLexicon

QUESTION_PREFIX = "Question: "
"""Both prompt templates of ``agent_env.protocol`` end with ``Question: {question}`` on its own line."""

_OBSERVATION_RE = re.compile(r"<information>(.*?)</information>", re.DOTALL)


class UnknownQuestionError(KeyError):
    """The context asks a question the expert was not given (it only plays the examples it knows)."""


class ExpertResponder:
    """``respond(context) -> next turn`` for the scripted expert; stateless, so safe under concurrency."""

    def __init__(
        self,
        examples: Sequence[QAExample],
        lexicon: WorldLexicon,
        *,
        max_variants: int = 3,
        max_turns: int | None = None,
        variant_mix: Sequence[int] = (),
        count_facts: bool = False,
    ) -> None:
        self.reader = FactReader(lexicon)
        self.count_facts = count_facts
        self.max_variants = max_variants
        self.max_turns = max_turns
        self.variant_mix = tuple(variant_mix)
        if any(not 1 <= variants <= max_variants for variants in self.variant_mix):
            raise ValueError(f"variant_mix {self.variant_mix} must lie within 1..{max_variants}")
        # Two examples with the same text ask the same thing (same people, same relation), so either will do.
        self._by_question = {_normalize(example.question): example for example in reversed(examples)}

    def __call__(self, context: str) -> str:
        question, tail = split_context(context)
        example = self._by_question.get(_normalize(question))
        if example is None:
            raise UnknownQuestionError(f"the expert has no example for question {question!r}")
        observations = [match.group(1) for match in _OBSERVATION_RE.finditer(tail)]
        episode = self._replay(example, observations)
        last_turn = FINAL_TURN_NOTICE.strip() in tail or (
            self.max_turns is not None and len(observations) >= self.max_turns - 1
        )
        return episode.next_turn(last_turn=last_turn)

    def _replay(self, example: QAExample, observations: list[str]) -> ExpertEpisode:
        """The expert's state after the earlier turns: each searched (never a last turn) and read its result."""
        episode = ExpertEpisode(example, self.reader, self.variants_for(example), count_facts=self.count_facts)
        for observation in observations:
            episode.next_turn(last_turn=False)  # advances which query wordings have been tried
            episode.observe(render_as_read(observation))
        return episode

    def variants_for(self, example: QAExample) -> int:
        """How many variants the expert writes per search on ``example``: ``max_variants``, or with a
        ``variant_mix`` one of its values, fixed per question (a hash of its id, so replays and reruns agree)."""
        if not self.variant_mix:
            return self.max_variants
        return self.variant_mix[zlib.crc32(example.id.encode()) % len(self.variant_mix)]


def render_as_read(body: str) -> str:
    """An observation body framed as ``run_expert`` hands it to the expert (the reader only scans the text)."""
    return f"<information>{body}</information>"


def split_context(context: str) -> tuple[str, str]:
    """``(question, everything after the question line)`` of a decoded episode context.

    The prompt template itself mentions ``<information>``, so observations are looked for only after the
    question line, where the conversation (the generation prompt, turns, observations) starts.
    """
    start = context.find(QUESTION_PREFIX)
    if start == -1:
        raise UnknownQuestionError("no 'Question: ' line in the context: not a prompt of agent_env.protocol")
    start += len(QUESTION_PREFIX)
    end = context.find("\n", start)
    end = len(context) if end == -1 else end
    return context[start:end], context[end:]


def _normalize(question: str) -> str:
    return " ".join(question.split())


def expert_policy(
    tokenizer: Any,
    examples: Sequence[QAExample],
    lexicon: WorldLexicon,
    *,
    max_variants: int = 3,
    max_turns: int | None = None,
    max_context_tokens: int | None = None,
    variant_mix: Sequence[int] = (),
    count_facts: bool = False,
) -> ScriptedPolicy:
    """An engine whose turns are the scripted expert's, for episodes on any of ``examples``.

    ``max_turns`` (the episode's) makes the expert answer on the last turn even when the environment sends no
    final-turn notice; with the notice (the default) it is not needed. ``variant_mix`` (e.g. ``(1, 2, 3)``) makes
    the expert search some questions with fewer variants (see :meth:`ExpertResponder.variants_for`);
    ``count_facts`` makes it say in every ``<think>`` how many facts are left (see ``ExpertEpisode``).
    """
    respond = ExpertResponder(
        examples,
        lexicon,
        max_variants=max_variants,
        max_turns=max_turns,
        variant_mix=variant_mix,
        count_facts=count_facts,
    )
    return ScriptedPolicy(tokenizer, respond, max_context_tokens=max_context_tokens)
