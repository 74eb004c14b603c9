"""The texts a world's own tokenizer is trained on, so that everything a tiny policy reads and writes is cheap.

A tiny policy reads the prompt, passages and the environment's fixed texts (and, serving as a local squeezer, the
squeezer's prompt); it writes queries that copy entity names, and the protocol's tags. A byte-level BPE trained on
exactly those texts spends its merges on them: invented names become two or three tokens, the fixed prompt and
the final-turn notice a few dozen, and a query like ``Veltari Oskmund birthplace`` about four. Shorter sequences
mean faster training and decoding on a CPU, and fewer tokens for the policy to get right.

BPE merges follow frequencies, so texts repeated in every episode (the prompt, the notice, the feedback) are given
once per question, as often as the model will see them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from agent_env.episode import FINAL_TURN_NOTICE
from agent_env.protocol import PROMPT_TEMPLATES, build_prompt, invalid_action_feedback, parse_action, render_no_results
from agent_env.squeezers import SQUEEZER_SYSTEM_PROMPT, SQUEEZER_USER_TEMPLATE
from data_prep.formats import QAExample
from retriever_server.corpus import Passage


def tokenizer_corpus(
    passages: Iterable[Passage],
    questions: Sequence[QAExample],
    transcripts: Iterable[str] = (),
    *,
    max_variants: int = 3,
) -> list[str]:
    """Passages, every question in every prompt template, the environment's fixed texts and expert transcripts."""
    texts = [f"{passage.title}\n{passage.text}" for passage in passages]
    for example in questions:
        texts += [build_prompt(example.question, name, max_variants) for name in PROMPT_TEMPLATES]
        texts.append(FINAL_TURN_NOTICE)
    texts += list(transcripts)
    texts += environment_texts()
    return texts


def environment_texts() -> list[str]:
    """Fixed texts the environment inserts or a squeezer reads: feedback, no-results, the squeezer's prompt."""
    return [
        invalid_action_feedback(parse_action("no action")),
        render_no_results(),
        SQUEEZER_SYSTEM_PROMPT,
        SQUEEZER_USER_TEMPLATE,
    ]
