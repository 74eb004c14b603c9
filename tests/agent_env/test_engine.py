"""TransformersEngine on a real (tiny, random-weight) Qwen2: batching must not change what each request gets."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from agent_env.engine import Generation, LLMEngine, SamplingParams, TransformersEngine, _top_p_filter
from agent_env.models import load_tokenizer
from agent_env.protocol import STOP_STRINGS
from agent_env.tiny_model import TinyQwen2Config, build_tiny_qwen2

CONTEXT = 256
GREEDY = SamplingParams(max_new_tokens=12, temperature=0.0, stop=())

TEXTS = (
    "x",
    "Who is",
    "Where was the famous painter of the old city born, and when?",
    "<|im_start|>user\nWhich river flows through the capital?<|im_end|>\n<|im_start|>assistant\n<think>",
    "The museum of the northern province holds paintings, maps and letters. " * 5,
)


@pytest.fixture(scope="module")
def tokenizer(tiny_policy_dir: Path) -> Any:
    return load_tokenizer(tiny_policy_dir)


@pytest.fixture(scope="module")
def model(tokenizer: Any) -> Any:
    # Wide random weights and an untied head: output that varies with the context, unlike the default tiny policy,
    # which mostly repeats its last token and would hide left-padding or cache bugs.
    config = TinyQwen2Config(initializer_range=0.3, tie_word_embeddings=False, max_position_embeddings=CONTEXT)
    return build_tiny_qwen2(tokenizer, config, seed=0)


@pytest.fixture
def engine(model: Any, tokenizer: Any) -> TransformersEngine:
    return TransformersEngine(model, tokenizer)


@pytest.fixture(scope="module")
def prompts(tokenizer: Any) -> list[list[int]]:
    encoded = [tokenizer.encode(text, add_special_tokens=False) for text in TEXTS]
    assert len({len(ids) for ids in encoded}) == len(encoded)  # all lengths differ: real left padding
    return encoded


def generate_concurrently(
    engine: TransformersEngine, prompts: Sequence[Sequence[int]], sampling: SamplingParams | Sequence[SamplingParams]
) -> list[Generation]:
    """Submit every prompt at once from its own coroutine, as concurrent episodes do."""
    params = [sampling] * len(prompts) if isinstance(sampling, SamplingParams) else list(sampling)

    async def main() -> list[Generation]:
        return await asyncio.gather(*(engine.generate(p, s) for p, s in zip(prompts, params, strict=True)))

    return asyncio.run(main())


def generate_alone(engine: TransformersEngine, prompt: Sequence[int], sampling: SamplingParams) -> Generation:
    return engine.generate_batch([prompt], sampling)[0]


def recomputed_logprobs(model: Any, prompt: Sequence[int], generated: Sequence[int]) -> list[float]:
    """Log-probs of ``generated`` from one unbatched, uncached forward pass over prompt + generated."""
    ids = torch.tensor([list(prompt) + list(generated)])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    positions = range(len(prompt) - 1, len(prompt) + len(generated) - 1)
    return [log_probs[position, token].item() for position, token in zip(positions, generated, strict=True)]


def find_stop_string(tokenizer: Any, token_ids: Sequence[int]) -> tuple[int, str]:
    """A stop string that spans two tokens of ``token_ids`` and first appears when token ``k`` is appended."""
    for k in range(2, len(token_ids)):
        before = tokenizer.decode(token_ids[:k])
        text = tokenizer.decode(token_ids[: k + 1])
        new = text[len(before) :]
        if not text.startswith(before) or not new.strip() or "\ufffd" in text[-len(new) - 3 :]:
            continue
        stop = before[-3:] + new[:2]  # ends inside token k, starts in an earlier token
        if stop not in before:
            return k, stop
    raise AssertionError(f"no usable stop string in {tokenizer.decode(token_ids)!r}")


def test_engine_satisfies_the_llm_engine_protocol(engine: TransformersEngine) -> None:
    assert isinstance(engine, LLMEngine)
    assert engine.max_context_tokens == CONTEXT


def test_greedy_matches_transformers_generate(engine: TransformersEngine, model: Any, prompts: list[list[int]]) -> None:
    prompt = prompts[2]
    expected = model.generate(
        torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0
    )[0, len(prompt) :].tolist()
    assert generate_alone(engine, prompt, GREEDY).token_ids == expected


def test_batched_greedy_equals_one_at_a_time(engine: TransformersEngine, prompts: list[list[int]]) -> None:
    batched = generate_concurrently(engine, prompts, GREEDY)
    assert engine.batch_stats.batch_sizes == [len(prompts)]
    for prompt, generation in zip(prompts, batched, strict=True):
        alone = generate_alone(engine, prompt, GREEDY)
        assert generation.token_ids == alone.token_ids
        assert generation.logprobs == pytest.approx(alone.logprobs, abs=1e-4)
        assert generation.stop_reason == "length"
        assert len(generation.token_ids) == len(generation.logprobs) == GREEDY.max_new_tokens
    assert len({tuple(g.token_ids) for g in batched}) == len(prompts)  # the model's output depends on the prompt


def test_logprobs_equal_a_full_forward_recompute(
    engine: TransformersEngine, model: Any, prompts: list[list[int]]
) -> None:
    # Sampled at temperature 1.5 with top-p: the returned log-probs are still the raw model's, not the sampler's.
    sampling = SamplingParams(max_new_tokens=10, temperature=1.5, top_p=0.9, stop=())
    for prompt, generation in zip(prompts, generate_concurrently(engine, prompts, sampling), strict=True):
        assert generation.logprobs == pytest.approx(recomputed_logprobs(model, prompt, generation.token_ids), abs=1e-4)
        assert all(logprob <= 0 for logprob in generation.logprobs)


def test_rows_finishing_early_leave_the_others_intact(engine: TransformersEngine, prompts: list[list[int]]) -> None:
    # Rows stop after 1, 3, 7, 12 and 20 tokens: the KV cache is shrunk four times while the rest decode on.
    lengths = [1, 3, 7, 12, 20]
    params = [SamplingParams(max_new_tokens=n, temperature=0.0, stop=()) for n in lengths]
    long_greedy = SamplingParams(max_new_tokens=20, temperature=0.0, stop=())
    for prompt, n, generation in zip(prompts, lengths, generate_concurrently(engine, prompts, params), strict=True):
        assert len(generation.token_ids) == n
        assert generation.stop_reason == "length"
        alone = generate_alone(engine, prompt, long_greedy)
        assert generation.token_ids == alone.token_ids[:n]
        assert generation.logprobs == pytest.approx(alone.logprobs[:n], abs=1e-4)


def test_per_request_stop_strings_in_one_batch(
    engine: TransformersEngine, tokenizer: Any, prompts: list[list[int]]
) -> None:
    long_greedy = SamplingParams(max_new_tokens=25, temperature=0.0, stop=())
    greedy = [generate_alone(engine, prompt, long_greedy).token_ids for prompt in prompts]
    stops = [find_stop_string(tokenizer, token_ids) for token_ids in greedy[:4]]
    params = [SamplingParams(max_new_tokens=25, temperature=0.0, stop=(stop, "\x00never\x00")) for _, stop in stops]
    params.append(long_greedy)  # the last row has no stop string and runs to its length
    results = generate_concurrently(engine, prompts, params)
    for (k, stop), token_ids, generation in zip(stops, greedy, results, strict=False):
        assert generation.stop_reason == "stop"
        assert generation.token_ids == token_ids[: k + 1]  # ends with the token completing the stop string
        assert stop in tokenizer.decode(generation.token_ids)
        assert stop not in tokenizer.decode(generation.token_ids[:-1])
    assert results[-1].token_ids == greedy[-1]
    assert results[-1].stop_reason == "length"


def test_a_single_string_stop_is_one_stop_string(
    engine: TransformersEngine, tokenizer: Any, prompts: list[list[int]]
) -> None:
    greedy = generate_alone(engine, prompts[3], SamplingParams(max_new_tokens=25, temperature=0.0, stop=()))
    k, stop = find_stop_string(tokenizer, greedy.token_ids)
    sampling = SamplingParams(max_new_tokens=25, temperature=0.0, stop=stop)  # type: ignore[arg-type]
    assert sampling.stop == (stop,)
    assert generate_alone(engine, prompts[3], sampling).token_ids == greedy.token_ids[: k + 1]


def test_end_of_turn_token_stops_with_eos(model: Any, tokenizer: Any, prompts: list[list[int]]) -> None:
    greedy = generate_alone(TransformersEngine(model, tokenizer), prompts[2], GREEDY).token_ids
    k = next(i for i in range(2, len(greedy)) if greedy[i] not in greedy[:i])
    expected = (greedy[: k + 1], "eos")

    extra = TransformersEngine(model, tokenizer, extra_stop_token_ids=[greedy[k]])
    result = generate_alone(extra, prompts[2], GREEDY)
    assert (result.token_ids, result.stop_reason) == expected
    assert len(result.logprobs) == k + 1  # the end-of-turn token is kept, with its log-prob

    # A model whose generation config lists several EOS ids (as Qwen2.5-Instruct's does) stops at any of them.
    multi_eos = copy.deepcopy(model)
    multi_eos.generation_config.eos_token_id = [tokenizer.eos_token_id, greedy[k]]
    result = generate_alone(TransformersEngine(multi_eos, tokenizer), prompts[2], GREEDY)
    assert (result.token_ids, result.stop_reason) == expected


def test_stop_token_ids_include_the_chatml_end_of_turn(engine: TransformersEngine, tokenizer: Any) -> None:
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in engine.stop_token_ids
    assert engine.pad_token_id == tokenizer.pad_token_id


def test_sampling_is_reproducible_for_a_seed_and_varies_across_seeds(
    model: Any, tokenizer: Any, prompts: list[list[int]]
) -> None:
    sampling = SamplingParams(max_new_tokens=10, temperature=1.0, stop=())

    def sample(seed: int) -> list[list[int]]:
        engine = TransformersEngine(model, tokenizer, seed=seed)
        return [g.token_ids for g in generate_concurrently(engine, prompts[:3], sampling)]

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)
    greedy = [generate_alone(TransformersEngine(model, tokenizer), p, GREEDY).token_ids[:10] for p in prompts[:3]]
    assert sample(7) != greedy


def test_a_seeded_request_samples_the_same_tokens_whatever_its_batch(
    model: Any, tokenizer: Any, prompts: list[list[int]]
) -> None:
    seeded = SamplingParams(max_new_tokens=10, temperature=1.0, stop=(), seed=11)
    unseeded = SamplingParams(max_new_tokens=10, temperature=1.0, stop=())
    alone = generate_alone(TransformersEngine(model, tokenizer, seed=1), prompts[0], seeded).token_ids
    # batched with unseeded rows of another engine seed, which draw from the shared generator in between
    mixed = generate_concurrently(TransformersEngine(model, tokenizer, seed=2), prompts[:4], [seeded] + [unseeded] * 3)
    assert mixed[0].token_ids == alone
    other_seed = SamplingParams(max_new_tokens=10, temperature=1.0, stop=(), seed=12)
    assert generate_alone(TransformersEngine(model, tokenizer), prompts[0], other_seed).token_ids != alone


def test_tiny_top_p_is_greedy(engine: TransformersEngine, prompts: list[list[int]]) -> None:
    nucleus_of_one = SamplingParams(max_new_tokens=12, temperature=1.0, top_p=1e-6, stop=())
    sampled = generate_concurrently(engine, prompts, nucleus_of_one)
    greedy = generate_concurrently(engine, prompts, GREEDY)
    assert [g.token_ids for g in sampled] == [g.token_ids for g in greedy]


def test_top_p_filter_keeps_the_smallest_nucleus() -> None:
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3]] * 4)
    top_p = torch.tensor([1.0, 0.81, 0.7, 0.5])
    kept = _top_p_filter(probs, top_p) > 0
    assert kept.tolist() == [
        [True, True, True, True],
        [True, True, False, True],  # 0.5 + 0.3 = 0.8 < 0.81: the third token is needed
        [False, True, False, True],
        [False, True, False, False],  # the top token alone reaches 0.5
    ]


def test_greedy_rows_mixed_with_sampled_rows(engine: TransformersEngine, prompts: list[list[int]]) -> None:
    sampled = SamplingParams(max_new_tokens=12, temperature=1.0, stop=())
    params = [GREEDY, sampled, GREEDY, sampled, GREEDY]
    results = generate_concurrently(engine, prompts, params)
    for index in (0, 2, 4):
        assert results[index].token_ids == generate_alone(engine, prompts[index], GREEDY).token_ids
    assert all(len(results[index].token_ids) == 12 for index in (1, 3))


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"max_new_tokens": 0}, ValueError),
        ({"max_new_tokens": 2.5}, TypeError),
        ({"temperature": -0.1}, ValueError),
        ({"temperature": float("nan")}, ValueError),
        ({"temperature": float("inf")}, ValueError),
        ({"top_p": 0.0}, ValueError),
        ({"top_p": 1.5}, ValueError),
        ({"top_p": float("nan")}, ValueError),
        ({"stop": ("</answer>", "")}, ValueError),
        ({"stop": ("</answer>", 3)}, ValueError),
    ],
)
def test_sampling_params_validation(options: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        SamplingParams(**options)


def test_sampling_params_defaults() -> None:
    sampling = SamplingParams(stop=["</answer>"])  # type: ignore[arg-type]
    assert sampling.stop == ("</answer>",)
    assert SamplingParams().stop == STOP_STRINGS
    assert SamplingParams(temperature=0).greedy
    assert not SamplingParams().greedy


def test_bad_prompts_fail_alone(engine: TransformersEngine, tokenizer: Any, prompts: list[list[int]]) -> None:
    too_long = [5] * CONTEXT
    out_of_vocab = [*prompts[1], len(tokenizer) + 10]
    batch = [prompts[0], [], too_long, out_of_vocab, [-1], prompts[2]]

    async def main() -> list[Generation | BaseException]:
        calls = (engine.generate(prompt, GREEDY) for prompt in batch)
        return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(main())
    for index, message in ((1, "empty"), (2, "context"), (3, "vocabulary"), (4, "vocabulary")):
        assert isinstance(results[index], ValueError)
        assert message in str(results[index])
    good = [results[0], results[5]]
    assert [g.token_ids for g in good] == [generate_alone(engine, prompts[i], GREEDY).token_ids for i in (0, 2)]  # type: ignore[union-attr]
    assert engine.batch_stats.batch_sizes == [2]


def test_generate_batch_rejects_bad_prompts(engine: TransformersEngine) -> None:
    with pytest.raises(ValueError, match="empty"):
        engine.generate_batch([[1, 2], []], GREEDY)
    assert engine.generate_batch([], GREEDY) == []


def test_max_new_tokens_is_clipped_to_the_context_left(engine: TransformersEngine) -> None:
    prompt = [7] * (CONTEXT - 3)
    sampling = SamplingParams(max_new_tokens=50, temperature=0.0, stop=())
    by_async = generate_concurrently(engine, [prompt], sampling)[0]
    by_sync = generate_alone(engine, prompt, sampling)
    for generation in (by_async, by_sync):
        assert len(generation.token_ids) == 3
        assert generation.stop_reason == "length"
    assert by_async.token_ids == by_sync.token_ids


def test_generate_batch_is_the_synchronous_form(engine: TransformersEngine, prompts: list[list[int]]) -> None:
    sync = engine.generate_batch(prompts, GREEDY)
    concurrent = generate_concurrently(engine, prompts, GREEDY)
    assert [g.token_ids for g in sync] == [g.token_ids for g in concurrent]
    for a, b in zip(sync, concurrent, strict=True):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)


def test_64_concurrent_requests_make_one_batch_of_64(engine: TransformersEngine, prompts: list[list[int]]) -> None:
    many = [prompts[i % len(prompts)] for i in range(64)]
    results = generate_concurrently(engine, many, SamplingParams(max_new_tokens=3, temperature=0.0, stop=()))
    assert engine.batch_stats.batch_sizes == [64]
    assert engine.batch_stats.largest_batch == 64
    for i, generation in enumerate(results):
        assert generation.token_ids == results[i % len(prompts)].token_ids


def test_engine_serves_successive_event_loops(engine: TransformersEngine, prompts: list[list[int]]) -> None:
    first = generate_concurrently(engine, prompts[:2], GREEDY)
    second = generate_concurrently(engine, prompts[:2], GREEDY)
    assert [g.token_ids for g in first] == [g.token_ids for g in second]

    async def close() -> None:
        await engine.aclose()

    asyncio.run(close())
    assert generate_concurrently(engine, prompts[:1], GREEDY)[0].token_ids == first[0].token_ids
