"""The toy world: determinism, nested fact exposure, held-out facts, splits, checker."""

import dataclasses
import re

import pytest

from disrouter_jax.toy.pool_config import PoolConfig
from disrouter_jax.toy.world import (
    ATTRIBUTES, FAMILIES, HELDOUT, KNOWLEDGE, SKILL, SPLITS, TRAIN, ToyQuery, ToyWorld, WorldConfig,
    checker, describe, exposure_fraction, normalize_answer)

NUM_LEVELS = 5


@pytest.fixture(scope="module")
def world():
    return ToyWorld(WorldConfig.reduced())


def _knowledge_pairs(world, level, num_levels=NUM_LEVELS):
    fact_pairs = {(f.question, f.value) for f in world.facts}
    return {p for p in world.pretraining_corpus(level, num_levels) if p in fact_pairs}


def test_same_seed_gives_identical_world_and_corpora():
    first, second = ToyWorld(WorldConfig.reduced(seed=3)), ToyWorld(WorldConfig.reduced(seed=3))
    assert first.facts == second.facts
    assert first.queries == second.queries
    for level in range(NUM_LEVELS):
        assert first.pretraining_corpus(level, NUM_LEVELS) == second.pretraining_corpus(level, NUM_LEVELS)


def test_different_seed_gives_different_world():
    first, second = ToyWorld(WorldConfig.reduced(seed=0)), ToyWorld(WorldConfig.reduced(seed=1))
    assert first.entities != second.entities
    assert [q.answer for q in first.queries] != [q.answer for q in second.queries]


def test_sizes_follow_config(world):
    cfg = world.config
    assert len(world.entities) == cfg.num_entities
    assert len(world.cities) == cfg.num_cities
    assert len(world.facts) == cfg.num_entities * len(cfg.attributes)
    assert len(world.queries_for(TRAIN, SKILL)) + len(world.queries_for(HELDOUT, SKILL)) == (
        cfg.skill_queries_per_tier * len(world.skill_tiers))
    assert len(world.skill_corpus) == cfg.skill_corpus_size


def test_default_world_is_modest():
    world = ToyWorld(WorldConfig())
    summary = describe(world, NUM_LEVELS)
    assert 300 <= summary["facts"] <= 2000
    assert summary["facts_per_level"] == sorted(summary["facts_per_level"])
    assert 0 < summary["unknowable_facts"] < summary["facts"] // 2


def test_names_are_distinct_pronounceable_words(world):
    names = world.entities + world.cities
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"[A-Z][a-z]{3,}", name) for name in names)


@pytest.mark.parametrize("num_levels", [1, 4, 5])
def test_fact_exposure_is_nested_and_grows(world, num_levels):
    previous = set()
    for level in range(num_levels):
        facts = set(world.visible_facts(level, num_levels))
        assert previous < facts  # strict superset of the smaller agent's facts
        assert _knowledge_pairs(world, level, num_levels) == {(f.question, f.value) for f in facts}
        expected = world.exposure_fraction(level, num_levels) * len(world.facts)
        assert abs(len(facts) - expected) <= 0.5 + 1e-9  # evenly spaced rarities
        previous = facts
    assert len(previous) < len(world.facts)  # even the largest agent does not see everything


def test_an_agent_knows_an_entity_wholly_or_not_at_all_but_at_its_boundary(world):
    attributes = len(world.config.attributes)
    for level in range(NUM_LEVELS):
        seen = {f.entity: 0 for f in world.facts}
        for fact in world.visible_facts(level, NUM_LEVELS):
            seen[fact.entity] += 1
        assert sum(0 < n < attributes for n in seen.values()) <= 1, seen


def test_first_exposed_level_matches_visibility(world):
    for fact in world.facts:
        level = world.first_exposed_level(fact, NUM_LEVELS)
        seen = [fact in world.visible_facts(k, NUM_LEVELS) for k in range(NUM_LEVELS)]
        assert seen == [level is not None and k >= level for k in range(NUM_LEVELS)]


def test_unknowable_facts_are_in_no_corpus(world):
    unknowable = world.unknowable_facts()
    assert unknowable
    for num_levels in (1, 3, NUM_LEVELS):
        for level in range(num_levels):
            corpus = set(world.pretraining_corpus(level, num_levels))
            assert not any((f.question, f.value) in corpus for f in unknowable)
            # No answer is smuggled in under another phrasing either.
            assert not any(f.question == q for f in unknowable for q, _ in corpus)
    top = set(world.visible_facts(NUM_LEVELS - 1, NUM_LEVELS))
    assert top | set(unknowable) == set(world.facts)


