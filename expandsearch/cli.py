"""The ``expandsearch`` command line: one subcommand per job, each with its own ``--help``.

Subcommands live in ``expandsearch/commands/``; each module exposes ``HELP``, ``add_arguments(parser)``
and ``run(args) -> int``. Heavy imports happen inside ``run``, so ``expandsearch --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand name → module under expandsearch.commands
COMMANDS = {
    "world": "world",
    "demo": "demo",
    "index": "index",
    "serve-retriever": "serve_retriever",
    "serve-llm": "serve_llm",
    "chat": "chat",
    "serve-ui": "serve_ui",
    "warm-start": "warm_start",
    "train": "train",
    "prepare": "prepare",
    "eval": "eval",
    "eval-retrieval": "eval_retrieval",
    "regress": "regress",
    "coaug": "coaug",
}


class UserError(Exception):
    """A mistake in the user's input: printed as one line, exit status 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="expandsearch",
        description="Train, evaluate and run LLM search agents that write several query variants per search.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"expandsearch.commands.{module_name}")
        subparser = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(subparser)
        subparser.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (UserError, FileNotFoundError, ValueError) as error:
        print(f"expandsearch {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
