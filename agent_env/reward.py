"""Answer metrics and rule-based rewards for question answering episodes.

The metrics are the SQuAD / HotpotQA ones (``hotpot_evaluate_v1.py`` semantics): exact match, token F1
and cover-EM over normalised answers, each the maximum over the gold answers. The rewards are what RL
trains on: :func:`em_reward` (the outcome reward of Search-R1 and ExpandSearch) and :func:`format_reward`
(Search-R1 v0.3's ``qa_em_format`` shaping, which also pays a little for a well-formed trajectory).

Rewards read the answer from the policy's own sampled text only (never from inserted observations),
so a passage that happens to contain ``<answer>`` cannot score.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from agent_env.protocol import parse_action

Golds = str | Sequence[str]

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")
# The official script gives F1 = 0 when either side is one of these and the two differ, so that
# "yes" vs "no" (HotpotQA comparison questions) cannot earn partial credit.
_SPECIAL_ANSWERS = frozenset({"yes", "no", "noanswer"})


def normalize_answer(s: str) -> str:
    """SQuAD/HotpotQA normalisation: lower-case, drop punctuation, drop articles, collapse whitespace.

    The steps run in the official order; the order matters (``"The-cat"`` → ``"thecat"`` keeps no article,
    because punctuation removal joins the words before articles are looked for).
    """
    lowered = s.lower()
    no_punctuation = "".join(ch for ch in lowered if ch not in _PUNCTUATION)
    no_articles = _ARTICLES_RE.sub(" ", no_punctuation)
    return " ".join(no_articles.split())


def _gold_list(golds: Golds | Iterable[str]) -> list[str]:
    # A bare string is one gold, not a sequence of one-character golds. Other iterables (lists,
    # tuples, the numpy arrays that parquet columns come back as) are golds one per element.
    if isinstance(golds, str):
        return [golds]
    return [str(gold) for gold in golds]


def _best_over_golds(metric: Callable[[str, str], float], prediction: str, golds: Golds) -> float:
    normalised_prediction = normalize_answer(prediction)
    scores = [metric(normalised_prediction, normalize_answer(gold)) for gold in _gold_list(golds)]
    return max(scores, default=0.0)


def _exact(prediction: str, gold: str) -> float:
    return float(prediction == gold)


def _token_f1(prediction: str, gold: str) -> float:
    """Token F1 of two normalised answers, with the official yes/no/noanswer rule."""
    if prediction != gold and (prediction in _SPECIAL_ANSWERS or gold in _SPECIAL_ANSWERS):
        return 0.0
    prediction_tokens, gold_tokens = prediction.split(), gold.split()
    num_same = sum((Counter(prediction_tokens) & Counter(gold_tokens)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _covers(prediction: str, gold: str) -> float:
    # Both sides are normalised (single spaces, no edge spaces), so padding with spaces turns a
    # substring test into a whole-token span test: gold "1" does not cover "1984".
    if not gold:
        return 0.0
    return float(f" {gold} " in f" {prediction} ")


def exact_match(prediction: str, golds: Golds) -> float:
    """1.0 if the normalised prediction equals some normalised gold, else 0.0 (0.0 for no golds)."""
    return _best_over_golds(_exact, prediction, golds)


def f1_score(prediction: str, golds: Golds) -> float:
    """The best token-level F1 over the golds (0.0 for no golds), as in ``hotpot_evaluate_v1.py``."""
    return _best_over_golds(_token_f1, prediction, golds)


def cover_exact_match(prediction: str, golds: Golds) -> float:
    """1.0 if some non-empty normalised gold occurs in the normalised prediction as whole tokens."""
    return _best_over_golds(_covers, prediction, golds)


def extract_answer(policy_text: str) -> str | None:
    """The stripped content of the last complete ``<answer>…</answer>`` in the text, or None.

    Pass only the tokens the policy sampled. Of nested openings the innermost counts
    (``<answer> a <answer> b </answer>`` → ``"b"``), as in :func:`agent_env.protocol.parse_action`.
    An empty answer gives ``""`` (a wrong answer), not None (no answer).
    """
    close_pos = policy_text.rfind("</answer>")
    if close_pos == -1:
        return None
    open_pos = policy_text.rfind("<answer>", 0, close_pos)
    if open_pos == -1:
        return None
    return policy_text[open_pos + len("<answer>") : close_pos].strip()


def em_reward(policy_text: str, golds: Golds) -> float:
    """Outcome reward: exact match of the extracted answer, 0.0 when the policy never answered."""
    answer = extract_answer(policy_text)
    return 0.0 if answer is None else exact_match(answer, golds)


def is_valid_trajectory(policy_turns: Sequence[str]) -> bool:
    """True when every turn is a valid action, all but the last are searches and the last is an answer."""
    if not policy_turns:
        return False
    kinds = [parse_action(turn).kind for turn in policy_turns]
    return all(kind == "search" for kind in kinds[:-1]) and kinds[-1] == "answer"


@dataclass(frozen=True)
class FormatRewardConfig:
    """Reward values of the format-shaped reward (defaults: Search-R1 v0.3 / ExpandSearch code)."""

    correct: float = 1.0
    """Reward for a correct answer (exact match) in a well-formed trajectory."""
    structure_format_score: float = 0.2
    """Paid for a well-formed trajectory whose answer is wrong or missing; withheld from a correct answer
    in a malformed one."""
    final_format_score: float = 0.1
    """Paid for a wrong answer in a malformed trajectory (it did at least answer)."""
    retrieval_score: float = 0.0
    """Bonus on top of the structure score when the retrieved text contained a gold answer."""


def format_reward(
    answer: str | None,
    golds: Golds,
    *,
    valid_format: bool,
    retrieval_hit: bool = False,
    config: FormatRewardConfig = FormatRewardConfig(),
) -> float:
    """Search-R1 v0.3's ``qa_em_format`` reward.

    ============  ===================================  ======================================
    answer        valid format                         invalid format
    ============  ===================================  ======================================
    None          structure (+ retrieval if hit)       0.0
    correct (EM)  correct (1.0)                        correct - structure (0.8)
    wrong         structure (+ retrieval if hit) 0.2   final_format_score (0.1)
    ============  ===================================  ======================================
    """
    is_correct = answer is not None and exact_match(answer, golds) == 1.0
    if is_correct:
        return config.correct if valid_format else config.correct - config.structure_format_score
    if valid_format:
        return config.structure_format_score + (config.retrieval_score if retrieval_hit else 0.0)
    return 0.0 if answer is None else config.final_format_score