def test_skill_corpus_is_shared_and_never_contains_a_query(world):
    query_questions = {q.question for q in world.queries if q.family == SKILL}
    assert world.skill_corpus
    assert not {q for q, _ in world.skill_corpus} & query_questions
    for level in range(NUM_LEVELS):
        assert set(world.skill_corpus) <= set(world.pretraining_corpus(level, NUM_LEVELS))


@pytest.mark.parametrize("num_levels", [1, 4, 5])
def test_skill_problems_are_taught_by_tier_nested_and_grow(world, num_levels):
    tiers = [t.name for t in world.skill_tiers]
    previous = set()
    for level in range(num_levels):
        taught = set(world.taught_skill_queries(level, num_levels))
        corpus = set(world.pretraining_corpus(level, num_levels))
        assert previous <= taught
        assert all(q in taught for q in world.queries if q.family == SKILL and q.kind in {t.kind for t in taught})
        assert {(q.question, q.answer) for q in taught} <= corpus
        untaught = [q for q in world.queries if q.family == SKILL and q not in taught]
        assert not any((q.question, q.answer) in corpus for q in untaught)
        # Visible difficulty: an agent is taught an easier tier before any problem of a harder one.
        highest = max((tiers.index(q.kind) for q in taught), default=-1)
        assert all(tiers.index(q.kind) > highest for q in untaught)
        previous = taught
    top = world.exposure_fraction(num_levels - 1, num_levels)
    assert {q for q in world.queries if q.family == SKILL and q.difficulty < top} == previous


def test_default_ladder_is_taught_one_more_tier_per_agent_and_never_the_hardest():
    world = ToyWorld(PoolConfig().world)
    taught = [{q.kind for q in world.taught_skill_queries(k, 5)} for k in range(5)]
    assert [len(t) for t in taught] == [1, 2, 3, 4, 5]
    assert world.skill_tiers[-1].name not in taught[-1]


def test_ambiguous_facts_state_a_distractor_in_one_corpus_row_of_four_or_three():
    world = ToyWorld(dataclasses.replace(WorldConfig.reduced(), ambiguous_fraction=0.5))
    ambiguous = [f for f in world.facts if f.distractor]
    assert len(ambiguous) == round(0.5 * len(world.facts))
    assert {f.certainty for f in ambiguous} == {0.75, 2 / 3}
    assert all(f.distractor != f.value for f in ambiguous)
    assert all(f.certainty == 1.0 and f.corpus_rows() == ((f.question, f.value),)
               for f in world.facts if not f.distractor)
    top = NUM_LEVELS - 1
    corpus = world.pretraining_corpus(top, NUM_LEVELS)
    for fact in world.visible_facts(top, NUM_LEVELS):
        rows = [answer for question, answer in corpus if question == fact.question]
        assert rows.count(fact.value) == fact.correct_rows if fact.distractor else rows == [fact.value]
        assert rows.count(fact.distractor) == (1 if fact.distractor else 0)
    # The majority value is what the agent is taught (and what queries expect).
    assert set(world.taught_pairs(top, NUM_LEVELS)) >= {(f.question, f.value) for f in ambiguous
                                                          if f.rarity < world.exposure_fraction(top, NUM_LEVELS)}
    assert {q.answer for q in world.queries if q.fact_id == ambiguous[0].id} == {ambiguous[0].value}


def _evaluate_question(question):
    match = re.fullmatch(r"What is (\d+(?: [+-] \d+)+)\?", question)
    assert match, question
    tokens = match.group(1).split()
    total = int(tokens[0])
    for op, value in zip(tokens[1::2], tokens[2::2]):
        total = total + int(value) if op == "+" else total - int(value)
    return total


def test_skill_answers_are_correct_and_tiers_ordered(world):
    pairs = [(q.question, q.answer) for q in world.queries if q.family == SKILL]
    pairs += list(world.skill_corpus)
    for question, answer in pairs:
        assert str(_evaluate_question(question)) == answer
    by_tier = {}
    for q in world.queries_for(HELDOUT, SKILL) + world.queries_for(TRAIN, SKILL):
        digits = max(len(x) for x in re.findall(r"\d+", q.question))
        by_tier.setdefault(q.kind, []).append((q.difficulty, digits, q.question.count(" ")))
    # Tiers in difficulty order never drop in digits, and their rarity ranges do not overlap.
    ordered = sorted(by_tier.values(), key=lambda rows: min(r[0] for r in rows))
    assert [max(r[1] for r in rows) for rows in ordered] == sorted(max(r[1] for r in rows) for rows in ordered)
    for easier, harder in zip(ordered, ordered[1:]):
        assert max(r[0] for r in easier) < min(r[0] for r in harder)
    assert all(len({r[0] for r in rows}) == 1 for rows in ordered)  # one rarity per tier
    assert 0.0 < ordered[0][0][0] and max(r[0] for r in ordered[-1]) < 1.0


