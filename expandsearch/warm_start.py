"""Supervised warm start: behaviour cloning of the scripted expert, and the tiny default policy of a synthetic world.

RL from a random-weight policy would spend its first thousands of episodes discovering the tag format. So before
RL the policy imitates the scripted expert (:mod:`data_prep.expert`), whose episodes are played through the real
environment (:mod:`data_prep.expert_policy`): the trajectories hold exactly the token ids and the
``response_mask`` the RL trainer will see. Behaviour cloning is next-token cross-entropy on the expert's own
tokens only (``response_mask == 1``).

- :func:`behaviour_cloning` trains any causal LM on trajectories (AdamW, linear warm-up then cosine decay,
  gradient clipping, length-grouped right-padded batches, an optional per-example augmentation such as
  :class:`NameShuffle`); deterministic for a seed on CPU.
- :func:`build_world_policy` makes the project's tiny default policy from a world directory (``expandsearch
  world``): a tokenizer trained on the world's texts, a small Qwen2 built from a config, behaviour cloning on
  expert episodes of training questions, saved in the transformers layout (``AutoModelForCausalLM``,
  ``expandsearch chat --model DIR``), then evaluated greedily on held-out test questions.

CLI: ``expandsearch warm-start --world DIR --out DIR [--steps N] [--seed S]``.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent_env.episode import AgentEnv, EpisodeConfig, Trajectory
from agent_env.rollout import EpisodeInput, RolloutRunner, summarize_rollouts
from agent_env.tiny_model import TinyQwen2Config

if TYPE_CHECKING:
    import torch

    from data_prep.formats import QAExample
    from data_prep.synthetic import WorldLexicon
    from retriever_server.bm25 import BM25Index
    from retriever_server.corpus import Passage

IGNORE_INDEX = -100
"""Label of positions that carry no loss (prompt, environment tokens, padding), as in ``torch.nn.CrossEntropyLoss``."""

METRICS_FILE = "warm_start.json"
"""Written into the policy directory: the config, the training curve and the held-out evaluation."""

Example = tuple[list[int], list[int]]
"""``(input_ids, labels)`` of one trajectory, as :func:`bc_example` makes it."""

Augment = Callable[[list[int], list[int], random.Random], Example]
"""Rewrites one example for one use; gets the training loop's seeded RNG, so runs stay deterministic."""


