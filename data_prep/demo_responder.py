"""The scripted policy of real-data demonstrations and the test every kept demonstration passes.

:class:`DemoResponder` is the ``respond(context)`` of an :class:`~agent_env.scripted.ScriptedPolicy` for one
question's :class:`~data_prep.demo_plans.DemoPlan`. It reads only the context the environment gives it: each
turn it replays the observations so far, marks a hop found when an observation shows one of its evidence
sentences under its paragraph's title (:func:`shown_sentences`), quotes what it found in ``<think>`` (the sentence
as the observation showed it, clipped to fit the turn budget), and searches the next hops whose bridge it has
found, ``breadth`` untried wordings per search taken round-robin over those hops (as the world's expert does).
It answers with the first gold once every hop is found, or on the last turn.

:func:`rejection_reason` says why a played episode could not have been written by a policy that sees nothing
but the observations, or None when it could.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agent_env.episode import FINAL_TURN_NOTICE, EpisodeConfig, Trajectory
from agent_env.reward import normalize_answer
from agent_env.squeezers import split_sentences
from agent_env.tool_calls import TOOL_CALL_CLOSE, chat_frames, format_tool_call
from data_prep.demo_plans import DemoPlan, Hop, contains, norm_text
from data_prep.expert_policy import split_context

REJECTION_REASONS = (
    "no_plan",
    "no_answer",
    "evidence_not_shown",
    "out_of_turns",
    "bridge_not_shown",
    "answer_not_shown",
    "quote_not_shown",
    "reward_zero",
)
"""Every reason a question yields no demonstration, in the order they are checked."""
_OBSERVATION_RE = re.compile(r"<information>(.*?)</information>", re.DOTALL)
"""Observations of the ``tags`` protocol: ``<information>`` blocks inside the assistant's text."""
_QUOTE_WINDOWS = (None, 24, 16, 10, 6)  # words kept around the fact when a quote makes the turn too long


# --- reading observations -------------------------------------------------------------------------------------------


def observation_pattern(tokenizer: Any, protocol: str) -> re.Pattern[str]:
    """What finds the observations in a decoded context: the ``<information>`` blocks of the ``tags`` protocol, or
    for ``tool_calls`` the text from each ``</tool_call>`` to the generation prompt that the template's
    tool-response turn ends with (the turn's header is read along with the passages: it names no title)."""
    if protocol != "tool_calls":
        return _OBSERVATION_RE
    frame = chat_frames(tokenizer).tool
    return re.compile(re.escape(TOOL_CALL_CLOSE) + "(.*?)" + re.escape(frame.after), re.DOTALL)


def _labelled_lines(observation: str, title: str) -> list[str] | None:
    """Texts of the observation's lines labelled with ``title``; None when no line has a ``Doc N`` label at all
    (an LLM squeezer's free text), in which case every sentence counts."""
    lines = [norm_text(line) for line in observation.splitlines()]
    if not any(re.match(r"Doc \d+\b", line) for line in lines):
        return None
    label = re.compile(r"Doc \d+ \(Title: " + re.escape(norm_text(title)) + r"\) ?(.*)$")
    return [match.group(1) for line in lines if (match := label.match(line))]


def _states(sentence: str, hop: Hop) -> bool:
    """Whether an observed sentence states the hop: it is (a large part of) an evidence sentence, holding the
    hop's value when the evidence does."""
    seen = norm_text(sentence).casefold()
    for evidence in hop.evidence:
        full = norm_text(evidence).casefold()
        if not seen or not (seen in full or full in seen):
            continue
        if hop.value and contains(evidence, hop.value):
            if contains(sentence, hop.value):
                return True
        elif len(seen) * 2 >= len(full):
            return True
    return False


