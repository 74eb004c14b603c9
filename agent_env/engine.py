"""The generation interface the episode driver speaks, and the transformers engine that serves it.

The driver never owns a model (docs/formats.md). It calls ``await engine.generate(prompt_ids, sampling)`` and gets
back ``Generation(token_ids, logprobs, stop_reason)``: tokens in, tokens out, the same shape as verl's agent-loop
``server_manager.generate``. Engines:

- :class:`TransformersEngine` (here): a transformers model behind an :class:`~agent_env.batching.AsyncBatcher`.
  Requests from concurrent episodes are coalesced into one left-padded batch decoded with a KV cache; each row
  keeps its own stop strings, max new tokens, temperature and top-p, and rows that finish leave the batch. A
  finished row's KV is kept (:mod:`agent_env.prefix_cache`), so an episode's next turn, whose ids extend this
  turn's, prefills only the new tokens (the sampled turn and the observation), not the whole context again.
- ``agent_env.vllm_engine`` (vLLM in-process) and ``agent_env.openai_compat`` (any OpenAI-compatible
  completions endpoint: vLLM, SGLang, or ``expandsearch serve-llm``, called with token ids).

Log-probs are those of the sampled tokens under the model itself (before temperature and top-p), which is what
vLLM returns by default and what PPO's importance ratio compares against.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import math
import operator
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol, runtime_checkable

from agent_env.batching import AsyncBatcher, BatchStats
from agent_env.prefix_cache import CacheEntry, PrefixCache
from agent_env.protocol import STOP_STRINGS

if TYPE_CHECKING:
    import torch

StopReason = Literal["stop", "eos", "length"]


def derive_seed(*parts: int) -> int:
    """A 56-bit seed from integers (a run seed, an episode index, a turn): distinct tuples give unrelated seeds."""
    digest = hashlib.blake2b("/".join(str(part) for part in parts).encode(), digest_size=7).digest()
    return int.from_bytes(digest, "little")


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one turn. ``temperature == 0`` means greedy decoding."""

    max_new_tokens: int = 500
    """Most tokens to generate (Search-R1: 500 per turn)."""
    temperature: float = 1.0
    """Softmax temperature; 0 picks the most likely token."""
    top_p: float = 1.0
    """Nucleus sampling: sample from the smallest set of tokens whose probability reaches top_p."""
    stop: tuple[str, ...] = STOP_STRINGS
    """Generation ends once the generated text contains one of these (the token that completes it is kept).
    A single string or a list is accepted and stored as a tuple."""
    seed: int | None = None
    """Seeds this request's own sampler, so its tokens do not depend on which other requests share its batch
    (as vLLM's per-request ``seed``); None draws from the engine's shared generator."""

    def __post_init__(self) -> None:
        # Checked here, at the caller, because a bad value inside a batch (a NaN temperature makes the sampler
        # raise) would fail every other request decoded with it.
        try:
            max_new_tokens = operator.index(self.max_new_tokens)
        except TypeError:
            raise TypeError(f"max_new_tokens must be an integer, got {self.max_new_tokens!r}") from None
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature must be finite and >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        # A bare string would otherwise be iterated as one-character stop strings.
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if any(not isinstance(text, str) or not text for text in stop):
            raise ValueError(f"stop strings must be non-empty strings, got {self.stop!r}")
        object.__setattr__(self, "max_new_tokens", max_new_tokens)
        object.__setattr__(self, "stop", stop)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class Generation(NamedTuple):
    """One generated turn: the sampled token ids, their log-probs and why generation ended."""

    token_ids: list[int]
    logprobs: list[float]
    stop_reason: StopReason


@runtime_checkable
class LLMEngine(Protocol):
    """What the episode driver needs from a policy: token-in/token-out generation and a context limit."""

    @property
    def max_context_tokens(self) -> int | None:
        """The model's context length (prompt + generation), or None when unknown."""
        ...

    async def generate(self, prompt_ids: Sequence[int], sampling: SamplingParams) -> Generation: ...


def check_prompt(prompt_ids: Sequence[int], max_context_tokens: int | None, vocab_size: int | None = None) -> None:
    """Reject a prompt no engine can continue: empty, already filling the whole context, or (when ``vocab_size``
    is given) holding an id outside the vocabulary, which would crash the embedding lookup of a whole batch."""
    if not prompt_ids:
        raise ValueError("prompt_ids is empty")
    if max_context_tokens is not None and len(prompt_ids) >= max_context_tokens:
        raise ValueError(f"prompt has {len(prompt_ids)} tokens; the model's context is {max_context_tokens}")
    if vocab_size is not None:
        bad = [token for token in prompt_ids if not 0 <= token < vocab_size]
        if bad:
            raise ValueError(f"prompt has token ids outside the vocabulary [0, {vocab_size}): {bad[:5]}")


