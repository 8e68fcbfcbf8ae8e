"""Task mechanics shared by every dataset: registry, file discovery, parquet, Example JSONL tasks."""

from __future__ import annotations

import dataclasses
import json

import pytest

from disrouter_jax.tasks import (
    IN_DOMAIN,
    OUT_OF_DOMAIN,
    PAPER_TASKS,
    TASKS,
    BadRow,
    Example,
    example_jsonl_task,
    get_task,
    load_task,
    question_text,
    register_task,
    write_examples_jsonl,
)
from disrouter_jax.tasks import registry


@pytest.fixture
def clean_registry():
    saved = dict(TASKS)
    yield
    TASKS.clear()
    TASKS.update(saved)


def test_the_papers_ten_datasets_are_registered_with_their_domains():
    assert len(PAPER_TASKS) == 10
    assert set(PAPER_TASKS) <= set(TASKS) and {"arc_easy", "arc_challenge"} <= set(TASKS)
    assert all(get_task(n).domain == "in" for n in IN_DOMAIN)
    assert all(get_task(n).domain == "out" for n in OUT_OF_DOMAIN)
    assert all(get_task(n).hf_id for n in PAPER_TASKS)
    answer_types = {n: get_task(n).answer_type for n in PAPER_TASKS}
    assert answer_types["gsm8k"] == "number" and answer_types["drop"] == answer_types["squad"] == "span"
    assert {t for n, t in answer_types.items() if n not in ("gsm8k", "drop", "squad")} == {"choice"}


def test_unknown_task_names_the_registered_ones():
    with pytest.raises(KeyError, match="unknown task 'gsm9k'.*gsm8k"):
        get_task("gsm9k")


def test_register_task_refuses_silent_replacement(clean_registry):
    toy = example_jsonl_task("toy_facts", domain="in", answer_type="span", f1_threshold=1.0)
    assert register_task(toy) is toy and get_task("toy_facts") is toy
    register_task(toy)  # the same object again: fine
    with pytest.raises(ValueError, match="already registered"):
        register_task(dataclasses.replace(toy, f1_threshold=0.5))
    register_task(dataclasses.replace(toy, f1_threshold=0.5), replace=True)
    assert get_task("toy_facts").f1_threshold == 0.5
    with pytest.raises(TypeError):
        register_task("toy_facts")


def test_example_jsonl_task_round_trip(tmp_path, clean_registry):
    """The route the toy world takes: write Example JSONL, register a task, load and check."""
    register_task(example_jsonl_task("toy_add", domain="in", answer_type="number", format_instruction=""))
    examples = [
        Example(task="toy_add", id=str(i), question=f"{i} + {i} =", gold=str(2 * i), answer_type="number") for i in range(3)
    ]
    assert write_examples_jsonl(tmp_path / "test.jsonl", examples) == 3
    with open(tmp_path / "test.jsonl", "a") as f:
        f.write(json.dumps({"task": "other", "id": "9", "question": "q", "gold": "1", "answer_type": "number"}) + "\n")
        f.write(json.dumps({"id": "10", "question": "q", "answer_type": "number"}) + "\n")
    result = get_task("toy_add").read_local(tmp_path, "test")
    assert result.examples == examples
    assert result.skipped == {"wrong task": 1, "missing field": 1}
    task = get_task("toy_add")
    assert task.messages(examples[2], alpha=None) == [{"role": "user", "content": "Question: 2 + 2 ="}]
    assert task.check(examples[2], "4").correct and task.check(examples[2], "I don't know!").refused


def test_example_dict_round_trip_for_every_answer_type():
    rows = [
        Example(task="t", id="1", question="q", gold="3", answer_type="number"),
        Example(task="t", id="2", question="q", options=("a", "b"), gold="B", answer_type="choice"),
        Example(task="t", id="3", question="q", passage="p", gold=("x", "y"), answer_type="span"),
    ]
    for example in rows:
        assert Example.from_dict(json.loads(json.dumps(example.to_dict()))) == example


def test_example_validates_its_gold():
    with pytest.raises(ValueError, match="not a letter of its 2 options"):
        Example(task="t", id="1", question="q", options=("a", "b"), gold="C", answer_type="choice")
    with pytest.raises(ValueError, match="span gold"):
        Example(task="t", id="1", question="q", gold=("",), answer_type="span")
    with pytest.raises(ValueError, match="answer_type"):
        Example(task="t", id="1", question="q", gold="1", answer_type="boolean")
    with pytest.raises(BadRow, match="missing field"):
        Example.from_dict({"task": "t", "id": "1", "question": "q", "answer_type": "number"})


def test_question_text_layout():
    example = Example(task="t", id="1", question="Which?", options=("x", "y", "z"), passage="Some text.", gold="C", answer_type="choice")
    assert question_text(example) == "Passage:\nSome text.\n\nQuestion: Which?\n\nOptions:\nA. x\nB. y\nC. z"
    plain = Example(task="t", id="1", question="1+1?", gold="2", answer_type="number")
    assert question_text(plain) == "Question: 1+1?"


