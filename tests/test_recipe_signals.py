"""SIGTERM/SIGUSR1 to a recipe under run.pl (cmd_backend=local): the trainer checkpoints, run.pl and run.sh exit 99,
no process is left behind, and a rerun resumes to a student bitwise equal to an uninterrupted run.

Real ``./run.sh --stage 3 --stop_stage 3`` processes on the tiny recipe of tests/_tiny_recipe.py. The
same signal path through a real Slurm is in tests/test_slurm_real.py.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import REPO, single_process_env  # noqa: E402
from _tiny_recipe import TINY_CONFIG, TINY_DISTILL_ARGS, make_tiny_distill_recipe  # noqa: E402

STEPS = 20  # room for three stops, each a few updates after a checkpoint, however loaded the machine


def stage3_args(exp: str, *extra: str, steps: int = STEPS) -> list:
    return ["./run.sh", "--stage", "3", "--stop_stage", "3", "--ngpu", "0", "--distill_config", TINY_CONFIG,
            "--distill_exp", exp, "--distill_args", f"{TINY_DISTILL_ARGS} --max_steps {steps} --checkpoint_every 2",
            *extra]


def recipe_env(**extra: str) -> dict:
    return single_process_env(SPEECHDISTILL_ROOT=str(REPO), **extra)


_STARTED: list = []


def start(recipe: Path, args: list, env: dict) -> subprocess.Popen:
    """run.sh in a session of its own (as from a terminal or a batch system): its pid is its process group.
    Whatever is still running when the test ends is killed (``kill_leftovers``)."""
    process = subprocess.Popen(args, cwd=recipe, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    _STARTED.append(process)
    return process


@pytest.fixture(autouse=True)
def kill_leftovers():
    yield
    while _STARTED:
        process = _STARTED.pop()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()


def checkpoints(exp: Path) -> set:
    return {int(p.stem.split("-")[1]) for p in (exp / "checkpoints").glob("ckpt-*.pt")}


def wait_for_checkpoint_after(exp: Path, step: int, process: subprocess.Popen, timeout: float = 240) -> int:
    deadline = time.time() + timeout
    while True:
        newer = [s for s in checkpoints(exp) if s > step] if (exp / "checkpoints").is_dir() else []
        if newer:
            return max(newer)
        if process.poll() is not None:
            raise AssertionError(f"run.sh ended ({process.returncode}) before a checkpoint after update {step}: "
                                 + process.stderr.read()[-3000:])
        assert time.time() < deadline, f"no checkpoint after update {step} in {exp} within {timeout} s"
        time.sleep(0.05)


def processes_using(text: str, cwd: Path) -> list:
    """PIDs running in ``cwd`` whose command line contains ``text`` (left-behind trainers or launchers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                where = os.readlink(entry / "cwd")
            except OSError:
                continue
            if text in command and Path(where) == cwd.resolve():
                found.append(int(entry.name))
    return found


def student_weights(exp: Path) -> dict:
    return {name: load_file(str(exp / "student" / name)) for name in ("model.safetensors", "heads.safetensors")}


def assert_same_student(found: Path, expected: Path) -> None:
    a, b = student_weights(found), student_weights(expected)
    for name in b:
        assert a[name].keys() == b[name].keys()
        for key in b[name]:
            assert a[name][key].equal(b[name][key]), f"{name}:{key} differs from the uninterrupted run"


def logged_steps(exp: Path) -> list:
    import json

    return [json.loads(line)["step"] for line in (exp / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    return make_tiny_distill_recipe(tmp_path_factory.mktemp("signals"))


def test_sigterm_or_sigusr1_to_run_sh_or_its_group_checkpoint_exit_99_and_resume_bitwise(recipe):
    env = recipe_env()
    reference = start(recipe, stage3_args("exp/reference"), env)  # uninterrupted, alongside
    stopped = recipe / "exp" / "stopped"

    # 1. SIGTERM to run.sh alone (e.g. 'kill PID'): it passes the signal to run.pl, which passes it to the trainer
    first = start(recipe, stage3_args("exp/stopped"), env)
    wait_for_checkpoint_after(stopped, 0, first)
    first.send_signal(signal.SIGTERM)
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 99, stderr[-3000:]
    assert "SIGTERM received; passing it to the running job(s)" in stderr
    assert "the job checkpointed (status 99): run the same command again to resume" in stderr
    console = (stopped / "log" / "distill_train.log").read_text()
    assert "# Ended (code 99)" in console
    first_stop = max(checkpoints(stopped))
    assert f"SIGTERM received: stopped after update {first_stop}" in (stopped / "train.log").read_text()
    assert not processes_using("--output-dir exp/stopped", recipe), "a trainer was left running"
    assert not (stopped / ".stage3.done").exists()

    # 2. SIGTERM to run.sh's whole process group (a terminal's kill, a batch system): passed on once, same outcome
    second = start(recipe, stage3_args("exp/stopped"), env)
    wait_for_checkpoint_after(stopped, first_stop, second)
    os.killpg(second.pid, signal.SIGTERM)
    _, stderr = second.communicate(timeout=120)
    assert second.returncode == 99, stderr[-3000:]
    second_stop = max(checkpoints(stopped))
    assert not processes_using("--output-dir exp/stopped", recipe)

    # 3. SIGUSR1 to run.sh alone: the time-limit warning a batch system gives a run.sh that is itself a job
    third = start(recipe, stage3_args("exp/stopped"), env)
    wait_for_checkpoint_after(stopped, second_stop, third)
    third.send_signal(signal.SIGUSR1)
    _, stderr = third.communicate(timeout=120)
    assert third.returncode == 99, stderr[-3000:]
    assert "SIGUSR1 received; passing it to the running job(s)" in stderr
    third_stop = max(checkpoints(stopped))
    # each stop came later than the one before (the last may land on the final update: its rerun only exports)
    assert first_stop < second_stop < third_stop <= STEPS and second_stop < STEPS, (first_stop, second_stop,
                                                                                       third_stop)
    assert f"SIGUSR1 received: stopped after update {third_stop}" in (stopped / "train.log").read_text()
    assert not processes_using("--output-dir exp/stopped", recipe)

    # 3. the rerun resumes and ends where the uninterrupted run ends, bit for bit
    final = subprocess.run(stage3_args("exp/stopped"), cwd=recipe, env=env, capture_output=True, text=True,
                           timeout=300)
    assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
    _, stderr = reference.communicate(timeout=300)
    assert reference.returncode == 0, stderr[-3000:]
    assert (stopped / "train.log").read_text().count("resuming from") == 3
    assert_same_student(stopped, recipe / "exp" / "reference")
    assert logged_steps(stopped) == list(range(1, STEPS + 1))  # each update logged once although four runs
