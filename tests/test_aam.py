"""AAM-softmax and the softmax speaker head against hand-computed values."""
import math

import pytest
import torch

from speechdistill.losses.aam import AamSoftmax, SoftmaxSpeakerHead


def head_with_axes(**options):
    """Two classes whose weights are the x and y axes (any positive scale: they are normalised)."""
    head = AamSoftmax(2, 2, **options)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 0.5]]))
    return head


def embedding_at(degrees, norm=2.0):
    angle = math.radians(degrees)
    return torch.tensor([[norm * math.cos(angle), norm * math.sin(angle)]])


def cross_entropy(target_logit, other_logit):
    return math.log(1.0 + math.exp(other_logit - target_logit))


def test_margin_is_added_to_the_target_angle():
    head = head_with_axes()  # m = 0.2 rad, s = 30
    out = head(embedding_at(60), torch.tensor([0]))
    theta_target, theta_other = math.radians(60), math.radians(30)
    expected_target = 30 * math.cos(theta_target + 0.2)
    expected_other = 30 * math.cos(theta_other)
    assert out.logits[0].tolist() == pytest.approx([expected_target, expected_other], abs=1e-4)
    assert out.loss.item() == pytest.approx(cross_entropy(expected_target, expected_other), abs=1e-4)
    assert out.accuracy.item() == 0.0  # the 30-degree class is closer
    # label 1 instead: margin on the other logit
    out = head(embedding_at(60), torch.tensor([1]))
    expected = cross_entropy(30 * math.cos(theta_other + 0.2), 30 * math.cos(theta_target))
    assert out.loss.item() == pytest.approx(expected, abs=1e-4)
    assert out.accuracy.item() == 1.0


def test_beyond_pi_the_target_logit_keeps_decreasing():
    head = head_with_axes(margin=0.3, scale=10.0)
    out = head(embedding_at(175), torch.tensor([0]))  # θ + m = 175° + 17.2° > 180°
    cos_target = math.cos(math.radians(175))
    expected_target = 10 * (cos_target - 0.3 * math.sin(0.3))
    expected_other = 10 * math.cos(math.radians(85))
    assert out.logits[0, 0].item() == pytest.approx(expected_target, abs=1e-4)
    assert out.loss.item() == pytest.approx(cross_entropy(expected_target, expected_other), abs=1e-4)


def test_easy_margin_only_for_acute_angles():
    head = head_with_axes(easy_margin=True)
    obtuse = head(embedding_at(120), torch.tensor([0]))
    assert obtuse.logits[0, 0].item() == pytest.approx(30 * math.cos(math.radians(120)), abs=1e-4)
    acute = head(embedding_at(40), torch.tensor([0]))
    assert acute.logits[0, 0].item() == pytest.approx(30 * math.cos(math.radians(40) + 0.2), abs=1e-4)


def test_zero_margin_is_scaled_cosine_softmax_and_class_weights_apply():
    head = AamSoftmax(3, 4, margin=0.0, scale=5.0, class_weights=torch.tensor([1.0, 2.0, 1.0, 0.5]))
    embeddings = torch.randn(6, 3)
    labels = torch.tensor([0, 1, 1, 2, 3, 3])
    out = head(embeddings, labels)
    cosine = torch.nn.functional.normalize(embeddings) @ torch.nn.functional.normalize(head.weight).T
    logits = 5.0 * cosine
    log_p = logits.log_softmax(dim=1)[torch.arange(6), labels]
    weights = torch.tensor([1.0, 2.0, 1.0, 0.5])[labels]
    assert out.loss.item() == pytest.approx((-(weights * log_p).sum() / weights.sum()).item(), abs=1e-5)


def test_gradients_stay_finite_when_embedding_equals_class_weight():
    head = AamSoftmax(4, 3)
    embeddings = head.weight.detach()[[0, 2]].clone().requires_grad_(True)  # cos θ = 1 exactly
    out = head(embeddings, torch.tensor([0, 2]))
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.all(torch.isfinite(embeddings.grad))
    assert torch.all(torch.isfinite(head.weight.grad))


def test_softmax_head_and_label_checks():
    head = SoftmaxSpeakerHead(2, 3)
    with torch.no_grad():
        head.classifier.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
        head.classifier.bias.copy_(torch.tensor([0.0, 0.5, 0.0]))
    out = head(torch.tensor([[2.0, 1.0]]), torch.tensor([1]))
    logits = [2.0, 1.5, -3.0]
    expected = -(1.5 - math.log(sum(math.exp(v) for v in logits)))
    assert out.loss.item() == pytest.approx(expected, abs=1e-5)
    assert out.accuracy.item() == 0.0
    with pytest.raises(ValueError, match=r"labels must lie in 0..2"):
        head(torch.zeros(1, 2), torch.tensor([3]))
    with pytest.raises(ValueError, match=r"expected embeddings \[batch, 2\]"):
        AamSoftmax(2, 3)(torch.zeros(1, 3), torch.tensor([0]))
