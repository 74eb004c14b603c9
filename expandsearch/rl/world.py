"""The synthetic world as a recipe: it writes a world, its BM25 index and a warm-started tiny policy, which the
trainer then takes like any other data files, index and policy (:func:`world_artifacts`).

Each artifact is reused when the job runs again with the same settings, like ``make``: the world when its
recorded config is the one asked for, the index when it was built over exactly that corpus, the warm start when
its recorded settings match and it is newer than the world.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from expandsearch.rl.config import TrainConfig
    from expandsearch.world_expert import WarmStartConfig

Log = Callable[[str], None]

HELD_OUT_SPLIT = "test"
"""The world split the main job evaluates on (its people appear in no training question)."""


def world_artifacts(config: TrainConfig, world_dir: Path, index_dir: Path, policy: str) -> TrainConfig:
    """``config`` with the world's artifacts as its data, retriever and policy (the world section dropped; a
    world-expert warm start counts as done, its policy being ``policy``)."""
    data = replace(
        config.data,
        world=None,
        train_files=(str(world_dir / "train.parquet"),),
        val_files=(str(world_dir / f"{HELD_OUT_SPLIT}.parquet"),),
    )
    retriever = config.retriever if config.retriever.urls else replace(config.retriever, index=str(index_dir))
    kind = "none" if config.warm_start.kind == "world_expert" else config.warm_start.kind
    warm_start = replace(config.warm_start, kind=kind)
    return replace(
        config, data=data, retriever=retriever, warm_start=warm_start, policy=replace(config.policy, model=policy)
    )


def ensure_world(config: TrainConfig, run_dir: Path, log: Log = print) -> Path:
    """The configured world directory, or one generated under ``run_dir/world`` (reused when its recorded
    configuration is the one asked for, regenerated otherwise)."""
    from data_prep.synthetic import WORLD_FILE, WORLD_SIZES, generate_world, write_world

    section = config.data.world
    assert section is not None, "ensure_world needs a data.world section"
    if section.path:
        return Path(section.path)
    world_dir = run_dir / "world"
    wanted = replace(WORLD_SIZES[section.size], seed=section.seed)
    if recorded(world_dir / WORLD_FILE, "config") == plain(wanted):
        return world_dir
    if (world_dir / WORLD_FILE).is_file():
        log(f"   {world_dir} was generated with another world config: generating it again")
    write_world(generate_world(wanted), world_dir)
    return world_dir


def ensure_index(world_dir: Path, index_dir: Path) -> Path:
    """A BM25 index directory over the world's corpus (``expandsearch chat --index``), built unless one of exactly
    that corpus is there already."""
    from data_prep.synthetic import CORPUS_FILE
    from retriever_server.index_dir import MANIFEST, build_index, file_sha256

    corpus = world_dir / CORPUS_FILE
    built_over = (recorded(index_dir / MANIFEST, "corpus") or {}).get("sha256")
    if built_over != file_sha256(corpus):
        build_index(corpus, "bm25", index_dir, progress=False)
    return index_dir


def ensure_world_expert(config: TrainConfig, world_dir: Path, out_dir: Path, log: Log) -> Path:
    """The world expert's warm start in ``out_dir``: reused when made with the same settings from the same world,
    made anew otherwise."""
    from data_prep.synthetic import WORLD_FILE
    from expandsearch.world_expert import METRICS_FILE, build_world_policy

    settings = warm_start_config(config)
    record_file = out_dir / METRICS_FILE
    same_settings = recorded(record_file, "config") == plain(settings)
    # like make: a world written after the warm start (regenerated with another config) makes it stale
    if same_settings and _newer(record_file, world_dir / WORLD_FILE):
        log(f"   reusing the warm start in {out_dir}")
        return out_dir
    build_world_policy(world_dir, out_dir, settings, log=log)
    return out_dir


def warm_start_config(config: TrainConfig) -> WarmStartConfig:
    """The world expert's settings of a train config (``expandsearch warm-start`` starts from the same)."""
    from agent_env.tiny_model import TinyQwen2Config
    from expandsearch.sft import BCConfig
    from expandsearch.world_expert import PretrainConfig, WarmStartConfig

    section, tiny = config.warm_start.world_expert, config.policy.tiny
    model = TinyQwen2Config(
        hidden_size=tiny.hidden_size,
        intermediate_size=tiny.intermediate_size,
        num_hidden_layers=tiny.layers,
        num_attention_heads=tiny.heads,
        num_key_value_heads=max(1, tiny.heads // 2),
    )
    bc = BCConfig(steps=section.steps, batch_size=section.batch_size, lr=section.lr, seed=config.seed)
    pretrain = PretrainConfig(steps=section.pretrain_steps, batch_size=section.pretrain_batch_size, lr=section.lr)
    return WarmStartConfig(
        pretrain=pretrain,
        bc=bc,
        model=model,
        model_seed=config.seed,
        vocab_size=tiny.vocab_size,
        demonstrations=section.demonstrations,
        name_shuffle=section.name_shuffle,
        variant_mix=section.variant_mix,
        count_facts=section.count_facts,
        eval_questions=section.eval_questions,
        squeezer=config.squeezer,
        episode=replace(config.rollout.episode, temperature=0.0),
    )


def recorded(path: Path, key: str) -> Any:
    """``key`` of the JSON file at ``path`` (None when the file is missing or unreadable)."""
    try:
        return json.loads(path.read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None


def plain(settings: Any) -> Any:
    """A dataclass as the JSON it is recorded as (tuples become lists)."""
    from dataclasses import asdict

    return json.loads(json.dumps(asdict(settings)))


def _newer(path: Path, than: Path) -> bool:
    return path.is_file() and than.is_file() and path.stat().st_mtime >= than.stat().st_mtime
