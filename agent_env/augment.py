"""Query and document augmentation (the CoAugRetriever method): prompts, answer parsing, combination, generation.

An LLM rewrites both sides of retrieval so that they meet in the retriever. There are four prompts, one per
(retriever kind, side): the *system* message says what to write, the *user* message is the query itself or the
document as ``"{title}. {text}"``. Only the text of the model's ``<answer>`` is used, with label prefixes such as
"Keywords:" removed; a response without a usable answer leaves the original text alone.

How an answer is combined with the original (:func:`combine_query`, :func:`combine_document`):

- training reward (``mode="train"``): ``original + "\\n\\n" + answer`` on both sides;
- BM25 (``"sparse"``): the query's answer appended to the query, the document's answer appended to its title;
- dense (``"dense"``): the query's answer appended to the query, the document's prepended to the document text.

Generation goes through our engines: :class:`~agent_env.engine.TransformersEngine` decodes a whole batch at
once (``generate_batch``: fixed batches, so greedy output does not depend on what else was waiting), any other
:class:`~agent_env.engine.LLMEngine` (an OpenAI-compatible URL such as ``vllm serve``) gets the batch's
requests concurrently. Generation stops at ``</answer>``: nothing after it is used, so it is not paid for.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from agent_env.engine import Generation, LLMEngine, SamplingParams, TransformersEngine
from retriever_server.corpus import Passage

Kind = Literal["sparse", "dense"]
Side = Literal["query", "document"]
KINDS: tuple[Kind, ...] = ("sparse", "dense")
SIDES: tuple[Side, ...] = ("query", "document")

PROMPT_VERSION = 1
"""Bumped whenever a prompt text changes, so resumed augmentations never mix two prompts."""

_FORMAT = (
    "Write your reasoning inside <think> </think> tags, then the result inside <answer> </answer> tags, "
    "and nothing after </answer>."
)
_FORMAT_DIRECT = "Write only the result, inside <answer> </answer> tags."
ANSWER_PREFILL = "<answer>"
"""Without thinking, the assistant turn starts with this: small models (SmolLM2-135M) rarely open the tag."""

PROMPTS: dict[tuple[Kind, Side], str] = {
    ("sparse", "query"): (
        "You help a keyword search engine find documents for a search request. Think about what the request is "
        "about and what a document answering it would say. Then list several independent search keywords and "
        "short key phrases, including synonyms and technical terms such a document would use. "
    ),
    ("sparse", "document"): (
        "You help a keyword search engine index a document. Think about the document with your expert knowledge. "
        "Then write a short supplementary explanation in professional terms, followed by keywords: the questions, "
        "claims and terms a reader might search with to find this document. "
    ),
    ("dense", "query"): (
        "You help a semantic search engine find documents for a search request. Think about what the request is "
        "about. Then write a short passage that expands the request with the background a relevant document "
        "would contain; it will be placed right after the request. "
    ),
    ("dense", "document"): (
        "You help a semantic search engine index a document. Think about what the document says. Then write a "
        "concise abstract of its main findings and topics; it will be placed right before the document. "
    ),
}
"""System prompts by (retriever kind, side), without the format sentence. Our own wording of the reference
method's four instructions."""

STOP = ("</answer>",)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_LABEL = re.compile(r"(?i)\b(?:keywords?|explanation|summary|title|abstract|expansion)\s*:\s*")


def document_input(passage: Passage) -> str:
    """The user message for a document: ``"{title}. {text}"`` (the text alone when there is no title)."""
    return f"{passage.title}. {passage.text}" if passage.title else passage.text


def messages(kind: Kind, side: Side, text: str, *, think: bool = True) -> list[dict[str, str]]:
    """The chat messages asking for one augmentation of ``text`` (a query, or :func:`document_input`); with
    ``think`` the model reasons in ``<think>`` first (the reference), else it writes the answer at once."""
    if (kind, side) not in PROMPTS:
        raise ValueError(f"no prompt for kind {kind!r} and side {side!r}; kinds {KINDS}, sides {SIDES}")
    system = PROMPTS[(kind, side)] + (_FORMAT if think else _FORMAT_DIRECT)
    return [{"role": "system", "content": system}, {"role": "user", "content": text}]


def parse_answer(response: str, *, prefilled: bool = False) -> str | None:
    """The usable augmentation in a response: the last complete ``<answer>`` text with label prefixes
    ("Keywords:", "Summary:", …) removed and whitespace collapsed; None when there is none or it is empty.

    ``prefilled``: the response continues an ``<answer>`` the prompt opened, so its text up to ``</answer>`` (or
    to its end, when the budget ran out first) is the answer."""
    found = [response.split("</answer>", 1)[0]] if prefilled else _ANSWER.findall(response)
    if not found:
        return None
    answer = " ".join(_LABEL.sub(" ", found[-1]).split())
    return answer or None


