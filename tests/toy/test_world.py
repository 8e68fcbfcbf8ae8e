"""The toy world: determinism, config checks, nested exposure by entity popularity, contested facts,
choice rows, the counting skill's ladder and practice strings, splits by entity, ood, checker."""

import collections
import dataclasses
import re

import pytest

from disrouter_jax.toy.world import (
    ATTRIBUTES, CHOICE, CLEAN, CONTESTED_ROWS, FAMILIES, HELDOUT, IN_DOMAIN_FAMILIES, KNOWLEDGE, LETTERS,
    MISINFORMED, OOD, SKILL, SKILL_PREFIX, SPLIT, SPLITS, TRAIN, UNCERTAIN, Fact, ToyQuery, ToyWorld,
    WorldConfig, _ATTRIBUTE_SPECS, checker, describe, exposure_fraction, normalize_answer, taught_length)

NUM_LEVELS = 5
LADDERS = (1, 3, NUM_LEVELS)
CHOICE_RE = re.compile(r"Which is the (?P<attribute>[a-z ]+) of (?P<entity>[A-Z][a-z]+): "
                       r"(?P<first>[a-z]+) or (?P<second>[a-z]+)\?")
OOD_RE = re.compile(r"Tell me the (?P<attribute>[a-z ]+) of (?P<entity>[A-Z][a-z]+)\.")


@pytest.fixture(scope="module")
def world():
    return ToyWorld(WorldConfig.reduced())


@pytest.fixture(scope="module")
def default_world():
    return ToyWorld(WorldConfig())


def _values(attribute, config=None):
    return _ATTRIBUTE_SPECS[attribute][1][:(config or WorldConfig()).values_per_attribute]


@pytest.fixture(scope="module")
def choice_world():
    """The reduced world with the two-option family switched on (off by default)."""
    return ToyWorld(dataclasses.replace(WorldConfig.reduced(), choice_attributes=("job",)))


def _restated(question):
    """A choice or out-of-domain-form row rather than a fact's own question."""
    return CHOICE_RE.fullmatch(question) is not None or OOD_RE.fullmatch(question) is not None


def _mentions(text, entity):
    # Names are capitalised words; a word boundary keeps "Bomo" from matching inside "Bomomu".
    return re.search(rf"\b{entity}\b", text) is not None


def _skill_letters(question):
    assert question.startswith(SKILL_PREFIX + " "), question
    return question[len(SKILL_PREFIX) + 1:].replace(" ", "")


# ---- determinism and config -----------------------------------------------------------------------

def test_same_seed_gives_identical_world_and_corpora():
    first, second = ToyWorld(WorldConfig.reduced(seed=3)), ToyWorld(WorldConfig.reduced(seed=3))
    assert first.entities == second.entities
    assert first.facts == second.facts
    assert first.queries == second.queries
    for level in range(NUM_LEVELS):
        assert first.fact_rows(level, NUM_LEVELS) == second.fact_rows(level, NUM_LEVELS)
        assert first.known_pairs(level, NUM_LEVELS) == second.known_pairs(level, NUM_LEVELS)
        assert first.practice_strings(level, NUM_LEVELS, 50, seed=1) == second.practice_strings(
            level, NUM_LEVELS, 50, seed=1)


def test_different_seed_gives_different_world():
    first, second = ToyWorld(WorldConfig.reduced(seed=0)), ToyWorld(WorldConfig.reduced(seed=1))
    assert first.entities != second.entities
    assert [f.value for f in first.facts] != [f.value for f in second.facts]
    assert [f.rarity for f in first.facts] != [f.rarity for f in second.facts]
    assert [q.question for q in first.queries_for(TRAIN, SKILL)] != [
        q.question for q in second.queries_for(TRAIN, SKILL)]


def test_practice_seed_changes_the_strings(world):
    assert world.practice_strings(2, NUM_LEVELS, 40, seed=0) != world.practice_strings(2, NUM_LEVELS, 40, seed=1)


