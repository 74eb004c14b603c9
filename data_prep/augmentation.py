"""Offline augmentation of a whole corpus (or query set): batched, resumable after a kill, with its cost recorded.

``OUT/augmentations.jsonl`` is append-only, one record per augmented item keyed by its id::

    {"id", "answer" (str | null), "response", "prompt_tokens", "generated_tokens", "stop_reason"}

Each batch is written with one ``write`` and ``fsync``-ed before the next starts, so a kill (SIGKILL, power)
loses at most the batch in flight. A restart reads the file back, drops a torn last line, and augments only the
ids it lacks, in the original order and the same batch boundaries: no item is augmented twice and none is lost,
and with greedy decoding the resumed file equals an uninterrupted run's. ``OUT/settings.json`` pins the model,
prompt and sampling; resuming with other settings is refused (two prompts in one corpus would be
unmeasurable). ``OUT/stats.json`` records each run's items, seconds, items/s and tokens per item.

:func:`write_augmented_corpus` joins a corpus with its augmentations into a corpus file for ``expandsearch
index`` (:func:`agent_env.augment.combine_document`: BM25 appends the answer to the title, dense prepends it).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent_env.augment import Augmentation, Kind, Side, augment_texts, combine_document
from agent_env.engine import LLMEngine, SamplingParams
from retriever_server.corpus import Passage, write_wiki18_jsonl

AUGMENTATIONS_FILE = "augmentations.jsonl"
SETTINGS_FILE = "settings.json"
STATS_FILE = "stats.json"


class AugmentationError(ValueError):
    """An augmentation folder that cannot be resumed (other settings, corrupt records)."""


@dataclass(frozen=True)
class RunStats:
    """What one augmentation run did and what it cost."""

    items: int
    """Items augmented by this run (not counting those a previous run did)."""
    already_done: int
    seconds: float
    items_per_s: float
    prompt_tokens_per_item: float
    generated_tokens_per_item: float
    no_answer: int
    """Items whose response had no usable ``<answer>`` (they keep their original text)."""


def read_augmentations(path: str | Path, *, repair: bool = False) -> dict[str, dict[str, Any]]:
    """id → record of an augmentations file. A torn last line (a kill mid-write) is an error unless ``repair``,
    which truncates the file to its last complete record."""
    path = Path(path)
    if not path.is_file():
        return {}
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1  # everything after the last newline is a torn write
    if end < len(data):
        if not repair:
            raise AugmentationError(f"{path}: last record is incomplete (resume the augmentation to repair it)")
        with path.open("r+b") as handle:
            handle.truncate(end)
            os.fsync(handle.fileno())
    records: dict[str, dict[str, Any]] = {}
    for number, line in enumerate(data[:end].decode("utf-8").splitlines(), start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise AugmentationError(f"{path}:{number}: not valid JSON ({error.msg})") from error
        if not isinstance(record, dict) or not isinstance(record.get("id"), str):
            raise AugmentationError(f"{path}:{number}: a record needs a string 'id'")
        if record["id"] in records:
            raise AugmentationError(f"{path}:{number}: id {record['id']!r} augmented twice")
        records[record["id"]] = record
    return records


def _check_settings(out: Path, settings: Mapping[str, Any]) -> None:
    path = out / SETTINGS_FILE
    wanted = json.loads(json.dumps(settings))  # the JSON form, as it is stored
    if path.is_file():
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored != wanted:
            changed = sorted(key for key in {*stored, *wanted} if stored.get(key) != wanted.get(key))
            raise AugmentationError(
                f"{out} holds augmentations made with other settings ({', '.join(changed)} differ); "
                "use another --out or the same settings"
            )
        return
    path.write_text(json.dumps(wanted, indent=2) + "\n", encoding="utf-8")


def run_augmentation(
    items: Sequence[tuple[str, str]],
    out_dir: str | Path,
    *,
    engine: LLMEngine,
    tokenizer: Any,
    kind: Kind,
    side: Side,
    sampling: SamplingParams,
    settings: Mapping[str, Any],
    batch_size: int = 8,
    max_prompt_tokens: int | None = 512,
    think: bool = True,
    progress: bool = True,
    after_batch: Callable[[int], None] | None = None,
) -> RunStats:
    """Augment every ``(id, text)`` of ``items`` not already in ``OUT/augmentations.jsonl``; returns this run's
    stats (also appended to ``OUT/stats.json``). ``after_batch(n)`` is called after the n-th batch is durable."""
    from tqdm import tqdm

    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    ids = [item_id for item_id, _ in items]
    if len(set(ids)) != len(ids):
        raise AugmentationError("item ids are not unique")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_settings(out, {**settings, "kind": kind, "side": side, "batch_size": batch_size, "think": think})
    done = read_augmentations(out / AUGMENTATIONS_FILE, repair=True)
    unknown = sorted(set(done) - set(ids))
    if unknown:
        raise AugmentationError(f"{out}: augmented id {unknown[0]!r} is not among the items (another corpus?)")
    pending = [item for item in items if item[0] not in done]
    tally = _Tally(already_done=len(done))
    plural = {"query": "queries", "document": "documents"}[side]
    bar = tqdm(total=len(items), initial=len(done), disable=not progress, unit=side[:3], desc=f"augment {plural}")
    try:
        with (out / AUGMENTATIONS_FILE).open("a", encoding="utf-8") as handle:
            for number, start in enumerate(range(0, len(pending), batch_size), start=1):
                batch = pending[start : start + batch_size]
                texts = [text for _, text in batch]
                results = augment_texts(
                    engine, tokenizer, kind, side, texts, sampling, max_prompt_tokens=max_prompt_tokens, think=think
                )
                lines = [
                    json.dumps({"id": item_id, **asdict(result)}, ensure_ascii=False) + "\n"
                    for (item_id, _), result in zip(batch, results, strict=True)
                ]
                handle.write("".join(lines))  # one write per batch: a kill leaves whole batches (or one torn line)
                handle.flush()
                os.fsync(handle.fileno())
                tally.add(results)
                bar.update(len(batch))
                if after_batch is not None:
                    after_batch(number)
    finally:
        # also when interrupted by an exception (Ctrl-C): the items already written were paid for
        bar.close()
        stats = tally.stats(time.perf_counter() - tally.started)
        _append_stats(out / STATS_FILE, stats)
    return stats


@dataclass
class _Tally:
    """Running counts of one augmentation run."""

    already_done: int
    items: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    no_answer: int = 0
    started: float = field(default_factory=time.perf_counter)

    def add(self, results: Sequence[Augmentation]) -> None:
        self.items += len(results)
        self.prompt_tokens += sum(result.prompt_tokens for result in results)
        self.generated_tokens += sum(result.generated_tokens for result in results)
        self.no_answer += sum(result.answer is None for result in results)

    def stats(self, seconds: float) -> RunStats:
        count = self.items
        return RunStats(
            items=count,
            already_done=self.already_done,
            seconds=seconds,
            items_per_s=count / seconds if count and seconds > 0 else 0.0,
            prompt_tokens_per_item=self.prompt_tokens / count if count else 0.0,
            generated_tokens_per_item=self.generated_tokens / count if count else 0.0,
            no_answer=self.no_answer,
        )


def _append_stats(path: Path, stats: RunStats) -> None:
    runs = json.loads(path.read_text(encoding="utf-8"))["runs"] if path.is_file() else []
    runs.append(asdict(stats))
    path.write_text(json.dumps({"runs": runs}, indent=2) + "\n", encoding="utf-8")


def write_augmented_corpus(
    corpus: Sequence[Passage], augmentations: Mapping[str, Mapping[str, Any]], kind: Kind, path: str | Path
) -> dict[str, int]:
    """Write the corpus with each document combined with its augmentation (none: the original) for ``kind``'s
    retriever; returns counts of documents written, augmented (with an answer) and left as they were."""
    augmented = 0

    def documents() -> Any:
        nonlocal augmented
        for passage in corpus:
            answer = augmentations.get(passage.id, {}).get("answer")
            augmented += bool(answer)
            yield combine_document(passage, answer, kind)

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    written = write_wiki18_jsonl(documents(), path)
    return {"documents": written, "augmented": augmented, "original": written - augmented}