def shown_sentences(observation: str, hop: Hop) -> list[str]:
    """The sentences of ``observation`` that state ``hop`` (as the observation wrote them), best first: the
    evidence sentences, then other sentences of the hop's paragraph that hold its value (the fact said another
    way, or a squeezer's cut of the evidence sentence)."""
    texts = _labelled_lines(observation, hop.title)
    sentences = [s for text in ([observation] if texts is None else texts) for s in split_sentences(text)]
    stating = [sentence for sentence in sentences if _states(sentence, hop)]
    if texts is not None and hop.value:  # under the paragraph's own label, the value is the fact
        stating += [s for s in sentences if s not in stating and contains(s, hop.value)]
    return stating


def _clip(quote: str, value: str | None, words: int | None) -> str:
    """A contiguous window of ``words`` words of ``quote`` around ``value`` (the whole quote for None)."""
    tokens = quote.split()
    if words is None or len(tokens) <= words:
        return quote
    start = 0
    if value:
        first = value.split()[0].casefold() if value.split() else ""
        start = next((i for i, token in enumerate(tokens) if first and first in token.casefold()), 0)
    start = max(0, min(start - words // 3, len(tokens) - words))
    return " ".join(tokens[start : start + words])


# --- the responder ------------------------------------------------------------------------------------------------


@dataclass
class _Progress:
    """What the responder knows after replaying the observations."""

    found: dict[int, list[str]] = field(default_factory=dict)  # hop -> the sentences that stated it
    new: list[int] = field(default_factory=list)  # hops found in the latest observation
    tried: set[str] = field(default_factory=set)  # queries sent (case-folded)


class DemoResponder:
    """``respond(context) -> next turn`` for one question's plan; writes what a reader of the context could."""

    def __init__(self, plan: DemoPlan, breadth: int, tokenizer: Any, config: EpisodeConfig) -> None:
        if not 1 <= breadth <= config.max_variants:
            raise ValueError(f"breadth {breadth} must lie within 1..{config.max_variants}")
        self.plan, self.breadth, self.tokenizer, self.config = plan, breadth, tokenizer, config
        self.observations_re = observation_pattern(tokenizer, config.protocol)
        self.quotes: list[list[str]] = []  # per turn written, the quotes its <think> holds
        self.targets: list[list[int]] = []  # per turn written, the hops it searched for

    def __call__(self, context: str) -> str:
        _, tail = split_context(context)
        observations = self.observations_re.findall(tail)
        progress = self._replay(observations)
        last = FINAL_TURN_NOTICE.strip() in tail or len(observations) >= self.config.max_turns - 1
        search = None if last else self._next_search(progress)
        quotes = [(sentence, self.plan.hops[hop].value) for hop in progress.new for sentence in progress.found[hop]]
        del self.quotes[len(observations) :], self.targets[len(observations) :]  # a repeated call rewrites its turn
        text, used = self._fit(quotes, search, nothing_new=bool(observations) and not progress.new)
        self.quotes.append(used)
        self.targets.append(search[0] if search else [])
        return text

    def _replay(self, observations: Sequence[str]) -> _Progress:
        progress = _Progress()
        for observation in observations:
            search = self._next_search(progress)
            progress.tried |= {query.casefold() for query in (search[1] if search else ())}
            progress.new = []
            for index, hop in enumerate(self.plan.hops):
                if index not in progress.found and (sentences := shown_sentences(observation, hop)):
                    progress.found[index] = sentences[:1]
                    progress.new.append(index)
        return progress

    def _next_search(self, progress: _Progress) -> tuple[list[int], list[str]] | None:
        """The hops to search next (found neither, bridge found, a wording left) and ``breadth`` untried
        wordings taken round-robin over them; None when nothing is left to search."""
        hops = self.plan.hops
        ready = [
            index
            for index, hop in enumerate(hops)
            if index not in progress.found
            and (hop.after is None or hop.after in progress.found)
            and any(query.casefold() not in progress.tried for query in hop.queries)
        ][: self.breadth]
        if not ready:
            return None
        left = {index: [q for q in hops[index].queries if q.casefold() not in progress.tried] for index in ready}
        queries: list[str] = []
        while len(queries) < self.breadth and any(left.values()):
            for index in ready:
                if left[index] and len(queries) < self.breadth:
                    query = left[index].pop(0)
                    if query.casefold() not in {q.casefold() for q in queries}:
                        queries.append(query)
        return ready, queries

    def _fit(
        self, quotes: list[tuple[str, str | None]], search: tuple[list[int], list[str]] | None, *, nothing_new: bool
    ) -> tuple[str, list[str]]:
        """The turn text with its quotes clipped until it fits ``max_turn_tokens``, and the quotes used."""
        text, used = "", []
        for words in _QUOTE_WINDOWS:
            used = [_clip(sentence, value, words) for sentence, value in quotes]
            text = self._turn(used, search, nothing_new)
            if len(self.tokenizer.encode(text, add_special_tokens=False)) <= self.config.max_turn_tokens:
                return text, used
        return self._turn([], search, nothing_new), []

    def _turn(self, quotes: list[str], search: tuple[list[int], list[str]] | None, nothing_new: bool) -> str:
        read = "".join(f'I read: "{quote}" ' for quote in quotes)
        if nothing_new:
            read += "The results do not state it yet. "
        if search is None:
            answer = self.plan.answer
            return f"<think> {read}So the answer is {answer}. </think>\n<answer> {answer} </answer>"
        needs = " and ".join(self.plan.hops[index].need for index in search[0])
        if self.config.protocol == "tool_calls":
            return f"<think> {read}I need to find {needs}. </think>\n{format_tool_call(search[1])}"
        return f"<think> {read}I need to find {needs}. </think>\n<search> {' ## '.join(search[1])} </search>"


# --- rejection ----------------------------------------------------------------------------------------------------


def _observations(trajectory: Trajectory) -> list[str]:
    return [turn.observation for turn in trajectory.turns]


def _answer_shown(plan: DemoPlan, seen: str) -> bool:
    answer = normalize_answer(plan.answer)
    if f" {answer} " in f" {normalize_answer(seen)} ":
        return True
    # Comparison questions answer yes/no or with one of the entities they name, read off the compared facts.
    return plan.comparison and (
        answer in {"yes", "no"} or f" {answer} " in f" {normalize_answer(plan.example.question)} "
    )


def rejection_reason(
    plan: DemoPlan, trajectory: Trajectory, quotes: Sequence[Sequence[str]], targets: Sequence[Sequence[int]]
) -> str | None:
    """Why a policy seeing only the observations could not have written this episode; None when it could.
    ``quotes`` and ``targets`` are the responder's, per turn (:attr:`DemoResponder.quotes`, ``.targets``)."""
    observations = _observations(trajectory)
    if trajectory.termination != "answer":
        return "no_answer"
    unshown = [i for i, hop in enumerate(plan.hops) if not any(shown_sentences(obs, hop) for obs in observations)]
    searched = {hop for turn in targets for hop in turn}
    if any(hop in searched for hop in unshown):
        return "evidence_not_shown"
    if unshown:  # the plan never got to these hops within max_turns
        return "out_of_turns"
    for turn, record in enumerate(trajectory.turns):
        # a policy can copy an entity from the question or from what it was shown before this turn
        visible = "\n".join([plan.example.question, *observations[:turn]])
        for hop in plan.hops:
            if (
                hop.bridge
                and any(contains(q, hop.bridge) for q in record.queries)
                and not contains(visible, hop.bridge)
            ):
                return "bridge_not_shown"
    if not _answer_shown(plan, "\n".join(observations)):
        return "answer_not_shown"
    for turn, turn_quotes in enumerate(quotes):
        if not all(contains("\n".join(observations[:turn]), quote) for quote in turn_quotes):
            return "quote_not_shown"
    return None if trajectory.reward == 1.0 else "reward_zero"