@dataclass
class _Row:
    """One request inside a decoding batch."""

    prompt_ids: list[int]
    sampling: SamplingParams
    max_new_tokens: int
    token_ids: list[int]
    logprobs: list[float]
    stop_reason: StopReason | None = None
    generator: torch.Generator | None = None
    """The request's own sampler when it has a seed; else the engine's shared one is used."""
    cached: CacheEntry | None = None
    """The prefix-cache entry whose KV serves the first ``reused`` prompt tokens."""
    reused: int = 0

    @property
    def suffix(self) -> list[int]:
        """The prompt tokens this row prefills."""
        return self.prompt_ids[self.reused :]


DEFAULT_PREFIX_CACHE_BYTES = 1 << 30
"""The prefix cache's default budget: 1 GiB holds ~23k tokens of SmolLM2-135M's float32 KV (46 KB a token),
e.g. 32 episodes of 700 tokens."""


@dataclass
class PrefillStats:
    """What the engine prefilled and how long it took, summed over batches (for benchmarks and metrics)."""

    requests: int = 0
    prompt_tokens: int = 0
    """Tokens of all requests' prompts."""
    reused_tokens: int = 0
    """Prompt tokens whose KV came from the prefix cache."""
    prefilled_tokens: int = 0
    """Prompt tokens run through the model (``prompt_tokens - reused_tokens``)."""
    prefill_s: float = 0.0
    """Wall time of the batches' first step (the prefill and the first sampled token)."""
    decode_s: float = 0.0
    """Wall time of the other steps (one token per row each)."""


@dataclass(frozen=True)
class BatchRecord:
    """One decoded batch: its rows' prompt sizes and the time of its prefill step."""

    rows: int
    prompt_tokens: int
    reused_tokens: int
    prefilled_tokens: int
    prefill_s: float
    decode_s: float


