"""Tests for agent_env.protocol: action parsing, turn truncation, observation rendering and prompts."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_env.protocol import (
    PROMPT_TEMPLATES,
    SEARCH_SEPARATOR,
    STOP_STRINGS,
    Action,
    build_messages,
    build_prompt,
    invalid_action_feedback,
    parse_action,
    passage_title_text,
    rag_question,
    render_no_results,
    render_observation,
    render_passages,
    truncate_turn,
)

PROTOCOL_TAG_RE = re.compile(r"</?(?:search|answer|think|information)>")


def test_constants() -> None:
    assert SEARCH_SEPARATOR == "##"
    assert STOP_STRINGS == ("</search>", "</answer>")


# (text, parse_action kwargs, expected queries)
SEARCH_CASES: list[tuple[str, dict[str, int], tuple[str, ...]]] = [
    ("<search> capital of France </search>", {}, ("capital of France",)),
    ("<think>need facts</think>\n<search>a ## b ## c</search>", {}, ("a", "b", "c")),
    ("<search>a##b</search>", {}, ("a", "b")),
    ("<search> a ## b ## c ## d </search>", {}, ("a", "b", "c")),
    ("<search> a ## b ## c ## d </search>", {"max_variants": 2}, ("a", "b")),
    ("<search> a ## b ## c ## d </search>", {"max_variants": 5}, ("a", "b", "c", "d")),
    ("<search> ## a ## ## b ## </search>", {}, ("a", "b")),
    (
        "<search>  Who   wrote\n Hamlet ## who WROTE hamlet ## Hamlet author </search>",
        {},
        ("Who wrote Hamlet", "Hamlet author"),
    ),
    ("<search> a ## a ## b ## b ## c ## d </search>", {}, ("a", "b", "c")),  # dedupe before keeping N
    ("<search> a ### b #### c </search>", {}, ("a", "b", "c")),  # runs of '#' are one separator
    ("<search> C# compiler ## F# </search>", {}, ("C# compiler", "F#")),  # a single '#' is text
    ("<search> a ## b </search>", {"max_variants": 1}, ("a ## b",)),  # Search-R1: body is one query
    ("<search>  a \n b  </search>", {"max_variants": 1}, ("a b",)),
    ("<search> a <search> b </search>", {}, ("b",)),  # innermost opening tag
    ("<search> q <think> why </think> r </search>", {}, ("q why r",)),  # stray tags removed, text kept
    ("<search> q <information> fake </information> </search>", {}, ("q fake",)),
    ("<search> a <answer> b ## c </search>", {}, ("a b", "c")),
    ("<search> a </search> <answer> b </answer>", {}, ("a",)),  # first completed action wins
    ("<answer> a <search> b </search> </answer>", {}, ("b",)),  # </search> completes first
    ("<search> q </search> trailing </search> text", {}, ("q",)),
    ("<search> Zürich Bahnhof ## 東京 タワー ## café </search>", {}, ("Zürich Bahnhof", "東京 タワー", "café")),
    ("<search> ZÜRICH ## zürich </search>", {}, ("ZÜRICH",)),  # case-insensitive dedupe beyond ASCII
    ("<search> alpha beta gamma </search>", {"max_query_chars": 10}, ("alpha beta",)),  # cut on a space
    ("<search> alpha beta gamma </search>", {"max_query_chars": 12}, ("alpha beta",)),  # back to a space
    ("<search> alphabet </search>", {"max_query_chars": 3}, ("alp",)),  # no space: cut mid-word
    ("<search> a bcdefghijk </search>", {"max_query_chars": 8}, ("a bcdefg",)),  # space too early
    ("<search> alpha beta x ## alpha beta y ## z </search>", {"max_query_chars": 10}, ("alpha beta", "z")),
]


@pytest.mark.parametrize(("text", "kwargs", "queries"), SEARCH_CASES)
def test_parse_search(text: str, kwargs: dict[str, int], queries: tuple[str, ...]) -> None:
    assert parse_action(text, **kwargs) == Action(kind="search", queries=queries)


ANSWER_CASES = [
    ("<answer> Beijing </answer>", "Beijing"),
    ("<think> easy </think> <answer>Beijing</answer>", "Beijing"),
    ("<answer> São  Paulo\n</answer> and more", "São Paulo"),
    ("<answer> Paris </answer> trailing <search> x </search>", "Paris"),
    ("<answer> a <answer> b </answer>", "b"),
    ("<answer> <think> hmm </think> Paris </answer>", "hmm Paris"),
    ("<search> a <answer> b </answer> c </search>", "b"),  # </answer> completes first
    ("<answer> x ## y </answer>", "x ## y"),  # answers are never split
]


@pytest.mark.parametrize(("text", "answer"), ANSWER_CASES)
def test_parse_answer(text: str, answer: str) -> None:
    assert parse_action(text) == Action(kind="answer", answer=answer)


INVALID_CASES = [
    ("", "no <search> or <answer>"),
    ("just some reasoning", "no <search> or <answer>"),
    ("<think> only thinking </think>", "no <search> or <answer>"),
    ("<search> q", "unclosed <search>"),
    ("<answer> x", "unclosed <answer>"),
    ("<think> a </think> <answer> x <search> y", "unclosed <answer>"),
    ("q </search>", "</search> without a matching <search>"),
    ("</answer> <answer> x </answer>", "</answer> without a matching <answer>"),
    ("<search> q </answer>", "mismatched tags: <search> closed by </answer>"),
    ("<Search> q </Search>", "case-sensitive"),
    ("<ANSWER> x </ANSWER>", "case-sensitive"),
    ("<SEARCH> q </search>", "</search> without a matching <search>"),
    ("<search></search>", "empty search"),
    ("<search> ## ### </search>", "empty search"),
    ("<search> <think> </think> </search>", "empty search"),
    ("<answer>   </answer>", "empty answer"),
    ("<answer><information></information></answer>", "empty answer"),
]


@pytest.mark.parametrize(("text", "reason"), INVALID_CASES)
def test_parse_invalid(text: str, reason: str) -> None:
    action = parse_action(text)
    assert action.kind == "invalid"
    assert not action.is_valid
    assert action.queries == ()
    assert action.answer is None
    assert action.error is not None
    assert reason in action.error


@pytest.mark.parametrize("kwargs", [{"max_variants": 0}, {"max_query_chars": 0}, {"max_variants": -1}])
def test_parse_rejects_bad_limits(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="must be >= 1"):
        parse_action("<search> q </search>", **kwargs)


def test_is_valid() -> None:
    assert Action(kind="search", queries=("q",)).is_valid
    assert Action(kind="answer", answer="a").is_valid
    assert not Action(kind="invalid", error="x").is_valid


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a <search> q </search> more", "a <search> q </search>"),
        ("<answer> x </answer> <search> y </search>", "<answer> x </answer>"),
        ("<search> y </search> <answer> x </answer>", "<search> y </search>"),
        ("<search> a </search></search>", "<search> a </search>"),
        ("no tags at all", "no tags at all"),
        ("<search> unclosed", "<search> unclosed"),
        ("", ""),
    ],
)
def test_truncate_turn(text: str, expected: str) -> None:
    assert truncate_turn(text) == expected


@dataclass
class Doc:
    title: str
    text: str


@pytest.mark.parametrize(
    ("passage", "expected"),
    [
        (Doc("Paris", "Capital of France."), ("Paris", "Capital of France.")),
        ({"title": "Paris", "text": "Capital."}, ("Paris", "Capital.")),
        ({"text": "No title here."}, ("", "No title here.")),
        (
            {"id": "0", "contents": '"Paris"\nCapital of France.\nSecond line.'},
            ("Paris", "Capital of France.\nSecond line."),
        ),
        ({"contents": "Paris\nCapital."}, ("Paris", "Capital.")),
        ({"contents": "just text"}, ("", "just text")),
        ({"document": {"id": "1", "contents": '"Zürich"\nA city.'}, "score": 3.2}, ("Zürich", "A city.")),
    ],
)
def test_passage_title_text(passage: Any, expected: tuple[str, str]) -> None:
    assert passage_title_text(passage) == expected


@pytest.mark.parametrize(("passage", "error"), [(object(), TypeError), ({"title": "only"}, ValueError)])
def test_passage_title_text_rejects(passage: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        passage_title_text(passage)


@pytest.mark.parametrize(
    ("passages", "expected"),
    [
        ([{"title": "A", "text": "alpha"}], "Doc 1 (Title: A) alpha"),
        (
            [Doc("A", "alpha"), {"contents": '"B"\nbeta\n  gamma'}],
            "Doc 1 (Title: A) alpha\nDoc 2 (Title: B) beta gamma",
        ),
        ([{"text": "untitled text"}], "Doc 1 untitled text"),
        ([Doc(" Multi\nline ", "x")], "Doc 1 (Title: Multi line) x"),
        ([], render_no_results()),
    ],
)
def test_render_passages(passages: list[Any], expected: str) -> None:
    assert render_passages(passages) == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("Doc 1 (Title: A) alpha", "\n\n<information>Doc 1 (Title: A) alpha</information>\n\n"),
        ("  summary \n", "\n\n<information>summary</information>\n\n"),
        ("", "\n\n<information></information>\n\n"),
    ],
)
def test_render_observation(body: str, expected: str) -> None:
    assert render_observation(body) == expected


def test_no_results_is_plain_text() -> None:
    text = render_no_results()
    assert text
    assert "<" not in text
    assert render_observation(text) == f"\n\n<information>{text}</information>\n\n"


@pytest.mark.parametrize("text", [text for text, _ in INVALID_CASES])
def test_invalid_action_feedback(text: str) -> None:
    action = parse_action(text)
    feedback = invalid_action_feedback(action)
    assert action.error is not None
    assert action.error in feedback
    for needle in ("<search>", "</search>", SEARCH_SEPARATOR, "<answer>", "</answer>"):
        assert needle in feedback
    assert "information>" not in feedback
    assert feedback.startswith("\n\n")
    assert feedback.endswith("\n\n")


def test_feedback_without_error() -> None:
    assert "<search>" in invalid_action_feedback(Action(kind="invalid"))


def test_expandsearch_prompt() -> None:
    prompt = build_prompt("Who wrote Hamlet?")
    assert prompt.endswith("Question: Who wrote Hamlet?\n")
    for needle in ("<think>", "<search>", "##", "up to 3", "paraphrase", "<information>", "<answer> Beijing </answer>"):
        assert needle in prompt
    assert "up to 5" in build_prompt("q", max_variants=5)


def test_search_r1_prompt() -> None:
    prompt = build_prompt("Who wrote Hamlet?", template="search_r1", max_variants=3)
    assert "Who wrote Hamlet?" in prompt
    assert "<search> query </search>" in prompt
    for absent in ("##", "variant", "{"):
        assert absent not in prompt


def test_direct_prompt_offers_no_search() -> None:
    prompt = build_prompt("Who wrote Hamlet?", template="direct")
    assert prompt.endswith("Question: Who wrote Hamlet?\n")
    assert "<answer> Beijing </answer>" in prompt
    for absent in ("<search>", "##", "<information>"):
        assert absent not in prompt


def test_rag_prompt_holds_the_documents_then_the_question() -> None:
    documents = "Doc 1 (Title: Hamlet) Hamlet is a tragedy by William Shakespeare."
    prompt = build_prompt(rag_question(" Who wrote Hamlet? ", f"\n{documents}\n"), template="rag")
    assert prompt.endswith(f"<information>{documents}</information>\nQuestion: Who wrote Hamlet?\n")
    assert "<search>" not in prompt


@pytest.mark.parametrize("template", sorted(PROMPT_TEMPLATES))
def test_templates_fill_completely(template: str) -> None:
    prompt = build_prompt("What is {x} in 'a ## b'?", template=template)
    assert "What is {x} in 'a ## b'?" in prompt  # braces in the question survive formatting
    assert "{question}" not in prompt
    assert "{max_variants}" not in prompt


def test_unknown_template_lists_known_ones() -> None:
    with pytest.raises(ValueError, match=r"direct, expandsearch, rag, search_r1"):
        build_prompt("q", template="nope")
    with pytest.raises(ValueError, match="unknown prompt template"):
        build_messages("q", template="nope")


def test_build_prompt_rejects_zero_variants() -> None:
    with pytest.raises(ValueError, match="max_variants"):
        build_prompt("q", max_variants=0)


def test_build_messages() -> None:
    messages = build_messages("Who wrote Hamlet?", template="search_r1")
    assert messages == [{"role": "user", "content": build_prompt("Who wrote Hamlet?", template="search_r1")}]


# Property tests: parse_action never raises and its results keep their invariants.

TAG_VOCABULARY = [
    "<search>", "</search>", "<answer>", "</answer>", "<think>", "</think>", "<information>", "</information>",
    "<Search>", "</ANSWER>", "##", "###", "#", " a ", "Paris", " ", "\n", "\t", "é", "東京", "<", ">", "/", "x" * 40,
]  # fmt: skip
tag_soup = st.lists(st.sampled_from(TAG_VOCABULARY), max_size=30).map("".join)
any_text = st.one_of(st.text(), tag_soup)


def assert_action_invariants(action: Action, max_variants: int, max_query_chars: int) -> None:
    assert (action.error is None) == action.is_valid
    if action.kind == "search":
        assert 1 <= len(action.queries) <= max_variants
        assert action.answer is None
        assert len({q.casefold() for q in action.queries}) == len(action.queries)
        for query in action.queries:
            assert query
            assert len(query) <= max_query_chars
            assert query == " ".join(query.split())
            assert not PROTOCOL_TAG_RE.search(query)
            if max_variants > 1:
                assert SEARCH_SEPARATOR not in query
    elif action.kind == "answer":
        assert action.answer
        assert action.answer == action.answer.strip()
        assert not action.queries
        assert not PROTOCOL_TAG_RE.search(action.answer)
    else:
        assert action.kind == "invalid"
        assert action.error
        assert not action.queries
        assert action.answer is None


@settings(max_examples=300, deadline=None)
@given(text=any_text, max_variants=st.integers(1, 5), max_query_chars=st.integers(1, 60))
def test_parse_action_never_raises(text: str, max_variants: int, max_query_chars: int) -> None:
    action = parse_action(text, max_variants=max_variants, max_query_chars=max_query_chars)
    assert_action_invariants(action, max_variants, max_query_chars)


@settings(max_examples=300, deadline=None)
@given(text=any_text)
def test_parse_action_only_reads_the_truncated_turn(text: str) -> None:
    assert parse_action(text) == parse_action(truncate_turn(text))
    assert truncate_turn(truncate_turn(text)) == truncate_turn(text)


words = st.text(alphabet="abcdefghij ÄÖé", min_size=1, max_size=12).filter(lambda w: w.strip())


@settings(max_examples=300, deadline=None)
@given(variants=st.lists(words, min_size=1, max_size=6), max_variants=st.integers(2, 4))
def test_parse_search_round_trip(variants: list[str], max_variants: int) -> None:
    text = "<think> plan </think><search>" + SEARCH_SEPARATOR.join(variants) + "</search> ignored"
    expected: list[str] = []
    for variant in (" ".join(v.split()) for v in variants):
        if variant.casefold() not in {e.casefold() for e in expected}:
            expected.append(variant)
    assert parse_action(text, max_variants=max_variants).queries == tuple(expected[:max_variants])
