"""Squeezers: the prompt that is sent, fallbacks, the extractive squeezer on the synthetic world, local LLMs.

Everything runs for real: squeezers that must time out, raise or write garbage are small subclasses of the real
base class; the local squeezer drives a real micro-batching engine over the random-weight tiny Qwen2 (whose output
is noise, so it may pass or fall back, flagged) and, in one slow test, the real SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from agent_env.engine import Generation, SamplingParams, TransformersEngine
from agent_env.episode import AgentEnv, EpisodeConfig
from agent_env.protocol import render_no_results, render_passages
from agent_env.rollout import EpisodeInput, RolloutRunner
from agent_env.scripted import ScriptedPolicy
from agent_env.search import LocalSearch
from agent_env.squeezers import (
    FALLBACK_CHARS,
    SQUEEZER_KINDS,
    ExtractiveSqueezer,
    LocalLLMSqueezer,
    NoSqueezer,
    Squeezer,
    SqueezeRequest,
    SqueezeResult,
    fallback_text,
    make_squeezer,
    split_sentences,
    squeezer_messages,
    terms,
    tidy_summary,
    unusable_reason,
)
from data_prep.formats import QAExample
from data_prep.synthetic import RELATIONS, World, questions_of_type
from retriever_server.corpus import Passage

# ---------------------------------------------------------------------------------------------- requests


@pytest.fixture(scope="module")
def pages(tiny_world: World) -> dict[str, Passage]:
    """The world's one-fact passages joined per title into multi-sentence pages, like wiki-18 passages."""
    texts: dict[str, list[str]] = {}
    for passage in sorted(tiny_world.passages, key=lambda passage: int(passage.id)):
        texts.setdefault(passage.title, []).append(passage.text)
    return {title: Passage(title, title, " ".join(sentences)) for title, sentences in texts.items()}


def world_request(world: World, pages: dict[str, Passage], example: QAExample) -> SqueezeRequest:
    """What a search for ``example`` retrieves: its supporting pages among pages sharing the subject's family name.

    The variants name each hop's subject with a keyword of its relation, as a good policy's variants would.
    """
    hops = example.metadata["hops"]
    variants = tuple(f"{hop['subject']} {RELATIONS[hop['relation']].keywords[0]}" for hop in hops)
    by_id = {passage.id: passage for passage in world.passages}
    support = list(dict.fromkeys(by_id[passage_id].title for passage_id in example.metadata["supporting_ids"]))
    family = hops[0]["subject"].split()[-1]
    similar = sorted(title for title, page in pages.items() if family in page.text and title not in support)[:3]
    titles = similar[:1] + support + similar[1:]  # the supporting pages are not simply first
    return SqueezeRequest(example.question, variants, tuple(pages[title] for title in titles))


def supporting_sentences(world: World, example: QAExample) -> list[str]:
    by_id = {passage.id: passage for passage in world.passages}
    return [by_id[passage_id].text for passage_id in example.metadata["supporting_ids"]]


@pytest.fixture(scope="module")
def request_one(tiny_world: World, pages: dict[str, Passage]) -> SqueezeRequest:
    return world_request(tiny_world, pages, questions_of_type(tiny_world.questions["train"], "bridge")[0])


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


# ---------------------------------------------------------------------------------------------- the base class


class FixedSqueezer(Squeezer):
    """Writes a fixed summary (or raises, or sleeps), counting its calls."""

    def __init__(self, summary: str = "", *, error: Exception | None = None, sleep_s: float = 0.0, **options: Any):
        super().__init__(**options)
        self.summary, self.error, self.sleep_s = summary, error, sleep_s
        self.calls = 0

    async def _summarize(self, request: SqueezeRequest) -> str:
        self.calls += 1
        await asyncio.sleep(self.sleep_s)
        if self.error is not None:
            raise self.error
        return self.summary


def assert_fell_back(result: SqueezeResult, request: SqueezeRequest, error_part: str) -> None:
    assert result.fell_back
    assert result.error is not None
    assert error_part in result.error
    assert result.text == fallback_text(request)


def test_good_summary_passes_stripped(request_one: SqueezeRequest) -> None:
    result = run(FixedSqueezer("  Lalhou Bostes works for Stumar Foundry.\n").squeeze(request_one))
    assert result == SqueezeResult("Lalhou Bostes works for Stumar Foundry.", False, None, result.latency_s)


