"""Masked supervised fine-tuning of a causal LM on trajectories: the warm start any policy needs before RL.

RL from a policy that never writes the protocol learns nothing (zero reward, zero advantage). So before RL the
policy imitates demonstrations: episodes played through the real environment (the synthetic world's scripted
expert, :mod:`expandsearch.world_expert`, or real-data demonstrations from ``expandsearch prepare demos``,
:mod:`data_prep.demos`), whose trajectories hold exactly the token ids and the ``response_mask`` the RL trainer
will see. The loss is next-token cross-entropy on the policy's own tokens only (``response_mask == 1``).

- :func:`behaviour_cloning` trains any causal LM on trajectories (AdamW, linear warm-up then cosine decay,
  gradient clipping, length-grouped right-padded batches, an optional per-example augmentation); deterministic
  for a seed on CPU. :func:`fit_examples` is its loop over ``(input_ids, labels)`` pairs.
- :func:`save_policy` writes a policy in the transformers layout.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from data_prep.demos import DemoTrajectory


class TokenTrajectory(Protocol):
    """What cloning reads of a trajectory (an episode's :class:`~agent_env.episode.Trajectory`, a
    :class:`~data_prep.demos.DemoTrajectory`): its token ids and which of them the policy wrote."""

    @property
    def prompt_ids(self) -> Sequence[int]: ...

    @property
    def response_ids(self) -> Sequence[int]: ...

    @property
    def response_mask(self) -> Sequence[int]: ...


IGNORE_INDEX = -100
"""Label of positions that carry no loss (prompt, environment tokens, padding), as in ``torch.nn.CrossEntropyLoss``."""

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


# --- behaviour cloning ------------------------------------------------------------------------------------------------


def bc_example(trajectory: TokenTrajectory) -> Example:
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
    trajectories: Sequence[TokenTrajectory],
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


def save_policy(model: Any, tokenizer: Any, out_dir: str | Path) -> Path:
    """Write model and tokenizer in the transformers layout (``AutoModelForCausalLM.from_pretrained(out_dir)``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# --- demonstrations files ----------------------------------------------------------------------------------------


def read_demonstrations(
    paths: Sequence[str | Path], tokenizer: Any, protocol: str | None = None
) -> list[DemoTrajectory]:
    """Every demonstration of the jsonl ``paths`` (each line read by ``data_prep.demos``, the format's one reader);
    ValueError (one line) for a malformed line, a demonstration without a policy token, token ids that are not
    ``tokenizer``'s (demonstrations are tokenized for one policy: prepare them for this one), or, with
    ``protocol``, a demonstration written in another action format than the one RL will sample."""
    from data_prep.demos import read_demonstrations as read_demos_file

    demonstrations = [demo for path in paths for demo in read_demos_file(path)]
    if not demonstrations:
        raise ValueError(f"no demonstrations in {', '.join(map(str, paths))}")
    for demo in demonstrations:
        if not any(demo.response_mask):
            raise ValueError(f"demonstration {demo.example_id}: its response_mask marks no policy token")
        if protocol is not None and demo.protocol != protocol:
            raise ValueError(
                f"demonstration {demo.example_id} is written in the {demo.protocol} format, but "
                f"rollout.episode.protocol is {protocol}: SFT would teach a format RL does not parse"
            )
    _check_tokenizer(demonstrations[0], tokenizer, paths[0])
    return demonstrations


def _check_tokenizer(demo: DemoTrajectory, tokenizer: Any, path: str | Path) -> None:
    """The prompt's ids must be what ``tokenizer`` makes of their own text (a cheap identity check)."""
    text = tokenizer.decode(demo.prompt_ids)
    if list(tokenizer.encode(text, add_special_tokens=False)) != demo.prompt_ids:
        raise ValueError(f"{path}: its token ids are not this policy's tokenizer's; prepare demos with this policy")
