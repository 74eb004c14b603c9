"""Regressions, in the style of pyserini's two-click reproductions: YAML files of conditions with expected scores.

A regression file (``eval/regressions/*.yaml``) lists **conditions**. Each names the setup commands that make its
inputs (``expandsearch prepare qa …``, ``expandsearch index …``), the command that produces a results json
(``expandsearch eval-retrieval …``, ``expandsearch eval …``) and the scores expected in it (a dotted path into
the json → value, within a tolerance)::

    description: retrieval recall, question as the only query
    tolerance: 0.005                        # default for every expected value of the file
    env: {HF_HUB_OFFLINE: "1"}              # added to every command's environment
    conditions:
      - name: hotpotqa-bm25
        setup:
          - run: expandsearch prepare qa --dataset hotpotqa --input {samples}/hotpotqa --out {work}/data/hotpotqa
            creates: {work}/data/hotpotqa/corpus.jsonl     # step skipped when every path it creates exists
        command: expandsearch eval-retrieval --data {work}/data/hotpotqa --index … --out {out}
        expected:
          results.hotpotqa.recall@3: 0.6533
          results.hotpotqa.recall@10: {value: 0.8692, tolerance: 0.01}

:func:`load_regression_file` validates a file (unknown or missing keys, unknown placeholders: one
:class:`RegressionFileError` naming the file and the field); :func:`run_conditions` runs conditions through the
real ``expandsearch`` console script in subprocesses, one log file per command under ``WORK/logs/``, and checks
the results; :func:`markdown_report` writes what happened. ``expandsearch regress`` is the command line.
Placeholders: ``{samples}`` (the real data samples, :func:`data_prep.samples.samples_dir` unless told otherwise;
``{shared}`` is its old name, still accepted), ``{work}`` (the work folder), ``{out}`` (``{work}/runs/<condition>``,
emptied before the command runs so every score is measured afresh), ``{repo}``, ``{name}``; ``{{`` and ``}}`` are
literal braces.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import string
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

REPO_ROOT = Path(__file__).resolve().parents[1]
REGRESSIONS_DIR = Path(__file__).resolve().parent / "regressions"
"""The shipped regression files (package data: an installed ``eval`` has them too)."""
PLACEHOLDERS = ("samples", "work", "out", "repo", "name", "shared")
"""``shared`` is the old name of ``samples`` (the data once lay in a folder beside the repository), kept so that
regression files written for it still load."""
PROGRAM = "expandsearch"
LOG_TAIL_LINES = 15
FLOAT_SLACK = 1e-9
"""Added to every tolerance, so a value exactly at the edge is not failed by float rounding."""

Log = Callable[[str], None]


class RegressionFileError(ValueError):
    """A regression file that cannot be read or does not follow the schema (one message naming file and field)."""


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class SetupStep(BaseModel):
    """A command that makes a condition's inputs; skipped when every path in ``creates`` already exists."""

    model_config = ConfigDict(extra="forbid")

    run: str = Field(min_length=1)
    creates: Annotated[list[str], BeforeValidator(_as_list)] = []
    """Paths the step writes; name the one it writes last, so an interrupted step is run again."""


def _as_step(value: Any) -> Any:
    return {"run": value} if isinstance(value, str) else value


class Expected(BaseModel):
    """An expected score; ``tolerance`` defaults to the condition's, then the file's."""

    model_config = ConfigDict(extra="forbid")

    value: float
    tolerance: float | None = Field(default=None, ge=0)


def _as_expected(value: Any) -> Any:
    return {"value": value} if isinstance(value, (int, float)) and not isinstance(value, bool) else value


