"""The augmenter: prompts, answer parsing, combination, and generation through both engine paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_env.augment import (
    ANSWER_PREFILL,
    PROMPTS,
    augment_queries,
    augment_texts,
    combine_document,
    combine_query,
    document_input,
    messages,
    parse_answer,
    prompt_ids,
    sampling_params,
    training_text,
)
from agent_env.engine import TransformersEngine
from agent_env.openai_compat import OpenAICompletionsEngine, create_llm_app
from retriever_server.corpus import Passage
from retriever_server.server import ServerThread

DOC = Passage("7", "Aspirin and fever", "Aspirin lowers fever in adults.")


def test_parse_answer_takes_the_last_complete_answer_without_labels() -> None:
    response = "<think>about fever</think> <answer>Keywords: aspirin,\n fever</answer> trailing"
    assert parse_answer(response) == "aspirin, fever"
    assert parse_answer("<answer>one</answer><answer>Summary: two</answer>") == "two"
    assert parse_answer("<think>no answer here</think>") is None
    assert parse_answer("<answer>Keywords: </answer>") is None
    assert parse_answer("<answer>unclosed") is None
    # a prefilled answer runs to </answer>, or to the end when the budget ran out
    assert parse_answer(" aspirin fever</answer>", prefilled=True) == "aspirin fever"
    assert parse_answer(" aspirin fev", prefilled=True) == "aspirin fev"


def test_combination_follows_the_reference_per_retriever() -> None:
    assert combine_query("q", "kw", "sparse") == "q kw"
    assert combine_query("q", "kw", "train") == "q\n\nkw"
    assert combine_query("q", None, "dense") == "q"
    assert combine_document(DOC, "fever drug", "sparse") == Passage("7", "Aspirin and fever fever drug", DOC.text)
    assert combine_document(DOC, "An abstract.", "dense") == Passage("7", DOC.title, f"An abstract.\n{DOC.text}")
    assert combine_document(DOC, None, "dense") is DOC
    assert training_text("doc", "kw") == "doc\n\nkw"
    assert training_text("doc", None) == "doc"
    assert document_input(DOC) == "Aspirin and fever. Aspirin lowers fever in adults."


def test_four_distinct_prompts_with_the_text_as_user_message() -> None:
    assert len(set(PROMPTS.values())) == 4
    chat = messages("dense", "document", "some text")
    assert chat[1] == {"role": "user", "content": "some text"}
    assert "<think>" in chat[0]["content"]
    assert "<think>" not in messages("dense", "document", "x", think=False)[0]["content"]
    with pytest.raises(ValueError, match="no prompt for kind 'lexical'"):
        messages("lexical", "query", "x")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def engine(tiny_policy_dir: Path) -> TransformersEngine:
    import torch

    torch.set_num_threads(1)
    return TransformersEngine.from_pretrained(str(tiny_policy_dir), device="cpu")


def test_long_documents_are_cut_to_the_prompt_budget(engine: TransformersEngine) -> None:
    long_text = "fever " * 2000
    ids = prompt_ids(engine.tokenizer, "sparse", "document", long_text, max_prompt_tokens=200, think=False)
    assert len(ids) <= 200
    assert engine.tokenizer.decode(ids).endswith(ANSWER_PREFILL)


def test_transformers_and_url_engines_give_the_same_greedy_augmentations(engine: TransformersEngine) -> None:
    queries = ["aspirin fever", "who founded the company", "a third query"]
    sampling = sampling_params(6)
    local = augment_texts(engine, engine.tokenizer, "sparse", "query", queries, sampling, think=False)
    assert [a.generated_tokens for a in local] == [6, 6, 6]  # the random tiny model never closes the answer
    assert all(a.answer for a in local)
    with ServerThread(create_llm_app(engine, engine.tokenizer, "tiny")) as server:
        remote = augment_texts(
            OpenAICompletionsEngine(server.url), engine.tokenizer, "sparse", "query", queries, sampling, think=False
        )
    assert remote == local
    combined = augment_queries(engine, engine.tokenizer, "sparse", queries, sampling, batch_size=2, think=False)
    assert combined == [combine_query(q, a.answer, "sparse") for q, a in zip(queries, local, strict=True)]
