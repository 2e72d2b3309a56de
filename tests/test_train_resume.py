"""Kill -9 and resume, SIGTERM/SIGUSR1 and requeue: the resumed run ends bitwise equal to an uninterrupted one.

Every run is a real subprocess of tests/_train_toy.py on CPU in fp32, one thread. The toy draws from
every generator the trainer must restore: its own torch.Generator (input noise, via Task.state_dict),
torch's global RNG (dropout), Python's ``random`` (gain) and numpy's global RNG (jitter); crops come
from the dataset's (seed, epoch, index) generator; the data is small enough to cross epochs; updates
accumulate two micro-batches and include a gradient-ascent (negative lr) group; validation runs
between checkpoints.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import single_process_env  # noqa: E402
from _train_toy import make_data_dir  # noqa: E402

from speechdistill.train import REQUEUE_EXIT_CODE  # noqa: E402

TOY = Path(__file__).resolve().parent / "_train_toy.py"
MAX_STEPS = 12


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume-data")
    lengths = np.random.default_rng(4).integers(2400, 12000, 14).tolist()
    train = make_data_dir(root / "train", lengths, seed=1)
    valid = make_data_dir(root / "valid", [4000, 6000, 9000], seed=2, prefix="val")
    return train, valid


def _command(data, out, *extra):
    train, valid = data
    return [sys.executable, str(TOY), "--output-dir", str(out), "--train-data", str(train), "--valid-data", str(valid),
            "--max_steps", str(MAX_STEPS), "--accum_steps", "2", "--batch_seconds", "1.2", "--max_seconds", "0.4",
            "--min_seconds", "0.1", "--checkpoint_every", "4", "--keep_checkpoints", "5", "--valid_every", "4",
            "--log_every", "2", "--lr", "0.01", "--warmup_steps", "3", "--precision", "fp32", "--device", "cpu",
            "--threads", "1", "--dropout", "0.2", "--noise_std", "0.05", "--random_gain", "true",
            "--numpy_jitter", "true", "--lagrangian", "true", *extra]


def _env():
    return single_process_env()


def _run(command, timeout=180):
    proc = subprocess.run(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=timeout)
    return proc


def _start(command):
    return subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout=120):
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"run ended (code {proc.returncode}) before {path.name}: {proc.stderr.read()[-3000:]}")
        if time.time() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.02)


def _final_model(out: Path):
    return torch.load(out / "checkpoints" / f"ckpt-{MAX_STEPS}.pt", map_location="cpu", weights_only=False)


def _assert_bitwise_equal(a, b):
    assert a["step"] == b["step"] == MAX_STEPS
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), f"parameter {name} differs"
    for state_a, state_b in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        for key in state_a:
            assert torch.equal(torch.as_tensor(state_a[key]), torch.as_tensor(state_b[key])), f"optimizer {key}"


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The uninterrupted run (no DataLoader workers), started in the background so it overlaps the others."""
    out = tmp_path_factory.mktemp("reference")
    proc = _start(_command(data, out, "--num_workers", "0"))
    result = {}

    def final():
        if "state" not in result:
            _, stderr = proc.communicate(timeout=300)
            assert proc.returncode == 0, stderr[-3000:]
            result["state"] = _final_model(out)
        return result["state"]
    yield final
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def _kill_at_pause(data, out, workers, pause_step):
    proc = _start(_command(data, out, "--num_workers", str(workers), "--pause_at_step", str(pause_step),
                           "--pause_seconds", "120"))
    try:
        _wait_for(out / "paused-rank0", proc)
        os.killpg(proc.pid, signal.SIGKILL)  # the training process and its DataLoader workers
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL


def _signal_at_pause(data, out, workers, pause_step, signum):
    marker = out / "paused-rank0"
    marker.unlink(missing_ok=True)
    proc = _start(_command(data, out, "--num_workers", str(workers), "--pause_at_step", str(pause_step),
                           "--pause_seconds", "2"))
    try:
        _wait_for(marker, proc)
        os.killpg(proc.pid, signum)  # as Slurm does: the rank and its DataLoader workers
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return proc.returncode, stderr


def _logged_steps(out):
    return [int(line.split('"step": ')[1].split(",")[0]) for line in (out / "metrics.jsonl").read_text().splitlines()
            if '"loss"' in line]


def test_sigkill_then_resume_is_bitwise_identical(data, reference, tmp_path):
    out = tmp_path / "killed"
    _kill_at_pause(data, out, workers=0, pause_step=6)
    saved = sorted(p.name for p in (out / "checkpoints").glob("ckpt-*.pt"))
    assert saved == ["ckpt-4.pt"]  # killed in update 7, after the checkpoint of update 4
    resumed = _run(_command(data, out, "--num_workers", "0"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in (out / "train.log").read_text()
    _assert_bitwise_equal(_final_model(out), reference())
    # metrics.jsonl holds each logged update once although updates 5-6 were logged twice
    assert _logged_steps(out) == [2, 4, 6, 8, 10, 12]


def test_with_loader_workers_sigkill_then_sigterm_requeue_then_resume(data, reference, tmp_path):
    out = tmp_path / "preempted"
    _kill_at_pause(data, out, workers=2, pause_step=6)
    assert sorted(p.name for p in (out / "checkpoints").glob("ckpt-*.pt")) == ["ckpt-4.pt"]
    code, stderr = _signal_at_pause(data, out, 2, pause_step=8, signum=signal.SIGTERM)
    assert code == REQUEUE_EXIT_CODE == 99, stderr[-3000:]
    # the signal came during the first of update 9's two micro-batches: the update is dropped, not finished,
    # and the checkpoint of update 8 is where the rerun resumes
    log = (out / "train.log").read_text()
    assert "SIGTERM received after 1 of 2 micro-batches of update 9: the update is dropped" in log
    assert "SIGTERM received: stopped after update 8 with checkpoint" in log
    assert not (out / "checkpoints" / "ckpt-9.pt").exists()
    final = _run(_command(data, out, "--num_workers", "2"))
    assert final.returncode == 0, final.stderr[-3000:]
    _assert_bitwise_equal(_final_model(out), reference())
    assert _logged_steps(out) == [2, 4, 6, 8, 10, 12]
