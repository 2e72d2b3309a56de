"""RobustDistiller enhancement loss: hand-computed values, numpy STFT reference, padding, released code."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from speechdistill.losses import (LossInputError, enhancement_loss, multi_resolution_stft_loss, negative_si_sdr,
                                  stft_num_frames, upsample_to_stft_frames)


def numpy_stft_magnitude(signal, n_fft=512, hop=160, win=400):
    """Textbook centred STFT: reflect-pad n_fft/2, periodic Hann of `win` centred in n_fft, |rfft|."""
    n = np.arange(win)
    window = np.zeros(n_fft)
    offset = (n_fft - win) // 2
    window[offset:offset + win] = 0.5 - 0.5 * np.cos(2 * np.pi * n / win)
    padded = np.pad(np.asarray(signal, dtype=np.float64), n_fft // 2, mode="reflect")
    frames = 1 + len(signal) // hop
    return np.stack([np.abs(np.fft.rfft(padded[s * hop:s * hop + n_fft] * window)) for s in range(frames)], 1)


def test_stft_frame_count_and_upsampling_by_hand():
    assert stft_num_frames(16000) == 101 and stft_num_frames(159) == 1
    features = torch.tensor([[[1.0], [2.0], [3.0]]])  # [1, 3, 1] at 50 Hz
    torch.testing.assert_close(upsample_to_stft_frames(features, 7)[0, :, 0],
                               torch.tensor([1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 0.0]))
    torch.testing.assert_close(upsample_to_stft_frames(features, 5)[0, :, 0], torch.tensor([1.0, 1.0, 2.0, 2.0, 3.0]))
    with pytest.raises(LossInputError, match="do not fit 11 STFT frames"):
        upsample_to_stft_frames(features, 11)


def test_l1_and_l2_by_hand_on_a_constant_signal():
    # noisy = 1 everywhere: every centred frame is the window itself, so bin 0 = Σ hann_400 = 200
    # (periodic Hann sums to N/2). mask keeps only bin 0; clean = 0.
    # l1 = (200 · S) / (257 · S) = 200/257 ; l2 = 200² / 257
    samples = 1600
    frames = stft_num_frames(samples)
    noisy = torch.ones(1, samples)
    clean = torch.zeros(1, samples)
    mask = torch.zeros(1, frames, 257)
    mask[..., 0] = 1.0
    lengths = torch.tensor([samples])
    assert enhancement_loss(mask, noisy, clean, lengths).item() == pytest.approx(200 / 257, rel=1e-5)
    assert enhancement_loss(mask, noisy, clean, lengths, kind="l2").item() == pytest.approx(200 ** 2 / 257, rel=1e-5)


def test_l1_matches_numpy_stft_reference_with_ragged_lengths():
    generator = torch.Generator().manual_seed(0)
    lengths = [3200, 2000]
    noisy = torch.randn(2, 3200, generator=generator)
    clean = torch.randn(2, 3200, generator=generator)
    mask = torch.rand(2, stft_num_frames(3200), 257, generator=generator)
    total, count = 0.0, 0
    for b, n in enumerate(lengths):
        frames = stft_num_frames(n)
        estimate = mask[b, :frames].numpy().T * numpy_stft_magnitude(noisy[b, :n].numpy())
        target = numpy_stft_magnitude(clean[b, :n].numpy())
        total += np.abs(estimate - target).sum()
        count += estimate.size
    value = enhancement_loss(mask, noisy, clean, torch.tensor(lengths))
    assert value.item() == pytest.approx(total / count, rel=1e-5)


@pytest.mark.parametrize("kind", ["l1", "l2", "mrstft", "si_snr"])
def test_garbage_padding_does_not_change_the_loss(kind):
    generator = torch.Generator().manual_seed(1)
    lengths = torch.tensor([4000, 2600])
    noisy = torch.randn(2, 4000, generator=generator)
    clean = torch.randn(2, 4000, generator=generator)
    mask = torch.rand(2, stft_num_frames(4000), 257, generator=generator)
    noisy[1, 2600:] = 50.0  # noise written into the padding, as the corruption does
    clean[1, 2600:] = -7.0
    base = enhancement_loss(mask, noisy, clean, lengths, kind=kind)
    extra = 1000
    wide_noisy = torch.cat([noisy, 30 * torch.randn(2, extra, generator=generator)], 1)
    wide_clean = torch.cat([clean, 30 * torch.randn(2, extra, generator=generator)], 1)
    wide_mask = torch.cat([mask, torch.rand(2, stft_num_frames(5000) - mask.shape[1], 257, generator=generator)], 1)
    wide_mask[1, stft_num_frames(2600):] = 0.123  # garbage mask frames past utterance 2
    value = enhancement_loss(wide_mask, wide_noisy, wide_clean, lengths, kind=kind)
    assert value.item() == pytest.approx(base.item(), rel=1e-5, abs=1e-6)


def test_include_padding_reproduces_released_l1_and_l2():
    generator = torch.Generator().manual_seed(2)
    noisy = torch.randn(2, 3000, generator=generator)
    clean = torch.randn(2, 3000, generator=generator)
    mask = torch.rand(2, stft_num_frames(3000), 257, generator=generator)
    window = torch.hann_window(400)
    stft = lambda x: torch.stft(x, n_fft=512, hop_length=160, win_length=400, window=window, center=True,  # noqa: E731
                                return_complex=True)
    estimate = torch.mul(mask.transpose(1, 2), stft(noisy).abs())
    released_l1 = F.l1_loss(estimate, stft(clean).abs())
    released_l2 = F.mse_loss(estimate, stft(clean).abs())
    lengths = torch.tensor([3000, 1700])  # ignored by the released code
    assert enhancement_loss(mask, noisy, clean, lengths, include_padding=True).item() == \
        pytest.approx(released_l1.item(), rel=1e-6)
    assert enhancement_loss(mask, noisy, clean, None, kind="l2", include_padding=True).item() == \
        pytest.approx(released_l2.item(), rel=1e-6)
    assert enhancement_loss(mask, noisy, clean, lengths).item() != pytest.approx(released_l1.item(), rel=1e-4)


def test_mrstft_by_hand_for_a_doubled_estimate():
    # Ŷ = 2Y: SC = ‖Y − 2Y‖/‖Y‖ = 1 ; logMag = |log Y − log 2Y| = ln 2 ; loss = 0.5 + 0.5 ln 2 = 0.846574
    generator = torch.Generator().manual_seed(3)
    reference = torch.randn(2, 4000, generator=generator)
    lengths = torch.tensor([4000, 3000])
    value = multi_resolution_stft_loss(2 * reference, reference, lengths)
    assert value.item() == pytest.approx(0.5 + 0.5 * math.log(2), rel=1e-4)
    assert multi_resolution_stft_loss(reference, reference, lengths).item() == pytest.approx(0.0, abs=1e-7)


def test_si_sdr_by_hand():
    # r = [1,-1,1,-1] (zero mean); estimate = r + 0.5·[1,1,-1,-1] + 3 (offset removed by zero-mean).
    # projection scale <e, r>/‖r‖² = 4/4 = 1, residual energy 4·0.25 = 1, target energy 4:
    # SI-SDR = 10·log10(4) = 6.0206 dB -> loss -6.0206
    reference = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    estimate = reference + 0.5 * torch.tensor([[1.0, 1.0, -1.0, -1.0]]) + 3.0
    assert negative_si_sdr(estimate, reference, torch.tensor([4])).item() == pytest.approx(-10 * math.log10(4), rel=1e-6)
    # padding: a second copy with 3 garbage samples and length 4 gives the same value
    padded_est = torch.cat([estimate, torch.tensor([[9.0, -9.0, 4.0]])], 1).repeat(2, 1)
    padded_ref = torch.cat([reference, torch.tensor([[5.0, 5.0, 5.0]])], 1).repeat(2, 1)
    assert negative_si_sdr(padded_est, padded_ref, torch.tensor([4, 4])).item() == \
        pytest.approx(-10 * math.log10(4), rel=1e-6)


def test_waveform_modes_through_the_mask():
    generator = torch.Generator().manual_seed(4)
    clean = torch.randn(2, 4000, generator=generator)
    lengths = torch.tensor([4000, 3300])
    frames = stft_num_frames(4000)
    # noisy = 2·clean and mask 0.5: the noisy-phase reconstruction is the clean signal -> both losses minimal
    half = torch.full((2, frames, 257), 0.5)
    assert enhancement_loss(half, 2 * clean, clean, lengths, kind="mrstft").item() == pytest.approx(0.0, abs=1e-4)
    assert enhancement_loss(half, 2 * clean, clean, lengths, kind="si_snr").item() < -60
    # mask 1 on noisy = 2·clean reconstructs 2·clean: MR-STFT = 0.5 + 0.5 ln 2 ; SI-SDR still perfect
    ones = torch.ones(2, frames, 257)
    assert enhancement_loss(ones, 2 * clean, clean, lengths, kind="mrstft").item() == \
        pytest.approx(0.5 + 0.5 * math.log(2), rel=1e-3)
    assert enhancement_loss(ones, 2 * clean, clean, lengths, kind="si_snr").item() < -60


def released_mrstft(estimate, reference):
    """Released MultiResolutionSTFTLoss: whole-batch Frobenius SC + mean log-magnitude, 3 resolutions."""
    total_sc, total_mag = 0.0, 0.0
    for n_fft, hop, win in ((1024, 120, 600), (2048, 240, 1200), (512, 50, 240)):
        mags = []
        for signal in (estimate, reference):
            spectrum = torch.stft(signal, n_fft, hop, win, torch.hann_window(win), return_complex=True)
            mags.append(torch.sqrt(torch.clamp(spectrum.real ** 2 + spectrum.imag ** 2, min=1e-7)))
        total_sc += torch.norm(mags[1] - mags[0], p="fro") / torch.norm(mags[1], p="fro")
        total_mag += F.l1_loss(torch.log(mags[1]), torch.log(mags[0]))
    return 0.5 * total_sc / 3 + 0.5 * total_mag / 3


def test_include_padding_reproduces_released_waveform_losses():
    generator = torch.Generator().manual_seed(5)
    noisy = torch.randn(2, 5000, generator=generator)
    clean = torch.randn(2, 5000, generator=generator)
    mask = torch.rand(2, stft_num_frames(5000), 257, generator=generator)
    window = torch.hann_window(400)
    spectrum = torch.stft(noisy, 512, 160, 400, window, center=True, return_complex=True)
    rebuilt = torch.istft(torch.polar(mask.transpose(1, 2) * spectrum.abs(), torch.angle(spectrum)), 512, 160, 400,
                          window, center=True, length=5000)
    expected = released_mrstft(rebuilt, clean)
    value = enhancement_loss(mask, noisy, clean, None, kind="mrstft", include_padding=True)
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    # asteroid SingleSrcNegSDR("sisdr"), zero-mean, EPS 1e-8, batch mean
    est = rebuilt - rebuilt.mean(1, keepdim=True)
    ref = clean - clean.mean(1, keepdim=True)
    scaled = (est * ref).sum(1, keepdim=True) * ref / ((ref ** 2).sum(1, keepdim=True) + 1e-8)
    sdr = (scaled ** 2).sum(1) / (((est - scaled) ** 2).sum(1) + 1e-8)
    expected_sisdr = -(10 * torch.log10(sdr + 1e-8)).mean()
    value = enhancement_loss(mask, noisy, clean, None, kind="si_snr", include_padding=True)
    assert value.item() == pytest.approx(expected_sisdr.item(), rel=1e-5)


def test_gradient_reaches_the_mask_only_on_valid_frames():
    generator = torch.Generator().manual_seed(6)
    noisy = torch.randn(2, 3000, generator=generator)
    clean = torch.randn(2, 3000, generator=generator)
    mask = torch.rand(2, stft_num_frames(3000), 257, generator=generator).requires_grad_(True)
    enhancement_loss(mask, noisy, clean, torch.tensor([3000, 1500]), kind="mrstft").backward()
    assert torch.isfinite(mask.grad).all()
    assert torch.all(mask.grad[1, stft_num_frames(1500):] == 0)
    assert mask.grad[1, :stft_num_frames(1500)].abs().sum() > 0


def test_input_errors():
    noisy = torch.zeros(1, 1600)
    with pytest.raises(LossInputError, match=r"mask must be \[B, S, 257\] = \[1, 11, 257\]"):
        enhancement_loss(torch.zeros(1, 10, 257), noisy, noisy, torch.tensor([1600]))
    with pytest.raises(LossInputError, match="lengths"):
        enhancement_loss(torch.zeros(1, 11, 257), noisy, noisy, None)
    with pytest.raises(LossInputError, match="too short"):
        multi_resolution_stft_loss(torch.ones(1, 900), torch.ones(1, 900), torch.tensor([900]))
    with pytest.raises(ValueError, match="kind"):
        enhancement_loss(torch.zeros(1, 11, 257), noisy, noisy, torch.tensor([1600]), kind="l3")
