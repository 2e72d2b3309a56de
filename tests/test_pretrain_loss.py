"""HuBERT's masked-prediction loss against hand-computed values and against fairseq's formulation."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from speechdistill.pretrain import cosine_logits, feature_penalty, masked_prediction_loss


def test_cosine_logits_are_cosines_over_the_temperature():
    projected = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # [1, 2, 2]
    units = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, -3.0]])
    logits = cosine_logits(projected, units, 0.1)
    half = 1 / math.sqrt(2)
    expected = torch.tensor([[[1.0, half, 0.0], [0.0, half, -1.0]]]) / 0.1
    assert logits.shape == (1, 2, 3)
    assert torch.allclose(logits, expected, atol=1e-6)


def _hand_case():
    # Frame logits chosen so that each cross-entropy is a simple logarithm:
    # frame 0: [0, ln 3], target 1 -> ln(1 + 3) - ln 3 = ln(4/3)   (argmax 1: correct)
    # frame 1: [ln 2, 0], target 0 -> ln(2 + 1) - ln 2 = ln(3/2)   (argmax 0: correct)
    # frame 2: [0, 0],    target 1 -> ln 2                          (argmax 0: wrong)
    # frame 3: padding (target -1 from the collate padding)
    logits = torch.tensor([[[0.0, math.log(3)], [math.log(2), 0.0], [0.0, 0.0], [5.0, -5.0]]])
    targets = torch.tensor([[1, 0, 1, -1]])
    mask = torch.tensor([[True, False, True, True]])
    valid = torch.tensor([[True, True, True, False]])
    return logits, targets, mask, valid


def test_masked_frames_only_by_default():
    logits, targets, mask, valid = _hand_case()
    result = masked_prediction_loss(logits, targets, mask, valid)
    # masked valid frames: 0 and 2 (frame 3 is padding even though the mask covers it)
    assert float(result.count) == 2
    assert float(result.loss) == pytest.approx((math.log(4 / 3) + math.log(2)) / 2, rel=1e-6)
    assert float(result.ce_masked) == pytest.approx((math.log(4 / 3) + math.log(2)) / 2, rel=1e-6)
    assert float(result.ce_unmasked) == pytest.approx(math.log(3 / 2), rel=1e-6)
    assert float(result.acc_masked) == pytest.approx(0.5)
    assert float(result.acc_unmasked) == pytest.approx(1.0)
    assert (float(result.num_masked), float(result.num_unmasked)) == (2, 1)


def test_unmasked_weight_adds_the_unmasked_sum_and_its_frames():
    logits, targets, mask, valid = _hand_case()
    result = masked_prediction_loss(logits, targets, mask, valid, masked_weight=1.0, unmasked_weight=0.5)
    expected = (math.log(4 / 3) + math.log(2) + 0.5 * math.log(3 / 2)) / 3
    assert float(result.count) == 3
    assert float(result.loss) == pytest.approx(expected, rel=1e-6)


def test_gradient_reaches_only_masked_valid_frames():
    logits, targets, mask, valid = _hand_case()
    logits = logits.clone().requires_grad_(True)
    masked_prediction_loss(logits, targets, mask, valid).loss.backward()
    grad_norms = logits.grad[0].abs().sum(-1)
    assert grad_norms[0] > 0 and grad_norms[2] > 0
    assert grad_norms[1] == 0 and grad_norms[3] == 0
    # d CE / d logits = softmax - onehot, divided by the 2 counted frames
    expected = (torch.softmax(logits[0, 0].detach(), -1) - torch.tensor([0.0, 1.0])) / 2
    assert torch.allclose(logits.grad[0, 0], expected, atol=1e-6)


def _fairseq_style_loss(projected, units, targets, temperature):
    """fairseq's compute_nce, re-derived: [positive, all units] cosines / temperature, the duplicate of the
    positive among the negatives set to -inf, cross-entropy with class 0, summed then averaged."""
    positive = units[targets]  # [M, F]
    candidates = torch.cat([positive[None], units[:, None].expand(-1, len(targets), -1)], dim=0)  # [1+K, M, F]
    logits = F.cosine_similarity(projected[None], candidates, dim=-1) / temperature  # [1+K, M]
    duplicate = torch.zeros_like(logits, dtype=torch.bool)
    duplicate[1 + targets, torch.arange(len(targets))] = True
    logits = logits.masked_fill(duplicate, float("-inf")).t()
    return F.cross_entropy(logits, torch.zeros(len(targets), dtype=torch.long), reduction="sum") / len(targets)


def test_equals_fairseq_positive_first_formulation():
    generator = torch.Generator().manual_seed(0)
    projected = torch.randn(2, 7, 5, generator=generator)
    units = torch.rand(6, 5, generator=generator)
    targets = torch.randint(6, (2, 7), generator=generator)
    mask = torch.rand(2, 7, generator=generator) < 0.6
    valid = torch.ones(2, 7, dtype=torch.bool)
    valid[1, 5:] = False
    ours = masked_prediction_loss(cosine_logits(projected, units, 0.1), targets, mask, valid).loss
    chosen = mask & valid
    reference = _fairseq_style_loss(projected[chosen], units, targets[chosen], 0.1)
    assert float(ours) == pytest.approx(float(reference), rel=1e-5)


def test_a_batch_without_masked_frames_gives_zero_not_nan():
    logits, targets, _, valid = _hand_case()
    result = masked_prediction_loss(logits, targets, torch.zeros_like(valid), valid)
    assert float(result.loss) == 0.0 and float(result.count) == 0


def test_shape_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"\[B, N, K\]"):
        masked_prediction_loss(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long), None,
                               torch.ones(2, 3, dtype=torch.bool))


def test_feature_penalty_is_the_mean_square_over_valid_frames():
    features = torch.tensor([[[1.0, 3.0], [2.0, 0.0], [9.0, 9.0]], [[0.0, 2.0], [7.0, 7.0], [7.0, 7.0]]])
    lengths = torch.tensor([2, 1])
    # valid frames: (1,3) -> 5, (2,0) -> 2, (0,2) -> 2; mean over frames of the per-frame mean square
    assert float(feature_penalty(features, lengths)) == pytest.approx((5 + 2 + 2) / 3)
