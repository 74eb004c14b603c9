"""``expandsearch chat``: ask the agent questions in the terminal and watch every step of its episodes.

For each turn it shows the policy's thinking, its query variants, the top passages each variant retrieved, the
squeezer's summary (marked when the squeezer failed and raw passages were used) and, at the end, the answer.
``--once "question"`` answers one question and exits; ``--json`` prints the full trace (token ids included) as
JSON instead. Defaults decode greedily, as for evaluation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from typing import Any

from expandsearch.cli import UserError

HELP = "chat with a search agent: shows its thinking, query variants, passages, squeezed summaries and answer"

_THINK_RE = re.compile(r"<think>(.*?)</think>", re.DOTALL)
PASSAGES_SHOWN = 3
SNIPPET_CHARS = 160


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="policy: model directory, .gguf file or 'smollm2'")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--index", help="index directory built by `expandsearch index`")
    source.add_argument("--retriever-url", help="retriever server URL (expandsearch serve-retriever)")
    parser.add_argument(
        "--squeezer", default="extractive", help="none, extractive, local:MODEL or openai:URL (default extractive)"
    )
    parser.add_argument("--engine-url", help="OpenAI-compatible completions endpoint serving --model (optional)")
    parser.add_argument("--once", metavar="QUESTION", help="answer this one question and exit")
    parser.add_argument("--json", action="store_true", help="print the full trace as JSON")
    parser.add_argument("--template", default="expandsearch", help="prompt template: expandsearch or search_r1")
    parser.add_argument("--variants", type=int, default=3, help="most query variants per search (default 3)")
    parser.add_argument("--topk", type=int, default=3, help="passages per variant (default 3)")
    parser.add_argument("--max-turns", type=int, default=4, help="turns per episode, answer included (default 4)")
    parser.add_argument("--turn-tokens", type=int, default=500, help="most tokens per policy turn (default 500)")
    parser.add_argument("--temperature", type=float, default=0.0, help="policy temperature (default 0: greedy)")


def run(args: argparse.Namespace) -> int:
    from agent_env.assembly import EnvSetupError, EnvSpec
    from agent_env.episode import EpisodeConfig

    try:
        config = EpisodeConfig(
            template=args.template,
            max_variants=args.variants,
            topk=args.topk,
            max_turns=args.max_turns,
            max_turn_tokens=args.turn_tokens,
            temperature=args.temperature,
        )
        spec = EnvSpec(
            model=args.model,
            engine_url=args.engine_url,
            index_dir=args.index,
            retriever_url=args.retriever_url,
            squeezer=args.squeezer,
            config=config,
        )
        return asyncio.run(_session(spec, args.once, args.json))
    except EnvSetupError as error:
        raise UserError(str(error)) from error


async def _session(spec: Any, once: str | None, as_json: bool) -> int:
    from rich.console import Console

    from agent_env.assembly import build_env, close_env

    console = Console(stderr=as_json)  # with --json, stdout carries only the JSON
    with console.status("loading the policy, the index and the squeezer…"):
        env = await build_env(spec)
    try:
        for question in _questions(once, console):
            await _answer(env, question, console, as_json)
    finally:
        await close_env(env)
    return 0


def _questions(once: str | None, console: Any) -> Any:
    if once is not None:
        yield once
        return
    console.print("[dim]Ask a question (empty line or Ctrl-D to quit).[/dim]")
    while True:
        try:
            question = console.input("[bold cyan]question>[/bold cyan] ").strip()
        except (EOFError, KeyboardInterrupt):
            return
        if not question:
            return
        yield question


async def _answer(env: Any, question: str, console: Any, as_json: bool) -> None:
    from agent_env.episode import run_episode

    trajectory = await run_episode(env, question)
    if as_json:
        json.dump(trajectory.to_dict(), sys.stdout)
        sys.stdout.write("\n")
        return
    show_trajectory(trajectory, console)


def show_trajectory(trajectory: Any, console: Any) -> None:
    """Print one episode turn by turn with rich panels."""
    from rich.panel import Panel

    console.rule(f"[bold]{trajectory.question}")
    for number, turn in enumerate(trajectory.turns, start=1):
        console.print(Panel(_turn_view(turn), title=f"turn {number}: {turn.action}", title_align="left"))
    answer = trajectory.answer if trajectory.answer is not None else "[italic](no answer)[/italic]"
    metrics = trajectory.metrics
    console.print(
        f"[bold green]answer:[/bold green] {answer}   [dim]({trajectory.num_turns} turns, "
        f"{metrics['searches']:.0f} searches, ended by {trajectory.termination})[/dim]"
    )


def _turn_view(turn: Any) -> Any:
    from rich.console import Group
    from rich.markup import escape
    from rich.text import Text

    parts: list[Any] = []
    thinking = " ".join(match.strip() for match in _THINK_RE.findall(turn.policy_text))
    if thinking:
        parts.append(Text.assemble(("thinking: ", "bold magenta"), thinking))
    if turn.action == "invalid":
        parts.append(Text.assemble(("invalid turn: ", "bold red"), f"{turn.error}\n", (turn.policy_text, "dim")))
    for index, query in enumerate(turn.queries):
        parts.append(Text.assemble((f"variant {index + 1}: ", "bold yellow"), query))
        for hit in (turn.hits_per_query[index] if index < len(turn.hits_per_query) else [])[:PASSAGES_SHOWN]:
            snippet = hit["text"][:SNIPPET_CHARS] + ("…" if len(hit["text"]) > SNIPPET_CHARS else "")
            parts.append(Text.from_markup(f"   [cyan]{escape(hit['title'])}[/cyan] [dim]{escape(snippet)}[/dim]"))
    if turn.observation:
        parts.append(Text.assemble((f"{_observation_label(turn)}: ", "bold blue"), turn.observation))
    if turn.answer is not None:
        parts.append(Text.assemble(("answer: ", "bold green"), turn.answer))
    return Group(*parts)


def _observation_label(turn: Any) -> str:
    """What the environment's reply to a turn was: feedback, the squeezer's summary, or raw passages after it failed."""
    if turn.action == "invalid":
        return "feedback"
    if turn.squeezer_fell_back:
        return f"raw passages (squeezer failed: {turn.squeezer_error})"
    return "summary"
