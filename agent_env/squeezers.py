"""Squeezers: what turns one search's retrieved passages into the text the policy reads inside ``<information>``.

A frozen "squeezer" LLM reads the question, the query variants and every retrieved passage, and writes only the
facts needed to answer (ExpandSearch). One interface, several kinds (see :data:`SQUEEZER_KINDS` and
:func:`make_squeezer`):

- ``none``: the raw passages, numbered (Search-R1's observation);
- ``extractive`` or ``extractive:MAX_TOKENS``: no LLM; the retrieved sentences that best match the question and
  variants, within a budget (default 128 words);
- ``local:PATH``: a local transformers model (a model dir, a ``.gguf`` file, or ``smollm2``), micro-batched;
- ``openai:URL``: any OpenAI-compatible chat endpoint (``vllm serve MODEL``, SGLang, ``expandsearch serve-llm``).

:meth:`Squeezer.squeeze` never raises: a timeout, an exception or an unusable summary (empty, no words, protocol
tags, one word repeated in a loop) falls back to the first :data:`FALLBACK_CHARS` characters of the raw passages
(as the ExpandSearch reference code does), and the result says so, so episodes count fallbacks in their metrics.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from itertools import chain
from typing import Any, NamedTuple

from agent_env.engine import LLMEngine, SamplingParams
from agent_env.protocol import PassageLike, passage_title_text, render_no_results, render_passages

FALLBACK_CHARS = 1000
"""Raw-passage characters kept when the squeezer fails (ExpandSearch reference code: about 1000)."""

SQUEEZER_SYSTEM_PROMPT = (
    "You condense search results for a question-answering agent. Keep only the facts from the documents that "
    "help answer the question, stated concisely, with the names, dates and numbers exactly as written. Do not "
    "answer from your own knowledge and do not add explanations. If no document is relevant, say so in one "
    "sentence."
)

SQUEEZER_USER_TEMPLATE = (
    "Question: {question}\n"
    "Search queries: {queries}\n"
    "Documents:\n{passages}\n\n"
    "Write only the facts from these documents that are needed to answer the question, as briefly as possible."
)


@dataclass(frozen=True)
class SqueezeRequest:
    """One search action's input to the squeezer: the question, its query variants, the merged passages."""

    question: str
    queries: tuple[str, ...]
    passages: tuple[PassageLike, ...]


@dataclass(frozen=True)
class SqueezeResult:
    """The observation body (without ``<information>`` tags) and how it was obtained."""

    text: str
    fell_back: bool = False
    """True when the squeezer failed and ``text`` is the truncated raw passages."""
    error: str | None = None
    """Why it fell back (timeout, exception text, unusable output)."""
    latency_s: float = 0.0


def squeezer_messages(request: SqueezeRequest) -> list[dict[str, str]]:
    """The chat messages every LLM squeezer sends: the one place the squeezer prompt is built."""
    user = SQUEEZER_USER_TEMPLATE.format(
        question=request.question.strip(),
        queries=" ## ".join(request.queries),
        passages=render_passages(request.passages),
    )
    return [{"role": "system", "content": SQUEEZER_SYSTEM_PROMPT}, {"role": "user", "content": user}]


