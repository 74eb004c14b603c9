"""Where an evaluation keeps its results between runs: per-example jsonl files and the run's settings.

``OUT/<dataset>/<method>.jsonl`` gets one JSON line per finished question, written and flushed as soon as its
episode ends, so a run that is killed loses only the episodes in flight; the next run with the same arguments
reads the file back and plays only the questions it lacks. A kill can cut the last line short: that line is
dropped (the file truncated to its last complete line) and the question played again.

``OUT/run.json`` records what the results depend on (model, retriever, squeezer, episode settings, and which
file each dataset was read from). A run into a directory whose ``run.json`` disagrees is refused, so results of
two models or configurations are never mixed; datasets and methods may be added, and ``--limit`` grown, freely::

    settings = check_run_settings(out_dir, settings)   # RunMismatchError when the directory holds another run
    write_run_settings(out_dir, settings)
    with ResultsFile(out_dir / "nq" / "rag.jsonl") as results:
        results.append({"id": "q1", ...})
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import IO, Any

RUN_FILE = "run.json"
DATASETS_KEY = "datasets"
"""The settings key whose entries may grow between runs (dataset name → file); every other key must match."""
LATER_SETTINGS: dict[str, Any] = {"answer_fallback": "none"}
"""Settings added after runs were already recorded, with the value those runs had: a missing key compares as this
value, so a ``run.json`` written before the key existed resumes under the same settings and is refused under others."""


class RunMismatchError(ValueError):
    """The output directory holds results of a different run (another model, retriever or configuration)."""


class ResultsFile:
    """One dataset x method's per-example results, keyed by example id; appended one flushed line at a time."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.records: dict[str, dict[str, Any]] = {}
        self._handle: IO[str] | None = None
        if self.path.is_file():
            self._load()

    def _load(self) -> None:
        data = self.path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]  # bytes after the last newline: a line cut short by a kill
        for number, line in enumerate(complete.decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"{self.path}:{number}: not a JSON line ({error}); delete the line or the file"
                ) from error
            if not isinstance(record, dict) or "id" not in record:
                # without an id the line cannot say which question it answers, so resuming would play it again
                raise ValueError(f"{self.path}:{number}: not a result record (no 'id'); delete the line or the file")
            self.records[str(record["id"])] = record
        if len(complete) < len(data):
            with self.path.open("r+b") as handle:
                handle.truncate(len(complete))

    def __contains__(self, example_id: str) -> bool:
        return example_id in self.records

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one example's record as a line and flush it (to the OS: enough to survive the process dying)."""
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("a", encoding="utf-8")
        self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._handle.flush()
        self.records[str(record["id"])] = dict(record)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> ResultsFile:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def read_run_settings(out_dir: str | Path) -> dict[str, Any] | None:
    """The settings ``OUT/run.json`` records; None without one, RunMismatchError when it cannot be read."""
    path = Path(out_dir) / RUN_FILE
    if not path.is_file():
        return None
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise RunMismatchError(f"{path} is not valid JSON ({error}); delete it or use another --out") from error
    if not isinstance(recorded, dict) or not isinstance(recorded.get("settings"), dict):
        raise RunMismatchError(f"{path} holds no run settings (not written by this harness); use another --out")
    return dict(recorded["settings"])


def check_run_settings(out_dir: str | Path, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings to record for this run: ``settings`` merged with the directory's earlier datasets.

    Raises :class:`RunMismatchError` listing every difference when the directory holds another run's results,
    or per-example files without a ``run.json``, or when ``out_dir`` is a file.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():  # said before the policy loads, not when run.json is first written
        raise RunMismatchError(f"{out} is a file, not an output directory; use another --out")
    recorded = read_run_settings(out)
    if recorded is None:
        if out.is_dir() and any(out.glob("*/*.jsonl")):
            raise RunMismatchError(f"{out} holds result files but no {RUN_FILE}; use another --out or delete them")
        return dict(settings)
    differences = settings_differences({**LATER_SETTINGS, **recorded}, {**LATER_SETTINGS, **settings})
    if differences:
        raise RunMismatchError(
            f"{out} holds results of another run ({'; '.join(differences)}); use another --out or delete it"
        )
    return {**settings, DATASETS_KEY: {**recorded.get(DATASETS_KEY, {}), **settings.get(DATASETS_KEY, {})}}


def settings_differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``key: was X, now Y`` for every setting that differs (datasets only where both name the same one)."""
    old, new = _flatten(recorded), _flatten(current)
    shared_datasets = set(recorded.get(DATASETS_KEY, {})) & set(current.get(DATASETS_KEY, {}))
    differences = []
    for key in sorted(old.keys() | new.keys()):
        top, _, rest = key.partition(".")
        if top == DATASETS_KEY and rest.partition(".")[0] not in shared_datasets:  # datasets.<name>[.field]
            continue
        if old.get(key) != new.get(key):
            differences.append(f"{key}: was {old.get(key)!r}, now {new.get(key)!r}")
    return differences


def _flatten(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            # JSON round-trips tuples as lists; compare them the same way
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def write_run_settings(out_dir: str | Path, settings: Mapping[str, Any]) -> None:
    """Write ``OUT/run.json`` atomically (a kill mid-write leaves the previous one)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    temporary = out / f"{RUN_FILE}.tmp"
    temporary.write_text(json.dumps({"settings": settings, "updated": stamp}, indent=1) + "\n", encoding="utf-8")
    temporary.replace(out / RUN_FILE)
