"""Offline corpus augmentation with a tiny real model: a killed run resumes to exactly the uninterrupted output.

The model is a random-weight tiny Qwen2 (varied output at ``initializer_range`` 0.3) with a tokenizer trained on a
SciFact slice; decoding is greedy, so two runs over the same batches write the same records.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from agent_env.augment import document_input, sampling_params
from agent_env.engine import TransformersEngine
from agent_env.tiny_model import TinyQwen2Config, save_tiny_policy
from data_prep.augmentation import (
    AUGMENTATIONS_FILE,
    AugmentationError,
    read_augmentations,
    run_augmentation,
    write_augmented_corpus,
)
from data_prep.beir import load_corpus
from retriever_server.corpus import Passage, load_passages

SETTINGS = {"model": "tiny", "max_new_tokens": 10}
BATCH = 3


@pytest.fixture(scope="module")
def slice_corpus(real_data: Path) -> list[Passage]:
    return load_corpus(real_data / "beir" / "scifact" / "corpus.jsonl")[:14]


@pytest.fixture(scope="module")
def varied_model_dir(slice_corpus: list[Passage], tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts = [document_input(passage) for passage in slice_corpus] + ["<answer> keywords </answer>"]
    config = TinyQwen2Config(initializer_range=0.3, max_position_embeddings=1024)
    return save_tiny_policy(tmp_path_factory.mktemp("varied_tiny"), texts, vocab_size=600, config=config)


@pytest.fixture(scope="module")
def engine(varied_model_dir: Path) -> TransformersEngine:
    import torch

    torch.set_num_threads(1)
    return TransformersEngine.from_pretrained(str(varied_model_dir), device="cpu")


def items_of(corpus: list[Passage]) -> list[tuple[str, str]]:
    return [(passage.id, document_input(passage)) for passage in corpus]


def augment(engine: TransformersEngine, items: list[tuple[str, str]], out: Path, **options: Any) -> Any:
    return run_augmentation(
        items,
        out,
        engine=engine,
        tokenizer=engine.tokenizer,
        kind="sparse",
        side="document",
        sampling=sampling_params(10),
        settings=SETTINGS,
        batch_size=BATCH,
        max_prompt_tokens=128,
        think=False,
        progress=False,
        **options,
    )


@pytest.fixture(scope="module")
def uninterrupted(
    engine: TransformersEngine, slice_corpus: list[Passage], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    stats = augment(engine, items_of(slice_corpus), out)
    assert stats.items == len(slice_corpus)
    assert stats.generated_tokens_per_item > 0
    return out / AUGMENTATIONS_FILE


class Stop(Exception):
    pass


def test_an_exception_after_two_batches_resumes_to_the_uninterrupted_output(
    engine: TransformersEngine, slice_corpus: list[Passage], uninterrupted: Path, tmp_path: Path
) -> None:
    def fail_after_two(number: int) -> None:
        if number == 2:
            raise Stop

    with pytest.raises(Stop):
        augment(engine, items_of(slice_corpus), tmp_path, after_batch=fail_after_two)
    assert len(read_augmentations(tmp_path / AUGMENTATIONS_FILE)) == 2 * BATCH
    stats = augment(engine, items_of(slice_corpus), tmp_path)
    assert (stats.items, stats.already_done) == (len(slice_corpus) - 2 * BATCH, 2 * BATCH)
    assert (tmp_path / AUGMENTATIONS_FILE).read_bytes() == uninterrupted.read_bytes()
    runs = json.loads((tmp_path / "stats.json").read_text())["runs"]
    assert [run["items"] for run in runs] == [2 * BATCH, len(slice_corpus) - 2 * BATCH]
    # a finished folder augments nothing more
    assert augment(engine, items_of(slice_corpus), tmp_path).items == 0


KILLED_RUN = """
import os, signal, sys, torch
torch.set_num_threads(1)
from agent_env.augment import sampling_params
from agent_env.engine import TransformersEngine
from data_prep.augmentation import run_augmentation
from data_prep.beir import load_corpus
from agent_env.augment import document_input
model_dir, corpus_path, out = sys.argv[1:4]
corpus = load_corpus(corpus_path)[:14]
engine = TransformersEngine.from_pretrained(model_dir, device="cpu")
def die(number):
    if number == 3:
        os.kill(os.getpid(), signal.SIGKILL)
run_augmentation([(p.id, document_input(p)) for p in corpus], out, engine=engine, tokenizer=engine.tokenizer,
    kind="sparse", side="document", sampling=sampling_params(10), settings={SETTINGS}, batch_size={BATCH},
    max_prompt_tokens=128, think=False, progress=False, after_batch=die)
"""


def test_a_sigkilled_run_resumes_to_the_uninterrupted_output(
    engine: TransformersEngine,
    slice_corpus: list[Passage],
    uninterrupted: Path,
    varied_model_dir: Path,
    real_data: Path,
    tmp_path: Path,
) -> None:
    script = textwrap.dedent(KILLED_RUN).replace("{SETTINGS}", repr(SETTINGS)).replace("{BATCH}", str(BATCH))
    corpus_path = real_data / "beir" / "scifact" / "corpus.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-c", script, str(varied_model_dir), str(corpus_path), str(tmp_path)]
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert finished.returncode == -signal.SIGKILL, finished.stderr
    # what a kill can leave: whole batches, maybe a torn last line (simulated: a kill mid-write)
    with (tmp_path / AUGMENTATIONS_FILE).open("a") as handle:
        handle.write('{"id": "torn", "ans')
    with pytest.raises(AugmentationError, match="incomplete"):
        read_augmentations(tmp_path / AUGMENTATIONS_FILE)
    stats = augment(engine, items_of(slice_corpus), tmp_path)
    assert stats.already_done == 3 * BATCH
    assert (tmp_path / AUGMENTATIONS_FILE).read_bytes() == uninterrupted.read_bytes()


def test_resuming_with_other_settings_is_refused(
    engine: TransformersEngine, slice_corpus: list[Passage], uninterrupted: Path
) -> None:
    with pytest.raises(AugmentationError, match=r"other settings \(max_new_tokens differ\)"):
        run_augmentation(
            items_of(slice_corpus),
            uninterrupted.parent,
            engine=engine,
            tokenizer=engine.tokenizer,
            kind="sparse",
            side="document",
            sampling=sampling_params(10),
            settings={**SETTINGS, "max_new_tokens": 99},
            batch_size=BATCH,
            think=False,
            progress=False,
        )


def test_the_augmented_corpus_appends_answers_to_titles_and_reads_back(
    slice_corpus: list[Passage], uninterrupted: Path, tmp_path: Path
) -> None:
    records = read_augmentations(uninterrupted)
    counts = write_augmented_corpus(slice_corpus, records, "sparse", tmp_path / "corpus.jsonl")
    written = load_passages(tmp_path / "corpus.jsonl")
    assert counts["documents"] == len(written) == len(slice_corpus)
    assert counts["augmented"] == sum(bool(record["answer"]) for record in records.values()) > 0
    for original, augmented in zip(slice_corpus, written, strict=True):
        answer = records[original.id]["answer"]
        assert augmented.text == original.text
        assert augmented.title == (" ".join(f"{original.title} {answer}".split()) if answer else original.title)
