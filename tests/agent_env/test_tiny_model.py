"""The tiny policy: a locally trained tokenizer that loads back unchanged, and a small Qwen2 that fits it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from agent_env.protocol import build_prompt
from agent_env.tiny_model import (
    END_OF_TEXT,
    IM_END,
    IM_START,
    PROTOCOL_TOKENS,
    SPECIAL_TOKENS,
    TinyQwen2Config,
    build_tiny_qwen2,
    save_tiny_policy,
    train_tokenizer,
)

CORPUS = [
    "Ana Lopez was born in Porto. She painted the old city map in 1921.",
    "The river Duoro flows through the capital; its museum holds 3,400 letters.",
    "Who painted the old city map? Where was the painter born?",
    build_prompt("placeholder question"),
    "<search> first query ## second query </search> <answer> Porto </answer>",
] * 3

SAMPLES = [
    "Ana Lopez was born in Porto.",
    "  leading spaces, trailing spaces   ",
    "tabs\tand\nnew\n\nlines\r\n",
    "numbers 1921 and 3,400.5 and -7",
    "unicode: Café naïve 北京 Ελλάδα 🙂👍🏽 — “quotes”",
    "<think> plan </think><search> a ## b </search>\n<information> x </information><answer>Porto</answer>",
    f"{IM_START}user\nhello{IM_END}\n{IM_START}assistant\n",
    "unknown-to-the-corpus: zyxwvut QQQ ~~~ {}[]|\\^`",
]

SMALL = TinyQwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return train_tokenizer(CORPUS, vocab_size=600)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_policy(tmp_path_factory.mktemp("policy"), CORPUS, vocab_size=600, config=SMALL, seed=3)


@pytest.fixture(scope="module")
def loaded_tokenizer(saved: Path) -> Any:
    return AutoTokenizer.from_pretrained(saved)


@pytest.mark.parametrize("text", SAMPLES)
def test_tokenizer_round_trips_text_exactly(tokenizer: Any, loaded_tokenizer: Any, text: str) -> None:
    for tok in (tokenizer, loaded_tokenizer):
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
        assert tok.unk_token_id not in ids or tok.unk_token_id == tok.convert_tokens_to_ids(END_OF_TEXT)


@pytest.mark.parametrize("text", [*SAMPLES, "decomposed: Cafe\u0301"])
def test_saved_tokenizer_encodes_like_the_trained_one(tokenizer: Any, loaded_tokenizer: Any, text: str) -> None:
    # AutoTokenizer loads a qwen2 directory as Qwen2Tokenizer, which rebuilds the normalizer and pre-tokenizer:
    # the trained tokenizer must already use Qwen2's, or training and serving would tokenize differently.
    assert type(loaded_tokenizer).__name__ == "Qwen2Tokenizer"
    assert loaded_tokenizer.encode(text, add_special_tokens=False) == tokenizer.encode(text, add_special_tokens=False)


def test_text_is_nfc_normalised_like_qwen2(tokenizer: Any) -> None:
    decomposed = "Cafe\u0301"  # e + combining acute
    assert tokenizer.decode(tokenizer.encode(decomposed, add_special_tokens=False)) == "Caf\u00e9"


def test_digits_are_split_one_per_token(tokenizer: Any) -> None:
    ids = tokenizer.encode("1921", add_special_tokens=False)
    assert tokenizer.convert_ids_to_tokens(ids) == ["1", "9", "2", "1"]


@pytest.mark.parametrize("tag", PROTOCOL_TOKENS + SPECIAL_TOKENS)
def test_tags_are_single_tokens(tokenizer: Any, loaded_tokenizer: Any, tag: str) -> None:
    for tok in (tokenizer, loaded_tokenizer):
        (tag_id,) = tok.encode(tag, add_special_tokens=False)
        assert tok.convert_ids_to_tokens(tag_id) == tag
        # Also glued to other text, as the policy writes it.
        ids = tok.encode(f"x{tag}y", add_special_tokens=False)
        assert tag_id in ids
        assert tok.decode(ids) == f"x{tag}y"


def test_special_token_ids(tokenizer: Any, loaded_tokenizer: Any) -> None:
    for tok in (tokenizer, loaded_tokenizer):
        assert tok.eos_token == IM_END
        assert tok.pad_token == END_OF_TEXT
        assert tok.bos_token is None
        assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2]
        assert tok.eos_token_id == 2
        assert tok.pad_token_id == 0
        assert tok.encode("hi") == tok.encode("hi", add_special_tokens=False)  # no BOS/EOS added


def test_vocabulary_size(tokenizer: Any) -> None:
    assert 300 < len(tokenizer) <= 600 + len(PROTOCOL_TOKENS)
    assert len(set(tokenizer.get_vocab().values())) == len(tokenizer)  # ids are dense and unique


def test_chat_template_renders_chatml(tokenizer: Any, loaded_tokenizer: Any) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where?"}]
    expected = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhere?<|im_end|>\n<|im_start|>assistant\n"
    for tok in (tokenizer, loaded_tokenizer):
        assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == expected
        assert tok.apply_chat_template(messages, tokenize=False) == expected.removesuffix("<|im_start|>assistant\n")


def test_build_tiny_qwen2_matches_the_tokenizer_and_config(tokenizer: Any) -> None:
    config = TinyQwen2Config(
        hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2
    )
    model = build_tiny_qwen2(tokenizer, config)
    assert model.config.vocab_size == len(tokenizer)
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.num_key_value_heads) == (48, 3, 2)
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert model.lm_head.weight is model.get_input_embeddings().weight  # tied by default
    assert not model.training
    logits = model(input_ids=torch.tensor([tokenizer.encode("Where was Ana born?")])).logits
    assert logits.shape[-1] == len(tokenizer)
    assert torch.isfinite(logits).all()


def test_weights_are_deterministic_for_a_seed(tokenizer: Any) -> None:
    def weights(seed: int) -> dict[str, torch.Tensor]:
        return build_tiny_qwen2(tokenizer, SMALL, seed=seed).state_dict()

    first, again, other = weights(1), weights(1), weights(2)
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not torch.equal(first["model.embed_tokens.weight"], other["model.embed_tokens.weight"])


def test_building_does_not_reset_the_global_rng(tokenizer: Any) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_qwen2(tokenizer, SMALL, seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_initializer_range_and_untied_head(tokenizer: Any) -> None:
    wide = TinyQwen2Config(**{**SMALL.__dict__, "initializer_range": 0.3, "tie_word_embeddings": False})
    model = build_tiny_qwen2(tokenizer, wide)
    assert model.lm_head.weight is not model.get_input_embeddings().weight
    assert 0.25 < model.get_input_embeddings().weight.std().item() < 0.35


def test_saved_policy_loads_with_auto_classes(saved: Path, tokenizer: Any) -> None:
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        child.name for child in saved.iterdir()
    }
    model = AutoModelForCausalLM.from_pretrained(saved)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert model.config.vocab_size == len(AutoTokenizer.from_pretrained(saved))
    assert model.config.hidden_size == SMALL.hidden_size
    assert model.generation_config.eos_token_id == 2
    # The same seed gives the same weights as building it in memory: nothing is lost in the save.
    rebuilt = build_tiny_qwen2(train_tokenizer(CORPUS, vocab_size=600), SMALL, seed=3)
    ids = torch.tensor([tokenizer.encode("Who painted the old city map?")])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, rebuilt(input_ids=ids).logits)


def test_conftest_policy_is_loadable(tiny_policy_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_policy_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_policy_dir)
    assert model.config.vocab_size == len(tokenizer)
    (search_id,) = tokenizer.encode("<search>", add_special_tokens=False)
    assert search_id < len(tokenizer)
