"""Atomic training checkpoints, and the RNG state a bit-exact resume needs.

A training run can be killed at any moment (preemption, OOM, Ctrl-C), including in the middle of writing a
checkpoint. So a checkpoint is built completely in a hidden sibling directory (``.tmp-step_0000010-<pid>``), its
files are fsynced, and only then is it renamed to ``step_0000010``: a ``step_*`` directory either is a complete
checkpoint or does not exist. Leftovers of a killed save are removed by the next save.

Layout::

    run_dir/checkpoints/step_0000010/state.pt    torch.save of the trainer's state mapping
    run_dir/checkpoints/step_0000010/meta.json   {"step": 10, "saved_at": "<ISO 8601 UTC>"}

``state.pt`` is read with ``torch.load(weights_only=True)``: loading a checkpoint never runs pickled code. That is
why :func:`capture_rng_state` stores the Python, NumPy, torch CPU and CUDA generator states as plain ints, floats,
lists and tensors rather than the objects their libraries return.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_DIR = "checkpoints"
"""Checkpoints live in ``run_dir/CHECKPOINT_DIR``."""

STATE_FILE = "state.pt"
META_FILE = "meta.json"

_STEP_DIR = re.compile(r"step_(\d+)")
# Hidden prefixes: never matched by _STEP_DIR, so a half-written or half-replaced checkpoint is never loaded.
_TMP_PREFIX = ".tmp-"
_OLD_PREFIX = ".old-"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or unreadable."""


def step_dir_name(step: int) -> str:
    """``step_0000010``: zero-padded so that names sort like steps."""
    return f"step_{step:07d}"


def save_checkpoint(run_dir: str | Path, step: int, state: Mapping[str, Any], *, keep_last: int = 2) -> Path:
    """Write ``state`` as the checkpoint of ``step`` atomically and keep only the ``keep_last`` newest checkpoints.

    Re-saving an existing step replaces it. The checkpoint just written is never pruned, even if older steps
    than it exist. Returns the checkpoint directory.
    """
    if keep_last < 1:
        raise ValueError(f"keep_last must be at least 1, got {keep_last}")
    if step < 0:
        raise ValueError(f"step must be non-negative, got {step}")
    root = Path(run_dir) / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale(root)
    name = step_dir_name(step)
    tmp = root / f"{_TMP_PREFIX}{name}-{os.getpid()}"
    tmp.mkdir()
    torch.save(dict(state), tmp / STATE_FILE)
    _fsync_file(tmp / STATE_FILE)
    meta = {"step": step, "saved_at": datetime.now(timezone.utc).isoformat()}
    (tmp / META_FILE).write_text(json.dumps(meta) + "\n", encoding="utf-8")
    _fsync_file(tmp / META_FILE)
    _fsync_dir(tmp)
    final = root / name
    _replace_dir(tmp, final)
    _prune(root, keep_last=keep_last, keep=final)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The complete checkpoint (``meta.json`` and ``state.pt`` present) with the highest step, or ``None``."""
    complete = [path for _, path in _step_dirs(Path(run_dir) / CHECKPOINT_DIR) if _is_complete(path)]
    return complete[-1] if complete else None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The state mapping saved in the checkpoint directory ``path`` (or its ``state.pt``), tensors on the CPU."""
    path = Path(path)
    file = path if path.is_file() else path / STATE_FILE
    if not file.is_file():
        raise CheckpointError(f"no checkpoint state at {file}")
    try:
        state = torch.load(file, weights_only=True, map_location="cpu")
    except Exception as error:  # torch raises several types (UnpicklingError, RuntimeError, EOFError) for bad files
        raise CheckpointError(f"cannot load checkpoint {file}: {error}") from error
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {file} holds a {type(state).__name__}, not a state dict")
    return state


def capture_rng_state() -> dict[str, Any]:
    """The state of every global generator a trainer draws from, in types ``torch.load(weights_only=True)`` accepts."""
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
        # uint32 keys as int64: a plain tensor type on every torch version, exact for values below 2**32.
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Set the global generators to a state from :func:`capture_rng_state` (CUDA only when both sides have it)."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
    npy = state["numpy"]
    keys = np.asarray(npy["keys"].cpu().numpy(), dtype=np.uint32)
    np.random.set_state((npy["name"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _step_dirs(root: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of the ``step_*`` directories under ``root``, by step."""
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP_DIR.fullmatch(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found)


def _is_complete(path: Path) -> bool:
    return (path / META_FILE).is_file() and (path / STATE_FILE).is_file()


def _remove_stale(root: Path) -> None:
    """Remove the hidden directories a killed save left behind."""
    for path in root.iterdir():
        if path.name.startswith((_TMP_PREFIX, _OLD_PREFIX)) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


def _replace_dir(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; an existing ``final`` is moved aside first and deleted only afterwards.

    ``os.replace`` cannot overwrite a non-empty directory, and deleting ``final`` before the rename would leave a
    window with no checkpoint of this step at all.
    """
    old = final.with_name(f"{_OLD_PREFIX}{final.name}-{os.getpid()}")
    had_old = final.exists()
    if had_old:
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    if had_old:
        shutil.rmtree(old, ignore_errors=True)


def _prune(root: Path, *, keep_last: int, keep: Path) -> None:
    """Delete ``step_*`` directories older than the ``keep_last`` newest, never ``keep``."""
    dirs = [path for _, path in _step_dirs(root)]
    for path in dirs[: max(len(dirs) - keep_last, 0)]:
        if path != keep:
            shutil.rmtree(path, ignore_errors=True)


def _fsync_file(path: Path) -> None:
    with path.open("rb") as file:
        os.fsync(file.fileno())


def _fsync_dir(path: Path) -> None:
    """Persist a directory's entries: a rename is durable only once its directory is synced (no-op if unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