@pytest.mark.parametrize("field, value", [
    ("num_entities", 1), ("num_entities", True), ("num_entities", 10.0),
    ("attributes", ()), ("attributes", ("shoe size",)), ("attributes", ("job", "job")),
    ("ood_attributes", ("shoe size",)), ("ood_share", 1.5), ("ood_share", -0.1),
    ("choice_attributes", ("shoe size",)), ("choice_share", 1.5), ("choice_share", -0.1),
    ("min_exposure", 0.0), ("max_exposure", 1.5), ("min_exposure", 0.95),
    ("heldout_fraction", 0.0), ("heldout_fraction", 1.0),
    ("contested_fraction", -0.1), ("contested_fraction", 1.5),
    ("skill_lengths", (0, 3)), ("skill_lengths", (5, 3)), ("skill_lengths", (2, 10)),
    ("skill_min_taught", 1), ("skill_min_taught", 5),
    ("skill_queries_per_length", (-1, 5)), ("skill_queries_per_length", (300, 100)),
    ("tokenizer_vocab_size", 100),
    ("values_per_attribute", 1), ("values_per_attribute", 25), ("values_per_attribute", 12.0),
])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError) as excinfo:
        dataclasses.replace(WorldConfig.reduced(), **{field: value})
    # The message starts with the offending field and its value.
    assert str(excinfo.value).startswith(f"WorldConfig.{field}={value!r}:")


def test_bad_levels_raise():
    cfg = WorldConfig.reduced()
    for function in (exposure_fraction, taught_length):
        with pytest.raises(ValueError, match="agent_level"):
            function(5, 5, cfg)
        with pytest.raises(ValueError, match="agent_level"):
            function(-1, 5, cfg)
        with pytest.raises(ValueError, match="num_levels"):
            function(0, 0, cfg)


def test_bad_lookups_raise(world):
    with pytest.raises(KeyError, match="nope"):
        world.query("nope")
    with pytest.raises(KeyError, match="fact-99999"):
        world.fact("fact-99999")
    with pytest.raises(ValueError, match="split"):
        world.queries_for("dev")
    with pytest.raises(ValueError, match="family"):
        world.queries_for(TRAIN, "poetry")


# ---- entities and facts ---------------------------------------------------------------------------

def test_names_are_distinct_pronounceable_words(world):
    assert len(world.entities) == world.config.num_entities
    assert len(set(world.entities)) == len(world.entities)
    assert all(re.fullmatch(r"[A-Z][a-z]{3,}", name) for name in world.entities)


def test_every_entity_has_one_value_per_attribute(world):
    cfg = world.config
    attributes = cfg.attributes
    assert len(world.facts) == cfg.num_entities * len(attributes)
    assert len({f.id for f in world.facts}) == len(world.facts)
    by_entity = collections.defaultdict(list)
    for fact in world.facts:
        by_entity[fact.entity].append(fact)
        assert fact.value in _values(fact.attribute)
        assert fact.question == _ATTRIBUTE_SPECS[fact.attribute][0].format(entity=fact.entity)
        assert world.fact(fact.id) == fact
    assert set(by_entity) == set(world.entities)
    for facts in by_entity.values():
        assert sorted(f.attribute for f in facts) == sorted(attributes)
        # Popularity and split belong to the entity, not to the fact.
        assert len({f.rarity for f in facts}) == 1 and len({f.split for f in facts}) == 1


def test_rarities_are_distinct_evenly_spaced_ranks(world):
    n = world.config.num_entities
    rarities = sorted({f.rarity for f in world.facts})
    assert rarities == pytest.approx([(r + 0.5) / n for r in range(n)])


def test_value_draws_use_several_values_per_attribute(world):
    for attribute in world.config.attributes:
        used = collections.Counter(f.value for f in world.facts if f.attribute == attribute)
        assert len(used) >= len(_values(attribute)) // 2  # not one constant answer


@pytest.mark.parametrize("count", (2, 12))
def test_values_per_attribute_bounds_every_value_drawn(count):
    world = ToyWorld(dataclasses.replace(WorldConfig.reduced(), values_per_attribute=count,
                                         choice_attributes=("job",)))
    for fact in world.facts:
        assert fact.value in _ATTRIBUTE_SPECS[fact.attribute][1][:count]
        assert fact.contest == CLEAN or fact.distractor in _ATTRIBUTE_SPECS[fact.attribute][1][:count]
    for question, _ in world.fact_rows(2, 3):
        match = CHOICE_RE.fullmatch(question)
        if match:
            assert {match["first"], match["second"]} <= set(_ATTRIBUTE_SPECS[match["attribute"]][1][:count])
    assert len({f.value for f in world.facts}) <= count * len(world.config.attributes)


