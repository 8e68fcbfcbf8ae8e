"""A synthetic question-answering world for the toy agent pool, deterministic from a seed.

Two query families:
  * knowledge — facts about generated entities ("What is the home city of Zorvath?" -> "Blemfor").
    Every fact has a hidden rarity in (0, 1), an entity's facts adjacent ones (an agent knows an
    entity or not, as a language model does); the agent at ladder level k of n is pre-trained on
    exactly the facts whose rarity is below `exposure_fraction(k, n)`, which grows with k, so each
    agent's facts are a superset of the previous agent's. Facts with rarity >= `max_exposure` are in
    no corpus, so even the largest agent cannot know them. Nothing in a question's surface reveals
    its rarity: refusing well needs self-knowledge.
  * skill — arithmetic whose difficulty is visible (more digits, more operands). Each tier has a
    rarity, (tier + 0.5) / number of tiers, and its problems are taught to exactly the agents whose
    exposure exceeds it (the same rule as facts): the cheapest agent knows the one-digit sums, the
    largest every tier but the hardest. Agents
    this small cannot learn to *compute* multi-digit arithmetic in CPU-minutes (measured: 0-4 of 30
    held-out problems, whatever the size), so the ladder comes from what each was taught; what
    differs from knowledge is that the difficulty is written in the question, so refusing can
    use the surface. `skill_corpus_size` extra practice problems, never a query, are shared by all.

Train / heldout splits partition the queries of both families; knowledge queries of both splits are
about facts spread over the whole rarity range (the point is whether an agent knows them).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

KNOWLEDGE = "knowledge"
SKILL = "skill"
FAMILIES = (KNOWLEDGE, SKILL)
TRAIN = "train"
HELDOUT = "heldout"
SPLITS = (TRAIN, HELDOUT)

_COLORS = ("red", "blue", "green", "yellow", "purple", "orange", "black", "white", "silver", "gold",
           "pink", "brown")
_JOBS = ("baker", "farmer", "sailor", "doctor", "painter", "teacher", "miner", "singer", "hunter",
         "weaver", "tailor", "guard")
_PETS = ("cat", "dog", "owl", "goat", "horse", "fox", "crow", "frog", "snake", "rabbit", "turtle",
         "mouse")
# A value pool of None means "the world's generated city names".
_ATTRIBUTE_SPECS: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "home city": ("What is the home city of {entity}?", None),
    "favorite color": ("What is the favorite color of {entity}?", _COLORS),
    "job": ("What is the job of {entity}?", _JOBS),
    "pet": ("Which pet does {entity} keep?", _PETS),
}
ATTRIBUTES = tuple(_ATTRIBUTE_SPECS)
_OPERATIONS = ("+", "-")

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr",
           "st", "th", "sh")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("", "", "n", "r", "l", "s", "m")

# Named random streams: each part of the world draws from its own generator, so changing one size
# knob does not reshuffle unrelated parts.
_STREAMS = {"names": 1, "values": 2, "rarity": 3, "knowledge_split": 4, "skill_queries": 5,
            "skill_split": 6, "skill_corpus": 7, "corpus_order": 8, "skill_rarity": 9, "ambiguity": 10}


def _rng(seed: int, stream: str, *extra: int) -> np.random.Generator:
    return np.random.default_rng([seed, _STREAMS[stream], *extra])


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """Size knobs of the toy world (defaults sized so a 5-agent pool pre-trains in minutes on CPU)."""

    seed: int = 0
    num_entities: int = 200
    attributes: tuple[str, ...] = ("home city", "favorite color", "job")
    num_cities: int = 24
    # Fraction of all facts seen by the smallest (level 0) and the largest agent of the ladder.
    min_exposure: float = 0.2
    max_exposure: float = 0.85
    # Arithmetic tiers: operands of 1..skill_max_digits digits, 2..skill_max_operands operands.
    skill_max_digits: int = 3
    skill_max_operands: int = 2
    skill_operations: tuple[str, ...] = _OPERATIONS
    skill_queries_per_tier: int = 40
    skill_corpus_size: int = 3000
    heldout_fraction: float = 0.5
    tokenizer_vocab_size: int = 768
    # Share of facts the corpus states ambiguously (see Fact.distractor): half of them 3:1 (an
    # agent that saw the fact is right ~75 % of the time when sampling), half 2:1 (~67 %). They
    # are what makes the scenario matter: answering them pays at Cost First (alpha=0.8, answer
    # iff p > 0.45) and not at Performance First (alpha=0.2, p > 0.89).
    ambiguous_fraction: float = 0.0

    def __post_init__(self):
        def fail(field: str, requirement: str):
            raise ValueError(f"WorldConfig.{field}={getattr(self, field)!r}: {requirement}")

        if self.num_entities < 1:
            fail("num_entities", "must be >= 1")
        if not self.attributes:
            fail("attributes", f"must name at least one of {ATTRIBUTES}")
        for attribute in self.attributes:
            if attribute not in _ATTRIBUTE_SPECS:
                fail("attributes", f"unknown attribute {attribute!r}; known: {ATTRIBUTES}")
        if len(set(self.attributes)) != len(self.attributes):
            fail("attributes", "must not repeat an attribute")
        if self.num_cities < 2:
            fail("num_cities", "must be >= 2")
        if not 0.0 < self.min_exposure <= self.max_exposure <= 1.0:
            fail("min_exposure", f"need 0 < min_exposure <= max_exposure <= 1 (max_exposure="
                 f"{self.max_exposure!r})")
        if not 1 <= self.skill_max_digits <= 6:
            fail("skill_max_digits", "must be in 1..6")
        if not 2 <= self.skill_max_operands <= 4:
            fail("skill_max_operands", "must be in 2..4")
        if not self.skill_operations or any(op not in _OPERATIONS for op in self.skill_operations):
            fail("skill_operations", f"must be a non-empty subset of {_OPERATIONS}")
        if self.skill_queries_per_tier < 1:
            fail("skill_queries_per_tier", "must be >= 1")
        if self.skill_corpus_size < 0:
            fail("skill_corpus_size", "must be >= 0")
        if not 0.0 <= self.ambiguous_fraction <= 1.0:
            fail("ambiguous_fraction", "must lie in [0, 1]")
        if not 0.0 < self.heldout_fraction < 1.0:
            fail("heldout_fraction", "must be strictly between 0 and 1")
        if self.tokenizer_vocab_size < 300:
            fail("tokenizer_vocab_size", "must be >= 300 (256 bytes + specials + some merges)")

    @classmethod
    def reduced(cls, seed: int = 0) -> "WorldConfig":
        """A small world for unit tests: a few dozen facts, 1-2 digit arithmetic."""
        return cls(seed=seed, num_entities=24, num_cities=8, skill_max_digits=2,
                   skill_queries_per_tier=8, skill_corpus_size=200, tokenizer_vocab_size=512)


@dataclasses.dataclass(frozen=True)
class Fact:
    id: str
    entity: str
    attribute: str
    value: str
    rarity: float  # hidden: an agent sees the fact iff rarity < its exposure fraction
    # Ambiguous facts: the corpus states `value` in correct_rows rows and `distractor` (another
    # value of the attribute) in one more, so an agent that saw it answers right with
    # probability ~ certainty = correct_rows / (correct_rows + 1) when sampling.
    distractor: str = ""
    correct_rows: int = 1

    @property
    def certainty(self) -> float:
        return 1.0 if not self.distractor else self.correct_rows / (self.correct_rows + 1)

    def corpus_rows(self) -> tuple[tuple[str, str], ...]:
        rows = [(self.question, self.value)] * (self.correct_rows if self.distractor else 1)
        return tuple(rows + ([(self.question, self.distractor)] if self.distractor else []))

    @property
    def question(self) -> str:
        return _ATTRIBUTE_SPECS[self.attribute][0].format(entity=self.entity)


@dataclasses.dataclass(frozen=True)
class ToyQuery:
    """One query with its known answer.

    difficulty is in [0, 1]: for knowledge the fact's hidden rarity (the share of the ladder needed
    to have seen it; >= max_exposure means no agent saw it), for skill the tier's rarity,
    (tier index + 0.5) / number of tiers. `kind` is the attribute (knowledge) or the tier name (skill); `fact_id` links a
    knowledge query to its fact and is "" for skill queries.
    """

    id: str
    family: str
    question: str
    answer: str
    difficulty: float
    split: str
    kind: str
    fact_id: str = ""


@dataclasses.dataclass(frozen=True)
class SkillTier:
    index: int
    num_digits: int
    num_operands: int

    @property
    def name(self) -> str:
        return f"{self.num_digits}-digit x{self.num_operands}"


_TRAILING_PUNCTUATION = ".!?,;:"


def normalize_answer(text: str) -> str:
    """Collapse whitespace, lower-case and drop trailing punctuation, for exact-match checking."""
    text = " ".join(text.split()).lower()
    return text.rstrip(_TRAILING_PUNCTUATION + " ")


def checker(query: ToyQuery, response: str) -> bool:
    """True iff the response matches the query's answer after `normalize_answer`."""
    return normalize_answer(response) == normalize_answer(query.answer)


