"""Every real sample row through its checker: the gold answer written the way a model would is
correct, another option is wrong, and a refusal is a refusal; and every row's gold answer as the
original file says it, read again with the standard library alone and, for some rows, by hand."""

from __future__ import annotations

import csv
import json

import pytest

from disrouter_jax.tasks import get_task, load_task, normalize_answer

from .conftest import data_dir

CHOICE_SETS = [
    ("arc", "arc", "validation"),
    ("openbookqa", "openbookqa", "test"),
    ("mmlu", "mmlu", "test"),
    ("race", "race", "test"),
    ("cosmosqa", "cosmosqa", "validation"),
    ("hellaswag", "hellaswag", "validation"),
    ("headqa", "headqa", "validation"),
]


def _distinct_gold_text(example) -> bool:
    """The gold option's text can identify it: not empty, not inside another option's text."""
    gold = normalize_answer(example.options[example.gold_index])
    others = [normalize_answer(o) for i, o in enumerate(example.options) if i != example.gold_index]
    return bool(gold) and not any(gold in other for other in others)


@pytest.mark.parametrize("task_name,folder,split", CHOICE_SETS)
def test_choice_rows(task_name, folder, split):
    task = get_task(task_name)
    examples = load_task(task_name, data_dir(folder), split)
    for example in examples:
        wrong = "A" if example.gold != "A" else "B"
        assert task.check(example, f"Answer: {example.gold}").correct, example.id
        assert task.check(example, f"The answer is ({example.gold}).").correct, example.id
        assert not task.check(example, f"Answer: {wrong}").correct, example.id
        assert task.check(example, "I don't know!").refused, example.id
        if _distinct_gold_text(example):
            assert task.check(example, example.options[example.gold_index]).correct, example.id
    assert sum(_distinct_gold_text(e) for e in examples) >= 0.85 * len(examples)  # the text check ran


def test_gsm8k_rows():
    task = get_task("gsm8k")
    for example in load_task("gsm8k", data_dir("gsm8k"), "test"):
        assert task.check(example, f"Let me compute.\nThe answer is {int(example.gold):,}.").correct, example.id
        assert not task.check(example, f"The answer is {int(example.gold) + 1}.").correct, example.id


@pytest.mark.parametrize("task_name,split", [("squad", "validation"), ("drop", "validation")])
def test_span_rows(task_name, split):
    task = get_task(task_name)
    for example in load_task(task_name, data_dir(task_name), split):
        for gold in example.gold:
            assert task.check(example, f"Answer: {gold}").correct, example.id
        assert not task.check(example, "Answer: Xylophone quartet").correct, example.id


# ------------------------------------------- gold answers read again from the original files

# Each reader parses a release format with the standard library only (json, csv) and returns
# {example id: gold} as the task should: the option letter for choice tasks (labels 1-5 counted
# as A-E), the number after "####" for GSM8K, every distinct reference span for SQuAD, and for
# DROP the answer then each validated answer (its number, or its single span).


def _jsonl_rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _letter(labels, key):
    return "ABCDE"[list(labels).index(key)]


def _arc_like(files):
    return {r["id"]: _letter([c["label"] for c in r["question"]["choices"]], r["answerKey"])
            for f in files for r in _jsonl_rows(f)}


def _raw_gsm8k(root):
    rows = _jsonl_rows(root / "gsm8k" / "test.jsonl")
    return {f"test-{i}": r["answer"].split("####")[-1].strip().replace(",", "") for i, r in enumerate(rows)}


def _raw_mmlu(root, split):
    folder = {"test": "test", "validation": "val"}[split]
    out = {}
    for path in sorted((root / "mmlu" / "data" / folder).glob("*.csv")):
        with open(path, newline="", encoding="utf-8") as f:
            for i, row in enumerate(csv.reader(f)):
                out[f"{path.stem}-{i}"] = row[5]
    return out


def _raw_race(root, split):
    folder = {"test": "test", "validation": "dev"}[split]
    out = {}
    for path in sorted((root / "race" / "RACE" / folder).rglob("*.txt")):
        row = json.loads(path.read_text(encoding="utf-8"))
        stem = path.relative_to(root / "race" / "RACE").with_suffix("").as_posix()
        for i, answer in enumerate(row["answers"]):
            out[f"{stem}-{i}"] = answer
    return out


def _raw_cosmosqa(root):
    with open(root / "cosmosqa" / "valid.head200.csv", newline="", encoding="utf-8") as f:
        return {r["id"]: "ABCD"[int(r["label"])] for r in csv.DictReader(f)}


def _raw_hellaswag(root):
    return {str(r["ind"]): "ABCD"[int(r["label"])] for r in _jsonl_rows(root / "hellaswag" / "hellaswag_val.sample200.jsonl")}


def _raw_headqa(root):
    exams = json.loads((root / "headqa" / "dev_HEAD_EN.json").read_text(encoding="utf-8"))["exams"]
    return {f"{name}-{r['qid']}": _letter([a["aid"] for a in r["answers"]], int(r["ra"]))
            for name, exam in exams.items() for r in exam["data"] if not r["image"]}  # image rows: skipped


