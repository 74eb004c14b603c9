"""Tiny real policies for CPU work: a tokenizer trained on local text and a small Qwen2 built from a config.

No model hub is reachable here, and a real (if tiny) model beats a fake one in tests, benchmarks and the CPU
demo. :func:`train_tokenizer` trains a byte-level BPE on the given texts, with ChatML special tokens and a
ChatML chat template (the layout Qwen2 models use), and with the protocol tags (``<search>``, ``</answer>``,
…) as single tokens so a tiny policy can learn the action format quickly. Its normalizer and pre-tokenizer are
Qwen2's own (NFC, Qwen2's split regex, byte-level), because ``AutoTokenizer`` loads any ``qwen2`` model directory
as ``Qwen2Tokenizer``, which rebuilds those two parts whatever ``tokenizer.json`` says: a tokenizer trained with
other ones would encode differently after a save and load. :func:`build_tiny_qwen2` makes a
random-weight ``Qwen2ForCausalLM`` sized for that vocabulary. :func:`save_tiny_policy` writes both in the
standard transformers layout, loadable with ``AutoModelForCausalLM`` / ``AutoTokenizer`` and by
``expandsearch chat --model DIR``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

END_OF_TEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (END_OF_TEXT, IM_START, IM_END)
PROTOCOL_TOKENS = (
    "<think>",
    "</think>",
    "<search>",
    "</search>",
    "<answer>",
    "</answer>",
    "<information>",
    "</information>",
)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class TinyQwen2Config:
    """Size of the tiny policy (defaults: about 0.4M parameters plus embeddings; one CPU core decodes it fast)."""

    hidden_size: int = 64
    """Width of the residual stream."""
    intermediate_size: int = 256
    """Width of the MLP."""
    num_hidden_layers: int = 2
    """Transformer blocks."""
    num_attention_heads: int = 4
    """Query heads (head size = hidden_size / num_attention_heads)."""
    num_key_value_heads: int = 2
    """Key/value heads (grouped-query attention, as in Qwen2)."""
    max_position_embeddings: int = 4096
    """Context length: prompt plus every turn and observation of an episode."""
    initializer_range: float = 0.02
    """Standard deviation of the random weights. At the default an untrained model mostly repeats its last input
    token; about 0.3 gives varied, context-dependent output (engine tests need that)."""
    tie_word_embeddings: bool = True
    """Share the input embedding with the output head (as small Qwen2 models do)."""


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096) -> Any:
    """Train a byte-level BPE tokenizer on ``texts``; returns a ``PreTrainedTokenizerFast`` with a chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    backend = Tokenizer(models.BPE())
    # Exactly Qwen2Tokenizer's pipeline (see the module docstring), so the saved directory loads back identical.
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte, so no text is ever unknown
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=IM_END,
        pad_token=END_OF_TEXT,
        unk_token=END_OF_TEXT,  # what Qwen2Tokenizer sets on load; byte-level BPE never produces it
        bos_token=None,
        additional_special_tokens=[IM_START],
        clean_up_tokenization_spaces=False,
    )
    tokenizer.add_tokens(list(PROTOCOL_TOKENS))
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_tiny_qwen2(tokenizer: Any, config: TinyQwen2Config | None = None, seed: int = 0) -> Any:
    """A random-weight ``Qwen2ForCausalLM`` whose vocabulary matches ``tokenizer``."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    size = asdict(config or TinyQwen2Config())
    qwen_config = Qwen2Config(
        vocab_size=len(tokenizer),
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **size,
    )
    # A forked RNG: the same seed gives the same weights without resetting the caller's global torch RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Qwen2ForCausalLM(qwen_config).eval()


def save_tiny_policy(
    out_dir: str | Path,
    texts: Iterable[str],
    *,
    vocab_size: int = 4096,
    config: TinyQwen2Config | None = None,
    seed: int = 0,
) -> Path:
    """Train a tokenizer on ``texts``, build a tiny Qwen2 and save both to ``out_dir``; returns ``out_dir``."""
    out = Path(out_dir)
    tokenizer = train_tokenizer(texts, vocab_size)
    model = build_tiny_qwen2(tokenizer, config, seed)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
