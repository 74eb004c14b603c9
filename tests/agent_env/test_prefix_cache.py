"""The engine's cross-turn prefix cache: with it, every request gets what it gets without it, for less prefill.

A wide random-weight tiny Qwen2 (its output depends on the whole context, so a wrong position, a mask slot off by
one or a stale KV changes the tokens), engines with the cache on and off side by side, and real multi-turn
episodes against a real retriever server.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from agent_env.engine import Generation, SamplingParams, TransformersEngine
from agent_env.episode import AgentEnv, EpisodeConfig, Trajectory
from agent_env.models import load_tokenizer
from agent_env.prefix_cache import PrefixCache
from agent_env.rollout import EpisodeInput, RolloutRunner
from agent_env.search import HttpSearch
from agent_env.squeezers import NoSqueezer
from agent_env.tiny_model import TinyQwen2Config, build_tiny_qwen2
from data_prep.synthetic import World

from .conftest import ScriptThenModel

CONTEXT = 512
GREEDY = SamplingParams(max_new_tokens=10, temperature=0.0, stop=())
TEXTS = (
    "x",
    "Who is",
    "Where was the famous painter of the old city born, and when?",
    "<|im_start|>user\nWhich river flows through the capital?<|im_end|>\n<|im_start|>assistant\n<think>",
    "The museum of the northern province holds paintings, maps and letters. " * 4,
)
OBSERVATIONS = (
    "<information>Doc 1 (Title: River) The river is long.</information>",
    "<information>none</information>",
    "<information>Doc 1 (Title: Painter) The painter was born in the old city in 1790. Doc 2 (Title: City) "
    "The city lies on the river.</information>",
    "ok",
    "<information>Doc 1 (Title: Museum) It opened in 1900.</information>",
)


@pytest.fixture(scope="module")
def tokenizer(tiny_policy_dir: Path) -> Any:
    return load_tokenizer(tiny_policy_dir)


@pytest.fixture(scope="module")
def model(tokenizer: Any) -> Any:
    config = TinyQwen2Config(initializer_range=0.3, tie_word_embeddings=False, max_position_embeddings=CONTEXT)
    torch.set_num_threads(1)
    return build_tiny_qwen2(tokenizer, config, seed=0)


def encode(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    return [tokenizer.encode(text, add_special_tokens=False) for text in texts]


def concurrently(engine: TransformersEngine, prompts: Sequence[Sequence[int]], sampling: SamplingParams) -> list[Any]:
    async def main() -> list[Generation]:
        return await asyncio.gather(*(engine.generate(prompt, sampling) for prompt in prompts))

    return asyncio.run(main())


def assert_same(cached: Sequence[Generation], plain: Sequence[Generation]) -> None:
    for with_cache, without in zip(cached, plain, strict=True):
        assert with_cache.token_ids == without.token_ids
        assert with_cache.logprobs == pytest.approx(without.logprobs, abs=1e-4)
        assert with_cache.stop_reason == without.stop_reason


def play_turns(
    engine: TransformersEngine, prompts: list[list[int]], observations: list[list[int]], turns: int
) -> list[list[Generation]]:
    """``turns`` turns of concurrent pseudo-episodes: each turn's request is the last one + its tokens + an
    observation (a different length per episode, so cached lengths and suffixes differ within a batch)."""
    contexts = [list(prompt) for prompt in prompts]
    history = []
    for _ in range(turns):
        generations = concurrently(engine, contexts, GREEDY)
        history.append(generations)
        contexts = [c + g.token_ids + o for c, g, o in zip(contexts, generations, observations, strict=True)]
    return history


def recomputed_logprobs(model: Any, prompt: Sequence[int], generated: Sequence[int]) -> list[float]:
    ids = torch.tensor([list(prompt) + list(generated)])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    positions = range(len(prompt) - 1, len(prompt) + len(generated) - 1)
    return [log_probs[position, token].item() for position, token in zip(positions, generated, strict=True)]


def test_multi_turn_greedy_equals_no_cache_and_prefills_only_new_tokens(model: Any, tokenizer: Any) -> None:
    prompts, observations = encode(tokenizer, TEXTS), encode(tokenizer, OBSERVATIONS)
    cached = TransformersEngine(model, tokenizer)
    plain = TransformersEngine(model, tokenizer, prefix_cache=False)
    assert plain.prefix_cache is None
    with_cache, without = play_turns(cached, prompts, observations, 3), play_turns(plain, prompts, observations, 3)
    for turn_cached, turn_plain in zip(with_cache, without, strict=True):
        assert_same(turn_cached, turn_plain)
    # Turn 2 prefills each row's last sampled token and its observation; turn 3 the same again.
    new_tokens = sum(1 + len(observation) for observation in observations)
    turn_records = list(cached.batch_log)
    assert [record.rows for record in turn_records] == [len(prompts)] * 3
    assert turn_records[0].reused_tokens == 0
    assert turn_records[1].prefilled_tokens == turn_records[2].prefilled_tokens == new_tokens
    assert plain.prefill_stats.reused_tokens == 0
    assert cached.prefill_stats.prompt_tokens == plain.prefill_stats.prompt_tokens
    assert len(cached.prefix_cache or ()) == len(prompts)  # one entry per episode: each turn supersedes the last


def test_cached_logprobs_equal_a_full_forward_recompute(model: Any, tokenizer: Any) -> None:
    prompts, observations = encode(tokenizer, TEXTS), encode(tokenizer, OBSERVATIONS)
    engine = TransformersEngine(model, tokenizer)
    first = concurrently(engine, prompts, GREEDY)
    contexts = [p + g.token_ids + o for p, g, o in zip(prompts, first, observations, strict=True)]
    sampling = SamplingParams(max_new_tokens=8, temperature=1.3, top_p=0.9, stop=(), seed=7)
    second = concurrently(engine, contexts, sampling)
    assert engine.batch_log[-1].reused_tokens > 0
    for context, generation in zip(contexts, second, strict=True):
        assert generation.logprobs == pytest.approx(recomputed_logprobs(model, context, generation.token_ids), abs=1e-4)


def test_a_batch_mixing_hits_partial_hits_and_misses_stays_exact(model: Any, tokenizer: Any) -> None:
    prompts, observations = encode(tokenizer, TEXTS), encode(tokenizer, OBSERVATIONS)
    engine = TransformersEngine(model, tokenizer)
    first = concurrently(engine, prompts[:3], GREEDY)
    extended = [p + g.token_ids + o for p, g, o in zip(prompts[:3], first, observations[:3], strict=True)]
    diverging = prompts[2][:5] + encode(tokenizer, ["something else entirely"])[0]  # shares 5 tokens only
    unrelated = prompts[4]  # extends nothing cached
    batch = [*extended, diverging, unrelated]
    got = concurrently(engine, batch, GREEDY)
    reused = engine.batch_log[-1].reused_tokens
    expected_reuse = sum(len(p) + len(g.token_ids) - 1 for p, g in zip(prompts[:3], first, strict=True)) + 5
    assert reused == expected_reuse
    assert_same(
        got, [TransformersEngine(model, tokenizer, prefix_cache=False).generate_batch([p], GREEDY)[0] for p in batch]
    )


def test_eviction_keeps_the_budget_and_the_results(model: Any, tokenizer: Any) -> None:
    prompts, observations = encode(tokenizer, TEXTS), encode(tokenizer, OBSERVATIONS)
    probe = TransformersEngine(model, tokenizer)
    probe.generate_batch([prompts[4]], GREEDY)
    assert probe.prefix_cache is not None
    one_long_entry = probe.prefix_cache.nbytes
    engine = TransformersEngine(model, tokenizer, prefix_cache_bytes=one_long_entry * 3 // 2)
    plain = TransformersEngine(model, tokenizer, prefix_cache=False)
    assert_same(play_turns(engine, prompts, observations, 3)[-1], play_turns(plain, prompts, observations, 3)[-1])
    assert engine.prefix_cache is not None
    assert engine.prefix_cache.stats.evicted > 0
    assert engine.prefix_cache.nbytes <= engine.prefix_cache.max_bytes
    assert 0 < engine.prefill_stats.reused_tokens < probe_reuse_of_full_cache(model, tokenizer, prompts, observations)


def probe_reuse_of_full_cache(
    model: Any, tokenizer: Any, prompts: list[list[int]], observations: list[list[int]]
) -> int:
    engine = TransformersEngine(model, tokenizer)
    play_turns(engine, prompts, observations, 3)
    return engine.prefill_stats.reused_tokens


def test_stale_kv_is_dropped_when_weights_change_in_place(model: Any, tokenizer: Any) -> None:
    prompts, observations = encode(tokenizer, TEXTS), encode(tokenizer, OBSERVATIONS)
    changed = copy.deepcopy(model)
    engine = TransformersEngine(changed, tokenizer)
    first = concurrently(engine, prompts, GREEDY)
    contexts = [p + g.token_ids + o for p, g, o in zip(prompts, first, observations, strict=True)]
    with torch.no_grad():  # what an optimizer step does: in place, no new tensors
        for parameter in changed.parameters():
            parameter.mul_(1.05)
    after = concurrently(engine, contexts, GREEDY)
    assert engine.batch_log[-1].reused_tokens == 0  # the stale entries were not used
    assert engine.prefix_cache is not None
    assert engine.prefix_cache.stats.clears == 1
    assert_same(after, TransformersEngine(changed, tokenizer, prefix_cache=False).generate_batch(contexts, GREEDY))
    assert after[0].token_ids != concurrently(TransformersEngine(model, tokenizer), contexts[:1], GREEDY)[0].token_ids


def test_clear_cache_empties_it(model: Any, tokenizer: Any) -> None:
    engine = TransformersEngine(model, tokenizer)
    prompt = encode(tokenizer, TEXTS[2:3])[0]
    first = engine.generate_batch([prompt], GREEDY)[0]
    engine.clear_cache()
    assert engine.prefix_cache is not None
    assert len(engine.prefix_cache) == 0
    engine.generate_batch([prompt + first.token_ids], GREEDY)
    assert engine.batch_log[-1].reused_tokens == 0


def test_a_cancelled_request_leaves_the_cache_consistent(model: Any, tokenizer: Any) -> None:
    prompts, observations = encode(tokenizer, TEXTS), encode(tokenizer, OBSERVATIONS)
    engine = TransformersEngine(model, tokenizer)
    long = SamplingParams(max_new_tokens=40, temperature=0.0, stop=())

    async def main() -> tuple[list[Generation], list[Generation]]:
        doomed = asyncio.ensure_future(engine.generate(prompts[3], long))
        others = asyncio.gather(*(engine.generate(p, GREEDY) for p in prompts[:3]))
        await asyncio.sleep(0.01)  # the batch is decoding in its thread
        doomed.cancel()
        first = await others
        with pytest.raises(asyncio.CancelledError):
            await doomed
        contexts = [p + g.token_ids + o for p, g, o in zip(prompts[:3], first, observations[:3], strict=True)]
        contexts.append(prompts[3] + observations[3])  # the cancelled episode's prompt, taken up again
        return first, await asyncio.gather(*(engine.generate(c, GREEDY) for c in contexts))

    first, second = asyncio.run(main())
    plain = TransformersEngine(model, tokenizer, prefix_cache=False)
    contexts = [p + g.token_ids + o for p, g, o in zip(prompts[:3], first, observations[:3], strict=True)]
    assert_same(second, plain.generate_batch([*contexts, prompts[3] + observations[3]], GREEDY))


def test_a_sliding_window_model_runs_without_the_prefix_cache(tokenizer: Any) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, use_sliding_window=True, sliding_window=8, max_window_layers=0,
        max_position_embeddings=CONTEXT,
    )  # fmt: skip
    engine = TransformersEngine(Qwen2ForCausalLM(config).eval(), tokenizer)
    assert engine.prefix_cache is None  # a window keeps only its last 8 positions: no whole-prefix KV to copy
    assert len(engine.generate_batch([encode(tokenizer, TEXTS[2:3])[0]], GREEDY)[0].token_ids) == 10


# ---------------------------------------------------------------------------------------------- real episodes


async def rollout(env: AgentEnv, inputs: list[EpisodeInput]) -> list[Trajectory]:
    try:
        return await RolloutRunner(env).run(inputs, samples_per_input=2, seed=3)
    finally:
        await env.search.aclose()


def test_concurrent_episodes_are_identical_with_and_without_the_cache(
    model: Any, tokenizer: Any, world_server: str, tiny_world: World
) -> None:
    # A scripted search first (a real observation from the server), then the random model for three turns: the
    # model's turns 2-4 continue contexts that the cache holds, at different lengths per episode.
    inputs = [
        EpisodeInput(example.question, tuple(example.golden_answers)) for example in tiny_world.questions["test"][:6]
    ]
    first_turn = "<think> look it up </think>\n<search> capital | river </search>"
    config = EpisodeConfig(max_turns=4, max_turn_tokens=12, temperature=1.0)
    results = {}
    for cache in (True, False):
        engine = TransformersEngine(model, tokenizer, prefix_cache=cache)
        policy = ScriptThenModel(tokenizer, [first_turn], engine)
        env = AgentEnv(policy, tokenizer, HttpSearch.from_url(world_server), NoSqueezer(), config)
        results[cache] = (asyncio.run(rollout(env, inputs)), engine)
    (cached, engine), (plain, _) = results[True], results[False]
    assert engine.prefill_stats.reused_tokens > engine.prefill_stats.prefilled_tokens
    assert max(trajectory.num_turns for trajectory in cached) >= 3
    for a, b in zip(cached, plain, strict=True):
        assert a.response_ids == b.response_ids
        assert a.response_mask == b.response_mask
        assert np.allclose(a.response_logprobs, b.response_logprobs, atol=1e-4)


# ---------------------------------------------------------------------------------------------- the store itself


def kv(length: int, fill: float = 0.0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    return [torch.full((2, length, 4), fill)], [torch.full((2, length, 4), fill)]


def test_store_keeps_one_entry_per_growing_sequence_and_evicts_least_recently_used() -> None:
    per_token = 2 * 2 * 4 * 4  # keys and values, 2 heads x 4 dims of float32
    store = PrefixCache(max_bytes=per_token * 10)
    store.store([1, 2, 3], *kv(3))
    store.store([1, 2, 3, 4, 5], *kv(5))  # extends the first: the first goes
    assert len(store) == 1
    assert store.nbytes == 5 * per_token
    store.store([1, 2], *kv(2))  # already inside the longer entry: nothing new
    assert len(store) == 1
    store.store([7, 8, 9], *kv(3))
    assert store.lookup([1, 2, 3, 4, 5, 6], limit=5)[1] == 5  # touch the long entry: [7, 8, 9] is now the oldest
    store.store([4, 4, 4], *kv(3))  # 11 tokens > 10: the least recently used goes
    assert store.stats.evicted == 1
    assert store.lookup([7, 8, 9, 1], limit=3) == (None, 0)
    entry, shared = store.lookup([1, 2, 9], limit=10)
    assert entry is not None
    assert shared == 2
    assert store.lookup([1, 2, 3, 4, 5, 6], limit=3)[1] == 3  # the limit keeps the request's last token to feed
    store.store(list(range(20)), *kv(20))  # larger than the whole budget: not stored
    assert store.nbytes <= store.max_bytes
    assert store.lookup(list(range(20)), limit=20)[1] == 0
