"""Shape bucketing and batch planning (pure host-side bookkeeping)."""

import pytest

from disrouter_jax.generation.buckets import BucketConfig, next_power_of_two, plan_batches, round_up


def test_round_up_powers_of_two_and_explicit_buckets():
    assert [next_power_of_two(n) for n in (1, 2, 3, 16, 17)] == [1, 2, 4, 16, 32]
    assert [round_up(n, None, 16) for n in (1, 16, 17, 100)] == [16, 16, 32, 128]
    assert [round_up(n, (8, 24), 1) for n in (1, 9, 24, 25, 49)] == [8, 24, 24, 48, 72]
    with pytest.raises(ValueError, match="size of 0"):
        round_up(0, None, 16)


@pytest.mark.parametrize("bad", [dict(min_prompt_length=0), dict(prompt_lengths=(32, 16)),
                                 dict(new_tokens=()), dict(new_tokens=(4, 4))])
def test_bucket_config_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="BucketConfig"):
        BucketConfig(**bad)


def test_plan_groups_similar_lengths_and_uses_one_batch_bucket():
    lengths = [5, 40, 7, 33, 12, 90, 3]
    plan = plan_batches(lengths, num_samples=1, max_new_tokens=10, max_batch_size=3,
                        buckets=BucketConfig())
    assert plan.samples_per_row == 1 and plan.new_tokens_length == 16
    assert [[u.prompt_index for u in b.units] for b in plan.batches] == [[5, 1, 3], [4, 2, 0], [6]]
    assert [b.prompt_length for b in plan.batches] == [128, 16, 16]
    # Several batches: the last one is padded to the full size, so one batch bucket per call.
    assert [b.batch_size for b in plan.batches] == [3, 3, 3]
    assert plan.cache_length(plan.batches[0]) == 128 + 16


def test_plan_single_batch_rounds_to_power_of_two_and_shards():
    plan = plan_batches([4, 4, 4], num_samples=1, max_new_tokens=1, max_batch_size=64,
                        buckets=BucketConfig())
    assert [b.batch_size for b in plan.batches] == [4]
    plan = plan_batches([4], num_samples=1, max_new_tokens=1, max_batch_size=64,
                        buckets=BucketConfig(), batch_multiple=4)
    assert plan.batches[0].batch_size == 4
    # 2 samples per prompt on 4 batch shards: 2 prefill rows make 4 decode rows.
    plan = plan_batches([4], num_samples=2, max_new_tokens=1, max_batch_size=64,
                        buckets=BucketConfig(), batch_multiple=4)
    assert plan.batches[0].batch_size == 2


def test_plan_splits_samples_beyond_the_batch_limit():
    plan = plan_batches([3, 9], num_samples=5, max_new_tokens=4, max_batch_size=2,
                        buckets=BucketConfig())
    assert plan.samples_per_row == 2
    units = [(u.prompt_index, u.first_sample) for b in plan.batches for u in b.units]
    assert units == [(1, 0), (1, 2), (1, 4), (0, 0), (0, 2), (0, 4)]
    assert all(len(b.units) == 1 and b.batch_size == 1 for b in plan.batches)


@pytest.mark.parametrize("kw, match", [(dict(num_samples=0), "num_samples"),
                                        (dict(max_batch_size=0), "max_batch_size"),
                                        (dict(max_new_tokens=0), "max_new_tokens")])
def test_plan_rejects_bad_arguments(kw, match):
    args = dict(num_samples=1, max_new_tokens=4, max_batch_size=2, buckets=BucketConfig()) | kw
    with pytest.raises(ValueError, match=match):
        plan_batches([3], **args)
