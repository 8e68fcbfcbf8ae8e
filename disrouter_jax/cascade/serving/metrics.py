"""Prometheus metrics of the server (``GET /metrics``), in a registry of its own so that two
servers in one process (tests) do not share counters."""

from __future__ import annotations

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               disable_created_metrics, generate_latest)

# The *_created series double the output and no dashboard of ours reads them.
disable_created_metrics()

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServerMetrics:
    """Requests, tokens, queue depth, per-agent answers / refusals, latencies and batch sizes."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("disrouter_requests", "Chat-completion requests by model and HTTP status.",
                                ["model", "status"], registry=r)
        self.tokens = Counter("disrouter_tokens", "Tokens of answered requests: prompt and completion of the "
                              "answering agent, and all generated along the path.", ["kind"], registry=r)
        self.queue_depth_gauge = Gauge("disrouter_queue_depth", "Requests waiting for a batch.", registry=r)
        self.in_flight = Gauge("disrouter_requests_in_flight", "Admitted requests not finished.", registry=r)
        self.answers = Counter("disrouter_agent_answers", "Replies an agent gave as the answer.", ["agent"],
                               registry=r)
        self.refusals = Counter("disrouter_agent_refusals", "Refusals (forwarded queries, or forced refusals "
                                "of the last agent).", ["agent"], registry=r)
        self.cancellations = Counter("disrouter_requests_cancelled", "Requests dropped before their answer.",
                                     ["reason"], registry=r)
        self.stage_failures = Counter("disrouter_stage_failures", "Stage batches that raised.", ["agent"],
                                      registry=r)
        self.latency = Histogram("disrouter_request_latency_seconds", "Time from request to reply.", ["model"],
                                 buckets=LATENCY_BUCKETS_S, registry=r)
        self.stage_latency = Histogram("disrouter_stage_latency_seconds", "One stage's batch through one agent.",
                                       ["agent"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.batch_rows = Histogram("disrouter_stage_batch_rows", "Rows of one stage's batch.", ["agent"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.ready = Gauge("disrouter_ready", "1 once warm-up is done.", registry=r)

    # Hooks the batcher calls (batcher.Batcher(observer=...)).

    def queue_depth(self, depth: int) -> None:
        self.queue_depth_gauge.set(depth)

    def cancelled(self, reason: str) -> None:
        self.cancellations.labels(reason).inc()

    def stage_failed(self, agent: str) -> None:
        self.stage_failures.labels(agent).inc()

    def stage_batch(self, agent: str, rows: int, seconds: float) -> None:
        self.batch_rows.labels(agent).observe(rows)
        self.stage_latency.labels(agent).observe(seconds)

    def decision(self, agent: str, refused: bool) -> None:
        (self.refusals if refused else self.answers).labels(agent).inc()

    # The app's.

    def request(self, model: str, status: int, seconds: float | None = None) -> None:
        self.requests.labels(model, str(status)).inc()
        if seconds is not None:
            self.latency.labels(model).observe(seconds)

    def answered_tokens(self, prompt: int, completion: int, generated: int) -> None:
        self.tokens.labels("prompt").inc(prompt)
        self.tokens.labels("completion").inc(completion)
        self.tokens.labels("generated").inc(generated)

    def render(self) -> bytes:
        return generate_latest(self.registry)
