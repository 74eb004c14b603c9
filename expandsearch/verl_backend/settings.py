"""What the agent loop needs besides verl's own config: the retriever, the squeezer and the episode's rules.

verl's rollout config rejects unknown keys, but it has one free slot, ``actor_rollout_ref.rollout.custom`` (a
dict); the launcher writes :class:`AgentLoopSettings` there as ``custom.expandsearch`` and every agent-loop
worker, on every node, reads it back from the trainer config it is given. The agent-loop YAML's own keyword
arguments (``train_configs/verl/agent_loops.yaml``) are read the same way, and win, so one YAML can pin a setting
for every run.

Budgets that verl owns are not repeated here: the response budget is ``rollout.response_length``, the prompt's
``rollout.prompt_length``, and temperature and top-p come with verl's per-trajectory sampling parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from agent_env.episode import EpisodeConfig
from expandsearch.config import config_from_dict, config_to_dict
from expandsearch.rl.config import RetrieverSection

if TYPE_CHECKING:
    from expandsearch.rl.config import TrainConfig

CUSTOM_KEY = "expandsearch"
"""The key of our settings under ``actor_rollout_ref.rollout.custom``."""

VERL_OWNED_EPISODE_FIELDS = ("max_response_tokens", "max_context_tokens", "temperature", "top_p")
"""EpisodeConfig fields verl decides (``response_length``, the prompt + response width, the sampling params)."""


@dataclass(frozen=True)
class AgentLoopSettings:
    """The agent loop's settings: where it searches, how it squeezes, and how an episode runs."""

    retriever: RetrieverSection = field(default_factory=RetrieverSection)
    """``urls`` (one server per node, failing over to the others) or ``index`` (a directory every node can read,
    loaded once per worker process)."""
    squeezer: str = "extractive"
    """Squeezer spec (``none``, ``extractive[:N]``, ``local:MODEL``, ``openai:URL#model`` for a ``vllm serve``)."""
    episode: EpisodeConfig = field(default_factory=EpisodeConfig)
    """Protocol, template, variants, topk, turns and per-turn budgets; the fields of VERL_OWNED_EPISODE_FIELDS are
    ignored (verl's values are used)."""

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> AgentLoopSettings:
        """Settings from plain data (the ``custom.expandsearch`` dict, an OmegaConf node turned into a dict);
        ValueError for an unknown key, a bad value, or no retriever at all."""
        settings = config_from_dict(cls, data)
        if settings.retriever.index is None and not settings.retriever.urls:
            raise ValueError("the verl agent loop needs retriever.urls (running servers) or retriever.index")
        return settings

    def to_mapping(self) -> dict[str, Any]:
        """Plain data (lists, no tuples) that round-trips through :meth:`from_mapping` and through Hydra."""
        return config_to_dict(self)

    @classmethod
    def from_train_config(cls, config: TrainConfig) -> AgentLoopSettings:
        """The agent-loop part of one of our training configs (``retriever``, ``squeezer``, ``rollout.episode``)."""
        return cls(config.retriever, config.squeezer, config.rollout.episode)

    def episode_for(self, *, response_length: int, temperature: float, top_p: float) -> EpisodeConfig:
        """The episode config of one trajectory, with verl's budget and sampling in place of ours."""
        return replace(self.episode, max_response_tokens=response_length, temperature=temperature, top_p=top_p)


def read_settings(trainer_config: Any, overrides: Mapping[str, Any] | None = None) -> AgentLoopSettings:
    """Settings from a verl trainer config's ``actor_rollout_ref.rollout.custom.expandsearch``, updated key by key
    (one level deep: ``episode``, ``retriever``) with ``overrides`` (the agent-loop YAML's kwargs)."""

    custom = trainer_config.actor_rollout_ref.rollout.get("custom") or {}
    node = custom.get(CUSTOM_KEY) or {}
    data = _plain(node)
    for key, value in _plain(overrides or {}).items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    try:
        return AgentLoopSettings.from_mapping(data)
    except ValueError as error:
        raise ValueError(f"actor_rollout_ref.rollout.custom.{CUSTOM_KEY}: {error}") from error


def _plain(data: Mapping[str, Any]) -> dict[str, Any]:
    from omegaconf import OmegaConf

    if OmegaConf.is_config(data):
        container = OmegaConf.to_container(data, resolve=True)
        assert isinstance(container, dict)
        return {str(key): value for key, value in container.items()}
    return {key: (_plain(value) if isinstance(value, Mapping) else value) for key, value in data.items()}