def test_default_world_has_24_values_per_attribute_and_no_choice_queries():
    # Fewer values made lucky guesses on never-seen entities (~1/12) a large share of the oracle's
    # utility that no self-assessment can earn; the two-option family did the same (README).
    world = ToyWorld(WorldConfig.reduced())
    assert world.config.values_per_attribute == 24
    assert not world.queries_for(TRAIN, CHOICE) and not world.queries_for(HELDOUT, CHOICE)
    assert any(q.startswith("Which is") for q, _ in world.fact_rows(2, 3))  # still a form pre-training states


def test_all_attributes_usable_in_domain():
    cfg = dataclasses.replace(WorldConfig.reduced(), attributes=ATTRIBUTES, ood_attributes=(),
                              choice_attributes=ATTRIBUTES)
    world = ToyWorld(cfg)
    assert {f.attribute for f in world.facts} == set(ATTRIBUTES)
    assert not world.queries_for(HELDOUT, OOD)
    assert {q.kind for q in world.queries_for(TRAIN, CHOICE)} == set(ATTRIBUTES)


# ---- exposure --------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_levels", LADDERS)
def test_exposure_ladder_spans_min_to_max(num_levels):
    cfg = WorldConfig.reduced()
    fractions = [exposure_fraction(k, num_levels, cfg) for k in range(num_levels)]
    assert fractions[-1] == pytest.approx(cfg.max_exposure)
    if num_levels > 1:
        assert fractions[0] == pytest.approx(cfg.min_exposure)
        assert all(a < b for a, b in zip(fractions, fractions[1:]))


@pytest.mark.parametrize("num_levels", LADDERS)
def test_fact_exposure_is_nested_and_grows(world, num_levels):
    previous = set()
    for level in range(num_levels):
        facts = set(world.visible_facts(level, num_levels))
        assert previous < facts  # strict superset of the smaller agent's facts
        # Whole entities: the exposure fraction counts entities, each with all its attributes.
        entities = {f.entity for f in facts}
        expected = world.exposure_fraction(level, num_levels) * len(world.entities)
        assert abs(len(entities) - expected) <= 1
        previous = facts
    assert len(previous) < len(world.facts)  # even the largest agent does not see everything


def test_an_agent_knows_an_entity_wholly_or_not_at_all(world):
    per_entity = len(world.config.attributes)
    for level in range(NUM_LEVELS):
        seen = collections.Counter(f.entity for f in world.visible_facts(level, NUM_LEVELS))
        assert set(seen.values()) == {per_entity}


def test_first_exposed_level_matches_visibility(world):
    for num_levels in (3, NUM_LEVELS):
        visible = [set(world.visible_facts(k, num_levels)) for k in range(num_levels)]
        levels = collections.Counter()
        for fact in world.facts:
            level = world.first_exposed_level(fact, num_levels)
            levels[level] += 1
            assert [fact in v for v in visible] == [level is not None and k >= level for k in range(num_levels)]
        assert set(levels) == set(range(num_levels)) | {None}


def test_unknowable_facts_are_in_no_corpus(world):
    unknowable = world.unknowable_facts()
    assert unknowable
    assert all(f.rarity >= world.config.max_exposure for f in unknowable)
    entities = {f.entity for f in unknowable}
    for num_levels in LADDERS:
        for level in range(num_levels):
            rows = world.fact_rows(level, num_levels)
            # Not as an open question, not as a choice row, not under any phrasing naming the entity.
            assert not any(_mentions(q, e) for q, _ in rows for e in entities)
        assert all(world.first_exposed_level(f, num_levels) is None for f in unknowable)
    top = set(world.visible_facts(NUM_LEVELS - 1, NUM_LEVELS))
    assert top | set(unknowable) == set(world.facts) and not top & set(unknowable)


# ---- contested facts -------------------------------------------------------------------------------

