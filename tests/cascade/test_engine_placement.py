"""Placement on 8 CPU devices: agents on disjoint sub-meshes (pipelined) give exactly the results
of all agents on one 8-device mesh.

Shapes are chosen so each placement compiles few programs (micro-batches of 2 on 2-device
sub-meshes always round to a batch of 2), which keeps this test quick on a busy CPU.
"""

import jax
import pytest

from disrouter_jax import sharding
from disrouter_jax.agents import AgentSpec, load_agent
from disrouter_jax.cascade import engine
from tests.cascade import scripted_agents as sa

COSTS = (0.1, 0.5, 0.9)
QUERIES = [(level % 4, "42" if i % 3 else "7") for i, level in enumerate((0, 3, 1, 2, 2, 0, 3, 1, 1))]
SUB_MESHES = ((0, 1), (2, 3), (4, 5))

pytestmark = pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 (simulated) devices; tests/conftest.py sets them")


@pytest.fixture(scope="module")
def paths(scripted_ladder):
    return scripted_ladder


def load(paths, placement):
    mesh = sharding.make_mesh({"data": 1, "fsdp": -1, "tensor": 1}) if placement == "one_mesh" else None
    agents = []
    for k, (path, cost) in enumerate(zip(paths, COSTS)):
        devices = SUB_MESHES[k] if placement == "sub_meshes" else None
        agents.append(load_agent(AgentSpec(f"agent{k}", str(path), cost, devices=devices), mesh=mesh))
    return agents


@pytest.fixture(scope="module")
def placements(paths):
    return {placement: load(paths, placement) for placement in ("sub_meshes", "one_mesh")}


def test_sub_meshes_equal_one_mesh_and_pipelining_is_on(placements):
    qs = [engine.Query(e) for e in sa.make_queries(QUERIES)]
    config = engine.EngineConfig(max_new_tokens=12, micro_batch_size=2)
    sub, one = placements["sub_meshes"], placements["one_mesh"]
    assert [sorted(engine.device_set(a)) for a in sub] == [list(m) for m in SUB_MESHES]
    assert engine.disjoint_placement(sub)
    for agent, devices in zip(sub, SUB_MESHES):  # weights really live on each agent's own devices
        assert {d.id for d in agent.model.embedding_vd[...].sharding.device_set} == set(devices)
    assert not engine.disjoint_placement(one) and len(engine.device_set(one[0])) == 8
    got = engine.Cascade(sub, config).run(qs, alpha=0.5)
    want = engine.Cascade(one, config).run(qs, alpha=0.5)
    assert got.pipelined and not want.pipelined
    assert got.records == want.records
    assert [[(r.agent, r.response, r.num_tokens, r.finish_reason) for r in q] for q in got.replies] == \
        [[(r.agent, r.response, r.num_tokens, r.finish_reason) for r in q] for q in want.replies]
    # Sanity: the routing is the scripted one, so the comparison is not between empty runs.
    assert [len(r.visited) for r in want.records] == [len(sa.expected_route(lv, (0, 1, 2))) for lv, _ in QUERIES]


def test_all_agents_mode_runs_disjoint_agents_in_parallel_with_identical_results(placements):
    qs = [engine.Query(e) for e in sa.make_queries(QUERIES[:2])]
    config = engine.EngineConfig(max_new_tokens=12)
    parallel = engine.all_agents_replies(placements["sub_meshes"], qs, (0.5,), config)
    serial = engine.all_agents_replies(placements["one_mesh"], qs, (0.5,), config)
    assert parallel == serial
    assert set(parallel["0.5"]) == {"agent0", "agent1"} and set(parallel["plain"]) == {"agent0", "agent1", "agent2"}
