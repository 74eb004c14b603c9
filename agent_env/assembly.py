"""Building an :class:`~agent_env.episode.AgentEnv` from a plain description: the CLI, eval and Ray workers use it.

An :class:`EnvSpec` is JSON-able (strings and an :class:`EpisodeConfig`), so it can be written in a config file
or shipped to a Ray actor, which then builds its own engine client, search backend and squeezer::

    env = await build_env(EnvSpec(model="runs/demo/policy", index_dir="runs/demo/index", squeezer="extractive"))

The policy is either loaded in-process (``model``) or reached at an OpenAI-compatible completions endpoint
(``engine_url``; ``model`` then only supplies the tokenizer). Retrieval is an index directory loaded in-process
or a retriever server URL, checked with ``GET /health`` first so a wrong URL fails at once with a clear message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_env.episode import AgentEnv, EpisodeConfig
from agent_env.search import HttpSearch, LocalSearch, SearchBackend
from agent_env.squeezers import make_squeezer


class EnvSetupError(ValueError):
    """The environment cannot be built as described (bad index path, unreachable retriever, …)."""


@dataclass(frozen=True)
class EnvSpec:
    """Where the policy, the retriever and the squeezer are, and how episodes run."""

    model: str
    """Policy model: a directory, a .gguf file or a packaged name (``smollm2``); with engine_url, its tokenizer."""
    engine_url: str | None = None
    """OpenAI-compatible completions endpoint serving the policy (vLLM, SGLang, ``expandsearch serve-llm``)."""
    index_dir: str | None = None
    """Index directory built by ``expandsearch index``, searched in-process."""
    retriever_url: str | None = None
    """Retriever server URL (``expandsearch serve-retriever`` or Search-R1's); exclusive with index_dir."""
    squeezer: str = "extractive"
    """Squeezer spec for ``agent_env.squeezers.make_squeezer``: none, extractive, local:PATH, openai:URL."""
    config: EpisodeConfig = field(default_factory=EpisodeConfig)
    """Episode budgets, protocol and sampling."""
    engine_options: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments of the engine (max_batch_size, seed, device, …)."""

    def __post_init__(self) -> None:
        if (self.index_dir is None) == (self.retriever_url is None):
            raise EnvSetupError("give exactly one of an index directory and a retriever URL")


async def build_env(spec: EnvSpec) -> AgentEnv:
    """Load or connect everything the spec names; raises EnvSetupError / FileNotFoundError with the reason.

    The cheap checks (model path, squeezer spec, index or retriever) come before loading the policy, so a typo
    fails in a second rather than after the model has loaded.
    """
    from agent_env.models import resolve_model_path

    resolve_model_path(spec.model)
    search = await build_search(spec)
    try:
        squeezer = make_squeezer(spec.squeezer)
    except Exception:
        await search.aclose()
        raise
    engine, tokenizer = _build_engine(spec)
    return AgentEnv(engine, tokenizer, search, squeezer, spec.config)


def _build_engine(spec: EnvSpec) -> tuple[Any, Any]:
    from agent_env.models import load_tokenizer

    if spec.engine_url:
        from agent_env.openai_compat import OpenAICompletionsEngine

        return OpenAICompletionsEngine(spec.engine_url, **spec.engine_options), load_tokenizer(spec.model)
    from agent_env.engine import TransformersEngine

    engine = TransformersEngine.from_pretrained(spec.model, **spec.engine_options)
    return engine, engine.tokenizer


async def build_search(spec: EnvSpec) -> SearchBackend:
    """The spec's search backend: its index directory in-process, or its retriever server (health-checked)."""
    if spec.index_dir is not None:
        return _local_search(Path(spec.index_dir))
    assert spec.retriever_url is not None
    search = HttpSearch.from_url(spec.retriever_url)
    try:
        await search.client.health()
    except Exception as error:
        await search.aclose()
        raise EnvSetupError(f"retriever at {spec.retriever_url} is not reachable: {error}") from error
    return search


def _local_search(index_dir: Path) -> LocalSearch:
    from retriever_server.index_dir import IndexDirError, load_index

    try:
        return LocalSearch(load_index(index_dir))
    except (IndexDirError, FileNotFoundError) as error:
        raise EnvSetupError(f"cannot load index {index_dir}: {error}") from error


async def close_env(env: AgentEnv) -> None:
    """Release the engine's batcher, the search client and the squeezer."""
    for part in (env.engine, env.search, env.squeezer):
        close = getattr(part, "aclose", None)
        if close is not None:
            await close()
