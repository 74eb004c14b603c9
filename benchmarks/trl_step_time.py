"""Step time of our embedded GRPO trainer against TRL's ``GRPOTrainer``, on the same tiny model and the same batch.

Both trainers run in one process, on CPU in float32, and alternate step by step (TRL step 1, our step 1, TRL step 2,
…; our step runs inside a TRL callback), so load from other processes on the machine falls on both alike. The first
step of each is a warm-up and is not counted; the table gives the median wall time per step, the ratio TRL / ours,
the tokens per step and where the time of each step goes.

What is the same on both sides:

- **Model**: one policy directory, loaded for both (and for both reference models): ``--policy DIR``, or a
  random-weight tiny Qwen2 of the embedded default's size (hidden 128, 4 layers) over a byte-level BPE tokenizer
  trained on the synthetic world's text (``agent_env.tiny_model``).
- **Prompts**: the world's training questions as the chat prompt of our protocol (``agent_env.protocol.
  build_messages``); TRL gets them as conversational prompts and applies the same chat template, and takes them
  unshuffled in the order our trainer draws them, so step *i* of both trainers sees the same questions and prompt
  tokens (checked and printed).
- **Batch**: ``--questions`` per step times ``--group`` samples each (TRL's ``num_generations``), decoded as one batch,
  temperature 1. Our side: a single-turn episode (``max_turns=1``, ``max_turn_tokens=L``).
- **Completion length**: exactly ``--completion-tokens`` L on both sides. A random-weight model writes an end of
  turn now and then, and the two trainers stop on different tokens (TRL on EOS, ours also on ``</search>`` and
  ``</answer>``), so early stops are switched off: TRL with ``min_new_tokens=L``, ours by emptying the engine's
  stop-token set and giving the episode a stop string no model writes in L tokens (the same length as the real
  ones, so our per-token stop check still costs what it costs in training). The lengths are printed.
- **Objective**: GRPO advantages (group mean and std), clip 0.2, token-mean loss over all of a step's tokens (TRL's
  ``dapo``), a KL term to a frozen reference with the k3 estimator (TRL ``beta`` = our ``kl_loss_coef``,
  ``low_var_kl``), no entropy bonus.
- **Updates**: one optimiser update per step on both sides: our ``mini_batch_size`` is all of a step's episodes,
  in micro-batches of ``--micro-batch``; TRL's ``per_device_train_batch_size`` is that micro-batch with
  ``gradient_accumulation_steps`` = episodes / micro-batch, so ``steps_per_generation`` (= the accumulation steps)
  makes one generation of the whole batch per optimiser step, and ``num_iterations=1``. Same AdamW
  (``torch.optim.AdamW``, betas 0.9/0.999, no weight decay), constant learning rate, gradient clipping at 1.0.
- **Reward**: exact match of the ``<answer>`` in the completion (``agent_env.protocol.parse_action`` +
  ``agent_env.reward.exact_match``, what our environment's ``em`` reward computes). A random-weight model almost
  never answers correctly, so rewards (and advantages) are ~0 on both sides; that changes no step's work.
- **No overhead outside the step**: no logging backend (``report_to="none"``), no checkpoints, no evaluation, no
  progress bars; TRL's bf16 autocast and gradient checkpointing (its defaults) are off.

Run (the defaults; 2-4 minutes on the 2-core dev machine, ``--completion-tokens 128`` about 4)::

    .venv/bin/python benchmarks/trl_step_time.py --questions 8 --group 4 --completion-tokens 64 --steps 10 --threads 2

Other processes on the machine make absolute times noisy; the interleaving keeps the ratio fair, and the paired
per-step ratios show how much it moved.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from agent_env.engine import SamplingParams
from agent_env.episode import EpisodeConfig, encode_chat_prompt
from agent_env.protocol import STOP_STRINGS, build_messages, build_prompt, parse_action
from agent_env.reward import exact_match

UNWRITTEN_STOP = "\x00" * max(len(stop.encode()) for stop in STOP_STRINGS)
"""A stop string as long as the longest real one that a sampled completion never contains (nine NUL bytes in a
row), so our engine decodes and checks the same tail every token but never stops early."""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=8, help="questions per step (default 8)")
    parser.add_argument("--group", type=int, default=4, help="samples per question, TRL num_generations (default 4)")
    parser.add_argument("--completion-tokens", type=int, default=64, help="tokens per completion (default 64)")
    parser.add_argument("--micro-batch", type=int, default=8, help="sequences per forward/backward (default 8)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per trainer, after one warm-up (default 10)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--policy", help="policy model dir (default: a tiny random-weight Qwen2)")
    parser.add_argument("--size", default="tiny", help="synthetic world size (default tiny)")
    parser.add_argument("--lr", type=float, default=1e-5, help="learning rate of both (default 1e-5)")
    parser.add_argument("--beta", type=float, default=0.001, help="KL coefficient of both (default 0.001)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the world, model and sampling (default 0)")
    args = parser.parse_args()
    episodes = args.questions * args.group
    if args.group < 2 or episodes % args.micro_batch:
        parser.error(f"need --group >= 2 and questions x group ({episodes}) a multiple of --micro-batch")
    return args


# --- the shared pieces -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FixedLengthEpisode(EpisodeConfig):
    """An episode whose policy turn always runs to its token budget (see the module docstring)."""

    def sampling(self, max_new_tokens: int, seed: int | None = None) -> SamplingParams:
        return replace(super().sampling(max_new_tokens, seed), stop=(UNWRITTEN_STOP,))


def completion_reward(text: str, golden_answers: Sequence[str]) -> float:
    """Our ``em`` reward of one single-turn completion: exact match of its answer, 0 without an answer."""
    answer = parse_action(text).answer  # None unless the completion is an answer
    return 0.0 if answer is None else exact_match(answer, golden_answers)


def tiny_random_policy(world: Any, out: Path, seed: int) -> Path:
    from agent_env.tiny_model import save_tiny_policy
    from expandsearch.rl.config import TrainConfig
    from expandsearch.rl.world import warm_start_config

    texts = [f"{passage.title}\n{passage.text}" for passage in world.passages]
    texts += [example.question for example in world.questions["train"]] + [build_prompt("question")]
    size = warm_start_config(TrainConfig()).model  # the embedded default's policy size
    return save_tiny_policy(out, texts, vocab_size=4096, config=size, seed=seed)


def write_world_dir(size: str, seed: int, out: Path) -> Path:
    from data_prep.synthetic import WORLD_SIZES, generate_world, write_world

    write_world(generate_world(replace(WORLD_SIZES[size], seed=seed)), out)
    return out


# --- our trainer -----------------------------------------------------------------------------------------------------


def our_config(args: argparse.Namespace, run_dir: Path) -> Any:
    from expandsearch.config import config_from_dict
    from expandsearch.rl.config import TrainConfig

    episodes = args.questions * args.group
    config = config_from_dict(
        TrainConfig,
        {
            "run_dir": str(run_dir),
            "seed": args.seed,
            "steps": args.steps + 1,
            "torch_threads": args.threads,
            "rollout": {
                "questions_per_step": args.questions,
                "group_size": args.group,
                "max_batch_size": episodes,  # the whole step in one decoding batch, as TRL's generate
                "episode": {"max_turns": 1, "max_turn_tokens": args.completion_tokens, "reward": "em"},
            },
            "algorithm": {
                "estimator": "grpo",
                "use_kl_loss": True,
                "kl_loss_coef": args.beta,
                "kl_loss_type": "low_var_kl",
                "entropy_coef": 0.0,
                "loss_agg_mode": "token-mean",
                "ppo_epochs": 1,
                "mini_batch_size": episodes,
                "micro_batch_size": args.micro_batch,
            },
            "optim": {"lr": args.lr, "betas": [0.9, 0.999], "warmup_steps": 0, "schedule": "constant"},
        },
    )
    episode = FixedLengthEpisode(**asdict(config.rollout.episode))
    return replace(config, rollout=replace(config.rollout, episode=episode))


@dataclass
class OurSteps:
    """Our trainer, with what each of its steps produced recorded beside its own metrics."""

    trainer: Any
    rows: list[dict[str, float]] = field(default_factory=list)
    lengths: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        # The engine stops a row at EOS whatever the sampling says: with no stop tokens every row runs to L.
        self.trainer.env.engine.stop_token_ids = frozenset()
        rollout = self.trainer.rollout

        def recorded_rollout() -> Any:
            trajectories = rollout()
            self.lengths.append([sum(trajectory.response_mask) for trajectory in trajectories])
            return trajectories

        self.trainer.rollout = recorded_rollout

    def step(self) -> None:
        stats = self.trainer.env.engine.batch_stats
        requests, batches = stats.requests, stats.batches
        row = self.trainer.train_step()
        row["decode_batch"] = (stats.requests - requests) / max(stats.batches - batches, 1)
        row["tokens"] = row["perf/tokens_per_s"] * row["timing/step"]
        self.rows.append(row)


def build_ours(args: argparse.Namespace, policy_dir: Path, world_dir: Path, scratch: Path) -> OurSteps:
    from expandsearch.rl.main_job import build_world_trainer

    # the index is unused: a single-turn episode never searches
    trainer = build_world_trainer(our_config(args, scratch / "ours"), policy_dir, world_dir, scratch / "index")
    assert trainer.updates_per_step == 1
    return OurSteps(trainer)


def our_prompt_order(trainer: Any, questions: int, steps: int) -> list[Any]:
    """The questions our trainer will draw, step after step (its seeded data order, replayed on a copy)."""
    from expandsearch.rl.trainer import DataOrder

    order = DataOrder(len(trainer.questions), trainer.config.seed)
    return [trainer.questions[index] for _ in range(steps) for index in order.next_indices(questions)]


# --- TRL's trainer ---------------------------------------------------------------------------------------------------


def trl_config(args: argparse.Namespace, out: Path) -> Any:
    from trl import GRPOConfig

    episodes = args.questions * args.group
    length = args.completion_tokens
    return GRPOConfig(
        output_dir=str(out),
        use_cpu=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        seed=args.seed,
        max_steps=args.steps + 1,
        per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=episodes // args.micro_batch,  # steps_per_generation follows it
        num_generations=args.group,
        num_iterations=1,
        shuffle_dataset=False,  # the dataset is already in our trainer's draw order
        max_completion_length=length,
        generation_kwargs={"min_new_tokens": length},
        temperature=1.0,
        top_p=1.0,
        beta=args.beta,
        loss_type="dapo",
        scale_rewards="group",
        epsilon=0.2,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        optim="adamw_torch",
        adam_beta1=0.9,
        adam_beta2=0.999,
        weight_decay=0.0,
        max_grad_norm=1.0,
        report_to="none",
        logging_strategy="no",
        save_strategy="no",
        eval_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def em_reward(completions: list[list[dict[str, str]]], golden_answers: list[list[str]], **_: Any) -> list[float | None]:
    """TRL reward function: :func:`completion_reward` of each conversational completion."""
    return [
        completion_reward(turn[-1]["content"], golds) for turn, golds in zip(completions, golden_answers, strict=True)
    ]


def build_trl(
    args: argparse.Namespace, policy_dir: Path, inputs: Sequence[Any], episode: EpisodeConfig, out: Path
) -> Any:
    from datasets import Dataset
    from trl import GRPOTrainer

    from agent_env.models import load_causal_lm

    # Loaded as our build_trainer loads it; TRL builds its reference model from the same directory.
    model, tokenizer = load_causal_lm(str(policy_dir), device="cpu", dtype="float32")
    rows = [
        {
            "prompt": build_messages(example.question, episode.template, episode.max_variants),
            "golden_answers": list(example.golden_answers),
        }
        for example in inputs
    ]
    return GRPOTrainer(
        model=model,
        reward_funcs=em_reward,
        args=trl_config(args, out),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )


def check_trl_setup(trl: Any, episodes: int) -> None:
    """One generation of the whole batch and one optimiser update per TRL step, no old-log-prob pass."""
    config = trl.args
    assert config.generation_batch_size == episodes, config.generation_batch_size
    assert config.steps_per_generation == config.gradient_accumulation_steps
    assert config.num_iterations == 1
    assert trl.ref_model is not None


def time_method(owner: Any, name: str, sink: dict[str, float]) -> None:
    """Add the wall time of every call of ``owner.name`` to ``sink[name]``."""
    method = getattr(owner, name)

    def timed_call(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            sink[name] = sink.get(name, 0.0) + time.perf_counter() - started
            sink[f"{name}/calls"] = sink.get(f"{name}/calls", 0.0) + 1

    setattr(owner, name, timed_call)


# --- interleaving ----------------------------------------------------------------------------------------------------


def interleaver(trl: Any, ours: OurSteps) -> tuple[Any, list[dict[str, float]]]:
    """A callback that ends every TRL step by timing it and running one of our steps: A B A B …"""
    from transformers import TrainerCallback

    rows: list[dict[str, float]] = []
    parts: dict[str, float] = {}
    time_method(trl, "_generate", parts)  # tokenise prompts, generate, decode
    time_method(trl, "_generate_and_score_completions", parts)  # the above + ref log-probs, reward, advantages
    tokens_seen = [0.0]

    class Interleave(TrainerCallback):
        resumed = 0.0

        def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
            self.resumed = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, *rest: Any, **kwargs: Any) -> None:
            # Everything TRL did since our last step ended: data loading, generation, scoring, updates, bookkeeping.
            row = {"step": time.perf_counter() - self.resumed, **parts}
            assert row["_generate/calls"] == 1, "TRL generated more than once in one optimiser step"
            metrics = trl._metrics["train"]
            row |= {key: metrics[f"completions/{key}_length"][-1] for key in ("min", "mean", "max")}
            row["reward"] = metrics["reward"][-1]
            row["tokens"] = state.num_input_tokens_seen - tokens_seen[0]
            tokens_seen[0] = state.num_input_tokens_seen
            rows.append(row)
            parts.clear()
            ours.step()
            self.resumed = time.perf_counter()

    return Interleave(), rows


def check_same_prompts(trl: Any, tokenizer: Any, inputs: Sequence[Any], episode: EpisodeConfig) -> int:
    """Our prompt token ids equal TRL's for the first step's questions; returns their mean length."""
    messages = [build_messages(example.question, episode.template, episode.max_variants) for example in inputs]
    trl_ids, _, _ = trl._tokenize_prompts(messages)
    ours = [encode_chat_prompt(tokenizer, message) for message in messages]
    assert [list(ids) for ids in trl_ids] == ours, "TRL and our trainer tokenise the prompts differently"
    return round(statistics.fmean(len(ids) for ids in ours))


# --- report ----------------------------------------------------------------------------------------------------------


OUR_STAGES = ("rollout", "reward", "old_log_prob", "ref_log_prob", "advantages", "update_actor")


def median(rows: Sequence[dict[str, float]], key: str) -> float:
    return statistics.median(row[key] for row in rows)


def print_report(args: argparse.Namespace, ours: OurSteps, trl_rows: list[dict[str, float]], setting: str) -> None:
    our_rows, timed_trl = ours.rows[1:], trl_rows[1:]  # step 1 of each is the warm-up
    print(setting)
    print_lengths(ours, trl_rows, args.completion_tokens)
    ours_s, trl_s = median(our_rows, "timing/step"), median(timed_trl, "step")
    print(f"\n{'trainer':<8} {'median s':>9} {'min s':>7} {'max s':>7} {'tokens/step':>12} {'tokens/s':>9}")
    for name, rows, key in (("ours", our_rows, "timing/step"), ("TRL", timed_trl, "step")):
        tokens, seconds = median(rows, "tokens"), median(rows, key)
        low, high = min(row[key] for row in rows), max(row[key] for row in rows)
        print(f"{name:<8} {seconds:9.2f} {low:7.2f} {high:7.2f} {tokens:12.0f} {tokens / seconds:9.0f}")
    paired = [trl["step"] / our["timing/step"] for our, trl in zip(our_rows, timed_trl, strict=True)]
    print(f"ratio TRL / ours: {trl_s / ours_s:.2f} (of the medians)")
    steps = " ".join(f"{ratio:.2f}" for ratio in paired)
    print(f"paired TRL step i / our step i: {steps} (median {statistics.median(paired):.2f})")
    print("per-step s, ours: " + " ".join(f"{row['timing/step']:.2f}" for row in our_rows))
    print("per-step s, TRL:  " + " ".join(f"{row['step']:.2f}" for row in timed_trl))
    print_breakdowns(our_rows, timed_trl)
    reward_ours = statistics.fmean(row["rollout/reward_mean"] for row in our_rows)
    reward_trl = statistics.fmean(row["reward"] for row in timed_trl)
    print(f"\nmean reward: ours {reward_ours:.3f}, TRL {reward_trl:.3f} (a random-weight policy: ~0 on both)")
    print(f"our mean decode batch: {statistics.fmean(row['decode_batch'] for row in our_rows):.1f} sequences")


def print_lengths(ours: OurSteps, trl_rows: Sequence[dict[str, float]], length: int) -> None:
    our_lengths = [value for step in ours.lengths for value in step]
    print(
        f"completion tokens, ours: min {min(our_lengths)} mean {statistics.fmean(our_lengths):.1f} "
        f"max {max(our_lengths)}; TRL: min {min(row['min'] for row in trl_rows):.0f} "
        f"mean {statistics.fmean(row['mean'] for row in trl_rows):.1f} max {max(row['max'] for row in trl_rows):.0f} "
        f"(target {length}, all steps)"
    )


def mean(rows: Sequence[dict[str, float]], key: str) -> float:
    return statistics.fmean(row[key] for row in rows)


def print_breakdowns(our_rows: Sequence[dict[str, float]], trl_rows: Sequence[dict[str, float]]) -> None:
    """Mean seconds per stage (means, unlike medians, add up to the mean step)."""
    step = mean(our_rows, "timing/step")
    print(f"\nour step (mean s, share of the mean step {step:.2f} s):")
    stages = [(stage, mean(our_rows, f"timing/{stage}")) for stage in OUR_STAGES]
    stages.append(("other", step - sum(seconds for _, seconds in stages)))
    for stage, seconds in stages:
        print(f"  {stage:<38} {seconds:7.3f} {seconds / step:6.1%}")
    trl_step = mean(trl_rows, "step")
    generate = mean(trl_rows, "_generate")
    scored = mean(trl_rows, "_generate_and_score_completions")
    print(f"TRL step (mean s, share of the mean step {trl_step:.2f} s):")
    for name, seconds in (
        ("generate (tokenise, generate, decode)", generate),
        ("ref log-probs, reward, advantages", scored - generate),
        ("loss fwd/bwd, optimizer, rest", trl_step - scored),
    ):
        print(f"  {name:<38} {seconds:7.3f} {seconds / trl_step:6.1%}")
    # With one update per step the samples are on-policy: old log-probs equal the current ones, and TRL skips the
    # pass (it uses the detached current log-probs); ours runs it anyway.
    without = step - mean(our_rows, "timing/old_log_prob")
    print(f"ours without the old_log_prob pass: {without:.2f} s (mean ratio TRL / that: {trl_step / without:.2f})")


# --- main ------------------------------------------------------------------------------------------------------------


def main() -> None:
    args = parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before torch is first imported
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        world_dir = write_world_dir(args.size, args.seed, scratch / "world")
        from data_prep.synthetic import WorldData

        world = WorldData.load(world_dir)
        policy_dir = Path(args.policy) if args.policy else tiny_random_policy(world, scratch / "policy", args.seed)
        ours = build_ours(args, policy_dir, world_dir, scratch)
        episode = ours.trainer.config.rollout.episode
        inputs = our_prompt_order(ours.trainer, args.questions, args.steps + 1)
        trl = build_trl(args, policy_dir, inputs, episode, scratch / "trl")
        check_trl_setup(trl, args.questions * args.group)
        prompt_tokens = check_same_prompts(trl, ours.trainer.tokenizer, inputs[: args.questions], episode)
        callback, trl_rows = interleaver(trl, ours)
        trl.add_callback(callback)
        trl.train()
        ours.trainer.close()
    print_report(args, ours, trl_rows, describe(args, ours.trainer.policy, prompt_tokens))


def describe(args: argparse.Namespace, policy: Any, prompt_tokens: int) -> str:
    config = policy.config
    parameters = sum(parameter.numel() for parameter in policy.parameters())
    model = (
        f"{args.policy or 'random-weight tiny Qwen2'} (hidden {config.hidden_size}, {config.num_hidden_layers} layers, "
        f"vocab {config.vocab_size}, {parameters / 1e6:.2f}M parameters)"
    )
    return (
        f"{args.questions} questions x {args.group} samples = {args.questions * args.group} completions of "
        f"{args.completion_tokens} tokens per step, prompts ~{prompt_tokens} tokens (identical on both sides); "
        f"{model}; micro-batch {args.micro_batch}, 1 update/step; float32 CPU, {args.threads} threads; "
        f"{args.steps} timed steps each after 1 warm-up, interleaved"
    )


if __name__ == "__main__":
    main()
