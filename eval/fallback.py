"""The answer fallback: a prediction for an episode that never wrote ``<answer>…</answer>``, scored apart.

The protocol's rule stays the rule: an episode's answer is the content of its ``<answer>`` tags in policy-sampled
text (:func:`agent_env.reward.extract_answer`), and ``em``, ``f1``, ``cover_em`` and ``answered`` always mean that.
A policy that was never taught the tags (a small instruction model prompted cold) then scores 0 everywhere, which
says nothing about what it knows. ``expandsearch eval --answer-fallback last-turn`` adds a second, explicitly
labelled score: when an episode has no tagged answer, the text of the policy's last turn, cleaned by
:func:`last_turn_answer`, is taken as the prediction (FlashRAG scores its naive-generation baselines on the raw
generated text; this is that, cut to one sentence). The tagged answer, when there is one, is never replaced::

    fallback = last_turn_answer([turn.policy_text for turn in trajectory.turns])   # str or None

Only policy-sampled turn text is read (never observations or feedback), as for the tagged answer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from agent_env.squeezers import split_sentences

ANSWER_FALLBACKS = ("none", "last-turn")
"""``--answer-fallback`` values: ``none`` (only tagged answers are scored) and ``last-turn``."""

FALLBACK_MAX_WORDS = 20
"""Most words of a fallback prediction: about one sentence, so that a loop without punctuation cannot cover a
gold answer by sheer length (EM and F1 punish length on their own; cover-EM does not)."""

# Whole blocks whose content is not an answer: reasoning, queries, and observations the policy made up itself.
# An unclosed one runs to the end of the turn (generation stopped inside it: what follows is still reasoning).
_NON_ANSWER_BLOCK_RE = re.compile(r"<(think|search|information)>.*?(?:</\1>|\Z)", re.DOTALL | re.IGNORECASE)
# Tags left over (an unclosed <answer> keeps its text: "<answer> Beijing" is still the policy's answer).
_TAG_RE = re.compile(r"</?(?:think|search|answer|information)>", re.IGNORECASE)
# A line that only echoes the prompt's "Question: …" label is not an answer; small models start turns with it.
_QUESTION_ECHO_RE = re.compile(r"^\s*question\s*:", re.IGNORECASE)
# An answer label before the answer itself: "Answer: X", "The final answer is: X".
_ANSWER_LABEL_RE = re.compile(r"^\s*(?:the\s+)?(?:final\s+)?answer\b(?:\s+is\b)?\s*[:\-]?\s*", re.IGNORECASE)


def last_turn_answer(policy_turns: Sequence[str]) -> str | None:
    """The fallback prediction of an episode: :func:`clean_turn` of its latest turn that leaves any text.

    ``policy_turns`` are the texts the policy sampled, in order. The last turn is the one told to answer (the
    final-turn notice); an earlier turn is used only when the last one leaves nothing (an empty turn, or one that
    only echoes the question). None when no turn leaves text.
    """
    for text in reversed(policy_turns):
        answer = clean_turn(text)
        if answer is not None:
            return answer
    return None


def clean_turn(text: str) -> str | None:
    """One turn's text as a short prediction, or None when nothing is left.

    Steps: drop whole ``<think>``, ``<search>`` and ``<information>`` blocks (an unclosed one to the end of the
    text; tags in any case), then any other protocol tag; take
    the first line that is neither empty nor a ``Question:`` echo, without a leading answer label (``Answer:``,
    ``The answer is``; a line that is only a label gives way to the next); keep its first sentence (initials and
    titles do not end one), at most :data:`FALLBACK_MAX_WORDS` words.
    """
    text = _TAG_RE.sub(" ", _NON_ANSWER_BLOCK_RE.sub(" ", text))
    for line in text.splitlines():
        if _QUESTION_ECHO_RE.match(line):
            continue
        line = _ANSWER_LABEL_RE.sub("", line, count=1).strip()
        sentences = split_sentences(line)
        if sentences:
            words = sentences[0].split()[:FALLBACK_MAX_WORDS]
            return " ".join(words)
    return None
