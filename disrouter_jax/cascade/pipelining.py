"""Stage pipelining and parallel runs with one worker thread per stage.

JAX releases the GIL while a compiled program runs and while ``device_get`` waits, so Python
threads driving different devices really overlap: with agent ``k`` on its own sub-mesh, its thread
works on micro-batch ``i`` while the thread of agent ``k + 1`` works on micro-batch ``i - 1``.

Both helpers are generic (no JAX inside) so their ordering and error handling are tested directly.
With ``threaded=False`` they run the same work in the same order on the calling thread.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Sequence

_DONE = object()  # end-of-stream marker passed down the stage queues


class StageError(RuntimeError):
    """A stage raised; the original exception is the ``__cause__``."""


def run_stages(stages: Sequence[Callable[[Any], Any]], inputs: Sequence[Any], *, threaded: bool) -> list[Any]:
    """Feed every input through ``stages`` in order: ``out = s_K(... s_1(s_0(x)))``.

    Returns the last stage's outputs in input order. Threaded: stage ``k`` runs in its own
    thread and picks up input ``i`` as soon as stage ``k - 1`` hands it over, so different stages
    work on different inputs at the same time; each stage still sees the inputs in order. The
    first exception stops the remaining work and is re-raised as :class:`StageError`.
    """
    stages = list(stages)
    if not stages:
        raise ValueError("run_stages: no stages")
    if not threaded:
        outputs = []
        for item in inputs:
            for stage in stages:
                item = stage(item)
            outputs.append(item)
        return outputs

    queues = [queue.Queue() for _ in range(len(stages) + 1)]
    failed = threading.Event()
    errors: list[tuple[int, BaseException]] = []

    def worker(index: int) -> None:
        source, sink = queues[index], queues[index + 1]
        while True:
            item = source.get()
            if item is _DONE:
                sink.put(_DONE)
                return
            if failed.is_set():
                continue  # drain without working so upstream never waits on us
            try:
                sink.put(stages[index](item))
            except BaseException as error:  # noqa: BLE001 - re-raised on the calling thread
                errors.append((index, error))
                failed.set()

    threads = [threading.Thread(target=worker, args=(k,), name=f"cascade-stage-{k}", daemon=True)
               for k in range(len(stages))]
    for thread in threads:
        thread.start()
    for item in inputs:
        queues[0].put(item)
    queues[0].put(_DONE)
    outputs = []
    while True:
        item = queues[-1].get()
        if item is _DONE:
            break
        outputs.append(item)
    for thread in threads:
        thread.join()
    if errors:
        index, error = errors[0]
        raise StageError(f"pipeline stage {index} failed: {type(error).__name__}: {error}") from error
    return outputs


def run_parallel(tasks: Sequence[Callable[[], Any]], *, threaded: bool) -> list[Any]:
    """Run independent tasks (one thread each when ``threaded``); results in task order."""
    if not threaded:
        return [task() for task in tasks]
    results: list[Any] = [None] * len(tasks)
    errors: list[tuple[int, BaseException]] = []

    def worker(index: int) -> None:
        try:
            results[index] = tasks[index]()
        except BaseException as error:  # noqa: BLE001 - re-raised on the calling thread
            errors.append((index, error))

    threads = [threading.Thread(target=worker, args=(i,), name=f"parallel-{i}", daemon=True)
               for i in range(len(tasks))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        index, error = min(errors, key=lambda e: e[0])
        raise StageError(f"parallel task {index} failed: {type(error).__name__}: {error}") from error
    return results
