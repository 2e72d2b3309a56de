"""Batched augmentation primitives: SNR on the real length, aligned reverberation, clipping, easing."""
import math

import numpy as np
import pytest
import torch
from scipy.signal import correlate

from speechdistill.augment.ops import (add_noise, clip_peaks, ease_gain, fast_fft_size, fft_convolve_aligned,
                                       measure_snr, valid_mask)


def _batch(lengths, total, seed=0):
    rng = np.random.default_rng(seed)
    wavs = np.zeros((len(lengths), total), dtype=np.float32)
    for row, n in enumerate(lengths):
        t = np.arange(n) / 16000
        wavs[row, :n] = (0.3 * np.sin(2 * np.pi * (120 + 40 * row) * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
                         + 0.02 * rng.standard_normal(n))
    return torch.from_numpy(wavs), torch.tensor(lengths)


def _snr_numpy(clean, noisy, n):
    """Independent SNR: power ratio over the first n samples, in dB."""
    c = clean[:n].astype(np.float64)
    d = noisy[:n].astype(np.float64) - c
    return 10 * math.log10(np.sum(c ** 2) / np.sum(d ** 2))


def test_snr_is_achieved_on_the_real_length_whatever_the_padding():
    lengths = [16000, 4000, 9000, 1200]
    clean, lens = _batch(lengths, 16000)
    rng = np.random.default_rng(1)
    noise = torch.from_numpy(rng.standard_normal((4, 16000)).astype(np.float32))
    # huge noise in the padded region must not change the level used for the valid part
    noise[1, 4000:] = 1000.0
    targets = torch.tensor([-5.0, 0.0, 7.5, 20.0])
    noisy = add_noise(clean, noise, lens, targets)
    for row, n in enumerate(lengths):
        assert _snr_numpy(clean[row].numpy(), noisy[row].numpy(), n) == pytest.approx(float(targets[row]), abs=0.05)
        assert torch.count_nonzero(noisy[row, n:]) == 0  # nothing written into the padding
    assert torch.allclose(measure_snr(clean, noisy, lens), targets, atol=0.05)


def test_a_silent_row_gets_no_noise_instead_of_nan():
    clean = torch.zeros(1, 800)
    noisy = add_noise(clean, torch.randn(1, 800), torch.tensor([800]), torch.tensor([10.0]))
    assert torch.equal(noisy, clean)


def _rir(delay, length=4000, seed=3):
    rng = np.random.default_rng(seed)
    rir = rng.standard_normal(length) * np.exp(-np.arange(length) / 600.0) * 0.3
    rir[:delay] = 0.0
    rir[delay] = 1.0  # direct path: the strongest tap
    return rir / np.sqrt(np.sum(rir ** 2))


def test_reverberation_matches_numpy_convolution_shifted_by_the_direct_path():
    lengths = [12000, 7000]
    wavs, lens = _batch(lengths, 12000)
    delays = [137, 410]
    rirs = torch.from_numpy(np.stack([_rir(d) for d in delays]).astype(np.float32))
    out = fft_convolve_aligned(wavs, lens, rirs, torch.tensor(delays))
    for row, (n, d) in enumerate(zip(lengths, delays)):
        reference = np.convolve(wavs[row, :n].numpy().astype(np.float64), rirs[row].numpy().astype(np.float64))
        np.testing.assert_allclose(out[row, :n].numpy(), reference[d:d + n], atol=2e-5)
        assert torch.count_nonzero(out[row, n:]) == 0


def test_aligned_reverberation_cross_correlates_with_the_clean_input_at_lag_zero():
    # a broadband, non-periodic input (a periodic one correlates with itself at many lags)
    rng = np.random.default_rng(5)
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * np.arange(16000) / 16000) ** 2
    wavs = torch.from_numpy((0.1 * rng.standard_normal(16000) * envelope).astype(np.float32))[None, :]
    lens = torch.tensor([16000])
    delay = 300
    rir = torch.from_numpy(_rir(delay)[None, :].astype(np.float32))
    clean = wavs[0].numpy().astype(np.float64)

    def peak_lag(output):
        xcorr = correlate(output.astype(np.float64), clean, mode="full", method="fft")
        return int(np.argmax(np.abs(xcorr))) - (len(clean) - 1)

    aligned = fft_convolve_aligned(wavs, lens, rir, torch.tensor([delay]))[0].numpy()
    causal = fft_convolve_aligned(wavs, lens, rir, torch.tensor([0]))[0].numpy()
    assert peak_lag(aligned) == 0
    assert peak_lag(causal) == delay  # what an unaligned convolution would give


def test_fast_fft_size_is_the_smallest_5_smooth_number_not_below_n():
    def smooth(m):
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        return m == 1

    for n in (1, 7, 97, 1000, 48000 + 16000 - 1, 65537):
        expected = next(m for m in range(n, 4 * n + 2) if smooth(m))
        assert fast_fft_size(n) == expected


def test_clipping_cuts_at_the_ratio_of_each_rows_own_peaks():
    wavs = torch.tensor([[0.5, -1.0, 0.8, 0.2, 9.0], [0.1, 0.4, -0.2, 0.0, 0.0]])
    lengths = torch.tensor([4, 3])  # the 9.0 is padding and must not set the peak
    out = clip_peaks(wavs, lengths, torch.tensor([0.5, 0.75]))
    assert torch.allclose(out[0], torch.tensor([0.4, -0.5, 0.4, 0.2, 0.0]))
    assert torch.allclose(out[1], torch.tensor([0.1, 0.3, -0.15, 0.0, 0.0]))


def test_easing_ramps_from_the_floor_to_full_level_along_the_curve():
    wavs = torch.ones(2, 6)
    lengths = torch.tensor([5, 5])
    out = ease_gain(wavs, lengths, kinds=torch.tensor([1, 1]), reverse=torch.tensor([False, True]),
                    floor=torch.tensor([0.2, 0.2]))
    u = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    expected = 0.2 + 0.8 * u ** 2  # curve 1 is quadratic ease-in
    assert torch.allclose(out[0, :5], expected)
    assert torch.allclose(out[1, :5], expected.flip(0))
    assert out[0, 5] == 0 and out[1, 5] == 0


def test_valid_mask_marks_the_first_lengths_samples():
    assert valid_mask(torch.tensor([0, 2, 3]), 3).tolist() == [[False] * 3, [True, True, False], [True] * 3]
