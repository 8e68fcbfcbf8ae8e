"""A synthetic question-answering world for the toy agent pool, deterministic from a seed.

What a real LLM knows tracks what its pre-training showed it: facts about an entity are known
when the entity appeared often enough, and skills work on the inputs they were practised on. The
world imitates both, so that whether agent k can answer a query depends on what agent k learned:

* **knowledge** (in-domain, hidden difficulty): facts about generated entities, "What is the job
  of Brekor?" -> "sailor". Every entity has a hidden popularity rank; agent k of n is pre-trained
  on the facts of the entities whose rank lies below `exposure_fraction(k, n)` (a superset of
  agent k-1's). Nothing in the question says whether an agent saw the entity: refusing well needs
  self-knowledge. Each entity name is a single token, so an entity an agent never saw is a token
  it never trained on (as a rare name is to an LLM).
  Each attribute takes `values_per_attribute` values (24): an agent that never saw the entity
  names some value and is right about once in 24, where 12 values made such lucky guesses
  (5-10 % of the never-seen facts, measured) a share of the oracle's utility that no
  self-assessment can earn.
* **choice** (off by default: `choice_attributes=()`; the same facts as a two-option question,
  like the paper's multiple-choice sets): "Which is the job of Brekor: miner or sailor?" ->
  "sailor". The intent was an agent that does not know the entity picking one of the two options,
  right half the time, so that the scenario decides whether guessing pays. Measured (seed 0 pool,
  12 values): it does not; on entities it never saw toy-s is right on 39 % of such queries with a
  bimodal p(x) (confident guesses, so a right guess and a wrong one look alike to it), and the
  family cost the cascade 3-4 points of oracle utility at every α (README, "The toy pool").
  Pre-training still states a `choice_share` of each corpus's facts in this form (another
  phrasing of the same fact, which helps a small model store the fact rather than the string).
* **skill** (in-domain, visible difficulty): counting the letters of a sequence, "Count the
  letters: k d a" -> "3". Agent k practised sequences up to `taught_length(k, n)` letters (random
  practice strings, never a query's) and, like small transformers generally, fails on inputs longer
  than it trained on (measured: 0 % one letter past the taught length). The length is written in
  the question, so refusing can use the surface. (Reversing or copying the letters would be the
  more skill-like task, but tiny agents need ~5x the pre-training steps to learn either.)
* **ood** (out-of-domain): the held-out entities' facts of `ood_attributes` asked in a question
  form no Self-Awareness Training stage and no router ever sees ("Tell me the pet of Brekor.").
  Pre-training states an `ood_share` of each corpus's facts in this form too, so agents can answer
  it; what is out of domain is the form, as the paper's out-of-domain sets (SQuAD, HellaSwag,
  HeadQA) draw on the same world knowledge in other formats. (A held-back *attribute* was tried
  first: with two attributes to learn from, the agents' refusal did not transfer to a third at all;
  toy-xs refused 0 of 300 such queries.)

Intermediate p(x): a `contested_fraction` of the facts reach the smallest corpora that hold them
through noisy sources, as a rare entity's few mentions often are; larger corpora state them
cleanly. In the corpora of the first `contested_span` levels that see it (1 or 2, drawn per fact)
such a fact is stated with a distractor value: "uncertain" (3 right : 1 wrong; sampled p ~ 0.75,
greedy right), "split" (1 : 1; p ~ 0.5) or "misinformed" (1 : 2; p ~ 0.33, greedy wrong). These
are the queries where the scenario α decides whether answering pays.

Splits are by entity: an entity's facts are all train or all held-out, so self-knowledge learnt
on the training entities must generalise to entities it never saw in training (`heldout_fraction`
of the entities, spread evenly over the popularity range). Skill queries are split at random.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

KNOWLEDGE = "knowledge"
CHOICE = "choice"
SKILL = "skill"
OOD = "ood"
FAMILIES = (KNOWLEDGE, CHOICE, SKILL, OOD)
IN_DOMAIN_FAMILIES = (KNOWLEDGE, CHOICE, SKILL)
TRAIN = "train"
HELDOUT = "heldout"
SPLITS = (TRAIN, HELDOUT)

# How a contested fact is stated at the first level that sees it: (right rows, distractor rows).
CLEAN = "clean"
UNCERTAIN = "uncertain"
SPLIT = "split"
MISINFORMED = "misinformed"
CONTESTED_ROWS = {UNCERTAIN: (3, 1), SPLIT: (1, 1), MISINFORMED: (1, 2)}

_COLORS = ("red", "blue", "green", "yellow", "purple", "orange", "black", "white", "silver", "gold",
           "pink", "brown", "gray", "violet", "cyan", "navy", "maroon", "olive", "teal", "beige", "ivory",
           "coral", "amber", "indigo")
_JOBS = ("baker", "farmer", "sailor", "doctor", "painter", "teacher", "miner", "singer", "hunter",
         "weaver", "tailor", "guard", "potter", "smith", "nurse", "judge", "pilot", "cook", "dancer",
         "writer", "barber", "fisher", "porter", "mason")
_PETS = ("cat", "dog", "owl", "goat", "horse", "fox", "crow", "frog", "snake", "rabbit", "turtle",
         "mouse", "hamster", "parrot", "lizard", "duck", "pig", "sheep", "cow", "bee", "ant", "bat",
         "crab", "deer")
_ATTRIBUTE_SPECS: dict[str, tuple[str, tuple[str, ...]]] = {
    "favorite color": ("What is the favorite color of {entity}?", _COLORS),
    "job": ("What is the job of {entity}?", _JOBS),
    "pet": ("What is the pet of {entity}?", _PETS),
}
ATTRIBUTES = tuple(_ATTRIBUTE_SPECS)
MAX_VALUES_PER_ATTRIBUTE = min(len(spec[1]) for spec in _ATTRIBUTE_SPECS.values())
_CHOICE_TEMPLATE = "Which is the {attribute} of {entity}: {first} or {second}?"
_OOD_TEMPLATE = "Tell me the {attribute} of {entity}."
LETTERS = "abcdefghijklmnopqrstuvwxyz"
SKILL_PREFIX = "Count the letters:"

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr",
           "st", "th", "sh")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("", "", "n", "r", "l", "s", "m")

# Named random streams: each part of the world draws from its own generator, so changing one size
# knob does not reshuffle unrelated parts.
_STREAMS = {"names": 1, "values": 2, "popularity": 3, "entity_split": 4, "skill_queries": 5,
            "skill_split": 6, "practice": 7, "corpus_order": 8, "contested": 9, "choice_queries": 10,
            "choice_corpus": 11, "ood_corpus": 12}


def _rng(seed: int, stream: str, *extra: int) -> np.random.Generator:
    return np.random.default_rng([seed, _STREAMS[stream], *extra])


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """Size knobs of the toy world.

    Fields:
      num_entities: entities, each with one value per attribute of `attributes`.
      attributes: the knowledge family's attributes (from ATTRIBUTES).
      values_per_attribute: how many values each attribute takes (the first of its list).
      ood_attributes: the attributes also asked in the out-of-domain form (held-out entities only).
      ood_share: share of each corpus's facts of `ood_attributes` also stated in the out-of-domain form.
      min_exposure / max_exposure: share of the entities (lowest popularity ranks) the smallest
        and the largest agent of the ladder saw; the rest is in no corpus.
      heldout_fraction: share of the entities held out from every training stage (evaluation).
      choice_attributes: the in-domain attributes also asked as two-option questions (choice;
        none by default, see the module docstring).
      choice_share: share of each corpus's facts also stated as a two-option question.
      contested_fraction: share of the facts the first levels that see them see contested (module docstring).
      skill_lengths: (shortest, longest) query length of the skill family.
      skill_min_taught: longest sequence the smallest agent practised; the largest practised
        `skill_lengths[1]`, the others evenly in between.
      skill_queries_per_length: (train, held-out) queries per length.
      tokenizer_vocab_size: the byte-level BPE part of the vocabulary (entity names come on top).
    """

    seed: int = 0
    num_entities: int = 750
    attributes: tuple[str, ...] = ("favorite color", "job", "pet")
    values_per_attribute: int = 24
    ood_attributes: tuple[str, ...] = ("pet",)
    ood_share: float = 0.5
    choice_attributes: tuple[str, ...] = ()
    choice_share: float = 0.5
    min_exposure: float = 0.25
    max_exposure: float = 0.9
    heldout_fraction: float = 0.4
    contested_fraction: float = 0.3
    skill_lengths: tuple[int, int] = (2, 7)
    skill_min_taught: int = 3
    skill_queries_per_length: tuple[int, int] = (150, 75)
    tokenizer_vocab_size: int = 640

    def __post_init__(self):
        def fail(field: str, requirement: str):
            raise ValueError(f"WorldConfig.{field}={getattr(self, field)!r}: {requirement}")

        if isinstance(self.num_entities, bool) or not isinstance(self.num_entities, int) or self.num_entities < 2:
            fail("num_entities", "must be an int >= 2")
        for field in ("attributes", "ood_attributes"):
            values = getattr(self, field)
            if any(a not in _ATTRIBUTE_SPECS for a in values):
                fail(field, f"unknown attribute; known: {ATTRIBUTES}")
            if len(set(values)) != len(values):
                fail(field, "must not repeat an attribute")
        if not self.attributes:
            fail("attributes", f"must name at least one of {ATTRIBUTES}")
        if (isinstance(self.values_per_attribute, bool) or not isinstance(self.values_per_attribute, int)
                or not 2 <= self.values_per_attribute <= MAX_VALUES_PER_ATTRIBUTE):
            fail("values_per_attribute", f"must be an int in [2, {MAX_VALUES_PER_ATTRIBUTE}]")
        if not set(self.choice_attributes) <= set(self.attributes):
            fail("choice_attributes", f"must be in-domain attributes {self.attributes!r}")
        if not 0.0 <= self.choice_share <= 1.0:
            fail("choice_share", "must lie in [0, 1]")
        if not set(self.ood_attributes) <= set(self.attributes):
            fail("ood_attributes", f"must be in-domain attributes {self.attributes!r}")
        if not 0.0 <= self.ood_share <= 1.0:
            fail("ood_share", "must lie in [0, 1]")
        if not 0.0 < self.max_exposure <= 1.0:
            fail("max_exposure", "must lie in (0, 1]")
        if not 0.0 < self.min_exposure <= self.max_exposure:
            fail("min_exposure", f"must lie in (0, max_exposure={self.max_exposure!r}]")
        if not 0.0 < self.heldout_fraction < 1.0:
            fail("heldout_fraction", "must lie strictly between 0 and 1")
        if not 0.0 <= self.contested_fraction <= 1.0:
            fail("contested_fraction", "must lie in [0, 1]")
        low, high = self.skill_lengths
        if not 1 <= low <= high <= 9:
            fail("skill_lengths", "need 1 <= shortest <= longest <= 9 (one-digit counts)")
        if not low <= self.skill_min_taught <= high:
            fail("skill_min_taught", f"must lie in skill_lengths {self.skill_lengths!r}")
        if len(self.skill_queries_per_length) != 2 or min(self.skill_queries_per_length) < 0:
            fail("skill_queries_per_length", "must be (train, held-out) counts >= 0")
        if sum(self.skill_queries_per_length) > len(LETTERS) ** low // 2:
            fail("skill_queries_per_length", f"too many distinct queries of length {low}")
        if self.tokenizer_vocab_size < 300:
            fail("tokenizer_vocab_size", "must be >= 300 (256 bytes + specials + some merges)")

    @classmethod
    def reduced(cls, seed: int = 0) -> "WorldConfig":
        """A small world for unit tests: 120 entities, sequences of 2-4 letters."""
        return cls(seed=seed, num_entities=120, skill_lengths=(2, 4), skill_min_taught=2,
                   skill_queries_per_length=(40, 20), tokenizer_vocab_size=480)


@dataclasses.dataclass(frozen=True)
class Fact:
    """One (entity, attribute, value) with its hidden popularity.

    rarity: the entity's popularity rank scaled to (0, 1); agent k saw the fact iff rarity <
    exposure_fraction(k, n). contest: CLEAN, or how the first corpus that holds it states it
    (UNCERTAIN / SPLIT / MISINFORMED, with `distractor` as the wrong value).
    """

    id: str
    entity: str
    attribute: str
    value: str
    rarity: float
    split: str
    contest: str = CLEAN
    distractor: str = ""
    contested_levels: int = 0  # how many levels, from the first that sees it, see it contested

    @property
    def question(self) -> str:
        return _ATTRIBUTE_SPECS[self.attribute][0].format(entity=self.entity)

    def corpus_rows(self, levels_since_first: int) -> tuple[tuple[str, str], ...]:
        """(question, answer) rows stating the fact in the corpus of the level `levels_since_first`
        above the first that sees it: contested in the first `contested_levels`, else clean."""
        if not self.is_contested_at(levels_since_first):
            return ((self.question, self.value),)
        right, wrong = CONTESTED_ROWS[self.contest]
        return ((self.question, self.value),) * right + ((self.question, self.distractor),) * wrong

    def is_contested_at(self, levels_since_first: int) -> bool:
        return self.contest != CLEAN and 0 <= levels_since_first < self.contested_levels


@dataclasses.dataclass(frozen=True)
class ToyQuery:
    """One query with its known answer.

    difficulty in [0, 1]: knowledge / ood, the fact's hidden rarity (>= max_exposure: no agent saw
    it); skill, (length - shortest + 0.5) / number of lengths. `kind` is the attribute (knowledge,
    ood) or "length-L" (skill); `fact_id` links a fact query to its fact ("" for skill).
    """

    id: str
    family: str
    question: str
    answer: str
    difficulty: float
    split: str
    kind: str
    fact_id: str = ""


_TRAILING_PUNCTUATION = ".!?,;:"


def normalize_answer(text: str) -> str:
    """Collapse whitespace, lower-case and drop trailing punctuation, for exact-match checking."""
    text = " ".join(text.split()).lower()
    return text.rstrip(_TRAILING_PUNCTUATION + " ")


def checker(query: ToyQuery, response: str) -> bool:
    """True iff the response matches the query's answer after `normalize_answer`."""
    return normalize_answer(response) == normalize_answer(query.answer)


