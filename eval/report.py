"""The evaluation's reports: ``results.json``, a markdown table (``results.md``, also printed) and a PNG chart.

The results dict is the one thing every report is made from (and what ``results.json`` holds)::

    {"results": {dataset: {method: {"n", "em", "f1", "cover_em", "answer_in_passages", "em_when_found", "recall",
                                    "turns", "searches", "variants_per_search", "tokens", "context_tokens", "answered",
                                    "seconds", "played"}}},
     "datasets": {dataset: {"file", "note", "examples"}}, "methods": [...], "settings": {...},
     "seconds": total, "finished": ISO time}

A run with ``--answer-fallback`` also has ``fallback_em``, ``fallback_f1``, ``fallback_cover_em`` and
``fallback_used`` per method, shown after cover-EM with ``answered``. Metrics that were not measured are absent
(``answer_in_passages`` without retrieval, ``em_when_found`` when no passage held an answer, ``recall`` without
ground truth, ``variants_per_search`` without searches) and show as ``-``. ``seconds`` and ``played`` are this
invocation's: a resumed run plays (and times) only the questions it lacked.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
RESULTS_PNG = "results.png"

COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("n", "n", "{:.0f}"),
    ("EM", "em", "{:.3f}"),
    ("F1", "f1", "{:.3f}"),
    ("cover-EM", "cover_em", "{:.3f}"),
    ("answer in passages", "answer_in_passages", "{:.3f}"),
    ("EM when found", "em_when_found", "{:.3f}"),
    ("support recall", "recall", "{:.3f}"),
    ("turns", "turns", "{:.2f}"),
    ("searches", "searches", "{:.2f}"),
    ("variants/search", "variants_per_search", "{:.2f}"),
    ("tokens", "tokens", "{:.0f}"),
)
"""Table columns: header, metric key, number format."""

FALLBACK_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("answered", "answered", "{:.3f}"),
    ("EM +fallback", "fallback_em", "{:.3f}"),
    ("F1 +fallback", "fallback_f1", "{:.3f}"),
    ("cover-EM +fallback", "fallback_cover_em", "{:.3f}"),
    ("fallback used", "fallback_used", "{:.3f}"),
)
"""Columns after cover-EM in the table of a run with an answer fallback (``--answer-fallback``)."""
FALLBACK_AFTER = "cover_em"


def table_columns(results: Mapping[str, Any]) -> tuple[tuple[str, str, str], ...]:
    """:data:`COLUMNS`, with :data:`FALLBACK_COLUMNS` after cover-EM when the run used an answer fallback."""
    if answer_fallback(results) == "none":
        return COLUMNS
    keys = [key for _, key, _ in COLUMNS]
    cut = keys.index(FALLBACK_AFTER) + 1
    return (*COLUMNS[:cut], *FALLBACK_COLUMNS, *COLUMNS[cut:])


def answer_fallback(results: Mapping[str, Any]) -> str:
    """The run's ``--answer-fallback`` (``none`` for results recorded before the option existed)."""
    return str(results.get("settings", {}).get("answer_fallback", "none"))


def results_table(results: Mapping[str, Any]) -> str:
    """A markdown table, one row per dataset x method, and a few lines saying how the numbers were made."""
    columns = table_columns(results)
    header = ["dataset", "method", *(name for name, _, _ in columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 2 + "---:|" * len(columns)]
    for dataset, by_method in results["results"].items():
        for method, metrics in by_method.items():
            cells = [dataset, method, *(_cell(metrics.get(key), form) for _, key, form in columns)]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join([*lines, "", *_footer(results)])


def _cell(value: float | None, form: str) -> str:
    return "-" if value is None else form.format(value)


def _footer(results: Mapping[str, Any]) -> list[str]:
    notes = ["`-`: not measured (no retrieval, no supporting-passage ground truth, or no searches)."]
    settings = results.get("settings", {})
    episode = settings.get("episode")
    if episode:
        notes.append(
            f"Greedy decoding; squeezer `{settings.get('squeezer')}`; top-{episode['topk']} per query; "
            f"up to {episode['max_turns']} turns of {episode['max_turn_tokens']} tokens; "
            f"up to {episode['max_variants']} variants per search (search_r1: 1); tokens: policy-generated."
        )
    if answer_fallback(results) != "none":
        notes.append(
            "EM, F1, cover-EM: the tagged `<answer>` only; answered: share answered in tags. `+fallback`: scored on "
            f"the tagged answer, else the policy's last turn (`--answer-fallback {answer_fallback(results)}`); "
            "fallback used: share of questions scored on that text."
        )
    for name, dataset in results.get("datasets", {}).items():
        note = f" ({dataset['note']})" if dataset.get("note") else ""
        notes.append(f"{name}: `{dataset['file']}`{note}, {dataset['examples']} questions.")
    return notes


def em_chart(results: Mapping[str, Any], path: str | Path) -> None:
    """A grouped bar chart of EM: one group per dataset, one bar per method, written as a PNG."""
    from matplotlib.figure import Figure  # a Figure of its own renders with Agg, without pyplot's global state

    by_dataset: Mapping[str, Mapping[str, Any]] = results["results"]
    methods = list(results.get("methods") or dict.fromkeys(m for row in by_dataset.values() for m in row))
    datasets = list(by_dataset)
    bars_drawn = len(datasets) * max(1, len(methods))
    figure = Figure(figsize=(min(16.0, max(5.0, 1.5 + 0.45 * bars_drawn)), 4.5), layout="constrained")
    axes = figure.subplots()
    width = 0.8 / max(1, len(methods))
    for index, method in enumerate(methods):
        values = [by_dataset[dataset].get(method, {}).get("em", 0.0) for dataset in datasets]
        offsets = [position - 0.4 + width * (index + 0.5) for position in range(len(datasets))]
        bars = axes.bar(offsets, values, width, label=method)
        axes.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    axes.set_xticks(range(len(datasets)), datasets)
    axes.set_ylabel("exact match")
    axes.set_ylim(0, 1.05)
    axes.set_title("EM per dataset and method (greedy decoding)")
    figure.legend(fontsize=8, ncols=max(1, len(methods)), loc="outside lower center")  # never over a bar
    figure.savefig(path, dpi=120)


def write_reports(results: Mapping[str, Any], out_dir: str | Path) -> str:
    """Write ``results.json``, ``results.md`` and ``results.png`` into ``out_dir``; returns the table."""
    out = Path(out_dir)
    (out / RESULTS_JSON).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    table = results_table(results)
    (out / RESULTS_MD).write_text(table + "\n", encoding="utf-8")
    em_chart(results, out / RESULTS_PNG)
    return table
