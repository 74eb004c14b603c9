"""eval.report on a hand-built results dict: the markdown table, the EM chart and the written files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from eval.report import RESULTS_JSON, RESULTS_MD, RESULTS_PNG, em_chart, results_table, write_reports

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def hand_built_results() -> dict[str, Any]:
    common = {"f1": 0.5, "cover_em": 0.4, "turns": 1.0, "tokens": 12.4, "answered": 1.0, "context_tokens": 90.0}
    return {
        "results": {
            "nq": {
                "direct": {"n": 3.0, "em": 1 / 3, "searches": 0.0, **common},
                "expandsearch": {
                    "n": 3.0,
                    "em": 2 / 3,
                    "searches": 1.5,
                    "variants_per_search": 2.75,
                    "answer_in_passages": 1.0,
                    "em_when_found": 0.6,
                    **common,
                },
            },
            "hotpotqa": {"rag": {"n": 2.0, "em": 0.5, "searches": 1.0, "recall": 0.25, **common}},
        },
        "datasets": {
            "nq": {"file": "/data/nq/test.jsonl", "note": "", "examples": 3},
            "hotpotqa": {"file": "/data/hotpotqa/dev.jsonl", "note": "no test.jsonl, using dev.jsonl", "examples": 2},
        },
        "methods": ["direct", "rag", "expandsearch"],
        "settings": {
            "squeezer": "extractive",
            "episode": {"topk": 3, "max_turns": 4, "max_turn_tokens": 500, "max_variants": 3},
        },
        "seconds": 1.0,
        "finished": "2026-12-01T00:00:00+00:00",
    }


def test_table_has_one_row_per_dataset_and_method_with_dashes_for_unmeasured() -> None:
    lines = results_table(hand_built_results()).splitlines()
    assert lines[0] == (
        "| dataset | method | n | EM | F1 | cover-EM | answer in passages | EM when found | support recall | turns "
        "| searches "
        "| variants/search | tokens |"
    )
    assert lines[1] == "|---|---|" + "---:|" * 11
    assert lines[2] == "| nq | direct | 3 | 0.333 | 0.500 | 0.400 | - | - | - | 1.00 | 0.00 | - | 12 |"
    assert lines[3] == "| nq | expandsearch | 3 | 0.667 | 0.500 | 0.400 | 1.000 | 0.600 | - | 1.00 | 1.50 | 2.75 | 12 |"
    assert lines[4] == "| hotpotqa | rag | 2 | 0.500 | 0.500 | 0.400 | - | - | 0.250 | 1.00 | 1.00 | - | 12 |"
    assert lines[5] == ""


def test_table_footer_says_how_the_numbers_were_made() -> None:
    footer = results_table(hand_built_results()).split("\n\n", 1)[1]
    assert "`-`: not measured" in footer
    assert "squeezer `extractive`; top-3 per query; up to 4 turns of 500 tokens" in footer
    assert "nq: `/data/nq/test.jsonl`, 3 questions." in footer
    assert "hotpotqa: `/data/hotpotqa/dev.jsonl` (no test.jsonl, using dev.jsonl), 2 questions." in footer


def test_table_of_a_bare_results_dict() -> None:
    table = results_table({"results": {"x": {"direct": {"n": 1.0, "em": 1.0}}}})
    assert "| x | direct | 1 | 1.000 | - | - | - | - | - | - | - | - | - |" in table


def test_chart_is_a_png(tmp_path: Path) -> None:
    em_chart(hand_built_results(), tmp_path / "chart.png")
    data = (tmp_path / "chart.png").read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 5_000


def test_write_reports_writes_json_markdown_and_png(tmp_path: Path) -> None:
    results = hand_built_results()
    table = write_reports(results, tmp_path)
    assert json.loads((tmp_path / RESULTS_JSON).read_text()) == results
    assert (tmp_path / RESULTS_MD).read_text() == table + "\n"
    assert (tmp_path / RESULTS_PNG).read_bytes().startswith(PNG_SIGNATURE)


def test_a_run_with_an_answer_fallback_shows_answered_and_the_fallback_scores() -> None:
    results = hand_built_results()
    results["settings"]["answer_fallback"] = "last-turn"
    fallback = {"fallback_em": 0.5, "fallback_f1": 0.6, "fallback_cover_em": 0.7, "fallback_used": 0.25}
    results["results"]["nq"]["direct"].update(fallback)
    lines = results_table(results).splitlines()
    assert lines[0].startswith(
        "| dataset | method | n | EM | F1 | cover-EM | answered | EM +fallback | F1 +fallback | cover-EM +fallback "
        "| fallback used | answer in passages |"
    )
    assert lines[2].startswith(
        "| nq | direct | 3 | 0.333 | 0.500 | 0.400 | 1.000 | 0.500 | 0.600 | 0.700 | 0.250 | - |"
    )
    assert "`+fallback`: scored on the tagged answer, else the policy's last turn" in results_table(results)
    assert "+fallback" not in results_table(hand_built_results())
