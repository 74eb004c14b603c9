"""Rollout speed: micro-batching, the engine's cross-turn prefix cache, and transformers' own ``generate``.

Two data sources:

- ``--data hotpotqa`` (the default with ``--policy smollm2``): real HotpotQA questions
  (``data_prep/sample_data/hotpotqa/hotpotqa_distractor_dev300.jsonl``), BM25 over their context passages, served
  by a real ``expandsearch serve-retriever`` subprocess on a free port. Reports, each configuration
  ``--repeats`` times (min-max spread):

  1. **One turn against ``model.generate``**: the episodes' first-turn prompts, left-padded, greedy, exactly
     ``--turn-tokens`` new tokens each, decoded by transformers' batched ``model.generate`` and by the engine.
  2. **Rollouts**: episodes/s and policy tokens/s, micro-batched (all episodes at once) vs one at a time, prefix
     cache on vs off, greedy (so every configuration decodes the same tokens).
  3. **Per turn**: the rollout's turn-``t`` requests replayed as one batch (one new token each), cache on (the
     turn before replayed first) vs off: the tokens prefilled and the prefill time, against the context length.

  ``--search-first`` makes every episode's first turn a search for its question (the engine still decodes that
  turn in full, as the policy would; the episode is handed ``<search> question </search>`` instead), so later
  turns carry real retrieved passages, as a trained policy's do: the prompted 135M model never searches.

- ``--data world``: held-out questions of a synthetic world with a tiny policy (``--policy DIR``, default a
  random-weight tiny Qwen2) over an in-process server thread; the rollout table only, plus the environment's
  overhead = (rollout wall time - engine decode time) / engine decode time.

    .venv/bin/python benchmarks/rollout_throughput.py --policy smollm2 --episodes 16 --max-turns 3 --search-first
    .venv/bin/python benchmarks/rollout_throughput.py --data world --episodes 64 --squeezer extractive
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

from agent_env.assembly import close_env
from agent_env.engine import Generation, SamplingParams, TransformersEngine
from agent_env.episode import AgentEnv, EpisodeConfig
from agent_env.protocol import build_prompt
from agent_env.rollout import EpisodeInput, RolloutRunner, summarize_rollouts
from agent_env.search import HttpSearch
from agent_env.squeezers import make_squeezer


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=16, help="episodes per configuration (default 16)")
    parser.add_argument("--policy", help="model spec (smollm2, a model dir); default: a tiny random Qwen2")
    parser.add_argument("--data", choices=("hotpotqa", "world"), help="default: hotpotqa with a policy, else world")
    parser.add_argument("--squeezer", default="extractive", help="squeezer spec (default extractive)")
    parser.add_argument("--size", default="small", help="world size with --data world (default small)")
    parser.add_argument("--turn-tokens", type=int, default=64, help="max tokens per policy turn (default 64)")
    parser.add_argument("--max-turns", type=int, default=3, help="turns per episode (default 3)")
    parser.add_argument("--observation-tokens", type=int, default=300, help="max observation tokens (default 300)")
    parser.add_argument("--temperature", type=float, default=0.0, help="policy temperature (default 0: greedy)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each configuration (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--search-first", action="store_true", help="first turn searches the question (see above)")
    parser.add_argument(
        "--sequential-episodes", type=int, default=4, help="episodes of the one-at-a-time runs (default 4; 0: none)"
    )
    return parser.parse_args()


# ---------------------------------------------------------------------------------------------- the policy side


@dataclass
class TurnLog:
    """Every request the episodes made, by episode and turn, and the tokens the engine decoded for them."""

    prompts: dict[int, list[list[int]]] = field(default_factory=lambda: defaultdict(list))
    decoded_tokens: int = 0


class TurnRecorder:
    """The engine as the episodes see it: records each request under its episode (the asyncio task that plays
    it) and, with ``search_first``, hands turn 0 a search for the question instead of the decoded text."""

    def __init__(self, engine: TransformersEngine, log: TurnLog, search_first: dict[str, list[int]] | None) -> None:
        self.engine = engine
        self.log = log
        self.search_first = search_first
        self._episodes: dict[int, int] = {}

    @property
    def max_context_tokens(self) -> int | None:
        return self.engine.max_context_tokens

    async def generate(self, prompt_ids: Sequence[int], sampling: SamplingParams) -> Generation:
        episode = self._episodes.setdefault(id(asyncio.current_task()), len(self._episodes))
        turn = len(self.log.prompts[episode])
        self.log.prompts[episode].append(list(prompt_ids))
        generation = await self.engine.generate(prompt_ids, sampling)
        self.log.decoded_tokens += len(generation.token_ids)
        if turn == 0 and self.search_first is not None:
            text = self.engine.tokenizer.decode(list(prompt_ids))
            scripted = next(ids for question, ids in self.search_first.items() if f"Question: {question}" in text)
            return Generation(scripted, [0.0] * len(scripted), "stop")
        return generation


def search_turns(tokenizer: Any, inputs: Sequence[EpisodeInput]) -> dict[str, list[int]]:
    return {
        item.question: tokenizer.encode(f"<search> {item.question} </search>", add_special_tokens=False)
        for item in inputs
    }


# ---------------------------------------------------------------------------------------------- measurements


def spread(values: Sequence[float], digits: int = 2) -> str:
    """Median and range of repeated runs, e.g. ``12.3 (11.9-12.8)``."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


