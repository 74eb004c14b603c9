"""QA data formats: FlashRAG jsonl and verl parquet (docs/formats.md).

``QAExample`` is one question in the FlashRAG convention (``id, question, golden_answers, metadata``).
``write_verl_parquet`` turns examples into the verl training/eval schema: ``data_source``, ``prompt``
(chat messages built from our templates), ``ability``, ``reward_model`` (rule style, gold targets),
``extra_info`` (split, index, question, id, type) and ``agent_name`` (our verl agent loop's registered name).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent_env import AGENT_LOOP_NAME
from agent_env.protocol import build_messages

ABILITY = "fact-reasoning"
VERL_COLUMNS = ("data_source", "prompt", "ability", "reward_model", "extra_info", "agent_name")


@dataclass(frozen=True)
class QAExample:
    """A question with its gold answers (aliases included) and free-form metadata."""

    id: str
    question: str
    golden_answers: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)


class QAFormatError(ValueError):
    """A QA file or record that does not match the FlashRAG layout."""


def write_qa_jsonl(examples: Iterable[QAExample], path: str | Path) -> int:
    count = 0
    with Path(path).open("w", encoding="utf-8") as handle:
        for example in examples:
            handle.write(json.dumps(asdict(example), ensure_ascii=False) + "\n")
            count += 1
    return count


def read_qa_jsonl(path: str | Path) -> list[QAExample]:
    """Read FlashRAG jsonl; every line needs ``question`` and a non-empty ``golden_answers`` list."""
    examples = []
    with Path(path).open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                golds = record["golden_answers"]
                question = record["question"]
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise QAFormatError(
                    f"{path}:{line_number}: expected FlashRAG fields id, question, golden_answers ({error!r})"
                ) from error
            if not isinstance(golds, list) or not golds:
                raise QAFormatError(f"{path}:{line_number}: golden_answers must be a non-empty list")
            if not isinstance(record.get("metadata") or {}, dict):
                raise QAFormatError(f"{path}:{line_number}: metadata must be a JSON object")
            examples.append(
                QAExample(
                    str(record.get("id", line_number - 1)),
                    str(question),
                    [str(gold) for gold in golds],
                    dict(record.get("metadata") or {}),
                )
            )
    return examples


def verl_row(
    example: QAExample,
    *,
    data_source: str,
    split: str,
    index: int,
    template: str = "expandsearch",
    max_variants: int = 3,
) -> dict[str, Any]:
    """One row of verl's RL dataset schema for ``example``."""
    return {
        "data_source": data_source,
        "prompt": build_messages(example.question, template=template, max_variants=max_variants),
        "ability": ABILITY,
        "reward_model": {"style": "rule", "ground_truth": {"target": list(example.golden_answers)}},
        "extra_info": {
            "split": split,
            "index": index,
            "question": example.question,
            "id": example.id,
            # the question type (bridge, comparison, …) where the source has one, else None: evaluations report EM
            # by type, and every file has the same extra_info fields, so mixed files keep their rows unchanged
            "type": _question_type(example),
        },
        "agent_name": AGENT_LOOP_NAME,
    }


def last_user_message(messages: Any) -> str | None:
    """The content of the last user message of a row's chat ``prompt`` (None without one): the question, where a
    row has no ``extra_info.question``."""
    if messages is None:
        return None
    users = [message for message in list(messages) if isinstance(message, dict) and message.get("role") == "user"]
    return str(users[-1]["content"]) if users else None


def _question_type(example: QAExample) -> str | None:
    question_type = example.metadata.get("type")
    return str(question_type) if question_type else None


def write_verl_parquet(
    examples: Sequence[QAExample],
    path: str | Path,
    *,
    data_source: str,
    split: str,
    template: str = "expandsearch",
    max_variants: int = 3,
) -> int:
    import pandas as pd

    rows = [
        verl_row(
            example, data_source=data_source, split=split, index=index, template=template, max_variants=max_variants
        )
        for index, example in enumerate(examples)
    ]
    pd.DataFrame(rows, columns=VERL_COLUMNS).to_parquet(path, index=False)
    return len(rows)