def fallback_text(request: SqueezeRequest, max_chars: int = FALLBACK_CHARS) -> str:
    """The raw passages, numbered, cut to ``max_chars`` at a word boundary."""
    text = render_passages(request.passages)
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    space = cut.rfind(" ")
    return (cut[:space] if space > max_chars // 2 else cut).rstrip() + " …"


_PROTOCOL_TAG_RE = re.compile(r"</?(?:search|answer|information|think)>")
_WORD_RE = re.compile(r"\w{2,}")


def unusable_reason(summary: str) -> str | None:
    """Why a squeezer's output cannot go to the policy, or None when it can."""
    if not summary.strip():
        return "empty summary"
    if not _WORD_RE.search(summary):
        return "summary has no words"
    if _PROTOCOL_TAG_RE.search(summary):
        # a summary that writes <answer> or <search> would be mistaken for the policy's own actions
        return "summary contains protocol tags"
    return _repetition(summary)


_REPETITION_MIN_WORDS = 20
_REPETITION_MAX_SHARE = 0.4


def _repetition(summary: str) -> str | None:
    """Why a summary is a degenerate loop (one word is most of it), or None.

    Small greedy LLMs fall into loops ("… Labs, is a hairbroun hairbroun hairbroun …") until they run out of
    tokens; the raw passages are better than that. In ordinary prose no word comes near 40% of a 20-word text.
    """
    words = _WORD_RE.findall(summary.lower())
    if len(words) < _REPETITION_MIN_WORDS:
        return None
    word, count = Counter(words).most_common(1)[0]
    if count <= _REPETITION_MAX_SHARE * len(words):
        return None
    return f"summary repeats {word!r} ({count} of {len(words)} words)"


class Squeezer(ABC):
    """Base of every squeezer: timeout, validation and fallback live here; subclasses write summaries."""

    name: str = "squeezer"

    def __init__(self, *, timeout_s: float = 60.0, fallback_chars: int = FALLBACK_CHARS) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.timeout_s = timeout_s
        self.fallback_chars = fallback_chars

    @abstractmethod
    async def _summarize(self, request: SqueezeRequest) -> str:
        """Write the summary of one request (may raise; the caller falls back)."""

    async def squeeze(self, request: SqueezeRequest) -> SqueezeResult:
        """The summary of one search's passages; never raises (falls back to truncated raw passages)."""
        if not request.passages:
            return SqueezeResult(render_no_results())
        started = time.perf_counter()
        try:
            summary = await asyncio.wait_for(self._summarize(request), self.timeout_s)
            problem = unusable_reason(summary)
        except TimeoutError:
            problem = f"timed out after {self.timeout_s:g} s"
        except Exception as error:  # any failure of the squeezer must not end the episode
            problem = f"{type(error).__name__}: {error}"
        latency = time.perf_counter() - started
        if problem is not None:
            return SqueezeResult(fallback_text(request, self.fallback_chars), True, problem, latency)
        return SqueezeResult(summary.strip(), False, None, latency)

    async def squeeze_many(self, requests: Sequence[SqueezeRequest]) -> list[SqueezeResult]:
        return list(await asyncio.gather(*(self.squeeze(request) for request in requests)))

    async def aclose(self) -> None:  # noqa: B027 -- optional hook, most squeezers hold nothing
        """Release clients or batchers (nothing by default)."""


class NoSqueezer(Squeezer):
    """Search-R1's observation: the raw passages, numbered, unchanged."""

    name = "none"

    async def _summarize(self, request: SqueezeRequest) -> str:
        return render_passages(request.passages)


SQUEEZER_KINDS: dict[str, Callable[..., Squeezer]] = {}
"""Squeezer kind → factory ``(argument, **options) -> Squeezer``; filled below and by the modules that add kinds."""


def make_squeezer(spec: str, **options: Any) -> Squeezer:
    """A squeezer from ``KIND`` or ``KIND:ARGUMENT``: ``none``, ``extractive[:MAX_TOKENS]``, ``local:PATH``,
    ``openai:URL``; ``options`` go to the squeezer's constructor (``timeout_s``, ``max_new_tokens``, …)."""
    kind, _, argument = spec.partition(":")
    if kind not in SQUEEZER_KINDS:
        raise ValueError(f"unknown squeezer {spec!r}; known kinds: {', '.join(sorted(SQUEEZER_KINDS))}")
    return SQUEEZER_KINDS[kind](argument, **options)


SQUEEZER_KINDS["none"] = lambda argument, **options: NoSqueezer(**options)


def _openai_squeezer(argument: str, **options: Any) -> Squeezer:
    from agent_env.openai_compat import OpenAIChatSqueezer  # imports httpx; only when asked for

    return OpenAIChatSqueezer(argument, **options)


SQUEEZER_KINDS["openai"] = _openai_squeezer


# ---------------------------------------------------------------------------------------------- extractive

# Common English function words and question words: they match everywhere and say nothing about relevance.
_STOP_WORDS_TEXT = """
a about after all also an and any are as at be been before being between both but by can could did do does during
each for from had has have he her hers him his how i if in into is it its me more most my no nor not of on once only
or other our out over own same she should so some such than that the their theirs them then there these they this
those through to too under until up very was we were what when where which while who whom whose why will with would
you your
"""
_STOP_WORDS = frozenset(_STOP_WORDS_TEXT.split())
# (suffix, replacement) pairs tried in order; the first that leaves a stem of 3+ letters is stripped, twice. Crude:
# query and passage words go through the same function, so only consistency matters ("employer", "employed" and
# "employs" all become "employ"; "founded" and "founding" become "found").
_SUFFIXES = (("ies", "y"), ("ers", ""), ("ing", ""), ("ed", ""), ("er", ""), ("s", ""))
_WORD_RE_UNICODE = re.compile(r"[^\W_]+")
# A sentence ends at . ! ? (optionally followed by a closing quote or bracket), then whitespace, then something
# that can start a sentence. The pattern starts with the punctuation so the scan skips most positions quickly.
_SENTENCE_END_RE = re.compile(r"[.!?][\"\u201d\u2019')\]]?(?=\s+[\"\u201c\u2018'(\[]?[A-Z0-9])")
# "V. Oskmund", "U.S. Army", "e.g. this": a period after initials does not end a sentence; nor does one after a
# title or a few abbreviations (case-sensitive: "Dr." is a title, "dr." at a sentence end is not).
_INITIALS_RE = re.compile(r"(?:[A-Za-z]\.)+")
_ABBREVIATIONS_TEXT = (
    "Mr. Mrs. Ms. Dr. Prof. St. Mt. Ft. Gen. Col. Lt. Sgt. Capt. Gov. Sen. Rep. Rev. Fr. No. vs. approx. ca."
)
_ABBREVIATIONS = frozenset(_ABBREVIATIONS_TEXT.split())


def _normalise(word: str) -> str:
    """The normal form of one lower-cased word; "" for words that should not count (stop words, single letters)."""
    if word in _STOP_WORDS or (len(word) < 2 and not word.isdigit()):
        return ""
    if word.isdigit() or len(word) <= 3:
        return word
    for _ in range(2):  # twice, so "headquarters" and "headquartered" both end as "headquart"
        word = _strip_suffix(word)
    # "base", "based", "bases" -> "bas": a final e comes and goes with the suffixes above
    return word[:-1] if word.endswith("e") and len(word) > 3 else word


class _TokenTermsCache(dict[str, tuple[str, ...]]):
    """Lower-cased whitespace token ("1969,", "four-and-a-half") -> its normal forms, filled on first use.

    Splitting on whitespace and looking each token up in a dict costs a fraction of running a word regex over
    every sentence (the regex then only runs once per distinct token), which keeps extraction well under 1 ms.
    """

    MAX_SIZE = 1 << 18  # cleared when full, so a long run over a huge vocabulary cannot grow it without bound

    def __missing__(self, token: str) -> tuple[str, ...]:
        if len(self) >= self.MAX_SIZE:
            self.clear()
        normal = self[token] = tuple(form for form in map(_normalise, _WORD_RE_UNICODE.findall(token)) if form)
        return normal


_TOKEN_TERMS = _TokenTermsCache()


def _strip_suffix(word: str) -> str:
    for suffix, replacement in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
            return word[: -len(suffix)] + replacement
    return word


def terms(text: str) -> frozenset[str]:
    """The distinct normalised content words of ``text`` (what the extractive squeezer matches on)."""
    return frozenset(chain.from_iterable(map(_TOKEN_TERMS.__getitem__, text.lower().split())))


def split_sentences(text: str) -> list[str]:
    """Split passage text into sentences, whitespace collapsed; initials and titles ("V. Oskmund", "Dr. X") stay."""
    sentences: list[str] = []
    for line in text.splitlines():
        start = 0
        for match in _SENTENCE_END_RE.finditer(line):
            sentence = line[start : match.end()].strip()
            if sentence and not _ends_with_abbreviation(sentence):
                sentences.append(" ".join(sentence.split()))
                start = match.end()
        rest = " ".join(line[start:].split())
        if rest:
            sentences.append(rest)
    return sentences


def _ends_with_abbreviation(sentence: str) -> bool:
    last = sentence.rsplit(" ", 1)[-1]
    return last in _ABBREVIATIONS or _INITIALS_RE.fullmatch(last) is not None


class _Sentence(NamedTuple):
    """One sentence of a request: its passage and place there, its terms (title terms included), its word count."""

    passage: int
    position: int
    text: str
    terms: frozenset[str]
    words: int


class ExtractiveSqueezer(Squeezer):
    """No LLM: keeps the retrieved sentences that best match the question and its variants, within a token budget.

    Scoring is computed over the sentences of one request only, so it needs no corpus statistics:

    - every sentence is a set of normalised content words (lower-cased, stop words dropped, a crude suffix
      stripper); the passage title's words count for each of its sentences, so "He was born in 1950." under the
      title "John Smith" matches a question about John Smith;
    - a word's weight is its IDF among the request's sentences, ``ln((N + 1) / (df + 0.5))``;
    - a sentence's coverage of one query is the weight of the query words it holds over the query's total weight;
      its score is its best coverage over the question and the variants, plus ``variant_bonus`` times its mean
      coverage (sentences that serve several queries rank first);
    - selection: first the best sentence of each query in turn (question first), so every variant, which may aim
      at a different hop, is represented; then the rest by score, down to ``min_relative_score`` of the best;
      each only if it fits the remaining budget. Nothing matches at all → the passages' first sentences.

    The kept sentences are written grouped by passage, in the original passage and sentence order, one line per
    passage with the same label as the raw passages (``Doc 3 (Title: …) sentence. sentence.``), so a policy
    sees the same document numbers with every squeezer. ``max_tokens`` bounds the whole output, labels included:
    whitespace-separated words, or tokens of ``tokenizer`` when one is given (a sentence longer than the whole
    budget is cut to fit when nothing else is kept; a budget smaller than one label gives just that label).
    Deterministic; pure Python, run on the event loop with no thread hop: a request of 9 wiki-18 passages
    (~870 words) takes about 0.3-0.5 ms.
    """

    name = "extractive"

    def __init__(
        self,
        *,
        max_tokens: int = 128,
        tokenizer: Any | None = None,
        min_relative_score: float = 0.3,
        variant_bonus: float = 0.25,
        timeout_s: float = 60.0,
        fallback_chars: int = FALLBACK_CHARS,
    ) -> None:
        super().__init__(timeout_s=timeout_s, fallback_chars=fallback_chars)
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        if not 0 <= min_relative_score <= 1:
            raise ValueError(f"min_relative_score must be in [0, 1], got {min_relative_score}")
        self.max_tokens = max_tokens
        self.tokenizer = tokenizer
        self.min_relative_score = min_relative_score
        self.variant_bonus = variant_bonus

    async def _summarize(self, request: SqueezeRequest) -> str:
        return self.extract(request)

    def extract(self, request: SqueezeRequest) -> str:
        """The extract of one request (synchronous; :meth:`squeeze` adds validation and fallback)."""
        titles_texts = [passage_title_text(passage) for passage in request.passages]
        labels = [_label(number, title) for number, (title, _) in enumerate(titles_texts, start=1)]
        sentences = self._sentences(titles_texts)
        if not sentences:  # passages with titles and no text: nothing to choose from, show what there is
            return render_passages(request.passages)
        queries = [query for query in (terms(text) for text in (request.question, *request.queries)) if query]
        scores, best_per_query = _score(sentences, queries, self.variant_bonus)
        order = self._selection_order(sentences, scores, best_per_query)
        chosen = self._fit_budget(order, sentences, labels)
        return _render_extract(chosen, sentences, labels)

    def count_tokens(self, text: str) -> int:
        """Budget units of ``text``: whitespace words, or the tokenizer's tokens when one was given."""
        if self.tokenizer is None:
            return len(text.split())
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def _sentences(self, titles_texts: Sequence[tuple[str, str]]) -> list[_Sentence]:
        """Every sentence of the request, with its terms (its passage title's included) and its word count."""
        sentences = []
        lookup = _TOKEN_TERMS.__getitem__
        for number, (title, text) in enumerate(titles_texts):
            title_terms = terms(title)
            for position, sentence in enumerate(split_sentences(text)):
                tokens = sentence.lower().split()
                sentence_terms = frozenset(chain(title_terms, chain.from_iterable(map(lookup, tokens))))
                sentences.append(_Sentence(number, position, sentence, sentence_terms, len(tokens)))
        return sentences

    def _cost(self, sentence: _Sentence) -> int:
        # Whitespace words were counted while splitting; a tokenizer runs only on the sentences offered to the budget,
        # on the text as it appears in the output (after a space), since BPE tokens differ at the start of a text.
        return sentence.words if self.tokenizer is None else self.count_tokens(f" {sentence.text}")

    def _label_cost(self, label: str) -> int:
        # As it appears after a line break (one token more than needed for the first line, never less).
        return self.count_tokens(f"\n{label}")

    def _selection_order(
        self, sentences: Sequence[_Sentence], scores: Sequence[float], best_per_query: Sequence[int]
    ) -> list[int]:
        """Sentence indices in the order they are offered to the budget."""
        top = max(scores, default=0.0)
        if top <= 0:  # no query word anywhere: the passages' leads are the best guess
            return [index for index, sentence in enumerate(sentences) if sentence.position == 0]
        threshold = top * self.min_relative_score
        ranked = sorted(range(len(sentences)), key=lambda index: (-scores[index], index))
        order = list(dict.fromkeys(index for index in best_per_query if index >= 0))
        return order + [index for index in ranked if scores[index] >= threshold and index not in order]

    def _fit_budget(self, order: Sequence[int], sentences: list[_Sentence], labels: Sequence[str]) -> list[int]:
        """The sentences of ``order`` that fit the budget; a passage's label is paid with its first sentence."""
        budget = self.max_tokens
        chosen: list[int] = []
        labelled: set[int] = set()
        for index in order:
            sentence = sentences[index]
            label_cost = 0 if sentence.passage in labelled else self._label_cost(labels[sentence.passage])
            cost = self._cost(sentence) + label_cost
            if cost <= budget:
                budget -= cost
                chosen.append(index)
                labelled.add(sentence.passage)
        if not chosen and order:  # even the best sentence is longer than the whole budget: keep its start
            chosen.append(self._clip_into(order[0], sentences, labels))
        return chosen

    def _clip_into(self, index: int, sentences: list[_Sentence], labels: Sequence[str]) -> int:
        """Replace sentence ``index`` by its longest word prefix that fits the budget with its label."""
        sentence = sentences[index]
        room = self.max_tokens - self._label_cost(labels[sentence.passage])
        words = sentence.text.split()
        keep = min(len(words), max(room, 0))
        while keep > 0 and self.count_tokens(" " + " ".join(words[:keep])) > room:
            keep -= 1
        sentences[index] = sentence._replace(text=" ".join(words[:keep]))
        return index


def _label(number: int, title: str) -> str:
    """``Doc 3 (Title: …)``, as :func:`~agent_env.protocol.render_passages` labels passage 3."""
    title = " ".join(title.split())
    return f"Doc {number} (Title: {title})" if title else f"Doc {number}"


def _score(
    sentences: Sequence[_Sentence], queries: Sequence[frozenset[str]], variant_bonus: float
) -> tuple[list[float], list[int]]:
    """Each sentence's score and, per query, the index of its best-covering sentence (-1 when none covers it)."""
    count = len(sentences)
    words = frozenset().union(*queries)
    # The query words each sentence holds; most sentences hold none and cost nothing more below.
    matches = [words & sentence.terms for sentence in sentences]
    document_frequency = Counter(chain.from_iterable(matches))
    weight = {word: math.log((count + 1) / (document_frequency[word] + 0.5)) for word in words}
    totals = [sum(weight[word] for word in query) for query in queries]
    coverage = [[0.0] * count for _ in queries]
    scores = [0.0] * count
    for index, matched in enumerate(matches):
        if not matched:
            continue
        column = [
            sum(weight[word] for word in query & matched) / total for query, total in zip(queries, totals, strict=True)
        ]
        for row, value in zip(coverage, column, strict=True):
            row[index] = value
        scores[index] = max(column) + variant_bonus * sum(column) / len(column)
    return scores, [_best_index(row) for row in coverage]


def _best_index(values: Sequence[float]) -> int:
    """The index of the largest positive value (the first on ties), or -1 when none is positive."""
    best = -1
    for index, value in enumerate(values):
        if value > 0 and (best < 0 or value > values[best]):
            best = index
    return best


def _render_extract(chosen: Sequence[int], sentences: Sequence[_Sentence], labels: Sequence[str]) -> str:
    """One line per passage with kept sentences, passages and sentences in their original order."""
    by_passage: dict[int, list[str]] = {}
    for index in sorted(chosen):  # sentences were built in passage, then position order
        by_passage.setdefault(sentences[index].passage, []).append(sentences[index].text)
    return "\n".join(" ".join([labels[passage], *texts]) for passage, texts in by_passage.items())


SQUEEZER_KINDS["extractive"] = lambda argument, **options: ExtractiveSqueezer(
    **({"max_tokens": _positive_int(argument, "extractive:MAX_TOKENS")} if argument else {}), **options
)


def _positive_int(text: str, form: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"expected {form} with a positive integer, got {text!r}")
    return int(text)


# ---------------------------------------------------------------------------------------------- local LLM


@dataclass(frozen=True)
class _Clipped:
    """A passage cut short to fit a model's context (a :class:`~agent_env.protocol.PassageLike`)."""

    title: str
    text: str


class LocalLLMSqueezer(Squeezer):
    """A local LLM writes the summary: the chat-templated :func:`squeezer_messages`, decoded greedily.

    ``engine`` is anything with the engine ``generate(prompt_ids, sampling)`` shape and ``max_context_tokens``
    (typically a :class:`~agent_env.engine.TransformersEngine`); concurrent squeezes are batched by the engine's
    micro-batcher, so :meth:`squeeze_many` (or many episodes squeezing at once) decode as one batch. The decoded
    text goes through :func:`tidy_summary` (greedy loops and a cut-off last sentence removed) before validation.

    Context: the prompt must leave ``max_new_tokens`` of room in the model's context. When it would not, the
    passages (never the question, the variants or the instructions) are cut: the lowest-ranked passages go
    first and the last one kept is cut mid-text, found by a binary search over the kept characters. If the
    prompt does not fit even with almost no passage text, :meth:`squeeze` falls back with an error saying so.
    """

    name = "local"

    def __init__(
        self,
        engine: LLMEngine,
        tokenizer: Any,
        *,
        max_new_tokens: int = 512,
        max_context_tokens: int | None = None,
        owns_engine: bool = False,
        timeout_s: float = 60.0,
        fallback_chars: int = FALLBACK_CHARS,
    ) -> None:
        super().__init__(timeout_s=timeout_s, fallback_chars=fallback_chars)
        self.engine = engine
        self.tokenizer = tokenizer
        # Greedy, as the ExpandSearch squeezer (temperature 0); no stop strings: the summary ends at EOS.
        self.sampling = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, stop=())
        self.max_context_tokens = max_context_tokens if max_context_tokens is not None else engine.max_context_tokens
        self.owns_engine = owns_engine

    @classmethod
    def from_spec(
        cls,
        spec: str,
        *,
        device: str | None = None,
        dtype: str | None = None,
        max_batch_size: int = 64,
        max_wait_s: float = 0.0,
        **options: Any,
    ) -> LocalLLMSqueezer:
        """Load a model (a directory, a ``.gguf`` file or a packaged name like ``smollm2``) behind its own engine."""
        from agent_env.engine import TransformersEngine  # loads torch only when a local squeezer is asked for

        if not spec.strip():
            raise ValueError("the local squeezer needs a model: local:PATH (a model directory, a .gguf or smollm2)")
        engine = TransformersEngine.from_pretrained(
            spec, device=device, dtype=dtype, max_batch_size=max_batch_size, max_wait_s=max_wait_s
        )
        return cls(engine, engine.tokenizer, owns_engine=True, **options)

    async def _summarize(self, request: SqueezeRequest) -> str:
        generation = await self.engine.generate(self.prompt_ids(request), self.sampling)
        text = self.tokenizer.decode(generation.token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return tidy_summary(str(text), truncated=generation.stop_reason == "length")

    def prompt_ids(self, request: SqueezeRequest) -> list[int]:
        """The token ids sent to the model: the chat-templated squeezer prompt, passages cut to fit the context."""
        ids = self._encode(request)
        budget = self._prompt_budget()
        if budget is None or len(ids) <= budget:
            return ids
        return self._encode(self._fitted(request, budget))

    def _encode(self, request: SqueezeRequest) -> list[int]:
        # Text first, then encode: in transformers 5 apply_chat_template(tokenize=True) returns a BatchEncoding.
        text = self.tokenizer.apply_chat_template(
            squeezer_messages(request), tokenize=False, add_generation_prompt=True
        )
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _prompt_budget(self) -> int | None:
        """Most prompt tokens that leave room for a full summary, or None when the context is unknown."""
        if self.max_context_tokens is None:
            return None
        return self.max_context_tokens - self.sampling.max_new_tokens

    def _fitted(self, request: SqueezeRequest, budget: int) -> SqueezeRequest:
        """``request`` with the most passage text whose prompt fits ``budget`` tokens (ValueError when none does)."""
        passages = [passage_title_text(passage) for passage in request.passages]

        def fits(chars: int) -> bool:
            return len(self._encode(_clip_request(request, passages, chars))) <= budget

        low, high = 1, sum(len(text) for _, text in passages)  # fits(low) is checked, fits(high) is known false
        if not fits(low):
            raise ValueError(
                f"the squeezer prompt does not fit the model's context ({self.max_context_tokens} tokens, "
                f"{self.sampling.max_new_tokens} kept for the summary) even with the passages cut away"
            )
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if fits(middle) else (low, middle)
        return _clip_request(request, passages, low)

    async def aclose(self) -> None:
        """Close the engine when this squeezer built it (:meth:`from_spec`)."""
        if self.owns_engine:
            closer = getattr(self.engine, "aclose", None)
            if closer is not None:
                await closer()


def tidy_summary(text: str, *, truncated: bool = False) -> str:
    """A generated summary without the debris of greedy decoding: repeated sentences and a cut-off last sentence.

    Small models decoded greedily often fall into a loop ("X is a native of Y. X is a native of Y. …") until they
    run out of tokens. Every sentence after its first occurrence is dropped (compared case- and space-blind), empty
    lines go, and when generation hit its token limit (``truncated``) an unfinished last sentence is dropped too.
    """
    seen: set[str] = set()
    lines = []
    for line in text.splitlines():
        kept = []
        for sentence in split_sentences(line):
            key = sentence.casefold()
            if key not in seen:
                seen.add(key)
                kept.append(sentence)
        if kept:
            lines.append(kept)
    finished = bool(lines) and lines[-1][-1].rstrip("\"')]\u201d\u2019").endswith((".", "!", "?"))
    if truncated and sum(map(len, lines)) > 1 and not finished:
        lines[-1].pop()
    return "\n".join(" ".join(line) for line in lines if line)


def _clip_request(request: SqueezeRequest, passages: Sequence[tuple[str, str]], chars: int) -> SqueezeRequest:
    """The request with only the first ``chars`` characters of passage text, in passage (rank) order."""
    clipped: list[_Clipped] = []
    for title, text in passages:
        if chars <= 0:
            break
        clipped.append(_Clipped(title, text if len(text) <= chars else text[:chars].rstrip() + " …"))
        chars -= len(text)
    return replace(request, passages=tuple(clipped))


def _local_squeezer(argument: str, **options: Any) -> Squeezer:
    return LocalLLMSqueezer.from_spec(argument, **options)


SQUEEZER_KINDS["local"] = _local_squeezer