def test_timeout_falls_back_to_truncated_passages(request_one: SqueezeRequest) -> None:
    squeezer = FixedSqueezer("never seen", sleep_s=5.0, timeout_s=0.05)
    started = time.perf_counter()
    result = run(squeezer.squeeze(request_one))
    assert time.perf_counter() - started < 2.0  # the slow summary was abandoned, not awaited
    assert_fell_back(result, request_one, "timed out after 0.05 s")


def test_exception_falls_back(request_one: SqueezeRequest) -> None:
    result = run(FixedSqueezer(error=RuntimeError("model server is down")).squeeze(request_one))
    assert_fell_back(result, request_one, "RuntimeError: model server is down")


@pytest.mark.parametrize(
    ("summary", "reason"),
    [
        ("", "empty summary"),
        ("  \n\t ", "empty summary"),
        ("... !!! ?? -- ,", "no words"),
        ("Facts: <answer> Stumar Foundry </answer>", "protocol tags"),
        ("<search> Stumar Foundry headquarters </search>", "protocol tags"),
        ("The Stainstis company is " + "hairbroun " * 40, "repeats 'hairbroun'"),
    ],
)
def test_garbage_summary_falls_back(request_one: SqueezeRequest, summary: str, reason: str) -> None:
    assert_fell_back(run(FixedSqueezer(summary).squeeze(request_one)), request_one, reason)


def test_ordinary_prose_is_not_taken_for_a_loop() -> None:
    prose = (
        "Lalhou Bostes is employed by Stumar Foundry. Stumar Foundry has its headquarters in Momwick. "
        "The company was founded in 1901 and the city lies in the Kingdom of Stalzok."
    )
    assert unusable_reason(prose) is None


def test_fallback_is_cut_to_fallback_chars(pages: dict[str, Passage]) -> None:
    request = SqueezeRequest("Who?", ("who",), tuple(pages.values())[:40])
    assert len(render_passages(request.passages)) > 3 * FALLBACK_CHARS
    result = run(FixedSqueezer("").squeeze(request))
    assert result.fell_back
    assert result.text.startswith("Doc 1 (Title: ")
    assert result.text.endswith(" …")
    assert len(result.text) <= FALLBACK_CHARS + 2
    assert render_passages(request.passages).startswith(result.text[:-2])


def test_no_passages_gives_no_results_without_calling_the_squeezer() -> None:
    squeezer = FixedSqueezer("unused")
    result = run(squeezer.squeeze(SqueezeRequest("Who employs F. Tamrail?", ("F. Tamrail",), ())))
    assert result == SqueezeResult(render_no_results())
    assert squeezer.calls == 0


def test_squeeze_many_keeps_request_order(request_one: SqueezeRequest) -> None:
    requests = [SqueezeRequest(f"question {i}", (), request_one.passages) for i in range(5)]
    results = run(NoSqueezer().squeeze_many(requests))
    assert [result.text for result in results] == [render_passages(request_one.passages)] * 5


# ---------------------------------------------------------------------------------------------- none, make_squeezer


def test_none_returns_the_numbered_raw_passages(request_one: SqueezeRequest) -> None:
    result = run(NoSqueezer().squeeze(request_one))
    assert not result.fell_back
    assert result.text == render_passages(request_one.passages)
    lines = result.text.splitlines()
    assert len(lines) == len(request_one.passages)
    for number, (line, passage) in enumerate(zip(lines, request_one.passages, strict=True), start=1):
        assert line == f"Doc {number} (Title: {passage.title}) {passage.text}"


