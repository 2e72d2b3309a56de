"""``python -m speechdistill.bin.sv_train`` as a subprocess: each system trains, exports a model the
extractor loads, validates, resumes exactly (augmentation draws included), and reports user errors
on one line."""
import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import torch

from event_files import assert_events_match_metrics
from test_sv_fixtures import REPO, TINY_ECAPA, save_tiny_hf_teacher, write_speaker_data

from speechdistill.sv.model import load_sv_model

ENV = {"PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("sv_train")
    write_speaker_data(root / "train", seed=2)
    write_speaker_data(root / "valid", speakers=(0, 1), utts_per_speaker=1, seed=4)  # known speakers
    noise = root / "noise"
    noise.mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for n in range(2):
        path = noise / f"n{n}.wav"
        soundfile.write(str(path), (0.1 * rng.standard_normal(24000)).astype(np.float32), 16000)
        lines.append(f"noise{n} {path}\n")
    (noise / "wav.scp").write_text("".join(lines))
    save_tiny_hf_teacher(root / "hf_teacher")
    return root


def train(files, out_dir, *extra, check=True):
    command = [sys.executable, "-m", "speechdistill.bin.sv_train", "--train-data", str(files / "train"),
               "--output-dir", str(out_dir), "--device", "cpu", "--precision", "fp32", "--teacher_precision", "fp32",
               "--max_seconds", "1.0", "--batch_seconds", "4.0", "--num_workers", "0", "--log_every", "1",
               "--valid_every", "0", "--num_buckets", "1", "--ecapa", json.dumps(TINY_ECAPA), *extra]
    done = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=600)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def metrics(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def test_fbank_with_augmentation_resumes_exactly(files, tmp_path):
    augment = ["--augment", "oskdft", "--augment_overrides",
               json.dumps({"choices": {"noise": 1.0}, "apply_prob": 1.0, "noise": {"data_dir": str(files / "noise")}})]
    common = ["--system", "fbank", *augment, "--checkpoint_every", "2", "--valid-data", str(files / "valid"),
              "--lr_schedule", "constant"]  # the schedule must not depend on max_steps
    train(files, tmp_path / "whole", *common, "--max_steps", "4")
    train(files, tmp_path / "split", *common, "--max_steps", "2")
    train(files, tmp_path / "split", *common, "--max_steps", "4")
    whole = torch.load(tmp_path / "whole" / "checkpoints" / "ckpt-4.pt", weights_only=False)["model"]
    split = torch.load(tmp_path / "split" / "checkpoints" / "ckpt-4.pt", weights_only=False)["model"]
    assert whole.keys() == split.keys()
    assert all(torch.equal(whole[k], split[k]) for k in whole)
    records = metrics(tmp_path / "whole")
    train_rows = [r for r in records if "speaker_loss" in r]
    assert len(train_rows) == 4 and all(np.isfinite(r["speaker_loss"]) for r in train_rows)
    assert any("valid/accuracy" in r for r in records)  # the valid speakers are training speakers
    assert {"speaker_loss", "valid/accuracy"} <= set(assert_events_match_metrics(tmp_path / "whole"))
    assert {"speaker_loss"} <= set(assert_events_match_metrics(tmp_path / "split"))  # (resumed at step 2)
    embedder = load_sv_model(tmp_path / "whole" / "sv_model")
    assert embedder.fbank is not None and embedder.embedding_size == 12
    log = (tmp_path / "whole" / "train.log").read_text()
    assert "augmentation 'oskdft' of the system input: p=1, choices noise" in log


def test_oskdft_and_frozen_teacher_systems_train_from_a_hugging_face_teacher(files, tmp_path):
    teacher = str(files / "hf_teacher")
    train(files, tmp_path / "oskdft", "--system", "oskdft", "--teacher", teacher, "--max_steps", "2",
          "--valid-data", str(files / "valid"), "--lr_mode", "oskdft_paper", "--steps_per_epoch", "1")
    records = metrics(tmp_path / "oskdft")
    steps = [r for r in records if "kd_mse" in r and "step" in r and "valid/kd_mse" not in r]
    assert [r["kd_mse_weight"] for r in steps] == pytest.approx([99.0, 98.0])  # epochs 1 and 2 of 100
    assert steps[0]["lr/adapters"] == pytest.approx(10 * steps[0]["lr/backend"])
    assert any("valid/kd_mse" in r and "valid/accuracy" in r for r in records)
    student = load_sv_model(tmp_path / "oskdft" / "sv_model")
    assert student.upstream.num_layers == 4 and student.upstream.config.adapter_dim == 64

    train(files, tmp_path / "frozen", "--system", "ssl_frozen", "--teacher", teacher, "--max_steps", "2",
          "--featurizer.mode", "weighted_sum")
    frozen = load_sv_model(tmp_path / "frozen" / "sv_model")
    assert frozen.upstream.config.adapter_dim == 0 and frozen.featurizer.weights is not None
    wav = torch.from_numpy(soundfile.read(str(files / "train" / "wav" / "spk00-u00.wav"), dtype="float32")[0])[None]
    with torch.no_grad():
        assert frozen(wav, torch.tensor([wav.shape[1]])).shape == (1, 12)


def test_separate_distillation_inputs_are_read_by_the_dataloader_workers(files, tmp_path):
    """OS-KDFT 2024 (kd_input separate): the extra utterances of every step are read with the training items in
    the DataLoader worker processes, not in the training loop."""
    train(files, tmp_path / "sep", "--system", "oskdft", "--teacher", str(files / "hf_teacher"), "--max_steps", "2",
          "--kd_input", "separate", "--kd_data", str(files / "valid"), "--num_workers", "1")
    log = (tmp_path / "sep" / "train.log").read_text()
    assert f"distillation inputs: separate crops from {files / 'valid'}, read by the DataLoader workers" in log
    steps = [r for r in metrics(tmp_path / "sep") if "kd_mse" in r and "step" in r]
    assert len(steps) == 2 and all(0 < r["kd_mse"] < float("inf") for r in steps)


def test_user_errors_are_one_line_without_traceback(files, tmp_path):
    done = train(files, tmp_path / "x", "--system", "oskdft", "--max_steps", "1", check=False)
    assert done.returncode == 1
    assert "config.teacher: system 'oskdft' needs a teacher; pass --teacher PATH" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    done = train(files, tmp_path / "y", "--system", "fbank", "--max_steps", "1", "--ecapa.chanels", "8", check=False)
    assert done.returncode == 1 and "unknown option '--ecapa.chanels'; did you mean '--ecapa.channels'" in done.stderr


def test_print_key_resolves_the_config_without_training(tmp_path, capsys):
    from speechdistill.bin.sv_train import main

    config = REPO / "egs" / "voxceleb" / "oskdft" / "conf" / "ecapa_fbank_mini.yaml"
    assert main(["--config", str(config), "--print-key", "system"]) == 0
    assert main(["--config", str(config), "--max_steps", "7", "--print-key", "max-steps"]) == 0
    assert main(["--config", str(config), "--print-key", "teacher"]) == 0
    assert capsys.readouterr().out.split() == ["fbank", "7", "null"]
    with pytest.raises(ValueError, match="'sytem' is not a config key"):
        main(["--config", str(config), "--print-key", "sytem"])
