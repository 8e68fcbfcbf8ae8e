"""A reduced toy pool, built once per session (several tests and later stages can share it)."""

import pytest


@pytest.fixture(scope="session")
def reduced_pool(tmp_path_factory):
    """`Pool` of `PoolConfig.reduced()` built by `build_pool` into a session temp directory.

    Treat it as read-only: tests that delete or rebuild parts copy it first. Built with the default
    workers (two agents at once, each in its own process), so the partial-rebuild test, which
    rebuilds one agent in this process, also checks that both ways give the same bytes.
    """
    from disrouter_jax.toy.pool import PoolConfig, build_pool

    return build_pool(tmp_path_factory.mktemp("toy_pool"), PoolConfig.reduced(), progress=False)


@pytest.fixture(scope="session")
def mixed_pool(reduced_pool, tmp_path_factory):
    """`Pool` of `PoolConfig.reduced(mixed=True)`: a copy of the reduced pool rebuilt as the mixed
    one, so only its Llama agent (toy-s) is pre-trained; the Qwen2 agents' fingerprints are the
    reduced pool's and they are reused as they are. Read-only, like `reduced_pool`."""
    import shutil

    from disrouter_jax.toy.pool import PoolConfig, build_pool

    root = tmp_path_factory.mktemp("toy_pool_mixed") / "pool"
    shutil.copytree(reduced_pool.root, root)
    return build_pool(root, PoolConfig.reduced(mixed=True), progress=False, overwrite=True, workers=1)