def combine_query(query: str, answer: str | None, mode: Literal["sparse", "dense", "train"]) -> str:
    """The query the retriever sees: the answer appended (``"train"``: after a blank line)."""
    if not answer:
        return query
    return f"{query}\n\n{answer}" if mode == "train" else f"{query} {answer}"


def combine_document(passage: Passage, answer: str | None, mode: Literal["sparse", "dense"]) -> Passage:
    """The document the retriever indexes: BM25 appends the answer to the title, dense prepends it to the text."""
    if not answer:
        return passage
    if mode == "sparse":
        return Passage(passage.id, f"{passage.title} {answer}".strip(), passage.text)
    return Passage(passage.id, passage.title, f"{answer}\n{passage.text}")


def training_text(original: str, answer: str | None) -> str:
    """The text the training reward scores on either side: ``original + "\\n\\n" + answer``."""
    return f"{original}\n\n{answer}" if answer else original


# --- generation -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Augmentation:
    """One generated augmentation: the raw response, its parsed answer, and its cost in tokens."""

    response: str
    answer: str | None
    prompt_tokens: int
    generated_tokens: int
    stop_reason: str


def sampling_params(max_new_tokens: int, temperature: float = 0.0, seed: int | None = None) -> SamplingParams:
    return SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, stop=STOP, seed=seed)


def prompt_ids(
    tokenizer: Any, kind: Kind, side: Side, text: str, max_prompt_tokens: int | None = None, *, think: bool = True
) -> list[int]:
    """The chat-templated prompt token ids (without ``think``, ending in :data:`ANSWER_PREFILL`); the user text
    is cut (in tokens) so the prompt fits ``max_prompt_tokens``."""
    if max_prompt_tokens is not None:
        overhead = len(_template(tokenizer, kind, side, "", think))
        room = max(max_prompt_tokens - overhead, 1)
        ids = tokenizer.encode(text, add_special_tokens=False)
        if len(ids) > room:
            text = tokenizer.decode(ids[:room])
    return _template(tokenizer, kind, side, text, think)


def _template(tokenizer: Any, kind: Kind, side: Side, text: str, think: bool) -> list[int]:
    chat = messages(kind, side, text, think=think)
    rendered = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    return list(tokenizer.encode(rendered + ("" if think else ANSWER_PREFILL), add_special_tokens=False))


def generate(engine: LLMEngine, prompts: Sequence[Sequence[int]], sampling: SamplingParams) -> list[Generation]:
    """Generate one response per prompt: one batch on a transformers engine, concurrent requests otherwise."""
    if isinstance(engine, TransformersEngine):
        return engine.generate_batch(prompts, sampling)

    async def all_of_them() -> list[Generation]:
        return list(await asyncio.gather(*(engine.generate(prompt, sampling) for prompt in prompts)))

    return asyncio.run(all_of_them())


def augment_texts(
    engine: LLMEngine,
    tokenizer: Any,
    kind: Kind,
    side: Side,
    texts: Sequence[str],
    sampling: SamplingParams,
    *,
    max_prompt_tokens: int | None = 512,
    think: bool = True,
) -> list[Augmentation]:
    """Augment a batch of queries or document inputs (:func:`document_input`) in one generation call."""
    prompts = [prompt_ids(tokenizer, kind, side, text, max_prompt_tokens, think=think) for text in texts]
    generations = generate(engine, prompts, sampling)
    results = []
    for prompt, generation in zip(prompts, generations, strict=True):
        response = tokenizer.decode(generation.token_ids, skip_special_tokens=True)
        results.append(
            Augmentation(
                response,
                parse_answer(response, prefilled=not think),
                len(prompt),
                len(generation.token_ids),
                generation.stop_reason,
            )
        )
    return results


def augment_queries(
    engine: LLMEngine,
    tokenizer: Any,
    kind: Kind,
    queries: Sequence[str],
    sampling: SamplingParams,
    *,
    batch_size: int = 16,
    think: bool = True,
) -> list[str]:
    """Search-time query augmentation: each query combined with its generated answer for ``kind``'s retriever."""
    combined: list[str] = []
    for start in range(0, len(queries), batch_size):
        batch = list(queries[start : start + batch_size])
        for query, augmentation in zip(
            batch, augment_texts(engine, tokenizer, kind, "query", batch, sampling, think=think), strict=True
        ):
            combined.append(combine_query(query, augmentation.answer, kind))
    return combined
