"""Log-mel fbank against a direct numpy implementation of the textbook (Kaldi) formula."""
import math

import numpy as np
import pytest
import torch

from speechdistill.downstream.frontend import Fbank, FbankConfig


def reference_frames_to_fbank(frames, num_bins=80, window="hamming", preemph=0.97, low=20.0, high=0.0, rate=16000,
                              mean_norm=True):
    """Frame by frame, filter by filter, in float64. frames: [num_frames, 400] (already scaled)."""
    length, nfft = 400, 512
    n = np.arange(length)
    if window == "hamming":
        win = 0.54 - 0.46 * np.cos(2 * math.pi * n / (length - 1))
    else:
        win = (0.5 - 0.5 * np.cos(2 * math.pi * n / (length - 1))) ** 0.85

    def mel(f):
        return 1127.0 * math.log(1.0 + f / 700.0)

    high = rate / 2 + high if high <= 0 else high
    mel_low, mel_high = mel(low), mel(high)
    delta = (mel_high - mel_low) / (num_bins + 1)
    weights = np.zeros((num_bins, nfft // 2))
    for b in range(num_bins):
        left, center, right = mel_low + b * delta, mel_low + (b + 1) * delta, mel_low + (b + 2) * delta
        for k in range(nfft // 2):
            m = mel(k * rate / nfft)
            if left < m < right:
                weights[b, k] = (m - left) / (center - left) if m <= center else (right - m) / (right - center)
    out = np.zeros((len(frames), num_bins))
    for t, frame in enumerate(np.asarray(frames, dtype=np.float64)):
        frame = frame - frame.mean()
        emphasised = frame.copy()
        emphasised[1:] = frame[1:] - preemph * frame[:-1]
        emphasised[0] = frame[0] - preemph * frame[0]
        spectrum = np.fft.rfft(emphasised * win, n=nfft)
        power = np.abs(spectrum[: nfft // 2]) ** 2
        out[t] = np.log(np.maximum(weights @ power, np.finfo(np.float32).eps))
    if mean_norm and len(frames):
        out -= out.mean(axis=0)
    return out


def reference_fbank(wave, scale=32768.0, **options):
    x = np.asarray(wave, dtype=np.float64) * scale
    num_frames = 1 + (len(x) - 400) // 160 if len(x) >= 400 else 0
    frames = [x[t * 160: t * 160 + 400] for t in range(num_frames)]
    return reference_frames_to_fbank(frames, **options)


def test_batch_matches_reference_per_utterance_with_lengths():
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    waves = [0.3 * np.sin(2 * math.pi * 440 * t[:16000]) + 0.05 * rng.standard_normal(16000),
             0.1 * rng.standard_normal(9000), 0.2 * np.sin(2 * math.pi * 3000 * t[:2400])]
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.zeros(3, 16000)
    for i, w in enumerate(waves):
        batch[i, : len(w)] = torch.from_numpy(w).float()
    fbank = Fbank()
    features, frames = fbank(batch, lengths)
    assert frames.tolist() == [98, 54, 13]  # 1 + (L - 400) // 160
    assert features.shape == (3, 98, 80)
    for i, w in enumerate(waves):
        expected = reference_fbank(np.asarray(w, dtype=np.float32))
        n = int(frames[i])
        np.testing.assert_allclose(features[i, :n].numpy(), expected, atol=2e-3, rtol=0)
        assert torch.all(features[i, n:] == 0)


@pytest.mark.parametrize("window", ["hamming", "povey"])
def test_options_without_mean_norm(window):
    rng = np.random.default_rng(1)
    wave = (0.2 * rng.standard_normal(4000)).astype(np.float32)
    config = FbankConfig(window=window, num_mel_bins=40, mean_norm=False, low_freq=100.0, high_freq=-400.0)
    features, _ = Fbank(config)(torch.from_numpy(wave)[None], torch.tensor([4000]))
    expected = reference_fbank(wave, num_bins=40, window=window, mean_norm=False, low=100.0, high=-400.0)
    # absolute log energies (no CMN) around 10-25: compare relatively
    np.testing.assert_allclose(features[0].numpy(), expected, rtol=2e-4, atol=2e-3)


def test_dither_is_seeded_gaussian_noise_per_frame_and_off_by_default():
    wave = torch.zeros(1, 2000)
    silent, frames = Fbank(FbankConfig(mean_norm=False))(wave, torch.tensor([2000]))
    assert torch.allclose(silent, torch.full_like(silent, math.log(torch.finfo(torch.float32).eps)))
    dithered = Fbank(FbankConfig(mean_norm=False, dither=2.0))
    a, _ = dithered(wave, torch.tensor([2000]), generator=torch.Generator().manual_seed(3))
    b, _ = dithered(wave, torch.tensor([2000]), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    # the same draws, added to each (overlapping) frame independently, as Kaldi dithers
    noise = 2.0 * torch.randn((1, int(frames[0]), 400), generator=torch.Generator().manual_seed(3))
    expected = reference_frames_to_fbank(noise[0].numpy(), mean_norm=False)
    np.testing.assert_allclose(a[0].numpy(), expected, rtol=1e-4, atol=2e-3)


def test_too_short_waveforms_give_zero_frames():
    features, frames = Fbank()(torch.zeros(2, 399), torch.tensor([399, 200]))
    assert features.shape == (2, 0, 80) and frames.tolist() == [0, 0]
    with pytest.raises(ValueError, match=r"\[batch, samples\]"):
        Fbank()(torch.zeros(400), torch.tensor([400]))
