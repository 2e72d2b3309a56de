"""SUPERB featurizer: weighted sum by hand, zero init, trimming, single layer, layer norm, errors."""
import pytest
import torch

from speechdistill.downstream.featurizer import Featurizer, FeaturizerConfig


def states(num=4, batch=2, frames=(10, 10, 9, 10), dim=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, n, dim, generator=generator) for n in frames[:num]]


def test_zero_init_is_uniform_average_and_padding_is_zeroed():
    hidden = states()
    featurizer = Featurizer(4)
    assert torch.equal(featurizer.weights.detach(), torch.zeros(4))
    features, lengths = featurizer(hidden, torch.tensor([10, 7]))
    assert features.shape == (2, 9, 6)  # trimmed to the shortest state
    assert lengths.tolist() == [9, 7]
    expected = sum(h[:, :9] for h in hidden) / 4
    torch.testing.assert_close(features[0], expected[0])
    torch.testing.assert_close(features[1, :7], expected[1, :7])
    assert torch.all(features[1, 7:] == 0)
    torch.testing.assert_close(featurizer.layer_weights(), torch.full((4,), 0.25))


def test_learned_weights_follow_softmax_and_receive_gradients():
    hidden = states(frames=(8, 8, 8, 8))
    featurizer = Featurizer(4, FeaturizerConfig(layers=[1, -1]))
    assert featurizer.selected_layers == [1, 3]
    with torch.no_grad():
        featurizer.weights.copy_(torch.tensor([0.0, 1.0]))
    features, _ = featurizer(hidden, torch.tensor([8, 8]))
    w1, w3 = 1 / (1 + torch.e), torch.e / (1 + torch.e)
    torch.testing.assert_close(features, w1 * hidden[1] + w3 * hidden[3])
    torch.testing.assert_close(featurizer.layer_weights(), torch.tensor([w1, w3]))
    features.sum().backward()
    assert featurizer.weights.grad is not None and torch.all(featurizer.weights.grad.abs() > 0)


def test_unselected_states_may_be_none():
    hidden = states(frames=(8, 8, 8, 8))
    featurizer = Featurizer(4, FeaturizerConfig(layers=[2, 3]))
    features, _ = featurizer([None, None, hidden[2], hidden[3]], torch.tensor([8, 8]))
    torch.testing.assert_close(features, (hidden[2] + hidden[3]) / 2)
    with pytest.raises(ValueError, match=r"hidden state 2 is None; run the upstream with output_layers=\[2, 3\]"):
        featurizer([None, None, None, hidden[3]], torch.tensor([8, 8]))


def test_single_layer_mode():
    hidden = states(frames=(8, 8, 8, 8))
    featurizer = Featurizer(4, FeaturizerConfig(mode="single", layer=2))
    assert list(featurizer.parameters()) == []
    features, _ = featurizer(hidden, torch.tensor([8, 8]))
    torch.testing.assert_close(features, hidden[2])
    torch.testing.assert_close(featurizer.layer_weights(), torch.ones(1))


def test_layer_norm_normalises_each_state_before_the_sum():
    hidden = [h * 10 + 3 for h in states(frames=(8, 8, 8, 8))]
    featurizer = Featurizer(4, FeaturizerConfig(layer_norm=True))
    features, _ = featurizer(hidden, torch.tensor([8, 8]))

    def norm(x):
        mean = x.mean(-1, keepdim=True)
        return (x - mean) / torch.sqrt(((x - mean) ** 2).mean(-1, keepdim=True) + 1e-5)

    torch.testing.assert_close(features, sum(norm(h) for h in hidden) / 4)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="out of range"):
        Featurizer(4, FeaturizerConfig(layers=[0, 4]))
    with pytest.raises(ValueError, match="same hidden state twice"):
        Featurizer(4, FeaturizerConfig(layers=[3, -1]))
    featurizer = Featurizer(4)
    with pytest.raises(ValueError, match="expected 4 hidden states, found 3"):
        featurizer(states(num=3), torch.tensor([8, 8]))
    with pytest.raises(ValueError, match="differing by more than 2"):
        featurizer(states(frames=(10, 10, 6, 10)), torch.tensor([8, 8]))
