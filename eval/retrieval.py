"""Retrieval-only evaluation: how much of what a question needs does the question alone, as one query, retrieve?

No policy, no squeezer: every question of a QA file is sent to a retriever as its only query (in batches), and
the top-k passages are scored per k with the agent harness's own definitions (``eval.metrics``):

- ``recall@k`` — share of the question's supporting passages retrieved (``metadata["supporting_ids"]`` against
  passage ids, else ``metadata["supporting_titles"]`` against titles; what ``expandsearch prepare qa`` writes
  for HotpotQA, 2Wiki and MuSiQue);
- ``all_supporting@k`` — share of questions with *every* supporting passage retrieved;
- ``answer_in_passages@k`` — share of questions where some gold answer occurs in a retrieved passage (title or
  text) as whole normalised tokens, cover-EM's rule.

A metric whose ground truth a question lacks is left out for that question, and out of the results when no
question has it (open-domain sets have no supporting passages): never reported as 0. One search at the largest
k serves every k (its first k hits), as pyserini's recall@k does from one run::

    with open_index_source("idx/hotpotqa-bm25") as source:
        report = evaluate_retrieval(source, [load_dataset(DatasetSpec("hotpotqa", path))], ks=(3, 10))
    write_outputs(report, "runs/retrieval")        # results.json, results.md, <dataset>.jsonl

``expandsearch eval-retrieval`` is the command line of this module; the regressions in ``eval/regressions/``
run it and compare ``results.json`` with expected scores.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from statistics import fmean
from typing import Any

from agent_env.reward import normalize_answer
from data_prep.formats import QAExample
from eval.datasets import DatasetError, DatasetSpec, EvalDataset, find_split_file, for_index_corpus, split_candidates
from eval.metrics import answer_in_passages, supporting_recall
from retriever_server.base import SearchHit

DEFAULT_KS = (3, 10)
QUERY_BATCH = 1024
"""Questions per retriever call: large enough to batch well, small enough to bound a dense index's memory."""
SPLIT_NAMES = ("train", "dev", "validation", "test")
"""File stems that name a split, not a dataset (``data/nq/test.jsonl`` is dataset ``nq``)."""
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
METRIC_KEYS = ("recall", "all_supporting", "answer_in_passages")
"""Per-k metric names; the results hold ``{name}@{k}``."""
TABLE_HEADERS = {"recall": "R@{k}", "all_supporting": "all@{k}", "answer_in_passages": "ans@{k}"}

Search = Callable[[Sequence[str], int], list[list[SearchHit]]]
Log = Callable[[str], None]


@dataclass
class RetrievalSource:
    """A retriever to evaluate: its batched search, what the results record about it, and its corpus checksum.

    ``corpus_sha256`` (known for index directories, not for a server) lets supporting ids be checked against the
    corpus the questions were prepared with.
    """

    search: Search
    identity: dict[str, Any]
    corpus_sha256: str | None = None


@dataclass
class DatasetRetrieval:
    """One dataset's per-question rows and aggregate metrics."""

    dataset: EvalDataset
    rows: list[dict[str, Any]]
    metrics: dict[str, float]
    support: str
    """How supporting passages were matched: ``ids``, ``titles`` (ids refer to another corpus) or ``none``."""


@dataclass
class RetrievalReport:
    """Everything one evaluation produced; :meth:`results` is what ``results.json`` holds."""

    datasets: list[DatasetRetrieval]
    ks: tuple[int, ...]
    retriever: dict[str, Any]
    seconds: float
    finished: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def results(self) -> dict[str, Any]:
        """``{"results": {dataset: metrics}, "datasets": {dataset: {...}}, "retriever", "topk", "seconds", …}``."""
        return {
            "results": {item.dataset.name: item.metrics for item in self.datasets},
            "datasets": {
                item.dataset.name: {
                    "file": str(item.dataset.spec.path),
                    "note": item.dataset.spec.note,
                    "examples": len(item.dataset.examples),
                    "support": item.support,
                }
                for item in self.datasets
            },
            "retriever": self.retriever,
            "topk": list(self.ks),
            "queries": "question only",
            "seconds": self.seconds,
            "finished": self.finished,
        }


# --- metrics -------------------------------------------------------------------------------------------------


def parse_ks(text: str) -> tuple[int, ...]:
    """``"3,10"`` → ``(3, 10)``: distinct positive cut-offs, ascending; ValueError naming the bad part."""
    try:
        ks = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError as error:
        raise ValueError(f"--topk {text!r}: expected comma-separated integers such as 3,10") from error
    if not ks or ks[0] < 1:
        raise ValueError(f"--topk {text!r}: give at least one cut-off, each >= 1")
    return tuple(ks)


