"""Metrics logging of training runs: a JSON-lines file always, TensorBoard and Weights & Biases optionally, and plots.

``run_dir/metrics.jsonl`` is the record of a run: one JSON object per step, ``{"step": 10, "actor/kl": 0.01, ...}``,
flushed after every row so that a killed run loses at most the row being written. It needs no service and is what
:func:`plot_metrics` and the tests read. TensorBoard (``run_dir/tensorboard``) and wandb are views of the same
numbers.

Resuming: a run killed at step 57 with its last checkpoint at step 50 has logged rows 51..57 that the resumed run
will log again. ``MetricsTracker(resume_step=50)`` therefore first drops the rows after step 50, so the file holds
one row per step. The wandb run id is kept in ``run_dir/wandb_run_id`` so that a resumed run continues the same
wandb run.

Non-finite values (a NaN loss) are written to the JSON file as ``null`` (JSON has no NaN) and skipped by
TensorBoard and wandb; values that are not numbers are a caller bug and raise ``TypeError``.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
import uuid
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
WANDB_ID_FILE = "wandb_run_id"

PLOT_KEYS: dict[str, tuple[str, ...]] = {
    "reward": ("rollout/reward_mean",),
    "exact match": ("eval/em", "rollout/em", "rollout/reward_mean"),
    "KL to reference": ("actor/kl",),
    "entropy": ("actor/entropy",),
    "turns": ("rollout/turns",),
    "variants per search": ("rollout/variants_per_search",),
}
"""Panel title -> candidate metric keys; a panel plots, per source (training rows, evaluation rows), the first
candidate that any row of that source has: "exact match" shows the held-out greedy EM of the evaluations during
training as markers over the sampled training EM (the reward, when the reward is EM)."""

_warned: set[str] = set()  # optional backends already warned about: one warning per process, not one per run


class MetricsTracker:
    """Writes each step's metrics to ``run_dir/metrics.jsonl`` and to TensorBoard / wandb when enabled."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        tensorboard: bool = True,
        wandb: bool = False,
        wandb_project: str = "expandsearch",
        run_name: str | None = None,
        config: Mapping[str, Any] | None = None,
        resume_step: int | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / METRICS_FILE
        if resume_step is not None:
            _truncate_after(self.path, resume_step)
        else:
            _repair_tail(self.path)
        self._file = self.path.open("a", encoding="utf-8")
        self._writer = _open_tensorboard(self.run_dir) if tensorboard else None
        self._wandb_run = _open_wandb(self.run_dir, wandb_project, run_name, config) if wandb else None

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Record ``metrics`` of ``step``: ints and floats (NumPy scalars too); NaN and inf become ``null``."""
        if self._file.closed:
            raise RuntimeError("MetricsTracker is closed")
        values = _check_metrics(step, metrics)
        row = {"step": step, **{key: value if _finite(value) else None for key, value in values.items()}}
        self._file.write(json.dumps(row, allow_nan=False) + "\n")
        self._file.flush()
        finite = {key: value for key, value in values.items() if _finite(value)}
        if self._writer is not None:
            for key, value in finite.items():
                self._writer.add_scalar(key, value, global_step=step)
        if self._wandb_run is not None and finite:
            self._wandb_run.log(finite, step=step)

    def close(self) -> None:
        """Flush and close every backend; calling it again does nothing."""
        if not self._file.closed:
            self._file.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None

    def __enter__(self) -> MetricsTracker:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` file; a torn last line (a killed writer) is skipped.

    Any other line that is not a JSON object raises ``ValueError`` naming its line number: that is corruption,
    not an interrupted write.
    """
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        row = _parse_row(line)
        if row is None:
            # Only the final piece of the file, with no newline after it, can be a row cut short by a kill.
            if number == len(lines):
                continue
            raise ValueError(f"{path}: line {number} is not a JSON object: {line[:80]!r}")
        rows.append(row)
    return rows


def plot_metrics(
    rows: Sequence[Mapping[str, Any]],
    out_dir: str | Path,
    panels: Mapping[str, Sequence[str]] = PLOT_KEYS,
    *,
    eval_rows: Sequence[Mapping[str, Any]] = (),
) -> list[Path]:
    """Plot training curves against ``step``: one PNG per panel with data, then a ``training_curves.png`` grid.

    A panel plots the first of its candidate keys that any row has; ``eval_rows`` (e.g. periodic evaluations)
    are drawn as markers on the same panel with the first candidate they have. Panels without data are skipped.
    Returns the written paths (empty when no panel has data).
    """
    # Figure + Agg canvas directly, not pyplot: no global backend switch, no GUI, safe in threads and tests.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    series = {title: _panel_series(rows, eval_rows, keys) for title, keys in panels.items()}
    series = {title: data for title, data in series.items() if data}
    written: list[Path] = []
    for title, data in series.items():
        figure = Figure(figsize=(6, 4))
        FigureCanvasAgg(figure)
        _draw_panel(figure.add_subplot(), title, data)
        figure.tight_layout()
        written.append(out / f"{_slug(title)}.png")
        figure.savefig(written[-1], dpi=100)
    if series:
        written.append(_draw_grid(series, out / "training_curves.png", FigureCanvasAgg, Figure))
    return written