async def play(
    env_of: Callable[[TurnRecorder], AgentEnv],
    engine: TransformersEngine,
    inputs: list[EpisodeInput],
    concurrency: int,
    search_first: dict[str, list[int]] | None,
) -> tuple[dict[str, float], TurnLog]:
    engine.clear_cache()
    log = TurnLog()
    env = env_of(TurnRecorder(engine, log, search_first))
    stats_before = replace(engine.prefill_stats)
    busy_before = engine.batch_stats.busy_s
    batches_before, requests_before = engine.batch_stats.batches, engine.batch_stats.requests
    runner = RolloutRunner(env, max_concurrency=concurrency)
    trajectories = await runner.run(inputs)
    await close_env(env)
    wall = runner.last_duration_s
    stats = engine.prefill_stats
    busy = engine.batch_stats.busy_s - busy_before
    requests = engine.batch_stats.requests - requests_before
    summary = summarize_rollouts(trajectories)
    row = {
        "episodes": float(len(trajectories)),
        "wall_s": wall,
        "episodes_per_s": len(trajectories) / wall,
        "policy_tokens_per_s": log.decoded_tokens / wall,
        "mean_batch": requests / max(engine.batch_stats.batches - batches_before, 1),
        "prompt_tokens": stats.prompt_tokens - stats_before.prompt_tokens,
        "prefilled_tokens": stats.prefilled_tokens - stats_before.prefilled_tokens,
        "prefill_s": stats.prefill_s - stats_before.prefill_s,
        "engine_s": busy,
        "overhead": (wall - busy) / busy if busy else float("nan"),
        "turns": statistics.fmean(trajectory.num_turns for trajectory in trajectories),
        "searches": summary["rollout/searches"],
    }
    return row, log


def generate_baseline(model: Any, tokenizer: Any, prompts: list[list[int]], new_tokens: int) -> float:
    """Seconds for transformers' own batched greedy ``generate`` of exactly ``new_tokens`` per prompt."""
    import torch

    width = max(len(prompt) for prompt in prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    device = next(model.parameters()).device
    started = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=pad,
        )
    seconds = time.perf_counter() - started
    assert out.shape[1] == width + new_tokens
    return seconds


def engine_one_turn(engine: TransformersEngine, prompts: list[list[int]], new_tokens: int) -> float:
    """Seconds for the engine to decode exactly ``new_tokens`` per prompt (no stop strings, end tokens ignored)."""
    stops = engine.stop_token_ids
    engine.stop_token_ids = frozenset()  # as min_new_tokens does for generate: same lengths on both sides
    try:
        engine.clear_cache()
        started = time.perf_counter()
        generations = engine.generate_batch(prompts, SamplingParams(new_tokens, temperature=0.0, stop=()))
        seconds = time.perf_counter() - started
    finally:
        engine.stop_token_ids = stops
    assert all(len(generation.token_ids) == new_tokens for generation in generations)
    return seconds


