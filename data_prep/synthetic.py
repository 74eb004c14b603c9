"""A synthetic multi-hop world in which search genuinely matters.

The embedded default trains and evaluates an agent on a CPU with no downloaded data, so we generate
a small encyclopaedia, deterministic from a seed:

- entities: countries, cities, companies and people, with invented names and aliases
  ("Veltari Oskmund" / "V. Oskmund"); people share given and family names, so a name alone is
  ambiguous for BM25;
- facts: a person's birth year, birth city, occupation and employer; a city's country; a company's
  headquarters and founding year. Every fact is written as exactly one passage, with a paraphrase
  drawn from several templates (some titled by the object, "Marnholt is the hometown of …"), so a
  query that copies the question's wording often misses;
- distractor passages that share names and question words but answer nothing;
- questions: single-hop, bridge (two hops), three-hop and comparison (two people), with gold
  answers and aliases, the reasoning chain and the ids of the supporting passages;
- splits by person: test (and validation) questions are about people no training question mentions.

``generate_world(config)`` builds a ``World`` in memory; ``write_world(world, out_dir)`` writes the
corpus (wiki-18 jsonl), the questions (FlashRAG jsonl and verl parquet per split) and ``world.json``.
CLI: ``expandsearch world --out DIR [--seed N] [--size tiny|small|medium]``.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from data_prep.formats import QAExample, write_qa_jsonl, write_verl_parquet
from retriever_server.corpus import Passage, write_wiki18_jsonl

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class WorldConfig:
    """Size and seed of a generated world."""

    seed: int = 0
    """Everything (names, facts, wording, questions, splits) is a function of this seed."""
    num_countries: int = 6
    num_cities: int = 24
    num_companies: int = 24
    num_people: int = 300
    given_name_pool: int = 60
    """Fewer given/family names than people, so names repeat and a bare name is ambiguous."""
    family_name_pool: int = 90
    distractor_rate: float = 0.6
    """Expected distractor passages per person."""
    comparisons_per_person: float = 1.0
    split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    """Fractions of people (not questions) in train / validation / test."""

    def __post_init__(self) -> None:
        if min(self.num_countries, self.num_cities, self.num_companies) < 2 or self.num_people < 10:
            raise ValueError("a world needs at least 2 countries, cities and companies and 10 people")
        if abs(sum(self.split_fractions) - 1.0) > 1e-6 or min(self.split_fractions) <= 0:
            raise ValueError(f"split_fractions must be positive and sum to 1, got {self.split_fractions}")


WORLD_SIZES: dict[str, WorldConfig] = {
    "tiny": WorldConfig(
        num_countries=4, num_cities=12, num_companies=12, num_people=120, given_name_pool=30, family_name_pool=40
    ),
    # `make demo`'s world: tiny's countries, cities, companies and names, and about as many training people, with
    # seven times the held-out people, so the paired test after RL vs the warm start can resolve a few points of EM
    # (216 test questions could not: docs/benchmarks.md, "make demo's claim on five seeds")
    "demo": WorldConfig(
        num_countries=4,
        num_cities=12,
        num_companies=12,
        num_people=360,
        given_name_pool=30,
        family_name_pool=40,
        split_fractions=(0.25, 0.05, 0.70),
    ),
    "small": WorldConfig(),
    "medium": WorldConfig(
        num_countries=10, num_cities=60, num_companies=60, num_people=1500, given_name_pool=200, family_name_pool=300
    ),
}


# --- names -------------------------------------------------------------------------------------------

_ONSETS = ["b", "br", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "st", "t", "v", "z"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ou"]
_CODAS = ["", "", "n", "r", "l", "s", "k", "m"]
_CITY_SUFFIXES = ["holt", "burg", "ford", "mere", "stad", "wick", "haven", "dale", "port", "grad"]
_COMPANY_SUFFIXES = ["Industries", "Works", "Labs", "Group", "Systems", "Holdings", "Foundry", "Logistics"]
_COUNTRY_FORMS = ["Republic of {}", "Kingdom of {}", "Federation of {}", "Union of {}"]
OCCUPATIONS = [
    "painter",
    "engineer",
    "architect",
    "chemist",
    "novelist",
    "sculptor",
    "economist",
    "botanist",
    "pilot",
    "composer",
    "surgeon",
    "astronomer",
    "geologist",
    "photographer",
]


def _syllable(rng: random.Random) -> str:
    return rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)


def _word(rng: random.Random, syllables: tuple[int, int] = (2, 3)) -> str:
    return "".join(_syllable(rng) for _ in range(rng.randint(*syllables))).capitalize()


def _unique_words(rng: random.Random, count: int, make: Callable[[], str], taken: set[str]) -> list[str]:
    """``count`` distinct words from ``make``, none already in ``taken`` (which is updated)."""
    words: list[str] = []
    while len(words) < count:
        word = make()
        if word.lower() not in taken and 4 <= len(word) <= 14:
            taken.add(word.lower())
            words.append(word)
    return words


# --- entities and facts ------------------------------------------------------------------------------


@dataclass
class Entity:
    """A named thing of the world. ``aliases`` exclude ``name``; ``facts`` map a relation to its object."""

    key: str
    kind: str
    name: str
    aliases: list[str] = field(default_factory=list)
    facts: dict[str, str | int] = field(default_factory=dict)

    @property
    def all_names(self) -> list[str]:
        return [self.name, *self.aliases]


@dataclass(frozen=True)
class Wording:
    """One way passages state a relation; {s} is the subject, {o} the object."""

    template: str
    keyword: str
    """What a query needs, next to the subject's name, to match this wording (a good variant)."""
    titled_by_object: bool = False
    """The fact as it appears on the object's page ("Marnholt is the hometown of …")."""


