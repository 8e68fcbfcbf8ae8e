"""The only place the project reaches into JAX's private modules (``jax._src``).

JAX has no public API for either of the two things needed here; keeping both in one module means a
JAX upgrade that moves them breaks one file, and its tests (``tests/test_distributed.py``) say so.
"""

from __future__ import annotations


def coordination_state():
    """JAX's coordination-service state (``jax._src.distributed.global_state``).

    Why private: the service's key-value store and named barriers, with timeouts, are what lets
    processes exchange Python objects and wait for each other with an error instead of a hang.
    The public ``jax.experimental.multihost_utils`` offers only device collectives (arrays only,
    no timeout), and ``jax.distributed`` only starts and stops the service. Its ``client`` is None
    until ``jax.distributed.initialize`` has run.
    """
    from jax._src import distributed

    return distributed.global_state


def cluster_detectors():
    """JAX's cluster environments (``jax._src.clusters.ClusterEnv``), in its detection order.

    Why private: ``jax.distributed.initialize`` runs these detectors itself but either starts the
    job or raises; deciding beforehand whether a run is one process (a no-op, with no coordinator
    to wait for) needs the detectors' answers without that side effect.
    """
    from jax._src import clusters

    return clusters.ClusterEnv._cluster_types
