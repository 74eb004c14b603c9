"""VLLMEngine: the import guard everywhere; a real generation only where vLLM is installed (GPU machines)."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent_env.engine import SamplingParams
from agent_env.vllm_engine import INSTALL_HINT, VLLMEngine, generation_from_vllm

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def test_constructing_without_vllm_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail even where it is installed
    with pytest.raises(ImportError, match=r"pip install -e \.\[gpu\]") as raised:
        VLLMEngine("any-model")
    assert str(raised.value) == INSTALL_HINT


@dataclass
class Logprob:
    """The shape of vLLM's ``Logprob`` (only ``.logprob`` is read)."""

    logprob: float


def test_vllm_outputs_map_to_generations() -> None:
    steps = [{5: Logprob(-0.25)}, {6: Logprob(-1.5), 9: Logprob(-0.1)}]
    assert generation_from_vllm([5, 6], steps, "stop", "</search>") == ([5, 6], [-0.25, -1.5], "stop")
    assert generation_from_vllm([5, 6], steps, "stop", None).stop_reason == "eos"
    assert generation_from_vllm([5, 6], steps, "stop", 151645).stop_reason == "eos"  # a stop token id
    assert generation_from_vllm([5, 6], steps, "length", None).stop_reason == "length"
    with pytest.raises(RuntimeError, match="abort"):
        generation_from_vllm([5], steps[:1], "abort", None)
    with pytest.raises(RuntimeError, match="log-prob"):
        generation_from_vllm([5, 6], None, "length", None)


@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed (pip install -e .[gpu] on a CUDA machine)")
@pytest.mark.asyncio
async def test_real_generation_with_a_tiny_model(tiny_policy_dir: Path) -> None:
    engine = VLLMEngine(str(tiny_policy_dir), gpu_memory_utilization=0.2, enforce_eager=True, max_model_len=1024)
    try:
        assert engine.max_context_tokens == 1024
        got = await engine.generate([5, 6, 7], SamplingParams(max_new_tokens=4, temperature=0.0, stop=()))
        again = await engine.generate([5, 6, 7], SamplingParams(max_new_tokens=4, temperature=0.0, stop=()))
    finally:
        await engine.aclose()
    assert len(got.token_ids) == len(got.logprobs) <= 4
    assert got.token_ids == again.token_ids  # greedy
    assert all(value <= 0 for value in got.logprobs)
