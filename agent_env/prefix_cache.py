"""The transformers engine's cross-turn prefix cache: finished rows' KV, keyed by their token ids, LRU-bounded.

An episode's turn ``t + 1`` asks for ``prompt + turn_t's tokens + observation``: the ids of turn ``t``'s request
extended. When a row of a batch finishes, the engine stores the KV of every token it fed (the request and all
sampled tokens but the last, which was never fed) under those ids; a later request takes the stored entry with
the longest common prefix and prefills only the rest. Keys and values at a position depend only on the tokens up
to it (causal attention, absolute rotary positions), so any common prefix of an entry is reusable, not only a
whole entry: a GRPO group's samples share their prompt, and every episode shares the template's instructions.

Entries hold per-layer ``[kv_heads, length, head_dim]`` tensors, padding stripped. The store is bounded by a byte
budget with least-recently-used eviction, and an entry that a newer one extends is dropped (its KV is a prefix of
the newer one's), so an episode holds one entry whatever its number of turns.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


@dataclass
class CacheEntry:
    """The KV of one token sequence: ``keys[layer]`` and ``values[layer]`` are ``[kv_heads, length, head_dim]``."""

    ids: np.ndarray
    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @property
    def length(self) -> int:
        return len(self.ids)

    @property
    def nbytes(self) -> int:
        return sum(tensor.numel() * tensor.element_size() for tensor in (*self.keys, *self.values))


@dataclass
class PrefixCacheStats:
    """Counters of what the cache saved, for benchmarks and metrics."""

    lookups: int = 0
    hits: int = 0
    """Lookups that reused at least one cached token."""
    stored: int = 0
    evicted: int = 0
    """Entries dropped to stay within the byte budget (not counting entries superseded by their extension)."""
    clears: int = 0
    """Times a non-empty cache was dropped (``clear_cache`` or the model's weights changing)."""


class PrefixCache:
    """LRU store of :class:`CacheEntry` within ``max_bytes``; not thread-safe (the engine's lock guards it)."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"prefix cache budget must be >= 0 bytes, got {max_bytes}")
        self.max_bytes = max_bytes
        self.stats = PrefixCacheStats()
        self._entries: OrderedDict[int, CacheEntry] = OrderedDict()
        self._next_key = 0
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, ids: Sequence[int], *, limit: int) -> tuple[CacheEntry | None, int]:
        """The entry sharing the longest prefix with ``ids`` and that prefix's length, at most ``limit`` tokens
        (``(None, 0)`` when nothing is shared). A hit becomes the most recently used entry."""
        self.stats.lookups += 1
        best_key, best_entry, best = -1, None, 0
        request = np.asarray(ids, dtype=np.int64)
        for key, entry in self._entries.items():
            shared = _common_prefix(request, entry.ids)
            if shared > best:
                best_key, best_entry, best = key, entry, shared
        best = min(best, limit)
        if best_entry is None or best <= 0:
            return None, 0
        self._entries.move_to_end(best_key)
        self.stats.hits += 1
        return best_entry, best

    def store(self, ids: Sequence[int], keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        """Keep the KV of ``ids``, dropping entries it extends and then the least recently used past the budget."""
        entry = CacheEntry(np.asarray(ids, dtype=np.int64), keys, values)
        if entry.nbytes > self.max_bytes or entry.length == 0:
            return
        for key, other in list(self._entries.items()):
            shared = _common_prefix(entry.ids, other.ids)
            if shared == entry.length:  # already held within a longer entry: just mark that one as used
                self._entries.move_to_end(key)
                return
            if shared == other.length:  # the new entry extends this one
                self._remove(key)
        self._entries[self._next_key] = entry
        self._next_key += 1
        self.nbytes += entry.nbytes
        self.stats.stored += 1
        while self.nbytes > self.max_bytes:
            self._remove(next(iter(self._entries)))
            self.stats.evicted += 1

    def clear(self) -> None:
        if self._entries:
            self.stats.clears += 1
        self._entries.clear()
        self.nbytes = 0

    def _remove(self, key: int) -> None:
        self.nbytes -= self._entries.pop(key).nbytes


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the longest common prefix of two id arrays (vectorised: a python loop over thousands of ids per
    entry per request would cost more than the prefill it saves)."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if differ.size else n
