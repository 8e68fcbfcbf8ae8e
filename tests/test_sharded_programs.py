"""The forward, SFT step, prefill and decode step compiled on 8-device meshes: exactly the
collectives the sharding plan implies, and no "Involuntary full rematerialization".

The plan (``sharding.py``): weights split over fsdp (embed) and tensor (heads, kv_heads, mlp,
vocab), activations over the batch's axes (data, fsdp). So each matmul gathers its weight over
fsdp (``ShardingContext.gather_weight``) and sums its partial products over tensor where it
contracts a tensor-split dimension; a weight's gradient is summed over the batch's axes. Anything
else (an activation gathered because the partitioner met two incompatible shardings, shards moved
around with collective-permutes or all-to-alls) breaks the exact counts below. Without the
weight gathers the (2, 2, 2) forward logged the rematerialisation for its embedding lookup
(replicating the ``[B, T, D]`` activations) and moved shards with a collective-permute.

Counted: the non-scalar operands of each collective (the compiler combines several collectives
into one tuple-shaped op, so ops are not the unit), keyed by (kind, devices per group). Scalars
(losses, norms, the decode loop's "any row running") are left out. One model: the "mha" tiny
checkpoint (3 layers, 4 heads, mlp 80, vocab 64, untied head), so that on ``tensor=8`` the heads
fall back to replication while the MLP and vocabulary are still split.
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import re
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from disrouter_jax import sharding
from disrouter_jax.generation import engine, inputs, sampling
from disrouter_jax.models import hf_io
from disrouter_jax.training.sft import make_sft_step
from disrouter_jax.training.state import create_train_state

from .training.conftest import SFT_OPTIM, sft_batch

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
_OP = re.compile(r"^\s*%\S+ = (?P<shape>\(.*?\)|\S+) (?P<op>" + "|".join(COLLECTIVES)
                 + r")(?:-start)?\((?P<rest>.*)$")
_ARRAY = re.compile(r"\b[a-z]+\d*\[([\d,]*)\]")
REMAT = "Involuntary full rematerialization"

L = 3  # layers of the "mha" checkpoint
BATCH, WIDTH, NEW = 8, 8, 8  # rows (2 per (data, fsdp) shard), prompt / sequence length, cache slots to decode


def group_size(rest: str, num_devices: int) -> int:
    """Devices per replica group, from any of the spellings XLA prints."""
    groups = re.search(r"replica_groups=(\{\{[\d,]*\}|\[[\d,]+\]<=|mesh\[[^\]]*\])", rest)
    if groups is None or rest.startswith("replica_groups={}"):
        return num_devices
    text = groups.group(1)
    if text.startswith("{{"):
        return len(text[2:-1].split(","))
    if text.startswith("["):
        return int(text[1:-3].split(",")[-1])
    sizes = {name: int(size) for name, size in re.findall(r"'(\w+)'=(\d+)", text)}
    named = re.search(r"\{('[^}]*')\}", rest[groups.end():].split(", to_apply")[0])
    axes = re.findall(r"'(\w+)'", named.group(1)) if named else list(sizes)
    return math.prod(sizes[a] for a in axes)


def collective_operands(hlo: str, num_devices: int) -> dict[tuple[str, int], int]:
    """{(kind, devices per group): number of non-scalar operands} of a compiled HLO module."""
    counts = collections.Counter()
    for line in hlo.splitlines():
        m = _OP.match(line)
        if m is None:
            continue
        size = group_size(m.group("rest"), num_devices)
        for dims in _ARRAY.findall(m.group("shape")):
            if dims:
                counts[(m.group("op"), size)] += 1
    return dict(counts)


@contextlib.contextmanager
def stderr_to(path):
    """XLA logs from C++ straight to file descriptor 2; point it at ``path`` meanwhile."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "wb") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def fast_compile(lowered):
    """O0 LLVM: the collectives are placed by XLA's HLO passes, which run as ever; only the
    machine code is less optimised (and compiles in about half the time)."""
    return lowered.compile(compiler_options={"xla_backend_optimization_level": 0})


def compile_programs(ckpt, mesh) -> tuple[dict[str, str], str]:
    """The compiled HLO text of each program, and what XLA logged while compiling them."""
    model = hf_io.from_pretrained(ckpt, mesh=mesh)
    vocab = model.config.vocab_size
    ids = jnp.zeros((BATCH, WIDTH), jnp.int32)
    placement = inputs.Placement(model, None)
    graphdef, state = nnx.split(model)
    prompt_bt = placement.batch(np.ones((BATCH, WIDTH), np.int32))
    mask_bt = placement.batch(np.ones((BATCH, WIDTH), np.bool_))
    prefill = engine._prefill_program()
    prefill_kw = dict(cache_length=WIDTH + NEW, samples_per_row=1, cache_dtype=jnp.float32)
    scalars = dict(seed=np.uint32(0), temperature=np.float32(1), top_p=np.float32(1),
                   stop_ids_s=np.full(4, -1, np.int32), max_new_tokens=np.int32(NEW))
    scalars = {k: placement.replicated(v) for k, v in scalars.items()}
    rows = lambda x: placement.batch(np.asarray(x))  # noqa: E731
    hlo = {}
    with tempfile.NamedTemporaryFile(suffix=".log") as log:
        with stderr_to(log.name):
            hlo["forward"] = fast_compile(nnx.jit(lambda m, x: m(x)).lower(model, ids)).as_text()
            prefill = fast_compile(prefill.lower(graphdef, state, prompt_bt, mask_bt, **prefill_kw))
            hlo["prefill"] = prefill.as_text()
            cache, logits_bv, position_b = prefill(state, prompt_bt, mask_bt)  # graphdef: static
            hlo["decode"] = fast_compile(engine._decode_program(BATCH).lower(
                graphdef, state, cache, logits_bv, position_b, rows(np.ones(BATCH, np.bool_)),
                rows(np.arange(BATCH, dtype=np.int32)), rows(np.zeros(BATCH, np.int32)), **scalars,
                stream_id=placement.replicated(np.int32(-1)), buffer_length=NEW,
                mode=sampling.SamplingMode.from_params(0.0, 0, 1.0), early_stop=None, stream=False,
            )).as_text()
            train = create_train_state(model, SFT_OPTIM)
            step = make_sft_step(SFT_OPTIM)
            hlo["sft_step"] = fast_compile(step.lower(train, sft_batch(rows=BATCH, vocab=vocab))).as_text()
        logged = open(log.name, errors="replace").read()
    return hlo, logged


