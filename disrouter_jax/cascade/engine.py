"""The self-routing cascade engine: distributed decisions, compaction, early refusal, placement.

**Cascade.** Every query enters agent 1 under scenario α (the scenario instruction is in its
prompt). The queries an agent refuses are compacted into the next agent's batch; the others are
done. The last agent always answers: it gets the *plain* prompt (``alpha=None``: no scenario, no
refusal option). If it still replies the refusal, that is a forced refusal, scored wrong and
counted (``RoutingRecord.forced_refusal``). No agent depends on another: the pool is just the
ordered list given, so adding, removing or reordering agents is a config change.

**Decision.** The final decision is ``tasks.checkers.is_refusal`` on the reply as the agent's own
tokenizer decodes it (each agent also renders its prompts with its own chat template); an answer
is scored by its task's checker. Decoding is greedy, so a query's reply depends only on the agent
and the prompt, not on which other queries share its batch.

**Early refusal detection.** The refusal is tokenized as the agent emits it, by the agent's own
tokenizer (``agent.encode_response(REFUSAL)``, ``L`` tokens; 5 with the toy tokenizer, and with
Qwen2.5's pre-tokenizer ``I| don|'t| know|!``; in a pool that mixes families each agent has its own
sequence) and handed to the generation engine as its ``early_stop`` predicate: a row stops the moment its
generated tokens equal that whole sequence. The decision is then final (``is_refusal`` accepts
anything after the ``!``), so the agent does not have to finish its turn — a refused query costs
its prefill plus ``L − 1`` single-token decode steps, whatever it would have said next (the
tests pin this with an agent that keeps talking after refusing). A prefix that diverges from the
refusal is an answer and must be generated to its end anyway, because it has to be scored; a
strict prefix of the refusal is still undecided and keeps going. So the only work saved is on
refusals, which is exactly where it is wasted. A model that spells the refusal with other tokens
(e.g. a different split of the same text) is not stopped early but is still recognised as a
refusal from its decoded text: early stopping changes cost, never decisions. A batch's decode
loop runs until its last row finishes, so compute is saved when every row of a batch has stopped
(a batch of refusals ends after ``L`` tokens); in a mixed batch a stopped row only stops adding
tokens (its reply and ``Reply.num_tokens``, the per-query cost reported in ``CascadeRun.stats``).

**Bucketing.** All generation goes through ``generation.generate``, which rounds batch sizes and
prompt lengths to buckets, so a whole dataset compiles a bounded number of programs per agent
architecture and placement (see ``generation.TRACE_COUNTS``). The early-stop predicate is cached
per refusal token sequence, so every call reuses the same compiled loop.

**Placement and pipelining.** Each agent runs on the mesh it was loaded on (``AgentSpec.devices``:
its own sub-mesh; otherwise the shared mesh). Queries are cut into micro-batches of
``EngineConfig.micro_batch_size``. When the agents' device sets are pairwise disjoint, the stages
run in one thread each (``pipelining.run_stages``): agent ``k`` works on micro-batch ``i`` while
agent ``k + 1`` works on the refusals of micro-batch ``i − 1``. Results do not depend on the
placement or on pipelining (tested on 8 CPU devices).

**All-agents mode** (:func:`all_agents_replies` + :func:`outcome_rows`): every query through every
agent, for the outcome table that replay, baselines and central routers read.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from disrouter_jax.agents import Agent
from disrouter_jax.cascade.log import (ANSWER, DISROUTER, DOMAINS, IN_DOMAIN, REFUSE, AgentOutcome, OutcomeRow,
                                       RoutingRecord, Visit)
from disrouter_jax.cascade.metrics import COST_FINAL, COST_MODES, routing_cost
from disrouter_jax.cascade.pipelining import run_parallel, run_stages
from disrouter_jax.generation import BucketConfig, generate
from disrouter_jax.tasks.checkers import is_refusal
from disrouter_jax.tasks.example import Example
from disrouter_jax.tasks.prompts import REFUSAL
from disrouter_jax.tasks.registry import get_task

PIPELINE_MODES = ("auto", "on", "off")
ANSWER_FEATURE_NAMES = ("mean_logprob", "min_logprob", "log1p_num_tokens", "hit_length_limit")


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """How the engine generates and schedules.

    ``max_batch_size``: decode rows per compiled batch. ``micro_batch_size``: queries per
    pipeline micro-batch (0: all queries in one). ``pipeline``: "auto" (threads when the agents'
    devices are disjoint and there is more than one micro-batch), "on" (always threads), "off".
    ``cost_mode``: what a query pays (``metrics.COST_FINAL``: the answering agent only — a refusal
    costs a prefill and a few tokens; ``COST_CUMULATIVE``: every agent visited).
    """

    max_new_tokens: int = 512
    max_batch_size: int = 64
    micro_batch_size: int = 0
    early_refusal: bool = True
    pipeline: str = "auto"
    cost_mode: str = COST_FINAL
    buckets: BucketConfig = BucketConfig()
    progress: bool | None = False

    def __post_init__(self):
        for name, low in (("max_new_tokens", 1), ("max_batch_size", 1), ("micro_batch_size", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"EngineConfig.{name} must be an int >= {low}, got {value!r}")
        if self.pipeline not in PIPELINE_MODES:
            raise ValueError(f"EngineConfig.pipeline must be one of {PIPELINE_MODES}, got {self.pipeline!r}")
        if self.cost_mode not in COST_MODES:
            raise ValueError(f"EngineConfig.cost_mode must be one of {COST_MODES}, got {self.cost_mode!r}")


@dataclasses.dataclass(frozen=True)
class Query:
    """One evaluation query and the domain group it is reported in."""

    example: Example
    domain: str = IN_DOMAIN

    def __post_init__(self):
        if self.domain not in DOMAINS:
            raise ValueError(f"Query {self.example.key}: domain must be one of {DOMAINS}, got {self.domain!r}")

    @property
    def dataset(self) -> str:
        return self.example.task

    @property
    def query_id(self) -> str:
        return self.example.id

    @property
    def key(self) -> tuple[str, str]:
        return (self.example.task, self.example.id)


@dataclasses.dataclass(frozen=True)
class Reply:
    """One agent's greedy reply to one query under one prompt (``alpha=None``: plain prompt).

    ``num_tokens``: tokens the agent generated for it, the stop token included — its decode cost.
    ``answer_features``: see :data:`ANSWER_FEATURE_NAMES` (inputs of FrugalGPT's answer scorer).
    """

    agent: str
    alpha: float | None
    response: str
    refused: bool
    correct: bool
    num_tokens: int
    finish_reason: str
    answer_features: tuple[float, ...]

    @property
    def decision(self) -> str:
        return REFUSE if self.refused else ANSWER

    def to_json(self) -> dict:
        return dataclasses.asdict(self) | {"answer_features": list(self.answer_features)}

    @classmethod
    def from_json(cls, data: Mapping) -> "Reply":
        fields = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(fields - set(data))
        if missing:
            raise ValueError(f"reply record lacks field(s) {missing}: {data}")
        return cls(**{name: data[name] for name in fields} | {"answer_features": tuple(data["answer_features"])})


# ----------------------------------------------------------------------------- refusal detection


def refusal_token_ids(agent: Agent) -> tuple[int, ...]:
    """The refusal as the agent's own tokenizer encodes a reply (what SFT taught it to emit)."""
    return tuple(int(t) for t in agent.encode_response(REFUSAL))


@functools.lru_cache(maxsize=None)
def refusal_early_stop(refusal_ids: tuple[int, ...]):
    """Jittable ``early_stop(tokens_bn, num_generated) -> bool[B]``: True for the rows whose
    generated tokens are exactly ``refusal_ids`` (checked at step ``len(refusal_ids)``; a row still
    running later has diverged). One function object per sequence, so compilations are reused."""
    if not refusal_ids:
        raise ValueError("refusal_early_stop: empty refusal token sequence")
    refusal_l = np.asarray(refusal_ids, np.int32)
    length = len(refusal_ids)

    def early_stop(tokens_bn, num_generated):
        if length > tokens_bn.shape[1]:  # can never be reached within the token budget
            return jnp.zeros(tokens_bn.shape[:1], jnp.bool_)
        matches_b = jnp.all(tokens_bn[:, :length] == refusal_l[None, :], axis=1)
        return matches_b & (num_generated == length)

    return early_stop


def answer_features(logprobs: np.ndarray, num_tokens: int, finish_reason: str) -> tuple[float, ...]:
    """Per-answer confidence features (:data:`ANSWER_FEATURE_NAMES`)."""
    logprobs = np.asarray(logprobs, np.float64)
    mean = float(logprobs.mean()) if logprobs.size else 0.0
    low = float(logprobs.min()) if logprobs.size else 0.0
    return (mean, low, math.log1p(num_tokens), float(finish_reason == "length"))


def agent_replies(agent: Agent, queries: Sequence[Query], alpha: float | None, config: EngineConfig) -> list[Reply]:
    """Greedy replies of ``agent`` to ``queries`` under ``alpha`` (None: plain prompt), scored."""
    if not queries:
        return []
    prompts = [agent.prompt_ids(query.example, alpha) for query in queries]
    refusal_ids = refusal_token_ids(agent)
    early_stop = refusal_early_stop(refusal_ids) if config.early_refusal and refusal_ids else None
    generations = generate(
        agent.model, prompts, max_new_tokens=config.max_new_tokens, temperature=0.0, num_samples=1,
        stop_token_ids=agent.stop_token_ids, mesh=agent.mesh, max_batch_size=config.max_batch_size,
        buckets=config.buckets, early_stop=early_stop, progress=config.progress,
    )
    replies = []
    for query, (generation,) in zip(queries, generations):
        text = agent.decode(generation.tokens)
        refused = is_refusal(text)
        correct = (not refused) and bool(get_task(query.example.task).check(query.example, text).correct)
        num_tokens = len(generation.tokens) + (generation.finish_reason == "stop")
        replies.append(Reply(
            agent=agent.name, alpha=alpha, response=text, refused=refused, correct=correct,
            num_tokens=int(num_tokens), finish_reason=generation.finish_reason,
            answer_features=answer_features(generation.logprobs, num_tokens, generation.finish_reason),
        ))
    return replies


# ----------------------------------------------------------------------------- placement


def device_set(agent: Agent) -> frozenset | None:
    """Ids of the devices ``agent`` runs on (``None``: the default device, not a mesh)."""
    if agent.mesh is None:
        return None
    return frozenset(int(d.id) for d in np.asarray(agent.mesh.devices).ravel())


def disjoint_placement(agents: Sequence[Agent]) -> bool:
    """True when every agent has its own mesh and no two share a device."""
    sets = [device_set(agent) for agent in agents]
    if any(s is None for s in sets):
        return False
    return sum(len(s) for s in sets) == len(frozenset().union(*sets))


def micro_batches(num_queries: int, size: int) -> list[list[int]]:
    """Query indices cut into consecutive micro-batches (``size`` 0: one)."""
    if num_queries == 0:
        return []
    size = num_queries if size == 0 else size
    return [list(range(start, min(start + size, num_queries))) for start in range(0, num_queries, size)]


# ----------------------------------------------------------------------------- the cascade


@dataclasses.dataclass(frozen=True)
class CascadeRun:
    """Result of one cascade run at one α: one record and the visited agents' replies per query."""

    alpha: float
    records: tuple[RoutingRecord, ...]
    replies: tuple[tuple[Reply, ...], ...]
    pipelined: bool

    def stats(self, agents: Sequence[str]) -> dict:
        """Per agent: queries reached, refused, tokens generated, tokens per refusal."""
        out = {}
        for name in agents:
            visits = [r for per_query in self.replies for r in per_query if r.agent == name]
            refusals = [r for r in visits if r.refused]
            out[name] = {
                "reached": len(visits),
                "refused": len(refusals),
                "generated_tokens": sum(r.num_tokens for r in visits),
                "tokens_per_refusal": (sum(r.num_tokens for r in refusals) / len(refusals)) if refusals else None,
                "early_stopped_refusals": sum(r.finish_reason == "early_stop" for r in refusals),
            }
        return out


class Cascade:
    """An ordered pool of loaded agents run as a self-routing cascade (see module doc)."""

    def __init__(self, agents: Sequence[Agent], config: EngineConfig = EngineConfig()):
        self.agents = list(agents)
        if not self.agents:
            raise ValueError("Cascade: the pool is empty")
        names = [agent.name for agent in self.agents]
        if len(set(names)) != len(names):
            raise ValueError(f"Cascade: agent names must be distinct, got {names}")
        self.config = config
        self.costs = {agent.name: float(agent.cost) for agent in self.agents}
        self.families = {agent.name: agent.family for agent in self.agents}

    @property
    def names(self) -> list[str]:
        return [agent.name for agent in self.agents]

    def prompt_alpha(self, stage: int, alpha: float) -> float | None:
        """Scenario of stage ``stage``'s prompt: α, except the last agent's plain prompt."""
        return None if stage == len(self.agents) - 1 else alpha

    def pipelined(self, num_micro_batches: int) -> bool:
        mode = self.config.pipeline
        if mode == "off" or len(self.agents) == 1:
            return False
        if mode == "on":
            return True
        return num_micro_batches > 1 and disjoint_placement(self.agents)

    def run(self, queries: Sequence[Query], alpha: float) -> CascadeRun:
        queries = list(queries)
        keys = [q.key for q in queries]
        if len(set(keys)) != len(keys):
            raise ValueError("Cascade.run: duplicate (dataset, query_id) among the queries")
        replies: dict[int, list[Reply]] = {i: [] for i in range(len(queries))}
        last = len(self.agents) - 1

        def stage(k: int):
            def work(pending: list[int]) -> list[int]:
                got = agent_replies(self.agents[k], [queries[i] for i in pending], self.prompt_alpha(k, alpha),
                                    self.config)
                for i, reply in zip(pending, got):
                    replies[i].append(reply)  # one stage touches a query at a time
                return [] if k == last else [i for i, reply in zip(pending, got) if reply.refused]
            return work

        batches = micro_batches(len(queries), self.config.micro_batch_size)
        threaded = self.pipelined(len(batches))
        run_stages([stage(k) for k in range(len(self.agents))], batches, threaded=threaded)
        records = tuple(self._record(queries[i], alpha, replies[i]) for i in range(len(queries)))
        return CascadeRun(alpha, records, tuple(tuple(replies[i]) for i in range(len(queries))), threaded)

    def _record(self, query: Query, alpha: float, replies: Sequence[Reply]) -> RoutingRecord:
        final = replies[-1]
        last = self.agents[-1].name
        # A refusal's correctness is unknown (no forced answer here), except the last agent's: its
        # reply already is the plain-prompt (forced) answer, and a refusal is wrong.
        visited = tuple(Visit(r.agent, r.decision, r.correct if not r.refused else (False if r.agent == last else None),
                              self.families[r.agent])
                        for r in replies)
        return RoutingRecord(
            query_id=query.query_id, dataset=query.dataset, alpha=alpha, visited=visited,
            final_agent=final.agent, response=final.response, correct=final.correct and not final.refused,
            cost=routing_cost([r.agent for r in replies], self.costs, self.config.cost_mode),
            domain=query.domain, method=DISROUTER, forced_refusal=final.refused,
        )


# ----------------------------------------------------------------------------- all-agents mode

PLAIN = "plain"


def mode_key(alpha: float | None) -> str:
    """Text key of a prompt mode: "plain" or the α ("0.2")."""
    return PLAIN if alpha is None else f"{round(float(alpha), 6):g}"


def all_agents_replies(agents: Sequence[Agent], queries: Sequence[Query], alphas: Sequence[float],
                       config: EngineConfig, *, forced: bool = True, store=None) -> dict[str, dict[str, list[Reply]]]:
    """``{mode_key: {agent: replies}}`` with every query through every agent.

    Non-last agents at every α; the plain prompt for the last agent (what the cascade gives it)
    and, with ``forced``, for every other agent too (its forced answer: the self-assessment label
    of its refusals and the reply central routers and single-agent baselines see). Agents on
    disjoint devices run concurrently. ``store`` (a ``reply_store.ReplyStore``) reuses and saves
    replies, so an interrupted or repeated run only generates what is missing.
    """
    jobs: list[tuple[str, Agent, float | None]] = []
    last = len(agents) - 1
    for k, agent in enumerate(agents):
        if forced or k == last:
            jobs.append((PLAIN, agent, None))
        if k != last:
            jobs += [(mode_key(alpha), agent, alpha) for alpha in alphas]
    threaded = disjoint_placement(agents) and len(agents) > 1
    by_agent = {agent.name: [job for job in jobs if job[1] is agent] for agent in agents}

    def replies_of(agent: Agent, alpha: float | None) -> list[Reply]:
        if store is None:
            return agent_replies(agent, queries, alpha, config)
        return store.replies(agent, queries, alpha, config)

    def agent_job(name: str):
        return lambda: [(mode, a.name, replies_of(a, alpha)) for mode, a, alpha in by_agent[name]]

    result: dict[str, dict[str, list[Reply]]] = {}
    for per_agent in run_parallel([agent_job(agent.name) for agent in agents], threaded=threaded):
        for mode, name, replies in per_agent:
            result.setdefault(mode, {})[name] = replies
    return result


def _outcome(reply: Reply, forced_reply: Reply | None) -> AgentOutcome:
    forced_correct = None
    if reply.refused and forced_reply is not None:
        forced_correct = forced_reply.correct and not forced_reply.refused
    return AgentOutcome(reply.agent, reply.decision, reply.correct and not reply.refused, forced_correct,
                        reply.answer_features, reply.response)


def outcome_rows(queries: Sequence[Query], alpha: float, pool: Sequence[str],
                 scenario: Mapping[str, Sequence[Reply]], plain: Mapping[str, Sequence[Reply]]) -> list[OutcomeRow]:
    """The outcome table at α exactly as the cascade sees the pool: every agent's reply under α,
    except the last agent's plain reply; refusals carry the plain reply's correctness as
    ``forced_correct`` when ``plain`` has that agent (for the last agent: its own reply, so a
    final refusal is labelled wrong). Replaying it reproduces the engine."""
    rows = []
    last = pool[-1]
    for i, query in enumerate(queries):
        outcomes = []
        for name in pool:
            reply = plain[name][i] if name == last else scenario[name][i]
            # The last agent's reply is its forced answer already.
            forced = plain[name][i] if name in plain else None
            outcomes.append(_outcome(reply, forced))
        rows.append(OutcomeRow(query.query_id, query.dataset, alpha, tuple(outcomes), query.domain))
    return rows


def plain_outcome_rows(queries: Sequence[Query], alpha: float, pool: Sequence[str],
                       plain: Mapping[str, Sequence[Reply]]) -> list[OutcomeRow]:
    """Every agent's plain-prompt reply, keyed at α: the agents as ordinary LLMs, for the
    single-agent baselines and central routers (the same replies at every α)."""
    return [OutcomeRow(q.query_id, q.dataset, alpha, tuple(_outcome(plain[name][i], None) for name in pool), q.domain)
            for i, q in enumerate(queries)]
