"""BEIR-format retrieval tasks: a corpus, queries and graded relevance judgements (qrels) per split.

A BEIR folder (Thakur et al., 2021) holds::

    corpus.jsonl        {"_id", "title", "text", "metadata"?}, one document per line
    queries.jsonl       {"_id", "text", "metadata"?}, one query per line
    qrels/{split}.tsv   header "query-id<TAB>corpus-id<TAB>score", then one judgement per line

:func:`load_beir` reads one split of it as a :class:`BeirTask` (the corpus, the queries that split judges, in
qrels order, and the qrels), checking what would otherwise fail silently later: a missing qrels file, a qrel
naming a query or a document the folder does not have, an empty corpus. Every problem is one line
(:class:`BeirFormatError`, a ``ValueError``, or ``FileNotFoundError``).

:func:`write_corpus` writes the corpus in our corpus format (``{"id", "title", "contents"}``, the wiki-18
convention), which ``expandsearch index`` indexes. :func:`hotpotqa_task` builds a second, multi-hop task from
HotpotQA distractor files: questions as queries, the union of their context paragraphs as the corpus, their
supporting paragraphs as qrels (score 1); :func:`write_beir` writes any task back as a BEIR folder.
:func:`pooled_task` cuts a task down TREC-style (some of its queries; the documents their judgements and runs
name) for experiments whose cost grows with the corpus, such as augmenting every document with an LLM.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from retriever_server.corpus import CorpusFormatError, Passage, iter_jsonl_passages, write_wiki18_jsonl

CORPUS_FILE = "corpus.jsonl"
QUERIES_FILE = "queries.jsonl"
QRELS_DIR = "qrels"
QRELS_HEADER = ("query-id", "corpus-id", "score")

Qrels = dict[str, dict[str, int]]
"""query id → {document id: graded relevance}; BEIR's (and pytrec_eval's) shape."""


class BeirFormatError(ValueError):
    """A BEIR folder or file that cannot be used as a retrieval task; the message is one line."""


@dataclass(frozen=True)
class BeirTask:
    """One split of a BEIR task: every document, the queries the split judges, and their judgements."""

    name: str
    split: str
    corpus: list[Passage]
    queries: dict[str, str]
    """query id → text, only queries with qrels in this split, in the order the qrels first name them."""
    qrels: Qrels

    def document_ids(self) -> set[str]:
        return {passage.id for passage in self.corpus}

    def with_queries(self, query_ids: Sequence[str]) -> BeirTask:
        """The task cut down to ``query_ids`` (their texts and judgements, in that order), the corpus unchanged."""
        unknown = [query_id for query_id in query_ids if query_id not in self.queries]
        if unknown:
            raise BeirFormatError(f"query id {unknown[0]!r} is not judged in the {self.split} split")
        queries = {query_id: self.queries[query_id] for query_id in query_ids}
        return replace(self, queries=queries, qrels={query_id: dict(self.qrels[query_id]) for query_id in query_ids})


def qrels_path(folder: str | Path, split: str) -> Path:
    return Path(folder) / QRELS_DIR / f"{split}.tsv"


def load_corpus(path: str | Path) -> list[Passage]:
    """The documents of a BEIR ``corpus.jsonl`` (``_id``, ``title``, ``text``) as passages, in file order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"BEIR corpus not found: {path}")
    try:
        passages = list(iter_jsonl_passages(path))
    except CorpusFormatError as error:
        raise BeirFormatError(str(error)) from error
    if not passages:
        raise BeirFormatError(f"{path}: the corpus is empty")
    seen: set[str] = set()
    for passage in passages:
        if passage.id in seen:
            raise BeirFormatError(f"{path}: document id {passage.id!r} appears twice")
        seen.add(passage.id)
    return passages