def _check_level(agent_level: int, num_levels: int) -> None:
    if num_levels < 1:
        raise ValueError(f"num_levels={num_levels!r}: must be >= 1")
    if not 0 <= agent_level < num_levels:
        raise ValueError(f"agent_level={agent_level!r}: must be in 0..{num_levels - 1}")


def _ladder(agent_level: int, num_levels: int, low: float, high: float) -> float:
    _check_level(agent_level, num_levels)
    if num_levels == 1:
        return high
    return low + (high - low) * agent_level / (num_levels - 1)


def exposure_fraction(agent_level: int, num_levels: int, config: WorldConfig) -> float:
    """Share of the entities (lowest rarities) in the pre-training corpus of level agent_level."""
    return _ladder(agent_level, num_levels, config.min_exposure, config.max_exposure)


def taught_length(agent_level: int, num_levels: int, config: WorldConfig) -> int:
    """Longest letter sequence agent_level practised counting."""
    return int(round(_ladder(agent_level, num_levels, config.skill_min_taught, config.skill_lengths[1])))


def attribute_values(attribute: str, config: WorldConfig) -> tuple[str, ...]:
    """The values an attribute takes in this world: the first `values_per_attribute` of its list."""
    return _ATTRIBUTE_SPECS[attribute][1][:config.values_per_attribute]


