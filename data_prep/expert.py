"""A scripted expert agent for the synthetic world: good query variants, read through the protocol.

The expert plays the policy's part with rules. It knows how questions of each type break into
lookups (the chain of relations in the question's metadata) and how the world words each relation,
but it learns every intermediate entity and the answer by *reading retrieved passages*: if retrieval
misses, the expert misses too. So its exact match measures how much the search strategy retrieves,
and its transcripts are demonstrations for behaviour cloning.

Each turn it writes protocol text (``<think>…</think>`` then ``<search> v1 ## v2 ## v3 </search>`` or
``<answer>…</answer>``); the environment side here parses it with ``agent_env.protocol``, retrieves
every variant in one batched BM25 call for all live episodes, merges the hits and renders the
``<information>`` observation that the expert reads next. ``max_variants=1`` turns it into a
Search-R1-style single-query searcher (it then spends turns trying one wording at a time).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache

from agent_env.protocol import parse_action, render_observation, render_passages
from agent_env.retrieval import merge_variant_hits
from agent_env.reward import exact_match, extract_answer, f1_score
from data_prep.formats import QAExample
from data_prep.synthetic import OCCUPATIONS, RELATIONS, WorldLexicon
from retriever_server.bm25 import BM25Index

# What the expert says it is looking for, per relation (keeps its <think> short and informative).
_LOOKUP_PHRASES = {
    "birth_year": "the birth year of {s}",
    "born_in": "the birthplace of {s}",
    "occupation": "the occupation of {s}",
    "works_for": "the employer of {s}",
    "located_in": "the country of {s}",
    "headquartered_in": "the headquarters of {s}",
    "founded_year": "the founding year of {s}",
}


@dataclass
class Lookup:
    """One fact the expert must read: ``relation`` of the entity mentioned as ``subject``."""

    subject: str
    relation: str
    tried: int = 0
    """How many of this lookup's query variants have been sent."""
    value: str | None = None
    """The object as the passage wrote it, once found."""
    statement: str | None = None
    """The passage's sentence that stated it."""

    def variants(self) -> list[str]:
        """Query wordings, best first: the name with each relation keyword, then the bare name."""
        keywords = RELATIONS[self.relation].keywords
        every_keyword = " ".join(keywords)
        return [f"{self.subject} {keyword}" for keyword in keywords] + [self.subject, f"{self.subject} {every_keyword}"]


class FactReader:
    """Reads ``relation(subject) = object`` out of passage text, using the world's own wordings."""

    def __init__(self, lexicon: WorldLexicon) -> None:
        self.lexicon = lexicon
        self._names = {kind: lexicon.names_of_kind(kind) for kind in ("person", "city", "company", "country")}
        self._all_names = {name: canonical for table in self._names.values() for name, canonical in table.items()}

    def canonical(self, mention: str) -> str:
        return self._all_names.get(mention.lower(), mention)

    def read(self, text: str, subject: str, relation: str) -> str | None:
        """The object mention stated for ``subject`` in ``text``, or None when no passage states it."""
        found = self.read_fact(text, subject, relation)
        return found[0] if found else None

    def read_fact(self, text: str, subject: str, relation: str) -> tuple[str, str] | None:
        """``(object mention, the sentence stating it)`` for ``subject`` in ``text``, or None."""
        aliases = self.lexicon.aliases_of(self.canonical(subject))
        for pattern in _patterns(relation, tuple(aliases)):
            for match in pattern.finditer(text):
                kind = RELATIONS[relation].object_kind
                # "a painter" is stated; "painter" is the answer
                value = _without_article(match.group("o")) if kind == "occupation" else match.group("o")
                if self._valid_object(value, kind):
                    return value, match.group(0)
        return None

    def _valid_object(self, mention: str, kind: str) -> bool:
        if kind == "year":
            return mention.isdigit() and len(mention) == 4
        if kind == "occupation":
            return mention in OCCUPATIONS
        return mention.lower() in self._names[kind]


def _without_article(noun_phrase: str) -> str:
    return noun_phrase.removeprefix("an ").removeprefix("a ")


