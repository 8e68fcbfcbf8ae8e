"""Cascade engine on scripted agents: routing, compaction, early refusal, bounded compilation,
and agreement with the replay of the all-agents outcome table."""

import dataclasses

import jax
import numpy as np
import pytest

from disrouter_jax.agents import AgentSpec, load_agent
from disrouter_jax.cascade import engine, replay
from disrouter_jax.cascade.log import ANSWER, DISROUTER, OUT_OF_DOMAIN, REFUSE
from disrouter_jax.cascade.metrics import COST_CUMULATIVE
from disrouter_jax.generation import TRACE_COUNTS
from disrouter_jax.tasks.prompts import REFUSAL
from tests.cascade import scripted_agents as sa

COSTS = (0.1, 0.5, 0.9)
# (level, gold): agent k answers levels <= k with ANSWERS[k] ("7" for agent 0, else "42").
QUERIES = [(0, "7"), (1, "42"), (2, "42"), (3, "42"), (0, "42"), (2, "5"), (1, "1")]
# Batches of 2 (or 1): few distinct shapes, so few compilations on a busy CPU.
SMALL = dict(max_new_tokens=12, max_batch_size=2)


@pytest.fixture(scope="module")
def ladder(scripted_ladder):
    paths = scripted_ladder
    return [load_agent(AgentSpec(f"agent{k}", str(path), cost)) for k, (path, cost) in enumerate(zip(paths, COSTS))]


def queries(levels_and_golds=QUERIES, domain_of=lambda i: "in_domain"):
    return [engine.Query(example, domain_of(i)) for i, example in enumerate(sa.make_queries(levels_and_golds))]


# ----------------------------------------------------------------------------- early refusal predicate


def test_refusal_early_stop_fires_only_on_the_whole_refusal():
    stop = engine.refusal_early_stop((5, 6, 7))
    assert engine.refusal_early_stop((5, 6, 7)) is stop  # same object: compiled loop reused
    pad = -1
    tokens_bn = np.array([
        [5, 6, 7, pad, pad, pad],  # exactly the refusal
        [5, 6, 8, pad, pad, pad],  # diverged at the last token: an answer
        [9, 6, 7, pad, pad, pad],  # diverged at the first token
        [5, 6, pad, pad, pad, pad],  # strict prefix: undecided
    ], np.int32)
    assert list(jax.jit(stop)(tokens_bn, 3)) == [True, False, False, False]
    assert list(stop(tokens_bn, 2)) == [False, False, False, False]
    # A row still running after the refusal's length has diverged from it.
    assert not np.any(stop(np.array([[5, 6, 7, 1, pad, pad]], np.int32), 4))
    # Refusal longer than the token budget: never fires (and still traces).
    assert not np.any(engine.refusal_early_stop((1, 2, 3, 4))(np.zeros((2, 3), np.int32), 3))


def test_refusal_token_ids_match_the_agent_tokenizer(ladder):
    ids = engine.refusal_token_ids(ladder[0])
    assert ladder[0].decode(ids) == REFUSAL and len(ids) == 5


# ----------------------------------------------------------------------------- routing


def test_cascade_routes_exactly_as_scripted(ladder):
    cascade = engine.Cascade(ladder, engine.EngineConfig(**SMALL))
    qs = queries(domain_of=lambda i: OUT_OF_DOMAIN if i % 2 else "in_domain")
    run = cascade.run(qs, alpha=0.5)
    assert len(run.records) == len(QUERIES)
    for record, query, (level, gold) in zip(run.records, qs, QUERIES):
        decisions = sa.expected_route(level, (0, 1, 2))
        assert [v.decision for v in record.visited] == decisions
        assert [v.agent for v in record.visited] == [f"agent{k}" for k in range(len(decisions))]
        assert (record.query_id, record.dataset, record.domain) == (query.query_id, query.dataset, query.domain)
        assert record.method == DISROUTER and record.alpha == 0.5
        final_level = len(decisions) - 1
        if decisions[-1] == ANSWER:
            assert record.response == sa.ANSWERS[final_level]
            assert record.correct == (gold == sa.ANSWERS[final_level])
            assert not record.forced_refusal
        else:  # the last agent refused the plain prompt: forced refusal, scored wrong
            assert record.forced_refusal and not record.correct
            assert record.response.startswith(REFUSAL)
            assert record.visited[-1].correct is False  # its forced answer is that refusal: wrong
        assert all(v.correct is None for v in record.visited[:-1] if v.decision == REFUSE)
        assert record.cost == COSTS[final_level]
        # Scenario prompts for the forwarding agents, the plain prompt for the last one.
        alphas = [r.alpha for r in run.replies[qs.index(query)]]
        assert alphas == [0.5 if k < 2 else None for k in range(len(decisions))]


