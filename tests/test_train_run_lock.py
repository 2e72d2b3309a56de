"""One run per experiment dir (flock on <dir>/.lock) and metrics.jsonl after a kill before the first checkpoint.

Real subprocesses of tests/_train_toy.py on CPU, one thread.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import single_process_env  # noqa: E402
from _train_toy import make_data_dir  # noqa: E402

TOY = Path(__file__).resolve().parent / "_train_toy.py"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("lock-data")
    return make_data_dir(root / "train", np.random.default_rng(2).integers(2400, 8000, 12).tolist(), seed=1)


def _command(data, out, *extra):
    return [sys.executable, str(TOY), "--output-dir", str(out), "--train-data", str(data), "--max_steps", "4",
            "--batch_seconds", "1.0", "--max_seconds", "0.4", "--min_seconds", "0.1", "--log_every", "1",
            "--checkpoint_every", "100", "--lr", "0.01", "--warmup_steps", "1", "--precision", "fp32",
            "--device", "cpu", "--threads", "1", "--num_workers", "0", *extra]


def _steps(out):
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_second_trainer_on_a_dir_stops_at_once_naming_the_holder_and_a_kill_before_the_first_checkpoint(
        data, tmp_path):
    out = tmp_path / "exp"
    first = subprocess.Popen(_command(data, out, "--pause_at_step", "2", "--pause_seconds", "120"),
                             env=single_process_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        deadline = time.time() + 120
        while not (out / "paused-rank0").exists():
            assert first.poll() is None, first.stderr.read()[-3000:]
            assert time.time() < deadline, "the first run never reached update 3"
            time.sleep(0.05)
        assert _steps(out) == [1, 2]  # logged, and no checkpoint yet
        assert f"pid={first.pid}\n" in (out / ".lock").read_text()

        second = subprocess.run(_command(data, out), env=single_process_env(), capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 1
        message = " ".join(second.stderr.split())
        assert f"{out} is in use by another training run (PID {first.pid} on " in message
        assert f"kill {first.pid}" in message and "another output dir" in message
        assert _steps(out) == [1, 2]  # the refused run wrote nothing
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.communicate()

    # the kernel released the dead run's lock; the rerun starts afresh (no checkpoint) and logs each step once
    rerun = subprocess.run(_command(data, out), env=single_process_env(), capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "starting in" in (out / "train.log").read_text()
    assert _steps(out) == [1, 2, 3, 4]