def question_row(example: QAExample, hits: Sequence[SearchHit], ks: Sequence[int]) -> dict[str, Any]:
    """One question's metrics per k (None where its ground truth is missing) and the ids it retrieved."""
    passages = [asdict(hit) for hit in hits]
    row: dict[str, Any] = {"id": example.id, "question": example.question, "retrieved": [hit.id for hit in hits]}
    for k in ks:
        top = passages[:k]
        recall = supporting_recall(top, example.metadata)
        row[f"recall@{k}"] = recall
        row[f"all_supporting@{k}"] = None if recall is None else float(recall == 1.0)
        row[f"answer_in_passages@{k}"] = answer_in_passages(top, example.golden_answers) if has_golds(example) else None
    return row


def has_golds(example: QAExample) -> bool:
    """Whether some gold answer survives normalisation (cover-EM skips empty ones, so none means "unknown")."""
    return any(normalize_answer(gold) for gold in example.golden_answers)


def aggregate_rows(rows: Sequence[Mapping[str, Any]], ks: Sequence[int]) -> dict[str, float]:
    """Means of the measured (non-None) values per metric key; ``n`` and, when any, ``n_supporting``.

    A key no row measures is absent. ``n_supporting`` counts the questions with supporting-passage ground truth
    (the denominator of ``recall@k`` and ``all_supporting@k``), ``n_answers`` those with a usable gold answer.
    """
    metrics: dict[str, float] = {"n": float(len(rows))}
    counts = {"n_supporting": f"recall@{ks[0]}", "n_answers": f"answer_in_passages@{ks[0]}"} if ks else {}
    for name, key in counts.items():
        measured = sum(row.get(key) is not None for row in rows)
        if measured:
            metrics[name] = float(measured)
    for k in ks:
        for name in METRIC_KEYS:
            values = [float(row[f"{name}@{k}"]) for row in rows if row.get(f"{name}@{k}") is not None]
            if values:
                metrics[f"{name}@{k}"] = fmean(values)
    return metrics


# --- data ----------------------------------------------------------------------------------------------------


def resolve_data(item: str, split: str = "test") -> DatasetSpec:
    """A ``--data`` value: ``[NAME=]FILE.jsonl`` or ``[NAME=]DIR`` (a ``prepare qa`` folder: ``DIR/{split}.jsonl``,
    falling back to ``dev.jsonl`` for ``test``). The name defaults to the folder's name, or the file's stem when
    that is not a split name."""
    # NAME=PATH splits at the first "=", unless the whole value is itself an existing path
    name, _, raw = ("", "", item) if Path(item).exists() or "=" not in item else item.partition("=")
    path = Path(raw).expanduser()
    if path.is_dir():
        return _split_file(name or path.resolve().name, path, split)
    if not path.is_file():
        raise DatasetError(f"--data {item}: no file or folder {path}")
    default_name = path.resolve().parent.name if path.stem in SPLIT_NAMES else path.stem
    return DatasetSpec(name or default_name, path.resolve())


def _split_file(name: str, folder: Path, split: str) -> DatasetSpec:
    found = find_split_file(name, folder, split)
    if found is None:
        tried = " or ".join(f"{candidate}.jsonl" for candidate in split_candidates(split))
        raise DatasetError(f"--data {folder}: no {tried} there")
    return found


def check_unique_names(specs: Sequence[DatasetSpec]) -> None:
    """Dataset names key the results: two ``--data`` values with one name would overwrite each other."""
    names = [spec.name for spec in specs]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise DatasetError(f"dataset name(s) {', '.join(twice)} given twice in --data; name them with NAME=PATH")


def _support_kind(examples: Sequence[QAExample]) -> str:
    keys = ("supporting_ids", "supporting_titles")
    found = [key for key in keys if any(example.metadata.get(key) for example in examples)]
    return {"supporting_ids": "ids", "supporting_titles": "titles"}[found[0]] if found else "none"


# --- retrievers ----------------------------------------------------------------------------------------------


@contextmanager
def open_index_source(index_dir: str | Path, *, device: str | None = None) -> Iterator[RetrievalSource]:
    """An index directory (``expandsearch index``) as a source; its manifest names the corpus it was built over."""
    from retriever_server.index_dir import load_index, read_manifest

    manifest = read_manifest(index_dir)
    retriever = load_index(index_dir, device=device)
    corpus = manifest.get("corpus", {})
    identity = {
        "index": str(Path(index_dir).resolve()),
        "kind": manifest["kind"],
        "passages": corpus.get("passages"),
        "corpus_sha256": corpus.get("sha256"),
        **(
            {"encoder": manifest["dense"]["encoder"], "faiss": manifest["dense"]["faiss"]}
            if "dense" in manifest
            else {}
        ),
    }
    yield RetrievalSource(lambda queries, k: retriever.batch_search(queries, k), identity, corpus.get("sha256"))


