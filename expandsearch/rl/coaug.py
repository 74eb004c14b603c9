"""``task: coaug``: the joint RL loop of query and document co-augmentation on the embedded trainer.

One step (docs/coaugmentation.md has the method): ``rollout.questions_per_step`` training queries of
``data.beir``'s train qrels each bring one query prompt, ``coaug.positives`` documents sampled from their qrels
and ``coaug.negatives`` unjudged ones, random or (``coaug.hard_negatives``) among those BM25 ranks highest for the
query (:meth:`CoAugTask.step_prompts`). The policy samples ``rollout.group_size``
single-turn augmentations per prompt at ``rollout.episode.temperature`` — every token a policy token. The reward
is the batch-level NDCG@10 estimate of :func:`agent_env.coaug_reward.score_step` over the whole step (BM25 with
the corpus's IDF), and so are the advantages: Dr. GRPO per prompt with the side scaling; a step whose advantages
are all zero makes no update. Masks, the KL term, the optimizer, checkpoints and resume are the trainer's own.

The held-out measure is query augmentation on the test qrels: NDCG@10 / Recall@100 of BM25 over the original
corpus with each test query augmented greedily by the policy (:func:`evaluate_query_augmentation`); the document
side of a trained policy is evaluated by augmenting the corpus with it (``expandsearch coaug augment``).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from agent_env.engine import derive_seed
from expandsearch.rl import algorithms
from expandsearch.rl.batch import RolloutBatch
from expandsearch.rl.sources import Questions
from expandsearch.rl.trainer import Trainer

if TYPE_CHECKING:
    from agent_env.augment import Side
    from agent_env.coaug_reward import SampledResponse, StepScores
    from agent_env.episode import Trajectory
    from data_prep.beir import BeirTask
    from expandsearch.rl.config import CoAugSection, TrainConfig

QUERY, POSITIVE, NEGATIVE = 0, 1, 2  # agent_env.coaug_reward's tags (QUERY_TAG, POSITIVE_TAG, NEGATIVE_TAG)


@dataclass(frozen=True)
class CoAugPrompt:
    """One prompt of a step: which side, for which training query, which document, and the original text."""

    tag: int
    query_id: str
    doc_id: str | None
    original: str
    """The query, or the document as the augmenter reads it (``"{title}. {text}"``)."""

    @property
    def key(self) -> str:
        """The sampled trajectories' ``example_id``: the prompt, recoverable by :func:`prompt_of`."""
        return json.dumps([self.tag, self.query_id, self.doc_id])


def prompt_key_parts(key: str) -> tuple[int, str, str | None]:
    tag, query_id, doc_id = json.loads(key)
    return int(tag), str(query_id), None if doc_id is None else str(doc_id)


