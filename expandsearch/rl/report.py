"""The main job's summary table: held-out EM per policy and question type, how the policy searched, and the
question-by-question comparisons of the policies."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

COLUMNS = (
    ("EM", "em"),
    ("F1", "f1"),
    ("cover-EM", "cover_em"),
    ("valid", "valid_action_rate"),
    ("searches", "searches"),
    ("variants", "variants_per_search"),
    # what the searches found, and how much of it the policy turned into answers (search vs reading)
    ("answer found", "answer_in_passages"),
    ("EM when found", "em_when_found"),
)


def summary_table(summary: Mapping[str, Any]) -> str:
    """A markdown table: one row per evaluation (warm start, after RL, …), EM overall and per question type."""
    evaluations: Mapping[str, Any] = summary["evaluations"]
    types = sorted({kind for result in evaluations.values() for kind in result["em_by_type"]})
    header = ["policy", *(name for name, _ in COLUMNS[:1]), *(f"EM {kind}" for kind in types)]
    header += [name for name, _ in COLUMNS[1:]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, result in evaluations.items():
        metrics, by_type = result["metrics"], result["em_by_type"]
        cells = [name, _number(metrics.get("em"))]
        cells += [_number(by_type.get(kind)) for kind in types]
        cells += [_number(metrics.get(key)) for _, key in COLUMNS[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    questions = next(iter(evaluations.values()))["metrics"].get("questions", 0) if evaluations else 0
    lines.append(f"\nheld-out test questions: {questions:.0f}, greedy decoding")
    lines += [paired_line(name, comparison) for name, comparison in summary.get("paired", {}).items()]
    return "\n".join(lines)


def paired_line(name: str, comparison: Mapping[str, float]) -> str:
    """``after RL vs warm start: EM +0.023 (27 questions gained, 22 lost; sign test p = 0.57)``."""
    return (
        f"{name}: EM {comparison['difference']:+.3f} ({comparison['gained']:.0f} questions gained, "
        f"{comparison['lost']:.0f} lost; sign test p = {comparison['sign_test_p']:.2g})"
    )


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
