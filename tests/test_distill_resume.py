"""Kill -9 a distillation run and resume it: the student ends bitwise equal to an uninterrupted run.

The composition draws from every generator the task owns or uses: span masks (the task's numpy
generator), input corruption (the task's torch generator), hard-concrete gate samples and dropout
(torch's global RNG); it has a gradient-ascent group (Lagrange multipliers), accumulation and
validation between checkpoints. Real subprocesses of ``python -m speechdistill.bin.distill_train``
on CPU in fp32 with one thread.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import single_process_env  # noqa: E402
from test_distill_common import REPO, make_data_dir, make_noise_and_rirs, save_tiny_teacher  # noqa: E402

MAX_STEPS = 12


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill-resume")
    teacher = save_tiny_teacher(root / "teacher")
    lengths = np.random.default_rng(7).integers(6000, 14000, 10).tolist()
    train = make_data_dir(root / "train", lengths, seed=3)
    valid = make_data_dir(root / "valid", [8000, 11000], seed=4, prefix="val")
    dirs = make_noise_and_rirs(root)
    config = {
        "teacher": str(teacher), "train_data": str(train), "valid_data": str(valid),
        "student": "dphubert", "student_encoder": {"mask_embedding": True},
        "target_mapping": {"kind": "projection", "layer_groups": "4.8", "init": "identity"},
        "masking": {"mask_prob": 0.5, "mask_length": 3, "min_masks": 1},
        "loss_terms": [{"name": "hint", "kind": "mask_split_l1", "layers": [[4, 4], [8, 8]]},
                       {"name": "cos", "kind": "neg_cos", "layers": [[4, 4], [8, 8]]}],
        "pruning": {"target_sparsity": 0.5, "sparsity_warmup_steps": 4, "reg_lr": 0.05},
        "corruption": {"preset": "robustdistiller", "noise_data": str(dirs["noise"]), "rir_data": str(dirs["rirs"])},
        "enhancement": {"weight": 0.5, "input": "cnn", "lstm_layers": 2, "lstm_hidden": 8},
        "max_steps": MAX_STEPS, "accum_steps": 2, "batch_seconds": 1.0, "max_seconds": 0.6, "min_seconds": 0.1,
        "lr": 1e-3, "warmup_steps": 3, "checkpoint_every": 2, "keep_checkpoints": 10, "valid_every": 4,
        "log_every": 2, "precision": "fp32", "teacher_precision": "fp32", "device": "cpu", "threads": 1,
        "num_workers": 0, "seed": 5,
    }
    path = root / "composite.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _command(config: Path, out: Path):
    return [sys.executable, "-m", "speechdistill.bin.distill_train", "--config", str(config), "--output-dir", str(out)]


def _env():
    return single_process_env(PYTHONPATH=str(REPO / "src"))


def _final_weights(out: Path):
    return {name: load_file(str(out / "student" / name)) for name in ("model.safetensors", "heads.safetensors")}


def test_sigkill_then_resume_gives_a_bitwise_identical_student(setup, tmp_path, kernel_policy):
    reference_dir = tmp_path / "reference"
    done = subprocess.run(_command(setup, reference_dir), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(_command(setup, interrupted), env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    target = interrupted / "checkpoints" / "ckpt-4.pt"
    deadline = time.time() + 240
    while not target.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert target.exists(), "the run never wrote its step-4 checkpoint"
    assert not (interrupted / "student").exists(), "the run finished before it could be killed"

    resumed = subprocess.run(_command(setup, interrupted) + ["--resume"], env=_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in (interrupted / "train.log").read_text()

    expected, found = _final_weights(reference_dir), _final_weights(interrupted)
    for name in expected:
        assert expected[name].keys() == found[name].keys()
        for key in expected[name]:
            assert expected[name][key].equal(found[name][key]), f"{name}:{key} differs after the resume"
    # the pruned export: a dense model smaller than the gated copy of the teacher
    config = yaml.safe_load((interrupted / "student" / "config.yaml").read_text())
    assert config["encoder"]["prune_ffn"] is False and config["source"]["pruned"] is True
