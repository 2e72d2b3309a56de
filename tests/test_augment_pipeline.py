"""The batched augmenter: banks, presets, SNRs achieved per row, padding, determinism by seed."""
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from speechdistill.augment import (AugmentError, Augmenter, NoiseBank, RirBank, load_augment_config, measure_snr,
                                   preset)
from speechdistill.augment.ops import valid_mask
from speechdistill.config import ConfigError
from speechdistill.data.tables import write_table

RATE = 16000


def _data_dir(root: Path, signals: dict, extra: dict = None) -> Path:
    root.mkdir(parents=True)
    wav = {}
    for key, samples in signals.items():
        path = root / f"{key}.wav"
        soundfile.write(str(path), np.asarray(samples, dtype=np.float32), RATE, subtype="FLOAT")
        wav[key] = str(path)
    write_table(root / "wav.scp", wav)
    write_table(root / "utt2spk", {k: k for k in wav})
    for name, table in (extra or {}).items():
        write_table(root / name, table)
    return root


@pytest.fixture(scope="module")
def banks_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("banks")
    rng = np.random.default_rng(0)
    _data_dir(root / "noise", {f"n{i}": 0.2 * rng.standard_normal(RATE * 2) for i in range(3)})
    _data_dir(root / "music", {f"m{i}": 0.3 * np.sin(2 * np.pi * 330 * (i + 1) * np.arange(RATE * 2) / RATE)
                               for i in range(2)})
    _data_dir(root / "speech", {f"s{i}": 0.1 * rng.standard_normal(RATE) * np.sin(np.arange(RATE) / 900.0) ** 2
                                for i in range(5)})
    rirs = {}
    rooms = {}
    for i, delay in enumerate((40, 90, 200)):
        rir = rng.standard_normal(3000) * np.exp(-np.arange(3000) / 500.0) * 0.2
        rir[:delay] = 0
        rir[delay] = 0.9
        rirs[f"r{i}"] = rir
        rooms[f"r{i}"] = "smallroom" if i < 2 else "largeroom"
    _data_dir(root / "rirs", rirs, {"utt2room": rooms})
    return root


def _config(root: Path, **changes):
    data = {"apply_prob": 1.0, "choices": {"noise": 1.0},
            "noise": {"data_dir": str(root / "noise"), "snr_db": [0.0, 15.0]},
            "music": {"data_dir": str(root / "music"), "snr_db": [5.0, 15.0]},
            "babble": {"data_dir": str(root / "speech"), "snr_db": [13.0, 20.0], "num_sources": [3, 5]},
            "reverb": {"data_dir": str(root / "rirs")}}
    data.update(changes)
    return load_augment_config(data)


def _speechlike(lengths, total, seed=1):
    rng = np.random.default_rng(seed)
    wavs = torch.zeros(len(lengths), total)
    for row, n in enumerate(lengths):
        t = np.arange(n) / RATE
        wavs[row, :n] = torch.from_numpy((0.2 * rng.standard_normal(n) * (0.3 + np.sin(2 * np.pi * 4 * t) ** 2))
                                         .astype(np.float32))
    return wavs, torch.tensor(lengths)


LENGTHS = [24000, 8000, 16000, 3000, 24000, 12000]


@pytest.mark.parametrize("choice", ["noise", "music", "babble"])
def test_each_category_reaches_the_drawn_snr_measured_from_the_mixture(banks_root, choice):
    augmenter = Augmenter.from_config(_config(banks_root, choices={choice: 1.0}))
    wavs, lengths = _speechlike(LENGTHS, 24000)
    out = augmenter(wavs, lengths, torch.Generator().manual_seed(3))
    drawn = out.snr_db[choice]
    low, high = {"noise": (0, 15), "music": (5, 15), "babble": (13, 20)}[choice]
    assert bool(((drawn >= low) & (drawn <= high)).all())
    for row, n in enumerate(LENGTHS):
        clean = out.clean[row, :n].double()
        added = (out.noisy[row, :n] - out.clean[row, :n]).double()
        measured = 10 * math.log10(float(clean.square().sum() / added.square().sum()))
        assert abs(measured - float(drawn[row])) < 0.5
        assert torch.count_nonzero(out.noisy[row, n:]) == 0
    assert out.choices == [choice] * len(LENGTHS)
    assert torch.equal(out.clean, wavs)  # the clean batch comes back untouched


def test_same_seed_same_output_other_seed_other_output(banks_root):
    augmenter = Augmenter.from_config(load_augment_config(
        {"preset": "oskdft", **{k: {"data_dir": str(banks_root / d)} for k, d in
                                (("noise", "noise"), ("music", "music"), ("babble", "speech"), ("reverb", "rirs"))}}))
    wavs, lengths = _speechlike(LENGTHS * 3, 24000)
    first = augmenter(wavs, lengths, torch.Generator().manual_seed(11))
    again = augmenter(wavs, lengths, torch.Generator().manual_seed(11))
    other = augmenter(wavs, lengths, torch.Generator().manual_seed(12))
    assert torch.equal(first.noisy, again.noisy) and first.choices == again.choices
    assert not torch.equal(first.noisy, other.noisy)
    # with 18 rows and p = 0.6 over 6 options, several kinds of corruption occur
    assert len(set(first.choices)) >= 3
    assert torch.count_nonzero(first.noisy * ~valid_mask(lengths, 24000)) == 0