# A panel's data: label ("train"/"eval") -> (metric key, steps, values).
_Series = dict[str, tuple[str, list[float], list[float]]]


def _panel_series(
    rows: Sequence[Mapping[str, Any]], eval_rows: Sequence[Mapping[str, Any]], keys: Sequence[str]
) -> _Series:
    data: _Series = {}
    for label, source in (("train", rows), ("eval", eval_rows)):
        key = next((key for key in keys if any(_plottable(row.get(key)) for row in source)), None)
        if key is None:
            continue
        points = [(row["step"], row[key]) for row in source if _plottable(row.get("step")) and _plottable(row.get(key))]
        if points:
            points.sort()
            data[label] = (key, [float(x) for x, _ in points], [float(y) for _, y in points])
    return data


def _draw_panel(axes: Any, title: str, data: _Series) -> None:
    for label, (key, steps, values) in data.items():
        style = {"marker": "o", "linestyle": "--"} if label == "eval" else {}
        axes.plot(steps, values, label=f"{label}: {key}", **style)
    axes.set_title(title)
    axes.set_xlabel("step")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")


def _draw_grid(series: Mapping[str, _Series], path: Path, canvas: Any, figure_type: Any) -> Path:
    columns = min(3, len(series))
    rows = math.ceil(len(series) / columns)
    figure = figure_type(figsize=(5 * columns, 3.5 * rows))
    canvas(figure)
    for index, (title, data) in enumerate(series.items(), start=1):
        _draw_panel(figure.add_subplot(rows, columns, index), title, data)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_") or "panel"


def _plottable(value: Any) -> bool:
    return _is_number(value) and _finite(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return math.isfinite(value)


def _check_metrics(step: int, metrics: Mapping[str, Any]) -> dict[str, int | float]:
    """Validated copy of ``metrics`` as plain Python numbers (NumPy scalars are not JSON serializable)."""
    if not isinstance(step, int) or isinstance(step, bool):
        raise TypeError(f"step must be an int, got {type(step).__name__}")
    values: dict[str, int | float] = {}
    for key, value in metrics.items():
        if key == "step":
            raise ValueError("'step' is reserved for the step number; pass it as the step argument")
        if not _is_number(value):
            raise TypeError(f"metric {key!r} must be a number, got {type(value).__name__} (use .item() for tensors)")
        values[key] = int(value) if isinstance(value, numbers.Integral) else float(value)
    return values


def _parse_row(line: str) -> dict[str, Any] | None:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    return row if isinstance(row, dict) else None


def _truncate_after(path: Path, step: int) -> None:
    """Keep only the rows with ``step <= step``, atomically (a kill during the rewrite leaves the old file)."""
    if not path.exists():
        return
    kept = [row for row in read_metrics(path) if row.get("step", math.inf) <= step]
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as file:
        file.writelines(json.dumps(row, allow_nan=False) + "\n" for row in kept)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)


def _repair_tail(path: Path) -> None:
    """Make a file that a killed writer left without a final newline appendable again.

    A complete last row gets its newline; a torn one is cut off. Otherwise the next row would be glued onto it
    and the file would hold a corrupt line in the middle.
    """
    if not path.exists():
        return
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    start = data.rfind(b"\n") + 1
    with path.open("r+b") as file:
        if _parse_row(data[start:].decode("utf-8", errors="replace")) is not None:
            file.seek(0, os.SEEK_END)
            file.write(b"\n")
        else:
            file.truncate(start)


def _warn_once(name: str, message: str) -> None:
    if name not in _warned:
        _warned.add(name)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _open_tensorboard(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        _warn_once("tensorboard", f"TensorBoard logging disabled: {error}")
        return None
    return SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR))


def _open_wandb(run_dir: Path, project: str, run_name: str | None, config: Mapping[str, Any] | None) -> Any:
    """A wandb run (mode from ``WANDB_MODE``), resuming the run of an earlier start in the same ``run_dir``."""
    try:
        import wandb
    except ImportError as error:
        _warn_once("wandb", f"wandb logging disabled, the package is not importable: {error}")
        return None
    id_file = run_dir / WANDB_ID_FILE
    if id_file.exists():
        run_id = id_file.read_text(encoding="utf-8").strip()
    else:
        run_id = uuid.uuid4().hex[:8]  # wandb's own id format: 8 lowercase alphanumerics
        id_file.write_text(run_id + "\n", encoding="utf-8")
    return wandb.init(
        project=project,
        name=run_name,
        config=dict(config or {}),
        dir=str(run_dir),
        id=run_id,
        resume="allow",
    )