class TransformersEngine:
    """Micro-batching generation over a transformers causal LM (CPU or GPU).

    Construct it from a loaded model and tokenizer, or with :meth:`from_pretrained` (a model directory, a
    ``.gguf`` file, or a packaged model name; see :mod:`agent_env.models`). Use it from one event loop at a time.

    ``prefix_cache`` (on by default) keeps finished rows' KV within ``prefix_cache_bytes`` for later requests that
    share their prefix. The cached KV is the current weights': after changing them, call :meth:`clear_cache`
    (the engine also drops the cache by itself when it sees that a parameter was modified in place, as an
    optimizer step or ``load_state_dict`` does). Models whose cache is not plain full attention (sliding-window
    layers) run without it.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_batch_size: int = 64,
        max_wait_s: float = 0.0,
        seed: int = 0,
        extra_stop_token_ids: Sequence[int] = (),
        prefix_cache: bool = True,
        prefix_cache_bytes: int = DEFAULT_PREFIX_CACHE_BYTES,
    ) -> None:
        import torch

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.stop_token_ids = end_of_turn_ids(tokenizer, [*_generation_eos_ids(model), *extra_stop_token_ids])
        self.pad_token_id = _pad_id(tokenizer, self.stop_token_ids)
        self.vocab_size: int = model.get_input_embeddings().num_embeddings
        # Only the last position's logits are needed; without this a long batched prompt materialises
        # batch x prompt x vocab float logits (tens of GB for a 150k vocabulary).
        self._logits_to_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._generator = torch.Generator(device=self.device).manual_seed(seed)
        # One decode at a time: the async batcher already serialises its batches, but generate_batch may be
        # called from another thread, and the model, its cache and the sampling generator are not thread-safe.
        self._lock = threading.Lock()
        self._batcher: AsyncBatcher[_Row, Generation] = AsyncBatcher(
            self._generate_batch_in_thread, max_batch_size=max_batch_size, max_wait_s=max_wait_s
        )
        self.prefix_cache = PrefixCache(prefix_cache_bytes) if prefix_cache and _plain_kv_cache(model) else None
        self._weights_version = _weights_version(model)
        self.prefill_stats = PrefillStats()
        self.batch_log: deque[BatchRecord] = deque(maxlen=4096)
        """The most recent batches (bounded: a long training run decodes millions)."""

    @classmethod
    def from_pretrained(
        cls, path: str, *, device: str | None = None, dtype: str | None = None, **options: Any
    ) -> TransformersEngine:
        from agent_env.models import load_causal_lm

        model, tokenizer = load_causal_lm(path, device=device, dtype=dtype)
        return cls(model, tokenizer, **options)

    @property
    def max_context_tokens(self) -> int | None:
        return getattr(self.model.config, "max_position_embeddings", None)

    @property
    def batch_stats(self) -> BatchStats:
        return self._batcher.stats

    def clear_cache(self) -> None:
        """Drop the prefix cache: its KV was computed with the weights as they were (call after every update)."""
        with self._lock:
            self._drop_cache()

    def _drop_cache(self) -> None:
        if self.prefix_cache is not None:
            self.prefix_cache.clear()
        self._weights_version = _weights_version(self.model)

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to sample as this engine would have: its shared generator's state."""
        return {"generator": self._generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._generator.set_state(state["generator"])

    async def generate(self, prompt_ids: Sequence[int], sampling: SamplingParams) -> Generation:
        # Validated here, not in the batch, so one bad request cannot fail the other episodes batched with it.
        return await self._batcher.submit(self._make_row(prompt_ids, sampling))

    def generate_batch(
        self, prompts: Sequence[Sequence[int]], sampling: SamplingParams | Sequence[SamplingParams]
    ) -> list[Generation]:
        """Synchronous batched generation of many prompts (benchmarks, evaluation and single-turn RL without
        episodes); ``sampling`` is one for all, or one per prompt (per-request seeds, as vLLM takes them)."""
        each = [sampling] * len(prompts) if isinstance(sampling, SamplingParams) else list(sampling)
        if len(each) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(each)} sampling parameters")
        rows = [self._make_row(prompt, params) for prompt, params in zip(prompts, each, strict=True)]
        return self._generate_batch(rows) if rows else []

    def _make_row(self, prompt_ids: Sequence[int], sampling: SamplingParams) -> _Row:
        """Check a prompt and clip its generation budget to the context left after it."""
        check_prompt(prompt_ids, self.max_context_tokens, self.vocab_size)
        max_new_tokens = sampling.max_new_tokens
        if self.max_context_tokens is not None:
            max_new_tokens = min(max_new_tokens, self.max_context_tokens - len(prompt_ids))
        generator = None
        if sampling.seed is not None:
            import torch

            generator = torch.Generator(device=self.device).manual_seed(sampling.seed)
        return _Row([int(token) for token in prompt_ids], sampling, max_new_tokens, [], [], generator=generator)

    async def aclose(self) -> None:
        await self._batcher.aclose()

    async def _generate_batch_in_thread(self, rows: list[_Row]) -> list[Generation]:
        # A worker thread, so retrieval and squeezing of other episodes go on while the model decodes.
        return await asyncio.to_thread(self._generate_batch, rows)

    def _generate_batch(self, rows: list[_Row]) -> list[Generation]:
        import torch

        with self._lock, torch.inference_mode():
            self._attach_cached_prefixes(rows)
            decoder = _BatchDecoder(self, rows)
            decoder.run()
            self._record(rows, decoder)
        return [Generation(row.token_ids, row.logprobs, row.stop_reason or "length") for row in rows]

    def _attach_cached_prefixes(self, rows: list[_Row]) -> None:
        if self.prefix_cache is None:
            return
        if _weights_version(self.model) != self._weights_version:
            self._drop_cache()  # updated in place since the cache was filled: its KV is stale
        for row in rows:
            # At least the last prompt token is fed: its logits give the first sampled token.
            row.cached, row.reused = self.prefix_cache.lookup(row.prompt_ids, limit=len(row.prompt_ids) - 1)

    def _record(self, rows: list[_Row], decoder: _BatchDecoder) -> None:
        prompt = sum(len(row.prompt_ids) for row in rows)
        reused = sum(row.reused for row in rows)
        record = BatchRecord(len(rows), prompt, reused, prompt - reused, decoder.prefill_s, decoder.decode_s)
        self.batch_log.append(record)
        stats = self.prefill_stats
        stats.requests += record.rows
        stats.prompt_tokens += record.prompt_tokens
        stats.reused_tokens += record.reused_tokens
        stats.prefilled_tokens += record.prefilled_tokens
        stats.prefill_s += record.prefill_s
        stats.decode_s += record.decode_s
        for row in rows:
            row.cached = None  # the batch's references to cache tensors end with it

    def _store(self, row: _Row, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        """Cache a finished row's KV: every token it fed, i.e. its prompt and all sampled tokens but the last."""
        if self.prefix_cache is not None:
            self.prefix_cache.store(row.prompt_ids + row.token_ids[:-1], keys, values)


class _BatchDecoder:
    """Decodes one left-padded batch step by step with a KV cache, dropping rows as they finish."""

    def __init__(self, engine: TransformersEngine, rows: list[_Row]) -> None:
        import torch

        self.engine = engine
        self.rows = rows
        self.active = list(range(len(rows)))  # indices into rows of the rows still in the batch
        # Slots: [past: each row's cached prefix, right-aligned in `past` slots][new: its suffix, right-aligned].
        # Rows with shorter cached prefixes or suffixes have pad slots (mask 0) before each part; positions count
        # only a row's real tokens, so every row computes what it would alone.
        past = max(row.reused for row in rows)
        width = max(len(row.suffix) for row in rows)
        device = engine.device
        ids = torch.full((len(rows), width), engine.pad_token_id, dtype=torch.long, device=device)
        mask = torch.zeros((len(rows), past + width), dtype=torch.long, device=device)
        for index, row in enumerate(rows):
            suffix = row.suffix
            ids[index, width - len(suffix) :] = torch.tensor(suffix, device=device)
            mask[index, past - row.reused : past] = 1
            mask[index, past + width - len(suffix) :] = 1
        self.input_ids = ids
        self.attention_mask = mask
        self.position_ids = (mask.cumsum(-1) - 1).clamp(min=0)[:, past:]
        self.temperature = torch.tensor([row.sampling.temperature for row in rows], device=device)
        self.top_p = torch.tensor([row.sampling.top_p for row in rows], device=device)
        self.cache: Any = _past_cache(engine.model, rows, past) if past else None
        self.prefill_s = 0.0
        self.decode_s = 0.0
        # Every token decodes to at least one byte, so the tokens that complete a stop string are among the last
        # (its UTF-8 length) ones; one more gives context (a sentencepiece decode drops a leading space otherwise).
        longest = max((len(stop.encode()) for row in rows for stop in row.sampling.stop), default=0)
        self.tail_tokens = longest + 1 if longest else 0

    def run(self) -> None:
        started = time.perf_counter()
        first = True
        while self.active:
            logits = self._forward()
            tokens, logprobs = self._sample(logits)
            self._append(tokens.tolist(), logprobs.tolist())  # .tolist() waits for the device: timings are real
            if first:
                self.prefill_s, first = time.perf_counter() - started, False
            self._drop_finished(tokens)
        self.decode_s = time.perf_counter() - started - self.prefill_s

    def _forward(self) -> torch.Tensor:
        outputs = self.engine.model(
            input_ids=self.input_ids,
            attention_mask=self.attention_mask,
            position_ids=self.position_ids,
            past_key_values=self.cache,
            use_cache=True,
            **({"logits_to_keep": 1} if self.engine._logits_to_keep else {}),
        )
        self.cache = outputs.past_key_values
        return outputs.logits[:, -1, :].float()

    def _sample(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        log_probs = torch.log_softmax(logits, dim=-1)
        greedy = self.temperature == 0
        tokens = log_probs.argmax(dim=-1)
        if not bool(greedy.all()):
            scaled = logits / self.temperature.clamp(min=1e-6).unsqueeze(-1)
            probs = _top_p_filter(torch.softmax(scaled, dim=-1), self.top_p)
            sampled = self._draw(probs)
            tokens = torch.where(greedy, tokens, sampled)
        return tokens, log_probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)

    def _draw(self, probs: torch.Tensor) -> torch.Tensor:
        """One token per active row: seeded rows from their own generator, the rest from the shared one in turn."""
        import torch

        generators = [self.rows[index].generator for index in self.active]
        if all(generator is None for generator in generators):
            return torch.multinomial(probs, 1, generator=self.engine._generator).squeeze(-1)
        draws = [
            torch.multinomial(row_probs, 1, generator=generator or self.engine._generator)
            for row_probs, generator in zip(probs, generators, strict=True)
        ]
        return torch.cat(draws)

    def _append(self, tokens: list[int], logprobs: list[float]) -> None:
        rows = [self.rows[index] for index in self.active]
        for row, token, logprob in zip(rows, tokens, logprobs, strict=True):
            row.token_ids.append(token)
            row.logprobs.append(logprob)
        tails = self._decoded_tails(rows)
        for row, tail in zip(rows, tails, strict=True):
            row.stop_reason = _stop_reason(row, tail, self.engine.stop_token_ids)

    def _decoded_tails(self, rows: list[_Row]) -> list[str]:
        # Decoding only the tail that can hold a just-completed stop string keeps the check cheap.
        if not self.tail_tokens:
            return [""] * len(rows)
        tails = [row.token_ids[-self.tail_tokens :] for row in rows]
        decoded = self.engine.tokenizer.batch_decode(
            tails, skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
        return list(decoded)

    def _drop_finished(self, tokens: torch.Tensor) -> None:
        import torch

        keep = [position for position, index in enumerate(self.active) if self.rows[index].stop_reason is None]
        if self.engine.prefix_cache is not None and len(keep) < len(self.active):
            self._store_finished(set(keep))
        self.active = [self.active[position] for position in keep]
        if not self.active:
            return
        next_ids = tokens.unsqueeze(-1)
        next_positions = self.position_ids[:, -1:] + 1
        self.attention_mask = torch.cat([self.attention_mask, torch.ones_like(next_ids)], dim=-1)
        if len(keep) < len(tokens):
            index = torch.tensor(keep, device=tokens.device)
            self.cache.batch_select_indices(index)
            next_ids, next_positions = next_ids[index], next_positions[index]
            self.attention_mask = self.attention_mask[index]
            self.temperature, self.top_p = self.temperature[index], self.top_p[index]
        self.input_ids, self.position_ids = next_ids, next_positions

    def _store_finished(self, keep: set[int]) -> None:
        """Hand the engine the KV of each row finishing now, its real slots only (the mask still has one slot per
        cached token: the token just sampled is not fed yet)."""
        layers = self.cache.layers
        for position, index in enumerate(self.active):
            if position in keep:
                continue
            slots = self.attention_mask[position].nonzero().squeeze(-1)
            keys = [layer.keys[position].index_select(1, slots) for layer in layers]
            values = [layer.values[position].index_select(1, slots) for layer in layers]
            self.engine._store(self.rows[index], keys, values)


def _past_cache(model: Any, rows: list[_Row], past: int) -> Any:
    """A DynamicCache of ``past`` slots holding each row's cached prefix right-aligned (zeros, masked, before)."""
    from transformers import DynamicCache

    template = next(row.cached for row in rows if row.cached is not None)
    layers = []
    for layer in range(len(template.keys)):
        parts = []
        for tensors in (template.keys, template.values):
            heads, _, dim = tensors[layer].shape
            parts.append(tensors[layer].new_zeros((len(rows), heads, past, dim)))
        for index, row in enumerate(rows):
            if row.cached is not None and row.reused:
                parts[0][index, :, past - row.reused :] = row.cached.keys[layer][:, : row.reused]
                parts[1][index, :, past - row.reused :] = row.cached.values[layer][:, : row.reused]
        layers.append((parts[0], parts[1]))
    return DynamicCache(layers, config=model.config)


def _plain_kv_cache(model: Any) -> bool:
    """Whether the model's own cache is one plain full-attention layer per decoder layer, the layout the prefix
    cache copies rows in and out of (a sliding-window layer keeps only its window)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    try:
        cache = DynamicCache(config=model.config)
    except Exception:  # a config DynamicCache cannot read: decode without the prefix cache rather than fail
        return False
    return bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)


def _weights_version(model: Any) -> int:
    """Sum of the parameters' in-place modification counters: it changes whenever an optimizer step, a
    ``load_state_dict`` or any in-place write touches a weight, which makes cached KV stale."""
    return sum(parameter._version for parameter in model.parameters())


def _stop_reason(row: _Row, tail: str, stop_token_ids: frozenset[int]) -> StopReason | None:
    if row.token_ids[-1] in stop_token_ids:
        return "eos"
    if any(stop in tail for stop in row.sampling.stop):
        return "stop"
    if len(row.token_ids) >= row.max_new_tokens:
        return "length"
    return None


def _top_p_filter(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Zero the tail of each row's distribution beyond its nucleus (the top token always stays)."""
    import torch

    if bool((top_p >= 1).all()):
        return probs
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(mass_before >= top_p.unsqueeze(-1), 0.0)
    return torch.zeros_like(probs).scatter(-1, order, sorted_probs)


def end_of_turn_ids(
    tokenizer: Any, extra: Iterable[int] = (), *, names: Sequence[str] = ("<|im_end|>",)
) -> frozenset[int]:
    """Token ids that end a turn: the tokenizer's EOS, the tokens ``names`` where the vocabulary has them (ChatML's
    ``<|im_end|>``), and ``extra`` (a generation config's EOS ids, say)."""
    ids = {int(token) for token in extra}
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    for name in names:
        token = tokenizer.convert_tokens_to_ids(name)
        if isinstance(token, int) and token != tokenizer.unk_token_id:
            ids.add(token)
    return frozenset(ids)


def _generation_eos_ids(model: Any) -> list[int]:
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    return configured if isinstance(configured, list) else [configured] if configured is not None else []


def _pad_id(tokenizer: Any, stop_token_ids: frozenset[int]) -> int:
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    return min(stop_token_ids) if stop_token_ids else 0