def test_robustdistiller_preset_draws_integer_snrs_and_applies_them(banks_root):
    config = load_augment_config({"preset": "robustdistiller", "noise": {"data_dir": str(banks_root / "noise")},
                                  "reverb": {"data_dir": str(banks_root / "rirs")}, "choices": {"noise": 1.0}})
    assert config.noise.integer_snr and config.noise.snr_db == [0.0, 20.0] and config.noise.white_prob == 0.3
    augmenter = Augmenter.from_config(config)
    wavs, lengths = _speechlike([16000] * 40, 16000)
    out = augmenter(wavs, lengths, torch.Generator().manual_seed(0))
    snr = out.snr_db["noise"]
    assert torch.equal(snr, snr.round()) and snr.min() >= 0 and snr.max() <= 20
    assert torch.allclose(measure_snr(out.clean, out.noisy, lengths), snr, atol=0.05)


def test_reverb_choice_keeps_the_output_aligned_with_the_clean_input(banks_root):
    augmenter = Augmenter.from_config(_config(banks_root, choices={"reverb": 1.0}))
    rng = np.random.default_rng(4)
    wavs = torch.from_numpy((0.1 * rng.standard_normal((3, 8000))).astype(np.float32))
    out = augmenter(wavs, torch.tensor([8000, 8000, 8000]), torch.Generator().manual_seed(0))
    for row in range(3):
        xcorr = np.correlate(out.noisy[row].numpy().astype(np.float64), wavs[row].numpy().astype(np.float64)[:7000],
                             mode="valid")  # lags 0..1000
        assert int(np.argmax(np.abs(xcorr))) == 0


def test_noise_bank_tiles_short_recordings_and_crops_long_ones(tmp_path):
    short = np.array([1, 2, 3, 4, 5], dtype=np.float32) / 8
    long = np.arange(100, dtype=np.float32) / 128
    bank = NoiseBank.from_data_dir(_data_dir(tmp_path / "n", {"a": short, "b": long}), max_seconds=None)
    tiled = bank.segments(torch.tensor([0]), 12, torch.tensor([0.0]))[0]
    assert torch.allclose(tiled * 8, torch.tensor([1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2.0]), atol=1e-3)
    cropped = bank.segments(torch.tensor([1, 1]), 10, torch.tensor([0.0, 0.999999]))
    assert torch.allclose(cropped[0] * 128, torch.arange(10.0), atol=0.01)
    assert torch.allclose(cropped[1] * 128, torch.arange(90.0, 100.0), atol=0.01)


def test_rir_bank_normalises_energy_finds_the_direct_path_and_filters_rooms(banks_root):
    bank = RirBank.from_data_dir(banks_root / "rirs")
    assert sorted(bank.keys) == ["r0", "r1", "r2"]
    energy = (bank.rirs.double() ** 2).sum(dim=1)
    assert torch.allclose(energy, torch.ones(3, dtype=torch.float64), atol=1e-4)
    assert dict(zip(bank.keys, bank.peaks.tolist())) == {"r0": 40, "r1": 90, "r2": 200}
    small = RirBank.from_data_dir(banks_root / "rirs", rooms=["smallroom"])
    assert small.keys == ["r0", "r1"] and small.rooms == ["smallroom", "smallroom"]
    with pytest.raises(AugmentError, match="no RIR of room types"):
        RirBank.from_data_dir(banks_root / "rirs", rooms=["mediumroom"])


def test_config_errors_name_the_key_and_missing_dirs_say_how_to_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"choices\.noize: unknown effect"):
        load_augment_config({"choices": {"noize": 1.0}})
    with pytest.raises(ConfigError, match=r"babble\.num_sources"):
        load_augment_config({"babble": {"num_sources": [0, 3]}})
    with pytest.raises(AugmentError, match="has no wav.scp.*prep_musan"):
        Augmenter.from_config(_config(tmp_path))


def test_recipe_augment_configs_are_the_presets(repo_root):
    for recipe, name in (("librispeech/distill", "robustdistiller"), ("voxceleb/oskdft", "oskdft")):
        path = repo_root / "egs" / recipe / "conf" / f"augment_{name}.yaml"
        assert load_augment_config(path) == preset(name)


def test_banks_and_batches_move_to_another_device(banks_root):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device here; the same code path runs on CPU in the other tests")
    augmenter = Augmenter.from_config(_config(banks_root, choices={"babble+reverb": 1.0}), device="cuda")
    wavs, lengths = _speechlike(LENGTHS, 24000)
    on_gpu = augmenter(wavs.cuda(), lengths.cuda(), torch.Generator().manual_seed(5))
    on_cpu = augmenter.to("cpu")(wavs, lengths, torch.Generator().manual_seed(5))
    assert on_gpu.noisy.is_cuda
    assert torch.allclose(on_gpu.noisy.cpu(), on_cpu.noisy, atol=1e-4)


def test_bench_augment_runs_anywhere_and_reports_real_time_factors():
    import re
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "speechdistill.bin.bench_augment", "--batches", "2",
                             "--batch-size", "4", "--crop-seconds", "2"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 batches x 4 utterances, crops of 2 s, 16 s of audio" in result.stdout
    factors = re.findall(r":\s+(\d+)x real time", result.stdout)
    assert len(factors) == 4 and all(int(f) > 0 for f in factors)
