"""``expandsearch regress``: run regression conditions (``eval/regressions/*.yaml``) and check their scores.

Each condition's setup commands run unless their outputs exist in the work folder; its command then writes a
results json in a fresh ``{out}``, and every expected score is checked (``OK`` / ``FAIL``, expected vs got). The
exit status is 1 when any condition fails, 2 for a bad regression file. See ``docs/regressions.md``::

    expandsearch regress                                    # the default set (files without `default: false`)
    expandsearch regress eval/regressions/retrieval_full.yaml --work runs/regressions
    expandsearch regress --only hotpotqa-bm25 --report runs/hotpotqa.md
    expandsearch regress --list                             # every shipped condition and its file
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from expandsearch.cli import UserError

if TYPE_CHECKING:
    from eval.regress import LoadedCondition

HELP = "run regression conditions (YAML: setup, command, expected scores) and print OK / FAIL per score"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files", nargs="*", metavar="FILE.yaml", help="regression files (default: the shipped default set)"
    )
    parser.add_argument("--work", default="runs/regressions", help="work folder (default runs/regressions)")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help="run only these conditions (repeat or comma-separate; without FILEs, searched in every shipped file)",
    )
    parser.add_argument("--report", help="markdown report to write (default WORK/report.md)")
    parser.add_argument(
        "--samples",
        "--shared",  # the option's old name, as {shared} is the placeholder's
        dest="samples",
        metavar="DIR",
        help="real data folder for {samples} (default: the samples shipped in data_prep, or $EXPANDSEARCH_SAMPLES)",
    )
    parser.add_argument("--list", action="store_true", help="list the conditions and their files, run nothing")


def run(args: argparse.Namespace) -> int:
    from data_prep.samples import samples_dir
    from eval.regress import RunSettings, markdown_report, run_conditions

    files, items = _selected_conditions(args)
    if args.list:
        for item in items:
            print(f"{item.name}\t{item.source}")
        return 0
    if not items:
        print(f"no conditions in {', '.join(map(str, files))}")
        return 0
    settings = RunSettings(Path(args.work).resolve(), Path(args.samples or samples_dir()).resolve())
    report = Path(args.report) if args.report else settings.work / "report.md"
    _check_writable(settings.work, report)
    started = time.perf_counter()
    results = run_conditions(items, settings, log=lambda line: print(line, flush=True))
    seconds = time.perf_counter() - started
    report.write_text(markdown_report(results, settings, seconds), encoding="utf-8")
    failed = [result.name for result in results if not result.ok]
    summary = f"{len(results) - len(failed)} of {len(results)} conditions OK in {seconds:.1f} s"
    print(f"\n{summary}" + (f"; failed: {', '.join(failed)}" if failed else "") + f"\nreport: {report}")
    return 1 if failed else 0


def _selected_conditions(args: argparse.Namespace) -> tuple[list[Path], list[LoadedCondition]]:
    """The files read and the conditions chosen: the files given (else the default set, or every shipped file
    with ``--only`` or ``--list``), only the ``--only`` names when given."""
    from eval.regress import RegressionFileError, default_files, select_conditions, shipped_files

    only = [name.strip() for value in args.only for name in value.split(",") if name.strip()]
    if args.files:
        files = [Path(path) for path in args.files]
    else:
        files = shipped_files() if only or args.list else default_files()
    try:
        return files, select_conditions(files, only)
    except RegressionFileError as error:
        raise UserError(str(error)) from error


def _check_writable(work: Path, report: Path) -> None:
    """Make the work folder and the report's folder before anything runs, so a --work or --report that cannot
    be written is a one-line error now, not a traceback after every condition has run."""
    try:
        work.mkdir(parents=True, exist_ok=True)
        report.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(str(error)) from error
    if report.is_dir():
        raise UserError(f"--report {report} is a folder; name a markdown file")