def test_contested_facts_have_a_kind_a_distractor_and_a_span(world):
    contested = [f for f in world.facts if f.contest != CLEAN]
    assert {f.contest for f in contested} == set(CONTESTED_ROWS) == {UNCERTAIN, SPLIT, MISINFORMED}
    assert abs(len(contested) / len(world.facts) - world.config.contested_fraction) < 0.08
    for fact in contested:
        assert fact.distractor in _values(fact.attribute) and fact.distractor != fact.value
        assert fact.contested_levels in (1, 2)
    assert {f.contested_levels for f in contested} == {1, 2}
    for fact in world.facts:
        if fact.contest == CLEAN:
            assert fact.distractor == "" and fact.contested_levels == 0


def test_contested_rows_follow_the_ratios():
    assert CONTESTED_ROWS == {UNCERTAIN: (3, 1), SPLIT: (1, 1), MISINFORMED: (1, 2)}
    for contest, (right, wrong) in CONTESTED_ROWS.items():
        fact = Fact(id="f", entity="Bomo", attribute="job", value="sailor", rarity=0.1, split=TRAIN,
                    contest=contest, distractor="miner", contested_levels=2)
        for since in (0, 1):
            rows = fact.corpus_rows(since)
            assert {q for q, _ in rows} == {fact.question}
            assert [a for _, a in rows].count("sailor") == right and [a for _, a in rows].count("miner") == wrong
            assert fact.is_contested_at(since)
        assert fact.corpus_rows(2) == ((fact.question, "sailor"),) and not fact.is_contested_at(2)
        assert not fact.is_contested_at(-1)
    clean = Fact(id="f", entity="Bomo", attribute="job", value="sailor", rarity=0.1, split=TRAIN)
    assert clean.corpus_rows(0) == ((clean.question, "sailor"),) and not clean.is_contested_at(0)


@pytest.mark.parametrize("num_levels", (3, NUM_LEVELS))
def test_fact_rows_contest_a_fact_only_in_its_first_contested_levels(world, num_levels):
    seen_contested = seen_clean_later = 0
    for level in range(num_levels):
        rows = collections.defaultdict(list)
        for question, answer in world.fact_rows(level, num_levels):
            if not _restated(question):
                rows[question].append(answer)
        visible = world.visible_facts(level, num_levels)
        assert set(rows) == {f.question for f in visible}  # open rows: exactly the visible facts
        for fact in visible:
            since = level - world.first_exposed_level(fact, num_levels)
            if fact.contest != CLEAN and since < fact.contested_levels:
                right, wrong = CONTESTED_ROWS[fact.contest]
                assert collections.Counter(rows[fact.question]) == {fact.value: right, fact.distractor: wrong}
                seen_contested += 1
            else:
                assert rows[fact.question] == [fact.value]
                seen_clean_later += fact.contest != CLEAN
    assert seen_contested and seen_clean_later  # both branches exercised


def test_no_contested_fraction_means_every_row_is_right():
    world = ToyWorld(dataclasses.replace(WorldConfig.reduced(), contested_fraction=0.0))
    assert all(f.contest == CLEAN for f in world.facts)
    truth = {f.question: f.value for f in world.facts}
    for level in range(NUM_LEVELS):
        assert set(world.fact_rows(level, NUM_LEVELS)) == set(world.known_pairs(level, NUM_LEVELS))
        assert all(truth[q] == a for q, a in world.fact_rows(level, NUM_LEVELS) if q in truth)


def test_full_contested_fraction_contests_every_fact():
    world = ToyWorld(dataclasses.replace(WorldConfig.reduced(), contested_fraction=1.0))
    assert all(f.contest != CLEAN for f in world.facts)


# ---- choice ----------------------------------------------------------------------------------------

def test_choice_queries_offer_the_true_value_and_one_other(choice_world):
    world = choice_world
    choice = world.queries_for(TRAIN, CHOICE) + world.queries_for(HELDOUT, CHOICE)
    assert choice
    firsts = 0
    for query in choice:
        fact = world.fact(query.fact_id)
        match = CHOICE_RE.fullmatch(query.question)
        assert match, query.question
        assert (match["attribute"], match["entity"]) == (fact.attribute, fact.entity)
        options = {match["first"], match["second"]}
        assert len(options) == 2 and fact.value in options and options <= set(_values(fact.attribute))
        assert (query.answer, query.kind, query.difficulty, query.split) == (
            fact.value, fact.attribute, fact.rarity, fact.split)
        assert fact.attribute in world.config.choice_attributes
        firsts += match["first"] == fact.value
    # The true value comes first about half the time: position gives nothing away.
    assert 0.3 < firsts / len(choice) < 0.7