def test_refused_queries_are_compacted_into_the_next_batch(ladder, monkeypatch):
    seen = []
    original = engine.agent_replies

    def spy(agent, batch, alpha, config):
        seen.append((agent.name, [q.query_id for q in batch], alpha))
        return original(agent, batch, alpha, config)

    monkeypatch.setattr(engine, "agent_replies", spy)
    engine.Cascade(ladder, engine.EngineConfig(**SMALL)).run(queries(), alpha=0.2)
    ids_by_level = {level: [f"q{i}" for i, (lv, _) in enumerate(QUERIES) if lv in level] for level in
                    ((0, 1, 2, 3), (1, 2, 3), (2, 3))}
    assert seen == [("agent0", ids_by_level[(0, 1, 2, 3)], 0.2), ("agent1", ids_by_level[(1, 2, 3)], 0.2),
                    ("agent2", ids_by_level[(2, 3)], None)]


def test_last_agent_never_forwards_and_pool_order_is_config(ladder):
    # Reordered and shortened pool: the strongest first, the weakest last.
    pool = [ladder[2], ladder[0]]
    run = engine.Cascade(pool, engine.EngineConfig(**SMALL)).run(queries(), alpha=0.8)
    for record, (level, _) in zip(run.records, QUERIES):
        assert [v.decision for v in record.visited] == sa.expected_route(level, (2, 0))
        assert record.visited[-1].agent == record.final_agent
        assert len(record.visited) <= 2
    # A pool of one agent: everything stops there; a refusal there is a forced refusal.
    single = engine.Cascade([ladder[0]], engine.EngineConfig(**SMALL)).run(queries(), alpha=0.5)
    assert all(len(r.visited) == 1 and r.final_agent == "agent0" for r in single.records)
    assert [r.forced_refusal for r in single.records] == [level == 3 for level, _ in QUERIES]


def test_early_refusal_cuts_decode_steps_without_changing_decisions(ladder):
    # The scripted agents keep talking after refusing ("I don't know! blah blah ...").
    refusal_len = len(engine.refusal_token_ids(ladder[0]))
    fast = engine.Cascade(ladder, engine.EngineConfig(**SMALL)).run(queries(), alpha=0.5)
    slow = engine.Cascade(ladder, engine.EngineConfig(**SMALL, early_refusal=False)).run(queries(), alpha=0.5)
    assert [r.to_json() | {"response": None} for r in fast.records] == \
        [r.to_json() | {"response": None} for r in slow.records]
    refusals = [r for per_query in fast.replies for r in per_query if r.refused]
    assert refusals and all(r.finish_reason == "early_stop" and r.num_tokens == refusal_len for r in refusals)
    assert all(r.response == REFUSAL for r in refusals)
    slow_refusals = [r for per_query in slow.replies for r in per_query if r.refused]
    assert all(r.num_tokens == 12 and r.finish_reason == "length" for r in slow_refusals)
    stats = fast.stats(["agent0", "agent1", "agent2"])
    assert stats["agent0"]["tokens_per_refusal"] == refusal_len
    assert stats["agent0"]["reached"] == len(QUERIES)
    assert stats["agent0"]["refused"] == sum(level > 0 for level, _ in QUERIES)


def test_cumulative_cost_mode_charges_every_visited_agent(ladder):
    run = engine.Cascade(ladder, engine.EngineConfig(**SMALL, cost_mode=COST_CUMULATIVE)).run(
        queries(), alpha=0.5)
    for record in run.records:
        assert record.cost == pytest.approx(sum(COSTS[: len(record.visited)]))


def test_engine_rejects_bad_input(ladder):
    with pytest.raises(ValueError, match="distinct"):
        engine.Cascade([ladder[0], ladder[0]])
    with pytest.raises(ValueError, match="duplicate"):
        engine.Cascade(ladder).run(queries()[:1] * 2, alpha=0.5)
    with pytest.raises(ValueError, match="micro_batch_size"):
        engine.EngineConfig(micro_batch_size=-1)
    with pytest.raises(ValueError, match="pipeline"):
        engine.EngineConfig(pipeline="sometimes")


