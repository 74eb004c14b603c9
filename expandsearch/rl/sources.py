"""What ``expandsearch train`` trains on, read from its configuration: questions, the retriever, the policy.

Everything here takes artifacts (parquet files, an index directory or server URLs, a model spec) and knows
nothing of how they were made: the synthetic world is one recipe that writes them (:mod:`expandsearch.rl.world`),
``expandsearch prepare`` another.

- :func:`preflight` checks a configuration's artifacts cheaply (files there, parquet columns, the model path,
  index manifest, servers answering) before anything heavy loads, so a typo fails in a second with one line.
- :func:`read_questions` turns verl-schema parquet rows into episode inputs.
- :func:`make_searcher` gives a factory of search backends (in-process index, or servers with fail-over).
- :func:`load_policy` loads the policy with the configured dtype, device, trainable parameters and checkpointing.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent_env.rollout import EpisodeInput
    from agent_env.search import SearchBackend
    from expandsearch.rl.config import PolicySection, RetrieverSection, TrainConfig

Searcher = Callable[[], "SearchBackend"]
"""Makes a fresh search backend (each user closes its own; an in-process index is loaded once and shared)."""

HEALTH_TIMEOUT_S = 5.0
"""How long preflight waits for a server's answer."""


class RunSetupError(ValueError):
    """A configuration whose artifacts cannot make a run (missing file, bad parquet, dead server, …)."""


@dataclass(frozen=True)
class Questions:
    """Episode inputs of one split and the question type of each (``extra_info.type``; ``all`` when absent)."""

    inputs: list[EpisodeInput]
    types: dict[str, str] = field(default_factory=dict)

    def limit(self, count: int) -> Questions:
        return self if not count else Questions(self.inputs[:count], self.types)


# --- questions -------------------------------------------------------------------------------------------------------


def read_questions(files: Sequence[str], *, limit: int = 0, shuffle_seed: int | None = None) -> Questions:
    """The rows of verl parquet ``files`` as episode inputs, ids ``DATA_SOURCE/ID`` (unique across files).

    With ``shuffle_seed`` the rows are shuffled (seeded) before ``limit`` keeps the first ones; without, the
    files' order is kept. The question is ``extra_info.question`` (the prompt is rebuilt from it by the episode's
    template, through the policy's chat template), the golds ``reward_model.ground_truth.target``.
    """
    from agent_env.rollout import EpisodeInput

    inputs: list[EpisodeInput] = []
    types: dict[str, str] = {}
    for path in files:
        for row in _verl_rows(Path(path)):
            example_id = f"{row['data_source']}/{row['id']}"
            inputs.append(EpisodeInput(row["question"], tuple(row["golds"]), example_id))
            types[example_id] = row["type"]
    if len({item.example_id for item in inputs}) != len(inputs):
        raise RunSetupError(f"{', '.join(files)}: the same data_source/id appears twice; give each file once")
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(inputs)
    if limit:
        inputs = inputs[:limit]
    return Questions(inputs, {item.example_id or "": types[item.example_id or ""] for item in inputs})


def _verl_rows(path: Path) -> list[dict[str, Any]]:
    """``data_source, id, question, golds, type`` of every row; RunSetupError naming the file and row."""
    from data_prep.formats import last_user_message

    table = _parquet_table(path)
    rows = []
    for number, row in enumerate(table.to_pylist(), start=1):
        extra = row.get("extra_info") or {}
        try:
            golds = list((row["reward_model"] or {})["ground_truth"]["target"])
            question = str(extra.get("question") or last_user_message(row["prompt"]) or "")
        except (KeyError, TypeError, IndexError) as error:
            raise RunSetupError(
                f"{path}: row {number}: expected reward_model.ground_truth.target and a question"
            ) from error
        if not golds or not question:
            raise RunSetupError(f"{path}: row {number}: empty question or no gold answers")
        example_id = extra.get("id", extra.get("index", number - 1))
        rows.append(
            {
                "data_source": str(row["data_source"]),
                "id": str(example_id),
                "question": question,
                "golds": [str(gold) for gold in golds],
                "type": str(extra.get("type") or "all"),
            }
        )
    return rows


def _parquet_table(path: Path) -> Any:
    from data_prep.formats import VERL_COLUMNS, QAFormatError
    from data_prep.qa_sources import read_parquet_table

    if not path.is_file():
        raise RunSetupError(f"data file not found: {path}")
    try:
        table = read_parquet_table(path)
    except QAFormatError as error:
        raise RunSetupError(str(error)) from error
    missing = [column for column in VERL_COLUMNS if column not in table.column_names and column != "agent_name"]
    if missing:
        raise RunSetupError(
            f"{path}: not a verl RL parquet (missing {', '.join(missing)}); write one with `expandsearch prepare qa`"
        )
    return table


# --- retriever -------------------------------------------------------------------------------------------------------