def load_queries(path: str | Path) -> dict[str, str]:
    """query id → text from a BEIR ``queries.jsonl``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"BEIR queries not found: {path}")
    queries: dict[str, str] = {}
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise BeirFormatError(f"{path}:{number}: not valid JSON ({error.msg})") from error
            if not isinstance(record, dict) or "_id" not in record or not isinstance(record.get("text"), str):
                raise BeirFormatError(f"{path}:{number}: a query needs '_id' and a string 'text'")
            queries[str(record["_id"])] = record["text"]
    if not queries:
        raise BeirFormatError(f"{path}: no queries")
    return queries


def load_qrels(path: str | Path) -> Qrels:
    """The judgements of a ``qrels/{split}.tsv`` (header optional); scores must be integers."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"qrels not found: {path} (a BEIR folder has qrels/{{train,test}}.tsv)")
    qrels: Qrels = {}
    with path.open(encoding="utf-8", newline="") as handle:
        for number, row in enumerate(csv.reader(handle, delimiter="\t"), start=1):
            if not row or (number == 1 and tuple(cell.strip() for cell in row) == QRELS_HEADER):
                continue
            if len(row) != 3:
                raise BeirFormatError(f"{path}:{number}: expected query-id, corpus-id, score; got {len(row)} fields")
            query_id, doc_id, score = (cell.strip() for cell in row)
            try:
                qrels.setdefault(query_id, {})[doc_id] = int(score)
            except ValueError:
                raise BeirFormatError(f"{path}:{number}: score {score!r} is not an integer") from None
    if not qrels:
        raise BeirFormatError(f"{path}: no judgements")
    return qrels


def load_beir(folder: str | Path, split: str = "test", *, name: str | None = None) -> BeirTask:
    """One split of a BEIR folder, checked: every qrel names a known query and a known document."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"BEIR folder not found: {folder}")
    qrels = load_qrels(qrels_path(folder, split))
    all_queries = load_queries(folder / QUERIES_FILE)
    corpus = load_corpus(folder / CORPUS_FILE)
    check_qrels(qrels, all_queries, {passage.id for passage in corpus}, where=str(qrels_path(folder, split)))
    queries = {query_id: all_queries[query_id] for query_id in qrels}
    return BeirTask(name or folder.name, split, corpus, queries, qrels)


def check_qrels(qrels: Qrels, queries: Mapping[str, str], document_ids: set[str], *, where: str) -> None:
    """Raise naming the first qrel whose query or document is unknown, and how many such there are."""
    missing_queries = [query_id for query_id in qrels if query_id not in queries]
    if missing_queries:
        raise BeirFormatError(
            f"{where}: query id {missing_queries[0]!r} is not in queries.jsonl "
            f"({len(missing_queries)} of {len(qrels)} judged queries missing)"
        )
    missing_docs = sorted({doc for judged in qrels.values() for doc in judged if doc not in document_ids})
    if missing_docs:
        raise BeirFormatError(
            f"{where}: corpus id {missing_docs[0]!r} is not in corpus.jsonl ({len(missing_docs)} judged ids missing)"
        )


def relevant(judged: Mapping[str, int]) -> set[str]:
    """The documents a query's judgements call relevant (score > 0)."""
    return {doc for doc, score in judged.items() if score > 0}


