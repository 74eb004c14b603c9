"""The shipped training configurations: YAML files, installed as package data of this package.

They live in a package (not a bare folder beside the code) so that a non-editable install of ``expandsearch``
finds its default config too; code asks for one by name instead of building a path from its own location::

    from train_configs import config_path
    config_path("tiny_cpu.yaml")   # also "tiny_cpu", or a file in a subfolder: "verl/agent_loop.yaml"
"""

from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
"""The folder that holds the shipped YAML files (the checkout's ``train_configs/`` or the installed package)."""


def shipped_configs() -> list[str]:
    """Every shipped config, as the name :func:`config_path` takes (relative posix path with ``.yaml``)."""
    return sorted(path.relative_to(CONFIG_DIR).as_posix() for path in CONFIG_DIR.rglob("*.yaml"))


def config_path(name: str) -> Path:
    """The shipped config ``name`` (the ``.yaml`` suffix may be left out); FileNotFoundError naming the shipped
    ones when there is no such file."""
    relative = name if name.endswith((".yaml", ".yml")) else f"{name}.yaml"
    path = CONFIG_DIR / relative
    if not path.is_file():
        raise FileNotFoundError(f"no shipped config {name!r} in {CONFIG_DIR} (shipped: {', '.join(shipped_configs())})")
    return path
