"""Helpers of the pretraining tests: tiny synthetic "speech" data dirs and a tiny HuBERT config.

The audio is a sequence of 60-160 ms segments, each one of a few "phones" (two formant-like
sinusoids plus a little noise, or a noise burst) with a smooth envelope, so that MFCC k-means
finds stable units and the units of a frame depend on its neighbours (what masked prediction
learns). The tests at the bottom check the helpers themselves.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import soundfile

SAMPLE_RATE = 16000
# (formant 1, formant 2) in Hz; 0 marks a noise burst.
PHONES = [(300, 2300), (700, 1200), (500, 900), (350, 1900), (0, 0), (600, 1700)]


def synth_utterance(num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """float32 [num_samples] in [-1, 1]: random phone segments with raised-cosine envelopes."""
    out = np.zeros(num_samples, dtype=np.float64)
    position = 0
    previous = -1
    while position < num_samples:
        length = int(rng.integers(960, 2560))
        phone = int(rng.integers(len(PHONES)))
        if phone == previous:
            phone = (phone + 1) % len(PHONES)
        previous = phone
        t = np.arange(length) / SAMPLE_RATE
        f1, f2 = PHONES[phone]
        if f1 == 0:
            segment = rng.standard_normal(length) * 0.3
        else:
            pitch = 110 + 30 * rng.random()
            segment = (np.sin(2 * np.pi * f1 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * pitch * t))
                       + 0.5 * np.sin(2 * np.pi * f2 * t) + 0.02 * rng.standard_normal(length))
        envelope = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(length) / max(length - 1, 1))
        end = min(position + length, num_samples)
        out[position:end] = 0.3 * (segment * envelope)[:end - position]
        position = end
    return out.clip(-0.99, 0.99).astype(np.float32)


def make_speech_dir(directory: Path, lengths: Sequence[int], *, seed: int = 0, prefix: str = "utt") -> Path:
    """A Kaldi data dir (wav.scp, utt2num_samples) of synthetic utterances with these sample counts."""
    directory = Path(directory)
    (directory / "wav").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    wav_lines, count_lines = [], []
    for index, length in enumerate(lengths):
        key = f"{prefix}{index:03d}"
        path = directory / "wav" / f"{key}.wav"
        soundfile.write(str(path), synth_utterance(int(length), rng), SAMPLE_RATE, subtype="FLOAT")
        wav_lines.append(f"{key} {path}\n")
        count_lines.append(f"{key} {int(length)}\n")
    (directory / "wav.scp").write_text("".join(wav_lines))
    (directory / "utt2num_samples").write_text("".join(count_lines))
    return directory


TINY_ENCODER: Dict[str, Any] = {
    "conv_layers": [[16, 10, 5], [16, 3, 2], [16, 3, 2], [16, 3, 2], [16, 3, 2], [16, 2, 2], [16, 2, 2]],
    "hidden_size": 32, "num_layers": 2, "num_heads": 2, "ffn_size": 64, "pos_conv_kernel": 8,
    "pos_conv_groups": 2, "mask_embedding": True, "feature_grad_mult": 0.1,
}


def tiny_config_dict(train: Path, valid: Optional[Path] = None, **changes: Any) -> Dict[str, Any]:
    """Keys of a HubertPretrainConfig that trains in seconds on the synthetic dirs."""
    data: Dict[str, Any] = {
        "train_data": str(train), "valid_data": str(valid) if valid else None,
        "encoder": dict(TINY_ENCODER), "final_dim": 16,
        "labels": {"num_clusters": 8, "kmeans_iterations": 15},
        "masking": {"mask_prob": 0.5, "mask_length": 3, "min_masks": 1},
        "batch_seconds": 6.0, "max_seconds": 1.5, "min_seconds": 0.2, "num_workers": 0, "num_buckets": 1,
        "max_steps": 6, "lr": 2e-3, "warmup_fraction": None, "warmup_steps": 1, "log_every": 1,
        "valid_every": 0, "checkpoint_every": 100, "device": "cpu", "precision": "fp32", "seed": 3,
    }
    data.update(changes)
    return data


def test_synthetic_utterances_have_the_requested_lengths_and_range(tmp_path):
    directory = make_speech_dir(tmp_path / "d", [4000, 5123])
    lines = (directory / "utt2num_samples").read_text().splitlines()
    assert lines == ["utt000 4000", "utt001 5123"]
    audio, rate = soundfile.read(str(directory / "wav" / "utt001.wav"))
    assert rate == SAMPLE_RATE and audio.shape == (5123,)
    assert 0.05 < np.abs(audio).max() <= 0.99


def test_synthetic_audio_is_deterministic_per_seed():
    first = synth_utterance(3000, np.random.default_rng(4))
    again = synth_utterance(3000, np.random.default_rng(4))
    other = synth_utterance(3000, np.random.default_rng(5))
    assert np.array_equal(first, again) and not np.array_equal(first, other)
