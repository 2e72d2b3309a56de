"""Span masking with fairseq compute_mask_indices semantics."""
import numpy as np
import pytest
import torch

from speechdistill.models import compute_mask_indices, span_mask


def spans(row):
    """(start, length) of each run of True."""
    out, start = [], None
    for i, v in enumerate(list(row) + [False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            out.append((start, i - start))
            start = None
    return out


def test_static_spans_without_overlap_keep_min_space_and_the_expected_count():
    rng = np.random.default_rng(0)
    for _ in range(50):
        mask = compute_mask_indices((3, 400), None, 0.4, 10, no_overlap=True, min_space=2, rng=rng)
        counts = mask.sum(1)
        assert len(set(counts.tolist())) == 1  # one count for the batch
        for row in mask:
            runs = spans(row)
            # adjacent spans never touch (min_space frames apart), so every run is one span of 10
            assert all(length == 10 for _, length in runs)
            gaps = [b[0] - (a[0] + a[1]) for a, b in zip(runs, runs[1:])]
            assert all(g >= 2 for g in gaps)
        # k = int(0.4 * 400 / 10 + u) in {16, 17}; spans may not all fit but never exceed k
        assert counts[0] // 10 <= 17


def test_number_of_spans_uses_probabilistic_rounding_and_min_masks():
    rng = np.random.default_rng(1)
    totals = [compute_mask_indices((1, 1000), None, 0.25, 10, no_overlap=True, min_space=0, rng=rng).sum()
              for _ in range(400)]
    # k = int(25 + u) = 25 exactly: spans never overlap, so 250 frames every time
    assert set(totals) == {250}
    totals = [compute_mask_indices((1, 1000), None, 0.255, 10, no_overlap=True, rng=rng).sum() for _ in range(400)]
    assert set(totals) == {250, 260} and 0.35 < np.mean(np.array(totals) == 260) < 0.65  # 25.5 -> 25 or 26
    few = compute_mask_indices((1, 100), None, 0.0, 10, min_masks=2, no_overlap=True, rng=rng)
    assert few.sum() == 20


def test_rows_of_different_lengths_mask_the_same_number_of_valid_frames():
    rng = np.random.default_rng(2)
    lengths = [500, 320, 150]
    mask = compute_mask_indices((3, 500), lengths, 0.65, 10, selection="static", rng=rng)
    assert len(set(mask.sum(1).tolist())) == 1
    for row, n in zip(mask, lengths):
        assert not row[n:].any()


def test_uniform_span_lengths_lie_in_zero_to_twice_the_mean():
    rng = np.random.default_rng(3)
    seen = []
    for _ in range(200):
        row = compute_mask_indices((1, 2000), None, 0.05, 10, selection="uniform", no_overlap=True, min_space=1,
                                   rng=rng)[0]
        seen.extend(length for _, length in spans(row))
    assert min(seen) >= 1 and max(seen) <= 20 and len(set(seen)) > 10


def test_overlapping_spans_start_inside_the_valid_region_and_torch_wrapper_keeps_device_and_shape():
    rng = np.random.default_rng(4)
    mask = span_mask(torch.tensor([300, 200]), 300, 0.8, 10, rng=rng)
    assert mask.dtype == torch.bool and mask.shape == (2, 300)
    assert int(mask[0].sum()) == int(mask[1].sum()) and not mask[1, 200:].any()
    with pytest.raises(ValueError, match="mask_length must be >= 1"):
        compute_mask_indices((1, 10), None, 0.5, 0)
    with pytest.raises(ValueError, match="selection 'gauss' is unknown"):
        compute_mask_indices((1, 100), None, 0.5, 5, selection="gauss")
