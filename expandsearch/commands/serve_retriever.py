"""``expandsearch serve-retriever``: serve an index directory over the Search-R1-compatible HTTP API."""

from __future__ import annotations

import argparse
import os

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


def run(args: argparse.Namespace) -> int:
    from retriever_server.index_dir import IndexDirError, load_index
    from retriever_server.server import serve

    token = token_from_env(args.token_env)
    try:
        retriever = load_index(args.index, device=args.device)
    except IndexDirError as error:
        raise UserError(str(error)) from error
    auth = f", bearer token from ${args.token_env}" if token else ""
    print(f"serving {len(retriever)} passages from {args.index} on http://{args.host}:{args.port}{auth}", flush=True)
    serve(
        retriever,
        host=args.host,
        port=args.port,
        token=token,
        max_topk=args.topk_max,
        default_topk=args.default_topk,
        max_queries=args.max_queries,
        batch_window_ms=args.batch_window_ms,
        max_batch_queries=args.max_batch_queries,
        search_threads=args.threads,
    )
    return 0


def token_from_env(variable: str | None) -> str | None:
    """The bearer token held by environment variable ``variable`` (None: no token); unset or empty is an error."""
    if variable is None:
        return None
    token = os.environ.get(variable, "")
    if not token.strip():
        raise UserError(f"--token-env {variable}: the environment variable is unset or empty")
    return token
