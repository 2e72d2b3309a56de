"""Helpers shared by the ASR tests (tiny upstreams and data dirs written to tmp_path), and the tests of
the test conditions (noise at an SNR, reverberation, babble) that every decode and every noisy
speaker-verification evaluation relies on."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import pytest
import soundfile
import torch

from speechdistill.augment import measure_snr
from speechdistill.augment.conditions import (ConditionError, condition_sort_key, corrupt_batch, parse_condition,
                                              utterance_generator)
from speechdistill.models.checkpoints import save_model
from speechdistill.models.config import EncoderConfig
from speechdistill.models.encoder import Encoder

SAMPLE_RATE = 16000
TONES = {"A": 300.0, "B": 700.0, "C": 1500.0}


def make_upstream(directory: Path, *, seed: int = 0, hidden: int = 32, layers: int = 2) -> Path:
    """A random-weight encoder of the wav2vec2 family, small enough for CPU tests, saved in our format."""
    torch.manual_seed(seed)
    config = EncoderConfig(conv_layers=[[32, 10, 5]] + [[32, 3, 2]] * 4 + [[32, 2, 2]] * 2, hidden_size=hidden,
                           num_layers=layers, num_heads=2, ffn_size=2 * hidden, pos_conv_kernel=16, pos_conv_groups=4)
    save_model(Encoder(config), directory)
    return directory


def tone_word_audio(text: str, rng: np.random.Generator) -> np.ndarray:
    """Each letter of ``text`` (A, B or C) as 0.2 s of its own tone, words separated by 0.15 s of silence."""
    pieces = [np.zeros(int(0.1 * SAMPLE_RATE), np.float32)]
    t = np.arange(int(0.2 * SAMPLE_RATE)) / SAMPLE_RATE
    for word in text.split():
        for letter in word:
            pieces.append((0.3 * np.sin(2 * np.pi * TONES[letter] * t + rng.uniform(0, 6.28))).astype(np.float32))
        pieces.append(np.zeros(int(0.15 * SAMPLE_RATE), np.float32))
    audio = np.concatenate(pieces)
    return (audio + 0.003 * rng.standard_normal(len(audio))).astype(np.float32)


def make_data_dir(directory: Path, texts: Dict[str, str], *, seed: int = 0,
                  lengths: Optional[Dict[str, int]] = None) -> Path:
    """A Kaldi data dir (wav.scp, text, utt2spk, spk2utt, utt2num_samples) of tone-word utterances.

    ``texts`` maps utterance ids (``<spk>-<n>``) to transcripts over the letters A, B, C;
    ``lengths`` forces the length in samples of some utterances (noise audio then).
    """
    directory = Path(directory)
    (directory / "wav").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    wav_scp, counts, utt2spk = [], [], []
    for key in sorted(texts, key=lambda k: k.encode()):
        if lengths and key in lengths:
            audio = (0.1 * rng.standard_normal(lengths[key])).astype(np.float32)
        else:
            audio = tone_word_audio(texts[key], rng)
        path = directory / "wav" / f"{key}.wav"
        soundfile.write(str(path), audio, SAMPLE_RATE, subtype="FLOAT")
        wav_scp.append(f"{key} {path}\n")
        counts.append(f"{key} {len(audio)}\n")
        utt2spk.append(f"{key} {key.split('-')[0]}\n")
    (directory / "wav.scp").write_text("".join(wav_scp))
    (directory / "utt2num_samples").write_text("".join(counts))
    (directory / "utt2spk").write_text("".join(utt2spk))
    spk2utt: Dict[str, list] = {}
    for key in sorted(texts, key=lambda k: k.encode()):
        spk2utt.setdefault(key.split("-")[0], []).append(key)
    (directory / "spk2utt").write_text("".join(f"{s} {' '.join(u)}\n" for s, u in sorted(spk2utt.items())))
    (directory / "text").write_text("".join(f"{k} {texts[k]}\n" for k in sorted(texts, key=lambda k: k.encode())))
    return directory


def random_texts(count: int, seed: int, prefix: str = "spk1") -> Dict[str, str]:
    rng = np.random.default_rng(seed)
    texts = {}
    for index in range(count):
        words = ["".join(rng.choice(list(TONES), size=int(rng.integers(1, 4)))) for _ in range(int(rng.integers(1, 4)))]
        texts[f"{prefix}-{index:03d}"] = " ".join(words)
    return texts


def make_noise_dir(directory: Path, *, seed: int = 0, count: int = 3) -> Path:
    """A Kaldi dir of noise recordings (coloured noise of 1-2 s), as stage 1 writes data/musan_noise."""
    directory = Path(directory)
    (directory / "wav").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines, counts = [], []
    for index in range(count):
        length = int(rng.integers(16000, 32000))
        noise = np.cumsum(rng.standard_normal(length)).astype(np.float32)
        noise = 0.3 * (noise - noise.mean()) / (np.abs(noise).max() + 1e-9)
        path = directory / "wav" / f"noise-{index}.wav"
        soundfile.write(str(path), noise.astype(np.float32), SAMPLE_RATE, subtype="FLOAT")
        lines.append(f"noise-{index} {path}\n")
        counts.append(f"noise-{index} {length}\n")
    (directory / "wav.scp").write_text("".join(lines))
    (directory / "utt2num_samples").write_text("".join(counts))
    (directory / "utt2spk").write_text("".join(f"noise-{i} noise-{i}\n" for i in range(count)))
    return directory


def make_rir_dir(directory: Path, *, seed: int = 0, count: int = 3) -> Path:
    """A Kaldi dir of synthetic room impulse responses (delayed direct path + decaying tail)."""
    directory = Path(directory)
    (directory / "wav").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines, rooms = [], []
    for index in range(count):
        rir = np.zeros(4000, np.float32)
        delay = int(rng.integers(20, 200))
        rir[delay] = 1.0
        tail = rng.standard_normal(4000 - delay - 1) * np.exp(-np.arange(4000 - delay - 1) / 600.0) * 0.3
        rir[delay + 1:] = tail
        path = directory / "wav" / f"rir-{index}.wav"
        soundfile.write(str(path), rir, SAMPLE_RATE, subtype="FLOAT")
        lines.append(f"rir-{index} {path}\n")
        rooms.append(f"rir-{index} smallroom\n")
    (directory / "wav.scp").write_text("".join(lines))
    (directory / "utt2room").write_text("".join(rooms))
    (directory / "utt2spk").write_text("".join(f"rir-{i} rir-{i}\n" for i in range(count)))
    return directory


def run_module(module: str, *args, cwd: Optional[Path] = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


def padded_batch(rng: np.random.Generator, lengths: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    wavs = torch.zeros(len(lengths), max(lengths))
    for row, length in enumerate(lengths):
        wavs[row, :length] = torch.from_numpy((0.2 * rng.standard_normal(length)).astype(np.float32))
    return wavs, torch.tensor(lengths)


# ----------------------------------------------------------------------------------- conditions
def test_condition_names_parse_and_sort():
    assert parse_condition("clean").is_clean
    assert parse_condition("snr-5").snr_db == -5.0
    assert parse_condition("snr7.5").snr_db == 7.5
    for bad in ("snr", "snrx", "noisy", "snr 5"):
        with pytest.raises(ConditionError, match="unknown test condition"):
            parse_condition(bad)
    with pytest.raises(ConditionError, match="--rir-data"):
        parse_condition("reverb")
    with pytest.raises(ConditionError, match="--babble-data DIR"):
        parse_condition("babble")
    names = ["babble5", "reverb", "snr0", "clean", "babble", "snr20", "snr-5", "snr5", "snr10", "babble15"]
    assert sorted(names, key=condition_sort_key) == ["clean", "snr20", "snr10", "snr5", "snr0", "snr-5", "reverb",
                                                     "babble", "babble15", "babble5"]


@pytest.mark.parametrize("snr", [20.0, 5.0, 0.0, -5.0])
def test_noise_condition_reaches_its_snr_on_the_real_length_and_keeps_padding_zero(tmp_path, snr):
    noise_dir = make_noise_dir(tmp_path / "noise")
    rng = np.random.default_rng(1)
    wavs, lengths = padded_batch(rng, [16000, 9000, 4000])
    for condition in (parse_condition(f"snr{snr:g}", noise_dirs=[noise_dir]), parse_condition(f"snr{snr:g}")):
        noisy = corrupt_batch(condition, wavs, lengths, ["a", "b", "c"], seed=3)
        for row, length in enumerate(lengths.tolist()):
            measured = 10 * np.log10(float(wavs[row, :length].double().square().sum())
                                     / float((noisy[row, :length] - wavs[row, :length]).double().square().sum()))
            assert abs(measured - snr) < 0.01
            assert torch.all(noisy[row, length:] == 0)
        assert torch.allclose(measure_snr(wavs[:1], noisy[:1], lengths[:1]), torch.tensor([snr]), atol=0.01)


def test_babble_condition_mixes_3_to_7_talkers_at_its_snr(tmp_path):
    """babble: 3-7 recordings of the speech dir, each at the same power, summed and added at an SNR drawn from
    13-20 dB (babble<N>: exactly N dB), over the real length; padding stays zero."""
    speech_dir = make_noise_dir(tmp_path / "speech", seed=5, count=8)
    rng = np.random.default_rng(6)
    wavs, lengths = padded_batch(rng, [16000, 9000, 12000, 7000, 15000, 11000])
    keys = [f"u{i}" for i in range(6)]
    ranged = parse_condition("babble", babble_dirs=[speech_dir])
    fixed = parse_condition("babble10", babble_dirs=[speech_dir])
    assert ranged.snr_db is None and fixed.snr_db == 10.0
    assert "3-7 talkers" in ranged.description and "13-20 dB" in ranged.description
    measured = {}
    for condition in (ranged, fixed):
        noisy = corrupt_batch(condition, wavs, lengths, keys, seed=0)
        snrs = []
        for row, length in enumerate(lengths.tolist()):
            added = (noisy[row, :length] - wavs[row, :length]).double()
            snrs.append(10 * np.log10(float(wavs[row, :length].double().square().sum()) / float(added.square().sum())))
            assert torch.all(noisy[row, length:] == 0)
        measured[condition.name] = snrs
    assert all(13.0 - 1e-3 <= snr <= 20.0 + 1e-3 for snr in measured["babble"])
    assert len({round(snr, 2) for snr in measured["babble"]}) > 3  # drawn per utterance
    assert all(abs(snr - 10.0) < 0.01 for snr in measured["babble10"])
    # the same talkers, counts and offsets as an Augmenter babble of 3-7 sources draws from the same generator
    from speechdistill.augment import Augmenter, AugmentConfig, NoiseBank, SourceConfig
    quiet = SourceConfig(None)
    config = AugmentConfig(apply_prob=1.0, choices={"babble": 1.0}, noise=quiet, music=quiet,
                           babble=SourceConfig(str(speech_dir), [10.0, 10.0], num_sources=[3, 7]))
    augmenter = Augmenter(config, {"babble": NoiseBank.from_data_dir(speech_dir, name="babble")}, None)
    reference = augmenter(wavs[:1, :16000], lengths[:1], utterance_generator(0, "babble10", "u0")).noisy
    assert torch.equal(corrupt_batch(fixed, wavs[:1], lengths[:1], ["u0"], seed=0), reference)


def test_condition_audio_depends_on_the_utterance_id_not_on_the_batch(tmp_path):
    condition = parse_condition("snr5", noise_dirs=[make_noise_dir(tmp_path / "noise")])
    rng = np.random.default_rng(2)
    wavs, lengths = padded_batch(rng, [12000, 8000, 5000])
    keys = ["u1", "u2", "u3"]
    together = corrupt_batch(condition, wavs, lengths, keys, seed=0)
    # the same utterances in another order and batch size (padded to another length)
    alone = corrupt_batch(condition, wavs[2:3, :5000], lengths[2:], ["u3"], seed=0)
    swapped = corrupt_batch(condition, wavs[[1, 0]], lengths[[1, 0]], ["u2", "u1"], seed=0)
    assert torch.equal(alone[0], together[2, :5000])
    assert torch.equal(swapped[0], together[1]) and torch.equal(swapped[1], together[0])
    other_seed = corrupt_batch(condition, wavs, lengths, keys, seed=1)
    assert not torch.equal(other_seed[0], together[0])
    # generators are derived from (seed, condition, utterance id) only
    a, b = utterance_generator(0, "snr5", "u1"), utterance_generator(0, "snr5", "u1")
    assert torch.equal(torch.rand(4, generator=a), torch.rand(4, generator=b))
    c = utterance_generator(0, "snr10", "u1")
    assert not torch.equal(torch.rand(4, generator=utterance_generator(0, "snr5", "u1")), torch.rand(4, generator=c))


def test_reverb_condition_stays_aligned_with_the_clean_input(tmp_path):
    condition = parse_condition("reverb", rir_dirs=[make_rir_dir(tmp_path / "rirs")])
    rng = np.random.default_rng(4)
    wavs, lengths = padded_batch(rng, [16000, 11000])
    reverberant = corrupt_batch(condition, wavs, lengths, ["u1", "u2"], seed=0)
    for row, length in enumerate(lengths.tolist()):
        x, y = wavs[row, :length].numpy(), reverberant[row, :length].numpy()
        correlation = np.correlate(y, x, mode="full")
        assert int(np.argmax(np.abs(correlation))) - (length - 1) == 0  # peak at lag 0: no delay added
        assert not np.allclose(x, y)
        assert torch.all(reverberant[row, length:] == 0)