def test_local_file_discovery_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        load_task("gsm8k", tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match=r"no files for split 'validation'.*local splits: test, train"):
        load_task("gsm8k", tmp_path, "validation")
    with pytest.raises(TypeError, match="only apply to Hub loading"):
        load_task("gsm8k", tmp_path, streaming=True)


def test_whole_file_that_is_not_json_names_the_file(tmp_path):
    path = tmp_path / "dev-v1.1.json"
    path.write_text("{oops")
    with pytest.raises(ValueError, match="dev-v1.1.json: not valid JSON"):
        load_task("squad", path)


def test_duplicate_ids_are_skipped(tmp_path):
    row = {"id": "same", "question": {"stem": "s", "choices": [{"text": t, "label": l} for t, l in zip("wxyz", "ABCD")]}, "answerKey": "A"}
    (tmp_path / "test.jsonl").write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    result = get_task("openbookqa").read_local(tmp_path / "test.jsonl")
    assert len(result.examples) == 1 and result.skipped == {"duplicate id": 1}


def test_hub_parquet_snapshot_loads_offline(tmp_path):
    """A downloaded Hub snapshot (parquet, Hub schema) goes through from_hf_row."""
    datasets = pytest.importorskip("datasets")
    rows = [
        {"id": "a1", "question": "Q1?", "choices": {"text": ["x", "y", "z", "w"], "label": ["A", "B", "C", "D"]}, "answerKey": "C"},
        {"id": "a2", "question": "Q2?", "choices": {"text": ["x", "y", "z", "w"], "label": ["1", "2", "3", "4"]}, "answerKey": "4"},
    ]
    (tmp_path / "ARC-Easy").mkdir()
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "ARC-Easy" / "test-00000-of-00001.parquet"))
    examples = load_task("arc_easy", tmp_path, "test")
    assert [(e.id, e.gold) for e in examples] == [("a1", "C"), ("a2", "D")]
    assert [e.gold for e in load_task("arc_easy", tmp_path / "ARC-Easy" / "test-00000-of-00001.parquet")] == ["C", "D"]


def test_sharded_parquet_rows_are_numbered_across_shards_and_configs_kept_apart(tmp_path):
    datasets = pytest.importorskip("datasets")
    (tmp_path / "main").mkdir()
    for shard in range(2):
        rows = [{"question": f"Q{shard}{i}?", "answer": f"#### {10 * shard + i}"} for i in range(2)]
        datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "main" / f"test-0000{shard}-of-00002.parquet"))
    assert [(e.id, e.gold) for e in load_task("gsm8k", tmp_path, "test")] == [
        ("hub-0", "0"), ("hub-1", "1"), ("hub-2", "10"), ("hub-3", "11")]
    # another config's folder is not mistaken for this task's
    arc_row = {"id": "c1", "question": "Q?", "choices": {"text": ["x", "y", "z"], "label": ["A", "B", "C"]}, "answerKey": "A"}
    for config in ("ARC-Challenge", "ARC-Easy"):
        (tmp_path / config).mkdir()
        datasets.Dataset.from_list([{**arc_row, "id": config}]).to_parquet(str(tmp_path / config / "test-00000-of-00001.parquet"))
    assert [e.id for e in load_task("arc_easy", tmp_path, "test")] == ["ARC-Easy"]
    assert [e.id for e in load_task("arc", tmp_path, "test")] == ["ARC-Challenge", "ARC-Easy"]


def test_load_hf_reads_every_config_of_the_split(monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split, kwargs))
        row = {"id": name, "question": "Q?", "choices": {"text": ["x", "y", "z"], "label": ["A", "B", "C"]}, "answerKey": "B"}
        return datasets.Dataset.from_list([row])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    examples = load_task("arc", split="validation", cache_dir="/tmp/cache")
    assert [(e.id, e.gold) for e in examples] == [("ARC-Challenge", "B"), ("ARC-Easy", "B")]
    assert calls == [("allenai/ai2_arc", c, "validation", {"cache_dir": "/tmp/cache"}) for c in ("ARC-Challenge", "ARC-Easy")]
    calls.clear()
    monkeypatch.setattr(datasets, "load_dataset", lambda path, name=None, split=None: calls.append((path, name, split)) or [])
    assert load_task("drop") == [] and calls == [("ucinlp/drop", None, "validation")]


def test_check_rejects_an_example_of_another_answer_type():
    number_example = Example(task="t", id="1", question="q", gold="1", answer_type="number")
    with pytest.raises(ValueError, match="answer_type"):
        get_task("squad").check(number_example, "1")


def test_task_settings_are_validated():
    with pytest.raises(ValueError, match="domain"):
        example_jsonl_task("x", domain="inside", answer_type="number")
    with pytest.raises(ValueError, match="f1_threshold"):
        example_jsonl_task("x", domain="in", answer_type="span", f1_threshold=1.5)


def test_registry_module_exports_match_package():
    assert registry.TASKS is TASKS