def _raw_squad(root):
    data = json.loads((root / "squad" / "dev-v1.1.sample.json").read_text(encoding="utf-8"))["data"]
    return {qa["id"]: tuple(dict.fromkeys(a["text"] for a in qa["answers"]))
            for article in data for p in article["paragraphs"] for qa in p["qas"]}


def _raw_drop(root):
    out = {}
    for passage in json.loads((root / "drop" / "drop_dataset_dev.nfl_1184.json").read_text(encoding="utf-8")).values():
        for qa in passage["qa_pairs"]:
            golds = []
            for answer in [qa["answer"], *qa.get("validated_answers", [])]:
                assert len(answer["spans"]) <= 1 and not any(answer["date"].values()), qa["query_id"]  # none here
                golds.append(answer["number"] or answer["spans"][0])
            out[qa["query_id"]] = tuple(dict.fromkeys(golds))
    return out


RAW_READERS = [
    ("gsm8k", "gsm8k", "test", _raw_gsm8k),
    ("arc", "arc", "validation", lambda r: _arc_like(sorted((r / "arc").glob("ARC-*-Dev.jsonl")))),
    ("openbookqa", "openbookqa", "test", lambda r: _arc_like([r / "openbookqa" / "test.jsonl"])),
    ("mmlu", "mmlu", "test", lambda r: _raw_mmlu(r, "test")),
    ("mmlu", "mmlu", "validation", lambda r: _raw_mmlu(r, "validation")),
    ("race", "race", "test", lambda r: _raw_race(r, "test")),
    ("race", "race", "validation", lambda r: _raw_race(r, "validation")),
    ("cosmosqa", "cosmosqa", "validation", _raw_cosmosqa),
    ("hellaswag", "hellaswag", "validation", _raw_hellaswag),
    ("headqa", "headqa", "validation", _raw_headqa),
    ("squad", "squad", "validation", _raw_squad),
    ("drop", "drop", "validation", _raw_drop),
]


@pytest.mark.parametrize("task_name,folder,split,reader", RAW_READERS, ids=[f"{r[0]}-{r[2]}" for r in RAW_READERS])
def test_every_rows_gold_is_what_the_original_file_says(shared_data, task_name, folder, split, reader):
    examples = load_task(task_name, data_dir(folder), split)
    raw = reader(shared_data)
    assert sorted(e.id for e in examples) == sorted(raw)  # every row, none invented or lost
    for example in examples:
        assert example.gold == raw[example.id], example.id


# Written out by hand from the original rows (the last row of most files, and a few oddities).
HAND_GOLD = [
    ("gsm8k", "gsm8k", "test", "test-1318", "14"),  # "... 56/4=<<56/4=14>>14 slices.\n#### 14"
    ("gsm8k", "gsm8k", "test", "test-1", "3"),  # "#### 3"
    ("arc", "arc", "validation", "Mercury_7193078", "C"),  # "the formation of acid rain"
    ("arc", "arc", "validation", "NYSEDREGENTS_2014_8_20", "B"),  # answerKey "2" of labels 1-4
    ("openbookqa", "openbookqa", "test", "7-7", "C"),  # "heat"
    ("mmlu", "mmlu", "test", "abstract_algebra_test-99", "C"),  # "True, False"
    ("race", "race", "test", "test/middle/1-0", "C"),
    ("race", "race", "test", "test/middle/1-1", "D"),
    ("race", "race", "test", "test/middle/1-3", "A"),
    ("cosmosqa", "cosmosqa", "validation",
     "3R15W654VF7MWJWT9J3KNVFRR5MQLE##3WEV0KO0OP7IY7L8E803O2ICR97DS6##A394JO4NEPCY3M##Blog_1516691##q1_a1##"
     "37J05LC5AZXMCK4O1CLN7HV04FMDJG", "A"),  # label 0: "They do not have the patience to sweat it all out"
    ("hellaswag", "hellaswag", "validation", "2763", "A"),  # label 0
    ("hellaswag", "hellaswag", "validation", "670", "C"),  # label 2
    ("headqa", "headqa", "validation", "Cuaderno_2015_1_Q-235", "B"),  # ra 2 of aids 1-4
    ("headqa", "headqa", "validation", "Cuaderno_2015_1_B-2", "A"),  # ra 1: "Sodium decreases."
    ("squad", "squad", "validation", "56d99179dc89441400fdb570", ("John Fox",)),  # three times "John Fox"
    ("drop", "drop", "validation", "05d06269-191b-4638-97ca-e1304e7883d1", ("Russell", "JaMarcus Russell", "29")),
    ("drop", "drop", "validation", "ac6ba235-3024-4f63-a6ab-730a14def4cb", ("3", "2")),  # answer 3, validated 2 and 3
]


@pytest.mark.parametrize("task_name,folder,split,example_id,gold", HAND_GOLD, ids=[r[3][:40] for r in HAND_GOLD])
def test_hand_read_gold(task_name, folder, split, example_id, gold):
    examples = {e.id: e for e in load_task(task_name, data_dir(folder), split)}
    assert examples[example_id].gold == gold