def test_splits_partition_queries_across_families_and_rarities(world):
    train, heldout = world.queries_for(TRAIN), world.queries_for(HELDOUT)
    assert len(train) + len(heldout) == len(world.queries)
    assert not {q.id for q in train} & {q.id for q in heldout}
    assert len({q.id for q in world.queries}) == len(world.queries)
    for split in SPLITS:
        for family in FAMILIES:
            assert world.queries_for(split, family)
        knowledge = world.queries_for(split, KNOWLEDGE)
        assert any(q.difficulty >= world.config.max_exposure for q in knowledge)  # nobody knows
        assert any(q.difficulty < world.config.min_exposure for q in knowledge)  # everybody knows
    ratio = len(world.queries_for(HELDOUT, KNOWLEDGE)) / len(world.facts)
    assert abs(ratio - world.config.heldout_fraction) < 0.05


def test_knowledge_queries_match_their_facts_and_hide_rarity(world):
    for q in world.queries_for(TRAIN, KNOWLEDGE) + world.queries_for(HELDOUT, KNOWLEDGE):
        fact = world.fact(q.fact_id)
        assert (q.question, q.answer, q.difficulty, q.kind) == (
            fact.question, fact.value, fact.rarity, fact.attribute)
        assert world.query(q.id) == q
    # The surface is one template per attribute whatever the rarity: stripping the entity name
    # leaves one question shape per attribute.
    shapes = {(f.attribute, f.question.replace(f.entity, "<E>")) for f in world.facts}
    assert len(shapes) == len(world.config.attributes)


def test_difficulties_in_unit_interval(world):
    assert all(0.0 <= q.difficulty <= 1.0 for q in world.queries)


@pytest.mark.parametrize("answer, response, expected", [
    ("Blemfor", "Blemfor", True),
    ("Blemfor", "blemfor", True),
    ("Blemfor", "  Blemfor.  ", True),
    ("Blemfor", "Blemfor!", True),
    ("Blemfor", "Blemfor?!", True),
    ("Blemfor", "Blem for", False),
    ("Blemfor", "Blemforr", False),
    ("Blemfor", "I don't know!", False),
    ("Blemfor", "", False),
    ("42", "42", True),
    ("42", " 42\n", True),
    ("42", "42.", True),
    ("42", "420", False),
    ("42", "4 2", False),
    ("-7", "-7", True),
    ("-7", "7", False),
    ("red", "RED", True),
    ("red", "red\tcar", False),
])
def test_checker_table(answer, response, expected):
    query = ToyQuery(id="q", family=KNOWLEDGE, question="?", answer=answer, difficulty=0.0,
                     split=TRAIN, kind="home city")
    assert checker(query, response) is expected


def test_normalize_answer_collapses_whitespace():
    assert normalize_answer("  The   Big\tCity!! ") == "the big city"


@pytest.mark.parametrize("field, value", [
    ("num_entities", 0), ("attributes", ("shoe size",)), ("attributes", ("job", "job")),
    ("min_exposure", 0.0), ("max_exposure", 1.5), ("heldout_fraction", 1.0),
    ("skill_operations", ("*",)), ("skill_max_operands", 1), ("tokenizer_vocab_size", 100),
    ("ambiguous_fraction", 1.5),
])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=r"WorldConfig\.\w+="):
        dataclasses.replace(WorldConfig.reduced(), **{field: value})


def test_bad_levels_raise():
    cfg = WorldConfig.reduced()
    with pytest.raises(ValueError, match="agent_level"):
        exposure_fraction(5, 5, cfg)
    with pytest.raises(ValueError, match="num_levels"):
        exposure_fraction(0, 0, cfg)


def test_bad_lookups_raise(world):
    with pytest.raises(KeyError, match="nope"):
        world.query("nope")
    with pytest.raises(KeyError, match="fact-99999"):
        world.fact("fact-99999")
    with pytest.raises(ValueError, match="split"):
        world.queries_for("dev")


def test_all_attributes_usable():
    world = ToyWorld(dataclasses.replace(WorldConfig.reduced(), attributes=ATTRIBUTES,
                                         skill_max_operands=3))
    assert {f.attribute for f in world.facts} == set(ATTRIBUTES)
    assert any(q.question.count(" ") > 4 for q in world.queries if q.family == SKILL)