def exposure_fraction(agent_level: int, num_levels: int, config: WorldConfig) -> float:
    """Fraction of facts (lowest rarities) in the pre-training corpus of ladder level agent_level."""
    if num_levels < 1:
        raise ValueError(f"num_levels={num_levels!r}: must be >= 1")
    if not 0 <= agent_level < num_levels:
        raise ValueError(f"agent_level={agent_level!r}: must be in 0..{num_levels - 1}")
    if num_levels == 1:
        return config.max_exposure
    step = (config.max_exposure - config.min_exposure) / (num_levels - 1)
    return config.min_exposure + step * agent_level


def _pronounceable_names(rng: np.random.Generator, count: int, taken: set[str]) -> list[str]:
    names: list[str] = []
    for _ in range(count * 200):
        if len(names) == count:
            return names
        num_syllables = int(rng.integers(2, 4))
        syllables = [str(rng.choice(_ONSETS)) + str(rng.choice(_VOWELS)) for _ in range(num_syllables)]
        name = ("".join(syllables) + str(rng.choice(_CODAS))).capitalize()
        if name not in taken:
            taken.add(name)
            names.append(name)
    raise ValueError(f"could not generate {count} distinct names; lower num_entities/num_cities")


def _systematic_heldout(num_items: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask choosing ~fraction of items, evenly spread over the given item order."""
    offset = float(rng.random())
    positions = np.arange(num_items) * fraction + offset
    return np.floor(positions + fraction) > np.floor(positions)


def skill_tiers(config: WorldConfig) -> tuple[SkillTier, ...]:
    """Tiers ordered by difficulty: fewer digits first, then fewer operands."""
    pairs = [(d, k) for d in range(1, config.skill_max_digits + 1)
             for k in range(2, config.skill_max_operands + 1)]
    pairs.sort(key=lambda dk: (dk[0] + dk[1], dk[0]))
    return tuple(SkillTier(i, d, k) for i, (d, k) in enumerate(pairs))


def _random_problem(tier: SkillTier, operations: tuple[str, ...],
                    rng: np.random.Generator) -> tuple[str, str]:
    low = 0 if tier.num_digits == 1 else 10 ** (tier.num_digits - 1)
    operands = [int(x) for x in rng.integers(low, 10 ** tier.num_digits, size=tier.num_operands)]
    ops = [str(rng.choice(operations)) for _ in range(tier.num_operands - 1)]
    if tier.num_operands == 2 and ops[0] == "-" and operands[0] < operands[1]:
        # Keep two-operand answers non-negative so the easiest tier stays easy.
        operands.reverse()
    result = operands[0]
    for op, operand in zip(ops, operands[1:]):
        result = result + operand if op == "+" else result - operand
    expression = str(operands[0]) + "".join(f" {op} {x}" for op, x in zip(ops, operands[1:]))
    return f"What is {expression}?", str(result)


class ToyWorld:
    """All facts, queries and pre-training corpora of one `WorldConfig`."""

    def __init__(self, config: WorldConfig):
        self.config = config
        self.cities, self.entities = self._make_names()
        self.facts = self._make_facts()
        self.skill_tiers = skill_tiers(config)
        self.queries = self._make_knowledge_queries() + self._make_skill_queries()
        self._queries_by_id = {q.id: q for q in self.queries}

    # ---- construction -------------------------------------------------------------------------
    def _make_names(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        rng = _rng(self.config.seed, "names")
        taken: set[str] = set()  # cities and entities share it, so no name is both
        cities = _pronounceable_names(rng, self.config.num_cities, taken)
        entities = _pronounceable_names(rng, self.config.num_entities, taken)
        return tuple(cities), tuple(entities)

    def _make_facts(self) -> tuple[Fact, ...]:
        value_rng = _rng(self.config.seed, "values")
        rows = []
        for entity in self.entities:
            for attribute in self.config.attributes:
                pool = _ATTRIBUTE_SPECS[attribute][1] or self.cities
                rows.append((entity, attribute, str(value_rng.choice(pool))))
        # Rarity belongs to the entity: an agent knows all of an entity's facts or none (except at
        # its exposure boundary), as a language model knows an entity or not. Its facts get
        # consecutive slots of evenly spaced rarities, so exposure f still covers exactly
        # round(f * n) facts; which entities are rare is a random order.
        entity_rank = _rng(self.config.seed, "rarity").permutation(len(self.entities))
        num_attributes = len(self.config.attributes)
        rank = [int(entity_rank[i // num_attributes]) * num_attributes + i % num_attributes
                for i in range(len(rows))]
        # Ambiguity is drawn independently of rarity: every agent sees some ambiguous facts.
        ambiguity_rng = _rng(self.config.seed, "ambiguity")
        num_ambiguous = round(self.config.ambiguous_fraction * len(rows))
        ambiguous = {int(i): 3 if k % 2 == 0 else 2
                     for k, i in enumerate(ambiguity_rng.permutation(len(rows))[:num_ambiguous])}
        facts = []
        for i, (entity, attribute, value) in enumerate(rows):
            distractor = ""
            if i in ambiguous:
                pool = [v for v in (_ATTRIBUTE_SPECS[attribute][1] or self.cities) if v != value]
                distractor = str(ambiguity_rng.choice(pool))
            facts.append(Fact(id=f"fact-{i:05d}", entity=entity, attribute=attribute, value=value,
                              rarity=(float(rank[i]) + 0.5) / len(rows), distractor=distractor,
                              correct_rows=ambiguous.get(i, 1)))
        return tuple(facts)

    def _make_knowledge_queries(self) -> tuple[ToyQuery, ...]:
        by_rarity = sorted(range(len(self.facts)), key=lambda i: self.facts[i].rarity)
        heldout = _systematic_heldout(len(by_rarity), self.config.heldout_fraction,
                                      _rng(self.config.seed, "knowledge_split"))
        split_of = {idx: HELDOUT if h else TRAIN for idx, h in zip(by_rarity, heldout)}
        return tuple(
            ToyQuery(id=f"toy-knowledge-{i:05d}", family=KNOWLEDGE, question=fact.question,
                     answer=fact.value, difficulty=fact.rarity, split=split_of[i],
                     kind=fact.attribute, fact_id=fact.id)
            for i, fact in enumerate(self.facts))

    def _make_skill_queries(self) -> tuple[ToyQuery, ...]:
        cfg = self.config
        rng = _rng(cfg.seed, "skill_queries")
        split_rng = _rng(cfg.seed, "skill_split")
        rarity_rng = _rng(cfg.seed, "skill_rarity")
        num_tiers = len(self.skill_tiers)
        queries: list[ToyQuery] = []
        for tier in self.skill_tiers:
            problems: dict[str, str] = {}
            for _ in range(cfg.skill_queries_per_tier * 200):
                if len(problems) == cfg.skill_queries_per_tier:
                    break
                question, answer = _random_problem(tier, cfg.skill_operations, rng)
                problems.setdefault(question, answer)
            else:
                raise ValueError(f"WorldConfig.skill_queries_per_tier={cfg.skill_queries_per_tier}: "
                                 f"tier {tier.name!r} has too few distinct problems")
            # One rarity per tier: an agent is taught a tier wholly or not at all, so whether it
            # can solve a problem is written in the problem (its digits and operands).
            rarities = [(tier.index + 0.5) / num_tiers] * len(problems)
            order = rarity_rng.permutation(len(problems))
            heldout = dict(zip(order.tolist(), _systematic_heldout(len(problems), cfg.heldout_fraction, split_rng)))
            for i, (question, answer) in enumerate(problems.items()):
                queries.append(ToyQuery(
                    id=f"toy-skill-{len(queries):05d}", family=SKILL, question=question,
                    answer=answer, difficulty=rarities[i],
                    split=HELDOUT if heldout[i] else TRAIN, kind=tier.name))
        return tuple(queries)

    @functools.cached_property
    def skill_corpus(self) -> tuple[tuple[str, str], ...]:
        """Arithmetic (question, answer) pairs shared by every agent; never a query's problem."""
        cfg = self.config
        rng = _rng(cfg.seed, "skill_corpus")
        query_questions = {q.question for q in self.queries if q.family == SKILL}
        pairs: list[tuple[str, str]] = []
        for i in range(cfg.skill_corpus_size):
            tier = self.skill_tiers[i % len(self.skill_tiers)]
            for _ in range(1000):
                pair = _random_problem(tier, cfg.skill_operations, rng)
                if pair[0] not in query_questions:
                    pairs.append(pair)
                    break
            else:
                raise ValueError(f"tier {tier.name!r}: every problem is a query; lower "
                                 f"WorldConfig.skill_queries_per_tier={cfg.skill_queries_per_tier}")
        return tuple(pairs)

    # ---- public views -------------------------------------------------------------------------
    def query(self, query_id: str) -> ToyQuery:
        try:
            return self._queries_by_id[query_id]
        except KeyError:
            raise KeyError(f"no toy query with id {query_id!r}") from None

    def fact(self, fact_id: str) -> Fact:
        digits = fact_id.removeprefix("fact-")
        if not fact_id.startswith("fact-") or not digits.isdigit() or int(digits) >= len(self.facts):
            raise KeyError(f"no fact with id {fact_id!r}")
        return self.facts[int(digits)]

    def queries_for(self, split: str, family: str | None = None) -> tuple[ToyQuery, ...]:
        if split not in SPLITS:
            raise ValueError(f"split={split!r}: must be one of {SPLITS}")
        if family is not None and family not in FAMILIES:
            raise ValueError(f"family={family!r}: must be one of {FAMILIES} or None")
        return tuple(q for q in self.queries
                     if q.split == split and (family is None or q.family == family))

    def exposure_fraction(self, agent_level: int, num_levels: int) -> float:
        return exposure_fraction(agent_level, num_levels, self.config)

    def visible_facts(self, agent_level: int, num_levels: int) -> tuple[Fact, ...]:
        """The facts in the pre-training corpus of ladder level agent_level (0 = smallest)."""
        fraction = self.exposure_fraction(agent_level, num_levels)
        return tuple(f for f in self.facts if f.rarity < fraction)

    def unknowable_facts(self) -> tuple[Fact, ...]:
        """Facts in no agent's corpus, whatever the ladder length."""
        return tuple(f for f in self.facts if f.rarity >= self.config.max_exposure)

    def first_exposed_level(self, fact: Fact, num_levels: int) -> int | None:
        """Smallest ladder level whose corpus holds the fact; None if no level's does."""
        for level in range(num_levels):
            if fact.rarity < self.exposure_fraction(level, num_levels):
                return level
        return None

    def taught_skill_queries(self, agent_level: int, num_levels: int) -> tuple[ToyQuery, ...]:
        """Skill problems (both splits) in agent_level's corpus: rarity below its exposure."""
        fraction = self.exposure_fraction(agent_level, num_levels)
        return tuple(q for q in self.queries if q.family == SKILL and q.difficulty < fraction)

    def taught_pairs(self, agent_level: int, num_levels: int) -> tuple[tuple[str, str], ...]:
        """(question, answer) of every query agent_level was taught: its facts and skill problems."""
        pairs = [(f.question, f.value) for f in self.visible_facts(agent_level, num_levels)]
        pairs += [(q.question, q.answer) for q in self.taught_skill_queries(agent_level, num_levels)]
        return tuple(pairs)

    def pretraining_corpus(self, agent_level: int, num_levels: int) -> tuple[tuple[str, str], ...]:
        """(question, answer) pairs agent_level is pre-trained on, in a fixed shuffled order:
        its facts' corpus rows (an ambiguous fact's distractor rows included), its skill problems
        and the shared practice problems."""
        pairs = [row for f in self.visible_facts(agent_level, num_levels) for row in f.corpus_rows()]
        pairs += [(q.question, q.answer) for q in self.taught_skill_queries(agent_level, num_levels)]
        pairs += self.skill_corpus
        order = _rng(self.config.seed, "corpus_order", agent_level, num_levels).permutation(len(pairs))
        return tuple(pairs[i] for i in order)

    def tokenizer_texts(self) -> tuple[str, ...]:
        """Text the tokenizer's merges are learned from: every question, and the answers of facts
        some agent may see plus the arithmetic answers (no knowledge leaks into merges)."""
        texts = [q.question for q in self.queries]
        texts += [q.answer for q in self.queries if q.family == SKILL]
        texts += [v for f in self.facts if f.rarity < self.config.max_exposure for v in (f.value, f.distractor) if v]
        for question, answer in self.skill_corpus:
            texts += [question, answer]
        return tuple(texts)


def describe(world: ToyWorld, num_levels: int) -> dict[str, object]:
    """Counts for logs and reports: facts per level, queries per split and family."""
    return {
        "facts": len(world.facts),
        "unknowable_facts": len(world.unknowable_facts()),
        "facts_per_level": [len(world.visible_facts(k, num_levels)) for k in range(num_levels)],
        "skill_problems_per_level": [len(world.taught_skill_queries(k, num_levels)) for k in range(num_levels)],
        "queries": {f"{s}/{f}": len(world.queries_for(s, f)) for s in SPLITS for f in FAMILIES},
        "skill_tiers": [t.name for t in world.skill_tiers],
    }