@dataclass(frozen=True)
class Relation:
    """A fact type: its subject and object kinds and the wordings passages use for it."""

    name: str
    subject_kind: str
    object_kind: str  # an entity kind, or "year" / "occupation" for literal values
    wordings: tuple[Wording, ...]

    @property
    def keywords(self) -> tuple[str, ...]:
        return tuple(wording.keyword for wording in self.wordings)


def _relation(
    name: str, subject_kind: str, object_kind: str, *wordings: tuple[str, str] | tuple[str, str, bool]
) -> Relation:
    return Relation(name, subject_kind, object_kind, tuple(Wording(*wording) for wording in wordings))


RELATIONS: dict[str, Relation] = {
    relation.name: relation
    for relation in [
        _relation(
            "birth_year",
            "person",
            "year",
            ("{s} was born in {o}.", "born"),
            ("{s} came into the world in {o} and grew up in a large family.", "came into the world"),
            ("Records give {o} as the year of birth of {s}.", "year of birth"),
            ("{s} (born {o}) is remembered by many.", "born remembered"),
        ),
        _relation(
            "born_in",
            "person",
            "city",
            ("{s} is a native of {o}.", "native of"),
            ("{s} hails from {o}.", "hails from"),
            ("{s} was born and raised in {o}.", "born and raised"),
            ("{o} is the hometown of {s}, who spent a childhood there.", "hometown", True),
        ),
        _relation(
            "occupation",
            "person",
            "occupation",
            ("{s} worked as {o} for many years.", "worked as"),
            ("By profession, {s} is {o}.", "profession"),
            ("{s} is best known as {o}.", "best known as"),
        ),
        _relation(
            "works_for",
            "person",
            "company",
            ("{s} is employed by {o}.", "employed by"),
            ("{s} joined {o} and has worked there ever since.", "joined and worked there"),
            ("{o} counts {s} among its staff.", "staff", True),
        ),
        _relation(
            "located_in",
            "city",
            "country",
            ("{s} is a city in the {o}.", "city in"),
            ("{s} lies within the borders of the {o}.", "borders"),
            ("The {o} includes the city of {s}.", "includes the city", True),
        ),
        _relation(
            "headquartered_in",
            "company",
            "city",
            ("{s} has its headquarters in {o}.", "headquarters"),
            ("{s} is based in {o}.", "based in"),
            ("{o} is home to the head office of {s}.", "head office", True),
        ),
        _relation(
            "founded_year",
            "company",
            "year",
            ("{s} was founded in {o}.", "founded"),
            ("{s} was established in {o}.", "established"),
            ("{s} opened its doors in {o}.", "opened its doors"),
        ),
    ]
}


@dataclass(frozen=True)
class Hop:
    """One lookup of a reasoning chain: ``relation`` of ``subject`` is ``answer`` (canonical names)."""

    subject: str
    relation: str
    answer: str