def make_searcher(section: RetrieverSection) -> Searcher:
    """A factory of search backends over ``retriever.index`` (loaded once, here) or ``retriever.urls``."""
    from agent_env.search import FailoverSearch, LocalSearch

    if section.index is not None:
        index = _load_index(section.index)
        return lambda: LocalSearch(index)
    token = _token(section)
    urls = list(section.urls)
    return lambda: FailoverSearch.from_urls(urls, timeout=section.timeout_s, retries=section.retries, token=token)


def _load_index(index_dir: str) -> Any:
    from retriever_server.index_dir import IndexDirError, load_index

    try:
        return load_index(index_dir)
    except (IndexDirError, FileNotFoundError) as error:
        raise RunSetupError(f"retriever.index: cannot load {index_dir}: {error}") from error


def _token(section: RetrieverSection) -> str | None:
    if section.token_env is None:
        return None
    token = os.environ.get(section.token_env)
    if not token:
        raise RunSetupError(f"retriever.token_env: environment variable {section.token_env} is not set")
    return token


# --- policy ----------------------------------------------------------------------------------------------------------


def load_policy(model: str, section: PolicySection) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of the spec ``model`` on the configured device and dtype, with the configured
    parameters trainable and gradient checkpointing on when asked."""
    from agent_env.models import load_causal_lm

    policy, tokenizer = load_causal_lm(model, device=resolve_device(section.device), dtype=section.dtype)
    if section.trainable == "all_but_embeddings":
        policy.get_input_embeddings().requires_grad_(False)
        policy.get_output_embeddings().requires_grad_(False)  # the same matrix when tied, as in SmolLM2 and Qwen2.5
    if section.gradient_checkpointing:
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        policy.config.use_cache = False
    return policy, tokenizer


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


# --- preflight -------------------------------------------------------------------------------------------------------


def preflight(config: TrainConfig) -> None:
    """Cheap checks of everything the run will read, in the order it reads them; RunSetupError (one line)."""
    data = config.data
    if data.beir is not None:
        _check_beir(data.beir)
    for path in (*data.train_files, *data.val_files):
        _parquet_table(Path(path)).slice(0, 0)  # opens the file and checks its columns; rows are read later
    if config.policy.model != "tiny":
        _check_model(config.policy.model)
    for path in config.warm_start.sft.demonstrations if config.warm_start.kind == "sft" else ():
        if not Path(path).is_file():
            raise RunSetupError(f"warm_start.sft.demonstrations: file not found: {path} (expandsearch prepare demos)")
    retriever = config.retriever
    if retriever.index is not None:
        _check_index(retriever.index)
    for position, url in enumerate(retriever.urls):
        _check_answers(f"retriever.urls[{position}]", url.rstrip("/") + "/health", _token(retriever))
    _check_squeezer(config.squeezer)


def _check_beir(folder: str) -> None:
    from data_prep.beir import CORPUS_FILE, QUERIES_FILE, qrels_path

    needed = [
        Path(folder) / CORPUS_FILE,
        Path(folder) / QUERIES_FILE,
        qrels_path(folder, "train"),
        qrels_path(folder, "test"),
    ]
    missing = [str(path) for path in needed if not path.is_file()]
    if missing:
        raise RunSetupError(
            f"data.beir: {', '.join(missing)} not found (a BEIR folder: corpus, queries, train and test qrels)"
        )


def _check_model(spec: str) -> None:
    from agent_env.models import resolve_model_path

    try:
        resolve_model_path(spec)
    except (FileNotFoundError, ValueError) as error:
        raise RunSetupError(f"policy.model: {error}") from error


def _check_index(index_dir: str) -> None:
    from retriever_server.index_dir import MANIFEST

    if not (Path(index_dir) / MANIFEST).is_file():
        raise RunSetupError(
            f"retriever.index: {index_dir} is not an index directory (build it with expandsearch index)"
        )


def _check_squeezer(spec: str) -> None:
    from agent_env.squeezers import SQUEEZER_KINDS

    kind, _, argument = spec.partition(":")
    if kind not in SQUEEZER_KINDS:
        raise RunSetupError(f"squeezer: unknown kind {kind!r} in {spec!r}; known: {', '.join(sorted(SQUEEZER_KINDS))}")
    if kind == "openai":
        url = argument.partition("#")[0].rstrip("/")
        _check_answers("squeezer", url.removesuffix("/v1") + "/v1/models", None)
    if kind == "local":
        _check_model(argument)


def _check_answers(setting: str, url: str, token: str | None) -> None:
    """RunSetupError unless ``url`` answers a GET with a status below 500 within :data:`HEALTH_TIMEOUT_S`."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.get(url, timeout=HEALTH_TIMEOUT_S, headers=headers)
    except httpx.HTTPError as error:
        raise RunSetupError(f"{setting}: {url} does not answer ({type(error).__name__}: {error})") from error
    if response.status_code >= 500 or response.status_code in (401, 403):
        raise RunSetupError(f"{setting}: {url} answered HTTP {response.status_code}")
