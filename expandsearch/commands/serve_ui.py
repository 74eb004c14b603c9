"""``expandsearch serve-ui``: the agent in the browser — watch episodes unfold live, browse evaluation traces.

``--model`` with ``--index`` or ``--retriever-url`` serves the live view (the policy loads once; every browser's
episodes share its micro-batching); ``--traces DIR`` (repeatable) serves the trace browser over ``expandsearch
eval`` output folders and ``expandsearch train`` run folders. Either alone, or both. Loopback only unless
``--host`` says otherwise; ``--token-env VAR`` requires ``Authorization: Bearer $VAR`` on the API (the page asks
for it). docs/ui.md says what each view shows.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path
from typing import Any

from expandsearch.cli import UserError
from expandsearch.commands.serve_retriever import token_from_env

HELP = "serve the agent in the browser: a live episode view and a trace browser for `expandsearch eval` output"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="policy: model directory, .gguf file or 'smollm2' (the live view)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--index", help="index directory built by `expandsearch index` (searched in-process)")
    source.add_argument("--retriever-url", help="retriever server URL (expandsearch serve-retriever)")
    parser.add_argument("--squeezer", default="extractive", help="none, extractive, local:MODEL or openai:URL")
    parser.add_argument("--engine-url", help="OpenAI-compatible completions endpoint serving --model (optional)")
    parser.add_argument(
        "--traces", action="append", default=[], metavar="DIR", help="evaluation or run folder to browse (repeatable)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8002, help="port (default 8002)")
    parser.add_argument("--token-env", metavar="VAR", help="require 'Authorization: Bearer $VAR' on the API")
    parser.add_argument("--template", default="expandsearch", help="prompt template (default expandsearch)")
    parser.add_argument("--protocol", default="tags", help="action format: tags or tool_calls (default tags)")
    parser.add_argument("--turn-tokens", type=int, default=500, help="most tokens per policy turn (default 500)")
    parser.add_argument("--max-episodes", type=int, default=8, help="episodes in flight at once (default 8)")
    parser.add_argument("--max-question-chars", type=int, default=1000, help="longest question (default 1000)")


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from expandsearch.ui.app import create_app
    from expandsearch.ui.live import LiveLimits

    token = token_from_env(args.token_env)
    spec = _env_spec(args)
    library = _library(args)
    if spec is None and library is None:
        raise UserError("nothing to serve: give --model with --index or --retriever-url, or --traces DIR")
    build, close = _env_builder(spec)
    limits = LiveLimits(max_question_chars=args.max_question_chars, max_concurrent_episodes=args.max_episodes)
    app = create_app(
        build,
        served=_served(spec),
        squeezer=args.squeezer,
        library=library,
        token=token,
        limits=limits,
        close_env=close,
    )
    _warn_if_exposed(args.host)
    auth = f", bearer token from ${args.token_env}" if token else ""
    print(f"ExpandSearch UI on http://{args.host}:{args.port}/{auth} (loading the policy first)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _env_spec(args: argparse.Namespace) -> Any:
    from agent_env.assembly import EnvSetupError, EnvSpec
    from agent_env.episode import EpisodeConfig
    from agent_env.models import resolve_model_path
    from agent_env.squeezers import make_squeezer

    if args.model is None:
        if args.index or args.retriever_url:
            raise UserError("--index / --retriever-url serve the live view, which needs --model too")
        return None
    if not (args.index or args.retriever_url):
        raise UserError("the live view needs --index DIR or --retriever-url URL beside --model")
    try:
        resolve_model_path(args.model)
        make_squeezer(args.squeezer)  # a bad spec fails now, not after the policy loaded
        config = EpisodeConfig(
            protocol=args.protocol, template=args.template, max_turn_tokens=args.turn_tokens, temperature=0.0
        )
        return EnvSpec(args.model, args.engine_url, args.index, args.retriever_url, args.squeezer, config)
    except EnvSetupError as error:
        raise UserError(str(error)) from error


def _env_builder(spec: Any) -> tuple[Any, Any]:
    if spec is None:
        return None, None
    from agent_env.assembly import build_env, close_env

    async def build() -> Any:
        return await build_env(spec)

    return build, close_env


def _library(args: argparse.Namespace) -> Any:
    if not args.traces:
        return None
    from expandsearch.ui.traces import TraceLibrary

    roots = [Path(folder) for folder in args.traces]
    for root in roots:
        if not root.is_dir():
            raise UserError(f"--traces {root}: no such folder")
    return TraceLibrary(roots, *_passage_lookup(args.index))


def _passage_lookup(index: str | None) -> tuple[Any, str | None]:
    """Passage texts by id from the index (traces keep only ids and titles), and its corpus checksum."""
    if index is None:
        return None, None
    from retriever_server.index_dir import open_store, read_manifest

    store = open_store(index)

    def text(passage_id: str) -> str | None:
        try:
            return store.get(store.row_of(passage_id)).text
        except KeyError:
            return None

    return text, read_manifest(index).get("corpus", {}).get("sha256")


def _served(spec: Any) -> dict[str, Any]:
    if spec is None:
        return {}
    return {"model": spec.model, "retriever": spec.index_dir or spec.retriever_url, "squeezer": spec.squeezer}


def _warn_if_exposed(host: str) -> None:
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        print(
            f"warning: serving on {host}: anyone who reaches it can run the policy; consider --token-env",
            file=sys.stderr,
        )
