"""Train / eval / out-of-domain mixtures: caps, hold-outs, determinism."""

from __future__ import annotations

import pytest

from disrouter_jax.tasks import Example, build_mixture, load_mixture

from .conftest import data_dir


def _examples(task, n):
    return [Example(task=task, id=str(i), question=f"{task} {i}", gold=str(i), answer_type="number") for i in range(n)]


POOL = {"a": _examples("a", 50), "b": _examples("b", 30), "c": _examples("c", 20)}


def test_caps_and_holdout():
    mix = build_mixture(POOL, seed=0, eval_per_task=5, train_per_task={"a": 10}, ood_per_task=8, holdout_tasks=("c",))
    assert mix.counts() == {"train": {"a": 10, "b": 25}, "eval": {"a": 5, "b": 5}, "ood": {"c": 8}}
    train_keys, eval_keys = {e.key for e in mix.train}, {e.key for e in mix.eval}
    assert not train_keys & eval_keys
    assert all(e.task != "c" for e in mix.train + mix.eval)


def test_same_seed_same_mixture_other_seed_differs():
    first = build_mixture(POOL, seed=3, eval_per_task=5)
    assert first == build_mixture(POOL, seed=3, eval_per_task=5)
    other = build_mixture(POOL, seed=4, eval_per_task=5)
    assert [e.key for e in other.eval] != [e.key for e in first.eval]
    assert sorted(e.key for e in other.train + other.eval) == sorted(e.key for e in first.train + first.eval)


def test_train_is_shuffled_across_tasks_and_eval_keeps_task_order():
    mix = build_mixture(POOL, seed=0, eval_per_task=3)
    tasks_in_train = [e.task for e in mix.train]
    assert tasks_in_train != sorted(tasks_in_train)
    assert [e.task for e in mix.eval] == ["a"] * 3 + ["b"] * 3 + ["c"] * 3


def test_a_tasks_split_does_not_depend_on_the_other_tasks():
    with_all = build_mixture(POOL, seed=7, eval_per_task=5)
    alone = build_mixture({"b": POOL["b"]}, seed=7, eval_per_task=5)
    assert [e for e in with_all.eval if e.task == "b"] == list(alone.eval)


def test_small_task_gives_what_it_has():
    mix = build_mixture({"a": _examples("a", 4)}, seed=0, eval_per_task=10, train_per_task=10)
    assert len(mix.eval) == 4 and mix.train == ()


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"holdout_tasks": ("zzz",)}, "holdout_tasks"),
        ({"eval_per_task": -1}, "eval_per_task"),
        ({"train_per_task": {"a": 1.5}}, "train_per_task"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_mixture(POOL, seed=0, **kwargs)


def test_duplicated_or_misfiled_examples_are_rejected():
    with pytest.raises(ValueError, match="duplicated example ids"):
        build_mixture({"a": _examples("a", 3) * 2}, seed=0)
    with pytest.raises(ValueError, match="filed under task 'b'"):
        build_mixture({"b": _examples("a", 3)}, seed=0)


def test_load_mixture_over_real_samples():
    paths = {"gsm8k": data_dir("gsm8k"), "openbookqa": data_dir("openbookqa"), "squad": data_dir("squad")}
    mix = load_mixture(["gsm8k", "openbookqa", "squad"], seed=1, paths=paths, eval_per_task=20, train_per_task=50,
                       ood_per_task=30, holdout_tasks=("squad",))
    assert mix.counts() == {"train": {"gsm8k": 50, "openbookqa": 50}, "eval": {"gsm8k": 20, "openbookqa": 20}, "ood": {"squad": 30}}
