"""Real-data demonstrations for a supervised warm start: scripted episodes played through the real environment.

A prompted small model never writes ``<search>``, so RL from it sees zero reward. ``expandsearch prepare demos``
(:func:`prepare_demos`) writes episodes the way the synthetic world's expert does (:mod:`data_prep.expert_policy`),
from what the datasets give: :mod:`data_prep.demo_plans` reads the hops off each record (supporting facts,
evidences, decompositions), a :class:`~data_prep.demo_responder.DemoResponder` is the policy of an
:class:`~agent_env.scripted.ScriptedPolicy`, and :func:`agent_env.episode.run_episode` plays it against the real
retriever and squeezer. So each trajectory holds exactly the prompt, the observations (squeezed, cut to the
observation budget, with the final-turn notice) and the ``response_mask`` the trainer will see::

    summary = prepare_demos(["hotpot.jsonl", "2wiki.jsonl"], "runs/demos", tokenizer_spec="smollm2",
                            build_index=True)   # or index_dir=... / retriever_url=...
    demos = read_demonstrations("runs/demos/demos.jsonl", tokenizer="smollm2")

An episode is kept only when a policy that sees nothing but the observations could have written it, checked in
this order (:func:`~data_prep.demo_responder.rejection_reason`): it answered (``no_answer``); every hop's
evidence was shown (``evidence_not_shown``); every bridge entity a query uses was shown before that query
(``bridge_not_shown``); the answer string was shown, or is yes/no or one of the question's own entities on a
comparison question (``answer_not_shown``); every quote was shown before it (``quote_not_shown``); EM reward 1
(``reward_zero``). Questions whose record gives no plan count as ``no_plan``.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_env.action_formats import make_action_format
from agent_env.episode import AgentEnv, EpisodeConfig, Trajectory, run_episode
from agent_env.scripted import ScriptedPolicy
from agent_env.search import SearchBackend
from agent_env.squeezers import Squeezer
from data_prep.benchmarks import BenchmarkQuestion
from data_prep.demo_plans import DemoPlan, PlannedInput, plan_file
from data_prep.demo_responder import REJECTION_REASONS, DemoResponder, rejection_reason

DEMOS_FILE = "demos.jsonl"
SUMMARY_FILE = "demos_summary.json"
CORPUS_FILE = "corpus.jsonl"
INDEX_DIR = "index"


# --- playing ------------------------------------------------------------------------------------------------------


def breadth_for(example_id: str, variant_mix: Sequence[int], seed: int) -> int:
    """One breadth per question, drawn from ``variant_mix`` by a generator seeded with (seed, id)."""
    return variant_mix[random.Random(f"{seed}/{example_id}").randrange(len(variant_mix))]


@dataclass
class Played:
    """One planned question played: its trajectory, the quotes of each turn, and why it was rejected (or None)."""

    plan: DemoPlan
    breadth: int
    trajectory: Trajectory
    quotes: list[list[str]]
    targets: list[list[int]]
    rejected: str | None


async def play_plans(
    plans: Sequence[DemoPlan],
    breadths: Sequence[int],
    *,
    tokenizer: Any,
    search: SearchBackend,
    squeezer: Squeezer,
    config: EpisodeConfig,
    concurrency: int = 64,
) -> list[Played]:
    """Play every plan through the real environment (concurrently, so the retriever batches them)."""
    limit = asyncio.Semaphore(concurrency)
    context = getattr(tokenizer, "model_max_length", None)
    context = context if isinstance(context, int) and context < 1_000_000 else None

    async def play(plan: DemoPlan, breadth: int) -> Played:
        responder = DemoResponder(plan, breadth, tokenizer, config)
        engine = ScriptedPolicy(tokenizer, responder, max_context_tokens=context)
        env = AgentEnv(engine, tokenizer, search, squeezer, config)
        async with limit:
            trajectory = await run_episode(
                env, plan.example.question, plan.example.golden_answers, example_id=plan.example.id
            )
        quotes, targets = responder.quotes[: len(trajectory.turns)], responder.targets[: len(trajectory.turns)]
        return Played(plan, breadth, trajectory, quotes, targets, rejection_reason(plan, trajectory, quotes, targets))

    return list(await asyncio.gather(*(play(plan, breadth) for plan, breadth in zip(plans, breadths, strict=True))))


# --- output -------------------------------------------------------------------------------------------------------


def chat_messages(played: Played, tokenizer: Any, config: EpisodeConfig) -> list[dict[str, str]]:
    """The episode as chat messages (for TRL / verl multi-turn SFT readers; the token-level trajectory is the
    exact one): the prompt, then each policy turn as an assistant message and each environment insertion as the
    turn the protocol shows it in — a user message in ``tags`` (where observations sit in the assistant's text,
    as the tag protocol's chat view shows them), a ``tool`` message holding the observation in ``tool_calls``."""
    action_format = make_action_format(config.protocol, tokenizer)
    messages = action_format.messages(played.plan.example.question, config.template, config.max_variants)
    trajectory = played.trajectory
    if config.protocol == "tool_calls":
        for turn in trajectory.turns:
            messages.append({"role": "assistant", "content": turn.policy_text.strip()})
            if turn.observation:
                messages.append({"role": "tool", "content": turn.observation.strip()})
        return messages
    start = 0
    for end in range(1, len(trajectory.response_ids) + 1):
        if end == len(trajectory.response_ids) or trajectory.response_mask[end] != trajectory.response_mask[start]:
            text = tokenizer.decode(trajectory.response_ids[start:end], skip_special_tokens=True).strip()
            messages.append({"role": "assistant" if trajectory.response_mask[start] else "user", "content": text})
            start = end
    return messages


def demo_record(played: Played, tokenizer: Any, tokenizer_spec: str, config: EpisodeConfig) -> dict[str, Any]:
    """One line of the demonstrations file."""
    plan, trajectory = played.plan, played.trajectory
    return {
        "id": plan.example.id,
        "data_source": plan.data_source,
        "question": plan.example.question,
        "golden_answers": list(plan.example.golden_answers),
        "breadth": played.breadth,
        "messages": chat_messages(played, tokenizer, config),
        "prompt_ids": trajectory.prompt_ids,
        "response_ids": trajectory.response_ids,
        "response_mask": trajectory.response_mask,
        "reward": trajectory.reward,
        "tokenizer": tokenizer_spec,
        "protocol": config.protocol,
        "hops": len(plan.hops),
        "searches": int(trajectory.metrics["searches"]),
        "quotes": played.quotes,
    }


@dataclass(frozen=True)
class DemoTrajectory:
    """What SFT reads of one demonstration (``expandsearch.sft.bc_example`` takes it as a TokenTrajectory)."""

    prompt_ids: list[int]
    response_ids: list[int]
    response_mask: list[int]
    reward: float
    example_id: str
    tokenizer: str
    data_source: str = ""
    breadth: int = 0
    protocol: str = "tags"
    """The action format the demonstration is written in (``EpisodeConfig.protocol``)."""


def read_demonstrations(path: str | Path, tokenizer: str | None = None) -> list[DemoTrajectory]:
    """The demonstrations of a ``demos.jsonl``; ValueError (one line) for a malformed line, or when ``tokenizer``
    (a spec) is given and a line was tokenized with another (its ids would mean other tokens)."""
    demos = []
    with Path(path).open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                demos.append(_demo(line, f"{path}:{number}"))
    for demo in demos:
        if tokenizer is not None and demo.tokenizer != normalize_spec(tokenizer):
            raise ValueError(f"{path}: tokenized with {demo.tokenizer!r}, not {normalize_spec(tokenizer)!r}")
    return demos


def _demo(line: str, where: str) -> DemoTrajectory:
    try:
        record = json.loads(line)
        demo = DemoTrajectory(
            [int(t) for t in record["prompt_ids"]],
            [int(t) for t in record["response_ids"]],
            [int(m) for m in record["response_mask"]],
            float(record["reward"]),
            str(record["id"]),
            str(record["tokenizer"]),
            str(record.get("data_source", "")),
            int(record.get("breadth", 0)),
            str(record.get("protocol", "tags")),
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{where}: not a demonstration line ({type(error).__name__}: {error})") from error
    if len(demo.response_ids) != len(demo.response_mask) or set(demo.response_mask) - {0, 1}:
        raise ValueError(f"{where}: response_mask must be 0/1 and as long as response_ids")
    return demo


def normalize_spec(spec: str | Path) -> str:
    """A tokenizer spec as recorded: a packaged name as it is, a path made absolute."""
    from agent_env.models import PACKAGED_MODELS

    return str(spec) if str(spec) in PACKAGED_MODELS else str(Path(spec).expanduser().resolve())


def summarize(played: Sequence[Played], unplanned: dict[str, Counter[str]], totals: Counter[str]) -> dict[str, Any]:
    """Per dataset: questions, kept, their share, kept per breadth, and the rejection reasons counted."""
    datasets: dict[str, Any] = {}
    for source in totals:
        rows = [p for p in played if p.plan.data_source == source]
        kept = [p for p in rows if p.rejected is None]
        reasons = Counter(p.rejected for p in rows if p.rejected) + unplanned.get(source, Counter())
        datasets[source] = {
            "questions": totals[source],
            "kept": len(kept),
            "share": round(len(kept) / totals[source], 4) if totals[source] else 0.0,
            "kept_by_breadth": dict(sorted(Counter(str(p.breadth) for p in kept).items())),
            "rejected": {reason: reasons[reason] for reason in REJECTION_REASONS if reasons[reason]},
        }
    return datasets


# --- the job ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoJob:
    """What ``expandsearch prepare demos`` was asked (the defaults: the episode defaults, three breadths)."""

    inputs: tuple[str, ...]
    out_dir: str
    tokenizer_spec: str
    index_dir: str | None = None
    retriever_url: str | None = None
    build_index: bool = False
    squeezer: str = "extractive"
    variant_mix: tuple[int, ...] = (1, 2, 3)
    limit: int | None = None
    seed: int = 0
    config: EpisodeConfig = field(default_factory=EpisodeConfig)

    def __post_init__(self) -> None:
        if sum((self.index_dir is not None, self.retriever_url is not None, self.build_index)) != 1:
            raise ValueError("give exactly one of an index directory, a retriever URL and --build-index")
        if not self.variant_mix or any(not 1 <= b <= self.config.max_variants for b in self.variant_mix):
            raise ValueError(f"variant mix {self.variant_mix} must be breadths within 1..{self.config.max_variants}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")


def prepare_demos(job: DemoJob) -> dict[str, Any]:
    """Plan, play, filter and write ``OUT/demos.jsonl`` and ``OUT/demos_summary.json``; returns the summary."""
    from agent_env.models import load_tokenizer, resolve_model_path
    from agent_env.squeezers import make_squeezer

    started = time.perf_counter()
    resolve_model_path(job.tokenizer_spec)  # the cheap checks first: a typo fails before any file is written
    squeezer = make_squeezer(job.squeezer)
    inputs = [plan_file(path, limit=job.limit, seed=job.seed) for path in job.inputs]
    out = Path(job.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    index_dir = _build_union_index(inputs, out) if job.build_index else job.index_dir
    tokenizer = load_tokenizer(job.tokenizer_spec)
    plans = [plan for planned in inputs for plan in planned.plans]
    breadths = [breadth_for(plan.example.id, job.variant_mix, job.seed) for plan in plans]
    played = asyncio.run(_play_job(job, index_dir, plans, breadths, tokenizer, squeezer))
    spec = normalize_spec(job.tokenizer_spec)
    kept = [p for p in played if p.rejected is None]
    with (out / DEMOS_FILE).open("w", encoding="utf-8") as handle:
        for demo in kept:
            handle.write(json.dumps(demo_record(demo, tokenizer, spec, job.config), ensure_ascii=False) + "\n")
    summary = _job_summary(job, inputs, played, index_dir, spec, time.perf_counter() - started)
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _build_union_index(inputs: Sequence[PlannedInput], out: Path) -> str:
    """BM25 over the union of the inputs' context paragraphs (``prepare qa``'s corpus, across all inputs)."""
    return str(build_context_index([question for planned in inputs for question in planned.questions], out))


def build_context_index(questions: Sequence[BenchmarkQuestion], out: Path) -> Path:
    """BM25 over the union of the questions' context paragraphs (deduplicated): ``out/corpus.jsonl`` and the
    index directory ``out/index``, which it returns."""
    from data_prep.benchmarks import context_corpus
    from retriever_server.corpus import write_wiki18_jsonl
    from retriever_server.index_dir import build_index

    passages, _ = context_corpus(questions)
    out.mkdir(parents=True, exist_ok=True)
    write_wiki18_jsonl(passages, out / CORPUS_FILE)
    build_index(out / CORPUS_FILE, "bm25", out / INDEX_DIR, progress=False)
    return out / INDEX_DIR


async def _play_job(
    job: DemoJob, index_dir: str | None, plans: list[DemoPlan], breadths: list[int], tokenizer: Any, squeezer: Any
) -> list[Played]:
    from agent_env.assembly import EnvSpec, build_search

    # The same choice agent_env.assembly offers: an index directory in-process, or a retriever server (health-checked).
    search = await build_search(EnvSpec(model="", index_dir=index_dir, retriever_url=job.retriever_url))
    try:
        return await play_plans(
            plans, breadths, tokenizer=tokenizer, search=search, squeezer=squeezer, config=job.config
        )
    finally:
        await search.aclose()
        await squeezer.aclose()


def _job_summary(
    job: DemoJob,
    inputs: Sequence[PlannedInput],
    played: Sequence[Played],
    index_dir: str | None,
    spec: str,
    seconds: float,
) -> dict[str, Any]:
    unplanned: dict[str, Counter[str]] = {}
    totals: Counter[str] = Counter()
    for planned in inputs:
        totals.update(planned.totals)
        for source, reasons in planned.unplanned.items():
            unplanned.setdefault(source, Counter()).update(reasons)
    datasets = summarize(played, unplanned, totals)
    return {
        "datasets": datasets,
        "questions": sum(totals.values()),
        "kept": sum(entry["kept"] for entry in datasets.values()),
        "inputs": list(job.inputs),
        "retriever": job.retriever_url or index_dir,
        "squeezer": job.squeezer,
        "topk": job.config.topk,
        "max_turns": job.config.max_turns,
        "variant_mix": list(job.variant_mix),
        "seed": job.seed,
        "limit": job.limit,
        "tokenizer": spec,
        "protocol": job.config.protocol,
        "seconds": round(seconds, 1),
    }