def test_make_squeezer_builds_each_kind(tiny_policy_dir: Path) -> None:
    assert isinstance(make_squeezer("none"), NoSqueezer)
    extractive = make_squeezer("extractive", timeout_s=5.0)
    assert isinstance(extractive, ExtractiveSqueezer)
    assert (extractive.max_tokens, extractive.timeout_s) == (128, 5.0)
    sized = make_squeezer("extractive:64")
    assert isinstance(sized, ExtractiveSqueezer)
    assert sized.max_tokens == 64
    local = make_squeezer(f"local:{tiny_policy_dir}", max_new_tokens=32)
    assert isinstance(local, LocalLLMSqueezer)
    assert isinstance(local.engine, TransformersEngine)
    assert local.sampling == SamplingParams(max_new_tokens=32, temperature=0.0, stop=())
    run(local.aclose())
    openai = make_squeezer("openai:http://127.0.0.1:9/v1#some-model")
    assert openai.name == "openai"
    run(openai.aclose())
    assert {"none", "extractive", "local", "openai"} <= set(SQUEEZER_KINDS)


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        ("vllm", ValueError, "unknown squeezer 'vllm'; known kinds: extractive, local, none, openai"),
        ("extractive:many", ValueError, "extractive:MAX_TOKENS"),
        ("extractive:0", ValueError, "extractive:MAX_TOKENS"),
        ("local:", ValueError, "needs a model"),
        ("local:/no/such/model", FileNotFoundError, "no model at /no/such/model"),
    ],
)
def test_make_squeezer_rejects_bad_specs(spec: str, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(")):
        make_squeezer(spec)


# ---------------------------------------------------------------------------------------------- extractive


def test_sentence_splitting_keeps_initials_and_titles() -> None:
    text = 'V. Oskmund was born in 1950. He met Dr. Smith in the U.S. Army!  "It was fun." Then\nhe left'
    assert split_sentences(text) == [
        "V. Oskmund was born in 1950.",
        "He met Dr. Smith in the U.S. Army!",
        '"It was fun."',
        "Then",
        "he left",
    ]


def test_terms_normalise_inflections_and_drop_stop_words() -> None:
    assert terms("Which company employs him?") == terms("the companies employing") == {"company", "employ"}
    assert terms("headquartered, founded; employer") == terms("Headquarters found employed")
    assert terms("Where was V. Oskmund born in 1950s?") == {"oskmund", "born", "1950"}


@pytest.mark.parametrize("qtype", ["single_hop", "bridge", "three_hop", "comparison"])
def test_extractive_keeps_the_supporting_sentences(tiny_world: World, pages: dict[str, Passage], qtype: str) -> None:
    squeezer = ExtractiveSqueezer()
    examples = questions_of_type(tiny_world.questions["train"], qtype)
    kept = needed = 0
    for example in examples:
        request = world_request(tiny_world, pages, example)
        extract = squeezer.extract(request)
        assert len(extract.split()) <= squeezer.max_tokens
        sentences = supporting_sentences(tiny_world, example)
        kept += sum(sentence in extract for sentence in sentences)
        needed += len(sentences)
    # Lexical matching misses some paraphrases ("is based in" for a "headquarters" variant); measured: 331/336,
    # 485/504, 222/252 and 166/168 sentences.
    assert kept / needed >= 0.85, f"{qtype}: kept {kept} of {needed} supporting sentences"


def test_extractive_output_for_one_request(tiny_world: World, pages: dict[str, Passage]) -> None:
    example = questions_of_type(tiny_world.questions["train"], "single_hop")[0]
    request = world_request(tiny_world, pages, example)
    assert request.question == "Who employs F. Tamrail?"
    extract = run(ExtractiveSqueezer().squeeze(request))
    # The answer passage keeps its number (Doc 2); "F. Tamrail is employed by Haive." matches "Tamrail" itself and
    # "Foulgais" through its title; the other Tamrail's page and the rest of this one score too low to be kept.
    assert extract == SqueezeResult(
        "Doc 2 (Title: Foulgais Tamrail) F. Tamrail is employed by Haive.", False, None, extract.latency_s
    )
    assert example.golden_answers[0] == "Haive Labs"


@pytest.mark.parametrize("max_tokens", [8, 12, 20, 40, 80, 128, 400])
def test_extractive_respects_the_budget(tiny_world: World, pages: dict[str, Passage], max_tokens: int) -> None:
    squeezer = ExtractiveSqueezer(max_tokens=max_tokens)
    for example in tiny_world.questions["train"][:60]:
        extract = squeezer.extract(world_request(tiny_world, pages, example))
        assert 0 < len(extract.split()) <= max_tokens
        assert unusable_reason(extract) is None


def test_extractive_budget_in_tokenizer_tokens(request_one: SqueezeRequest, engine_tokenizer: Any) -> None:
    squeezer = ExtractiveSqueezer(max_tokens=40, tokenizer=engine_tokenizer)

    def tokens(text: str) -> int:
        return len(engine_tokenizer.encode(text, add_special_tokens=False))

    extract = squeezer.extract(request_one)
    assert 0 < tokens(extract) <= 40
    assert tokens(ExtractiveSqueezer(max_tokens=40).extract(request_one)) > 40  # 40 words are more than 40 tokens


def test_extractive_is_deterministic(tiny_world: World, pages: dict[str, Passage]) -> None:
    requests = [world_request(tiny_world, pages, example) for example in tiny_world.questions["test"][:30]]
    first = [ExtractiveSqueezer().extract(request) for request in requests]
    again = [ExtractiveSqueezer().extract(request) for request in reversed(requests)]
    assert first == list(reversed(again))


def test_extractive_keeps_passage_and_sentence_order(request_one: SqueezeRequest) -> None:
    extract = ExtractiveSqueezer(max_tokens=400).extract(request_one)
    numbers = [int(line.split()[1]) for line in extract.splitlines()]
    assert numbers == sorted(numbers)
    for line in extract.splitlines():
        number = int(line.split()[1])
        passage = request_one.passages[number - 1]
        kept = [sentence for sentence in split_sentences(passage.text) if sentence in line]
        assert kept
        assert line == " ".join([f"Doc {number} (Title: {passage.title})", *kept])


def test_extractive_title_words_count_for_the_sentences_of_that_passage() -> None:
    passages = (
        Passage("1", "John Smith", "He was born in Orville in 1931. He liked boats."),
        Passage("2", "Mary Jones", "She was born in Bakholt in 1940."),
    )
    extract = ExtractiveSqueezer(max_tokens=12).extract(SqueezeRequest("Where was John Smith born?", (), passages))
    assert extract == "Doc 1 (Title: John Smith) He was born in Orville in 1931."


def test_extractive_represents_every_variant() -> None:
    passages = (
        Passage(
            "1",
            "Zirmere",
            " ".join(f"Zirmere is the hometown of {name}." for name in ("A. Berk", "B. Cole", "C. Dunn")),
        ),
        Passage("2", "Metai", "Metai has its headquarters in Zirmere. Metai was founded in 1901."),
    )
    # The hometown sentences cover the question fully and outscore the variant's partial match ("city" is nowhere);
    # by score alone they would fill the budget, but each query's best sentence goes in first.
    request = SqueezeRequest("Whose hometown is Zirmere?", ("Metai headquarters city",), passages)
    assert ExtractiveSqueezer(max_tokens=21).extract(request) == (
        "Doc 1 (Title: Zirmere) Zirmere is the hometown of A. Berk.\n"
        "Doc 2 (Title: Metai) Metai has its headquarters in Zirmere."
    )
    assert ExtractiveSqueezer(max_tokens=21).extract(SqueezeRequest(request.question, (), passages)) == (
        "Doc 1 (Title: Zirmere) Zirmere is the hometown of A. Berk. Zirmere is the hometown of B. Cole."
    )


@pytest.mark.parametrize(
    ("passages", "expected"),
    [
        ((Passage("1", "Only A Title", ""),), "Doc 1 (Title: Only A Title)"),
        ((Passage("1", "Blank", " \n\t "), Passage("2", "", "Tamrail was born in 1950.")), "Doc 2 Tamrail was"),
        (({"contents": '"Dict Page"\nTamrail lived in Momwick.'},), "Doc 1 (Title: Dict Page) Tamrail lived"),
        (({"title": "Punctuation", "text": "... !!! ???"},), "Doc 1 (Title: Punctuation) ... !!! ???"),
        ((Passage("1", "Überstadt", "Tamrail zog 1950 nach Überstadt. Es regnete."),), "Tamrail zog 1950"),
    ],
)
def test_extractive_handles_odd_passages(passages: tuple[Any, ...], expected: str) -> None:
    request = SqueezeRequest("Where did Tamrail live in 1950?", ("Tamrail",), passages)
    result = run(ExtractiveSqueezer().squeeze(request))
    assert expected in result.text
    assert not result.fell_back or "no words" in str(result.error)


def test_extractive_without_any_match_keeps_the_leads(pages: dict[str, Passage]) -> None:
    passages = (pages["Zirmere"], pages["Lenport"])
    extract = ExtractiveSqueezer().extract(SqueezeRequest("What is the boiling point of quux?", (), passages))
    leads = [f"Doc {n} (Title: {p.title}) {split_sentences(p.text)[0]}" for n, p in enumerate(passages, 1)]
    assert extract == "\n".join(leads)


def test_extractive_cuts_a_sentence_longer_than_the_budget() -> None:
    text = " ".join(f"Tamrail{index}" for index in range(300))  # one "sentence" of 300 words
    request = SqueezeRequest("Tamrail0?", (), (Passage("1", "Long", text),))
    extract = ExtractiveSqueezer(max_tokens=50).extract(request)
    assert extract.startswith("Doc 1 (Title: Long) Tamrail0 Tamrail1 ")
    assert len(extract.split()) == 50


def test_extractive_is_fast(wiki18_passages: tuple[Passage, ...]) -> None:
    """9 wiki-18 passages (~870 words) per request, the ExpandSearch shape (3 variants x top-3)."""
    requests = []
    for start in range(0, 9 * 100, 9):
        chunk = wiki18_passages[start : start + 9]
        question = f"What did {chunk[0].title} do in {chunk[4].title}?"
        requests.append(SqueezeRequest(question, (chunk[0].title, f"{chunk[4].title} history"), chunk))
    squeezer = ExtractiveSqueezer()
    timings = []
    for request in requests * 3:  # the first pass fills the word cache, as a long run does
        started = time.perf_counter()
        squeezer.extract(request)
        timings.append(time.perf_counter() - started)
    median = statistics.median(timings[len(requests) :])
    # Measured about 0.3-0.5 ms on a loaded 2-core machine; the bound leaves room for slower CI runners.
    assert median < 3e-3, f"median {median * 1e3:.2f} ms per request"


# ---------------------------------------------------------------------------------------------- local LLM


class RecordingEngine(TransformersEngine):
    """The real engine, keeping the prompt ids and sampling of every generate call."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.prompts: list[list[int]] = []
        self.samplings: list[SamplingParams] = []

    async def generate(self, prompt_ids: Sequence[int], sampling: SamplingParams) -> Generation:
        self.prompts.append(list(prompt_ids))
        self.samplings.append(sampling)
        return await super().generate(prompt_ids, sampling)


@pytest.fixture(scope="module")
def tiny_model(tiny_policy_dir: Path) -> Iterator[tuple[Any, Any]]:
    """The random-weight tiny Qwen2 and its tokenizer, on one torch thread (CPU shared with other workers)."""
    import torch

    from agent_env.models import load_causal_lm

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_causal_lm(str(tiny_policy_dir), device="cpu")
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def engine_tokenizer(tiny_model: tuple[Any, Any]) -> Any:
    return tiny_model[1]


@pytest.fixture
def engine(tiny_model: tuple[Any, Any]) -> RecordingEngine:
    """A fresh engine per test, so its batch statistics and recorded prompts are that test's own."""
    return RecordingEngine(*tiny_model)


def chat_text(tokenizer: Any, request: SqueezeRequest) -> str:
    return str(tokenizer.apply_chat_template(squeezer_messages(request), tokenize=False, add_generation_prompt=True))


def test_local_sends_the_chat_templated_squeezer_prompt(engine: RecordingEngine, request_one: SqueezeRequest) -> None:
    tokenizer = engine.tokenizer
    squeezer = LocalLLMSqueezer(engine, tokenizer, max_new_tokens=16)
    result = run(squeezer.squeeze(request_one))
    assert len(engine.prompts) == 1
    sent = engine.prompts[0]
    assert sent == tokenizer.encode(chat_text(tokenizer, request_one), add_special_tokens=False)
    decoded = tokenizer.decode(sent, skip_special_tokens=False)
    assert decoded == chat_text(tokenizer, request_one)
    assert decoded.endswith("<|im_start|>assistant\n")
    assert f"Question: {request_one.question}\n" in decoded
    assert f"Search queries: {' ## '.join(request_one.queries)}\n" in decoded
    for number, passage in enumerate(request_one.passages, start=1):
        assert f"Doc {number} (Title: {passage.title}) {passage.text}" in decoded
    assert "only the facts" in decoded
    assert "needed to answer the question" in decoded
    assert engine.samplings == [SamplingParams(max_new_tokens=16, temperature=0.0, stop=())]
    # Random weights write noise: a summary or a flagged fallback, never an unflagged failure.
    if result.fell_back:
        assert result.error
        assert result.text == fallback_text(request_one)
    else:
        assert result.error is None
        assert unusable_reason(result.text) is None


def test_local_squeeze_many_is_one_batch(engine: RecordingEngine, tiny_world: World, pages: dict[str, Passage]) -> None:
    requests = [world_request(tiny_world, pages, example) for example in tiny_world.questions["train"][:4]]
    results = run(LocalLLMSqueezer(engine, engine.tokenizer, max_new_tokens=8).squeeze_many(requests))
    assert len(results) == 4
    assert len(engine.prompts) == 4
    assert engine.batch_stats.largest_batch == 4
    for result, request in zip(results, requests, strict=True):
        assert result.text
        assert not result.fell_back or result.text == fallback_text(request)


def test_local_is_greedy_and_deterministic(engine: RecordingEngine, request_one: SqueezeRequest) -> None:
    squeezer = LocalLLMSqueezer(engine, engine.tokenizer, max_new_tokens=12)
    first, second = run(squeezer.squeeze_many([request_one, request_one]))
    assert (first.text, first.fell_back, first.error) == (second.text, second.fell_back, second.error)


def test_local_cuts_passages_to_fit_the_context(engine: RecordingEngine, pages: dict[str, Passage]) -> None:
    passages = tuple(pages.values())[:60]
    request = SqueezeRequest("Where was Foulgais Tamrail born?", ("Foulgais Tamrail", "F. Tamrail hails"), passages)
    tokenizer = engine.tokenizer
    assert len(tokenizer.encode(chat_text(tokenizer, request), add_special_tokens=False)) > 2000
    squeezer = LocalLLMSqueezer(engine, tokenizer, max_new_tokens=16, max_context_tokens=400)
    run(squeezer.squeeze(request))
    sent = engine.prompts[0]
    assert 300 < len(sent) <= 400 - 16  # as much passage text as fits, and room for the summary
    decoded = tokenizer.decode(sent, skip_special_tokens=False)
    assert (
        "Question: Where was Foulgais Tamrail born?\nSearch queries: Foulgais Tamrail ## F. Tamrail hails\n" in decoded
    )
    assert f"Doc 1 (Title: {passages[0].title}) {passages[0].text}" in decoded  # best-ranked passages stay whole
    assert " …\n\nWrite only the facts" in decoded  # the last kept passage is cut, the instructions are intact
    assert decoded.endswith("<|im_start|>assistant\n")


def test_local_falls_back_when_even_the_question_does_not_fit(
    engine: RecordingEngine, request_one: SqueezeRequest
) -> None:
    request = SqueezeRequest("Where was Tamrail born? " * 100, request_one.queries, request_one.passages)
    result = run(LocalLLMSqueezer(engine, engine.tokenizer, max_new_tokens=16, max_context_tokens=200).squeeze(request))
    assert_fell_back(result, request, "does not fit the model's context (200 tokens, 16 kept for the summary)")
    assert engine.prompts == []


def test_local_no_passages_does_not_call_the_model(engine: RecordingEngine) -> None:
    result = run(LocalLLMSqueezer(engine, engine.tokenizer).squeeze(SqueezeRequest("Who?", ("who",), ())))
    assert result == SqueezeResult(render_no_results())
    assert engine.prompts == []


def test_local_timeout_falls_back(engine: RecordingEngine, request_one: SqueezeRequest) -> None:
    # The timer fires at the first await after the prompt is queued, long before a forward pass can finish.
    squeezer = LocalLLMSqueezer(engine, engine.tokenizer, max_new_tokens=32, timeout_s=0.001)
    assert_fell_back(run(squeezer.squeeze(request_one)), request_one, "timed out after 0.001 s")


@pytest.mark.parametrize(
    ("generated", "truncated", "tidy"),
    [
        ("A is a native of B.\n\nA is a native of B.\n\nA is a  native of b.\n\nA is", True, "A is a native of B."),
        (
            "Xavi worked as a pilot. Yann joined Zeta. Xavi worked as a pilot. Yann jo",
            True,
            "Xavi worked as a pilot. Yann joined Zeta.",
        ),
        (
            "Facts:\n- F. Tamrail (1985)\n- F. Tamrail (1985)\n- T. Tamrail (1990)",
            False,
            "Facts:\n- F. Tamrail (1985)\n- T. Tamrail (1990)",
        ),
        ("Only one unfinished sente", True, "Only one unfinished sente"),  # nothing else to keep: left for validation
        ("Ends without a period", False, "Ends without a period"),
    ],
)
def test_tidy_summary_drops_loops_and_a_cut_off_tail(generated: str, truncated: bool, tidy: str) -> None:
    assert tidy_summary(generated, truncated=truncated) == tidy


# ---------------------------------------------------------------------------------------------- the real SmolLM2


@pytest.fixture(scope="module")
def smollm2() -> Iterator[LocalLLMSqueezer]:
    """SmolLM2-135M-Instruct behind its own engine, on one torch thread.

    One thread: on this shared 2-core machine two torch threads decode SmolLM2 about ten times slower (measured:
    3 x 20 tokens in 61 s with two threads, 9 s with one). The timeout is generous for the same reason; this test
    is about what the model writes, not how fast a loaded CPU writes it.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    squeezer = LocalLLMSqueezer.from_spec("smollm2", device="cpu", max_new_tokens=128, timeout_s=600.0)
    yield squeezer
    run(squeezer.aclose())
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_smollm2_writes_real_summaries(smollm2: LocalLLMSqueezer, tiny_world: World, pages: dict[str, Passage]) -> None:
    examples = questions_of_type(tiny_world.questions["train"], "single_hop")[:3]
    requests = [world_request(tiny_world, pages, example) for example in examples]
    results = run(smollm2.squeeze_many(requests))
    # What it wrote (greedy, CPU; loops removed by tidy_summary): short, on topic, partly garbled, e.g.
    #   Who employs F. Tamrail?               -> "The documents that are needed to answer the question are:
    #                                             F. Tamrail (1985) / Talhom Tamrel (1985) / F. Tamrel (1985)"
    #   What is the occupation of P. Stampail? -> "Poubrin Stampail is a pilot, a botanist, and a novelist. ..."
    for request, result in zip(requests, results, strict=True):
        assert not result.fell_back, (request.question, result.error)
        # a summary of these documents, not a refusal or free text: it names something the documents name
        assert terms(result.text) & terms(render_passages(request.passages)), result.text
        assert len(result.text) < len(render_passages(request.passages))


@pytest.mark.slow
def test_smollm2_squeezes_inside_concurrent_episodes(
    smollm2: LocalLLMSqueezer, tiny_world: World, policy_tokenizer: Any, world_index: Any
) -> None:
    """The real model as the squeezer of three concurrent episodes: its summaries are what the policy reads."""
    examples = questions_of_type(tiny_world.questions["train"], "single_hop")[:3]
    searches = {
        example.question: f"{example.metadata['hops'][0]['subject']} ## "
        f"{example.metadata['hops'][0]['subject']} {RELATIONS[example.metadata['hops'][0]['relation']].keywords[0]}"
        for example in examples
    }

    def respond(context: str) -> str:
        if "</information>" in context.rsplit("<|im_start|>assistant", 1)[-1]:
            return "<answer> done </answer>"
        question = context.split("Question: ", 1)[1].split("\n", 1)[0]
        return f"<search> {searches[question]} </search>"

    env = AgentEnv(
        ScriptedPolicy(policy_tokenizer, respond), policy_tokenizer, LocalSearch(world_index), smollm2, EpisodeConfig()
    )
    batches_before = smollm2.engine.batch_stats.batch_sizes[:]  # type: ignore[attr-defined]
    runner = RolloutRunner(env)
    inputs = [EpisodeInput(example.question, tuple(example.golden_answers)) for example in examples]
    trajectories = run(runner.run(inputs))

    new_batches = smollm2.engine.batch_stats.batch_sizes[len(batches_before) :]  # type: ignore[attr-defined]
    assert max(new_batches) > 1, "the three episodes' squeezes were decoded together"
    for trajectory in trajectories:
        search_turn = trajectory.turns[0]
        assert search_turn.action == "search"
        assert not search_turn.squeezer_fell_back, search_turn.squeezer_error
        assert trajectory.metrics["squeezer_fallbacks"] == 0
        summary = search_turn.observation
        environment_text = policy_tokenizer.decode(
            [token for token, mask in zip(trajectory.response_ids, trajectory.response_mask, strict=True) if not mask]
        )
        assert summary.strip() in environment_text, "the summary went into the context as environment tokens"
