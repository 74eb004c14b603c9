"""The trace browser's data: the runs, methods and episodes in ``expandsearch eval`` output folders.

It reads only what the evaluation already writes: ``RUN/<dataset>/<method>.jsonl`` (one record per question,
``eval.records``) and ``RUN/run.json`` (the run's settings) — for ``expandsearch train`` runs, the held-out rows
under ``RUN_DIR/eval/held_out/``. Folders are searched anew on every listing, so a running evaluation's new lines
show up; files are parsed once per change (size and mtime)::

    library = TraceLibrary([Path("runs/eval"), Path("runs/demo/eval")])
    library.runs()                                             # runs → datasets → methods, with counts and EM
    library.questions(run, "hotpotqa", "expandsearch", correct=False, question_type="bridge")
    library.episode(run, "hotpotqa", "expandsearch", "hotpotqa/17")
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Any

from eval.store import RUN_FILE, read_run_settings
from expandsearch.ui.views import PassageText, episode_view

MAX_DEPTH = 4
"""How deep below a traces folder results files are looked for."""
ROW_KEYS = ("id", "question", "golds", "type", "prediction", "em", "f1", "searches", "variants", "turns", "termination")
"""A question's columns in the listing."""


class TraceNotFound(KeyError):
    """No such run, results file or question."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class ResultsFileRef:
    run: str
    dataset: str
    method: str
    path: Path


class TraceLibrary:
    """Evaluation results under some folders, listed and read for the browser."""

    def __init__(
        self, roots: Sequence[Path], passage_text: PassageText | None = None, corpus_sha256: str | None = None
    ) -> None:
        """``passage_text`` looks up the passage texts traces leave out, in the index of corpus ``corpus_sha256``:
        used for a run whose run.json names no corpus or that one (ids of another corpus name other passages)."""
        self.roots = [Path(root) for root in roots]
        self.passage_text = passage_text
        self.corpus_sha256 = corpus_sha256
        self._cache: dict[Path, tuple[tuple[int, int], list[dict[str, Any]]]] = {}

    def files(self) -> dict[tuple[str, str, str], ResultsFileRef]:
        """Every results file: (run, dataset, method) → where it is."""
        found: dict[tuple[str, str, str], ResultsFileRef] = {}
        for root in self.roots:
            for path in _jsonl_files(root):
                run_dir = path.parent.parent
                ref = ResultsFileRef(str(run_dir), path.parent.name, path.stem, path)
                found[(ref.run, ref.dataset, ref.method)] = ref
        return found

    def runs(self) -> list[dict[str, Any]]:
        """The runs, each with its settings' headline and its datasets x methods (questions and EM)."""
        by_run: dict[str, list[dict[str, Any]]] = {}
        for ref in sorted(self.files().values(), key=lambda ref: (ref.run, ref.dataset, ref.method)):
            records = self._records(ref.path)
            if not records:
                continue
            entry = {"dataset": ref.dataset, "method": ref.method, "questions": len(records), "em": _mean_em(records)}
            by_run.setdefault(ref.run, []).append(entry)
        return [{"run": run, "settings": _headline(Path(run)), "results": results} for run, results in by_run.items()]

    def questions(
        self,
        run: str,
        dataset: str,
        method: str,
        *,
        correct: bool | None = None,
        question_type: str | None = None,
        text: str | None = None,
    ) -> dict[str, Any]:
        """The questions of one results file that pass the filters, and the question types it has."""
        records = self._records(self._ref(run, dataset, method).path)
        types = sorted({str(record.get("type")) for record in records if record.get("type") is not None})
        needle = (text or "").strip().lower()
        rows = [
            {key: record.get(key) for key in ROW_KEYS}
            for record in records
            if (correct is None or (float(record.get("em") or 0.0) > 0) == correct)
            and (question_type is None or record.get("type") == question_type)
            and (not needle or needle in str(record.get("question", "")).lower())
        ]
        return {"total": len(records), "types": types, "rows": rows}

    def episode(self, run: str, dataset: str, method: str, question_id: str) -> dict[str, Any]:
        """One question's record with its trace as the live view shows it, and the run's other methods that
        answered the same question (for the side-by-side comparison)."""
        for record in self._records(self._ref(run, dataset, method).path):
            if str(record.get("id")) == question_id:
                return {
                    "run": run,
                    "dataset": dataset,
                    "method": method,
                    "record": {key: value for key, value in record.items() if key != "trace"},
                    "turns": episode_view(record.get("trace") or [], self._texts_for(run)),
                    "other_methods": self._methods_with(run, dataset, question_id, besides=method),
                }
        raise TraceNotFound(f"no question {question_id!r} in {run}/{dataset}/{method}")

    def _texts_for(self, run: str) -> PassageText | None:
        recorded = _headline(Path(run)).get("corpus_sha256")
        return self.passage_text if recorded in (None, self.corpus_sha256) else None

    def _methods_with(self, run: str, dataset: str, question_id: str, besides: str) -> list[str]:
        methods = []
        for (file_run, file_dataset, method), ref in sorted(self.files().items()):
            same_question = (file_run, file_dataset) == (run, dataset) and method != besides
            if same_question and any(str(record.get("id")) == question_id for record in self._records(ref.path)):
                methods.append(method)
        return methods

    def _ref(self, run: str, dataset: str, method: str) -> ResultsFileRef:
        ref = self.files().get((run, dataset, method))
        if ref is None:  # only files found under the roots are ever read: no path from a request is opened
            raise TraceNotFound(f"no results for run {run!r}, dataset {dataset!r}, method {method!r}")
        return ref

    def _records(self, path: Path) -> list[dict[str, Any]]:
        stat = path.stat()
        stamp = (stat.st_size, stat.st_mtime_ns)
        cached = self._cache.get(path)
        if cached is None or cached[0] != stamp:
            cached = (stamp, list(_read_records(path)))
            self._cache[path] = cached
        return cached[1]


def _jsonl_files(root: Path) -> Iterator[Path]:
    """Results files under ``root``: ``*.jsonl`` whose first line is an evaluation record (an id and a trace)."""
    if not root.is_dir():
        return
    for path in sorted(root.rglob("*.jsonl")):
        if len(path.relative_to(root).parts) <= MAX_DEPTH and _is_results_file(path):
            yield path


def _is_results_file(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8") as handle:
            first = json.loads(handle.readline() or "{}")
    except (OSError, ValueError):
        return False
    return isinstance(first, dict) and "id" in first and "trace" in first


def _read_records(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a results file; a line cut short (a run still writing, or killed) is skipped."""
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and "id" in record:
                yield record


def _mean_em(records: Sequence[Mapping[str, Any]]) -> float:
    return fmean(float(record.get("em") or 0.0) for record in records)


def _headline(run_dir: Path) -> dict[str, Any]:
    """The settings a reader needs to tell runs apart: model, retriever, squeezer (from run.json, if any)."""
    if not (run_dir / RUN_FILE).is_file():
        return {}
    try:
        settings = read_run_settings(run_dir) or {}
    except ValueError:
        return {}
    model = _section(settings, "model")
    retriever = _section(settings, "retriever")
    return {
        "model": model.get("path") or model.get("name"),
        "retriever": retriever.get("url") or f"{retriever.get('kind')} index {retriever.get('index')}",
        "corpus_sha256": retriever.get("corpus_sha256"),
        "squeezer": settings.get("squeezer"),
    }


def _section(settings: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = settings.get(key)
    return value if isinstance(value, dict) else {}
