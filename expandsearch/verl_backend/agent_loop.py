"""``ExpandSearchAgentLoop``: our episode driver inside verl's agent-loop workers.

verl instantiates the class named in ``train_configs/verl/agent_loops.yaml`` once per trajectory and awaits
``run(sampling_params, **row)``. The loop plays the row's question with :func:`agent_env.episode.run_episode` (the
same loop, parser, observation frames and reward as the embedded trainer), generating through verl's
``server_manager`` (:class:`~.engine.ServerManagerEngine`), and returns the trajectory shaped by
:func:`~.output.to_agent_loop_output`.

What is costly lives once per worker process, not per trajectory: the retriever client (or the loaded index) and
the squeezer, built on first use from the settings and reused by every later trajectory of the process.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar
from uuid import uuid4

from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopOutput

from agent_env.episode import AgentEnv, run_episode
from agent_env.search import SearchBackend
from agent_env.squeezers import Squeezer, make_squeezer
from data_prep.formats import last_user_message
from expandsearch.rl.config import RetrieverSection
from expandsearch.verl_backend.engine import ServerManagerEngine, verl_top_p
from expandsearch.verl_backend.output import Limits, to_agent_loop_output
from expandsearch.verl_backend.settings import AgentLoopSettings, read_settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpisodeRow:
    """What an episode needs from one dataset row (``expandsearch prepare``'s verl parquet)."""

    question: str
    golden_answers: tuple[str, ...]
    example_id: str | None


def read_row(row: Mapping[str, Any]) -> EpisodeRow:
    """The question (``extra_info.question``, else the last user message of ``raw_prompt``), the golds
    (``reward_model.ground_truth.target``; numpy arrays accepted) and ``data_source/id``; ValueError naming what is
    missing."""
    extra = _mapping(row.get("extra_info"))
    question = extra.get("question") or last_user_message(row.get("raw_prompt"))
    truth = _mapping(_mapping(row.get("reward_model")).get("ground_truth"))
    golds = _golds(truth.get("target"))
    if not question or not golds:
        raise ValueError(
            "a row for the expandsearch agent loop needs extra_info.question (or a user message in the prompt) and "
            f"reward_model.ground_truth.target; got keys {sorted(row)}"
        )
    example = extra.get("id", extra.get("index", row.get("index")))
    example_id = None if example is None else f"{row.get('data_source', '')}/{example}"
    return EpisodeRow(str(question), golds, example_id)


def _golds(target: Any) -> tuple[str, ...]:
    if target is None:
        return ()
    return (target,) if isinstance(target, str) else tuple(str(gold) for gold in target)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


class _ProcessResources:
    """The search backend and squeezer of one worker process, by settings (built on first use)."""

    searches: ClassVar[dict[RetrieverSection, SearchBackend]] = {}
    squeezers: ClassVar[dict[str, Squeezer]] = {}

    @classmethod
    def search(cls, section: RetrieverSection) -> SearchBackend:
        if section not in cls.searches:
            from expandsearch.rl.sources import make_searcher

            cls.searches[section] = make_searcher(section)()
        return cls.searches[section]

    @classmethod
    def squeezer(cls, spec: str) -> Squeezer:
        if spec not in cls.squeezers:
            cls.squeezers[spec] = make_squeezer(spec)
        return cls.squeezers[spec]


class ExpandSearchAgentLoop(AgentLoopBase):
    """One trajectory of think → search with variants → squeeze → … → answer, as verl's ``AgentLoopOutput``.

    ``settings`` (the YAML's kwargs) update ``actor_rollout_ref.rollout.custom.expandsearch`` key by key; every
    other keyword verl passes (``tools``, ``hf_model_type``, the entry's ``name``) goes to ``AgentLoopBase``.
    """

    def __init__(self, *args: Any, settings: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        kwargs.pop("name", None)  # the registry entry's own name, passed along by hydra.utils.instantiate
        super().__init__(*args, **kwargs)
        self.settings: AgentLoopSettings = read_settings(self.config, settings)
        self.limits = Limits(int(self.rollout_config.prompt_length), int(self.rollout_config.response_length))

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        row = read_row(kwargs)
        engine = ServerManagerEngine(
            self.server_manager,
            uuid4().hex,  # one id for every turn: verl's balancer keeps the trajectory on one server
            self.tokenizer,
            base_params=sampling_params,
            prompt_limit=self.limits.prompt_length,
            response_limit=self.limits.response_length,
        )
        env = AgentEnv(
            engine,
            self.tokenizer,
            _ProcessResources.search(self.settings.retriever),
            _ProcessResources.squeezer(self.settings.squeezer),
            self.settings.episode_for(
                response_length=self.limits.response_length,
                temperature=float(sampling_params.get("temperature", 1.0)),
                top_p=verl_top_p(sampling_params),
            ),
        )
        trajectory = await run_episode(env, row.question, row.golden_answers, example_id=row.example_id)
        return to_agent_loop_output(
            trajectory,
            self.limits,
            prompt_overflow=engine.overflow,
            num_preempted=engine.num_preempted,
            extra_fields=_global_steps(engine.server_extra),
        )


def _global_steps(server_extra: Mapping[str, Any]) -> dict[str, Any]:
    """The weights' version that served the trajectory, under the keys verl's batch concatenation expects."""
    steps: Sequence[str] = ("min_global_steps", "max_global_steps")
    return {key: server_extra[key] for key in steps if key in server_extra}