class Condition(BaseModel):
    """One reproducible measurement: setup, the command that writes a results json, the expected scores."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    """Unique across the files run together; names ``{out}`` and the log folder."""
    description: str = ""
    setup: list[Annotated[SetupStep, BeforeValidator(_as_step)]] = []
    command: str = Field(min_length=1)
    results: str = "{out}/results.json"
    expected: dict[str, Annotated[Expected, BeforeValidator(_as_expected)]] = Field(min_length=1)
    """Dotted path into the results json (list positions as numbers) → expected score."""
    tolerance: float | None = Field(default=None, ge=0)
    env: dict[str, str] = {}
    timeout: float = Field(default=3600, gt=0)
    """Seconds each of the condition's commands may run."""


class RegressionFile(BaseModel):
    """A YAML file of conditions; ``default: false`` keeps it out of the set run when no file is named."""

    model_config = ConfigDict(extra="forbid")

    description: str = ""
    default: bool = True
    tolerance: float | None = Field(default=None, ge=0)
    env: dict[str, str] = {}
    conditions: list[Condition]

    @model_validator(mode="after")
    def _check(self) -> RegressionFile:
        names = [condition.name for condition in self.conditions]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"condition name(s) {', '.join(twice)} used twice")
        for condition in self.conditions:
            for path, expected in condition.expected.items():
                if self.tolerance is None and condition.tolerance is None and expected.tolerance is None:
                    raise ValueError(
                        f"condition {condition.name}: {path} has no tolerance (set one for it, "
                        "the condition or the file)"
                    )
            for where, text in _templated_fields(condition):
                unknown = _placeholders(text) - set(PLACEHOLDERS)
                if unknown:
                    raise ValueError(
                        f"condition {condition.name}: {where} uses unknown placeholder(s) "
                        f"{', '.join(sorted(unknown))} (known: {', '.join(PLACEHOLDERS)})"
                    )
            commands = [("command", condition.command)]
            commands += [(f"setup step {number}", step.run) for number, step in enumerate(condition.setup, start=1)]
            for where, command in commands:
                _check_command(condition.name, where, command)
        return self


def _templated_fields(condition: Condition) -> list[tuple[str, str]]:
    fields = [("command", condition.command), ("results", condition.results)]
    for number, step in enumerate(condition.setup, start=1):
        fields.append((f"setup step {number}", step.run))
        fields.extend((f"setup step {number} creates", path) for path in step.creates)
    return fields


def _placeholders(text: str) -> set[str]:
    try:
        return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError as error:  # an unmatched brace
        raise ValueError(f"bad braces in {text!r} ({error}); write {{{{ and }}}} for literal braces") from error


def _check_command(condition: str, where: str, command: str) -> None:
    """ValueError unless ``command`` splits like a shell line (checked here, not halfway through a run) and its
    first word is ``expandsearch``."""
    try:
        words = shlex.split(command)
    except ValueError as error:  # an unclosed quote
        raise ValueError(f"condition {condition}: {where} does not split like a shell line ({error})") from None
    if not words or words[0] != PROGRAM:
        raise ValueError(f"condition {condition}: {where} must start with {PROGRAM!r}")


# --- loading ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedCondition:
    """A condition with the file it came from and the settings it inherits from that file."""

    condition: Condition
    source: Path
    file_env: Mapping[str, str]
    file_tolerance: float | None

    @property
    def name(self) -> str:
        return self.condition.name

    def tolerance(self, expected: Expected) -> float:
        for value in (expected.tolerance, self.condition.tolerance, self.file_tolerance):
            if value is not None:
                return value
        raise AssertionError("validated files give every expected value a tolerance")


def load_regression_file(path: str | Path) -> RegressionFile:
    """Parse and validate one YAML file; raises RegressionFileError (or FileNotFoundError) with a clear message."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"regression file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise RegressionFileError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise RegressionFileError(f"{path}: expected a mapping with a 'conditions' list at the top")
    try:
        return RegressionFile.model_validate(data)
    except ValidationError as error:
        raise RegressionFileError(f"{path}: {_validation_message(error)}") from error


def _validation_message(error: ValidationError) -> str:
    """Pydantic's errors as ``conditions.0.expected: Field required; …`` (dotted location, then the reason)."""
    parts = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"] if not str(part).startswith("function-"))
        reason = {"extra_forbidden": "unknown field", "missing": "missing field"}.get(item["type"], item["msg"])
        parts.append(f"{location}: {reason}" if location else reason)
    return "; ".join(parts)