@dataclass
class World:
    """Everything generated from one seed."""

    config: WorldConfig
    entities: dict[str, Entity]
    passages: list[Passage]
    fact_passage: dict[str, str]
    """``"subject_key|relation"`` → id of the one passage stating that fact."""
    questions: dict[str, list[QAExample]]
    """split → questions."""

    def by_kind(self, kind: str) -> list[Entity]:
        return [entity for entity in self.entities.values() if entity.kind == kind]

    def object_name(self, subject: Entity, relation: str) -> str:
        value = subject.facts[relation]
        return self.entities[str(value)].name if RELATIONS[relation].object_kind in _ENTITY_KINDS else str(value)


_ENTITY_KINDS = ("person", "city", "company", "country")


def _make_entities(config: WorldConfig, rng: random.Random) -> dict[str, Entity]:
    taken: set[str] = set()
    entities: dict[str, Entity] = {}

    def add(entity: Entity) -> Entity:
        entities[entity.key] = entity
        return entity

    country_stems = _unique_words(rng, config.num_countries, lambda: _word(rng, (2, 2)), taken)
    countries = [
        add(Entity(f"country/{i}", "country", rng.choice(_COUNTRY_FORMS).format(stem), [stem]))
        for i, stem in enumerate(country_stems)
    ]
    city_names = _unique_words(rng, config.num_cities, lambda: _word(rng, (1, 1)) + rng.choice(_CITY_SUFFIXES), taken)
    cities = [add(Entity(f"city/{i}", "city", name, [f"{name} City"])) for i, name in enumerate(city_names)]
    for index, city in enumerate(cities):
        # every country gets at least one city, so every country name can be an answer
        city.facts["located_in"] = (
            countries[index % len(countries)].key if index < len(countries) else rng.choice(countries).key
        )
    company_stems = _unique_words(rng, config.num_companies, lambda: _word(rng, (2, 2)), taken)
    for i, stem in enumerate(company_stems):
        company = add(Entity(f"company/{i}", "company", f"{stem} {rng.choice(_COMPANY_SUFFIXES)}", [stem]))
        company.facts["headquartered_in"] = rng.choice(cities).key
        company.facts["founded_year"] = rng.randint(1820, 1990)
    _add_people(config, rng, entities, cities, taken)
    return entities


def _add_people(
    config: WorldConfig, rng: random.Random, entities: dict[str, Entity], cities: list[Entity], taken: set[str]
) -> None:
    given_names = _unique_words(rng, config.given_name_pool, lambda: _word(rng, (2, 2)), taken)
    family_names = _unique_words(rng, config.family_name_pool, lambda: _word(rng, (2, 2)), taken)
    companies = [entity for entity in entities.values() if entity.kind == "company"]
    names: list[tuple[str, str]] = []
    while len(names) < config.num_people:
        pair = rng.choice(given_names), rng.choice(family_names)
        if pair not in names:
            names.append(pair)
    # "V. Oskmund" is an alias only where no other person shares it, so an alias names one person
    initials = Counter(f"{given[0]}. {family}" for given, family in names)
    for i, (given, family) in enumerate(names):
        initial = f"{given[0]}. {family}"
        person = Entity(f"person/{i}", "person", f"{given} {family}", [initial] if initials[initial] == 1 else [])
        person.facts = {
            "birth_year": rng.randint(1900, 1999),
            "born_in": rng.choice(cities).key,
            "occupation": rng.choice(OCCUPATIONS),
            "works_for": rng.choice(companies).key,
        }
        entities[person.key] = person


# --- passages ----------------------------------------------------------------------------------------


def _mention(entity: Entity, rng: random.Random) -> str:
    """The canonical name most of the time, an alias otherwise (as real text does)."""
    return entity.name if not entity.aliases or rng.random() < 0.6 else rng.choice(entity.aliases)


def _with_article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _fact_passages(entities: dict[str, Entity], rng: random.Random) -> Iterator[tuple[str, str, str]]:
    """(fact key, title, text) for every fact of every entity."""
    for entity in entities.values():
        for relation_name, value in entity.facts.items():
            relation = RELATIONS[relation_name]
            obj = entities.get(str(value)) if relation.object_kind in _ENTITY_KINDS else None
            object_text = (
                _mention(obj, rng)
                if obj
                else _with_article(str(value))
                if relation.object_kind == ("occupation")
                else str(value)
            )
            wording = rng.choice(relation.wordings)
            text = wording.template.format(s=_mention(entity, rng), o=object_text)
            title = obj.name if wording.titled_by_object and obj else entity.name
            yield f"{entity.key}|{relation_name}", title, text