@cache
def _patterns(relation: str, subject_aliases: tuple[str, ...]) -> list[re.Pattern[str]]:
    """Regexes for every wording of ``relation`` with the subject fixed and the object captured."""
    spec = RELATIONS[relation]
    subject = "(?:" + "|".join(re.escape(alias) for alias in sorted(subject_aliases, key=len, reverse=True)) + ")"
    patterns = []
    for wording in spec.wordings:
        literal = [re.escape(part) for part in re.split(r"\{[so]\}", wording.template)]
        slots = re.findall(r"\{([so])\}", wording.template)
        regex = literal[0]
        for slot, tail in zip(slots, literal[1:], strict=True):
            regex += (r"\b" + subject + r"\b" if slot == "s" else r"(?P<o>\w[^.()\n]*?)") + tail
        patterns.append(re.compile(regex))
    return patterns


@dataclass
class ExpertEpisode:
    """One question being answered: lookups to make, the transcript so far, and what was retrieved."""

    example: QAExample
    reader: FactReader
    max_variants: int
    lookups: list[Lookup] = field(default_factory=list)
    policy_turns: list[str] = field(default_factory=list)
    observations: list[str] = field(default_factory=list)
    retrieved_ids: set[str] = field(default_factory=set)
    variants_per_search: list[int] = field(default_factory=list)
    done: bool = False
    new_statements: list[str] = field(default_factory=list)
    """Sentences read since the last turn: the next ``<think>`` quotes them."""
    count_facts: bool = False
    """Say in every ``<think>`` how many facts are still to find ("Facts left: 2."), so that whether to search
    again is a count the policy carries forward, not a judgement it makes afresh from the passages."""

    def __post_init__(self) -> None:
        hops = self.example.metadata["hops"]
        if self.example.metadata["type"] == "comparison":
            subjects = [self._mention_in_question(hop["subject"]) for hop in hops]
            self.lookups = [Lookup(subject, hop["relation"]) for subject, hop in zip(subjects, hops, strict=True)]
        else:
            self.lookups = [Lookup(self._mention_in_question(hops[0]["subject"]), hops[0]["relation"])]

    def _mention_in_question(self, canonical: str) -> str:
        """The subject as the question names it (a policy can only copy what it sees)."""
        for alias in self.reader.lexicon.aliases_of(canonical):
            if alias in self.example.question:
                return alias
        return canonical

    def next_turn(self, last_turn: bool) -> str:
        """Write the next policy turn: a search for what is still unknown, or the answer."""
        open_lookups = [lookup for lookup in self.lookups if lookup.value is None]
        # Quoting the evidence first turns reading into copying: the object then sits in the policy's own words
        # right before the answer (or the next query), where even a tiny model finds it.
        evidence = "".join(f"{statement} " for statement in self.new_statements)
        if self.count_facts:
            evidence += f"Facts left: {self.facts_left()}. "
        self.new_statements = []
        if not open_lookups or last_turn:
            return f"<think> {evidence}I have what I need. </think>\n<answer> {self._decide()} </answer>"
        queries = self._next_queries(open_lookups)
        wanted = " and ".join(_LOOKUP_PHRASES[lookup.relation].format(s=lookup.subject) for lookup in open_lookups)
        return f"<think> {evidence}I need {wanted}. </think>\n<search> {' ## '.join(queries)} </search>"

    def facts_left(self) -> int:
        """Facts the answer still needs: the unread ones of a comparison, the unread hops of a chain."""
        if self.example.metadata["type"] == "comparison":
            return sum(lookup.value is None for lookup in self.lookups)
        return len(self.example.metadata["hops"]) - sum(lookup.value is not None for lookup in self.lookups)

    def _next_queries(self, open_lookups: list[Lookup]) -> list[str]:
        """Up to max_variants untried wordings, taken round-robin over the open lookups."""
        queries: list[str] = []
        while len(queries) < self.max_variants:
            before = len(queries)
            for lookup in open_lookups:
                candidates = lookup.variants()
                if lookup.tried < len(candidates) and len(queries) < self.max_variants:
                    queries.append(candidates[lookup.tried])
                    lookup.tried += 1
            if len(queries) == before:  # every wording tried: repeat the best ones
                for lookup in open_lookups:
                    lookup.tried = 0
        return queries

    def observe(self, observation: str) -> None:
        """Read a new observation: found facts close lookups, and a found chain hop opens the next one."""
        self.observations.append(observation)
        while True:
            for lookup in self.lookups:
                if lookup.value is None and (found := self._read_everything(lookup)) is not None:
                    lookup.value, lookup.statement = found
                    self.new_statements.append(found[1])
            if not self._open_next_hop():
                return

    def _read_everything(self, lookup: Lookup) -> tuple[str, str] | None:
        # The whole context is visible to the policy, so an earlier observation may already hold the fact.
        for observation in self.observations:
            if (found := self.reader.read_fact(observation, lookup.subject, lookup.relation)) is not None:
                return found
        return None

    def _open_next_hop(self) -> bool:
        hops = self.example.metadata["hops"]
        if self.example.metadata["type"] == "comparison" or len(self.lookups) == len(hops):
            return False
        last = self.lookups[-1]
        if last.value is None:
            return False
        self.lookups.append(Lookup(last.value, hops[len(self.lookups)]["relation"]))
        return True

    def _decide(self) -> str:
        metadata = self.example.metadata
        values = [lookup.value for lookup in self.lookups]
        if metadata["type"] != "comparison":
            complete = len(self.lookups) == len(metadata["hops"]) and values[-1] is not None
            return values[-1] if complete and values[-1] is not None else "unknown"
        first, second = self.lookups
        if metadata["comparison"] == "birth_year":
            if first.value is None or second.value is None:
                return first.subject  # a guess: either is as likely
            return first.subject if int(first.value) < int(second.value) else second.subject
        if first.value is None or second.value is None:
            return "no"  # two random people rarely share a city or employer
        return "yes" if self.reader.canonical(first.value) == self.reader.canonical(second.value) else "no"