# ----------------------------------------------------------------------------- replay consistency


@pytest.mark.parametrize("forced", [False, True])
def test_engine_equals_replay_of_the_all_agents_table(ladder, forced):
    config = engine.EngineConfig(**SMALL, micro_batch_size=3)
    qs = queries()
    pool = [agent.name for agent in ladder]
    costs = dict(zip(pool, COSTS))
    replies = engine.all_agents_replies(ladder, qs, (0.2, 0.5), config, forced=forced)
    assert set(replies) == ({"plain", "0.2", "0.5"})
    assert set(replies["plain"]) == (set(pool) if forced else {"agent2"})
    for alpha in (0.2, 0.5):
        rows = engine.outcome_rows(qs, alpha, pool, replies[engine.mode_key(alpha)], replies["plain"])
        replayed = replay.replay_cascade(rows, pool, costs, alpha=alpha)
        live = engine.Cascade(ladder, config).run(qs, alpha)
        for got, want in zip(live.records, replayed):
            if forced:  # replay knows each refusal's forced answer; the live cascade only the last agent's
                want = dataclasses.replace(want, visited=tuple(
                    dataclasses.replace(v, correct=None) if v.decision == REFUSE and v.agent != "agent2" else v
                    for v in want.visited))
            assert got == want
        if forced:
            by_agent = {o.agent: o for o in rows[QUERIES.index((3, "42"))].outcomes}
            # agent0 refuses Lthree under a scenario; its forced (plain) reply also refuses: wrong.
            assert by_agent["agent0"].decision == REFUSE and by_agent["agent0"].forced_correct is False
            plain = engine.plain_outcome_rows(qs, alpha, pool, replies["plain"])
            assert [o.decision for o in plain[0].outcomes] == [ANSWER] * 3


# ----------------------------------------------------------------------------- compilation


def test_a_dataset_compiles_a_bounded_number_of_programs(ladder):
    config = engine.EngineConfig(max_new_tokens=12, max_batch_size=4, micro_batch_size=5)
    cascade = engine.Cascade(ladder, config)
    many = [(i % 4, "42") for i in range(13)]
    before = dict(TRACE_COUNTS)
    cascade.run(queries(many), alpha=0.5)
    first = {k: TRACE_COUNTS[k] - before.get(k, 0) for k in ("prefill", "decode")}
    # One program per batch-size bucket (1, 2, 4) and prompt-length bucket (one here), shared by
    # the three agents (same architecture, same placement).
    assert first["prefill"] <= 3 and first["decode"] <= 3
    after_first = dict(TRACE_COUNTS)
    other = [((i * 3) % 4, "7") for i in range(11)]
    cascade.run(queries(other), alpha=0.2)
    cascade.run(queries(many[:6]), alpha=0.8)
    assert {k: TRACE_COUNTS[k] for k in ("prefill", "decode")} == {k: after_first.get(k, 0) for k in ("prefill", "decode")}


# ----------------------------------------------------------------------------- helpers and reply cache


def test_micro_batches_cover_every_query_in_order():
    assert engine.micro_batches(7, 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert engine.micro_batches(5, 0) == [[0, 1, 2, 3, 4]]
    assert engine.micro_batches(0, 3) == []


def test_reply_store_reuses_replies_and_refuses_other_settings(ladder, tmp_path, monkeypatch):
    from disrouter_jax.cascade.reply_store import ReplyStore, StoreMismatch

    config = engine.EngineConfig(**SMALL)
    qs = queries()[:3]
    first = ReplyStore(tmp_path).replies(ladder[0], qs, 0.5, config)
    assert first == engine.agent_replies(ladder[0], qs, 0.5, config)
    monkeypatch.setattr(engine, "agent_replies", lambda *a, **k: pytest.fail("cached replies must be reused"))
    assert ReplyStore(tmp_path).replies(ladder[0], qs, 0.5, config) == first  # read back from disk
    with pytest.raises(StoreMismatch, match="max_new_tokens"):
        ReplyStore(tmp_path).replies(ladder[0], qs, 0.5, engine.EngineConfig(max_new_tokens=13, max_batch_size=2))