_DISTRACTOR_TEMPLATES = (
    "The {family} family name is common in {city}, where many were born.",
    "A street in {city} is named after the {occupation} {other}.",
    "The {family} Prize, founded in {year}, honours the best {occupation}s of the {country}.",
    "{company} sponsored an exhibition about people born in {year}.",
    "Several relatives of {other} moved to {city} and found work there.",
)


def _distractor_passages(
    config: WorldConfig, entities: dict[str, Entity], rng: random.Random
) -> Iterator[tuple[str, str]]:
    """(title, text) passages that share names and question words with real facts but answer nothing."""
    people = [entity for entity in entities.values() if entity.kind == "person"]
    by_kind = {kind: [e for e in entities.values() if e.kind == kind] for kind in ("city", "company", "country")}
    for _ in range(round(config.distractor_rate * len(people))):
        person, other = rng.sample(people, 2)
        slots = {
            "family": person.name.split()[-1],
            "other": other.name,
            "city": rng.choice(by_kind["city"]).name,
            "company": rng.choice(by_kind["company"]).name,
            "country": rng.choice(by_kind["country"]).name,
            "occupation": rng.choice(OCCUPATIONS),
            "year": str(rng.randint(1900, 1999)),
        }
        template = rng.choice(_DISTRACTOR_TEMPLATES)
        yield (
            slots["family"] + " (disambiguation)" if "{family}" in template else slots["city"],
            template.format(**slots),
        )


def _make_passages(
    config: WorldConfig, entities: dict[str, Entity], rng: random.Random
) -> tuple[list[Passage], dict[str, str]]:
    rows = [(fact_key, title, text) for fact_key, title, text in _fact_passages(entities, rng)]
    rows += [("", title, text) for title, text in _distractor_passages(config, entities, rng)]
    rng.shuffle(rows)  # passage ids must not reveal which passages are facts
    passages, fact_passage = [], {}
    for index, (fact_key, title, text) in enumerate(rows):
        passages.append(Passage(str(index), title, text))
        if fact_key:
            fact_passage[fact_key] = str(index)
    return passages, fact_passage


# --- questions ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChainQuestion:
    """A question answered by following ``relations`` from a person; the last object is the answer."""

    qtype: str
    relations: tuple[str, ...]
    phrasings: tuple[str, ...]


CHAIN_QUESTIONS: tuple[ChainQuestion, ...] = (
    ChainQuestion(
        "single_hop",
        ("born_in",),
        ("Where was {p} born?", "In which city was {p} born?", "What is the birthplace of {p}?"),
    ),
    ChainQuestion("single_hop", ("birth_year",), ("In what year was {p} born?", "When was {p} born?")),
    ChainQuestion("single_hop", ("occupation",), ("What is the occupation of {p}?", "What does {p} do for a living?")),
    ChainQuestion("single_hop", ("works_for",), ("Which company does {p} work for?", "Who employs {p}?")),
    ChainQuestion(
        "bridge",
        ("born_in", "located_in"),
        ("In which country was {p} born?", "{p} was born in a city of which country?"),
    ),
    ChainQuestion(
        "bridge",
        ("works_for", "headquartered_in"),
        ("In which city is the employer of {p} headquartered?", "Where is the company that {p} works for based?"),
    ),
    ChainQuestion(
        "bridge",
        ("works_for", "founded_year"),
        ("When was the company that employs {p} founded?", "In what year was the employer of {p} established?"),
    ),
    ChainQuestion(
        "three_hop",
        ("works_for", "headquartered_in", "located_in"),
        (
            "In which country is the company that employs {p} headquartered?",
            "The employer of {p} has its head office in which country?",
        ),
    ),
)


@dataclass(frozen=True)
class ComparisonQuestion:
    """A question about two people; ``decide`` maps their two ``relation`` values to an answer key."""

    relation: str
    phrasings: tuple[str, ...]
    decide: Callable[[str | int, str | int], str]  # → "first" | "second" | "yes" | "no"
    valid: Callable[[str | int, str | int], bool] = lambda a, b: True