@dataclass(frozen=True)
class ExpertResult:
    """The outcome of one expert episode."""

    example: QAExample
    policy_turns: list[str]
    observations: list[str]
    answer: str | None
    exact_match: float
    f1: float
    supporting_recall: float
    num_searches: int
    variants_per_search: list[int]

    @property
    def transcript(self) -> str:
        """Policy turns interleaved with the environment's observations, as the policy's context reads."""
        parts = []
        for index, turn in enumerate(self.policy_turns):
            parts.append(turn)
            if index < len(self.observations):
                parts.append(self.observations[index])
        return "".join(parts)


def run_expert(
    examples: Sequence[QAExample],
    index: BM25Index,
    lexicon: WorldLexicon,
    *,
    max_variants: int = 3,
    topk: int = 3,
    max_turns: int = 4,
) -> list[ExpertResult]:
    """Run the expert on every example; each turn retrieves for all live episodes in one batch."""
    reader = FactReader(lexicon)
    episodes = [ExpertEpisode(example, reader, max_variants) for example in examples]
    for turn in range(max_turns):
        live = [episode for episode in episodes if not episode.done]
        if not live:
            break
        searches = []
        for episode in live:
            text = episode.next_turn(last_turn=turn == max_turns - 1)
            episode.policy_turns.append(text)
            action = parse_action(text, max_variants=max_variants)
            if action.kind == "search":
                searches.append((episode, action.queries))
            else:
                episode.done = True
        _search_and_observe(searches, index, topk)
    return [_result(episode) for episode in episodes]


def _search_and_observe(searches: list[tuple[ExpertEpisode, tuple[str, ...]]], index: BM25Index, topk: int) -> None:
    flat_queries = [query for _, queries in searches for query in queries]
    hits = index.batch_search(flat_queries, topk) if flat_queries else []
    offset = 0
    for episode, queries in searches:
        merged = merge_variant_hits(hits[offset : offset + len(queries)])
        offset += len(queries)
        episode.retrieved_ids.update(hit.id for hit in merged)
        episode.variants_per_search.append(len(queries))
        episode.observe(render_observation(render_passages(merged)))


def _result(episode: ExpertEpisode) -> ExpertResult:
    golds = episode.example.golden_answers
    answer = extract_answer("".join(episode.policy_turns))
    supporting = episode.example.metadata["supporting_ids"]
    found = sum(passage_id in episode.retrieved_ids for passage_id in supporting)
    return ExpertResult(
        example=episode.example,
        policy_turns=episode.policy_turns,
        observations=episode.observations,
        answer=answer,
        exact_match=exact_match(answer, golds) if answer is not None else 0.0,
        f1=f1_score(answer, golds) if answer is not None else 0.0,
        supporting_recall=found / len(supporting),
        num_searches=len(episode.variants_per_search),
        variants_per_search=episode.variants_per_search,
    )
