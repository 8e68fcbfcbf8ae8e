"""Dynamic batching of requests through the cascade: one worker thread per agent, a pipeline.

The first agent's worker takes the queued requests — after the first one arrives it waits for
more while they keep coming (until none arrived for ``batch_window_ms``, at most
``max_batch_wait_ms`` in all), and takes at most ``max_batch_size`` — and runs them as one batch;
the rows it refused go to the next agent's inbox as a whole, and so on, as the offline engine
runs a cascade (agent 1 on the whole batch, every next agent on the rows the one before refused).
Each later agent's worker takes what its inbox holds (at most ``max_batch_size`` rows) as soon as
it is free, so agent 2 runs batch ``i``'s refusals while agent 1 runs batch ``i + 1`` (their
programs release the GIL: on several cores they run at once), and refusals of several batches
can share one batch there. A row's reply does not depend on its batch, so this changes no answer.
With ``pipeline=False`` one worker runs each batch through every agent before it takes the next.

Stage boundaries are where a request can leave early: one whose client went away or whose
deadline passed is dropped there (its row is not run again). An exception in a stage fails the
requests of that stage's batch only; the worker goes on with the next batch.

Bounded: at most ``max_queue`` requests are admitted and unfinished at once; ``submit`` beyond
that raises :class:`QueueFull` (the server answers 429 with Retry-After).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence

from disrouter_jax.cascade.serving.stage import StageReply, StageRow

logger = logging.getLogger(__name__)

QUEUED, DONE, FAILED, CANCELLED = "queued", "done", "failed", "cancelled"


class QueueFull(Exception):
    pass


class Stopped(Exception):
    pass


@dataclasses.dataclass
class Job:
    """One request on its way through the cascade.

    ``prompts[k]``: its prompt for agent ``k``; ``visits``: ``(agent index, reply)`` in order.
    ``status`` ends as DONE, FAILED (``error`` says why) or CANCELLED (``error``: the reason).
    """

    prompts: Sequence[Sequence[int]]
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    key_id: int = 0
    deadline: float = float("inf")  # time.monotonic()
    visits: list[tuple[int, StageReply]] = dataclasses.field(default_factory=list)
    # Streaming: ``on_tokens(agent index, tokens)``, from a worker thread, with the answering
    # agent's tokens as it generates them (``stage.AgentStage.run``'s listeners).
    on_tokens: Callable[[int, Sequence[int]], None] | None = None
    status: str = QUEUED
    error: str = ""
    _callbacks: list[Callable[["Job"], None]] = dataclasses.field(default_factory=list)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    _cancel_reason: str = ""

    def row(self, stage: int) -> StageRow:
        return StageRow(tuple(self.prompts[stage]), self.max_new_tokens, self.temperature, self.top_p, self.key_id)

    def add_done_callback(self, callback: Callable[["Job"], None]) -> None:
        with self._lock:
            if self.status == QUEUED:
                self._callbacks.append(callback)
                return
        callback(self)

    def cancel(self, reason: str) -> None:
        """Asks the worker to drop this job at its next stage boundary (a job still queued is
        dropped at once by :meth:`Batcher.cancel`)."""
        self._cancel_reason = self._cancel_reason or reason

    def should_stop(self, now: float) -> str:
        if self._cancel_reason:
            return self._cancel_reason
        return "deadline" if now >= self.deadline else ""

    def finish(self, status: str, error: str = "") -> bool:
        """Sets the final status once (later calls are ignored); runs the callbacks."""
        with self._lock:
            if self.status != QUEUED:
                return False
            self.status, self.error = status, error
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)
        return True

    @property
    def done(self) -> bool:
        return self.status != QUEUED


class Batcher:
    """The worker (module doc). ``stages``: objects with ``name`` and ``run(rows) -> replies``
    (``stage.AgentStage``); ``observer``: metric hooks (``metrics.ServerMetrics`` or None)."""

    def __init__(self, stages: Sequence, *, max_batch_size: int, batch_window_ms: float, max_queue: int,
                 max_batch_wait_ms: float | None = None, pipeline: bool = True, stage_delay_s: float = 0.0,
                 observer=None):
        """``max_batch_wait_ms``: default ``batch_window_ms`` (a fixed window after the first)."""
        self.stages = list(stages)
        self.pipeline = pipeline
        self.max_batch_size = max_batch_size
        self.window_s = batch_window_ms / 1000.0
        longest_ms = batch_window_ms if max_batch_wait_ms is None else max_batch_wait_ms
        self.max_wait_s = max(self.window_s, longest_ms / 1000.0)
        self._arrivals = 0
        self.max_queue = max_queue
        self.stage_delay_s = stage_delay_s
        self.observer = observer
        # _inboxes[0] is the request queue; _inboxes[k] holds the rows agent k-1 refused.
        self._inboxes: list[collections.deque[Job]] = [collections.deque() for _ in self.stages]
        self._queue = self._inboxes[0]
        self._admitted = 0  # admitted and unfinished
        self._cond = threading.Condition()
        self._accepting = True
        self._stop = False
        self._exited = [False] * len(self.stages)
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ client side

    def submit(self, job: Job) -> None:
        with self._cond:
            if not self._accepting:
                raise Stopped("the server is shutting down")
            if self._admitted >= self.max_queue:
                raise QueueFull(f"{self._admitted} requests in flight (max_queue={self.max_queue})")
            self._admitted += 1
            self._arrivals += 1
            self._queue.append(job)
            self._cond.notify_all()
        job.add_done_callback(self._release)
        self._observe("queue_depth", len(self._queue))

    def cancel(self, job: Job, reason: str) -> None:
        """Drops ``job``: at once if still queued (its slot is freed), else at its next stage."""
        job.cancel(reason)
        with self._cond:
            try:
                self._queue.remove(job)
            except ValueError:
                return  # in a stage: the worker drops it at the boundary
        self._finish_cancelled(job, reason)

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        return self._admitted

    def start(self) -> None:
        workers = len(self.stages) if self.pipeline else 1
        self._threads = [threading.Thread(target=self._work, args=(k,), name=f"cascade-stage{k}", daemon=True)
                         for k in range(workers)]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Refuses new requests, finishes the admitted ones, then ends the worker."""
        with self._cond:
            self._accepting = False
            self._stop = True
            self._cond.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    # ------------------------------------------------------------------ worker side

    def _release(self, job: Job) -> None:
        with self._cond:
            self._admitted -= 1

    def _observe(self, name: str, *args) -> None:
        if self.observer is not None:
            getattr(self.observer, name)(*args)

    def _finish_cancelled(self, job: Job, reason: str) -> None:
        if job.finish(CANCELLED, reason):
            self._observe("cancelled", reason)

    def _gather(self, k: int) -> list[Job] | None:
        """Agent ``k``'s next batch; None once stopped with nothing left for it (its inbox empty
        and every agent before it gone)."""
        inbox = self._inboxes[k]
        with self._cond:
            while not inbox:
                if self._stop and all(self._exited[:k]):
                    self._exited[k] = True
                    self._cond.notify_all()
                    return None
                self._cond.wait(0.5)
            if k == 0 and self.window_s > 0:
                # Closed-loop clients send their next request when the last reply arrives: under
                # load requests come in bursts, and a batch that waits for the burst to end runs
                # one large batch instead of many small ones (a call's cost is mostly fixed).
                first = last = time.monotonic()
                arrivals = self._arrivals
                while len(inbox) < self.max_batch_size and not self._stop:
                    now = time.monotonic()
                    if self._arrivals != arrivals:
                        arrivals, last = self._arrivals, now
                    left = min(last + self.window_s, first + self.max_wait_s) - now
                    if left <= 0:
                        break
                    self._cond.wait(left)
            batch = [inbox.popleft() for _ in range(min(self.max_batch_size, len(inbox)))]
        if k == 0:
            self._observe("queue_depth", len(inbox))
        return batch

    def _work(self, k: int) -> None:
        while True:
            batch = self._gather(k)
            if batch is None:
                return
            try:
                refused = self.run_stage(k, batch)
                if not self.pipeline:
                    for later in range(k + 1, len(self.stages)):
                        if not refused:
                            break
                        refused = self.run_stage(later, refused)
            except Exception:  # a bug of the batcher itself: fail the batch, keep serving
                logger.exception("batch failed")
                for job in batch:
                    job.finish(FAILED, "internal error")
                continue
            if refused:
                with self._cond:
                    self._inboxes[k + 1].extend(refused)
                    self._cond.notify_all()

    def run_stage(self, k: int, pending: list[Job]) -> list[Job]:
        """Agent ``k`` on ``pending``; the jobs it refused (for agent ``k + 1``)."""
        stage, last = self.stages[k], len(self.stages) - 1
        now = time.monotonic()
        alive = []
        for job in pending:
            reason = job.should_stop(now)
            if reason:
                self._finish_cancelled(job, reason)
            else:
                alive.append(job)
        if not alive:
            return []
        if self.stage_delay_s:
            time.sleep(self.stage_delay_s)
        started = time.perf_counter()
        listeners = [None if job.on_tokens is None else functools.partial(job.on_tokens, k) for job in alive]
        try:
            if any(listeners):
                replies = stage.run([job.row(k) for job in alive], listeners)
            else:
                replies = stage.run([job.row(k) for job in alive])
        except Exception as err:
            logger.exception("agent %s failed on a batch of %d requests", stage.name, len(alive))
            self._observe("stage_failed", stage.name)
            for job in alive:
                job.finish(FAILED, f"agent {stage.name!r} failed: {type(err).__name__}: {err}")
            return []
        self._observe("stage_batch", stage.name, len(alive), time.perf_counter() - started)
        refused_jobs = []
        for job, reply in zip(alive, replies):
            job.visits.append((k, reply))
            self._observe("decision", stage.name, reply.refused)
            if reply.refused and k < last:
                refused_jobs.append(job)
            else:
                job.finish(DONE)
        return refused_jobs
