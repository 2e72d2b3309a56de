"""Helpers shared by the speaker-verification tests (imported by test_sv_*.py and test_recipe_sv*.py):
tiny labelled data dirs of synthetic "speakers" and tiny random-weight teachers, in our format or
in Hugging Face's."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Sequence

import numpy as np
import soundfile
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

SAMPLE_RATE = 16000
TINY_ECAPA = {"channels": 16, "res2net_scale": 4, "se_bottleneck": 8, "aggregation_channels": 24,
              "attention_channels": 8, "embedding_size": 12}


def speaker_tone(speaker: int, samples: int, rng: np.random.Generator) -> np.ndarray:
    """A voiced-like signal whose pitch and spectral tilt depend on the speaker: harmonics of
    f0 = 90 + 37 k Hz with amplitudes falling as h^-(0.6 + 0.3 k), a slow random pitch wobble,
    a syllable-like envelope and a little noise."""
    t = np.arange(samples) / SAMPLE_RATE
    f0 = 90.0 + 37.0 * speaker
    wobble = 1.0 + 0.03 * np.sin(2 * np.pi * rng.uniform(1, 4) * t + rng.uniform(0, 2 * np.pi))
    phase = 2 * np.pi * np.cumsum(f0 * wobble) / SAMPLE_RATE
    signal = sum(h ** -(0.6 + 0.3 * speaker) * np.sin(h * phase + rng.uniform(0, 2 * np.pi)) for h in range(1, 12))
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * rng.uniform(2, 5) * t + rng.uniform(0, 2 * np.pi))
    out = signal * envelope + 0.02 * rng.standard_normal(samples)
    return (0.3 * out / np.abs(out).max()).astype(np.float32)


def write_speaker_data(directory: Path, *, speakers: Sequence[int] = (0, 1, 2, 3), utts_per_speaker: int = 4,
                       seconds: Sequence[float] = (1.0, 1.6), seed: int = 0, lengths: List[int] = None) -> Path:
    """A Kaldi data dir (wav.scp, utt2spk, spk2utt, utt2num_samples) of speaker tones as WAV files.

    Speaker ids are ``spkNN``, utterance ids ``spkNN-uMM`` (speaker-prefixed, byte-sorted)."""
    directory = Path(directory)
    (directory / "wav").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    wav_scp, utt2spk, counts = [], [], []
    spk2utt = {}
    index = 0
    for speaker in speakers:
        spk = f"spk{speaker:02d}"
        for n in range(utts_per_speaker):
            utt = f"{spk}-u{n:02d}"
            if lengths is not None:
                samples = lengths[index]
            else:
                samples = int(rng.uniform(*seconds) * SAMPLE_RATE)
            index += 1
            path = directory / "wav" / f"{utt}.wav"
            soundfile.write(str(path), speaker_tone(speaker, samples, rng), SAMPLE_RATE, subtype="PCM_16")
            wav_scp.append(f"{utt} {path}\n")
            utt2spk.append(f"{utt} {spk}\n")
            counts.append(f"{utt} {samples}\n")
            spk2utt.setdefault(spk, []).append(utt)
    (directory / "wav.scp").write_text("".join(wav_scp))
    (directory / "utt2spk").write_text("".join(utt2spk))
    (directory / "utt2num_samples").write_text("".join(counts))
    (directory / "spk2utt").write_text("".join(f"{s} {' '.join(u)}\n" for s, u in spk2utt.items()))
    return directory


def tiny_encoder_config(layers: int = 4, hidden: int = 32, channels: int = 32):
    from speechdistill.models.config import EncoderConfig

    conv = [[channels, 10, 5]] + [[channels, 3, 2]] * 4 + [[channels, 2, 2]] * 2
    return EncoderConfig(conv_layers=conv, hidden_size=hidden, num_layers=layers, num_heads=2, ffn_size=2 * hidden,
                         pos_conv_kernel=16, pos_conv_groups=2)


def save_tiny_teacher(path: Path, *, layers: int = 4, hidden: int = 32, channels: int = 32, seed: int = 0) -> Path:
    """A random-weight teacher in our model-dir format."""
    from speechdistill.models.checkpoints import save_model
    from speechdistill.models.encoder import Encoder

    torch.manual_seed(seed)
    encoder = Encoder(tiny_encoder_config(layers, hidden, channels))
    with torch.no_grad():  # LayerNorms away from identity, so copies and mismatches show
        for name, parameter in encoder.named_parameters():
            if name.endswith("norm.weight") or name.endswith("norm.bias"):
                parameter.add_(0.1 * torch.randn_like(parameter))
    return save_model(encoder, path, source={"architecture": "tiny random test teacher"})


def save_tiny_hf_teacher(path: Path, *, layers: int = 4, hidden: int = 32, channels: int = 32, seed: int = 0) -> Path:
    """A random-weight HuBERT teacher saved by transformers (config.json + model.safetensors)."""
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(seed)
    config = HubertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                          intermediate_size=2 * hidden, conv_dim=(channels,) * 7, num_conv_pos_embeddings=16,
                          num_conv_pos_embedding_groups=2, do_stable_layer_norm=False, feat_extract_norm="group")
    model = HubertModel(config).eval()
    model.save_pretrained(str(path), safe_serialization=True)
    return Path(path)
