"""The synthetic world's warm start: the tiny default policy of a world, pretrained and cloned from its expert.

:func:`build_world_policy` makes the project's tiny default policy from a world directory (``expandsearch
world``): a tokenizer trained on the world's texts, a small Qwen2 built from a config, language-model pretraining
on the world's search results (:func:`pretrain_on_search_results`), behaviour cloning
(:func:`expandsearch.sft.behaviour_cloning`) on the scripted expert's episodes (:mod:`data_prep.expert`, played
through the real environment by :mod:`data_prep.expert_policy`) with consistent renaming of entities
(:class:`NameShuffle`), saved in the transformers layout (``AutoModelForCausalLM``, ``expandsearch chat --model
DIR``), then optionally evaluated greedily on held-out test questions. It is a recipe that writes an artifact:
``expandsearch train`` takes the policy it writes like any other.

CLI: ``expandsearch warm-start --world DIR --out DIR [--steps N] [--seed S]``.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent_env.episode import AgentEnv, EpisodeConfig, Trajectory
from agent_env.rollout import EpisodeInput, RolloutRunner, summarize_rollouts
from agent_env.tiny_model import TinyQwen2Config
from data_prep.synthetic import WorldData
from expandsearch.sft import IGNORE_INDEX, BCConfig, Example, behaviour_cloning, fit_examples, save_policy

if TYPE_CHECKING:
    from data_prep.formats import QAExample
    from data_prep.synthetic import WorldLexicon
    from retriever_server.bm25 import BM25Index
    from retriever_server.corpus import Passage

METRICS_FILE = "warm_start.json"
"""Written into the policy directory: the config, the training curve and the held-out evaluation."""


class NameShuffle:
    """Augmentation: consistently rename the entities of an example with other names of the same kind.

    Cloning a small world's expert, a tiny policy first memorises the training questions' names and writes them
    whatever the question says: hundreds of steps pass before it learns to *copy* the name from the question and
    the found entity from the passages, the skill that transfers to new questions. Replacing every occurrence of a
    name word, in the prompt, the turns and the passages alike, by another of its kind keeps each episode coherent
    (the expert's turns still follow from what it read) while making remembered names useless, so copying is
    learned much sooner. Only names that are one token (with their leading space) are renamed; the mapping is a
    fresh random permutation per example.
    """

    def __init__(self, groups: Sequence[Sequence[int]], probability: float = 1.0) -> None:
        self.groups = [list(group) for group in groups if len(group) > 1]
        self.probability = probability

    @classmethod
    def from_lexicon(cls, tokenizer: Any, lexicon: WorldLexicon, probability: float = 1.0) -> NameShuffle:
        """One group per entity kind: person name words (given and family), cities, companies, countries."""
        words: dict[str, set[str]] = {}
        for entity in lexicon.entities.values():
            for name in entity.all_names:
                parts = name.split()
                if entity.kind == "person":
                    words.setdefault("person", set()).update(part for part in parts if len(part) > 2)  # not "V."
                elif len(parts) == 1:  # "Marnholt", "Veltari" (the company or country alias), not "Union of …"
                    words.setdefault(entity.kind, set()).add(name)
        groups = [_single_token_ids(tokenizer, sorted(kind_words)) for _, kind_words in sorted(words.items())]
        return cls(groups, probability)

    def __call__(self, input_ids: list[int], labels: list[int], rng: random.Random) -> Example:
        if rng.random() >= self.probability:
            return input_ids, labels
        mapping: dict[int, int] = {}
        for group in self.groups:
            mapping.update(zip(group, rng.sample(group, len(group)), strict=True))
        renamed = [mapping.get(token, token) for token in input_ids]
        return renamed, [label if label == IGNORE_INDEX else mapping.get(label, label) for label in labels]


def _single_token_ids(tokenizer: Any, words: Sequence[str]) -> list[int]:
    ids = [tokenizer.encode(" " + word, add_special_tokens=False) for word in words]
    return sorted({word_ids[0] for word_ids in ids if len(word_ids) == 1})


# --- pretraining on the world's search results -------------------------------------------------------------------


@dataclass(frozen=True)
class PretrainConfig:
    """Language-model pretraining on search results of the world's corpus, before behaviour cloning.

    A model trained from scratch lacks the copying circuits (induction heads) that any pretrained LM brings, and
    behaviour cloning alone grows them slowly: measured on the tiny world, 1,500 cloning steps left a policy whose
    queries ignored the question (held-out EM 0.02). Search results repeat every name (a passage's title, then the
    name again in its text, several passages about one person), and with the names shuffled per sequence only
    in-context copying lowers their loss — 600 such steps first, and the cloned policy copies names from the
    question and from passages into its queries (docs/experiment_log.md).
    """

    steps: int = 600
    """Optimizer steps (0: no pretraining)."""
    batch_size: int = 16
    """Sequences per step."""
    passages: int = 6
    """Passages per sequence, rendered as an observation: two thirds about people of one family name."""
    sequences: int = 8000
    """Distinct sequences (each is renamed afresh every time it is used)."""
    lr: float = 5e-3
    """Peak learning rate."""
    warmup_steps: int = 30
    """Steps of linear warm-up."""

    def __post_init__(self) -> None:
        if self.steps < 0 or self.warmup_steps < 0:
            raise ValueError("pretrain steps and warmup_steps must be >= 0")
        for name in ("batch_size", "passages", "sequences"):
            if getattr(self, name) < 1:
                raise ValueError(f"pretrain {name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError("pretrain lr must be > 0")

    def loop(self, seed: int) -> BCConfig:
        """The training loop's settings (cosine after the warm-up, as behaviour cloning)."""
        return BCConfig(
            steps=max(self.steps, 1),
            batch_size=self.batch_size,
            lr=self.lr,
            warmup_steps=self.warmup_steps,
            min_lr_ratio=1.0,  # constant after the warm-up: cloning starts its own schedule afterwards
            seed=seed,
            log_every=100,
        )


def search_result_sequences(
    passages: Sequence[Passage], tokenizer: Any, config: PretrainConfig, seed: int
) -> list[Example]:
    """``(input_ids, labels)`` pairs, labels on every token: passages rendered exactly as an observation renders
    them, most of each sequence about people who share a family name (what a search for a name returns), so that
    telling "Karnin Bostes" from "Gelpis Bostes" — copying the right name, not just a name — lowers the loss."""
    from agent_env.protocol import render_passages

    rng = random.Random(seed)
    by_name_word: dict[str, list[Passage]] = {}
    for passage in passages:
        for word in set(passage.text.split()) | set(passage.title.split()):
            by_name_word.setdefault(word, []).append(passage)
    related, others = config.passages - config.passages // 3, config.passages // 3
    examples: list[Example] = []
    for _ in range(config.sequences):
        anchor = rng.choice(passages)
        family = by_name_word.get(anchor.title.split()[-1], [anchor]) if anchor.title else [anchor]
        chunk = rng.sample(family, min(related, len(family))) + rng.sample(list(passages), others)
        rng.shuffle(chunk)
        ids = tokenizer(render_passages(chunk))["input_ids"]
        examples.append((ids, list(ids)))
    return examples


def pretrain_on_search_results(
    model: Any,
    tokenizer: Any,
    passages: Sequence[Passage],
    lexicon: WorldLexicon,
    config: PretrainConfig,
    *,
    seed: int = 0,
    log: Callable[[dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place on :func:`search_result_sequences` with :class:`NameShuffle` (see
    :class:`PretrainConfig`); returns metrics under ``pretrain/…``."""
    sequences = search_result_sequences(passages, tokenizer, config, seed)
    rename = NameShuffle.from_lexicon(tokenizer, lexicon)
    return fit_examples(model, tokenizer, sequences, config.loop(seed), rename, log, prefix="pretrain")


# --- the tiny world policy -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WarmStartConfig:
    """How :func:`build_world_policy` makes the tiny default policy of a world. The defaults are the main job's
    (``expandsearch.rl.world.warm_start_config(TrainConfig())``, a test checks it), so ``expandsearch
    warm-start`` and ``expandsearch train`` make the same policy."""

    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    """Language-model pretraining on the world's search results, before cloning (``steps=0``: none)."""
    bc: BCConfig = field(default_factory=lambda: BCConfig(steps=2000))
    """Behaviour-cloning hyper-parameters."""
    model: TinyQwen2Config = field(
        default_factory=lambda: TinyQwen2Config(
            hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
        )
    )
    """Size of the Qwen2 policy."""
    model_seed: int = 0
    """Seed of the policy's initial weights."""
    vocab_size: int = 4096
    """Target vocabulary of the world's BPE tokenizer (a small world may not have enough text to fill it)."""
    demonstrations: int = 2000
    """Training questions the expert plays (fewer when the train split is smaller)."""
    name_shuffle: float = 1.0
    """Probability that a demonstration's entity names are consistently renamed as it is batched (see
    :class:`NameShuffle`); 0 clones the episodes as played."""
    only_correct: bool = True
    """Clone only the expert episodes that earned the reward (filtered behaviour cloning)."""
    variant_mix: tuple[int, ...] = (1, 2, 3)
    """Variants per search of the demonstrations, one value per question drawn from these (``(1, 2, 3)``: a third
    each); empty: always ``episode.max_variants``. A mix leaves RL a choice to make: how many variants pay off."""
    count_facts: bool = True
    """The demonstrations say in every ``<think>`` how many facts are left to find (``ExpertEpisode.count_facts``)."""
    transcripts_for_tokenizer: int = 300
    """Expert transcripts (``run_expert``) added to the tokenizer's training texts."""
    eval_questions: int = 0
    """Held-out test questions the trained policy answers greedily (0: no evaluation)."""
    squeezer: str = "extractive"
    """Squeezer of the demonstrations and the evaluation (``agent_env.squeezers.make_squeezer`` spec); the
    default is ``expandsearch chat``'s, so the policy reads there what it read here."""
    episode: EpisodeConfig = field(default_factory=lambda: EpisodeConfig(max_turn_tokens=120, temperature=0.0))
    """Episode budgets and protocol, for the demonstrations and the greedy evaluation."""


def build_world_policy(
    world_dir: str | Path,
    out_dir: str | Path,
    config: WarmStartConfig | None = None,
    *,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Tokenizer + tiny Qwen2 + behaviour cloning on expert episodes → a policy directory; returns its metrics."""
    from retriever_server.bm25 import BM25Index

    config = config or WarmStartConfig()
    started = time.perf_counter()
    world = WorldData.load(world_dir)
    index = BM25Index.build(world.passages)
    demos = _sample(world.questions["train"], config.demonstrations, config.bc.seed)
    tokenizer = _world_tokenizer(world, index, config)
    log(f"tokenizer: {len(tokenizer)} tokens, trained on the world's texts")
    trajectories, expert_metrics = _expert_trajectories(world, demos, index, tokenizer, config)
    log(f"expert: {len(trajectories)} demonstrations, EM {expert_metrics['expert/reward_mean']:.3f} through the env")
    model = _tiny_model(tokenizer, config)
    pretrain_metrics: dict[str, Any] = {}
    if config.pretrain.steps:
        pretrain_metrics = pretrain_on_search_results(
            model,
            tokenizer,
            world.passages,
            world.lexicon,
            config.pretrain,
            seed=config.bc.seed,
            log=_log_to(log, "pretrain"),
        )
    augment = NameShuffle.from_lexicon(tokenizer, world.lexicon, config.name_shuffle) if config.name_shuffle else None
    bc_metrics = behaviour_cloning(model, tokenizer, trajectories, config.bc, augment=augment, log=_log_to(log, "bc"))
    out = save_policy(model, tokenizer, out_dir)
    eval_metrics = evaluate_world_policy(model, tokenizer, world, index, config) if config.eval_questions else {}
    pretrain_metrics.pop("pretrain/history", None)  # the cloning curve is kept; this one would double the file
    metrics = {**expert_metrics, **pretrain_metrics, **bc_metrics, **eval_metrics}
    metrics["perf/total_seconds"] = time.perf_counter() - started
    record = {"config": asdict(config), "world": str(world_dir), "metrics": metrics}
    (out / METRICS_FILE).write_text(json.dumps(record, indent=1) + "\n")
    return metrics


def _sample(examples: Sequence[QAExample], count: int, seed: int) -> list[QAExample]:
    chosen = list(examples)
    random.Random(seed).shuffle(chosen)
    return chosen[:count]


def _world_tokenizer(world: WorldData, index: BM25Index, config: WarmStartConfig) -> Any:
    from agent_env.tiny_model import train_tokenizer
    from data_prep.expert import run_expert
    from data_prep.tokenizer_corpus import tokenizer_corpus

    sample = _sample(world.questions["train"], config.transcripts_for_tokenizer, config.bc.seed + 1)
    episode = config.episode
    results = run_expert(
        sample, index, world.lexicon, max_variants=episode.max_variants, topk=episode.topk, max_turns=episode.max_turns
    )
    questions = [example for split in world.questions.values() for example in split]
    texts = tokenizer_corpus(world.passages, questions, [result.transcript for result in results])
    return train_tokenizer(texts, config.vocab_size)


def _tiny_model(tokenizer: Any, config: WarmStartConfig) -> Any:
    from agent_env.tiny_model import build_tiny_qwen2

    return build_tiny_qwen2(tokenizer, config.model, config.model_seed)


def _expert_trajectories(
    world: WorldData, demos: Sequence[QAExample], index: BM25Index, tokenizer: Any, config: WarmStartConfig
) -> tuple[list[Trajectory], dict[str, float]]:
    """The expert's episodes on ``demos`` through the real environment (kept: the rewarded ones, if asked)."""
    from data_prep.expert_policy import expert_policy

    engine = expert_policy(
        tokenizer,
        demos,
        world.lexicon,
        max_variants=config.episode.max_variants,
        variant_mix=config.variant_mix,
        count_facts=config.count_facts,
    )
    trajectories = _play(engine, tokenizer, index, demos, config)
    metrics = {key.replace("rollout/", "expert/"): value for key, value in summarize_rollouts(trajectories).items()}
    kept = [trajectory for trajectory in trajectories if trajectory.reward > 0 or not config.only_correct]
    if not kept:
        raise ValueError("the expert earned no reward on any demonstration question: nothing to clone")
    metrics["expert/kept"] = float(len(kept))
    return kept, metrics


def _play(
    engine: Any, tokenizer: Any, index: BM25Index, examples: Sequence[QAExample], config: WarmStartConfig
) -> list[Trajectory]:
    from agent_env.assembly import close_env
    from agent_env.search import LocalSearch
    from agent_env.squeezers import make_squeezer

    async def play() -> list[Trajectory]:
        env = AgentEnv(engine, tokenizer, LocalSearch(index), make_squeezer(config.squeezer), config.episode)
        inputs = [EpisodeInput(example.question, tuple(example.golden_answers), example.id) for example in examples]
        try:
            return await RolloutRunner(env).run(inputs)
        finally:
            await close_env(env)

    return asyncio.run(play())


def evaluate_world_policy(
    model: Any, tokenizer: Any, world: WorldData, index: BM25Index, config: WarmStartConfig
) -> dict[str, float]:
    """Held-out metrics under ``eval/…``: the policy answers test questions greedily through the environment,
    with the evaluator of the trainer and ``expandsearch eval`` (``eval.runner.greedy_records``)."""
    from agent_env.search import LocalSearch
    from expandsearch.rl.evaluation import greedy_rows, summarize

    questions = _sample(world.questions["test"], config.eval_questions, config.bc.seed + 2)
    play = greedy_rows(model, tokenizer, lambda: LocalSearch(index), questions, config.episode, config.squeezer)
    metrics = summarize(asyncio.run(play), {})["metrics"]
    return {f"eval/{key}": value for key, value in metrics.items()}


def _log_to(log: Callable[[str], None], stage: str) -> Callable[[dict[str, float]], None]:
    return lambda row: log(f"{stage:8s} {_log_line(row)}")


def _log_line(row: dict[str, float]) -> str:
    return (
        f"step {row['bc/step']:5.0f}  loss {row['bc/loss']:.4f}  lr {row['bc/lr']:.2e}  "
        f"grad_norm {row['bc/grad_norm']:.2f}  {row['perf/seconds']:.1f} s"
    )
