"""Every agent's replies to the evaluation's queries, on one process or many alike.

Each process generates its contiguous block of the queries with the whole pool on its own devices
and the blocks are gathered back in query order (``distributed.work.map_over_processes``); on one
process the block is every query. Replies are cached per workdir (``reply_store``) only when one
process writes them: several would each append their own block to the same files.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax

from disrouter_jax.cascade import engine
from disrouter_jax.cascade.reply_store import ReplyStore
from disrouter_jax.distributed import work

# Under this key ``all_replies`` keeps the baseline pool's plain-prompt replies.
BASE_PLAIN = "base_plain"


def reply_stores(workdir) -> dict[str, ReplyStore | None]:
    """The caches of the evaluated pool ("replies") and of the untrained one ("base_replies")."""
    names = ("replies", "base_replies")
    if jax.process_count() > 1:
        return dict.fromkeys(names)
    return {name: ReplyStore(workdir / "eval" / name) for name in names}


def pool_replies(agents, queries: Sequence[engine.Query], alphas: Sequence[float], config: engine.EngineConfig,
                 store: ReplyStore | None) -> dict[str, dict[str, list[engine.Reply]]]:
    """``engine.all_agents_replies`` (forced answers included) over every process's block."""

    def per_query(block):
        replies = engine.all_agents_replies(agents, block, alphas, config, forced=True, store=store)
        return [{mode: {name: r[i] for name, r in by_agent.items()} for mode, by_agent in replies.items()}
                for i in range(len(block))]

    rows = work.map_over_processes(per_query, queries)
    return {mode: {name: [row[mode][name] for row in rows] for name in rows[0][mode]} for mode in rows[0]}


def all_replies(agents, base_agents, queries, alphas, config, stores) -> dict[str, dict[str, list[engine.Reply]]]:
    """Every agent's replies, and the baseline pool's plain replies under :data:`BASE_PLAIN`
    (``base_agents`` is ``agents`` when the baselines use the evaluated pool)."""
    replies = pool_replies(agents, queries, alphas, config, stores["replies"])
    replies[BASE_PLAIN] = (pool_replies(base_agents, queries, (), config, stores["base_replies"])[engine.PLAIN]
                           if base_agents is not agents else replies[engine.PLAIN])
    return replies
