"""Stage 1, labelling: p(x) = k / N from the agent's own samples, written chunk by chunk and
resumed at the first missing chunk, with the same records as an uninterrupted run."""

import json

import pytest

from disrouter_jax.agents import AgentSpec, load_agent
from disrouter_jax.selfaware import labeling
from disrouter_jax.selfaware.data import read_labels_jsonl
from disrouter_jax.selfaware.labeling import LabelConfig, run_labelling
from disrouter_jax.tasks.prompts import REFUSAL
from tests.cascade import scripted_agents as sa

# (level, gold): ladder agent 0 answers "7" to the plain prompt of every level but Lthree,
# which it refuses (tests/cascade/scripted_agents.py).
QUERIES = [(0, "7"), (1, "7"), (2, "42"), (3, "7"), (0, "42")]
# A temperature this low samples the scripted argmax (its margin is ~8 nats): known replies.
NEAR_GREEDY = LabelConfig(num_samples=4, temperature=1e-3, max_new_tokens=6, batch_size=4, chunk_size=2, seed=0)
SAMPLED = LabelConfig(num_samples=4, temperature=1.0, max_new_tokens=6, batch_size=4, chunk_size=2, seed=3)


@pytest.fixture(scope="module")
def agent(scripted_ladder):
    return load_agent(AgentSpec("agent0", str(scripted_ladder[0]), 0.1), dtype="float32")


@pytest.fixture(scope="module")
def examples():
    return sa.make_queries(QUERIES)


def test_p_correct_counts_the_agents_own_correct_samples(agent, examples, tmp_path):
    records = run_labelling(agent, examples, tmp_path, NEAR_GREEDY)
    # Every sample is the scripted reply: "7" (right where the gold is 7), the refusal on Lthree.
    assert [(r.query_id, r.p_correct, r.correct_response, r.meta["refusals"]) for r in records] == [
        ("q0", 1.0, "7", 0), ("q1", 1.0, "7", 0), ("q2", 0.0, None, 0), ("q3", 0.0, None, 4), ("q4", 0.0, None, 0)]
    assert all(r.num_samples == 4 and r.agent == "agent0" and r.task == sa.TASK_NAME for r in records)
    assert [r.prompt_question for r in records] == [f"Question: q{i} {sa.LEVELS[lv]}" for i, (lv, _) in enumerate(QUERIES)]
    assert [r.gold for r in records] == [g for _, g in QUERIES]
    assert REFUSAL not in {r.correct_response for r in records}


class Interrupted(RuntimeError):
    pass


def test_an_interrupted_run_resumes_at_the_first_missing_chunk_with_the_same_records(
        agent, examples, tmp_path, monkeypatch):
    reference = run_labelling(agent, examples, tmp_path / "whole", SAMPLED)
    assert not list((tmp_path / "whole").glob("labels.part*"))  # merged, then removed
    assert 0 < sum(r.p_correct for r in reference) < len(reference)  # real sampling, not all alike

    own = labeling.label_examples
    calls = []
    crash_at = [2]  # the call that crashes (once)

    def crash_on_second_chunk(agent_, chunk, cfg, *, seed_offset=0, progress=None):
        calls.append([e.id for e in chunk])
        if len(calls) == crash_at[0]:
            crash_at[0] = 0
            raise Interrupted
        return own(agent_, chunk, cfg, seed_offset=seed_offset, progress=progress)

    monkeypatch.setattr(labeling, "label_examples", crash_on_second_chunk)
    out = tmp_path / "resumed"
    with pytest.raises(Interrupted):
        run_labelling(agent, examples, out, SAMPLED)
    assert sorted(p.name for p in out.iterdir()) == ["labels.part00000.jsonl"]

    calls.clear()
    resumed = run_labelling(agent, examples, out, SAMPLED)
    assert calls == [["q2", "q3"], ["q4"]]  # chunk 0 was reused, not sampled again
    assert resumed == reference
    assert (out / labeling.LABELS_FILE).read_bytes() == (tmp_path / "whole" / labeling.LABELS_FILE).read_bytes()
    assert sorted(p.name for p in out.iterdir()) == [labeling.LABELS_FILE]

    # A finished file is reused as it is: nothing is sampled.
    calls.clear()
    assert run_labelling(agent, examples, out, SAMPLED) == reference and calls == []


def test_files_of_another_run_are_refused_not_mixed_in(agent, examples, tmp_path):
    run_labelling(agent, examples[:2], tmp_path / "short", NEAR_GREEDY)
    with pytest.raises(ValueError, match=r"labels\.jsonl: holds 2 labels but this run has 5"):
        run_labelling(agent, examples, tmp_path / "short", NEAR_GREEDY)

    out = tmp_path / "other_chunk"
    out.mkdir()
    part = out / "labels.part00000.jsonl"
    (tmp_path / "short" / labeling.LABELS_FILE).rename(part)  # labels of q0, q1 ...
    line = json.loads(part.read_text().splitlines()[0])
    part.write_text(json.dumps({**line, "query_id": "q9"}) + "\n")  # ... now of another query
    with pytest.raises(ValueError, match=r"labels\.part00000\.jsonl: labels for other queries"):
        run_labelling(agent, examples, out, NEAR_GREEDY)
    assert [r.query_id for r in read_labels_jsonl(part)] == ["q9"]  # left as it was


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_samples=0), "label.num_samples=0"),
    (dict(temperature=0.0), "label.temperature=0.0"),
    (dict(chunk_size=0), "label.chunk_size=0"),
])
def test_bad_label_config_names_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LabelConfig(**kwargs)
