"""Command line for the toy agent pool.

    python -m disrouter_jax.toy build --out DIR [--reduced] [--mixed] [--seed N] [--overwrite] [--quiet] [--workers N]
    python -m disrouter_jax.toy show --out DIR

`build` builds (or reuses, or completes) the pool in DIR and prints one line per agent: name,
parameters, cost, held-out accuracy per task family, build time. `show` prints the same table for
an existing pool.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from disrouter_jax import runtime
from disrouter_jax.toy.pool import PoolConfig, PoolError, build_pool, load_pool


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m disrouter_jax.toy", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build (or reuse / complete) a toy pool")
    build.add_argument("--out", required=True, help="pool directory (created if absent)")
    build.add_argument("--reduced", action="store_true", help="the small test-sized pool (PoolConfig.reduced)")
    build.add_argument("--mixed", action="store_true",
                       help="a mixed pool: its second agent a Llama with a Llama-3 tokenizer (PoolConfig mixed=True)")
    build.add_argument("--seed", type=int, default=0, help="world and pool seed (default 0)")
    build.add_argument("--overwrite", action="store_true",
                       help="replace agents built with a different config (otherwise an error)")
    build.add_argument("--quiet", action="store_true", help="no progress bars")
    build.add_argument("--workers", type=int, default=None,
                       help="agents pre-trained at once, one process each (default: 2 on 2+ cores)")
    show = commands.add_parser("show", help="print the table of an existing pool")
    show.add_argument("--out", required=True, help="pool directory")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "build":
            make = PoolConfig.reduced if args.reduced else PoolConfig.default
            config = make(seed=args.seed, mixed=args.mixed)
            started = time.perf_counter()
            pool = build_pool(args.out, config, progress=not args.quiet, overwrite=args.overwrite,
                              workers=args.workers)
            elapsed = time.perf_counter() - started
            print(pool.table())
            print(f"pool {pool.root} (config {pool.config_hash}) ready in {elapsed:.1f}s")
        else:
            pool = load_pool(args.out)
            print(pool.table())
    except (PoolError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    runtime.keep_freed_memory()  # the process is ours, not a library caller's
    sys.exit(main())