def default_files() -> list[Path]:
    """The shipped files of the default set: ``eval/regressions/*.yaml`` without ``default: false``."""
    return [path for path in shipped_files() if load_regression_file(path).default]


def shipped_files() -> list[Path]:
    return sorted(REGRESSIONS_DIR.glob("*.yaml"))


def select_conditions(files: Sequence[Path], only: Sequence[str] = ()) -> list[LoadedCondition]:
    """The conditions of ``files`` in order (only those named in ``only``, when given); names must be unique."""
    loaded: list[LoadedCondition] = []
    for path in files:
        regression = load_regression_file(path)
        loaded.extend(
            LoadedCondition(condition, path, regression.env, regression.tolerance)
            for condition in regression.conditions
        )
    seen: dict[str, Path] = {}
    for item in loaded:
        if item.name in seen:
            raise RegressionFileError(f"condition {item.name} is in both {seen[item.name]} and {item.source}")
        seen[item.name] = item.source
    if not only:
        return loaded
    missing = sorted(set(only) - set(seen))
    if missing:
        raise RegressionFileError(f"no condition named {', '.join(missing)} in {', '.join(map(str, files))}")
    return [item for item in loaded if item.name in only]


# --- running ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One expected score against what the results hold (``got`` is None when it could not be read)."""

    path: str
    expected: float
    tolerance: float
    got: float | None
    problem: str = ""

    @property
    def ok(self) -> bool:
        return self.got is not None and abs(self.got - self.expected) <= self.tolerance + FLOAT_SLACK


@dataclass
class ConditionResult:
    """What running one condition gave: its checks, or the error that stopped it before any check."""

    name: str
    source: Path
    checks: list[Check] = field(default_factory=list)
    error: str = ""
    steps_run: int = 0
    steps_reused: int = 0
    setup_seconds: float = 0.0
    command_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.error and all(check.ok for check in self.checks)


@dataclass(frozen=True)
class RunSettings:
    """Where conditions run: the work folder (setup outputs, ``runs/``, ``logs/``) and the real data samples."""

    work: Path
    samples: Path

    def values(self, name: str) -> dict[str, str]:
        return {
            "samples": str(self.samples),
            "shared": str(self.samples),
            "work": str(self.work),
            "out": str(self.out_dir(name)),
            "repo": str(REPO_ROOT),
            "name": name,
        }

    def out_dir(self, name: str) -> Path:
        return self.work / "runs" / name

    def log_dir(self, name: str) -> Path:
        return self.work / "logs" / name

    def path(self, template: str, name: str) -> Path:
        """A ``creates`` or ``results`` path of condition ``name``, filled in; a relative one is relative to the
        work folder, where the commands run."""
        return self.work / template.format_map(self.values(name))


class CommandFailed(Exception):
    """A setup step or the condition's command exited non-zero or ran out of time."""


def console_script() -> list[str]:
    """The ``expandsearch`` of this interpreter's environment, else ``python -m expandsearch``."""
    script = Path(sys.executable).parent / PROGRAM
    if script.is_file():
        return [str(script)]
    found = shutil.which(PROGRAM)
    return [found] if found else [sys.executable, "-m", PROGRAM]


def render_command(command: str, values: Mapping[str, str]) -> list[str]:
    """Split like a shell, then fill placeholders word by word (a path with spaces stays one argument)."""
    words = [word.format_map(values) for word in shlex.split(command)]
    return [*console_script(), *words[1:]]


