"""Turning one search action's per-variant results into the passages the environment shows.

Every variant of a ``<search>`` is retrieved with top-k; the lists are merged round-robin (each
variant's best hit first, then each one's second, …) and de-duplicated by passage id, so a passage
that several variants found is shown once and every variant's top hit is near the top.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar


class HasId(Protocol):
    @property
    def id(self) -> str: ...


HitT = TypeVar("HitT", bound=HasId)


def merge_variant_hits(hits_per_variant: Sequence[Sequence[HitT]]) -> list[HitT]:
    """Round-robin merge of per-variant hit lists, dropping repeated passage ids."""
    merged: list[HitT] = []
    seen: set[str] = set()
    depth = max((len(hits) for hits in hits_per_variant), default=0)
    for rank in range(depth):
        for hits in hits_per_variant:
            if rank < len(hits) and hits[rank].id not in seen:
                seen.add(hits[rank].id)
                merged.append(hits[rank])
    return merged
