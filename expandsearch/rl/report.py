"""The main job's summary table: held-out EM per policy and question type, and how the policy searched."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

COLUMNS = (("EM", "em"), ("valid", "valid_action_rate"), ("searches", "searches"), ("variants", "variants_per_search"))


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
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