def write_corpus(passages: Iterable[Passage], path: str | Path) -> int:
    """Write documents in our corpus format (``{"id", "title", "contents"}``) for ``expandsearch index``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = write_wiki18_jsonl(passages, path)
    if count == 0:
        path.unlink()
        raise BeirFormatError(f"{path}: refusing to write an empty corpus")
    return count


# --- a BEIR-style task from HotpotQA ----------------------------------------------------------------------------


def hotpotqa_task(splits: Mapping[str, str | Path], *, name: str = "hotpotqa") -> dict[str, BeirTask]:
    """BEIR tasks from HotpotQA distractor files, one per split (e.g. ``{"train": f1, "test": f2}``).

    The corpus is the union of every file's context paragraphs (deduplicated by title and text, as
    ``data_prep.benchmarks.context_corpus`` builds it), shared by all splits so the documents one split's
    questions bring are distractors for the other's; qrels are each question's supporting paragraphs (score 1).
    """
    from data_prep.benchmarks import context_corpus, read_benchmark

    split_names: list[str] = []
    questions = []
    for split, path in splits.items():
        _, read = read_benchmark(path, split=split)
        split_names += [split] * len(read)
        questions += read
    corpus, examples = context_corpus(questions)
    tasks: dict[str, BeirTask] = {}
    for split in splits:
        chosen = [example for example, owner in zip(examples, split_names, strict=True) if owner == split]
        judged = [example for example in chosen if example.metadata.get("supporting_ids")]
        qrels = {example.id: dict.fromkeys(example.metadata["supporting_ids"], 1) for example in judged}
        queries = {example.id: example.question for example in judged}
        if not qrels:
            raise BeirFormatError(f"{splits[split]}: no question has supporting paragraphs")
        tasks[split] = BeirTask(name, split, corpus, queries, qrels)
    return tasks


def write_beir(tasks: Sequence[BeirTask], folder: str | Path) -> Path:
    """Write tasks sharing one corpus as a BEIR folder (corpus.jsonl, queries.jsonl, qrels/{split}.tsv)."""
    if not tasks:
        raise ValueError("no tasks to write")
    corpus = tasks[0].corpus
    if any(task.corpus is not corpus and task.corpus != corpus for task in tasks[1:]):
        raise ValueError("tasks written to one BEIR folder must share one corpus")
    folder = Path(folder)
    (folder / QRELS_DIR).mkdir(parents=True, exist_ok=True)
    with (folder / CORPUS_FILE).open("w", encoding="utf-8") as handle:
        for passage in corpus:
            handle.write(json.dumps({"_id": passage.id, "title": passage.title, "text": passage.text}) + "\n")
    queries: dict[str, str] = {}
    for task in tasks:
        queries.update(task.queries)
        with qrels_path(folder, task.split).open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
            writer.writerow(QRELS_HEADER)
            for query_id, judged in task.qrels.items():
                writer.writerows([query_id, doc, score] for doc, score in judged.items())
    with (folder / QUERIES_FILE).open("w", encoding="utf-8") as handle:
        for query_id, text in queries.items():
            handle.write(json.dumps({"_id": query_id, "text": text}) + "\n")
    return folder


# --- a pooled sub-task ------------------------------------------------------------------------------------------


def sample_query_ids(task: BeirTask, count: int, *, seed: int = 0) -> list[str]:
    """``count`` of the task's query ids drawn at random (all of them when it has no more), in qrels order."""
    if count < 1:
        raise ValueError(f"a pooled task needs at least one query, got {count}")
    ids = list(task.queries)
    if count >= len(ids):
        return ids
    chosen = set(random.Random(seed).sample(ids, count))
    return [query_id for query_id in ids if query_id in chosen]


def pooled_task(
    task: BeirTask, query_ids: Sequence[str], runs: Sequence[Mapping[str, Sequence[str]]], *, depth: int
) -> BeirTask:
    """The task cut down to ``query_ids`` and a pool of documents, TREC-style.

    The pool is every document the chosen queries' judgements name (relevant or not) and the top ``depth`` of
    each run's ranking for them (a run: query id → document ids, best first); the documents keep the corpus's
    order. Every retrieval condition is then scored on the pool alone, so their differences are paired and fair
    to each other, but the absolute scores are not the full corpus's: the documents no run ranked high are gone,
    and BM25's IDF and mean length are the pool's.
    """
    if depth < 1:
        raise ValueError(f"pool depth must be >= 1, got {depth}")
    chosen = task.with_queries(query_ids)
    pool: set[str] = set()
    for query_id, judged in chosen.qrels.items():
        pool.update(judged)
        for run in runs:
            pool.update(run.get(query_id, [])[:depth])
    corpus = [passage for passage in task.corpus if passage.id in pool]
    missing = pool - {passage.id for passage in corpus}
    if missing:
        raise BeirFormatError(f"run names document {sorted(missing)[0]!r}, which the corpus does not have")
    return replace(chosen, corpus=corpus)
