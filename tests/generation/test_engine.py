"""generate() against transformers, the full forward pass, and itself (seeds, batching, meshes)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import AutoModelForCausalLM

from disrouter_jax import sharding
from disrouter_jax.generation import TRACE_COUNTS, BucketConfig, generate, plan_batches
from disrouter_jax.models import hf_io, qwen2
from tests.conftest import build_hf_checkpoint

# Different lengths, so the batch is left-padded; all within one 16-token bucket.
PROMPTS = [[5, 17, 3], [8, 2, 40, 1, 6, 30, 21, 9, 11],
           [4, 4, 7, 1, 2, 3, 9, 8, 60, 12, 13, 14, 2, 3], [77, 12, 5, 19, 23]]
NEW = 12


@pytest.fixture(scope="module")
def gqa2(tiny_checkpoint):
    ckpt = tiny_checkpoint("gqa2")
    return ckpt, qwen2.from_pretrained(ckpt)


def hf_greedy(ckpt, prompts, max_new_tokens, eos_token_id=None, min_margin=None) -> list[list[int]]:
    """transformers greedy on the left-padded batch, each row cut after its first eos (None: no
    eos, whatever the family's default). ``min_margin``: assert every greedy pick led the
    runner-up by that much, so a match never rests on the last bits of a near tie."""
    model = AutoModelForCausalLM.from_pretrained(ckpt).eval()
    model.generation_config.eos_token_id = None  # e.g. Llama's and Mistral's default eos 2
    longest = max(map(len, prompts))
    ids = torch.tensor([[0] * (longest - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                             max_new_tokens=max_new_tokens, eos_token_id=eos_token_id,
                             pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    if min_margin is not None:
        top2 = torch.stack(out.scores, 1).topk(2, dim=-1).values  # [B, N, 2]
        margin = float((top2[..., 0] - top2[..., 1]).min())
        assert margin > min_margin, f"{ckpt}: a greedy pick leads by only {margin:.2e}"
    rows = []
    for row in out.sequences[:, longest:].tolist():
        if eos_token_id is not None and eos_token_id in row:
            row = row[: row.index(eos_token_id) + 1]
        rows.append(row)
    return rows


def pick_stop_token(rows: list[list[int]]) -> int:
    """A token that greedy emits early in some row while another row never emits it."""
    for position in range(1, 6):
        for row in rows:
            token = row[position]
            if token in row[:position]:
                continue
            if any(token not in other for other in rows):
                return token
    raise AssertionError(f"no usable stop token in {rows}")


@pytest.mark.parametrize("name", ["qwen3_tied_gqa3", "llama3_gqa4", "mistral_window3"])
def test_greedy_matches_transformers_per_family(tiny_checkpoint, name):
    """Token for token what transformers' generate picks, for a tied Qwen3, a Llama with llama3
    RoPE, and Mistral with a window shorter than most prompts."""
    ckpt = tiny_checkpoint(name)
    reference = hf_greedy(ckpt, PROMPTS, NEW, min_margin=1e-3)
    ours = generate(hf_io.from_pretrained(ckpt), PROMPTS, max_new_tokens=NEW, stop_token_ids=())
    assert [g[0].token_list for g in ours] == reference


@pytest.mark.parametrize("name", ["gqa2", "tied_gqa7"])
def test_greedy_matches_transformers_with_early_stop(tiny_checkpoint, name):
    ckpt = tiny_checkpoint(name)
    model = qwen2.from_pretrained(ckpt)
    free_run = hf_greedy(ckpt, PROMPTS, NEW)
    ours = generate(model, PROMPTS, max_new_tokens=NEW, stop_token_ids=())
    assert [g[0].token_list for g in ours] == free_run
    assert {g[0].finish_reason for g in ours} == {"length"}

    stop = pick_stop_token(free_run)
    reference = hf_greedy(ckpt, PROMPTS, NEW, eos_token_id=stop)
    ours = generate(model, PROMPTS, max_new_tokens=NEW, stop_token_ids=[stop], include_stop=True)
    assert [g[0].token_list for g in ours] == reference
    reasons = ["stop" if row[-1] == stop else "length" for row in reference]
    assert [g[0].finish_reason for g in ours] == reasons
    assert "stop" in reasons and "length" in reasons and min(map(len, reference)) < NEW
    # Without include_stop the stop token is only reported on the side.
    excluded = generate(model, PROMPTS, max_new_tokens=NEW, stop_token_ids=[stop])
    for with_stop, without in zip(ours, excluded):
        g, h = with_stop[0], without[0]
        if g.finish_reason == "stop":
            assert h.token_list == g.token_list[:-1] and h.stop_token == stop == g.stop_token
            np.testing.assert_array_equal(h.logprobs, g.logprobs[:-1])
        else:
            assert h.token_list == g.token_list and h.stop_token is None


def full_forward_logprobs(model, pairs, temperature=1.0) -> list[np.ndarray]:
    """Log-probs of each continuation from one forward pass over prompt + continuation.

    Sequences are right-padded into one batch (causal attention: padding after a sequence cannot
    change it) and run in a single jitted call.
    """
    length = max(len(p) + len(t) for p, t in pairs)
    ids = np.zeros((len(pairs), length), np.int32)
    for row, (prompt, tokens) in enumerate(pairs):
        ids[row, : len(prompt) + len(tokens)] = list(prompt) + list(tokens)
    logits = np.asarray(nnx.jit(lambda m, x: m(x))(model, jnp.asarray(ids)))
    logprobs = np.asarray(jax.nn.log_softmax(logits / temperature, axis=-1))
    out = []
    for row, (prompt, tokens) in enumerate(pairs):
        positions = np.arange(len(prompt) - 1, len(prompt) + len(tokens) - 1)
        out.append(logprobs[row, positions, np.asarray(tokens, int)])
    return out


def test_logprobs_match_the_full_forward_pass(gqa2):
    _, model = gqa2
    kw = dict(max_new_tokens=NEW, temperature=0.8, num_samples=2, seed=1)
    # A stop token this sampler emits (same seed, so the runs agree up to the stop).
    stop = generate(model, PROMPTS, stop_token_ids=(), **kw)[0][0].token_list[3]
    out = generate(model, PROMPTS, stop_token_ids=[stop], include_stop=True, **kw)
    assert out[0][0].finish_reason == "stop" and out[0][0].token_list[-1] == stop
    generations = [(prompt, g) for prompt, samples in zip(PROMPTS, out) for g in samples]
    expected = full_forward_logprobs(model, [(p, g.tokens) for p, g in generations])
    expected_tempered = full_forward_logprobs(model, [(p, g.tokens) for p, g in generations], 0.8)
    for (_, g), want, want_tempered in zip(generations, expected, expected_tempered):
        assert g.logprobs.dtype == np.float32 and len(g.logprobs) == len(g.tokens)
        np.testing.assert_allclose(g.logprobs, want, atol=1e-4)
        np.testing.assert_allclose(g.sampling_logprobs, want_tempered, atol=1e-4)


def test_sampling_is_reproducible_and_independent_of_batching(gqa2):
    _, model = gqa2
    kw = dict(max_new_tokens=NEW, temperature=1.0, num_samples=2, stop_token_ids=())
    tokens = lambda out: [[g.token_list for g in s] for s in out]  # noqa: E731
    first = tokens(generate(model, PROMPTS, seed=7, **kw))
    assert first == tokens(generate(model, PROMPTS, seed=7, **kw))
    assert first != tokens(generate(model, PROMPTS, seed=8, **kw))
    # Samples of a prompt differ from each other (the cache is shared, the keys are not).
    assert all(len({tuple(s) for s in samples}) > 1 for samples in first)
    # Same (seed, prompt, sample) -> same tokens, whatever the batch layout.
    split = tokens(generate(model, PROMPTS, seed=7, max_batch_size=2, **kw))
    assert split == first
    # More samples than fit in a batch: split over several prefills, same keys per sample.
    kw["num_samples"] = 3
    more = tokens(generate(model, PROMPTS, seed=7, max_batch_size=2, **kw))
    assert [samples[:2] for samples in more] == first
    assert all(len(samples) == 3 for samples in more)


def test_key_ids_make_a_sample_independent_of_its_batch_mates(gqa2):
    _, model = gqa2
    kw = dict(max_new_tokens=NEW, temperature=1.0, stop_token_ids=(), seed=0)
    tokens = lambda out: [s[0].token_list for s in out]  # noqa: E731
    together = tokens(generate(model, PROMPTS, key_ids=[11, 12, 13, 14], **kw))
    # Prompt 2 alone, or first in another batch, with its key id: the same sample.
    assert tokens(generate(model, [PROMPTS[2]], key_ids=[13], **kw)) == [together[2]]
    assert tokens(generate(model, [PROMPTS[2], PROMPTS[0]], key_ids=[13, 99], **kw))[0] == together[2]
    # Without key ids the key follows the prompt's index, so moving it changes the sample.
    assert tokens(generate(model, [PROMPTS[2]], **kw)) != [together[2]]
    with pytest.raises(ValueError, match="key_ids"):
        generate(model, PROMPTS, key_ids=[1, 2], **kw)
    with pytest.raises(ValueError, match=r"key_ids must be in \[0, 2\*\*31\)"):
        generate(model, PROMPTS[:1], key_ids=[-3], **kw)


def test_low_temperature_equals_greedy(gqa2):
    _, model = gqa2
    greedy = generate(model, PROMPTS, max_new_tokens=NEW, stop_token_ids=())
    cold = generate(model, PROMPTS, max_new_tokens=NEW, temperature=1e-6, seed=3, num_samples=2,
                    stop_token_ids=())
    assert [[g.token_list for g in s] for s in cold] == [[g[0].token_list] * 2 for g in greedy]


def controlled_model(probs_v: np.ndarray, ckpt_dir) -> qwen2.Qwen2:
    """A Qwen2 whose next-token distribution is ``probs_v`` whatever the context.

    Every token embeds to the same one-hot vector and the attention/MLP outputs are zeroed, so
    the final hidden state is that vector scaled by RMSNorm to sqrt(D) (norm scales set to 1);
    the LM head row then writes log(probs) as the logits. Weights are set from numpy on a loaded
    checkpoint, which compiles nothing.
    """
    d = 8
    build_hf_checkpoint(ckpt_dir, vocab_size=len(probs_v), hidden_size=d, intermediate_size=8,
                        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    model = qwen2.from_pretrained(ckpt_dir)
    put = lambda variable, value: variable.set_value(jnp.asarray(value, jnp.float32))  # noqa: E731
    zeros = lambda variable: np.zeros(variable.get_value().shape)  # noqa: E731
    embedding = np.zeros((len(probs_v), d))
    embedding[:, 0] = 1.0
    put(model.embedding_vd, embedding)
    put(model.final_norm.scale_d, np.ones(d))
    for layer in model.layers:
        put(layer.attn.o_weight_nhd, zeros(layer.attn.o_weight_nhd))
        put(layer.mlp.down_weight_fd, zeros(layer.mlp.down_weight_fd))
    head = np.zeros((d, len(probs_v)))
    head[0] = np.log(probs_v) / np.sqrt(d)
    put(model.lm_head_dv, head)
    return model


def test_top_k_top_p_restrict_the_support_of_a_controlled_model(tmp_path):
    probs = np.array([0.35, 0.25, 0.15, 0.1, 0.05, 0.04, 0.03, 0.02, 0.01])
    model = controlled_model(probs, tmp_path)
    # top_k=4 alone would allow {0, 1, 2, 3}, and so would top_p=0.8 alone (mass before token 3
    # is 0.75); the nucleus of the top-4 renormalised (0.41, 0.29, 0.18, 0.12) is {0, 1, 2}.
    out = generate(model, [[1, 2], [3]], max_new_tokens=16, num_samples=16, temperature=1.0,
                   top_k=4, top_p=0.8, stop_token_ids=(), seed=0)
    drawn = np.concatenate([g.tokens for samples in out for g in samples])
    assert len(drawn) == 2 * 16 * 16
    assert set(drawn.tolist()) == {0, 1, 2}
    expected = probs[:3] / probs[:3].sum()
    np.testing.assert_allclose(np.bincount(drawn) / len(drawn), expected, atol=0.06)
    # The reported log-probs are the model's (so its distribution is the one we set), not the
    # truncated sampling distribution's.
    for samples in out:
        for g in samples:
            np.testing.assert_allclose(g.logprobs, np.log(probs[g.tokens]), atol=1e-4)


def test_early_stop_predicate_and_loop_exit(gqa2):
    _, model = gqa2
    out = generate(model, PROMPTS, max_new_tokens=NEW, stop_token_ids=())
    greedy = [g[0].token_list for g in out]
    first_of_row0 = greedy[0][0]
    steps_seen = []

    def stop_early(tokens_bn, num_generated):
        """Rows that began like row 0 stop after 2 tokens, all others after 3."""
        jax.debug.callback(lambda n: steps_seen.append(int(n)), num_generated)
        limit_b = jnp.where(tokens_bn[:, 0] == first_of_row0, 2, 3)
        return num_generated >= limit_b

    out = generate(model, PROMPTS, max_new_tokens=NEW, stop_token_ids=(), early_stop=stop_early)
    for ours, reference in zip(out, greedy):
        g = ours[0]
        assert g.finish_reason == "early_stop"
        assert g.token_list == reference[: 2 if reference[0] == first_of_row0 else 3]
    assert any(r[0] != first_of_row0 for r in greedy)
    # The loop exited once every row was done, not after max_new_tokens steps.
    assert max(steps_seen) == 3 < NEW


def test_compilations_are_bounded_by_the_buckets(gqa2):
    _, model = gqa2
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, 97, size=n).tolist() for n in rng.integers(1, 65, size=100)]
    kw = dict(max_new_tokens=3, stop_token_ids=(), max_batch_size=16)
    plan = plan_batches([len(p) for p in prompts], num_samples=1, max_new_tokens=3,
                        max_batch_size=16, buckets=BucketConfig())
    length_buckets = {b.prompt_length for b in plan.batches}
    assert len(plan.batches) == 7 and length_buckets == {16, 32, 64}

    before = TRACE_COUNTS.copy()
    out = generate(model, prompts, **kw)
    compiled = TRACE_COUNTS - before
    assert compiled["prefill"] <= len(length_buckets)
    assert compiled["decode"] <= len(length_buckets)
    before = TRACE_COUNTS.copy()
    again = generate(model, prompts, **kw)
    assert [g[0].token_list for g in again] == [g[0].token_list for g in out]
    assert TRACE_COUNTS - before == {}  # nothing new the second time

    # Padding to a bucket and batching with other prompts do not change a prompt's tokens.
    some = [i for i, p in enumerate(prompts) if len(p) <= 16][:3]
    alone = generate(model, [prompts[i] for i in some], **kw)
    assert [g[0].token_list for g in alone] == [out[i][0].token_list for i in some]


def test_eight_device_mesh_matches_one_device(gqa2):
    ckpt, model = gqa2
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 devices (tests/conftest.py asks XLA for 8 host devices)")
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=2, tensor=2))
    sharded = qwen2.from_pretrained(ckpt, mesh=mesh)
    tokens = lambda out: [[g.token_list for g in s] for s in out]  # noqa: E731
    for kw in (dict(), dict(temperature=1.0, num_samples=2, seed=5)):
        single = generate(model, PROMPTS, max_new_tokens=NEW, stop_token_ids=(), **kw)
        spread = generate(sharded, PROMPTS, max_new_tokens=NEW, stop_token_ids=(), **kw)
        assert tokens(spread) == tokens(single)
    # An unsharded model run on an explicitly given mesh is replicated there.
    greedy = generate(model, PROMPTS, max_new_tokens=NEW, stop_token_ids=())
    replicated = generate(model, PROMPTS, max_new_tokens=NEW, stop_token_ids=(), mesh=mesh)
    assert tokens(replicated) == tokens(greedy)


@pytest.mark.parametrize("prompts, match", [
    ([[]], r"prompts\[0\]: expected a non-empty"),
    ([[1, 2], [3, 500]], r"prompts\[1\]: token ids must be in \[0, 97\)"),
    ([1, 2, 3], "sequence of token-id sequences"),
])
def test_bad_prompts_are_rejected(gqa2, prompts, match):
    _, model = gqa2
    with pytest.raises((ValueError, TypeError), match=match):
        generate(model, prompts, max_new_tokens=2)


def test_progress_bar_only_on_a_terminal_and_for_several_batches(monkeypatch):
    from disrouter_jax.generation import engine

    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    assert engine._progress_bar(5, None).disable
    assert not engine._progress_bar(5, True).disable
    assert engine._progress_bar(1, True).disable  # a single batch needs no bar
    assert engine._progress_bar(5, False).disable


def test_small_and_large_decode_batches_take_their_programs_and_agree(gqa2, monkeypatch):
    """The CPU's dot backend follows runtime.xla_dots_win: on AVX2 XLA's own dots up to 32 decode
    rows and for the prefill, on AVX-512 only up to 2 rows; both programs give the same greedy
    tokens."""
    from disrouter_jax import runtime
    from disrouter_jax.generation import engine

    for flags, narrow_rows, prefill in ((frozenset({"avx2"}), 32, engine._prefill),
                                        (frozenset({"avx2", "avx512f"}), 2, engine._prefill.default)):
        monkeypatch.setattr(runtime, "cpu_flags", lambda flags=flags: flags)
        assert engine._decode_program(narrow_rows) is engine._decode_jit
        assert engine._decode_program(narrow_rows + 1) is engine._decode_jit.default
        assert engine._prefill_program() is prefill
    monkeypatch.undo()
    _, model = gqa2
    prompts = [PROMPTS[i % len(PROMPTS)][: 2 + i % 9] for i in range(40)]
    wide = generate(model, prompts, max_new_tokens=6, stop_token_ids=(), max_batch_size=64)
    narrow = generate(model, prompts, max_new_tokens=6, stop_token_ids=(), max_batch_size=8)
    assert [g[0].token_list for g in wide] == [g[0].token_list for g in narrow]
    for a, b in zip(wide, narrow):
        np.testing.assert_allclose(a[0].logprobs, b[0].logprobs, atol=1e-5)


def test_bfloat16_sampling_of_many_rows_runs_on_one_cpu_device(gqa2):
    """The paper setup computes in bfloat16. On XLA:CPU a 16-row decode step once failed with
    "Unsupported element type for DotThunk::Execute: BF16 x BF16 = F32" (the attention scores);
    small batches took another dot backend and hid it."""
    ckpt, _ = gqa2
    model = hf_io.from_pretrained(ckpt, dtype=jnp.bfloat16, param_dtype=jnp.float32)
    out = generate(model, PROMPTS, max_new_tokens=4, temperature=1.0, num_samples=4, stop_token_ids=())
    assert [len(samples) for samples in out] == [4] * len(PROMPTS)
    assert all(len(g.tokens) == 4 for samples in out for g in samples)


def test_on_tokens_hears_each_running_row_every_step_and_changes_no_token(gqa2):
    _, model = gqa2
    kw = dict(max_new_tokens=NEW, temperature=1.0, stop_token_ids=(), key_ids=[1, 2, 3, 4], max_batch_size=2)
    tokens = lambda out: [s[0].token_list for s in out]  # noqa: E731
    plain = tokens(generate(model, PROMPTS, **kw))
    heard = {}

    def on_tokens(step, prompt_r, token_r):
        for prompt, token in zip(prompt_r.tolist(), token_r.tolist()):
            heard.setdefault(prompt, {})[step] = token

    # Two batches (max_batch_size=2): the prompt indices are the call's, not the batch's.
    streamed = tokens(generate(model, PROMPTS, on_tokens=on_tokens, split=nnx.split(model), **kw))
    assert streamed == plain
    assert [[heard[p][s] for s in sorted(heard[p])] for p in range(len(PROMPTS))] == plain
    with pytest.raises(ValueError, match="on_tokens needs stream=True"):
        generate(model, PROMPTS, on_tokens=on_tokens, stream=False, **kw)