@dataclass
class CoAugTask:
    """The co-augmentation task over one BEIR folder: train queries, test queries, the corpus and its IDF."""

    train_split: BeirTask
    test_split: BeirTask
    settings: CoAugSection
    seed: int
    name: str = "coaug"
    idf: dict[str, float] = field(default_factory=dict)
    _documents: dict[str, str] = field(default_factory=dict)
    _prompt_cache: dict[tuple[int, str], list[int]] = field(default_factory=dict)
    _hard_pools: dict[str, list[str]] = field(default_factory=dict)
    _analysed: list[list[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        from agent_env.augment import document_input
        from agent_env.coaug_reward import analyze, corpus_idf

        self._documents = {passage.id: document_input(passage) for passage in self.train_split.corpus}
        analysed = analyze(list(self._documents.values()))
        # the whole corpus's IDF: a term no document has scores 0 in the reward, so invented words earn nothing
        self.idf = corpus_idf(analysed)
        if self.settings.hard_negatives:
            self._analysed = analysed  # kept only to rank the corpus for hard negatives

    @property
    def train(self) -> Questions:
        return _questions(self.train_split)

    @property
    def held_out(self) -> Questions:
        return _questions(self.test_split)

    @classmethod
    def from_config(cls, config: TrainConfig) -> CoAugTask:
        from data_prep.beir import load_beir

        assert config.data.beir is not None  # TrainConfig validates task coaug <=> data.beir
        train, test = (load_beir(config.data.beir, split) for split in ("train", "test"))
        return cls(train, test, config.coaug, config.seed)

    # --- the step's prompts ----------------------------------------------------------------------------------------

    def step_prompts(self, query_ids: Sequence[str], step: int) -> list[CoAugPrompt]:
        """Each query's prompt and its documents' (positives from its train qrels, negatives), seeded by
        the step; the side ``coaug.train`` leaves out is not prompted."""
        rng = random.Random(derive_seed(self.seed, step, 7))
        prompts: list[CoAugPrompt] = []
        for query_id in query_ids:
            if self.settings.train in ("both", "query"):
                prompts.append(CoAugPrompt(QUERY, query_id, None, self.train_split.queries[query_id]))
            if self.settings.train in ("both", "document"):
                prompts += [self._document(POSITIVE, query_id, doc) for doc in self._positives(query_id, rng)]
                prompts += [self._document(NEGATIVE, query_id, doc) for doc in self._negatives(query_id, rng)]
        return prompts

    def _document(self, tag: int, query_id: str, doc_id: str) -> CoAugPrompt:
        return CoAugPrompt(tag, query_id, doc_id, self._documents[doc_id])

    def _positives(self, query_id: str, rng: random.Random) -> list[str]:
        relevant = sorted(doc for doc, grade in self.train_split.qrels[query_id].items() if grade > 0)
        count = self.settings.positives
        return rng.sample(relevant, count) if len(relevant) >= count else rng.choices(relevant, k=count)

    def _negatives(self, query_id: str, rng: random.Random) -> list[str]:
        judged = self.train_split.qrels[query_id]
        ids = list(self._documents)
        pool = self._hard_pool(query_id)
        found = rng.sample(pool, min(self.settings.hard_negatives, len(pool)))
        while len(found) < self.settings.negatives:
            doc = ids[rng.randrange(len(ids))]
            if doc not in judged and doc not in found:
                found.append(doc)
        return found

    def _hard_pool(self, query_id: str) -> list[str]:
        """The unjudged documents (score > 0, ties in corpus order) that the reward's BM25 over the whole corpus
        ranks highest for the original query; cached per query (one ranking costs ~0.1 s on SciFact)."""
        if not self._analysed:
            return []
        if query_id not in self._hard_pools:
            from agent_env.coaug_reward import analyze, bm25_matrix

            query = analyze([self.train_split.queries[query_id]])
            settings = self.settings
            scores = bm25_matrix(query, self._analysed, self.idf, k1=settings.k1, b=settings.b)[0]
            judged = self.train_split.qrels[query_id]
            ids = list(self._documents)
            ranked = [ids[i] for i in np.argsort(-scores, kind="stable") if scores[i] > 0 and ids[i] not in judged]
            self._hard_pools[query_id] = ranked[: settings.hard_pool]
        return self._hard_pools[query_id]

    def prompt_ids(self, tokenizer: Any, prompt: CoAugPrompt) -> list[int]:
        """The chat-templated augmentation prompt (cached: a document recurs across steps)."""
        from agent_env.augment import prompt_ids

        key = (prompt.tag, prompt.doc_id or prompt.query_id)
        if key not in self._prompt_cache:
            side: Side = "query" if prompt.tag == QUERY else "document"
            budget = self.settings.max_prompt_tokens
            self._prompt_cache[key] = prompt_ids(
                tokenizer, self.settings.kind, side, prompt.original, budget, think=self.settings.think
            )
        return self._prompt_cache[key]

    # --- the batch-level reward ------------------------------------------------------------------------------------

    def score(self, trajectories: Sequence[Trajectory]) -> list[float]:
        return [
            float(reward) for reward in self.score_batch(trajectories, rng=np.random.default_rng(self.seed)).rewards
        ]

    def score_batch(self, trajectories: Sequence[Trajectory], *, rng: np.random.Generator) -> StepScores:
        """The step's rewards and advantages (in the trajectories' order), and whether it carries any signal. The
        side not trained joins as its original texts (one version per prompt), scored but not returned."""
        from agent_env.coaug_reward import StepScores, score_step

        sampled = [self._response(t.example_id or "", t.question, t.answer) for t in trajectories]
        fixed = self._untrained_side(sampled)
        settings = self.settings
        scores = score_step(
            [*sampled, *fixed],
            self.similarity,
            draws=settings.draws or None,
            rng=rng,
            pos_weight=settings.pos_weight,
        )
        count = len(sampled)
        advantages = scores.advantages[:count]
        return StepScores(scores.rewards[:count], advantages, bool(np.all(np.abs(advantages) < 1e-12)))

    def similarity(self, queries: Sequence[str], documents: Sequence[str]) -> np.ndarray:
        from agent_env.coaug_reward import bm25_similarity

        return bm25_similarity(self.idf, k1=self.settings.k1, b=self.settings.b)(queries, documents)

    def _response(self, key: str, original: str, answer: str | None) -> SampledResponse:
        from agent_env.augment import training_text
        from agent_env.coaug_reward import SampledResponse

        tag, query_id, doc_id = prompt_key_parts(key)
        relevance = float(self.train_split.qrels[query_id].get(doc_id, 0)) if doc_id is not None else 0.0
        return SampledResponse(
            tag, query_id, doc_id, relevance if tag == POSITIVE else 0.0, training_text(original, answer)
        )

    def _untrained_side(self, sampled: Sequence[SampledResponse]) -> list[SampledResponse]:
        """With one side trained alone, the other side's prompts of the step as their original texts."""
        if self.settings.train == "both":
            return []
        query_ids = list(dict.fromkeys(response.query_id for response in sampled))
        rng = random.Random(derive_seed(self.seed, len(sampled), 11))
        if self.settings.train == "document":
            return [
                self._response(CoAugPrompt(QUERY, q, None, "").key, self.train_split.queries[q], None)
                for q in query_ids
            ]
        prompts = [
            self._document(tag, query_id, doc)
            for query_id in query_ids
            for tag, docs in ((POSITIVE, self._positives(query_id, rng)), (NEGATIVE, self._negatives(query_id, rng)))
            for doc in dict.fromkeys(docs)
        ]
        return [self._response(prompt.key, prompt.original, None) for prompt in prompts]


def _questions(split: BeirTask) -> Questions:
    from agent_env.rollout import EpisodeInput

    return Questions([EpisodeInput(text, (), query_id) for query_id, text in split.queries.items()])


# --- the trainer -------------------------------------------------------------------------------------------------


class CoAugTrainer(Trainer):
    """The embedded trainer with co-augmentation's rollout (single-turn augmentations of a step's prompts) and
    its batch-level reward and advantages; everything else (log-probs, KL, updates, checkpoints) is inherited."""

    task: CoAugTask

    def __init__(self, config: TrainConfig, policy: Any, tokenizer: Any, task: CoAugTask) -> None:
        from agent_env.engine import TransformersEngine

        engine = TransformersEngine(policy, tokenizer, max_batch_size=config.rollout.max_batch_size, seed=config.seed)
        super().__init__(config, policy, tokenizer, None, task, engine=engine)
        self.query_ids = [item.example_id or "" for item in self.questions]

    def rollout(self) -> list[Trajectory]:
        """``group_size`` sampled augmentations of every prompt of the step, prompt-major."""
        from agent_env.augment import STOP, parse_answer
        from agent_env.engine import SamplingParams

        rollout, settings = self.config.rollout, self.task.settings
        picked = [self.query_ids[index] for index in self.data.next_indices(rollout.questions_per_step)]
        prompts = [p for p in self.task.step_prompts(picked, self.step) for _ in range(rollout.group_size)]
        ids = [self.task.prompt_ids(self.tokenizer, prompt) for prompt in prompts]
        temperature = rollout.episode.temperature
        self.policy.eval()
        generations = []
        for start in range(0, len(prompts), rollout.max_batch_size):
            # one seed per sample: the group's samples differ, and none depends on how the batch was cut
            sampling = [
                SamplingParams(
                    settings.max_new_tokens, temperature, stop=STOP, seed=derive_seed(self.config.seed, self.step, n)
                )
                for n in range(start, min(start + rollout.max_batch_size, len(prompts)))
            ]
            generations += self.engine.generate_batch(ids[start : start + len(sampling)], sampling)
        return [
            _trajectory(
                prompt,
                prompt_ids,
                generation,
                parse_answer(
                    self.tokenizer.decode(generation.token_ids, skip_special_tokens=True), prefilled=not settings.think
                ),
            )
            for prompt, prompt_ids, generation in zip(prompts, ids, generations, strict=True)
        ]

    def scored_rollout(self) -> tuple[list[Trajectory], list[float] | None]:
        # not scored here: the reward stage scores the batch once, with the advantages the scores come with
        return self.rollout(), None

    def reward(self, trajectories: Sequence[Trajectory], rewards: Sequence[float] | None = None) -> RolloutBatch:
        """The batch-level reward; the advantages come with it (kept for :meth:`advantages`). ``rewards`` is
        ignored: the advantages need the step's own scoring."""
        scores = self.task.score_batch(
            trajectories, rng=np.random.default_rng(derive_seed(self.config.seed, self.step, 3))
        )
        for trajectory, reward in zip(trajectories, scores.rewards, strict=True):
            trajectory.reward = float(reward)
        groups = [trajectory.example_id or "" for trajectory in trajectories]  # GRPO group: the prompt
        batch = RolloutBatch.from_trajectories(trajectories, self.pad_token_id, groups, scores.rewards.tolist())
        batch = batch.to(self.device)
        batch.token_rewards = algorithms.outcome_token_rewards(batch.rewards, batch.response_mask)
        batch.extra["sequence_advantages"] = torch.tensor(scores.advantages, dtype=torch.float32, device=self.device)
        batch.extra["skipped"] = float(scores.skip)
        return batch

    def advantages(self, batch: RolloutBatch) -> None:
        """Dr. GRPO per prompt with the side scaling (the task's), on every policy token of the response."""
        advantages = batch.extra.pop("sequence_advantages")
        batch.advantages = advantages[:, None] * batch.response_mask

    def rollout_metrics(self, trajectories: Sequence[Trajectory]) -> dict[str, float]:
        return augmentation_metrics(trajectories)


def _trajectory(prompt: CoAugPrompt, prompt_ids: list[int], generation: Any, answer: str | None) -> Trajectory:
    from agent_env.episode import Trajectory

    tokens = list(generation.token_ids)
    return Trajectory(
        prompt_ids=list(prompt_ids),
        response_ids=tokens,
        response_mask=[1] * len(tokens),
        response_logprobs=list(generation.logprobs),
        reward=0.0,
        answer=answer,
        num_turns=1,
        termination="answer" if answer is not None else "response_budget",
        metrics={},
        turns=[],
        question=prompt.original,
        golden_answers=[],
        example_id=prompt.key,
    )


def augmentation_metrics(trajectories: Sequence[Trajectory]) -> dict[str, float]:
    """``rollout/…``: responses, mean reward, and per side the mean reward, the share with a parsed ``<answer>``
    and the mean tokens."""
    metrics: dict[str, float] = {
        "rollout/responses": float(len(trajectories)),
        "rollout/reward_mean": sum(t.reward for t in trajectories) / max(1, len(trajectories)),
    }
    for name, tags in (("query", {QUERY}), ("document", {POSITIVE, NEGATIVE})):
        side = [t for t in trajectories if prompt_key_parts(t.example_id or "")[0] in tags]
        if side:
            metrics[f"rollout/{name}_reward_mean"] = sum(t.reward for t in side) / len(side)
            metrics[f"rollout/{name}_answer_rate"] = sum(t.answer is not None for t in side) / len(side)
            metrics[f"rollout/{name}_tokens"] = sum(len(t.response_ids) for t in side) / len(side)
    return metrics


# --- evaluation --------------------------------------------------------------------------------------------------


def evaluate_query_augmentation(
    policies: Mapping[str, str],
    config: TrainConfig,
    test: BeirTask,
    index_dir: Path,
    out_dir: Path,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """NDCG@10 / Recall@100 of BM25 over the original corpus for the test queries as they are (``none``) and as
    each named policy augments them greedily, with paired tests against ``none``: ``eval.coaug``'s results."""
    from eval.coaug import BASELINE, Condition, evaluate_conditions, write_results

    limit = config.eval.questions
    if limit:
        test = test.with_queries(list(test.queries)[:limit])
    chosen = [Condition(BASELINE, str(index_dir))]
    for name, spec in policies.items():
        log(f"   augmenting {len(test.queries)} test queries with {name} ({spec})")
        chosen.append(Condition(name, str(index_dir), augment_test_queries(spec, config, test)))
    results = evaluate_conditions(test, chosen)
    write_results(results, out_dir)
    return results


def augment_test_queries(spec: str, config: TrainConfig, test: BeirTask) -> dict[str, dict[str, Any]]:
    """query id -> ``{"answer": ...}``: greedy augmentations of the test queries by the policy ``spec``."""
    from agent_env.augment import augment_texts, sampling_params
    from agent_env.engine import TransformersEngine
    from expandsearch.rl.sources import load_policy

    model, tokenizer = load_policy(spec, config.policy)
    engine = TransformersEngine(model, tokenizer, max_batch_size=config.rollout.max_batch_size)
    ids = list(test.queries)
    sampling = sampling_params(config.coaug.max_new_tokens)
    records: dict[str, dict[str, Any]] = {}
    size = config.rollout.max_batch_size
    for start in range(0, len(ids), size):
        batch = ids[start : start + size]
        texts = [test.queries[query_id] for query_id in batch]
        for query_id, augmentation in zip(
            batch,
            augment_texts(engine, tokenizer, config.coaug.kind, "query", texts, sampling, think=config.coaug.think),
            strict=True,
        ):
            records[query_id] = {"answer": augmentation.answer, "response": augmentation.response}
    return records


# --- the job -----------------------------------------------------------------------------------------------------


def train_coaug(
    config: TrainConfig, run_dir: Path, timings: dict[str, float], *, resume: bool, log: Callable[[str], None]
) -> dict[str, Any]:
    """RL from ``policy.model`` on the task, then the held-out query-augmentation table: the test queries as they
    are, as the starting policy augments them and as the policy after RL does (BM25 over the original corpus)."""
    from expandsearch.rl.main_job import stage, train
    from expandsearch.rl.sources import load_policy
    from expandsearch.sft import save_policy

    task = CoAugTask.from_config(config)
    with stage(timings, "rl", log):
        model, tokenizer = load_policy(config.policy.model, config.policy)
        trainer = CoAugTrainer(config, model, tokenizer, task)
        try:
            train(trainer, run_dir, resume=resume, log=log, evaluate=None)
            save_policy(trainer.policy, trainer.tokenizer, run_dir / "policy")
        finally:
            trainer.close()
    with stage(timings, "index", log):
        index_dir = ensure_corpus_index(task.test_split, config.coaug, run_dir)
    with stage(timings, "evaluation", log):
        policies = query_policies(config, run_dir)
        if not policies:
            log(
                "   the document side alone was trained: the table has the test queries as they are; to score the "
                f"documents, augment a corpus with --model {run_dir / 'policy'} (docs/coaugmentation.md, pooled)"
            )
        results = evaluate_query_augmentation(policies, config, task.test_split, index_dir, run_dir / "eval", log)
    from eval.coaug import results_table

    results.pop("per_query", None)  # in eval/per_query.jsonl
    return {"coaug": results, "table": results_table(results), "timings_s": timings, "run_dir": str(run_dir)}


def query_policies(config: TrainConfig, run_dir: Path) -> dict[str, str]:
    """Table row name → policy for the held-out query table: the starting and the trained policy, or none when
    only the document side was trained (its queries would be the starting policy's, already a row elsewhere)."""
    if config.coaug.train == "document":
        return {}
    return {"query only, prompted": config.policy.model, "query only, after RL": str(run_dir / "policy")}


def ensure_corpus_index(split: BeirTask, settings: CoAugSection, run_dir: Path) -> Path:
    """BM25 (the reward's k1 and b) over the original corpus in ``run_dir/index``; reused when it exists."""
    from data_prep.beir import write_corpus
    from retriever_server.index_dir import MANIFEST, build_index

    index_dir = run_dir / "index"
    if not (index_dir / MANIFEST).is_file():
        corpus = run_dir / "corpus.jsonl"
        write_corpus(split.corpus, corpus)
        build_index(corpus, "bm25", index_dir, progress=False, bm25_k1=settings.k1, bm25_b=settings.b)
    return index_dir
