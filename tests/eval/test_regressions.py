"""The regression runner's parts without subprocesses: the YAML schema and its errors, dotted paths into results,
checks against a results file (including the agent harness's ``results.json`` layout), the report, and that every
shipped regression file validates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from data_prep.samples import samples_dir
from eval.datasets import DatasetSpec, EvalDataset
from eval.regress import (
    Check,
    ConditionResult,
    LoadedCondition,
    RegressionFileError,
    RunSettings,
    check_results,
    default_files,
    load_regression_file,
    lookup,
    markdown_report,
    render_command,
    select_conditions,
    shipped_files,
)
from eval.runner import build_results

VALID = """
tolerance: 0.01
env: {HF_HUB_OFFLINE: "1"}
conditions:
  - name: first
    setup:
      - expandsearch world --size tiny --out {work}/world
      - run: expandsearch index --corpus {work}/world/corpus.jsonl --kind bm25 --out {work}/idx
        creates: "{work}/idx/manifest.json"
    command: expandsearch eval-retrieval --data {work}/world --index {work}/idx --out {out}
    tolerance: 0.002
    expected:
      results.world.recall@3: 0.5
      results.world.n: {value: 216, tolerance: 0}
  - name: second
    command: expandsearch eval-retrieval --data "{samples}/a b/nq" --index {work}/idx --out {out}
    expected:
      results.nq.answer_in_passages@3: 0.25