@dataclass(frozen=True)
class BCConfig:
    """Behaviour-cloning hyper-parameters (defaults: the tiny world policy on a CPU)."""

    steps: int = 2500
    """Optimizer steps. The tiny default policy (small world) writes valid actions with three variants after
    ~200 steps, but copies names from the question into its queries only after ~1500-2000 (see
    :class:`NameShuffle`); 2500 steps take about 10 minutes on two CPU cores."""
    batch_size: int = 8
    """Trajectories per step."""
    lr: float = 5e-3
    """Peak learning rate (tiny randomly initialised models take large steps)."""
    warmup_steps: int = 50
    """Steps of linear warm-up from 0 to ``lr``."""
    min_lr_ratio: float = 0.1
    """The cosine decay ends at ``lr * min_lr_ratio``."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW moment decay rates."""
    max_grad_norm: float = 1.0
    """Gradients are clipped to this global L2 norm."""
    seed: int = 0
    """Seeds the batch order (and nothing else: the model's initial weights have their own seed)."""
    log_every: int = 50
    """Steps between two log lines (the first and last step are always logged)."""
    group_batches: int = 8
    """Trajectories are sorted by length within windows of this many batches, so a batch pads little."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every", "group_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (self.lr > 0 and self.max_grad_norm > 0 and 0 <= self.min_lr_ratio <= 1 and self.warmup_steps >= 0):
            raise ValueError("need lr > 0, max_grad_norm > 0, 0 <= min_lr_ratio <= 1 and warmup_steps >= 0")


# --- behaviour cloning -----------------------------------------------------------------------------------------------


def bc_example(trajectory: Trajectory) -> Example:
    """``(input_ids, labels)`` of one trajectory: the whole context as input, labels only on policy tokens.

    The loss covers only tokens the expert chose (``response_mask == 1``). The prompt and the environment's
    tokens (passages, summaries, feedback, the final-turn notice) are context to condition on, not actions:
    cloning them would teach the policy to write its own ``<information>`` instead of searching, spend its
    capacity modelling the corpus, and disagree with the RL loss, which masks the same tokens.
    """
    response_labels = [
        token if mask == 1 else IGNORE_INDEX
        for token, mask in zip(trajectory.response_ids, trajectory.response_mask, strict=True)
    ]
    input_ids = list(trajectory.prompt_ids) + list(trajectory.response_ids)
    return input_ids, [IGNORE_INDEX] * len(trajectory.prompt_ids) + response_labels


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: ``input_ids``, ``attention_mask`` and ``labels``, each ``(batch, longest)``."""
    import torch

    longest = max(len(input_ids) for input_ids, _ in examples)
    input_ids = torch.full((len(examples), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), longest), dtype=torch.long)
    for row, (ids, row_labels) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(ids)] = torch.tensor(row_labels)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def bc_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled tokens of ``batch`` (see :func:`collate`).

    Logits are computed only where a label is: for a big vocabulary and a small model the output layer over
    every context position would cost more than the whole transformer.
    """
    import torch.nn.functional as F

    hidden = model.base_model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).last_hidden_state
    targets = batch["labels"][:, 1:]  # position t predicts token t + 1
    predicting = targets != IGNORE_INDEX
    logits = model.get_output_embeddings()(hidden[:, :-1][predicting])
    return F.cross_entropy(logits.float(), targets[predicting])


def length_grouped_batches(lengths: Sequence[int], config: BCConfig) -> Iterator[list[int]]:
    """Endless batches of indices: each epoch shuffled, sorted by length within windows, windows' batches shuffled.

    Sorting within a window keeps similar lengths together (little padding) while the batch order stays random.
    """
    rng = random.Random(config.seed)
    window = config.batch_size * config.group_batches
    while True:
        order = list(range(len(lengths)))
        rng.shuffle(order)
        batches = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start : start + window], key=lambda index: lengths[index])
            batches += [chunk[i : i + config.batch_size] for i in range(0, len(chunk), config.batch_size)]
        rng.shuffle(batches)
        yield from batches


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


def lr_factor(step: int, config: BCConfig) -> float:
    """Multiplier of the peak lr at ``step`` (0-based): linear warm-up, then cosine decay to ``min_lr_ratio``."""
    if step < config.warmup_steps:
        return (step + 1) / (config.warmup_steps + 1)
    decay_steps = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / decay_steps)
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def behaviour_cloning(
    model: Any,
    tokenizer: Any,
    trajectories: Sequence[Trajectory],
    config: BCConfig | None = None,
    *,
    augment: Augment | None = None,
    log: Callable[[dict[str, float]], None] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Train ``model`` in place to imitate ``trajectories``; returns final metrics and the loss curve.

    ``overrides`` replace fields of ``config`` (``steps=50, seed=1``). ``augment`` rewrites each example as it is
    batched (e.g. :class:`NameShuffle`). ``log`` receives the metrics of every ``log_every``-th step
    (``bc/loss``, ``bc/lr``, ``bc/grad_norm``, ``perf/seconds``, …).
    """
    examples = [bc_example(trajectory) for trajectory in trajectories]
    if not any(label != IGNORE_INDEX for _, labels in examples for label in labels):
        raise ValueError("no trajectory has a policy token (response_mask == 1) to learn from")
    return fit_examples(model, tokenizer, examples, replace(config or BCConfig(), **overrides), augment, log)


def fit_examples(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    config: BCConfig,
    augment: Augment | None = None,
    log: Callable[[dict[str, float]], None] | None = None,
    prefix: str = "bc",
) -> dict[str, Any]:
    """Next-token cross-entropy on the labelled tokens of ``examples`` (the loop of both warm-start stages)."""
    import torch

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config))
    batches = length_grouped_batches([len(input_ids) for input_ids, _ in examples], config)
    augment_rng = random.Random(config.seed + 1)
    history: list[dict[str, float]] = []
    model.train()
    started = time.perf_counter()
    for step in range(config.steps):
        chosen = [examples[i] for i in next(batches)]
        if augment is not None:
            chosen = [augment(input_ids, labels, augment_rng) for input_ids, labels in chosen]
        batch = {key: value.to(device) for key, value in collate(chosen, pad_id).items()}
        metrics = _train_step(model, optimizer, batch, config)
        metrics["bc/lr"] = float(scheduler.get_last_lr()[0])
        scheduler.step()
        metrics["bc/step"] = float(step + 1)
        metrics["perf/seconds"] = time.perf_counter() - started
        history.append(metrics)
        if log is not None and (step % config.log_every == 0 or step == config.steps - 1):
            log(metrics)
    model.eval()
    summary = _summary(history, len(examples))
    if prefix == "bc":
        return summary
    # ``bc/loss`` → ``pretrain/loss``, ``perf/seconds`` → ``pretrain/seconds``: the stages' metrics sit side by side
    return {f"{prefix}/{key.split('/', 1)[-1]}": value for key, value in summary.items()}


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

    steps: int = 300
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