@pytest.mark.parametrize("num_levels", (3, NUM_LEVELS))
def test_choice_rows_are_right_and_only_of_visible_in_domain_facts(world, num_levels):
    by_entity_attribute = {(f.entity, f.attribute): f for f in world.facts}
    for level in range(num_levels):
        visible = set(world.visible_facts(level, num_levels))
        rows = [(q, a) for q, a in world.fact_rows(level, num_levels) if q.startswith("Which is")]
        assert rows
        stated = set()
        for question, answer in rows:
            match = CHOICE_RE.fullmatch(question)
            assert match, question
            fact = by_entity_attribute[(match["entity"], match["attribute"])]
            assert fact in visible
            assert answer == fact.value  # stated rightly even when the fact is contested
            assert fact.value in (match["first"], match["second"]) and match["first"] != match["second"]
            stated.add(fact)
        assert abs(len(stated) / len(visible) - world.config.choice_share) < 0.15
        # known_pairs keeps every choice row: an agent must recall what it read stated rightly.
        assert set(rows) <= set(world.known_pairs(level, num_levels))


def test_choice_share_zero_means_no_choice_rows():
    world = ToyWorld(dataclasses.replace(WorldConfig.reduced(), choice_share=0.0, choice_attributes=("job",)))
    assert not any(q.startswith("Which is") for q, _ in world.fact_rows(NUM_LEVELS - 1, NUM_LEVELS))
    assert world.queries_for(TRAIN, CHOICE)  # the queries do not depend on the corpus share


# ---- known pairs -----------------------------------------------------------------------------------

@pytest.mark.parametrize("num_levels", (3, NUM_LEVELS))
def test_known_pairs_are_the_clean_facts_and_choice_rows(world, num_levels):
    for level in range(num_levels):
        known = world.known_pairs(level, num_levels)
        rows = set(world.fact_rows(level, num_levels))
        assert set(known) <= rows
        open_known = {(q, a) for q, a in known if not _restated(q)}
        expected = {(f.question, f.value) for f in world.visible_facts(level, num_levels)
                    if not f.is_contested_at(level - world.first_exposed_level(f, num_levels))}
        assert open_known == expected
        contested_now = [f for f in world.visible_facts(level, num_levels)
                         if f.is_contested_at(level - world.first_exposed_level(f, num_levels))]
        assert contested_now and not any((f.question, f.value) in open_known for f in contested_now)


# ---- skill -----------------------------------------------------------------------------------------

def test_taught_length_ladder():
    cfg = WorldConfig()
    assert [taught_length(k, 5, cfg) for k in range(5)] == [3, 4, 5, 6, 7]
    assert taught_length(0, 1, cfg) == cfg.skill_lengths[1]  # a lone agent practised everything
    reduced = WorldConfig.reduced()
    assert [taught_length(k, 3, reduced) for k in range(3)] == [2, 3, 4]
    for num_levels in LADDERS:
        lengths = [taught_length(k, num_levels, reduced) for k in range(num_levels)]
        assert lengths == sorted(lengths) and lengths[-1] == reduced.skill_lengths[1]
        assert lengths[0] == (reduced.skill_min_taught if num_levels > 1 else reduced.skill_lengths[1])
    # Evenly in between: each level's length is the nearest whole number to the straight line.
    low, high = reduced.skill_min_taught, reduced.skill_lengths[1]
    for num_levels in (4, 6):
        for k in range(num_levels):
            assert abs(taught_length(k, num_levels, reduced) - (low + (high - low) * k / (num_levels - 1))) <= 0.5