def run_logged(argv: Sequence[str], log_path: Path, env: Mapping[str, str], timeout: float, cwd: Path) -> None:
    """Run a command with its output in ``log_path``; CommandFailed (with the log's tail) when it fails."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w", encoding="utf-8") as log:
        log.write("$ " + shlex.join(argv) + "\n")
        log.flush()
        try:
            returncode = subprocess.run(
                list(argv), stdout=log, stderr=subprocess.STDOUT, env=dict(env), cwd=cwd, timeout=timeout, check=False
            ).returncode
        except subprocess.TimeoutExpired:
            raise CommandFailed(f"timed out after {timeout:.0f} s (log: {log_path})") from None
    if returncode != 0:
        raise CommandFailed(f"exit status {returncode} (log: {log_path})\n{_tail(log_path)}")


def _tail(path: Path) -> str:
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()[-LOG_TAIL_LINES:]
    return "\n".join(f"    | {line}" for line in lines)


def lookup(data: Any, path: str) -> Any:
    """The value at a dotted path; a key holding dots is matched whole (``results.nq.v2.recall@3``).

    Raises KeyError naming the part of the path that was not found.
    """
    parts = path.split(".")
    position = 0
    while position < len(parts):
        data, position = _step(data, parts, position, path)
    return data


def _step(data: Any, parts: list[str], position: int, path: str) -> tuple[Any, int]:
    if isinstance(data, list):
        try:
            return data[int(parts[position])], position + 1
        except (ValueError, IndexError):
            raise KeyError(f"{path}: no list item {parts[position]!r}") from None
    if isinstance(data, dict):
        # Longest key first, so a key that holds dots wins over a shorter one that happens to exist.
        for end in range(len(parts), position, -1):
            key = ".".join(parts[position:end])
            if key in data:
                return data[key], end
        known = ", ".join(sorted(map(str, data))[:12])
        raise KeyError(f"{path}: no key {parts[position]!r} (keys there: {known})")
    raise KeyError(f"{path}: {'.'.join(parts[:position])} is a {type(data).__name__}, not a mapping or list")


def check_results(item: LoadedCondition, results_path: Path) -> list[Check]:
    """Each expected score of the condition against the results json (a missing file or key is a failed check)."""
    condition = item.condition
    try:
        data = json.loads(results_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        problem = f"cannot read {results_path}: {error}"
        return [
            Check(path, expected.value, item.tolerance(expected), None, problem)
            for path, expected in condition.expected.items()
        ]
    return [_check_one(data, path, expected, item.tolerance(expected)) for path, expected in condition.expected.items()]


def _check_one(data: Any, path: str, expected: Expected, tolerance: float) -> Check:
    try:
        value = lookup(data, path)
    except KeyError as error:
        return Check(path, expected.value, tolerance, None, str(error.args[0]))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return Check(path, expected.value, tolerance, None, f"{path} holds {value!r}, not a number")
    return Check(path, expected.value, tolerance, float(value))


def run_condition(item: LoadedCondition, settings: RunSettings, log: Log = print) -> ConditionResult:
    """Setup (reusing outputs that exist), the command in a fresh ``{out}``, then the checks."""
    condition = item.condition
    values = settings.values(item.name)
    env = {**os.environ, **item.file_env, **condition.env}
    result = ConditionResult(item.name, item.source)
    logs = settings.log_dir(item.name)
    settings.work.mkdir(parents=True, exist_ok=True)
    try:
        started = time.perf_counter()
        for number, step in enumerate(condition.setup, start=1):
            creates = [settings.path(path, item.name) for path in step.creates]
            if creates and all(path.exists() for path in creates):
                result.steps_reused += 1
                continue
            log(f"  setup {number}/{len(condition.setup)}: {step.run.format_map(values)}")
            argv = render_command(step.run, values)
            run_logged(argv, logs / f"setup-{number}.log", env, condition.timeout, settings.work)
            result.steps_run += 1
        result.setup_seconds = time.perf_counter() - started
        out = settings.out_dir(item.name)
        shutil.rmtree(out, ignore_errors=True)  # a fresh measurement: never read a previous run's results
        started = time.perf_counter()
        argv = render_command(condition.command, values)
        run_logged(argv, logs / "command.log", env, condition.timeout, settings.work)
        result.command_seconds = time.perf_counter() - started
    except CommandFailed as error:
        where = "command" if result.steps_run + result.steps_reused == len(condition.setup) else "setup"
        result.error = f"{where} failed: {error}"
        return result
    result.checks = check_results(item, settings.path(condition.results, item.name))
    return result


def run_conditions(items: Sequence[LoadedCondition], settings: RunSettings, log: Log = print) -> list[ConditionResult]:
    """Run every condition in order (a failing one does not stop the others), printing OK / FAIL lines."""
    results = []
    for item in items:
        log(f"== {item.name} ({item.source.name})")
        result = run_condition(item, settings, log)
        for line in result_lines(result):
            log(line)
        results.append(result)
    return results


def result_lines(result: ConditionResult) -> list[str]:
    """``OK`` / ``FAIL`` per expected score (expected ± tolerance vs got), or the error that stopped it."""
    timing = (
        f"  setup {result.setup_seconds:.1f} s ({result.steps_run} run, {result.steps_reused} reused), "
        f"command {result.command_seconds:.1f} s"
    )
    if result.error:
        return [f"FAIL {result.name}: {result.error}"]
    lines = [timing]
    for check in result.checks:
        got = f"{check.got:.4f}" if check.got is not None else f"- ({check.problem})"
        status = "OK  " if check.ok else "FAIL"
        lines.append(
            f"{status} {result.name}  {check.path}  expected {check.expected:.4f} ± {check.tolerance:g}  got {got}"
        )
    return lines


# --- report ----------------------------------------------------------------------------------------------------


def machine_description() -> str:
    """The machine in words (timings in a report belong to it): OS, CPU model, cores, Python."""
    return (
        f"{platform.system()} {platform.release()}, {_cpu_model()}, {os.cpu_count()} CPU cores, "
        f"Python {platform.python_version()}"
    )


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def markdown_report(results: Sequence[ConditionResult], settings: RunSettings, seconds: float) -> str:
    """A markdown report: the summary, one table row per expected score, and each failure's reason."""
    passed = sum(result.ok for result in results)
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    lines = [
        "# Regression report",
        "",
        f"{passed} of {len(results)} conditions OK, {seconds:.1f} s in all, finished {when}.",
        f"Machine: {machine_description()}. Work folder: `{settings.work}`; samples: `{settings.samples}`.",
        "",
        "| condition | file | metric | expected | tolerance | got | status |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for result in results:
        for check in result.checks:
            got = "-" if check.got is None else f"{check.got:.4f}"
            status = "OK" if check.ok else "FAIL"
            lines.append(
                f"| {result.name} | {result.source.name} | `{check.path}` | {check.expected:.4f} | "
                f"{check.tolerance:g} | {got} | {status} |"
            )
        if result.error:
            lines.append(f"| {result.name} | {result.source.name} | - | - | - | - | FAIL |")
    lines += ["", "| condition | setup s | steps run / reused | command s |", "|---|---:|---:|---:|"]
    lines += [
        f"| {result.name} | {result.setup_seconds:.1f} | {result.steps_run} / {result.steps_reused} | "
        f"{result.command_seconds:.1f} |"
        for result in results
    ]
    failures = [_failure_text(result) for result in results if not result.ok]
    if failures:
        lines += ["", "## Failures", "", *failures]
    return "\n".join(lines) + "\n"


def _failure_text(result: ConditionResult) -> str:
    if result.error:
        return f"- **{result.name}**: {result.error.splitlines()[0]}"
    problems = [
        f"`{check.path}` {check.problem or f'got {check.got:.4f}, expected {check.expected:.4f} ± {check.tolerance:g}'}"
        for check in result.checks
        if not check.ok
    ]
    return f"- **{result.name}**: " + "; ".join(problems)
