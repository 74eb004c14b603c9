"""MetricsTracker writes jsonl/TensorBoard/wandb, survives kills and resumes; plot_metrics draws the curves."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from expandsearch.tracking import METRICS_FILE, PLOT_KEYS, MetricsTracker, plot_metrics, read_metrics


def test_log_writes_one_flushed_row_per_step(tmp_path: Path) -> None:
    with MetricsTracker(tmp_path, tensorboard=False) as tracker:
        tracker.log(1, {"loss": 0.5, "count": 3})
        tracker.log(2, {"loss": np.float32(0.25), "count": np.int64(4)})
        # Flushed: readable while the tracker is still open.
        assert read_metrics(tmp_path / METRICS_FILE) == [
            {"step": 1, "loss": 0.5, "count": 3},
            {"step": 2, "loss": 0.25, "count": 4},
        ]


def test_non_finite_values_become_null_and_non_numbers_are_rejected(tmp_path: Path) -> None:
    with MetricsTracker(tmp_path, tensorboard=False) as tracker:
        tracker.log(1, {"loss": math.nan, "grad": math.inf, "ok": 1.0})
        with pytest.raises(TypeError, match="'name'"):
            tracker.log(2, {"name": "abc"})
        with pytest.raises(ValueError, match="reserved"):
            tracker.log(2, {"step": 2})
    text = (tmp_path / METRICS_FILE).read_text()
    assert "NaN" not in text
    assert read_metrics(tmp_path / METRICS_FILE) == [{"step": 1, "loss": None, "grad": None, "ok": 1.0}]


def test_resume_drops_rows_after_the_checkpoint(tmp_path: Path) -> None:
    with MetricsTracker(tmp_path, tensorboard=False) as tracker:
        for step in range(1, 8):
            tracker.log(step, {"loss": float(step)})
    with MetricsTracker(tmp_path, tensorboard=False, resume_step=5) as tracker:
        tracker.log(6, {"loss": 60.0})
    rows = read_metrics(tmp_path / METRICS_FILE)
    assert [row["step"] for row in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[-1]["loss"] == 60.0
    assert not [path for path in tmp_path.iterdir() if ".tmp" in path.name]


def test_torn_last_line_is_skipped_and_repaired(tmp_path: Path) -> None:
    path = tmp_path / METRICS_FILE
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "lo')
    assert read_metrics(path) == [{"step": 1, "loss": 1.0}]
    with MetricsTracker(tmp_path, tensorboard=False) as tracker:  # appending after a torn line must not glue rows
        tracker.log(2, {"loss": 2.0})
    assert read_metrics(path) == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 2.0}]


def test_bad_middle_line_raises_with_line_number(tmp_path: Path) -> None:
    path = tmp_path / METRICS_FILE
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_metrics(path)


def test_tensorboard_event_file_holds_the_scalars(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with MetricsTracker(tmp_path) as tracker:
        tracker.log(1, {"actor/kl": 0.5, "bad": math.nan})
        tracker.log(2, {"actor/kl": 0.25})
    tb_dir = tmp_path / "tensorboard"
    assert list(tb_dir.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(tb_dir))
    events.Reload()
    assert "bad" not in events.Tags()["scalars"]
    assert [(event.step, event.value) for event in events.Scalars("actor/kl")] == [(1, 0.5), (2, 0.25)]


def test_wandb_disabled_mode_does_not_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_SILENT", "true")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # wandb may or may not warn in disabled mode; either is fine
        with MetricsTracker(tmp_path, tensorboard=False, wandb=True, run_name="t", config={"lr": 1e-3}) as tracker:
            tracker.log(1, {"loss": 1.0})
    assert read_metrics(tmp_path / METRICS_FILE) == [{"step": 1, "loss": 1.0}]


def _png_ok(path: Path) -> bool:
    return path.stat().st_size > 0 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_metrics_writes_pngs_and_skips_missing_panels(tmp_path: Path) -> None:
    rows = [{"step": s, "rollout/reward_mean": s / 10, "actor/kl": None if s == 2 else 0.1 * s} for s in range(1, 6)]
    eval_rows = [{"step": 5, "rollout/em": 0.4}]
    paths = plot_metrics(rows, tmp_path / "plots", eval_rows=eval_rows)
    names = [path.name for path in paths]
    # "exact match" falls back to reward_mean for training rows; entropy/turns/variants have no data.
    assert names == ["reward.png", "exact_match.png", "kl_to_reference.png", "training_curves.png"]
    assert all(_png_ok(path) for path in paths)
    assert set(PLOT_KEYS) >= {"reward", "entropy"}


def test_plot_metrics_with_no_data_writes_nothing(tmp_path: Path) -> None:
    assert plot_metrics([{"step": 1, "other": 1.0}], tmp_path, {"missing": ("nope",)}) == []
    assert list(tmp_path.iterdir()) == []


def test_metrics_file_written_as_plain_json(tmp_path: Path) -> None:
    with MetricsTracker(tmp_path, tensorboard=False) as tracker:
        tracker.log(3, {"a": 1.5})
    assert json.loads((tmp_path / METRICS_FILE).read_text()) == {"step": 3, "a": 1.5}


def test_missing_wandb_package_warns_once_and_continues(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from expandsearch import tracking

    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` raise ImportError
    monkeypatch.setattr(tracking, "_warned", set())
    with pytest.warns(RuntimeWarning, match="wandb logging disabled"):
        tracker = MetricsTracker(tmp_path, tensorboard=False, wandb=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second tracker must not warn again
        MetricsTracker(tmp_path, tensorboard=False, wandb=True).close()
    tracker.log(1, {"loss": 1.0})
    tracker.close()
    tracker.close()  # idempotent
    assert read_metrics(tmp_path / METRICS_FILE) == [{"step": 1, "loss": 1.0}]
