"""``expandsearch serve-retriever``: serve an index directory over the Search-R1-compatible HTTP API."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from expandsearch.cli import UserError

HELP = "serve an index directory (built by `expandsearch index`) over HTTP: POST /retrieve, GET /health, GET /info"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, help="index directory (with manifest.json)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument(
        "--token-env", metavar="VAR", help="require 'Authorization: Bearer $VAR' on /retrieve and /info"
    )
    parser.add_argument("--topk-max", type=int, default=100, help="largest topk a request may ask for (default 100)")
    parser.add_argument("--default-topk", type=int, default=3, help="topk when a request gives none (default 3)")
    parser.add_argument("--max-queries", type=int, default=4096, help="most queries in one request (default 4096)")
    parser.add_argument(
        "--batch-window-ms", type=float, default=0.0, help="extra wait to fill a batch (default 0: batch what queued)"
    )
    parser.add_argument("--max-batch-queries", type=int, default=512, help="most queries per batch (1: no batching)")
    parser.add_argument("--threads", type=int, default=1, help="threads per batch_search call (default 1)")
    parser.add_argument("--device", help="device for a dense encoder (cpu, cuda; default: automatic)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes on the one port, each loading the (memory-mapped) index; about one per core "
        "for many small requests (default 1; /info counts per process)",
    )
    parser.add_argument("--access-log", action="store_true", help="log every request (off: it costs throughput)")


def run(args: argparse.Namespace) -> int:
    token = token_from_env(args.token_env)
    if args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    options = {
        "token": token,
        "max_topk": args.topk_max,
        "default_topk": args.default_topk,
        "max_queries": args.max_queries,
        "batch_window_ms": args.batch_window_ms,
        "max_batch_queries": args.max_batch_queries,
        "search_threads": args.threads,
    }
    if args.workers > 1:
        return run_workers(args, options)
    from retriever_server.index_dir import IndexDirError, load_index
    from retriever_server.server import serve, warm_up

    try:
        retriever = load_index(args.index, device=args.device)
    except IndexDirError as error:
        raise UserError(str(error)) from error
    warm_up(retriever)
    print(f"serving {len(retriever)} passages from {args.index} on {_where(args, args.port)}", flush=True)
    serve(retriever, host=args.host, port=args.port, access_log=args.access_log, **options)
    return 0


def run_workers(args: argparse.Namespace, options: dict[str, Any]) -> int:
    """``--workers N``: the index is loaded in each worker, so here only its manifest is checked."""
    from retriever_server.index_dir import IndexDirError, read_manifest
    from retriever_server.workers import WorkerError, WorkerSpec, serve_workers

    try:
        passages = read_manifest(args.index)["corpus"]["passages"]
    except IndexDirError as error:
        raise UserError(str(error)) from error
    spec = WorkerSpec(str(args.index), args.host, args.device, "info", args.access_log, options)
    started = False

    def ready(port: int) -> None:
        nonlocal started
        started = True
        where = _where(args, port)
        print(f"serving {passages} passages from {args.index} on {where} ({args.workers} workers)", flush=True)

    try:
        serve_workers(spec, args.port, args.workers, on_ready=ready)
    except (WorkerError, OSError) as error:
        if not started:  # the index or the port: the user's to fix
            raise UserError(str(error)) from error
        print(f"expandsearch serve-retriever: error: {error}", file=sys.stderr)
        return 1
    return 0


def _where(args: argparse.Namespace, port: int) -> str:
    auth = f", bearer token from ${args.token_env}" if args.token_env else ""
    return f"http://{args.host}:{port}{auth}"


def token_from_env(variable: str | None) -> str | None:
    """The bearer token held by environment variable ``variable`` (None: no token); unset or empty is an error."""
    if variable is None:
        return None
    token = os.environ.get(variable, "")
    if not token.strip():
        raise UserError(f"--token-env {variable}: the environment variable is unset or empty")
    return token
