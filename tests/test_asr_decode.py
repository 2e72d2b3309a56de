"""asr_decode as a user runs it (real subprocesses), and batched decoding checked against one
utterance at a time."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import soundfile
import torch

from speechdistill.asr.decode import DecodeOptions, decode_data_dir
from speechdistill.asr.model import AsrModel, load_asr_model, save_asr_model
from speechdistill.asr.upstream import FrozenUpstream, upstream_fingerprint
from speechdistill.data.tables import read_table
from speechdistill.downstream.asr import BiLstmCtcConfig
from speechdistill.downstream.ctc_decode import greedy_decode
from speechdistill.downstream.tokenizer import train_char

from test_asr_common import make_data_dir, make_noise_dir, make_rir_dir, make_upstream, random_texts, run_module


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny upstream, an untrained ASR model dir on it, a test set (one utterance too short to decode)."""
    root = tmp_path_factory.mktemp("asr_decode")
    upstream = make_upstream(root / "upstream")
    texts = random_texts(7, seed=3)
    texts["spk2-000"] = "A"
    data = make_data_dir(root / "test", texts, seed=5, lengths={"spk2-000": 300})  # < 400 samples: no frame
    train_char(texts.values(), root / "tokens")
    torch.manual_seed(0)
    model = AsrModel(3, 32, 7, None, BiLstmCtcConfig(hidden_size=16, projection_size=None, spec_augment=None))
    with torch.no_grad():  # a sharp random output layer, so that greedy paths hold many tokens
        model.downstream.output.weight.mul_(30.0)
    save_asr_model(model, root / "tokens", root / "asr_model", token_type="char", upstream=str(upstream),
                   upstream_fingerprint=upstream_fingerprint(upstream))
    return {"root": root, "upstream": upstream, "data": data, "model": root / "asr_model", "texts": texts}


def _decode(world, out: Path, *args):
    return run_module("speechdistill.bin.asr_decode", "--asr-model", world["model"], "--data", world["data"],
                      "--output-dir", out, "--num-workers", "0", "--threads", "1", *args)


def test_batched_decoding_equals_one_utterance_at_a_time(world):
    model, tokenizer, _ = load_asr_model(world["model"])
    frozen = FrozenUpstream(world["upstream"])
    keys = sorted(k for k in world["texts"] if k != "spk2-000")
    audio = [soundfile.read(str(world["data"] / "wav" / f"{k}.wav"), dtype="float32")[0] for k in keys]
    lengths = torch.tensor([len(a) for a in audio])
    wavs = torch.zeros(len(audio), int(lengths.max()))
    for row, a in enumerate(audio):
        wavs[row, :len(a)] = torch.from_numpy(a)
    with torch.no_grad():
        states, frames = frozen(wavs, lengths, model.selected_layers, contextlib.nullcontext())
        batch_log_probs, frames = model(states, frames)
        batched = greedy_decode(batch_log_probs, frames)
        for row in range(len(keys)):
            s1, f1 = frozen(wavs[row:row + 1, :lengths[row]], lengths[row:row + 1], model.selected_layers,
                            contextlib.nullcontext())
            alone, f1 = model(s1, f1)
            assert int(f1[0]) == int(frames[row])
            assert torch.allclose(alone[0], batch_log_probs[row, :frames[row]], atol=1e-4)
            assert greedy_decode(alone, f1)[0] == batched[row]
    assert sum(len(ids) for ids in batched) > 10  # the model says something, so the comparison means something
    assert all(tokenizer.decode(ids) == tokenizer.decode(ids).strip() for ids in batched)


def _decode_here(world, out: Path, **kwargs):
    options = DecodeOptions(num_workers=0, batch_seconds=kwargs.pop("batch_seconds", 100.0),
                            beam_size=kwargs.pop("beam_size", 1))
    return decode_data_dir(world["model"], world["data"], out, options=options, **kwargs)


def test_decoding_is_independent_of_batch_size_and_reruns_do_nothing(world):
    root = world["root"]
    one = _decode_here(world, root / "dec_one", batch_seconds=0.1)
    _decode_here(world, root / "dec_all", batch_seconds=100.0)
    hyps = read_table(root / "dec_one" / "text", allow_empty_value=True)
    assert hyps == read_table(root / "dec_all" / "text", allow_empty_value=True)
    # the utterance too short for the upstream has no hypothesis and is listed
    assert "spk2-000" not in hyps and len(hyps) == 7 and one.skipped == ["spk2-000"]
    assert (root / "dec_one" / "skipped_utts.txt").read_text().startswith("spk2-000 too-short")
    info = json.loads((root / "dec_one" / "decode_info.json").read_text())
    assert info["num_decoded"] == 7 and info["skipped"] == ["spk2-000"]
    assert info["settings"]["condition"]["name"] == "clean" and info["settings"]["beam_size"] == 1
    log = (root / "dec_one" / "decode.log").read_text()
    assert "decoded 7 utterances" in log and "audio-s/s" in log
    mtime = (root / "dec_one" / "text").stat().st_mtime_ns
    assert _decode_here(world, root / "dec_one", batch_seconds=0.1).up_to_date
    assert (root / "dec_one" / "text").stat().st_mtime_ns == mtime
    assert not _decode_here(world, root / "dec_one", seed=1, condition="snr5").up_to_date  # other settings: redone
    beam = _decode_here(world, root / "dec_beam", beam_size=4)
    assert beam.num_decoded == 7