def _train_step(model: Any, optimizer: Any, batch: dict[str, torch.Tensor], config: BCConfig) -> dict[str, float]:
    import torch

    loss = bc_loss(model, batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
    optimizer.step()
    return {
        "bc/loss": loss.item(),
        "bc/grad_norm": float(grad_norm),
        "bc/policy_tokens": float((batch["labels"] != IGNORE_INDEX).sum()),
        "bc/padded_tokens": float(batch["input_ids"].numel()),
    }


def _summary(history: list[dict[str, float]], num_trajectories: int) -> dict[str, Any]:
    seconds = history[-1]["perf/seconds"]
    tail = history[-max(1, len(history) // 10) :]  # a single step's loss is noisy; report the last tenth's mean
    return {
        "bc/first_loss": history[0]["bc/loss"],
        "bc/final_loss": sum(row["bc/loss"] for row in tail) / len(tail),
        "bc/steps": len(history),
        "bc/trajectories": num_trajectories,
        "perf/seconds": seconds,
        "perf/padded_tokens_per_s": sum(row["bc/padded_tokens"] for row in history) / max(seconds, 1e-9),
        "history": history,
    }


# --- the tiny world policy -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WarmStartConfig:
    """How :func:`build_world_policy` makes the tiny default policy of a world."""

    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    """Language-model pretraining on the world's search results, before cloning (``steps=0``: none)."""
    bc: BCConfig = field(default_factory=BCConfig)
    """Behaviour-cloning hyper-parameters."""
    model: TinyQwen2Config = field(
        default_factory=lambda: TinyQwen2Config(
            hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2
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
    variant_mix: tuple[int, ...] = ()
    """Variants per search of the demonstrations, one value per question drawn from these (``(1, 2, 3)``: a third
    each); empty: always ``episode.max_variants``. A mix leaves RL a choice to make: how many variants pay off."""
    count_facts: bool = False
    """The demonstrations say in every ``<think>`` how many facts are left to find (``ExpertEpisode.count_facts``)."""
    transcripts_for_tokenizer: int = 300
    """Expert transcripts (``run_expert``) added to the tokenizer's training texts."""
    eval_questions: int = 48
    """Held-out test questions the trained policy answers greedily (0: no evaluation)."""
    squeezer: str = "extractive"
    """Squeezer of the demonstrations and the evaluation (``agent_env.squeezers.make_squeezer`` spec); the
    default is ``expandsearch chat``'s, so the policy reads there what it read here."""
    episode: EpisodeConfig = field(default_factory=lambda: EpisodeConfig(temperature=0.0))
    """Episode budgets and protocol, for the demonstrations and the greedy evaluation."""


@dataclass(frozen=True)
class WorldData:
    """What a world directory written by ``data_prep.synthetic.write_world`` holds."""

    passages: list[Passage]
    questions: dict[str, list[QAExample]]
    lexicon: WorldLexicon

    @classmethod
    def load(cls, world_dir: str | Path) -> WorldData:
        from data_prep.formats import read_qa_jsonl
        from data_prep.synthetic import CORPUS_FILE, SPLITS, WORLD_FILE, WorldLexicon
        from retriever_server.corpus import load_passages

        world = Path(world_dir)
        if not (world / WORLD_FILE).is_file():
            raise FileNotFoundError(f"{world}: no {WORLD_FILE}; make a world with `expandsearch world --out DIR`")
        questions = {split: read_qa_jsonl(world / f"{split}.jsonl") for split in SPLITS}
        return cls(load_passages(world / CORPUS_FILE), questions, WorldLexicon.load(world))


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
    """Held-out metrics under ``eval/…``: the policy answers test questions greedily through the environment."""
    from agent_env.engine import TransformersEngine

    questions = _sample(world.questions["test"], config.eval_questions, config.bc.seed + 2)
    engine = TransformersEngine(model, tokenizer, seed=config.bc.seed)
    greedy = replace(config, episode=replace(config.episode, temperature=0.0))
    trajectories = _play(engine, tokenizer, index, questions, greedy)
    summary = summarize_rollouts(trajectories)
    return {key.replace("rollout/", "eval/"): value for key, value in summary.items()}


def save_policy(model: Any, tokenizer: Any, out_dir: str | Path) -> Path:
    """Write model and tokenizer in the transformers layout (``AutoModelForCausalLM.from_pretrained(out_dir)``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _log_to(log: Callable[[str], None], stage: str) -> Callable[[dict[str, float]], None]:
    return lambda row: log(f"{stage:8s} {_log_line(row)}")


def _log_line(row: dict[str, float]) -> str:
    return (
        f"step {row['bc/step']:5.0f}  loss {row['bc/loss']:.4f}  lr {row['bc/lr']:.2e}  "
        f"grad_norm {row['bc/grad_norm']:.2f}  {row['perf/seconds']:.1f} s"
    )