COMPARISON_QUESTIONS: tuple[ComparisonQuestion, ...] = (
    ComparisonQuestion(
        "birth_year",
        ("Who was born first, {a} or {b}?", "Which of {a} and {b} is older?"),
        decide=lambda a, b: "first" if int(a) < int(b) else "second",
        valid=lambda a, b: a != b,
    ),
    ComparisonQuestion(
        "born_in", ("Were {a} and {b} born in the same city?",), decide=lambda a, b: "yes" if a == b else "no"
    ),
    ComparisonQuestion(
        "works_for", ("Do {a} and {b} work for the same company?",), decide=lambda a, b: "yes" if a == b else "no"
    ),
)


def _chain_question(
    world_entities: dict[str, Entity],
    person: Entity,
    spec: ChainQuestion,
    rng: random.Random,
    fact_passage: dict[str, str],
) -> QAExample:
    hops, supporting, subject = [], [], person
    value: str | int = ""
    for relation in spec.relations:
        value = subject.facts[relation]
        obj = world_entities.get(str(value))
        hops.append(Hop(subject.name, relation, obj.name if obj else str(value)))
        supporting.append(fact_passage[f"{subject.key}|{relation}"])
        if obj is not None:
            subject = obj
    answer_entity = world_entities.get(str(value))
    golds = answer_entity.all_names if answer_entity else [str(value)]
    question = rng.choice(spec.phrasings).format(p=_mention(person, rng))
    return QAExample(
        "",
        question,
        golds,
        {
            "type": spec.qtype,
            "hops": [asdict(h) for h in hops],
            "supporting_ids": supporting,
            "subjects": [person.name],
        },
    )


def _comparison_question(
    pair: tuple[Entity, Entity],
    spec: ComparisonQuestion,
    rng: random.Random,
    world_entities: dict[str, Entity],
    fact_passage: dict[str, str],
) -> QAExample | None:
    first, second = pair
    values = first.facts[spec.relation], second.facts[spec.relation]
    if not spec.valid(*values):
        return None
    verdict = spec.decide(*values)
    golds = {"first": first.all_names, "second": second.all_names}.get(verdict, [verdict])
    hops = [
        Hop(p.name, spec.relation, world_entities[str(v)].name if str(v) in world_entities else str(v))
        for p, v in zip(pair, values, strict=True)
    ]
    question = rng.choice(spec.phrasings).format(a=_mention(first, rng), b=_mention(second, rng))
    return QAExample(
        "",
        question,
        golds,
        {
            "type": "comparison",
            "hops": [asdict(h) for h in hops],
            "comparison": spec.relation,
            "supporting_ids": [fact_passage[f"{p.key}|{spec.relation}"] for p in pair],
            "subjects": [first.name, second.name],
        },
    )


def _comparison_pair(members: list[Entity], spec: ComparisonQuestion, rng: random.Random) -> tuple[Entity, Entity]:
    """Two people; for same-value questions, half the time two who share the value, so "yes" is as
    likely as "no" and guessing "no" gains nothing."""
    first = rng.choice(members)
    if spec.relation != "birth_year" and rng.random() < 0.5:
        sharing = [m for m in members if m is not first and m.facts[spec.relation] == first.facts[spec.relation]]
        if sharing:
            return first, rng.choice(sharing)
    return first, rng.choice([m for m in members if m is not first])


def _split_people(config: WorldConfig, people: list[Entity], rng: random.Random) -> dict[str, list[Entity]]:
    shuffled = people[:]
    rng.shuffle(shuffled)
    n_train = round(config.split_fractions[0] * len(shuffled))
    n_validation = round(config.split_fractions[1] * len(shuffled))
    return {
        "train": shuffled[:n_train],
        "validation": shuffled[n_train : n_train + n_validation],
        "test": shuffled[n_train + n_validation :],
    }


def _make_questions(
    config: WorldConfig, entities: dict[str, Entity], fact_passage: dict[str, str], rng: random.Random
) -> dict[str, list[QAExample]]:
    people = [entity for entity in entities.values() if entity.kind == "person"]
    questions: dict[str, list[QAExample]] = {}
    for split, members in _split_people(config, people, rng).items():
        examples = [
            _chain_question(entities, person, spec, rng, fact_passage) for person in members for spec in CHAIN_QUESTIONS
        ]
        for _ in range(round(config.comparisons_per_person * len(members))):
            spec = rng.choice(COMPARISON_QUESTIONS)
            example = _comparison_question(_comparison_pair(members, spec, rng), spec, rng, entities, fact_passage)
            if example is not None:
                examples.append(example)
        rng.shuffle(examples)
        questions[split] = [
            replace(example, id=f"{split}-{index}", metadata={**example.metadata, "split": split})
            for index, example in enumerate(examples)
        ]
    return questions


