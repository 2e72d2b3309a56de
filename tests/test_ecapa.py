"""ECAPA-TDNN and the mean+std back-end: sizes, padding invariance, pooling statistics, learning."""
import pytest
import torch

from speechdistill.downstream.ecapa import (AttentiveStatisticsPooling, EcapaConfig, EcapaTdnn, MeanStdLinearBackend,
                                            frame_mask, masked_mean_std)
from speechdistill.downstream.specaugment import SpecAugmentConfig
from speechdistill.losses.aam import AamSoftmax

TINY = EcapaConfig(channels=32, res2net_scale=4, se_bottleneck=8, aggregation_channels=48, attention_channels=16,
                   embedding_size=12)


def test_paper_era_sizes_are_the_defaults():
    model = EcapaTdnn(1024)
    assert model.first.conv.weight.shape == (512, 1024, 5)
    assert len(model.blocks) == 3
    for block, dilation in zip(model.blocks, (2, 3, 4)):
        assert len(block.group_convs) == 7  # scale 8: 7 convolved groups + 1 passed through
        assert block.group_convs[0].conv.weight.shape == (64, 64, 3)
        assert block.group_convs[0].conv.dilation == (dilation,)
        assert block.se.reduce.weight.shape == (128, 512, 1)
    assert model.aggregate.weight.shape == (1536, 1536, 1)
    assert model.pooling.hidden.weight.shape == (256, 4608, 1)  # frame + global mean + global std
    assert model.pooling.score.weight.shape == (1536, 256, 1)
    assert model.embedding.weight.shape == (192, 3072)
    assert model.embedding_size == 192


def test_eval_embedding_ignores_padding():
    torch.manual_seed(0)
    model = EcapaTdnn(20, TINY).eval()
    features = torch.randn(3, 50, 20)
    lengths = torch.tensor([50, 31, 7])
    padded = features.clone()
    padded[1, 31:] = 1e3  # garbage in the padding must not leak
    padded[2, 7:] = -1e3
    with torch.no_grad():
        batch = model(padded, lengths)
        alone = [model(features[i:i + 1, :n], lengths[i:i + 1]) for i, n in enumerate(lengths.tolist())]
    for i in range(3):
        torch.testing.assert_close(batch[i], alone[i][0], atol=1e-5, rtol=1e-5)


def test_masked_statistics_by_hand():
    x = torch.tensor([[[1.0, 2.0, 3.0, 100.0]]])  # last frame is padding
    mask = frame_mask(torch.tensor([3]), 4)
    mean, std = masked_mean_std(x, mask)
    assert mean.item() == pytest.approx(2.0)
    assert std.item() == pytest.approx((2.0 / 3.0) ** 0.5)  # population
    _, sample_std = masked_mean_std(x, mask, unbiased=True)
    assert sample_std.item() == pytest.approx(1.0)
    weights = torch.tensor([[[0.5, 0.5, 0.0, 0.0]]])
    mean, std = masked_mean_std(x, mask, weights=weights)
    assert mean.item() == pytest.approx(1.5) and std.item() == pytest.approx(0.5)


def test_uniform_attention_gives_plain_statistics():
    pooling = AttentiveStatisticsPooling(4, 3).eval()
    with torch.no_grad():
        pooling.score.weight.zero_()
        pooling.score.bias.zero_()
    x = torch.randn(2, 4, 9)
    lengths = torch.tensor([9, 5])
    pooled = pooling(x, frame_mask(lengths, 9))
    for b, n in enumerate(lengths.tolist()):
        valid = x[b, :, :n]
        torch.testing.assert_close(pooled[b, :4], valid.mean(dim=1))
        torch.testing.assert_close(pooled[b, 4:], valid.std(dim=1, unbiased=False).clamp(min=1e-2))


def test_input_instance_norm_matches_torch_instance_norm():
    config = EcapaConfig(**{**TINY.__dict__, "input_instance_norm": True})
    torch.manual_seed(1)
    model = EcapaTdnn(6, config).eval()
    features = torch.randn(1, 30, 6) * 5 + 2
    reference_model = EcapaTdnn(6, TINY).eval()
    reference_model.load_state_dict(model.state_dict())
    normalised = torch.nn.InstanceNorm1d(6)(features.transpose(1, 2)).transpose(1, 2)
    with torch.no_grad():
        torch.testing.assert_close(model(features, torch.tensor([30])), reference_model(normalised, torch.tensor([30])),
                                   atol=1e-5, rtol=1e-5)


def test_mean_std_backend_by_hand_and_padding():
    backend = MeanStdLinearBackend(2).eval()
    with torch.no_grad():
        backend.projection.weight.copy_(torch.eye(4)[:, :].repeat(48, 1)[:192])
        backend.projection.bias.zero_()
    features = torch.tensor([[[1.0, 0.0], [3.0, 0.0], [5.0, 4.0], [9.0, 9.0]]])
    out = backend(features, torch.tensor([3]))
    # mean (3, 4/3), sample std (2, sqrt(16/3)); BatchNorm in eval with fresh stats ~ identity
    expected = torch.tensor([3.0, 4.0 / 3.0, 2.0, (16.0 / 3.0) ** 0.5]) / (1 + 1e-5) ** 0.5
    torch.testing.assert_close(out[0, :4], expected)


def test_tiny_ecapa_with_aam_learns_to_separate_speakers():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=generator) * 1.5
    labels = torch.arange(4).repeat(6)
    torch.manual_seed(0)
    config = EcapaConfig(**{**TINY.__dict__, "spec_augment": SpecAugmentConfig(1, 5, 1, 3)})
    model = EcapaTdnn(16, config)
    head = AamSoftmax(12, 4, margin=0.2, scale=30.0)
    optimiser = torch.optim.Adam(list(model.parameters()) + list(head.parameters()), lr=3e-3)
    lengths = torch.full((24,), 40)

    def batch():
        return centres[labels][:, None, :] + torch.randn(24, 40, 16, generator=generator)

    first = None
    for _ in range(25):
        loss = head(model(batch(), lengths), labels).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        first = loss.item() if first is None else first
    model.eval()
    with torch.no_grad():
        out = head(model(batch(), lengths), labels)
    assert out.loss.item() < 0.3 * first
    assert out.accuracy.item() == 1.0


def test_shape_errors():
    model = EcapaTdnn(8, TINY)
    with pytest.raises(ValueError, match=r"\[batch, frame, 8\]"):
        model(torch.zeros(2, 10, 7), torch.tensor([10, 10]))
    with pytest.raises(ValueError, match="at least one frame"):
        model(torch.zeros(2, 10, 8), torch.tensor([10, 0]))
    with pytest.raises(ValueError, match="divisible by the Res2Net scale"):
        EcapaTdnn(8, EcapaConfig(channels=30, res2net_scale=4))
