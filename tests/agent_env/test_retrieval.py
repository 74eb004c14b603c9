from dataclasses import dataclass

import pytest

from agent_env.retrieval import merge_variant_hits


@dataclass(frozen=True)
class Hit:
    id: str


def ids(hits: list[Hit]) -> list[str]:
    return [hit.id for hit in hits]


@pytest.mark.parametrize(
    ("variants", "expected"),
    [
        ([], []),
        ([[]], []),
        ([["a", "b", "c"]], ["a", "b", "c"]),
        ([["a", "b"], ["c", "d"]], ["a", "c", "b", "d"]),  # each variant's best hit first
        ([["a", "b"], ["a", "c"]], ["a", "b", "c"]),  # a passage found twice is shown once
        ([["a"], ["b", "c", "d"], []], ["a", "b", "c", "d"]),  # uneven lengths
    ],
)
def test_round_robin_merge_without_duplicates(variants: list[list[str]], expected: list[str]) -> None:
    hits = [[Hit(i) for i in variant] for variant in variants]
    assert ids(merge_variant_hits(hits)) == expected
