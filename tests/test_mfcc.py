"""MFCC / fbank / deltas against textbook formulas (numpy loops), transformers' Kaldi fbank, and by hand."""
import math

import numpy as np
import pytest
import scipy.fft
import torch

from speechdistill.data.features import (FeatureError, MfccOptions, compute_deltas, hubert_mfcc_features,
                                         log_mel_filterbank, mfcc, mfcc_deltas, num_frames, subsample_frames)

FLT_EPS = float(np.finfo(np.float32).eps)


def make_signal(samples, seed=0):
    rng = np.random.default_rng(seed)
    time = np.arange(samples) / 16000
    signal = 0.3 * np.sin(2 * np.pi * 440 * time) + 0.2 * np.sin(2 * np.pi * 2500 * time + 1.0)
    return (signal + 0.05 * rng.standard_normal(samples)).astype(np.float32)


def textbook_mfcc(signal, num_mel_bins=23, num_ceps=13, use_energy=False):
    """Kaldi MFCC written out frame by frame in float64 (25 ms / 10 ms, 512-point FFT, Povey window)."""
    rate, length, hop, n_fft = 16000, 400, 160, 512
    mel = lambda f: 1127.0 * math.log(1.0 + f / 700.0)  # noqa: E731
    low, high = mel(20.0), mel(8000.0)
    edges = [low + i * (high - low) / (num_mel_bins + 1) for i in range(num_mel_bins + 2)]
    window = [(0.5 - 0.5 * math.cos(2 * math.pi * n / (length - 1))) ** 0.85 for n in range(length)]
    rows = []
    for index in range(1 + (len(signal) - length) // hop):
        frame = signal[index * hop:index * hop + length].astype(np.float64)
        frame = frame - frame.mean()
        log_energy = math.log(max(float(np.sum(frame ** 2)), FLT_EPS))
        emphasised = np.empty(length)
        emphasised[0] = frame[0] - 0.97 * frame[0]
        for n in range(1, length):
            emphasised[n] = frame[n] - 0.97 * frame[n - 1]
        spectrum = np.abs(np.fft.fft(emphasised * window, n_fft)) ** 2
        log_mel = []
        for m in range(num_mel_bins):
            left, center, right = edges[m], edges[m + 1], edges[m + 2]
            energy = 0.0
            for k in range(n_fft // 2):  # the Nyquist bin is left out
                position = mel(k * rate / n_fft)
                if left < position <= center:
                    energy += spectrum[k] * (position - left) / (center - left)
                elif center < position < right:
                    energy += spectrum[k] * (right - position) / (right - center)
            log_mel.append(math.log(max(energy, FLT_EPS)))
        cepstra = []
        for k in range(num_ceps):
            scale = math.sqrt(1.0 / num_mel_bins) if k == 0 else math.sqrt(2.0 / num_mel_bins)
            value = scale * sum(log_mel[m] * math.cos(math.pi * k * (m + 0.5) / num_mel_bins)
                                for m in range(num_mel_bins))
            cepstra.append(value * (1.0 + 11.0 * math.sin(math.pi * k / 22.0)))
        if use_energy:
            cepstra[0] = log_energy
        rows.append((cepstra, log_mel))
    return np.array([r[0] for r in rows]), np.array([r[1] for r in rows])


def test_textbook_dct_is_the_orthonormal_dct_ii():
    values = np.random.default_rng(1).standard_normal(23)
    by_formula = [(math.sqrt(1 / 23) if k == 0 else math.sqrt(2 / 23)) *
                  sum(values[m] * math.cos(math.pi * k * (m + 0.5) / 23) for m in range(23)) for k in range(13)]
    np.testing.assert_allclose(by_formula, scipy.fft.dct(values, norm="ortho")[:13], rtol=1e-12)


@pytest.mark.parametrize("num_mel_bins,use_energy", [(23, False), (40, False), (23, True)])
def test_mfcc_matches_textbook_formula(num_mel_bins, use_energy):
    signal = make_signal(2400)
    expected, _ = textbook_mfcc(signal, num_mel_bins=num_mel_bins, use_energy=use_energy)
    options = MfccOptions(num_mel_bins=num_mel_bins, use_energy=use_energy)
    features, frame_lengths = mfcc(torch.from_numpy(signal)[None], torch.tensor([len(signal)]), options)
    assert features.shape == (1, 13, 13) and frame_lengths.tolist() == [13]
    np.testing.assert_allclose(features[0].numpy(), expected, rtol=1e-4, atol=2e-3)


def test_fbank_matches_transformers_kaldi_reference():
    from transformers.audio_utils import mel_filter_bank, spectrogram, window_function
    signal = make_signal(4000, seed=2)
    banks = mel_filter_bank(num_frequency_bins=257, num_mel_filters=23, min_frequency=20, max_frequency=8000,
                            sampling_rate=16000, norm=None, mel_scale="kaldi", triangularize_in_mel_space=True)
    reference = spectrogram(signal, window_function(400, "povey", periodic=False), frame_length=400, hop_length=160,
                            fft_length=512, power=2.0, center=False, preemphasis=0.97, mel_filters=banks,
                            log_mel="log", mel_floor=FLT_EPS, remove_dc_offset=True, dtype=np.float64).T
    ours, _ = log_mel_filterbank(torch.from_numpy(signal)[None], torch.tensor([4000]))
    np.testing.assert_allclose(ours[0].numpy(), reference, rtol=1e-5, atol=1e-4)
    # and the textbook loop agrees on the log-mel energies too
    _, textbook_log_mel = textbook_mfcc(signal)
    np.testing.assert_allclose(ours[0].numpy(), textbook_log_mel, rtol=1e-5, atol=1e-4)


def test_frame_counts_with_snip_edges():
    assert num_frames(torch.tensor([0, 399, 400, 559, 560, 16000])).tolist() == [0, 0, 1, 1, 2, 98]


def test_padded_batch_equals_each_utterance_alone():
    first, second = make_signal(3000, seed=3), make_signal(1700, seed=4)
    batch = torch.full((2, 3000), 123.0)  # garbage padding
    batch[0], batch[1, :1700] = torch.from_numpy(first), torch.from_numpy(second)
    features, frame_lengths = mfcc_deltas(batch, torch.tensor([3000, 1700]))
    assert frame_lengths.tolist() == [1 + 2600 // 160, 1 + 1300 // 160]  # 17, 9
    alone_first, _ = mfcc_deltas(torch.from_numpy(first)[None], torch.tensor([3000]))
    alone_second, _ = mfcc_deltas(torch.from_numpy(second)[None], torch.tensor([1700]))
    torch.testing.assert_close(features[0], alone_first[0])
    torch.testing.assert_close(features[1, :9], alone_second[0])
    assert torch.all(features[1, 9:] == 0)


def test_deltas_by_hand_with_edge_repetition():
    # c = t² for 5 frames; Δ_t = (1·(c[t+1] − c[t−1]) + 2·(c[t+2] − c[t−2])) / 10, indices clamped:
    # t=0: (1 + 2·4)/10 = 0.9 ; t=1: (4 + 2·9)/10 = 2.2 ; t=2: (8 + 2·16)/10 = 4.0
    # t=3: (12 + 2·15)/10 = 4.2 ; t=4: (7 + 2·12)/10 = 3.1
    # second utterance [5, 5, 7] (length 3, then garbage): t=0: (0 + 2·2)/10 = 0.4 ; t=1: (2 + 2·2)/10 = 0.6 ;
    # t=2: (2 + 2·2)/10 = 0.6
    features = torch.tensor([[[0.0], [1.0], [4.0], [9.0], [16.0]], [[5.0], [5.0], [7.0], [99.0], [-99.0]]])
    deltas = compute_deltas(features, torch.tensor([5, 3]))
    torch.testing.assert_close(deltas[0, :, 0], torch.tensor([0.9, 2.2, 4.0, 4.2, 3.1]))
    torch.testing.assert_close(deltas[1, :, 0], torch.tensor([0.4, 0.6, 0.6, 0.0, 0.0]))


def test_mfcc_deltas_layout_is_static_delta_delta_delta():
    signal = torch.from_numpy(make_signal(3200, seed=5))[None]
    features, frame_lengths = mfcc_deltas(signal, torch.tensor([3200]))
    static, _ = mfcc(signal, torch.tensor([3200]))
    assert features.shape == (1, 18, 39)
    torch.testing.assert_close(features[..., :13], static)
    torch.testing.assert_close(features[..., 13:26], compute_deltas(static, frame_lengths))
    torch.testing.assert_close(features[..., 26:], compute_deltas(compute_deltas(static, frame_lengths), frame_lengths))


@pytest.mark.parametrize("samples", [400, 719, 720, 1040, 16000, 16321])
def test_hubert_50hz_features_align_with_encoder_frames(samples):
    wav = torch.from_numpy(make_signal(samples, seed=6))[None]
    features, frame_lengths = hubert_mfcc_features(wav, torch.tensor([samples]))
    full, full_lengths = hubert_mfcc_features(wav, torch.tensor([samples]), label_rate=100)
    encoder_frames = 1 + (samples - 400) // 320  # the HuBERT CNN's conv formula, layer by layer
    assert frame_lengths.tolist() == [encoder_frames] and features.shape[1] == encoder_frames
    torch.testing.assert_close(features, full[:, ::2])
    assert full_lengths.tolist() == [1 + (samples - 400) // 160]


def test_subsample_lengths_round_up():
    features = torch.arange(10.0).reshape(1, 5, 2).repeat(2, 1, 1)
    kept, lengths = subsample_frames(features, torch.tensor([5, 4]))
    torch.testing.assert_close(kept[0, :, 0], torch.tensor([0.0, 4.0, 8.0]))
    assert lengths.tolist() == [3, 2]


def test_bad_options_and_inputs_raise_clear_errors():
    with pytest.raises(FeatureError, match="num_ceps=30"):
        MfccOptions(num_ceps=30)
    with pytest.raises(FeatureError, match="window"):
        MfccOptions(window="kaiser")
    with pytest.raises(FeatureError, match="high_freq"):
        MfccOptions(low_freq=9000)
    with pytest.raises(FeatureError, match=r"\[B, T\]"):
        mfcc(torch.zeros(400), torch.tensor([400]))
    with pytest.raises(FeatureError, match="lengths"):
        mfcc(torch.zeros(1, 400), torch.tensor([401]))
    with pytest.raises(FeatureError, match="10 ms"):
        hubert_mfcc_features(torch.zeros(1, 800), torch.tensor([800]), options=MfccOptions(frame_shift_ms=20))