"""


def write(tmp_path: Path, text: str, name: str = "regression.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_a_valid_file_loads_with_defaults_and_inherited_tolerances(tmp_path: Path) -> None:
    regression = load_regression_file(write(tmp_path, VALID))
    first, second = regression.conditions
    assert regression.default is True
    assert first.setup[0].run.startswith("expandsearch world")
    assert first.setup[0].creates == []
    assert first.setup[1].creates == ["{work}/idx/manifest.json"]  # a single path becomes a list
    assert second.results == "{out}/results.json"
    items = select_conditions([tmp_path / "regression.yaml"])
    assert [items[0].tolerance(expected) for expected in first.expected.values()] == [0.002, 0.0]
    assert items[1].tolerance(second.expected["results.nq.answer_in_passages@3"]) == 0.01
    assert items[0].file_env == {"HF_HUB_OFFLINE": "1"}


def test_commands_are_split_like_a_shell_and_filled_word_by_word(tmp_path: Path) -> None:
    item = select_conditions([write(tmp_path, VALID)], only=["second"])[0]
    settings = RunSettings(tmp_path / "work dir", Path("/data/samples"))
    argv = render_command(item.condition.command, settings.values("second"))
    assert Path(argv[0]).name == "expandsearch" or argv[1:3] == ["-m", "expandsearch"]
    words = argv[argv.index("eval-retrieval") :]
    assert words[1:3] == ["--data", "/data/samples/a b/nq"]  # quoted: one argument with its space
    assert words[-1] == str(tmp_path / "work dir" / "runs" / "second")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda text: text.replace("    command: expandsearch eval-retrieval --data {work}", "    #", 1),
         "conditions.0.command: missing field"),
        (lambda text: text.replace("    expected:\n      results.world", "    expect:\n      results.world", 1),
         "conditions.0.expect: unknown field"),
        (lambda text: text.replace("tolerance: 0.01\n", "tolerance: 0.01\nsuite: fast\n", 1), "suite: unknown field"),
        (lambda text: text.replace("creates:", "makes:", 1), "conditions.0.setup.1.makes: unknown field"),
        (lambda text: text.replace("{out}", "{output}", 1), "unknown placeholder(s) output"),
        (lambda text: text.replace("tolerance: 0.01\n", "", 1), "results.nq.answer_in_passages@3 has no tolerance"),
        (lambda text: text.replace("name: second", "name: first"), "condition name(s) first used twice"),
        (lambda text: text.replace("command: expandsearch eval-retrieval --data \"", "command: python -c \"", 1),
         "command must start with 'expandsearch'"),
        (lambda text: text.replace("- expandsearch world", "- rm -rf {work}", 1), "setup step 1 must start with"),
        (lambda text: text.replace('/a b/nq"', "/a b/nq", 1),
         "condition second: command does not split like a shell line (No closing quotation)"),
        (lambda text: text.replace("name: second", "name: 'bad name'"), "conditions.1.name"),
        (lambda text: text.replace("value: 216", "value: lots"), "conditions.0.expected.results.world.n.value"),
        (lambda text: text.replace("      results.nq.answer_in_passages@3: 0.25\n", "      {}\n"), "expected"),
    ],
)  # fmt: skip
def test_schema_errors_name_the_file_and_the_field(tmp_path: Path, edit: Any, message: str) -> None:
    path = write(tmp_path, edit(VALID))
    with pytest.raises(RegressionFileError) as caught:
        load_regression_file(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


def test_relative_creates_and_results_paths_are_in_the_work_folder(tmp_path: Path) -> None:
    settings = RunSettings(tmp_path / "work", Path("/data/samples"))
    assert settings.path("data/world/test.jsonl", "c") == tmp_path / "work" / "data" / "world" / "test.jsonl"
    assert settings.path("{out}/results.json", "c") == tmp_path / "work" / "runs" / "c" / "results.json"
    assert settings.path("{samples}/nq", "c") == Path("/data/samples/nq")


def test_the_old_shared_placeholder_still_names_the_samples(tmp_path: Path) -> None:
    # regression files written before the samples moved into the repository say {shared}
    item = select_conditions([write(tmp_path, VALID.replace("{samples}", "{shared}"))], only=["second"])[0]
    argv = render_command(item.condition.command, RunSettings(tmp_path, Path("/data/samples")).values("second"))
    assert argv[argv.index("--data") + 1] == "/data/samples/a b/nq"


@pytest.mark.parametrize(
    ("text", "message"),
    [("conditions: [\n", "not valid YAML"), ("- a\n- b\n", "expected a mapping"), ("description: x\n", "conditions")],
)
def test_unreadable_files_are_clear_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(RegressionFileError, match=message):
        load_regression_file(write(tmp_path, text))
    with pytest.raises(FileNotFoundError, match="regression file not found"):
        load_regression_file(tmp_path / "none.yaml")


def test_selecting_conditions_across_files(tmp_path: Path) -> None:
    one = write(tmp_path, VALID, "one.yaml")
    assert [item.name for item in select_conditions([one], ["second"])] == ["second"]
    with pytest.raises(RegressionFileError, match="no condition named third"):
        select_conditions([one], ["third"])
    two = write(tmp_path, VALID, "two.yaml")
    with pytest.raises(RegressionFileError, match="condition first is in both"):
        select_conditions([one, two])


def test_lookup_follows_dots_lists_and_keys_that_hold_dots() -> None:
    data = {"results": {"nq.v2": {"recall@3": 0.5}, "runs": [{"em": 0.25}]}}
    assert lookup(data, "results.nq.v2.recall@3") == 0.5
    assert lookup(data, "results.runs.0.em") == 0.25
    with pytest.raises(KeyError, match=r"no key 'nq' \(keys there: nq.v2, runs\)"):
        lookup(data, "results.nq.recall@3")
    with pytest.raises(KeyError, match="no list item '3'"):
        lookup(data, "results.runs.3.em")
    with pytest.raises(KeyError, match="is a float, not a mapping"):
        lookup(data, "results.runs.0.em.x")


def loaded(tmp_path: Path, expected: str) -> LoadedCondition:
    text = f"tolerance: 0.01\nconditions:\n  - name: c\n    command: expandsearch eval\n    expected:\n{expected}"
    return select_conditions([write(tmp_path, text)])[0]


def test_checks_against_the_agent_harness_results_layout(tmp_path: Path) -> None:
    # results.json exactly as `expandsearch eval` writes it (eval.runner.build_results): dataset → method → metric
    dataset = EvalDataset(DatasetSpec("world", tmp_path / "test.jsonl"), ())
    per_method = {"world": {"expandsearch": {"n": 60.0, "em": 0.5, "variants_per_search": 2.5}, "rag": {"em": 0.2}}}
    results = build_results(per_method, [dataset], ["rag", "expandsearch"], {}, 1.0)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    item = loaded(
        tmp_path,
        "      results.world.expandsearch.em: 0.505\n"
        "      results.world.rag.em: 0.3\n"
        "      results.world.rag.recall: 0.1\n"
        "      methods: 1\n",
    )
    checks = {check.path: check for check in check_results(item, path)}
    assert checks["results.world.expandsearch.em"].ok
    assert checks["results.world.expandsearch.em"].got == 0.5
    assert not checks["results.world.rag.em"].ok
    assert checks["results.world.rag.recall"].got is None
    assert "no key 'recall'" in checks["results.world.rag.recall"].problem
    assert "not a number" in checks["methods"].problem
    missing = check_results(item, tmp_path / "none.json")
    assert all(not check.ok and "cannot read" in check.problem for check in missing)


def test_tolerance_edges() -> None:
    assert Check("p", 0.65, 0.005, 0.655).ok  # at the edge, despite float rounding
    assert not Check("p", 0.65, 0.005, 0.6551).ok
    assert Check("p", 600, 0, 600.0).ok


def test_report_lists_every_score_and_each_failure(tmp_path: Path) -> None:
    source = tmp_path / "r.yaml"
    passed = ConditionResult("good", source, [Check("results.a", 0.5, 0.01, 0.5)], command_seconds=2.0)
    failed = ConditionResult("bad", source, [Check("results.b", 0.5, 0.01, 0.7)], steps_reused=2)
    broken = ConditionResult("broken", source, error="setup failed: exit status 2 (log: x)\n    | details")
    report = markdown_report([passed, failed, broken], RunSettings(tmp_path, tmp_path), 12.5)
    assert "1 of 3 conditions OK, 12.5 s in all" in report
    assert "CPU cores" in report
    assert "| good | r.yaml | `results.a` | 0.5000 | 0.01 | 0.5000 | OK |" in report
    assert "| bad | r.yaml | `results.b` | 0.5000 | 0.01 | 0.7000 | FAIL |" in report
    assert "| bad | 0.0 | 0 / 2 | 0.0 |" in report
    assert "- **bad**: `results.b` got 0.7000, expected 0.5000 ± 0.01" in report
    assert "- **broken**: setup failed: exit status 2 (log: x)" in report
    assert "details" not in report


def test_every_shipped_file_validates_and_the_slow_sets_are_not_default() -> None:
    files = shipped_files()
    names = {path.name for path in files}
    assert {"retrieval.yaml", "retrieval_full.yaml", "agent_tiny.yaml"} <= names
    items = select_conditions(files)  # validates all, and that names are unique across them
    assert {"hotpotqa-bm25", "hotpotqa-minilm", "open-domain-bm25", "open-domain-minilm"} <= {i.name for i in items}
    assert {"retrieval_full.yaml", "agent_tiny.yaml"}.isdisjoint(path.name for path in default_files())  # slow ones
    for item in items:
        if not item.source.name.startswith("retrieval"):
            continue  # the trained agent: a measured 0 (direct answers) is a value, and training needs a tolerance
        for path, expected in item.condition.expected.items():
            assert expected.value > 0, f"{item.name}: {path} was never measured"  # no placeholder left
            assert item.tolerance(expected) <= 0.005, f"{item.name}: {path}: retrieval is deterministic, keep it tight"


def test_every_sample_the_shipped_files_read_is_in_the_samples_folder(tmp_path: Path) -> None:
    # the samples ship inside the repository: a file dropped from data_prep/sample_data must fail here, not an hour
    # into `expandsearch regress`
    settings = RunSettings(tmp_path, samples_dir())
    named = set()
    for item in select_conditions(shipped_files()):
        values = settings.values(item.name)
        for step in item.condition.setup:
            named |= {word.format_map(values) for word in step.run.split() if "{samples}" in word}
    assert len(named) >= 8  # hotpotqa, 2wiki, musique, nq, triviaqa, popqa, bamboogle, wiki-18
    assert [path for path in sorted(named) if not Path(path).exists()] == []