def test_skill_queries_count_their_letters(world):
    low, high = world.config.skill_lengths
    per_length = collections.Counter()
    for query in world.queries_for(TRAIN, SKILL) + world.queries_for(HELDOUT, SKILL):
        letters = _skill_letters(query.question)
        assert query.question == f"{SKILL_PREFIX} {' '.join(letters)}"
        assert set(letters) <= set(LETTERS) and low <= len(letters) <= high
        assert query.answer == str(len(letters)) and query.kind == f"length-{len(letters)}"
        assert query.fact_id == ""
        per_length[len(letters), query.split] += 1
    train, heldout = world.config.skill_queries_per_length
    assert per_length == {**{(n, TRAIN): train for n in range(low, high + 1)},
                          **{(n, HELDOUT): heldout for n in range(low, high + 1)}}
    questions = [q.question for q in world.queries if q.family == SKILL]
    assert len(set(questions)) == len(questions)


def test_skill_difficulty_grows_with_length(world):
    by_length = collections.defaultdict(set)
    for query in world.queries:
        if query.family == SKILL:
            by_length[int(query.kind.removeprefix("length-"))].add(query.difficulty)
    assert all(len(d) == 1 for d in by_length.values())
    ordered = [next(iter(by_length[n])) for n in sorted(by_length)]
    assert ordered == sorted(ordered) and len(set(ordered)) == len(ordered)
    assert 0.0 < ordered[0] and ordered[-1] < 1.0


@pytest.mark.parametrize("num_levels", LADDERS)
def test_practice_strings_lie_in_the_taught_lengths_and_are_never_queries(world, num_levels):
    queries = {_skill_letters(q.question) for q in world.queries if q.family == SKILL}
    low = world.config.skill_lengths[0]
    for level in range(num_levels):
        taught = world.taught_length(level, num_levels)
        strings = world.practice_strings(level, num_levels, 2000, seed=0)
        assert len(strings) == 2000
        assert all(set(s) <= set(LETTERS) for s in strings)
        assert {len(s) for s in strings} == set(range(low, taught + 1))  # every length, none longer
        assert not set(strings) & queries


def test_practice_strings_avoid_queries_even_when_they_are_dense():
    # With length-2 queries a large share of all 676 two-letter strings, practice must still skip them.
    cfg = dataclasses.replace(WorldConfig.reduced(), skill_lengths=(2, 3), skill_min_taught=2,
                              skill_queries_per_length=(200, 100))
    world = ToyWorld(cfg)
    queries = {_skill_letters(q.question) for q in world.queries if q.family == SKILL}
    strings = world.practice_strings(0, 3, 3000, seed=0)
    assert {len(s) for s in strings} == {2}
    assert not set(strings) & queries


# ---- queries and splits ----------------------------------------------------------------------------

def _expected_counts(world):
    cfg = world.config
    entities = {split: len({f.entity for f in world.facts if f.split == split}) for split in SPLITS}
    lengths = cfg.skill_lengths[1] - cfg.skill_lengths[0] + 1
    counts = {}
    for i, split in enumerate(SPLITS):
        counts[split, KNOWLEDGE] = entities[split] * len(cfg.attributes)
        counts[split, CHOICE] = entities[split] * len(cfg.choice_attributes)
        counts[split, SKILL] = cfg.skill_queries_per_length[i] * lengths
        counts[split, OOD] = entities[split] * len(cfg.ood_attributes) if split == HELDOUT else 0
    return counts


def test_query_counts_per_family_and_split_match_the_config(world):
    expected = _expected_counts(world)
    for split in SPLITS:
        for family in FAMILIES:
            assert len(world.queries_for(split, family)) == expected[split, family], (split, family)
            assert all(q.family == family and q.split == split for q in world.queries_for(split, family))
    assert len(world.queries) == sum(expected.values())
    assert len({q.id for q in world.queries}) == len(world.queries)
    assert all(world.query(q.id) is q for q in world.queries)


def test_default_world_has_the_projects_scale(default_world):
    in_domain = {split: sum(len(default_world.queries_for(split, f)) for f in IN_DOMAIN_FAMILIES) for split in SPLITS}
    assert in_domain[TRAIN] >= 2000
    assert in_domain[HELDOUT] >= 1000
    assert len(default_world.queries_for(HELDOUT, OOD)) >= 300
    assert not default_world.queries_for(TRAIN, OOD)
    expected = _expected_counts(default_world)
    assert all(len(default_world.queries_for(s, f)) == expected[s, f] for s in SPLITS for f in FAMILIES)