def choice_question(fact: "Fact", rng: np.random.Generator, values: Sequence[str]) -> str:
    """The fact as a two-option question: its value and another of `values`, in random order."""
    other = str(rng.choice([v for v in values if v != fact.value]))
    first, second = (fact.value, other) if rng.random() < 0.5 else (other, fact.value)
    return _CHOICE_TEMPLATE.format(attribute=fact.attribute, entity=fact.entity, first=first, second=second)


def ood_question(fact: "Fact") -> str:
    """The fact in the out-of-domain question form."""
    return _OOD_TEMPLATE.format(attribute=fact.attribute, entity=fact.entity)


def skill_question(letters: str) -> str:
    return f"{SKILL_PREFIX} {' '.join(letters)}"


def skill_answer(letters: str) -> str:
    return str(len(letters))


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
    raise ValueError(f"could not generate {count} distinct names; lower WorldConfig.num_entities")


def _systematic_mask(num_items: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask choosing ~fraction of items, evenly spread over the given item order."""
    offset = float(rng.random())
    positions = np.arange(num_items) * fraction + offset
    return np.floor(positions + fraction) > np.floor(positions)


class ToyWorld:
    """All facts, queries and pre-training corpora of one `WorldConfig`."""

    def __init__(self, config: WorldConfig):
        self.config = config
        self.entities = tuple(_pronounceable_names(_rng(config.seed, "names"), config.num_entities, set()))
        self.facts = self._make_facts()
        self.queries = self._make_fact_queries() + self._make_skill_queries()
        self._queries_by_id = {q.id: q for q in self.queries}
        self._facts_by_id = {f.id: f for f in self.facts}

    # ---- construction -------------------------------------------------------------------------
    def _make_facts(self) -> tuple[Fact, ...]:
        cfg = self.config
        n = len(self.entities)
        # Popularity belongs to the entity: an agent knows all of an entity's facts or none.
        rank = _rng(cfg.seed, "popularity").permutation(n)
        rarity = (rank + 0.5) / n
        by_rarity = np.argsort(rank, kind="stable")
        heldout_in_order = _systematic_mask(n, cfg.heldout_fraction, _rng(cfg.seed, "entity_split"))
        split = {int(e): HELDOUT if h else TRAIN for e, h in zip(by_rarity, heldout_in_order)}
        value_rng = _rng(cfg.seed, "values")
        contest_rng = _rng(cfg.seed, "contested")
        kinds = tuple(CONTESTED_ROWS)
        facts = []
        for e, entity in enumerate(self.entities):
            for attribute in cfg.attributes:
                pool = attribute_values(attribute, cfg)
                value = str(value_rng.choice(pool))
                contest, distractor, span = CLEAN, "", 0
                if contest_rng.random() < cfg.contested_fraction:
                    contest = kinds[int(contest_rng.integers(len(kinds)))]
                    distractor = str(contest_rng.choice([v for v in pool if v != value]))
                    span = int(contest_rng.integers(1, 3))
                facts.append(Fact(id=f"fact-{len(facts):05d}", entity=entity, attribute=attribute, value=value,
                                  rarity=float(rarity[e]), split=split[e], contest=contest, distractor=distractor,
                                  contested_levels=span))
        return tuple(facts)

    def _make_fact_queries(self) -> tuple[ToyQuery, ...]:
        """Knowledge and choice queries of both splits; ood queries of the held-out entities only."""
        queries = []
        choice_rng = _rng(self.config.seed, "choice_queries")
        for fact in self.facts:
            if fact.attribute in self.config.choice_attributes:
                question = choice_question(fact, choice_rng, attribute_values(fact.attribute, self.config))
                queries.append(ToyQuery(id=f"toy-{CHOICE}-{fact.id.removeprefix('fact-')}", family=CHOICE,
                                        question=question, answer=fact.value,
                                        difficulty=fact.rarity, split=fact.split, kind=fact.attribute,
                                        fact_id=fact.id))
            queries.append(ToyQuery(id=f"toy-{KNOWLEDGE}-{fact.id.removeprefix('fact-')}", family=KNOWLEDGE,
                                    question=fact.question, answer=fact.value, difficulty=fact.rarity,
                                    split=fact.split, kind=fact.attribute, fact_id=fact.id))
            if fact.attribute in self.config.ood_attributes and fact.split == HELDOUT:
                queries.append(ToyQuery(id=f"toy-{OOD}-{fact.id.removeprefix('fact-')}", family=OOD,
                                        question=ood_question(fact), answer=fact.value, difficulty=fact.rarity,
                                        split=fact.split, kind=fact.attribute, fact_id=fact.id))
        return tuple(queries)

    def _make_skill_queries(self) -> tuple[ToyQuery, ...]:
        cfg = self.config
        rng = _rng(cfg.seed, "skill_queries")
        split_rng = _rng(cfg.seed, "skill_split")
        low, high = cfg.skill_lengths
        num_train, num_heldout = cfg.skill_queries_per_length
        queries: list[ToyQuery] = []
        for length in range(low, high + 1):
            strings: dict[str, None] = {}
            while len(strings) < num_train + num_heldout:
                strings.setdefault("".join(rng.choice(list(LETTERS), size=length)), None)
            heldout = set(split_rng.permutation(len(strings))[:num_heldout].tolist())
            for i, letters in enumerate(strings):
                queries.append(ToyQuery(
                    id=f"toy-skill-{len(queries):05d}", family=SKILL, question=skill_question(letters),
                    answer=skill_answer(letters), difficulty=(length - low + 0.5) / (high - low + 1),
                    split=HELDOUT if i in heldout else TRAIN, kind=f"length-{length}"))
        return tuple(queries)

    # ---- public views -------------------------------------------------------------------------
    def query(self, query_id: str) -> ToyQuery:
        try:
            return self._queries_by_id[query_id]
        except KeyError:
            raise KeyError(f"no toy query with id {query_id!r}") from None

    def fact(self, fact_id: str) -> Fact:
        try:
            return self._facts_by_id[fact_id]
        except KeyError:
            raise KeyError(f"no fact with id {fact_id!r}") from None

    def queries_for(self, split: str, family: str | None = None) -> tuple[ToyQuery, ...]:
        if split not in SPLITS:
            raise ValueError(f"split={split!r}: must be one of {SPLITS}")
        if family is not None and family not in FAMILIES:
            raise ValueError(f"family={family!r}: must be one of {FAMILIES} or None")
        return tuple(q for q in self.queries if q.split == split and (family is None or q.family == family))

    def exposure_fraction(self, agent_level: int, num_levels: int) -> float:
        return exposure_fraction(agent_level, num_levels, self.config)

    def taught_length(self, agent_level: int, num_levels: int) -> int:
        return taught_length(agent_level, num_levels, self.config)

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

    def fact_rows(self, agent_level: int, num_levels: int) -> tuple[tuple[str, str], ...]:
        """(question, answer) rows of agent_level's facts (contested facts as the module says), a
        `choice_share` of them as two-option questions and an `ood_share` of its `ood_attributes`
        facts in the out-of-domain form (both always stated rightly)."""
        facts = self.visible_facts(agent_level, num_levels)
        rows = [row for f in facts for row in f.corpus_rows(agent_level - self.first_exposed_level(f, num_levels))]
        return tuple(rows) + self._restated_rows(agent_level, num_levels)

    def _restated_rows(self, agent_level: int, num_levels: int) -> tuple[tuple[str, str], ...]:
        facts = self.visible_facts(agent_level, num_levels)
        rng = _rng(self.config.seed, "choice_corpus", agent_level, num_levels)
        choice = tuple((choice_question(f, rng, attribute_values(f.attribute, self.config)), f.value) for f in facts
                       if rng.random() < self.config.choice_share)
        rng = _rng(self.config.seed, "ood_corpus", agent_level, num_levels)
        ood = tuple((ood_question(f), f.value) for f in facts
                    if f.attribute in self.config.ood_attributes and rng.random() < self.config.ood_share)
        return choice + ood

    def known_pairs(self, agent_level: int, num_levels: int) -> tuple[tuple[str, str], ...]:
        """(question, answer) rows agent_level saw stated cleanly, which it must recall: its clean
        facts, its two-option rows and its out-of-domain-form rows."""
        clean = tuple((f.question, f.value) for f in self.visible_facts(agent_level, num_levels)
                      if not f.is_contested_at(agent_level - self.first_exposed_level(f, num_levels)))
        return clean + self._restated_rows(agent_level, num_levels)

    @functools.cached_property
    def _query_strings(self) -> frozenset[str]:
        return frozenset(q.question for q in self.queries if q.family == SKILL)

    def practice_strings(self, agent_level: int, num_levels: int, count: int, seed: int) -> list[str]:
        """`count` random letter sequences of the lengths agent_level practises (shortest query
        length .. its taught length, uniform), never a query's string."""
        low = self.config.skill_lengths[0]
        high = self.taught_length(agent_level, num_levels)
        rng = _rng(self.config.seed, "practice", agent_level, num_levels, seed)
        out: list[str] = []
        while len(out) < count:
            length = int(rng.integers(low, high + 1))
            letters = "".join(rng.choice(list(LETTERS), size=length))
            if skill_question(letters) not in self._query_strings:
                out.append(letters)
        return out

    def tokenizer_texts(self) -> tuple[str, ...]:
        """Text the tokenizer's BPE merges are learned from: every question with its answer
        (entity names are whole tokens of their own, see `toy.tokenizer`)."""
        texts = []
        for q in self.queries:
            texts += [q.question, q.answer]
        texts += [v for a in self.config.attributes for v in attribute_values(a, self.config)]
        return tuple(texts)


def describe(world: ToyWorld, num_levels: int) -> dict[str, object]:
    """Counts for logs and reports: facts per level, queries per split and family."""
    contested = {kind: sum(f.contest == kind for f in world.facts) for kind in CONTESTED_ROWS}
    return {
        "entities": len(world.entities),
        "facts": len(world.facts),
        "contested_facts": contested,
        "unknowable_facts": len(world.unknowable_facts()),
        "facts_per_level": [len(world.visible_facts(k, num_levels)) for k in range(num_levels)],
        "taught_length_per_level": [world.taught_length(k, num_levels) for k in range(num_levels)],
        "queries": {f"{s}/{f}": len(world.queries_for(s, f)) for s in SPLITS for f in FAMILIES},
    }
