"""BucketBatchSampler: seconds budgets, bucketing, per-epoch shuffles, DDP shards, exact resume."""
import numpy as np
import pytest

from speechdistill.data.dataset import ItemRef
from speechdistill.data.sampler import BucketBatchSampler


def _lengths(n=60, seed=0):
    return np.random.default_rng(seed).integers(1000, 20000, n).tolist()


def _indices(batches):
    return [[ref.index for ref in batch] for batch in batches]


def test_every_utterance_once_per_epoch_and_budget_respected():
    lengths = _lengths()
    sampler = BucketBatchSampler(lengths, batch_samples=50000, num_buckets=5, seed=1)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = _indices(sampler)
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        for batch in batches:
            assert len(batch) * max(lengths[i] for i in batch) <= 50000
        # greedy filling closes a batch only when the next utterance breaks the budget; with every
        # length <= 20000 that means >= 2 utterances, except for the last batch of each bucket
        assert sum(len(b) == 1 for b in batches) <= 5
        assert len(batches) < len(lengths) / 2 + 5


def test_max_batch_size_caps_utterances():
    sampler = BucketBatchSampler([100] * 10, batch_samples=10_000, max_batch_size=3, num_buckets=1)
    assert sorted(len(b) for b in _indices(sampler)) == [1, 3, 3, 3]


def test_buckets_keep_lengths_apart():
    lengths = [16000] * 20 + [160000] * 20
    sampler = BucketBatchSampler(lengths, batch_samples=320000, num_buckets=2, seed=0)
    for batch in _indices(sampler):
        assert len({lengths[i] for i in batch}) == 1  # never a 1 s utterance padded to 10 s


def test_buckets_too_small_for_a_batch_are_merged():
    lengths = list(range(1000, 15000, 1000))  # 14 utterances, 3 fit in a budget of 45000
    sampler = BucketBatchSampler(lengths, batch_samples=45000, num_buckets=20, seed=0)
    sizes = [len(b) for b in sampler.buckets]
    assert sum(sizes) == 14 and len(sizes) < 14
    for bucket in sampler.buckets[:-1]:
        assert len(bucket) >= 45000 // max(lengths[i] for i in bucket)  # each can fill a batch
    assert max(len(b) for b in _indices(sampler)) >= 3


def test_shuffles_are_seeded_per_epoch():
    lengths = _lengths()
    one = BucketBatchSampler(lengths, batch_samples=50000, num_buckets=4, seed=5)
    two = BucketBatchSampler(lengths, batch_samples=50000, num_buckets=4, seed=5)
    other_seed = BucketBatchSampler(lengths, batch_samples=50000, num_buckets=4, seed=6)
    assert one.global_batches(0) == two.global_batches(0)
    assert one.global_batches(0) != one.global_batches(1)
    assert one.global_batches(0) != other_seed.global_batches(0)


def test_unshuffled_order_is_by_length():
    lengths = [5, 3, 9, 1, 7]
    sampler = BucketBatchSampler(lengths, batch_samples=9, num_buckets=5, shuffle=False)
    assert _indices(sampler) == [[3, 1], [0], [4], [2]]  # 2 x 3 <= 9 fits, 2 x 5 does not


def test_ranks_share_an_epoch_evenly_in_global_order():
    lengths = _lengths(37)
    whole = BucketBatchSampler(lengths, batch_samples=40000, num_buckets=3, seed=2)
    global_batches = whole.global_batches(4)
    assert len(global_batches) % 3 != 0  # the padding case is exercised
    shards = []
    for rank in range(3):
        s = BucketBatchSampler(lengths, batch_samples=40000, num_buckets=3, seed=2, num_replicas=3, rank=rank)
        s.set_epoch(4)
        shards.append(_indices(s))
    assert len({len(shard) for shard in shards}) == 1  # same number of batches on every rank
    padded = global_batches + global_batches[: (-len(global_batches)) % 3]
    for k in range(len(shards[0])):
        for rank in range(3):
            assert shards[rank][k] == padded[3 * k + rank]


def test_uneven_shards_serve_every_batch_exactly_once():
    lengths = _lengths(37)
    shards = []
    for rank in range(3):
        s = BucketBatchSampler(lengths, batch_samples=40000, num_buckets=3, shuffle=False, num_replicas=3, rank=rank,
                               even_shards=False)
        shards.extend(_indices(s))
    assert sorted(i for b in shards for i in b) == list(range(37))


def test_resume_continues_at_the_exact_batch():
    lengths = _lengths()
    sampler = BucketBatchSampler(lengths, batch_samples=50000, num_buckets=4, seed=9, num_replicas=2, rank=1)
    sampler.set_epoch(3)
    full = list(sampler)
    assert all(isinstance(ref, ItemRef) and ref.epoch == 3 for batch in full for ref in batch)
    assert [batch[0].batch_index for batch in full] == list(range(len(full)))
    resumed = BucketBatchSampler(lengths, batch_samples=50000, num_buckets=4, seed=9, num_replicas=2, rank=1)
    resumed.load_state_dict({"epoch": 3, "batch_index": 4})
    assert resumed.state_dict() == {"epoch": 3, "batch_index": 4}
    assert list(resumed) == full[4:]


def test_budget_smaller_than_longest_utterance_is_an_error():
    with pytest.raises(ValueError) as err:
        BucketBatchSampler([16000, 48000], batch_samples=32000)
    assert "batch_seconds" in str(err.value) and "3.00 s" in str(err.value)