# (kind, devices per group) -> non-scalar operands, for L layers.
PLANS = {
    # fsdp = tensor = 2; the batch's axes (data, fsdp) = 4 devices.
    (2, 2, 2): {
        "forward": {
            # Per layer q, k, v, o, gate, up, down; then the embedding table and the untied head.
            ("all-gather", 2): 7 * L + 2,
            # Per layer the attention output and the MLP's down projection (each contracts a
            # tensor-split dimension); the vocab-split embedding lookup.
            ("all-reduce", 2): 2 * L + 1,
        },
        "prefill": {
            # Two passes (the prompt but its last token, then the last token) share each weight
            # gather; the next-token logits are gathered over the vocabulary's tensor shards.
            ("all-gather", 2): 7 * L + 2 + 1,
            # Per pass as the forward, except that the first pass's last layer only writes the
            # cache (its attention output and MLP feed logits nobody reads).
            ("all-reduce", 2): 2 * (2 * L + 1) - 2,
        },
        "decode": {
            # The loop body: weights gathered once per step as in the forward.
            ("all-gather", 2): 7 * L + 2,
            # Per layer as the forward; the lookup; the greedy pick and its log-prob over the
            # vocabulary's shards: one max (shared, sampling.greedy_tokens), the first index
            # holding it, the sum of exponentials, the picked logit.
            ("all-reduce", 2): 2 * L + 1 + 4,
        },
        "sft_step": {
            ("all-gather", 2): 7 * L + 2,  # gathered in the forward, kept for the backward
            # Forward: as above. Backward: per layer the input gradients of q, k, v, gate, up
            # (each a partial sum over its tensor-split output) and the head's; the loss over the
            # vocabulary's shards (log-sum-exp: max and sum; the target logit; the greedy hit).
            ("all-reduce", 2): (2 * L + 1) + 5 * L + 1 + 5,
            # Every gradient summed over the batch's shards: per layer 7 matrices, 2 norm scales,
            # 3 biases; the embedding, the head and the final norm.
            ("all-reduce", 4): 12 * L + 3,
        },
    },
    # tensor = 8 over 4 heads: attention replicated (no partial sums, no gathers), MLP and
    # vocabulary split; the batch's axes have one device, so no gathers and no gradient sums.
    (1, 1, 8): {
        "forward": {("all-reduce", 8): L + 1},
        "prefill": {("all-gather", 8): 1, ("all-reduce", 8): 2 * (L + 1) - 1},
        "decode": {("all-reduce", 8): L + 1 + 4},
        "sft_step": {("all-reduce", 8): (L + 1) + 2 * L + 1 + 5},
    },
}


@pytest.fixture(scope="module", params=sorted(PLANS, reverse=True), ids=lambda s: "x".join(map(str, s)))
def compiled(request, tiny_checkpoint):
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 devices (tests/conftest.py sets --xla_force_host_platform_device_count=8)")
    data, fsdp, tensor = request.param
    mesh = sharding.make_mesh(sharding.MeshConfig(data=data, fsdp=fsdp, tensor=tensor), devices=jax.devices()[:8])
    hlo, logged = compile_programs(tiny_checkpoint("mha"), mesh)
    return request.param, hlo, logged


@pytest.mark.parametrize("program", ["forward", "prefill", "decode", "sft_step"])
def test_programs_hold_only_the_planned_collectives(compiled, program):
    mesh_shape, hlo, logged = compiled
    assert REMAT not in logged, logged[logged.index(REMAT) - 200:][:1500]
    assert collective_operands(hlo[program], 8) == PLANS[mesh_shape][program]


def test_group_sizes_of_every_spelling():
    assert group_size("replica_groups={{0,1},{2,3},{4,5},{6,7}}, to_apply=%add", 8) == 2
    assert group_size("replica_groups=[4,2]<=[4,2]T(1,0), dimensions={0}", 8) == 2
    assert group_size("replica_groups=mesh['axis_0'=4,'axis_1'=2] {'axis_0'}, to_apply=%r", 8) == 4
    assert group_size("replica_groups=mesh['axis_0'=2,'axis_1'=1,'axis_2'=4], device_ids=([4,2]T(1,0)) "
                      "{'axis_0','axis_2'}, to_apply=%add", 8) == 8
    assert group_size("replica_groups=mesh['a'=2,'b'=4], to_apply=%r", 8) == 8
    assert group_size("replica_groups={}, to_apply=%r", 8) == 8
