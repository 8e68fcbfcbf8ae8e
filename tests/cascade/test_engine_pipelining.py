"""Stage pipelining helpers: order, real overlap between stages, error propagation."""

import threading

import pytest

from disrouter_jax.cascade.pipelining import StageError, run_parallel, run_stages


@pytest.mark.parametrize("threaded", [False, True])
def test_run_stages_composes_stages_in_input_order(threaded):
    calls = []

    def stage(name, fn):
        def work(x):
            calls.append((name, x))
            return fn(x)
        return work

    outputs = run_stages([stage("a", lambda x: x + 1), stage("b", lambda x: x * 10)], [1, 2, 3], threaded=threaded)
    assert outputs == [20, 30, 40]
    # Each stage sees the inputs in order, whatever the interleaving between stages.
    assert [x for name, x in calls if name == "a"] == [1, 2, 3]
    assert [x for name, x in calls if name == "b"] == [2, 3, 4]


def test_threaded_stages_overlap_on_successive_inputs():
    # Stage 0 may only finish input 1 once stage 1 has started input 0: impossible sequentially.
    stage1_started_0 = threading.Event()

    def first(x):
        if x == 1:
            assert stage1_started_0.wait(timeout=30), "stage 1 never ran while stage 0 was busy"
        return x

    def second(x):
        if x == 0:
            stage1_started_0.set()
        return x

    assert run_stages([first, second], [0, 1, 2], threaded=True) == [0, 1, 2]


def test_a_failing_stage_stops_the_pipeline_and_raises():
    processed = []

    def boom(x):
        if x == 1:
            raise ValueError("bad micro-batch")
        return x

    def record(x):
        processed.append(x)
        return x

    with pytest.raises(StageError, match="stage 1 failed: ValueError: bad micro-batch") as info:
        run_stages([lambda x: x, boom, record], [0, 1, 2, 3], threaded=True)
    assert isinstance(info.value.__cause__, ValueError)
    assert 1 not in processed and 3 not in processed  # nothing after the failure reaches the end
    with pytest.raises(ValueError):
        run_stages([lambda x: x, boom], [0, 1], threaded=False)


@pytest.mark.parametrize("threaded", [False, True])
def test_run_parallel_returns_results_in_task_order_and_raises(threaded):
    assert run_parallel([lambda i=i: i * i for i in range(5)], threaded=threaded) == [0, 1, 4, 9, 16]
    if threaded:
        with pytest.raises(StageError, match="parallel task 1 failed"):
            run_parallel([lambda: 1, lambda: 1 / 0], threaded=True)
