"""A served stage generates what the offline engine generates, whatever shares its batch."""

import pytest

from disrouter_jax.cascade import engine
from disrouter_jax.cascade.serving.stage import AgentStage, StageRow, stage_messages
from disrouter_jax.tasks.prompts import build_messages
from tests.cascade import scripted_agents as sa

NEW = 12


@pytest.fixture(scope="module")
def examples():
    return sa.make_queries([(0, "7"), (1, "42"), (2, "42"), (3, "42"), (1, "1")])


def rows(stage, examples, alpha, **kw):
    task = sa.scripted_task()
    return [StageRow(tuple(stage.prompt_ids(task.messages(e, None), alpha)), kw.pop("max_new_tokens", NEW), **kw)
            for e in examples]


def test_stage_messages_are_the_offline_prompts():
    user = [{"role": "user", "content": "Question: 2 + 2?"}]
    for alpha in (0.2, 0.5, 0.8):
        assert stage_messages(user, alpha) == build_messages("Question: 2 + 2?", alpha=alpha, task_format_instruction="")
    assert stage_messages(user, None) == user
    # A client's own system message follows the scenario instruction in the one system message.
    merged = stage_messages([{"role": "system", "content": "Be brief."}] + user, 0.5)
    assert merged[0]["content"].endswith("\n\nBe brief.") and merged[1:] == user


def test_greedy_replies_equal_the_offline_engine_alone_or_in_any_batch(ladder_agents, examples):
    config = engine.EngineConfig(max_new_tokens=NEW, max_batch_size=8)
    queries = [engine.Query(e) for e in examples]
    for k, agent in enumerate(ladder_agents):
        last = k == len(ladder_agents) - 1
        stage = AgentStage(agent, last=last, max_batch_size=8)
        offline = engine.agent_replies(agent, queries, None if last else 0.5, config)
        batch = rows(stage, examples, 0.5)
        together = stage.run(batch)
        # Alone, and among other rows (sampled ones too, in their own call).
        alone = [stage.run([row])[0] for row in batch]
        mixed = stage.run(batch[::-1] + [StageRow(batch[0].prompt_ids, 5, temperature=1.0, key_id=3)] * 3)[:5][::-1]
        for reply, other, another, want in zip(together, alone, mixed, offline):
            assert reply == other == another
            assert (reply.text, reply.refused, reply.finish_reason, reply.num_generated) == (
                want.response, want.refused, want.finish_reason, want.num_tokens)


def test_a_row_cut_at_its_own_max_tokens_equals_running_it_with_that_budget(ladder_agents, examples):
    stage = AgentStage(ladder_agents[0], last=False, max_batch_size=8)
    long_rows = rows(stage, examples, 0.2)
    short = [StageRow(r.prompt_ids, 3) for r in long_rows]
    mixed = stage.run([short[3], long_rows[0], short[1]])
    assert mixed[0] == stage.run([short[3]])[0]
    assert mixed[0].text == "I don't" and not mixed[0].refused and mixed[0].finish_reason == "length"
    assert mixed[1] == stage.run([long_rows[0]])[0]


def test_text_deltas_join_to_the_content(ladder_agents, examples):
    stage = AgentStage(ladder_agents[0], last=False, max_batch_size=8)
    reply = stage.run(rows(stage, examples[3:4], 0.5))[0]
    assert stage.text_deltas(reply.tokens, reply.text) == ["I", " don", "'t", " know", "!"]
    assert "".join(stage.text_deltas(reply.tokens, "I don")) == "I don"


def test_a_listened_row_hears_its_tokens_once_they_cannot_be_a_refusal(ladder_agents, examples):
    stage = AgentStage(ladder_agents[1], last=False, max_batch_size=8)  # answers levels 0-1, refuses 2-3
    batch = rows(stage, examples, 0.5) + [StageRow(rows(stage, examples[3:4], 0.2)[0].prompt_ids, 3)]
    heard = [[] for _ in batch]
    replies = stage.run(batch, [h.extend for h in heard])
    assert replies == stage.run(batch)  # listening changes no reply
    assert [r.refused for r in replies] == [False, False, True, True, False, False]
    for reply, got in zip(replies[:5], heard):
        assert got == ([] if reply.refused else list(reply.tokens))  # the stop token never
    # "I don't", cut at 3 tokens, answers, but could have become the refusal until its end: it is
    # never heard (the server then sends it when the request finishes).
    assert (replies[5].text, heard[5]) == ("I don't", [])
    # The last agent always answers: its forced refusal is heard token by token.
    last = AgentStage(ladder_agents[-1], last=True, max_batch_size=8)
    calls = []
    reply = last.run(rows(last, examples[3:4], None), [calls.append])[0]
    assert reply.refused and [t for call in calls for t in call] == list(reply.tokens) and len(calls) == 5