def test_split_is_by_entity_and_spread_over_popularity(world):
    for family in (KNOWLEDGE, CHOICE, OOD):
        for query in world.queries_for(TRAIN, family) + world.queries_for(HELDOUT, family):
            assert query.split == world.fact(query.fact_id).split
    train_entities = {f.entity for f in world.facts if f.split == TRAIN}
    heldout_entities = {f.entity for f in world.facts if f.split == HELDOUT}
    assert not train_entities & heldout_entities
    assert train_entities | heldout_entities == set(world.entities)
    fraction = world.config.heldout_fraction
    assert abs(len(heldout_entities) / len(world.entities) - fraction) <= 1 / len(world.entities)
    # Evenly over popularity: every fifth of the rarity range holds about the same held-out share.
    rarity = {f.entity: f.rarity for f in world.facts}
    for lo in (0.0, 0.2, 0.4, 0.6, 0.8):
        band = [e for e in world.entities if lo <= rarity[e] < lo + 0.2]
        share = sum(e in heldout_entities for e in band) / len(band)
        assert abs(share - fraction) <= 0.05, (lo, share)
    for split in SPLITS:
        knowledge = world.queries_for(split, KNOWLEDGE)
        assert any(q.difficulty >= world.config.max_exposure for q in knowledge)  # nobody knows
        assert any(q.difficulty < world.config.min_exposure for q in knowledge)  # everybody knows


def test_skill_split_is_random_within_each_length(world):
    # Not the first or last strings of each length: the split is a random draw.
    for length in range(world.config.skill_lengths[0], world.config.skill_lengths[1] + 1):
        splits = [q.split for q in world.queries if q.kind == f"length-{length}"]
        assert splits != sorted(splits) and splits != sorted(splits, reverse=True)


def test_knowledge_queries_match_their_facts_and_hide_rarity(world):
    for query in world.queries_for(TRAIN, KNOWLEDGE) + world.queries_for(HELDOUT, KNOWLEDGE):
        fact = world.fact(query.fact_id)
        assert (query.question, query.answer, query.difficulty, query.kind) == (
            fact.question, fact.value, fact.rarity, fact.attribute)
        assert fact.attribute in world.config.attributes
        assert world.query(query.id) == query
    # One surface per attribute whatever the rarity: stripping the entity leaves one shape each.
    shapes = {q.question.replace(world.fact(q.fact_id).entity, "<E>")
              for q in world.queries if q.family in (KNOWLEDGE, OOD)}
    assert len(shapes) == len(world.config.attributes) + len(world.config.ood_attributes)


def test_ood_queries_ask_held_out_facts_in_a_form_no_other_family_uses(world):
    ood = world.queries_for(HELDOUT, OOD)
    assert ood
    heldout_entities = {f.entity for f in world.facts if f.split == HELDOUT}
    knowledge = {q.fact_id: q for q in world.queries if q.family == KNOWLEDGE}
    for query in ood:
        fact = world.fact(query.fact_id)
        assert fact.attribute in world.config.ood_attributes and query.kind == fact.attribute
        assert fact.entity in heldout_entities
        match = OOD_RE.fullmatch(query.question)
        assert match and (match["attribute"], match["entity"], query.answer) == (
            fact.attribute, fact.entity, fact.value)
        # The same fact is an in-domain knowledge query too: only the form is out of domain.
        assert knowledge[fact.id].answer == query.answer and knowledge[fact.id].question != query.question
    assert {world.fact(q.fact_id).entity for q in ood} == heldout_entities
    assert not any(OOD_RE.fullmatch(q.question) for q in world.queries if q.family != OOD)