@contextmanager
def open_url_source(url: str, *, token: str | None = None) -> Iterator[RetrievalSource]:
    """A running retriever server (ours or Search-R1's wire format) as a source."""
    from retriever_server.client import RetrieverClient

    with RetrieverClient(url, token=token) as client:
        yield RetrievalSource(lambda queries, k: client.retrieve(queries, topk=k), {"url": url})


# --- the evaluation ------------------------------------------------------------------------------------------


def search_questions(source: RetrievalSource, questions: Sequence[str], k: int) -> list[list[SearchHit]]:
    """Top-k hits per question, in order, ``QUERY_BATCH`` questions per retriever call."""
    hits: list[list[SearchHit]] = []
    for start in range(0, len(questions), QUERY_BATCH):
        batch = questions[start : start + QUERY_BATCH]
        answer = source.search(batch, k)
        if len(answer) != len(batch):
            raise RuntimeError(f"retriever answered {len(answer)} hit lists for {len(batch)} queries")
        hits.extend(answer)
    return hits


def evaluate_dataset(source: RetrievalSource, dataset: EvalDataset, ks: Sequence[int]) -> DatasetRetrieval:
    """Search every question of ``dataset`` once at the largest k and score each k on a prefix of its hits.

    Supporting ids of another corpus than the index's are dropped first (:func:`eval.datasets.for_index_corpus`).
    """
    examples = list(for_index_corpus(dataset, source.corpus_sha256).examples)
    support = _support_kind(examples)
    hits = search_questions(source, [example.question for example in examples], max(ks))
    rows = [question_row(example, example_hits, ks) for example, example_hits in zip(examples, hits, strict=True)]
    return DatasetRetrieval(dataset, rows, aggregate_rows(rows, ks), support)


def evaluate_retrieval(
    source: RetrievalSource, datasets: Sequence[EvalDataset], ks: Sequence[int] = DEFAULT_KS, log: Log = print
) -> RetrievalReport:
    """Evaluate every dataset against one source; ``log`` gets one line per dataset."""
    started = time.perf_counter()
    evaluated = []
    for dataset in datasets:
        dataset_started = time.perf_counter()
        item = evaluate_dataset(source, dataset, ks)
        evaluated.append(item)
        log(
            f"{dataset.name}: {len(item.rows)} questions, support by {item.support} "
            f"({time.perf_counter() - dataset_started:.1f} s)"
        )
    return RetrievalReport(evaluated, tuple(ks), source.identity, time.perf_counter() - started)


# --- reports -------------------------------------------------------------------------------------------------


def results_table(results: Mapping[str, Any]) -> str:
    """A markdown table, one row per dataset; ``-`` marks a metric without ground truth."""
    ks = results["topk"]
    columns = [(TABLE_HEADERS[name].format(k=k), f"{name}@{k}") for k in ks for name in METRIC_KEYS]
    lines = [
        "| dataset | n | " + " | ".join(header for header, _ in columns) + " |",
        "|---|---:|" + "---:|" * len(columns),
    ]
    for dataset, metrics in results["results"].items():
        cells = ["-" if metrics.get(key) is None else f"{metrics[key]:.3f}" for _, key in columns]
        lines.append(f"| {dataset} | {metrics['n']:.0f} | " + " | ".join(cells) + " |")
    retriever = results["retriever"]
    source = retriever.get("url") or f"{retriever.get('kind')} index {retriever.get('index')}"
    notes = [
        f"Question as the only query; {source}. R = supporting-passage recall, all = every supporting passage "
        "found, ans = some gold answer in a retrieved passage (cover-EM rule); `-`: no ground truth."
    ]
    return "\n".join([*lines, "", *notes])


def write_outputs(report: RetrievalReport, out_dir: str | Path) -> dict[str, Path]:
    """Write ``results.json``, ``results.md`` and one ``<dataset>.jsonl`` of per-question rows; returns paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = report.results()
    paths = {"json": out / RESULTS_JSON, "md": out / RESULTS_MD}
    for item in report.datasets:
        rows_path = out / f"{item.dataset.name}.jsonl"
        rows_path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in item.rows), "utf-8")
    paths["md"].write_text(results_table(results) + "\n", encoding="utf-8")
    # results.json last: a directory holding it holds a finished evaluation.
    paths["json"].write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return paths
