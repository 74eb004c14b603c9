"""A non-editable install carries what the packages read at run time (the default config, the regressions, the
real samples): a wheel is built from this checkout, unpacked outside it, and its ``expandsearch`` runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # A copy of the checkout: setuptools' build/ and egg-info scratch folders stay out of the working tree (and a
    # stale build/ can never leak deleted files into the wheel). --no-build-isolation: the venv's setuptools builds
    # it, no package index needed.
    source = out / "source"
    ignored = shutil.ignore_patterns(".git", ".venv", "build", "runs", "*.egg-info", "__pycache__", ".*_cache")
    shutil.copytree(REPO, source, ignore=ignored)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out)]
    subprocess.run([*command, str(source)], check=True, capture_output=True, text=True, timeout=300)
    (built,) = out.glob("expandsearch-*.whl")
    return built


def test_the_wheel_holds_the_package_data(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in (
        "train_configs/tiny_cpu.yaml",
        "train_configs/smollm2_hotpotqa_cpu.yaml",
        "eval/regressions/retrieval.yaml",
        "data_prep/sample_data/README.md",
        "data_prep/sample_data/hotpotqa/hotpotqa_distractor_dev300.jsonl",
        "expandsearch/ui/static/index.html",
        "expandsearch/ui/static/app.js",
    ):
        assert expected in names, f"{expected} missing from {wheel.name}"


@pytest.mark.slow
def test_the_installed_wheel_shows_its_default_config(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    install = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--no-index",
        "-q",
        "--target",
        str(site),
        str(wheel),
    ]
    subprocess.run(install, check=True, capture_output=True, text=True, timeout=300)
    # The unpacked wheel comes first on sys.path (before the checkout's editable finder); the dependencies are the
    # venv's. It runs from an empty folder, so nothing is found relative to the checkout.
    env = {**os.environ, "PYTHONPATH": str(site)}
    probe = "import train_configs, data_prep.samples as s; print(train_configs.__file__); print(s.samples_dir())"
    where = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(str(site)) for line in where.stdout.split()), where.stdout
    shown = subprocess.run(
        [sys.executable, "-m", "expandsearch.cli", "train", "--show-config"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    assert "run_dir = runs/demo" in shown.stdout
    assert "data.world.size" in shown.stdout