def test_noisy_decodes_are_reproducible_and_differ_from_clean(world):
    root = world["root"]
    noise = make_noise_dir(root / "noise")
    rirs = make_rir_dir(root / "rirs")
    _decode_here(world, root / "snr0_a", condition="snr0", noise_dirs=[noise], batch_seconds=100.0)
    _decode_here(world, root / "snr0_b", condition="snr0", noise_dirs=[noise], batch_seconds=0.1)
    noisy = read_table(root / "snr0_a" / "text", allow_empty_value=True)
    assert noisy == read_table(root / "snr0_b" / "text", allow_empty_value=True)
    _decode_here(world, root / "clean")
    assert noisy != read_table(root / "clean" / "text", allow_empty_value=True)
    info = json.loads((root / "snr0_a" / "decode_info.json").read_text())
    assert info["settings"]["condition"]["description"].startswith(f"noise from {noise} (3 recordings) at 0 dB SNR")
    assert _decode_here(world, root / "reverb", condition="reverb", rir_dirs=[rirs]).num_decoded == 7


def test_decode_cli_writes_text_and_errors_name_the_fix(world):
    root = world["root"]
    ok = _decode(world, root / "cli", "--condition", "snr10", "--beam-size", "2")
    assert ok.returncode == 0, ok.stderr
    assert "decoded 7 utterances" in ok.stdout and "audio-s/s" in ok.stdout and "1 without hypothesis" in ok.stdout
    assert "white Gaussian noise at 10 dB SNR" in (root / "cli" / "decode.log").read_text()
    other = make_upstream(root / "other_upstream", seed=9)
    with pytest.raises(ValueError, match="differ from it. Fix: pass --upstream"):
        _decode_here(world, root / "wrong", upstream=other)
    with pytest.raises(ValueError, match="unknown test condition 'snr_ten'"):
        _decode_here(world, root / "bad", condition="snr_ten")
    with pytest.raises(ValueError, match="--rir-data"):
        _decode_here(world, root / "norir", condition="reverb")
    with pytest.raises(ValueError, match="not an ASR model dir"):
        decode_data_dir(root / "nope", world["data"], root / "x")
    assert not (root / "x").exists()


def test_a_long_utterance_is_decoded_from_its_start_with_a_message_and_every_other_is_written(world, tmp_path):
    """A 12-s entry with --max-seconds 2 --batch-seconds 3: named in the log and the summary, decoded from its first
    2 s (the same hypothesis as a file holding only those 2 s), every other utterance decoded; batches never
    grow past 3 s of padded audio."""
    import numpy as np
    import shutil

    data = tmp_path / "test"
    shutil.copytree(world["data"], data)
    rng = np.random.default_rng(7)
    long_audio = (0.1 * rng.standard_normal(12 * 16000)).astype(np.float32)
    soundfile.write(str(data / "wav" / "long.wav"), long_audio, 16000, subtype="FLOAT")
    soundfile.write(str(data / "wav" / "head.wav"), long_audio[:2 * 16000], 16000, subtype="FLOAT")
    wav = read_table(data / "wav.scp")
    wav.update({"spk9-000": str(data / "wav" / "long.wav"), "spk9-001": str(data / "wav" / "head.wav")})
    counts = read_table(data / "utt2num_samples")
    counts.update({"spk9-000": "192000", "spk9-001": "32000"})
    for name, table in (("wav.scp", wav), ("utt2num_samples", counts)):
        (data / name).write_text("".join(f"{k} {v}\n" for k, v in sorted(table.items())))
    out = tmp_path / "dec"
    done = run_module("speechdistill.bin.asr_decode", "--asr-model", world["model"], "--data", data, "--output-dir",
                      out, "--num-workers", "0", "--threads", "1", "--max-seconds", "2", "--batch-seconds", "3")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "1 longer than --max-seconds decoded from their start" in done.stdout
    log = (out / "decode.log").read_text()
    assert "utterance 'spk9-000' is 12.0 s long: only its first 2 s are used (--max-seconds 2" in log
    assert "in batches of at most 3.0 s of padded audio" in log
    hyps = read_table(out / "text", allow_empty_value=True)
    assert set(hyps) == {k for k in world["texts"] if k != "spk2-000"} | {"spk9-000", "spk9-001"}
    assert hyps["spk9-000"] == hyps["spk9-001"]
    info = json.loads((out / "decode_info.json").read_text())
    assert info["cut"] == ["spk9-000"] and info["options"]["max_seconds"] == 2.0


def test_a_batch_that_fails_is_rerun_one_utterance_at_a_time():
    from speechdistill.data.inference import run_each_on_failure

    batch = {"keys": ["a", "b", "c"], "wavs": torch.zeros(3, 5), "lengths": torch.tensor([5, 3, 4])}
    calls, failed = [], {}

    def run(wavs, lengths, keys):
        calls.append(list(keys))
        if "b" in keys:
            raise RuntimeError("CPU out of memory: tried to allocate 1.6 GB")
        return [f"hyp {k} {wavs.shape[1]}" for k in keys]

    done = run_each_on_failure(batch, run, lambda key, reason: failed.setdefault(key, reason))
    assert done == [("a", "hyp a 5"), ("c", "hyp c 4")]  # each alone, unpadded
    assert calls == [["a", "b", "c"], ["a"], ["b"], ["c"]]
    assert list(failed) == ["b"] and failed["b"].startswith("out of memory on this utterance alone (0.0 s)")
