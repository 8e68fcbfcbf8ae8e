"""What the server is allowed to do: one frozen dataclass, checked once at start-up.

Read from ``config.serve`` (``configs/serve.py``); every field error names ``config.serve.<field>``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from disrouter_jax.cascade.metrics import COST_FINAL, COST_MODES

WARMUP_MODES = ("all", "smallest", "none")


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """Server limits and batching.

    ``max_batch_size``: rows one stage runs together (the largest batch bucket; smaller batches
    round up to powers of two, so at most ``log2(max_batch_size) + 1`` batch shapes compile).
    ``batch_window_ms``: how long the batcher waits for one more request after the last one of a
    batch arrived (0: take what is queued), ``max_batch_wait_ms``: at most this long in all after
    the first (while requests keep coming, a batch grows). ``pipeline``: one worker per agent, so
    agent 2 runs one batch's refusals while agent 1 runs the next batch (False: one worker takes
    each batch through every agent before the next). ``max_queue``: admitted requests not yet finished;
    beyond it a request gets 429 with ``Retry-After: retry_after_s``. ``request_timeout_s``: the
    per-request deadline (504 after it; the request is dropped at its next stage boundary).
    ``max_new_tokens``: the default and the largest ``max_tokens`` of a request, at every stage.
    ``default_temperature``: when a request gives none (0: greedy, as the cascade was evaluated).
    ``default_alpha``: the scenario of ``model="disrouter"`` without ``alpha``.
    ``prompt_buckets``: the prompt-length buckets a stage pads to (ascending; a longer prompt rounds
    up to a multiple of the largest and compiles on first use): few buckets, few programs.
    ``warmup``: what to compile before /health turns ready ("all": every batch bucket x prompt
    bucket of every stage, greedy; "smallest": 1 row, the warm-up prompt's bucket; "none").
    ``warmup_streaming``: also compile the streaming variant of those programs (a call with a
    ``stream=true`` row; it cannot come from the persistent compilation cache); off, a streamed
    request compiles its shape on first use.
    ``stage_delay_s``: a pause before every stage, for drills (it holds requests in flight so that
    deadlines and drains can be exercised); ``stream_step_delay_s``: a pause after every decode
    step of a call that streams, for drills (tokens then visibly arrive one by one); 0 in service.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 64
    batch_window_ms: float = 2.0
    max_batch_wait_ms: float = 20.0
    pipeline: bool = True
    max_queue: int = 1024
    retry_after_s: int = 1
    request_timeout_s: float = 60.0
    max_new_tokens: int = 64
    default_temperature: float = 0.0
    default_alpha: float = 0.5
    cost_mode: str = COST_FINAL
    prompt_buckets: tuple[int, ...] = (128, 512, 2048)
    warmup: str = "all"
    warmup_streaming: bool = True
    stage_delay_s: float = 0.0
    stream_step_delay_s: float = 0.0

    def __post_init__(self):
        def fail(name, why):
            raise ValueError(f"config.serve.{name} {why}, got {getattr(self, name)!r}")

        for name, low in (("port", 0), ("max_batch_size", 1), ("max_queue", 1), ("retry_after_s", 0),
                          ("max_new_tokens", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                fail(name, f"must be an int >= {low}")
        if self.port > 65535:
            fail("port", "must be <= 65535")
        buckets = self.prompt_buckets
        if (not isinstance(buckets, (tuple, list)) or not buckets
                or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in buckets)
                or list(buckets) != sorted(set(buckets))):
            fail("prompt_buckets", "must be a non-empty, strictly increasing sequence of positive ints")
        object.__setattr__(self, "prompt_buckets", tuple(buckets))
        for name in ("batch_window_ms", "max_batch_wait_ms", "stage_delay_s", "stream_step_delay_s",
                     "default_temperature"):
            if not float(getattr(self, name)) >= 0.0:
                fail(name, "must be >= 0")
        if not float(self.request_timeout_s) > 0.0:
            fail("request_timeout_s", "must be > 0")
        for name in ("pipeline", "warmup_streaming"):
            if not isinstance(getattr(self, name), bool):
                fail(name, "must be a bool")
        if self.warmup not in WARMUP_MODES:
            fail("warmup", f"must be one of {WARMUP_MODES}")
        if self.cost_mode not in COST_MODES:
            fail("cost_mode", f"must be one of {COST_MODES}")
        if not self.host:
            fail("host", "must be a host name or address")

    @classmethod
    def from_mapping(cls, values: Mapping) -> "ServeConfig":
        """The fields of ``values`` this class has (``config.serve`` also holds loading options)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in dict(values).items() if k in names})

    def batch_buckets(self) -> tuple[int, ...]:
        """Batch sizes a stage compiles: powers of two up to ``max_batch_size`` (and it)."""
        sizes, size = [], 1
        while size < self.max_batch_size:
            sizes.append(size)
            size *= 2
        return tuple(sizes) + (self.max_batch_size,)