# --- the world ---------------------------------------------------------------------------------------


def generate_world(config: WorldConfig = WorldConfig()) -> World:
    """Build a world; the same config always gives the same world."""
    rng = random.Random(config.seed)
    entities = _make_entities(config, rng)
    passages, fact_passage = _make_passages(config, entities, rng)
    questions = _make_questions(config, entities, fact_passage, rng)
    return World(config, entities, passages, fact_passage, questions)


WORLD_FILE = "world.json"
CORPUS_FILE = "corpus.jsonl"


def write_world(world: World, out_dir: str | Path, *, data_source: str = "synthetic") -> dict[str, Path]:
    """Write corpus, questions (jsonl + parquet per split) and world.json; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"corpus": out / CORPUS_FILE, "world": out / WORLD_FILE}
    write_wiki18_jsonl(world.passages, paths["corpus"])
    for split, examples in world.questions.items():
        paths[f"{split}_jsonl"] = out / f"{split}.jsonl"
        paths[f"{split}_parquet"] = out / f"{split}.parquet"
        write_qa_jsonl(examples, paths[f"{split}_jsonl"])
        write_verl_parquet(examples, paths[f"{split}_parquet"], data_source=data_source, split=split)
    paths["world"].write_text(json.dumps(_world_record(world), indent=1, ensure_ascii=False), encoding="utf-8")
    return paths


def _world_record(world: World) -> dict[str, Any]:
    config = asdict(world.config)
    return {
        "config": config,
        "entities": [asdict(entity) for entity in world.entities.values()],
        "fact_passage": world.fact_passage,
        "counts": {"passages": len(world.passages), **{s: len(q) for s, q in world.questions.items()}},
    }


@dataclass(frozen=True)
class WorldLexicon:
    """What a reader of the world needs without regenerating it: entities and relation wordings."""

    entities: dict[str, Entity]

    @classmethod
    def load(cls, world_dir: str | Path) -> WorldLexicon:
        record = json.loads((Path(world_dir) / WORLD_FILE).read_text(encoding="utf-8"))
        entities = {row["key"]: Entity(**row) for row in record["entities"]}
        return cls(entities)

    @classmethod
    def of(cls, world: World) -> WorldLexicon:
        return cls(world.entities)

    def names_of_kind(self, kind: str) -> dict[str, str]:
        """Lower-cased name or alias → canonical name, for one entity kind."""
        return {
            name.lower(): entity.name
            for entity in self.entities.values()
            if entity.kind == kind
            for name in entity.all_names
        }

    @cached_property
    def _by_canonical_name(self) -> dict[str, Entity]:
        return {entity.name: entity for entity in self.entities.values()}

    def aliases_of(self, canonical_name: str) -> list[str]:
        # the expert asks this for every lookup of every turn: a dict, not a scan of all entities
        entity = self._by_canonical_name.get(canonical_name)
        return entity.all_names if entity else [canonical_name]


def questions_of_type(examples: Sequence[QAExample], qtype: str) -> list[QAExample]:
    return [example for example in examples if example.metadata["type"] == qtype]


@dataclass(frozen=True)
class WorldData:
    """What a world directory written by :func:`write_world` holds: its passages, its questions by split and
    its lexicon (the names the world's expert and renaming need)."""

    passages: list[Passage]
    questions: dict[str, list[QAExample]]
    lexicon: WorldLexicon

    @classmethod
    def load(cls, world_dir: str | Path) -> WorldData:
        from data_prep.formats import read_qa_jsonl
        from retriever_server.corpus import load_passages

        world = Path(world_dir)
        if not (world / WORLD_FILE).is_file():
            raise FileNotFoundError(f"{world}: no {WORLD_FILE}; make a world with `expandsearch world --out DIR`")
        questions = {split: read_qa_jsonl(world / f"{split}.jsonl") for split in SPLITS}
        return cls(load_passages(world / CORPUS_FILE), questions, WorldLexicon.load(world))
