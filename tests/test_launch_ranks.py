"""``python -m speechdistill.bin.torchrun``: stop signals reach the ranks and exit 99 reaches the launcher.

Real two-rank gloo runs of the toy trainer: the launcher alone gets the signal (as from run.pl's
process-group kill or a batch script's trap), since torchrun starts every rank in a session of its
own. Plain torchrun ends such a run with status 1 (SIGTERM) or dies with 138 (SIGUSR1).
"""
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

from speechdistill.launch import REQUEUE_EXIT_CODE  # noqa: E402
from speechdistill.launch.ranks import child_pids, exit_status  # noqa: E402

TOY = Path(__file__).resolve().parent / "_train_toy.py"


def test_exit_status_keeps_requeue_only_when_every_rank_stopped_cleanly():
    assert exit_status([]) == 0
    assert exit_status([99]) == exit_status([99, 99]) == REQUEUE_EXIT_CODE
    assert exit_status([99, -signal.SIGTERM]) == REQUEUE_EXIT_CODE  # torchrun ended the other rank
    assert exit_status([-signal.SIGTERM]) == 1  # no rank checkpointed
    assert exit_status([99, 3]) == exit_status([3, 99]) == 3  # a real failure wins
    assert exit_status([99, -signal.SIGKILL]) == 1  # a rank killed mid-checkpoint is not a clean stop
    assert exit_status([2]) == 2


def test_child_pids_lists_direct_children():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    try:
        assert child.pid in child_pids(os.getpid())
        assert child.pid not in child_pids(child.pid)
    finally:
        child.kill()
        child.wait()


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory):
    lengths = np.random.default_rng(7).integers(1600, 9600, 22).tolist()
    return make_data_dir(tmp_path_factory.mktemp("ranks-data") / "train", lengths, seed=3)


def _launch(train_dir, out, *extra):
    command = [sys.executable, "-m", "speechdistill.bin.torchrun", "--standalone", "--nproc_per_node", "2", str(TOY),
               "--output-dir", str(out), "--train-data", str(train_dir), "--max_steps", "12", "--batch_seconds", "1.0",
               "--max_seconds", "0.45", "--min_seconds", "0.1", "--lr", "0.01", "--precision", "fp32", "--device", "cpu",
               "--threads", "1", "--num_workers", "0", "--log_every", "1", "--checkpoint_every", "100", *extra]
    return subprocess.Popen(command, env=single_process_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_signal_to_the_launcher_checkpoints_every_rank_and_exits_99(train_dir, tmp_path, signum):
    out = tmp_path / "run"
    proc = _launch(train_dir, out, "--pause_at_step", "5", "--pause_seconds", "2")
    try:
        deadline = time.monotonic() + 180
        while not (out / "paused-rank0").is_file():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.1)
        proc.send_signal(signum)  # the launcher only: its ranks live in sessions of their own
        _, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == REQUEUE_EXIT_CODE, stderr[-3000:]
    name = signal.Signals(signum).name
    assert f"the ranks checkpointed and stopped on {name}" in stderr
    log = (out / "train.log").read_text()
    # both ranks saw the signal and stopped after the update in flight, with a checkpoint of it
    assert f"{name} received: stopped after update 6" in log and f"[rank 1] {name} received" in stderr
    assert sorted(p.name for p in (out / "checkpoints").glob("ckpt-*.pt")) == ["ckpt-6.pt"]
    if signum == signal.SIGTERM:  # the rerun that queue.pl/slurm.pl would start resumes and finishes
        again = _launch(train_dir, out)
        _, stderr = again.communicate(timeout=180)
        assert again.returncode == 0, stderr[-3000:]
        log = (out / "train.log").read_text()
        assert "resuming from" in log and "finished at update 12" in log


def test_a_failing_rank_keeps_its_status(train_dir, tmp_path):
    proc = _launch(train_dir, tmp_path / "bad", "--no_such_key", "1")
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 1, stderr[-3000:]
    assert "no_such_key" in stderr and "ChildFailedError" not in stderr
    assert "exitcode  : 1" in stderr  # torchrun's own failure summary is kept
