"""eval.store: per-example jsonl files that survive a kill, and run.json refusing to mix runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from eval.store import RUN_FILE, ResultsFile, RunMismatchError, check_run_settings, write_run_settings


def test_records_are_appended_flushed_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "nq" / "rag.jsonl"
    with ResultsFile(path) as results:
        results.append({"id": "a", "em": 1.0})
        # flushed at once: another reader sees the line while the file is still open
        assert json.loads(path.read_text().splitlines()[0]) == {"id": "a", "em": 1.0}
        results.append({"id": "b", "em": 0.0})
    again = ResultsFile(path)
    assert "a" in again
    assert "c" not in again
    assert again.records["b"] == {"id": "b", "em": 0.0}


def test_a_line_cut_short_by_a_kill_is_dropped_and_the_file_repaired(tmp_path: Path) -> None:
    path = tmp_path / "rag.jsonl"
    path.write_text('{"id": "a", "em": 1.0}\n{"id": "b", "em"')
    with ResultsFile(path) as results:
        assert list(results.records) == ["a"]
        results.append({"id": "b", "em": 0.0})
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["a", "b"]


def test_a_corrupt_line_inside_the_file_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "rag.jsonl"
    path.write_text('{"id": "a"}\nnot json\n{"id": "b"}\n')
    with pytest.raises(ValueError, match=r"rag\.jsonl:2: not a JSON line"):
        ResultsFile(path)


def test_a_line_without_an_id_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "rag.jsonl"
    path.write_text('{"id": "a"}\n{"em": 1.0}\n')
    with pytest.raises(ValueError, match=r"rag\.jsonl:2: not a result record \(no 'id'\)"):
        ResultsFile(path)


def settings(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": {"path": "/models/a", "files": "abc"},
        "retriever": {"index": "/idx"},
        "squeezer": "extractive",
        "episode": {"topk": 3, "max_turns": 4},
        "datasets": {"nq": "/data/nq/test.jsonl"},
    }
    return {**base, **changes}


def test_a_fresh_directory_takes_any_settings(tmp_path: Path) -> None:
    assert check_run_settings(tmp_path / "new", settings()) == settings()


def test_the_same_run_again_is_accepted_and_new_datasets_are_added(tmp_path: Path) -> None:
    write_run_settings(tmp_path, settings())
    assert check_run_settings(tmp_path, settings()) == settings()
    merged = check_run_settings(tmp_path, settings(datasets={"hotpotqa": "/data/hotpotqa/dev.jsonl"}))
    assert merged["datasets"] == {"nq": "/data/nq/test.jsonl", "hotpotqa": "/data/hotpotqa/dev.jsonl"}
    assert json.loads((tmp_path / RUN_FILE).read_text())["settings"] == settings()  # checking writes nothing


def test_another_model_or_configuration_is_refused_naming_every_difference(tmp_path: Path) -> None:
    write_run_settings(tmp_path, settings())
    other = settings(model={"path": "/models/b", "files": "abc"}, episode={"topk": 5, "max_turns": 4})
    with pytest.raises(RunMismatchError) as caught:
        check_run_settings(tmp_path, other)
    message = str(caught.value)
    assert "holds results of another run" in message
    assert "model.path: was '/models/a', now '/models/b'" in message
    assert "episode.topk: was 3, now 5" in message
    assert "max_turns" not in message


def test_a_dataset_name_read_from_another_file_is_refused(tmp_path: Path) -> None:
    write_run_settings(tmp_path, settings())
    with pytest.raises(RunMismatchError, match=r"datasets\.nq: was '/data/nq/test.jsonl', now '/other/nq.jsonl'"):
        check_run_settings(tmp_path, settings(datasets={"nq": "/other/nq.jsonl"}))


def test_a_dataset_file_prepared_again_in_place_is_refused(tmp_path: Path) -> None:
    recorded = settings(datasets={"nq": {"file": "/data/nq.jsonl", "sha256": "aaa"}})
    write_run_settings(tmp_path, recorded)
    with pytest.raises(RunMismatchError, match=r"datasets\.nq\.sha256: was 'aaa', now 'bbb'"):
        check_run_settings(tmp_path, settings(datasets={"nq": {"file": "/data/nq.jsonl", "sha256": "bbb"}}))
    other = settings(datasets={"hotpotqa": {"file": "/data/hotpotqa.jsonl", "sha256": "ccc"}})
    assert set(check_run_settings(tmp_path, other)["datasets"]) == {"nq", "hotpotqa"}


def test_an_output_directory_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("not a folder")
    with pytest.raises(RunMismatchError, match=r"out is a file, not an output directory"):
        check_run_settings(tmp_path / "out", settings())


def test_result_files_without_run_json_are_refused(tmp_path: Path) -> None:
    (tmp_path / "nq").mkdir()
    (tmp_path / "nq" / "rag.jsonl").write_text('{"id": "a"}\n')
    with pytest.raises(RunMismatchError, match=r"no run\.json"):
        check_run_settings(tmp_path, settings())


def test_a_run_json_from_before_the_answer_fallback_resumes_without_one_and_refuses_one(tmp_path: Path) -> None:
    write_run_settings(tmp_path, settings())  # no answer_fallback key, as run.json files written before it existed
    assert check_run_settings(tmp_path, settings(answer_fallback="none")) == settings(answer_fallback="none")
    with pytest.raises(RunMismatchError, match="answer_fallback: was 'none', now 'last-turn'"):
        check_run_settings(tmp_path, settings(answer_fallback="last-turn"))


def test_another_answer_fallback_is_refused(tmp_path: Path) -> None:
    write_run_settings(tmp_path, settings(answer_fallback="last-turn"))
    assert check_run_settings(tmp_path, settings(answer_fallback="last-turn"))["answer_fallback"] == "last-turn"
    with pytest.raises(RunMismatchError, match="answer_fallback: was 'last-turn', now 'none'"):
        check_run_settings(tmp_path, settings(answer_fallback="none"))


@pytest.mark.parametrize("content", ['{"model": "x"}', "[1, 2]", '{"settings": 3}'])
def test_a_run_json_without_settings_is_refused_in_one_line(tmp_path: Path, content: str) -> None:
    (tmp_path / RUN_FILE).write_text(content)
    with pytest.raises(RunMismatchError, match=r"run\.json holds no run settings"):
        check_run_settings(tmp_path, settings())