@pytest.mark.parametrize("num_levels", (3, NUM_LEVELS))
def test_ood_form_rows_are_right_and_an_ood_share_of_the_visible_ood_facts(world, num_levels):
    for level in range(num_levels):
        visible = [f for f in world.visible_facts(level, num_levels) if f.attribute in world.config.ood_attributes]
        by_question = {(f.entity, f.attribute): f for f in visible}
        rows = [(q, a) for q, a in world.fact_rows(level, num_levels) if OOD_RE.fullmatch(q)]
        for question, answer in rows:
            match = OOD_RE.fullmatch(question)
            fact = by_question[(match["entity"], match["attribute"])]  # only facts the corpus holds
            assert answer == fact.value  # stated rightly even when the fact is contested
        assert len(set(rows)) == len(rows)
        assert abs(len(rows) / len(visible) - world.config.ood_share) < 0.15
        assert set(rows) <= set(world.known_pairs(level, num_levels))
    none = ToyWorld(dataclasses.replace(WorldConfig.reduced(), ood_share=0.0))
    assert not any(OOD_RE.fullmatch(q) for q, _ in none.fact_rows(NUM_LEVELS - 1, NUM_LEVELS))
    assert none.queries_for(HELDOUT, OOD)  # the queries do not depend on the corpus share


def test_ood_attributes_must_be_in_domain_attributes():
    with pytest.raises(ValueError, match=r"^WorldConfig.ood_attributes=\('pet',\): must be in-domain"):
        WorldConfig(attributes=("job",), ood_attributes=("pet",), choice_attributes=("job",))


def test_difficulties_in_unit_interval(world):
    assert all(0.0 <= q.difficulty <= 1.0 for q in world.queries)


def test_tokenizer_texts_cover_every_question_and_answer(world):
    texts = set(world.tokenizer_texts())
    assert all(q.question in texts and q.answer in texts for q in world.queries)
    assert all(v in texts for a in ATTRIBUTES for v in _values(a))


def test_describe_counts(world):
    summary = describe(world, NUM_LEVELS)
    assert summary["entities"] == len(world.entities)
    assert summary["facts"] == len(world.facts)
    assert summary["contested_facts"] == dict(collections.Counter(
        f.contest for f in world.facts if f.contest != CLEAN))
    assert summary["unknowable_facts"] == len(world.unknowable_facts())
    assert summary["facts_per_level"] == [len(world.visible_facts(k, NUM_LEVELS)) for k in range(NUM_LEVELS)]
    assert summary["facts_per_level"] == sorted(summary["facts_per_level"])
    assert summary["taught_length_per_level"] == [world.taught_length(k, NUM_LEVELS) for k in range(NUM_LEVELS)]
    expected = _expected_counts(world)
    assert summary["queries"] == {f"{s}/{f}": expected[s, f] for s in SPLITS for f in FAMILIES}


def test_default_world_is_modest(default_world):
    summary = describe(default_world, NUM_LEVELS)
    assert 1000 <= summary["facts"] <= 5000
    assert 0 < summary["unknowable_facts"] < summary["facts"] // 4
    assert summary["taught_length_per_level"] == [3, 4, 5, 6, 7]


# ---- checker ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("answer, response, expected", [
    ("sailor", "sailor", True),
    ("sailor", "Sailor", True),
    ("sailor", "  sailor.  ", True),
    ("sailor", "sailor!", True),
    ("sailor", "sailor?!", True),
    ("sailor", "sail or", False),
    ("sailor", "sailors", False),
    ("sailor", "miner or sailor", False),
    ("sailor", "I don't know!", False),
    ("sailor", "", False),
    ("favorite color", "favorite   color", True),
    ("3", "3", True),
    ("3", " 3\n", True),
    ("3", "3.", True),
    ("3", "33", False),
    ("3", "-3", False),
    ("red", "RED", True),
    ("red", "red\tcar", False),
])
def test_checker_table(answer, response, expected):
    query = ToyQuery(id="q", family=KNOWLEDGE, question="?", answer=answer, difficulty=0.0,
                     split=TRAIN, kind="job")
    assert checker(query, response) is expected


def test_checker_accepts_every_query_answer_and_rejects_another_value(world):
    for query in world.queries:
        assert checker(query, query.answer)
        other = "0" if query.family == SKILL else next(
            v for v in _values(query.kind) if v != query.answer)
        assert not checker(query, other)


def test_normalize_answer_collapses_whitespace_and_trailing_punctuation():
    assert normalize_answer("  The   Big\tCity!! ") == "the big city"
    assert normalize_answer("a, b;") == "a, b"
    assert normalize_answer("?!") == ""
