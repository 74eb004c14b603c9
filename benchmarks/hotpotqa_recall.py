"""Benchmark: HotpotQA supporting-title recall of BM25, dense (MiniLM) and hybrid retrieval.

    .venv/bin/python benchmarks/hotpotqa_recall.py [--questions N] [--out DIR] [--faiss flat]

The corpus is the union of the context paragraphs of the sample HotpotQA distractor rows (about 6k passages
for all 600), one passage per title. Each question is asked two ways: (a) the question as the only query;
(b) two oracle variants, the two supporting titles, top-k each, pooled. A table row gives recall@k (share of
supporting titles found) and, in brackets, the share of questions with both titles found.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from data_prep.samples import samples_dir  # noqa: E402
from retriever_server.base import Retriever  # noqa: E402
from retriever_server.corpus import Passage, write_wiki18_jsonl  # noqa: E402
from retriever_server.index_dir import build_index, load_index  # noqa: E402

HOTPOT_FILES = ("hotpotqa_distractor_dev300.jsonl", "hotpotqa_distractor_dev300b.jsonl")
DEFAULT_DATA = samples_dir() / "hotpotqa"
KS = (3, 10)


@dataclass(frozen=True)
class HotpotQuestion:
    question: str
    supporting_titles: tuple[str, ...]


def load_hotpot(data_dir: Path, limit: int | None = None) -> tuple[list[Passage], list[HotpotQuestion]]:
    """Questions (first ``limit`` overall) and the union of their context paragraphs, one passage per title."""
    rows = [json.loads(line) for name in HOTPOT_FILES for line in (data_dir / name).open(encoding="utf-8")]
    rows = rows[:limit] if limit else rows
    paragraphs: dict[str, str] = {}
    questions = []
    for row in rows:
        for title, sentences in zip(row["context"]["title"], row["context"]["sentences"], strict=True):
            # Sentences carry their own leading spaces, hence "".join (data README).
            paragraphs.setdefault(title, "".join(sentences).strip())
        titles = tuple(dict.fromkeys(row["supporting_facts"]["title"]))
        questions.append(HotpotQuestion(row["question"], titles))
    passages = [Passage(str(row), title, text) for row, (title, text) in enumerate(paragraphs.items())]
    return passages, questions


def _question_only(question: HotpotQuestion) -> list[str]:
    return [question.question]


def _oracle_titles(question: HotpotQuestion) -> list[str]:
    return list(question.supporting_titles)


QUERY_STRATEGIES: dict[str, Callable[[HotpotQuestion], list[str]]] = {
    "question only": _question_only,
    "2 oracle variants (supporting titles)": _oracle_titles,
}


def title_recall(
    retriever: Retriever, questions: Sequence[HotpotQuestion], strategy: str, k: int
) -> tuple[float, float]:
    """(share of supporting titles found, share of questions with all found), pooling top-k of every variant."""
    variants = [QUERY_STRATEGIES[strategy](question) for question in questions]
    flat = [query for queries in variants for query in queries]
    results = iter(retriever.batch_search(flat, k))
    found_titles = 0
    all_found = 0
    for question, queries in zip(questions, variants, strict=True):
        pooled = {hit.title for _ in queries for hit in next(results)}
        hits = sum(title in pooled for title in question.supporting_titles)
        found_titles += hits
        all_found += hits == len(question.supporting_titles)
    total_titles = sum(len(question.supporting_titles) for question in questions)
    return found_titles / total_titles, all_found / len(questions)


def build_retrievers(passages: Sequence[Passage], out_dir: Path, faiss: str = "flat") -> dict[str, Retriever]:
    """BM25, dense and hybrid retrievers from one hybrid index directory (the corpus is encoded once)."""
    corpus = out_dir / "corpus.jsonl"
    write_wiki18_jsonl(passages, corpus)
    build_index(corpus, "hybrid", out_dir / "index", faiss=faiss, progress=False)
    hybrid = load_index(out_dir / "index")
    return {"BM25": hybrid.lexical, "dense MiniLM": hybrid.dense, "hybrid RRF": hybrid}  # type: ignore[attr-defined]


def markdown_table(retrievers: dict[str, Retriever], questions: Sequence[HotpotQuestion]) -> str:
    lines = [
        "| retriever | queries | " + " | ".join(f"R@{k} (both)" for k in KS) + " |",
        "|---|---|" + "---|" * len(KS),
    ]
    for name, retriever in retrievers.items():
        for strategy in QUERY_STRATEGIES:
            cells = [
                f"{recall:.2f} ({both:.2f})"
                for recall, both in (title_recall(retriever, questions, strategy, k) for k in KS)
            ]
            lines.append(f"| {name} | {strategy} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with the HotpotQA jsonl files")
    parser.add_argument("--questions", type=int, default=None, help="use the first N questions (default: all 600)")
    parser.add_argument("--faiss", default="flat", choices=["flat", "hnsw", "ivfpq", "sq8"])
    parser.add_argument("--out", type=Path, default=None, help="where to keep the index (default: a temp folder)")
    args = parser.parse_args()
    started = time.perf_counter()
    passages, questions = load_hotpot(args.data, args.questions)
    with tempfile.TemporaryDirectory() as scratch:
        retrievers = build_retrievers(passages, args.out or Path(scratch), args.faiss)
        built = time.perf_counter() - started
        print(f"HotpotQA distractor dev ({', '.join(HOTPOT_FILES)}): {len(questions)} questions,")
        print(f"{len(passages)} passages; supporting-title recall, FAISS {args.faiss}\n")
        print(markdown_table(retrievers, questions))
    print(f"\nindex build {built:.1f} s, total {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
