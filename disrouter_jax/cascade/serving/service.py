"""The served cascade, HTTP aside: requests become jobs for the batcher, finished jobs become
replies (the answering agent's text, usage, and the ``disrouter`` routing object)."""

from __future__ import annotations

import dataclasses
import logging
import secrets
import threading
import time
from collections.abc import Sequence

from disrouter_jax.cascade.log import ANSWER, REFUSE
from disrouter_jax.cascade.metrics import routing_cost
from disrouter_jax.cascade.serving.batcher import Batcher, Job
from disrouter_jax.cascade.serving.config import ServeConfig
from disrouter_jax.cascade.serving.metrics import ServerMetrics
from disrouter_jax.cascade.serving.protocol import FINISH_REASONS, ChatRequest, RequestError
from disrouter_jax.cascade.serving.streaming import TextStream
from disrouter_jax.tasks.prompts import SCENARIOS

logger = logging.getLogger(__name__)
WARMUP_MESSAGES = ({"role": "user", "content": "Question: warm-up"},)


@dataclasses.dataclass(frozen=True)
class Answer:
    """A finished request as the reply shows it."""

    content: str
    finish_reason: str  # OpenAI's: "stop" | "length"
    tokens: tuple[int, ...]  # the answering agent's, for streaming
    stage: int  # index of the answering agent
    usage: dict
    routing: dict


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the first of ``stops`` (OpenAI's ``stop``: the sequence is not returned)."""
    cuts = [text.find(s) for s in stops if s in text]
    return (text[:min(cuts)], True) if cuts else (text, False)


class CascadeService:
    """Stages (``stage.AgentStage``, cascade order), the batcher over them, and their metrics."""

    def __init__(self, stages: Sequence, config: ServeConfig, metrics: ServerMetrics | None = None):
        if not stages:
            raise ValueError("CascadeService: no stages")
        self.stages = list(stages)
        self.config = config
        self.metrics = metrics or ServerMetrics()
        self.costs = {s.name: float(s.cost) for s in self.stages}
        self.batcher = Batcher(self.stages, max_batch_size=config.max_batch_size,
                               batch_window_ms=config.batch_window_ms, max_queue=config.max_queue,
                               max_batch_wait_ms=config.max_batch_wait_ms, pipeline=config.pipeline,
                               stage_delay_s=config.stage_delay_s, observer=self.metrics)
        self.ready = threading.Event()
        self.warmup_error = ""

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.stages]

    # ------------------------------------------------------------------ life cycle

    def start(self, warm_in_background: bool = True) -> None:
        self.batcher.start()
        if warm_in_background:
            threading.Thread(target=self.warm, name="cascade-warmup", daemon=True).start()
        else:
            self.warm()

    def warm(self) -> None:
        """Compiles what the config asks (``ServeConfig.warmup``), then marks the server ready."""
        started = time.perf_counter()
        try:
            if self.config.warmup != "none":
                every = self.config.warmup == "all"
                sizes = self.config.batch_buckets() if every else (1,)
                for stage in self.stages:
                    ids = stage.prompt_ids(WARMUP_MESSAGES, self.config.default_alpha)
                    # The buckets below a stage's shortest prompt are never reached by it.
                    shortest = min(len(stage.prompt_ids(WARMUP_MESSAGES, alpha)) for alpha in SCENARIOS)
                    lengths = stage.warm_lengths(shortest) if every else [len(ids)]
                    stage.warm(sizes, ids, self.config.max_new_tokens, lengths, streaming=self.config.warmup_streaming)
        except Exception as err:  # serve anyway: programs compile on first use
            logger.exception("warm-up failed")
            self.warmup_error = f"{type(err).__name__}: {err}"
        logger.info("warm-up (%s) done in %.1f s", self.config.warmup, time.perf_counter() - started)
        self.ready.set()
        self.metrics.ready.set(1)

    def stop(self) -> None:
        self.batcher.stop()

    # ------------------------------------------------------------------ requests

    def make_job(self, request: ChatRequest) -> Job:
        """The request's prompt for every agent; 400 if one does not fit its agent's context."""
        messages = request.message_dicts()
        prompts, rendered = [], {}
        for stage in self.stages:
            key = stage.prompt_key(request.alpha)
            if key not in rendered:  # the chat template is the costliest host work per request
                rendered[key] = stage.prompt_ids(messages, request.alpha)
            ids = rendered[key]
            if len(ids) + request.max_tokens > stage.context_length:
                raise RequestError(
                    400, f"'messages' is {len(ids)} tokens for agent {stage.name!r}; with max_tokens="
                    f"{request.max_tokens} that exceeds its context of {stage.context_length} tokens",
                    "messages", "context_length_exceeded")
            prompts.append(ids)
        # Without a seed a sampled request draws one, so its randomness is its own either way.
        key_id = (request.seed if request.seed is not None else secrets.randbits(64)) % 2**31
        return Job(prompts, request.max_tokens, request.temperature, request.top_p, key_id,
                   deadline=time.monotonic() + self.config.request_timeout_s)

    def answer(self, request: ChatRequest, job: Job) -> Answer:
        """The reply of a finished (DONE) job."""
        stage, reply = job.visits[-1]
        content, stopped = cut_at_stop(reply.text, request.stop)
        finish_reason = "stop" if stopped else FINISH_REASONS[reply.finish_reason]
        path = [{"agent": self.stages[k].name, "decision": REFUSE if r.refused else ANSWER,
                 "prompt_tokens": len(job.prompts[k]), "completion_tokens": r.num_generated,
                 "finish_reason": r.finish_reason} for k, r in job.visits]
        visited = [self.stages[k].name for k, _ in job.visits]
        routing = {
            "answering_agent": self.stages[stage].name, "alpha": request.alpha,
            "scenario": SCENARIOS[request.alpha].name, "path": path,
            "cost": routing_cost(visited, self.costs, self.config.cost_mode), "cost_mode": self.config.cost_mode,
            # The last agent's refusal is final: it has no one to forward to.
            "forced_refusal": reply.refused,
        }
        usage = {"prompt_tokens": len(job.prompts[stage]), "completion_tokens": reply.num_generated,
                 "total_tokens": len(job.prompts[stage]) + reply.num_generated}
        self.metrics.answered_tokens(usage["prompt_tokens"], usage["completion_tokens"],
                                     sum(r.num_generated for _, r in job.visits))
        return Answer(content, finish_reason, reply.tokens, stage, usage, routing)

    def text_deltas(self, answer: Answer) -> list[str]:
        return self.stages[answer.stage].text_deltas(answer.tokens, answer.content)

    def text_stream(self, stage: int, request: ChatRequest) -> TextStream:
        """The incremental text of agent ``stage``'s tokens as they come, for streaming."""
        return TextStream(self.stages[stage].decode, request.stop)
