"""The batcher on stand-in stages: batching across stages, bounds, cancellation, failures, drain."""

import threading
import time

import pytest

from disrouter_jax.cascade.serving.batcher import CANCELLED, DONE, FAILED, Batcher, Job, QueueFull, Stopped
from tests.cascade.serving import stub_stages
from tests.cascade.serving.stub_stages import stub_pool


def job(text: str, **kw) -> Job:
    return Job([list(text.encode())] * 3, max_new_tokens=32, **kw)


def wait_all(jobs, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not all(j.done for j in jobs):
        assert time.monotonic() < deadline, [j.status for j in jobs]
        time.sleep(0.005)


def make(stages, **kw):
    kw = dict(max_batch_size=8, batch_window_ms=20.0, max_queue=64) | kw
    batcher = Batcher(stages, **kw)
    batcher.start()
    return batcher


def test_each_stage_runs_the_refusals_of_the_one_before_as_one_batch():
    stages = stub_pool("a", "b", "c")
    batcher = make(stages)
    texts = ["q0", "q1 refuse:a", "q2 refuse:a refuse:b", "q3 refuse:a", "q4 refuse:a refuse:b refuse:c"]
    jobs = [job(t) for t in texts]
    for j in jobs:
        batcher.submit(j)
    wait_all(jobs)
    batcher.stop()
    assert [j.status for j in jobs] == [DONE] * 5
    assert stages[0].batches == [texts]  # one batch: the window gathered all five
    assert stages[1].batches == [[texts[1], texts[2], texts[3], texts[4]]]
    assert stages[2].batches == [[texts[2], texts[4]]]
    assert [[k for k, _ in j.visits] for j in jobs] == [[0], [0, 1], [0, 1, 2], [0, 1], [0, 1, 2]]
    # The last agent's refusal is final (a forced refusal), not forwarded anywhere.
    assert jobs[4].visits[-1][1].refused


def test_batches_are_bounded_and_later_requests_wait_for_the_next():
    stages = stub_pool("a", "b")
    batcher = make(stages, max_batch_size=3)
    jobs = [job(f"q{i}") for i in range(7)]
    for j in jobs:
        batcher.submit(j)
    wait_all(jobs)
    batcher.stop()
    assert [len(b) for b in stages[0].batches] == [3, 3, 1]
    assert sorted(stages[0].rows_seen) == sorted(f"q{i}" for i in range(7))  # each exactly once


def test_a_full_queue_refuses_and_a_finished_request_frees_its_slot():
    stages = stub_pool("a", "b")
    batcher = make(stages, max_queue=2, batch_window_ms=0.0)
    first, second = job("slow:0.3"), job("slow:0.3")
    batcher.submit(first)
    batcher.submit(second)
    with pytest.raises(QueueFull, match="max_queue=2"):
        batcher.submit(job("q"))
    wait_all([first, second])
    third = job("q")
    batcher.submit(third)  # room again
    wait_all([third])
    batcher.stop()
    assert third.status == DONE


def test_cancelled_and_expired_requests_leave_at_the_next_stage_boundary():
    stages = stub_pool("a", "b", "c")
    batcher = make(stages, batch_window_ms=0.0)
    slow = job("slow:0.3 refuse:a")
    expired = job("refuse:a x", deadline=time.monotonic() + 0.1)
    kept = job("refuse:a y")
    for j in (slow, expired, kept):
        batcher.submit(j)
    time.sleep(0.1)
    batcher.cancel(slow, "disconnect")  # while agent a runs it
    wait_all([slow, expired, kept])
    queued = job("never runs")
    blocker = job("slow:0.3")
    batcher.submit(blocker)
    time.sleep(0.05)
    batcher.submit(queued)
    batcher.cancel(queued, "disconnect")  # still queued: dropped at once, slot freed
    wait_all([blocker])
    batcher.stop()
    assert (slow.status, slow.error) == (CANCELLED, "disconnect")
    assert (expired.status, expired.error) == (CANCELLED, "deadline")
    assert kept.status == DONE
    assert stages[1].rows_seen == ["refuse:a y"]  # only the live one reached agent b
    assert queued.status == CANCELLED and "never runs" not in stages[0].rows_seen
    assert batcher.in_flight == 0


def test_a_failing_stage_fails_only_the_requests_it_held():
    stages = stub_pool("a", "b")
    batcher = make(stages)
    broken = [job("refuse:a fail:b"), job("refuse:a other")]
    fine = job("answered by a")
    for j in broken + [fine]:
        batcher.submit(j)
    wait_all(broken + [fine])
    assert [j.status for j in broken] == [FAILED, FAILED]
    assert "agent 'b' failed: RuntimeError: b is broken" in broken[0].error
    assert fine.status == DONE
    later = job("refuse:a fine now")
    batcher.submit(later)  # the worker is still serving
    wait_all([later])
    batcher.stop()
    assert later.status == DONE and later.visits[-1][1].text == "b: refuse:a fine now"


def test_stop_finishes_admitted_requests_then_refuses_new_ones():
    stages = stub_pool("a", "b")
    batcher = make(stages, batch_window_ms=0.0)
    jobs = [job("slow:0.2"), job("q1"), job("q2")]
    for j in jobs:
        batcher.submit(j)
    stopper = threading.Thread(target=batcher.stop)
    stopper.start()
    stopper.join(10)
    assert not stopper.is_alive()
    assert [j.status for j in jobs] == [DONE] * 3
    with pytest.raises(Stopped):
        batcher.submit(job("late"))


def test_done_callbacks_run_exactly_once():
    j = job("q")
    seen = []
    j.add_done_callback(seen.append)
    assert j.finish(DONE) and not j.finish(FAILED, "again")
    j.add_done_callback(seen.append)  # after the fact: called at once
    assert seen == [j, j] and j.status == DONE


class GateStage(stub_stages.StubStage):
    """Agent b (``wait_for``) holds its batch until agent a has started another one (or 1 s)."""

    def __init__(self, name, gate, entered=None, **kw):
        super().__init__(name, **kw)
        self.gate, self.entered, self.saw_gate = gate, entered, []

    def run(self, rows, listeners=None):
        if self.entered is not None:  # agent b
            self.entered.set()
            self.saw_gate.append(self.gate.wait(1.0))
        elif any(b"open" in bytes(r.prompt_ids) for r in rows):  # agent a, on the second batch
            self.gate.set()
        return super().run(rows, listeners)


@pytest.mark.parametrize("pipeline", [True, False])
def test_the_next_agent_runs_one_batch_while_the_first_runs_the_next_only_when_pipelined(pipeline):
    gate, entered = threading.Event(), threading.Event()
    stages = [GateStage("a", gate), GateStage("b", gate, entered, last=True)]
    batcher = make(stages, batch_window_ms=0.0, pipeline=pipeline)
    first = job("refuse:a q")
    batcher.submit(first)
    assert entered.wait(10)  # agent b holds the first request's row
    second = job("open")
    batcher.submit(second)
    wait_all([first, second])
    batcher.stop()
    assert [first.status, second.status] == [DONE, DONE]
    # Pipelined, agent a took the second batch while b ran: b saw the gate open; one worker
    # finishes the first request first, so b waited out its second.
    assert stages[1].saw_gate == [pipeline]


def test_a_batch_grows_while_requests_keep_coming_up_to_its_longest_wait():
    stages = stub_pool("a", "b")
    batcher = make(stages, batch_window_ms=400.0, max_batch_wait_ms=3000.0)
    jobs = [job(f"q{i}") for i in range(4)]
    for j in jobs[:3]:  # 150 ms apart: each within the 400 ms window of the one before
        batcher.submit(j)
        time.sleep(0.15)
    wait_all(jobs[:3])
    batcher.submit(jobs[3])
    wait_all(jobs[3:])
    batcher.stop()
    # A fixed 400 ms window from the first would have closed before the third came.
    assert stages[0].batches == [["q0", "q1", "q2"], ["q3"]]
