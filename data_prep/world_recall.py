"""How much several query variants retrieve in a synthetic world, compared with the question alone.

For every question the supporting passages are known (one per hop), so we can score retrieval
strategies without any model: the question as the only query, and oracle variants built from the
gold reasoning chain — each hop's entity name, each hop's sub-question (name + the relation's main
keyword), and each hop's name with every wording of the relation. A query's top-k hits are pooled
over the variants; recall is the share of supporting passages in the pool, ``all_found`` the share of
questions with every supporting passage in it. The world is only useful for training if good variants
retrieve clearly more than the question does.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from data_prep.formats import QAExample
from data_prep.synthetic import RELATIONS
from retriever_server.bm25 import BM25Index


def _question_only(example: QAExample) -> list[str]:
    return [example.question]


def _entity_names(example: QAExample) -> list[str]:
    return list(dict.fromkeys(hop["subject"] for hop in example.metadata["hops"]))


def _sub_questions(example: QAExample) -> list[str]:
    return [f"{hop['subject']} {RELATIONS[hop['relation']].keywords[0]}" for hop in example.metadata["hops"]]


def _all_wordings(example: QAExample) -> list[str]:
    return [
        f"{hop['subject']} {keyword}"
        for hop in example.metadata["hops"]
        for keyword in RELATIONS[hop["relation"]].keywords
    ]


QUERY_STRATEGIES: dict[str, Callable[[QAExample], list[str]]] = {
    "question": _question_only,
    "oracle entity names": _entity_names,
    "oracle sub-questions": _sub_questions,
    "oracle names x wordings": _all_wordings,
}


@dataclass(frozen=True)
class RecallRow:
    strategy: str
    question_type: str
    k: int
    questions: int
    queries_per_question: float
    recall: float
    all_found: float


def measure_recall(examples: Sequence[QAExample], index: BM25Index, ks: Sequence[int] = (3, 10)) -> list[RecallRow]:
    """Supporting-passage recall@k per strategy and question type ("all" pools every type)."""
    rows = []
    for strategy, make_queries in QUERY_STRATEGIES.items():
        queries = [make_queries(example) for example in examples]
        flat = [query for group in queries for query in group]
        for k in ks:
            hits = index.batch_search(flat, k)
            by_type: dict[str, list[tuple[float, bool, int]]] = defaultdict(list)
            offset = 0
            for example, group in zip(examples, queries, strict=True):
                pooled = {hit.id for hit_list in hits[offset : offset + len(group)] for hit in hit_list}
                offset += len(group)
                supporting = example.metadata["supporting_ids"]
                found = sum(passage_id in pooled for passage_id in supporting)
                score = (found / len(supporting), found == len(supporting), len(group))
                by_type[example.metadata["type"]].append(score)
                by_type["all"].append(score)
            rows += [_row(strategy, qtype, k, scores) for qtype, scores in sorted(by_type.items())]
    return rows


def _row(strategy: str, qtype: str, k: int, scores: list[tuple[float, bool, int]]) -> RecallRow:
    n = len(scores)
    return RecallRow(
        strategy,
        qtype,
        k,
        n,
        sum(s[2] for s in scores) / n,
        sum(s[0] for s in scores) / n,
        sum(s[1] for s in scores) / n,
    )
