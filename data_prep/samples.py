"""Where the project's real data samples are: the one place the code knows it.

The samples (small real slices of HotpotQA, 2WikiMultihopQA, MuSiQue, NQ, TriviaQA, PopQA, Bamboogle, a
wiki-18 passage sample and BEIR SciFact; sources and licenses in ``sample_data/README.md``) ship inside the
``data_prep`` package, so an installed package finds them as well as a clone does. ``EXPANDSEARCH_SAMPLES``
points somewhere else instead (a folder of the same layout, e.g. a user's full datasets)::

    from data_prep.samples import sample_file
    hotpot = sample_file("hotpotqa/hotpotqa_distractor_dev300.jsonl")
"""

from __future__ import annotations

import os
from pathlib import Path

SAMPLES_ENV = "EXPANDSEARCH_SAMPLES"
"""Environment variable naming a samples folder to use instead of the packaged one."""

PACKAGED_SAMPLES = Path(__file__).resolve().parent / "sample_data"
"""The samples that ship with the package."""


def samples_dir() -> Path:
    """The samples folder: ``$EXPANDSEARCH_SAMPLES`` when set, else the packaged one."""
    override = os.environ.get(SAMPLES_ENV)
    return Path(override).expanduser() if override else PACKAGED_SAMPLES


def sample_file(relative: str | Path) -> Path:
    """``samples_dir() / relative``; raises FileNotFoundError naming the folder when it is not there."""
    path = samples_dir() / relative
    if not path.exists():
        raise FileNotFoundError(
            f"sample {relative} not found under {samples_dir()} (set {SAMPLES_ENV} to another folder?)"
        )
    return path
