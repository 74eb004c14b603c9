"""``expandsearch serve-llm``: serve a local model over an OpenAI-compatible API (our ``vllm serve`` for CPUs).

The model runs in a micro-batching :class:`~agent_env.engine.TransformersEngine`, so concurrent requests share
decoding batches. Point a policy (``OpenAICompletionsEngine``) or a squeezer (``openai:http://HOST:PORT/v1``) at it.
"""

from __future__ import annotations

import argparse
import os

from expandsearch.cli import UserError

HELP = (
    "serve a local model (a model directory, a .gguf file or 'smollm2') over an OpenAI-compatible API: "
    "/v1/completions, /v1/chat/completions, /v1/models, /health"
)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="SPEC", help="model directory, .gguf file or 'smollm2'")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8001, help="port (default 8001)")
    parser.add_argument("--name", help="model name clients send and /v1/models lists (default: the --model value)")
    parser.add_argument(
        "--max-batch-size", type=_positive_int, default=64, help="most requests decoded together (default 64)"
    )
    parser.add_argument(
        "--max-wait-ms", type=float, default=0.0, help="extra wait to fill a batch (default 0: batch what queued)"
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--dtype", help="float32, bfloat16, ... (default: the checkpoint's; float32 for GGUF)")
    parser.add_argument("--api-key-env", metavar="VAR", help="require 'Authorization: Bearer $VAR' on /v1/*")


def run(args: argparse.Namespace) -> int:
    from agent_env.models import resolve_model_path

    resolve_model_path(args.model)  # a missing model is a one-line error before torch is even imported
    api_key = _api_key(args.api_key_env)
    if args.max_wait_ms < 0:
        raise UserError(f"--max-wait-ms must be >= 0, got {args.max_wait_ms}")

    import uvicorn

    from agent_env.engine import TransformersEngine
    from agent_env.openai_compat import create_llm_app

    engine = TransformersEngine.from_pretrained(
        args.model,
        device=args.device,
        dtype=args.dtype,
        max_batch_size=args.max_batch_size,
        max_wait_s=args.max_wait_ms / 1000.0,
    )
    name = args.name or args.model
    app = create_llm_app(engine, engine.tokenizer, name, api_key=api_key)
    auth = f", API key from ${args.api_key_env}" if api_key else ""
    print(f"serving {args.model} as {name!r} on http://{args.host}:{args.port}/v1{auth}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


def _api_key(variable: str | None) -> str | None:
    if variable is None:
        return None
    key = os.environ.get(variable, "")
    if not key.strip():
        raise UserError(f"--api-key-env {variable}: the environment variable is unset or empty")
    return key
