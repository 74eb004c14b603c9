"""The compared methods: direct answer, naive RAG, a Search-R1-style agent and the ExpandSearch agent.

Every method is played through the same episode driver (:func:`agent_env.episode.run_episode`) with the same
engine, retriever and squeezer, so EM, turns and tokens mean the same thing for all of them. A method differs
only in what it changes of the run's :class:`~agent_env.episode.EpisodeConfig` and in an optional step before
the episode:

- ``direct``: the ``direct`` template, one turn, no retrieval.
- ``rag``: the environment searches the question once (top-k, through the run's retriever), squeezes the
  passages (or shows them raw with ``--squeezer none``), puts them in the ``rag`` prompt; one answering turn.
- ``search_r1``: the ``search_r1`` template, one query per search, the run's turns.
- ``expandsearch``: the ``expandsearch`` template, up to ``--variants`` query variants per search.

:data:`METHODS` is the registry (name → :class:`Method`); add a method there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from agent_env.episode import AgentEnv, EpisodeConfig, TurnRecord
from agent_env.protocol import rag_question
from agent_env.retrieval import merge_variant_hits
from agent_env.squeezers import SqueezeRequest
from retriever_server.base import SearchHit

RETRIEVAL_FAILED_TEXT = "Retrieval failed ({reason}). Answer with what you know."


@dataclass(frozen=True)
class Prepared:
    """What an episode of a method starts from: the text for the template's ``{question}`` slot, and the
    retrievals the environment made before the episode (they count in the question's metrics)."""

    question: str
    environment_turns: tuple[TurnRecord, ...] = ()


Prepare = Callable[[AgentEnv, str], Awaitable[Prepared]]
"""``await prepare(env, question)``: the step a method runs before its episode."""


async def ask_as_is(env: AgentEnv, question: str) -> Prepared:
    """No step before the episode: the template gets the question itself."""
    return Prepared(question)


async def retrieve_with_question(env: AgentEnv, question: str) -> Prepared:
    """Naive RAG: search the question once, squeeze the passages, and put them before the question.

    The documents are cut to the episode's observation budget, as an observation inside an episode is, and a
    retriever failure becomes a short notice rather than an error (as inside an episode).
    """
    config = env.config
    record = TurnRecord(policy_text="", action="retrieve", stop_reason="environment", queries=[question])
    try:
        hits = await env.search.search([question], config.topk)
    except Exception as error:  # an outage must not end the evaluation: the question is answered without documents
        body = RETRIEVAL_FAILED_TEXT.format(reason=f"{type(error).__name__}: {error}"[:200])
    else:
        record.hits_per_query = [[hit_dict(hit) for hit in variant] for variant in hits]
        result = await env.squeezer.squeeze(SqueezeRequest(question, (question,), tuple(merge_variant_hits(hits))))
        body = result.text
        record.squeezer_fell_back, record.squeezer_error = result.fell_back, result.error
    record.observation = cut_to_tokens(env.tokenizer, body, config.max_observation_tokens)
    return Prepared(rag_question(question, record.observation), (record,))


def hit_dict(hit: SearchHit) -> dict[str, Any]:
    """A retrieved passage as :attr:`TurnRecord.hits_per_query` holds it."""
    return {"id": hit.id, "title": hit.title, "text": hit.text, "score": hit.score}


def cut_to_tokens(tokenizer: Any, text: str, max_tokens: int) -> str:
    """``text`` cut to its first ``max_tokens`` tokens (unchanged when it fits)."""
    ids = tokenizer.encode(text.strip(), add_special_tokens=False)
    if len(ids) <= max_tokens:
        return text.strip()
    return str(tokenizer.decode(ids[:max_tokens], skip_special_tokens=True))


@dataclass(frozen=True)
class Method:
    """A compared method: its template, what it overrides of the episode settings, and its pre-episode step."""

    description: str
    template: str | None
    """The prompt template; None keeps the run's."""
    max_turns: int | None = None
    """Policy turns per episode; None keeps the run's ``max_turns``."""
    max_variants: int | None = None
    """Most query variants per search; None keeps the run's ``max_variants``."""
    retrieves: bool = True
    """False for a method that never retrieves: its retrieval metrics are not measured."""
    prepare: Prepare = field(default=ask_as_is)
    """The step before the episode."""

    def episode_config(self, base: EpisodeConfig) -> EpisodeConfig:
        """The run's episode settings with this method's template and limits, decoding greedily. The one-turn
        baselines (direct, rag) answer in the tags format whatever the run's protocol: they never search."""
        from agent_env.action_formats import templates

        template = self.template or base.template
        return replace(
            base,
            protocol=base.protocol if template in templates(base.protocol) else "tags",
            template=template,
            max_turns=self.max_turns or base.max_turns,
            max_variants=self.max_variants or base.max_variants,
            temperature=0.0,
        )


METHODS: dict[str, Method] = {
    "direct": Method("direct answer, no retrieval, one turn", "direct", max_turns=1, retrieves=False),
    "rag": Method(
        "naive RAG: one retrieval with the question, passages in the prompt, one turn",
        "rag",
        max_turns=1,
        prepare=retrieve_with_question,
    ),
    "search_r1": Method("Search-R1-style agent: one query per search", "search_r1", max_variants=1),
    "expandsearch": Method("ExpandSearch agent: several query variants per search", "expandsearch"),
}
"""Method name → :class:`Method`, in the order results are reported."""

AS_CONFIGURED = Method("the run's own episode settings, greedy", None)
"""Not a compared method: the run's own template, variants and turns, decoding greedily — what the trainer and the
warm starts evaluate with (``eval.runner.greedy_records``). Kept out of :data:`METHODS` so ``--methods`` never
offers it."""


def parse_methods(names: str) -> list[str]:
    """The method names of a comma-separated ``--methods`` value, in registry order; ValueError for unknown ones."""
    chosen = {name.strip() for name in names.split(",") if name.strip()}
    unknown = sorted(chosen - set(METHODS))
    if unknown:
        raise ValueError(f"unknown method {', '.join(map(repr, unknown))}; known: {', '.join(METHODS)}")
    if not chosen:
        raise ValueError(f"--methods is empty; choose from {', '.join(METHODS)}")
    return [name for name in METHODS if name in chosen]