def replay_turns(engine: TransformersEngine, log: TurnLog, cache: bool) -> list[dict[str, float]]:
    """Each turn's requests as one batch of one new token each: prompt tokens, tokens prefilled, prefill time."""
    engine.clear_cache()
    rows = []
    turns = max(len(prompts) for prompts in log.prompts.values())
    one = SamplingParams(1, temperature=0.0, stop=())
    for turn in range(turns):
        prompts = [requests[turn] for requests in log.prompts.values() if len(requests) > turn]
        if not cache:
            engine.clear_cache()
        engine.generate_batch(prompts, one)
        record = engine.batch_log[-1]
        rows.append(
            {
                "turn": turn + 1,
                "episodes": len(prompts),
                "context": record.prompt_tokens / len(prompts),
                "prefilled": record.prefilled_tokens / len(prompts),
                "prefill_s": record.prefill_s,
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------- data and servers


def hotpotqa(episodes: int, scratch: Path) -> tuple[list[EpisodeInput], Path]:
    """The first ``episodes`` questions of the HotpotQA sample and a BM25 index over their context passages."""
    from data_prep.benchmarks import prepare_benchmark
    from data_prep.samples import sample_file
    from retriever_server.corpus import write_wiki18_jsonl
    from retriever_server.index_dir import build_index

    prepared = prepare_benchmark("hotpotqa", sample_file("hotpotqa/hotpotqa_distractor_dev300.jsonl"), split="dev")
    examples = prepared.examples[:episodes]
    write_wiki18_jsonl(prepared.corpus, scratch / "corpus.jsonl")
    build_index(scratch / "corpus.jsonl", "bm25", scratch / "index", progress=False)
    inputs = [EpisodeInput(example.question, tuple(example.golden_answers), example.id) for example in examples]
    return inputs, scratch / "index"


@contextmanager
def retriever_server(index: Path) -> Iterator[str]:
    """``expandsearch serve-retriever`` over ``index`` on a free port, as a user runs it."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    script = Path(sys.executable).parent / "expandsearch"
    command = [str(script), "serve-retriever", "--index", str(index), "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"serve-retriever did not come up on {url} (exit code {process.poll()})")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    args = parse_args()
    import torch

    torch.set_num_threads(args.threads)
    data = args.data or ("hotpotqa" if args.policy else "world")
    if data == "world":
        asyncio.run(world_main(args))
        return
    from agent_env.models import load_causal_lm

    model, tokenizer = load_causal_lm(args.policy or "smollm2")
    cached = TransformersEngine(model, tokenizer, max_batch_size=max(args.episodes, 1))
    plain = TransformersEngine(model, tokenizer, max_batch_size=max(args.episodes, 1), prefix_cache=False)
    config = EpisodeConfig(
        max_turn_tokens=args.turn_tokens,
        max_turns=args.max_turns,
        max_observation_tokens=args.observation_tokens,
        temperature=args.temperature,
    )
    with tempfile.TemporaryDirectory() as scratch:
        inputs, index = hotpotqa(args.episodes, Path(scratch))
        with retriever_server(index) as url:
            squeezer = make_squeezer(args.squeezer)

            def env_of(policy: TurnRecorder) -> AgentEnv:
                return AgentEnv(policy, tokenizer, HttpSearch.from_url(url), squeezer, config)

            asyncio.run(real_main(args, model, tokenizer, cached, plain, inputs, env_of))


async def real_main(
    args: argparse.Namespace,
    model: Any,
    tokenizer: Any,
    cached: TransformersEngine,
    plain: TransformersEngine,
    inputs: list[EpisodeInput],
    env_of: Callable[[TurnRecorder], AgentEnv],
) -> None:
    search_first = search_turns(tokenizer, inputs) if args.search_first else None
    await play(env_of, cached, inputs[:2], 2, search_first)  # warm-up: first forward passes, HTTP connections
    configurations = [("micro-batched", inputs, len(inputs))]
    if args.sequential_episodes:
        configurations.append(("one at a time", inputs[: args.sequential_episodes], 1))
    results: dict[str, list[dict[str, float]]] = defaultdict(list)
    logs: dict[str, TurnLog] = {}
    for _ in range(args.repeats):
        for mode, episodes, concurrency in configurations:
            for name, engine in (("on", cached), ("off", plain)):
                row, log = await play(env_of, engine, episodes, concurrency, search_first)
                results[f"{mode} | cache {name}"].append(row)
                logs[f"{mode} | cache {name}"] = log
    first_turn = [prompts[0] for prompts in logs["micro-batched | cache on"].prompts.values()]
    baseline = [generate_baseline(model, tokenizer, first_turn, args.turn_tokens) for _ in range(args.repeats)]
    ours = [engine_one_turn(cached, first_turn, args.turn_tokens) for _ in range(args.repeats)]
    replays = {
        cache: [replay_turns(engine, logs["micro-batched | cache on"], cache) for _ in range(args.repeats)]
        for cache, engine in ((True, cached), (False, plain))
    }
    print_real(args, results, first_turn, baseline, ours, replays)


def print_real(
    args: argparse.Namespace,
    results: dict[str, list[dict[str, float]]],
    first_turn: list[list[int]],
    baseline: list[float],
    ours: list[float],
    replays: dict[bool, list[list[dict[str, float]]]],
) -> None:
    tokens = len(first_turn) * args.turn_tokens
    mean_prompt = sum(map(len, first_turn)) / len(first_turn)
    print(f"policy={args.policy or 'smollm2'} episodes={args.episodes} max_turns={args.max_turns} "
          f"turn_tokens={args.turn_tokens} search_first={args.search_first} threads={args.threads} "
          f"repeats={args.repeats} (median (min-max))")  # fmt: skip
    print(f"\n1. one turn: {len(first_turn)} prompts of {mean_prompt:.0f} tokens, {args.turn_tokens} new tokens each")
    print(f"   model.generate: {spread([tokens / s for s in baseline], 0)} tok/s")
    print(f"   engine:         {spread([tokens / s for s in ours], 0)} tok/s")
    ratios = [b / o for b in baseline for o in ours]
    print(f"   engine / generate: {spread(ratios)}x")
    print("\n2. rollouts")
    print("| mode | episodes | cache | wall s | episodes/s | policy tok/s | mean batch | prompt tok | prefilled tok |"
          " prefill s | turns | searches |")  # fmt: skip
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for key, rows in results.items():
        mode, cache = key.split(" | ")
        cells = [spread([row[name] for row in rows], digits) for name, digits in (
            ("wall_s", 1), ("episodes_per_s", 2), ("policy_tokens_per_s", 0), ("mean_batch", 1),
            ("prompt_tokens", 0), ("prefilled_tokens", 0), ("prefill_s", 1), ("turns", 2), ("searches", 2),
        )]  # fmt: skip
        first = f"| {mode} | {int(rows[0]['episodes'])} | {cache.removeprefix('cache ')} | "
        print(first + " | ".join(cells) + " |")
    print("\n3. per turn (the micro-batched rollout's requests replayed, one batch per turn, 1 new token each)")
    print("| turn | episodes | mean context tok | prefilled/episode (on) | prefill s (on) | prefilled/episode (off) |"
          " prefill s (off) |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for turn, on_row in enumerate(replays[True][0]):
        on = [run[turn] for run in replays[True]]
        off = [run[turn] for run in replays[False]]
        print(f"| {on_row['turn']} | {on_row['episodes']} | {on_row['context']:.0f} | {on_row['prefilled']:.0f} | "
              f"{spread([r['prefill_s'] for r in on])} | {off[0]['prefilled']:.0f} | "
              f"{spread([r['prefill_s'] for r in off])} |")  # fmt: skip


# ---------------------------------------------------------------------------------------------- synthetic world


async def world_main(args: argparse.Namespace) -> None:
    from agent_env.tiny_model import save_tiny_policy
    from data_prep.synthetic import WORLD_SIZES, generate_world
    from retriever_server.bm25 import BM25Index
    from retriever_server.server import ServerThread, create_app

    world = generate_world(WORLD_SIZES[args.size])
    index = BM25Index.build(world.passages)
    index.search("warm up numba")
    inputs = [EpisodeInput.from_mapping(vars(example)) for example in world.questions["test"][: args.episodes]]
    with tempfile.TemporaryDirectory() as scratch:
        policy = args.policy
        if policy is None:
            texts = [f"{passage.title}\n{passage.text}" for passage in world.passages]
            texts += [example.question for example in world.questions["train"]] + [build_prompt("question")]
            policy = str(save_tiny_policy(Path(scratch) / "policy", texts, vocab_size=4096))
        engine = TransformersEngine.from_pretrained(policy, max_batch_size=max(args.episodes, 1))
        config = EpisodeConfig(max_turn_tokens=args.turn_tokens, max_turns=args.max_turns)
        config = replace(config, temperature=args.temperature)
        with ServerThread(create_app(index)) as server:
            squeezer = make_squeezer(args.squeezer)

            def env_of(recorder: TurnRecorder) -> AgentEnv:
                return AgentEnv(recorder, engine.tokenizer, HttpSearch.from_url(server.url), squeezer, config)

            await play(env_of, engine, inputs[:4], 4, None)
            rows = {"micro-batched": (await play(env_of, engine, inputs, len(inputs), None))[0]}
            if args.sequential_episodes:
                rows["one at a time"] = (await play(env_of, engine, inputs, 1, None))[0]
    print(f"policy={args.policy or 'tiny random Qwen2'} squeezer={args.squeezer} episodes={args.episodes}")
    print(f"{'mode':<14} {'wall s':>7} {'ep/s':>7} {'tok/s':>8} {'batch':>6} {'engine s':>9} {'overhead':>9}")
    for mode, row in rows.items():
        print(
            f"{mode:<14} {row['wall_s']:7.2f} {row['episodes_per_s']:7.2f} {row['policy_tokens_per_s']:8.0f} "
            f"{row['mean_batch']:6.1f} {row['engine_s']:9.2f} {row['overhead']:9.1%}"
        )


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
