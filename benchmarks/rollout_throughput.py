"""Episodes per second with and without micro-batching, and the environment's overhead over pure generation.

Plays the same held-out questions of a synthetic world with a policy (default: a tiny random-weight Qwen2; pass
``--policy DIR`` for a warm-started one that really searches) against a real retriever server on a free port,
with the chosen squeezer, twice: one episode at a time (``max_concurrency=1``) and all at once (micro-batched
generation, retrieval and squeezing). For the concurrent run it also reports the environment's overhead:

    overhead = (rollout wall time - time the engine spent decoding) / time the engine spent decoding

i.e. the time spent on anything but batched generation of the tokens the episodes produced (retrieval,
squeezing, tokenizing, parsing, and the engine idling while it waited for them) relative to that generation.

    .venv/bin/python benchmarks/rollout_throughput.py --episodes 64 --squeezer extractive
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from agent_env.assembly import close_env
from agent_env.engine import TransformersEngine
from agent_env.episode import AgentEnv, EpisodeConfig
from agent_env.protocol import build_prompt
from agent_env.rollout import EpisodeInput, RolloutRunner, summarize_rollouts
from agent_env.search import HttpSearch
from agent_env.squeezers import make_squeezer
from agent_env.tiny_model import save_tiny_policy
from data_prep.synthetic import WORLD_SIZES, generate_world
from retriever_server.bm25 import BM25Index
from retriever_server.server import ServerThread, create_app


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=64, help="episodes per mode (default 64)")
    parser.add_argument("--policy", help="policy model dir (default: build a tiny random-weight Qwen2)")
    parser.add_argument("--squeezer", default="extractive", help="squeezer spec (default extractive)")
    parser.add_argument("--size", default="small", help="world size (default small)")
    parser.add_argument("--turn-tokens", type=int, default=64, help="max tokens per policy turn (default 64)")
    parser.add_argument("--max-turns", type=int, default=4, help="turns per episode (default 4)")
    parser.add_argument("--temperature", type=float, default=1.0, help="policy temperature (default 1)")
    parser.add_argument("--skip-sequential", action="store_true", help="only run the micro-batched mode")
    return parser.parse_args()


def tiny_random_policy(world: Any, out: Path) -> str:
    texts = [f"{passage.title}\n{passage.text}" for passage in world.passages]
    texts += [example.question for example in world.questions["train"]] + [build_prompt("question")]
    return str(save_tiny_policy(out, texts, vocab_size=4096))


async def play(env: AgentEnv, inputs: list[EpisodeInput], concurrency: int) -> dict[str, float]:
    engine = env.engine
    assert isinstance(engine, TransformersEngine)
    busy_before, batches_before = engine.batch_stats.busy_s, engine.batch_stats.batches
    requests_before = engine.batch_stats.requests
    runner = RolloutRunner(env, max_concurrency=concurrency)
    trajectories = await runner.run(inputs)
    summary = summarize_rollouts(trajectories)
    wall = runner.last_duration_s
    busy = engine.batch_stats.busy_s - busy_before
    batches = engine.batch_stats.batches - batches_before
    policy_tokens = sum(sum(trajectory.response_mask) for trajectory in trajectories)
    return {
        "wall_s": wall,
        "episodes_per_s": len(trajectories) / wall,
        "policy_tokens_per_s": policy_tokens / wall,
        "mean_batch": (engine.batch_stats.requests - requests_before) / max(batches, 1),
        "engine_busy_s": busy,
        "overhead": (wall - busy) / busy if busy else float("nan"),
        "searches": summary["rollout/searches"],
        "variants": summary.get("rollout/variants_per_search", 0.0),
        "fallbacks": summary["rollout/squeezer_fallbacks"],
    }


async def main() -> None:
    args = parse_args()
    world = generate_world(WORLD_SIZES[args.size])
    index = BM25Index.build(world.passages)
    index.search("warm up numba")
    inputs = [EpisodeInput.from_mapping(vars(example)) for example in world.questions["test"][: args.episodes]]
    with tempfile.TemporaryDirectory() as scratch:
        policy = args.policy or tiny_random_policy(world, Path(scratch) / "policy")
        engine = TransformersEngine.from_pretrained(policy, max_batch_size=max(args.episodes, 1))
        config = EpisodeConfig(max_turn_tokens=args.turn_tokens, max_turns=args.max_turns)
        config = replace(config, temperature=args.temperature)
        with ServerThread(create_app(index)) as server:
            env = AgentEnv(
                engine, engine.tokenizer, HttpSearch.from_url(server.url), make_squeezer(args.squeezer), config
            )
            await play(env, inputs[:4], 4)  # warm-up: first forward passes and HTTP connections
            rows = {"micro-batched": await play(env, inputs, len(inputs))}
            if not args.skip_sequential:
                rows["one at a time"] = await play(env, inputs, 1)
            await close_env(env)
    print_table(rows, args, policy)


def print_table(rows: dict[str, dict[str, float]], args: argparse.Namespace, policy: str) -> None:
    print(f"policy={policy if args.policy else 'tiny random Qwen2'} squeezer={args.squeezer} episodes={args.episodes}")
    header = f"{'mode':<14} {'wall s':>7} {'ep/s':>7} {'tok/s':>8} {'batch':>6} {'engine s':>9} {'overhead':>9}"
    print(header + f" {'searches':>9} {'variants':>9} {'fallbacks':>9}")
    for mode, row in rows.items():
        print(
            f"{mode:<14} {row['wall_s']:7.2f} {row['episodes_per_s']:7.2f} {row['policy_tokens_per_s']:8.0f} "
            f"{row['mean_batch']:6.1f} {row['engine_busy_s']:9.2f} {row['overhead']:9.1%} "
            f"{row['searches']:9.2f} {row['variants']:9.2f} {row['fallbacks']:9.2f}"
        )
    if "one at a time" in rows:
        speedup = rows["micro-batched"]["episodes_per_s"] / rows["one at a time"]["episodes_per_s"]
        print(f"micro-batching speed-up: {speedup:.1f}x episodes/s")


if __name__ == "__main__":
    asyncio.run(main())
