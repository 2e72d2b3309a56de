"""slurm.pl, utils/launch_training.sh and run.sh against a real Slurm: two slurmd on this host with 4 fake GPUs
each (tools/slurm_local.sh, started once per session by conftest's ``slurm_cluster``).

* the resources a 1-GPU, a 2-GPU and a 2-node job ask for, as ``scontrol show job`` reports them, and the
  processes each starts (torchrun ranks, srun tasks on both nodes);
* requests no node can meet are refused at submission with Slurm's reason;
* an array job with one failing task reports that task;
* a distillation job stopped three ways (``scancel --signal=USR1 --batch``, ``scancel --signal=TERM --full``,
  ``scontrol requeue``) checkpoints, is run again, resumes and ends bitwise equal to an uninterrupted run;
* ``cmd_backend=slurm ./run.sh --num_nodes 2 --ngpu 1`` trains on both nodes (gloo, one rank per node) and
  ends where one process accumulating the same global batch ends.
"""
from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import REPO, single_process_env  # noqa: E402
from _tiny_recipe import TINY_CONFIG, TINY_DISTILL_ARGS, make_tiny_distill_recipe  # noqa: E402
from test_recipe_signals import (assert_same_student, checkpoints, logged_steps, start,  # noqa: E402
                                 student_weights, wait_for_checkpoint_after)
from test_recipe_signals import kill_leftovers  # noqa: E402,F401  (autouse fixture: no process outlives a test)

UTILS = REPO / "egs" / "TEMPLATE" / "utils"
NODES = [socket.gethostname().split(".")[0], socket.gethostname().split(".")[0] + "-n2"]  # tools/slurm_local.sh
PROBE = """import os
print("probe rank", os.environ.get("SLURM_PROCID"), "local", os.environ.get("LOCAL_RANK"), "node",
      os.environ.get("SLURMD_NODENAME"), "gpus", os.environ.get("CUDA_VISIBLE_DEVICES"), flush=True)
"""


@pytest.fixture(scope="module")
def env(slurm_cluster):
    return single_process_env(SLURM_CONF=str(slurm_cluster), SPEECHDISTILL_ROOT=str(REPO),
                              SPEECHDISTILL_LAUNCH_NFS_SLEEP="0", SPEECHDISTILL_LAUNCH_POLL_MAX="0.5",
                              SPEECHDISTILL_LAUNCH_VANISHED_WAIT="20")


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "path.sh").write_text(f". {REPO}/tools/activate_python.sh\n")
    (tmp_path / "probe.py").write_text(PROBE)
    return tmp_path


def slurm(args, cwd, env, timeout=180):
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def job_ids(log: Path) -> list:
    return re.findall(r"^# SLURM_JOB_ID=(\d+)$", log.read_text(), re.M) if log.is_file() else []


def show_job(job_id: str, env) -> dict:
    text = slurm(["scontrol", "-d", "show", "job", job_id], "/", env).stdout
    return dict(re.findall(r"(\S+?)=(\S*)", text))


RESOURCES = {  # launch_training.sh options -> what Slurm allocated, the processes started
    "1 GPU": (["--ngpu", "1", "--cpus_per_gpu", "2", "--mem_per_gpu", "1"],
              {"NumNodes": "1", "NumCPUs": "2", "NumTasks": "1", "CPUs/Task": "2", "MinMemoryNode": "1G",
               "TresPerNode": "gres:gpu:1"}, 1),
    "2 GPUs": (["--ngpu", "2", "--cpus_per_gpu", "1", "--mem_per_gpu", "1"],
               {"NumNodes": "1", "NumCPUs": "2", "NumTasks": "1", "CPUs/Task": "2", "MinMemoryNode": "2G",
                "TresPerNode": "gres:gpu:2"}, 2),
    "2 nodes x 1 GPU": (["--ngpu", "1", "--num_nodes", "2", "--cpus_per_gpu", "1", "--mem_per_gpu", "1"],
                        {"NumNodes": "2", "NumCPUs": "2", "NumTasks": "2", "CPUs/Task": "1", "MinMemoryNode": "1G",
                         "TresPerNode": "gres:gpu:1"}, 2),
}


def test_jobs_get_the_cpus_memory_gpus_and_tasks_they_ask_for(workdir, env):
    def launch(name):
        options = RESOURCES[name][0]
        log = f"log/{name.replace(' ', '_')}.log"
        return slurm([str(UTILS / "launch_training.sh"), "--cmd", f"{UTILS / 'slurm.pl'} --mem 16G", *options, log,
                      "python", "probe.py"], workdir, env), workdir / log

    with ThreadPoolExecutor(max_workers=len(RESOURCES)) as pool:
        results = dict(zip(RESOURCES, pool.map(launch, RESOURCES)))
    for name, (result, log) in results.items():
        assert result.returncode == 0, f"{name}: {result.stderr[-3000:]}"
        _, expected, processes = RESOURCES[name]
        job = show_job(job_ids(log)[0], env)
        assert {key: job.get(key) for key in expected} == expected, name
        assert job["NtasksPerN:B:S:C"].startswith("1:"), name  # one task per node (a rank per GPU from torchrun)
        probes = re.findall(r"^probe rank (\S+) local (\S+) node (\S+) gpus (\S+)$", log.read_text(), re.M)
        assert len(probes) == processes, f"{name}: {log.read_text()[-2000:]}"
        if name == "2 GPUs":  # one Slurm task; torchrun starts a rank per GPU, both see the job's 2 GPUs
            assert sorted(p[1] for p in probes) == ["0", "1"] and {len(p[3].split(",")) for p in probes} == {2}
        if name == "2 nodes x 1 GPU":  # srun: one task per node, each with its node's GPU
            assert sorted((p[0], p[2]) for p in probes) == [("0", NODES[0]), ("1", NODES[1])]
            assert {p[3] for p in probes} == {"0"}
        else:
            assert {len(p[3].split(",")) for p in probes} == {processes}  # CUDA_VISIBLE_DEVICES: the job's GPUs
        assert "--signal=B:USR1@120" in log.read_text()  # conf/slurm.conf's time-limit warning


@pytest.mark.parametrize("launcher, reason", [
    (["slurm.pl", "--gpu", "8"], "Requested node configuration is not available"),  # 4 GPUs per node
    (["launch_training.sh", "--ngpu", "1", "--num_nodes", "3", "--cpus_per_gpu", "1"],
     "Node count specification invalid"),  # 2 nodes
    (["launch_training.sh", "--ngpu", "8"], "More processors requested than permitted"),  # 2 CPUs per node
    (["launch_training.sh", "--ngpu", "1", "--cpus_per_gpu", "1", "--mem_per_gpu", "100000"],
     "Requested node configuration is not available"),
])
def test_requests_no_node_can_meet_are_refused_at_submission(workdir, env, launcher, reason):
    if launcher[0] == "launch_training.sh":
        launcher = [str(UTILS / launcher[0]), "--cmd", str(UTILS / "slurm.pl"), *launcher[1:]]
    else:
        launcher = [str(UTILS / launcher[0]), *launcher[1:]]
    result = slurm([*launcher, "log/x.log", "python", "probe.py"], workdir, env)
    assert result.returncode == 1
    assert "the cluster cannot run this job: 'sbatch --test-only' refused it" in result.stderr
    assert reason in result.stderr and "the job was not submitted" in result.stderr
    assert not (workdir / "log" / "x.log").exists()


def test_array_job_with_one_failing_task_reports_it(workdir, env):
    (workdir / "task.sh").write_text('#!/usr/bin/env bash\n'
                                     'echo "task $1 on $SLURMD_NODENAME"; [ "$1" != 2 ] || exit 3\n')
    (workdir / "task.sh").chmod(0o755)
    result = slurm([str(UTILS / "slurm.pl"), "--max-jobs-run", "2", "JOB=1:3", "log/a.JOB.log", "./task.sh", "JOB"],
                   workdir, env)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert "slurm.pl: 1 / 3 failed, log is in log/a.*.log" in lines
    assert any(line.startswith("slurm.pl: last ") and line.endswith("lines of log/a.2.log:") for line in lines)
    assert f"    task 2 on {NODES[0]}" in lines or f"    task 2 on {NODES[1]}" in lines
    for index, status in ((1, 0), (2, 3), (3, 0)):
        text = (workdir / f"log/a.{index}.log").read_text()
        assert f"# SLURM_ARRAY_TASK_ID={index}\n" in text and text.rstrip().endswith(f"with status {status}")
    array_id = re.search(r"^# SLURM_ARRAY_JOB_ID=(\d+)$", (workdir / "log/a.1.log").read_text(), re.M).group(1)
    assert show_job(f"{array_id}_2", env)["ExitCode"] == "1:0"


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    return make_tiny_distill_recipe(tmp_path_factory.mktemp("slurm-recipe"))


STEPS = 16


def stage3(exp: str, steps: int, *extra: str, args: str = "") -> list:
    return ["./run.sh", "--stage", "3", "--stop_stage", "3", "--distill_config", TINY_CONFIG, "--distill_exp", exp,
            "--cpus_per_gpu", "1", "--mem_per_gpu", "1",
            "--distill_args", f"{TINY_DISTILL_ARGS} --max_steps {steps} {args}", *extra]


def wait_for_new_job(log: Path, known: set, process, timeout=120) -> str:
    deadline = time.time() + timeout
    while True:
        new = [i for i in job_ids(log) if i not in known]
        if new:
            return new[-1]
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.time() < deadline, f"no new job in {log}"
        time.sleep(0.1)


def test_stopped_three_ways_the_distillation_job_resumes_to_a_bitwise_equal_student(recipe, env):
    reference = start(recipe, stage3("exp/reference", STEPS, "--ngpu", "0", args="--checkpoint_every 2"),
                      single_process_env(SPEECHDISTILL_ROOT=str(REPO)))
    exp = recipe / "exp" / "preempted"
    log = exp / "log" / "distill_train.log"
    run = start(recipe, stage3("exp/preempted", STEPS, "--ngpu", "0", args="--checkpoint_every 2"),
                dict(env, cmd_backend="slurm"))
    seen, stops = set(), []
    for how in ("USR1 to the batch shell", "TERM to every process", "scontrol requeue"):
        job = wait_for_new_job(log, seen, run)  # slurm.pl submitted the job again after each of the first two
        seen.add(job)
        step = wait_for_checkpoint_after(exp, max(stops, default=0), run)
        assert step < STEPS, "the run finished before it could be stopped"
        if how == "USR1 to the batch shell":  # what --signal=B:USR1@N sends before the time limit
            assert slurm(["scancel", "--signal=USR1", "--batch", job], "/", env).returncode == 0
        elif how == "TERM to every process":  # scancel, preemption: the batch shell and everything it started
            assert slurm(["scancel", "--signal=TERM", "--full", job], "/", env).returncode == 0
        else:  # Slurm puts the job back in its queue itself; slurm.pl waits for the rerun
            assert slurm(["scontrol", "requeue", job], "/", env).returncode == 0
            while show_job(job, env).get("JobState") != "PENDING":
                time.sleep(0.2)
            assert slurm(["scontrol", "update", f"jobid={job}", "StartTime=now"], "/", env).returncode == 0
        deadline = time.time() + 120
        while not (exp / "train.log").is_file() or \
                (exp / "train.log").read_text().count("received: stopped after update") < len(stops) + 1:
            assert run.poll() is None and time.time() < deadline, run.stderr.read()[-3000:]
            time.sleep(0.1)
        stops.append(max(checkpoints(exp)))
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr[-3000:]
    assert "the job exited with status 99 (checkpointed on a signal); resubmitting (attempt 1 of 3" in stderr
    assert "resubmitting (attempt 2 of 3" in stderr
    assert f"job {job} ended with status 99 and was requeued by the scheduler itself; waiting for its rerun" in stderr
    first, second = (Path(f"{log}.attempt{k}").read_text() for k in (1, 2))
    assert "SIGUSR1 received; passing SIGUSR1 to the command" in first and first.rstrip().endswith("with status 99")
    assert "SIGTERM received; passing SIGUSR1 to the command" in second and second.rstrip().endswith("with status 99")
    third = log.read_text()  # Slurm's own rerun appended to the same log
    assert "# Requeued by Slurm: run 2 of job" in third and third.rstrip().endswith("with status 0")
    assert third.count("with status 99") == 1
    train_log = (exp / "train.log").read_text()
    assert [int(s) for s in re.findall(r"received: stopped after update (\d+)", train_log)] == stops
    # each stop came later than the one before (the last may land on the final update: its rerun only exports)
    assert stops == sorted(set(stops)) and stops[1] < STEPS and train_log.count("resuming from") == 3
    _, stderr = reference.communicate(timeout=300)
    assert reference.returncode == 0, stderr[-3000:]
    assert_same_student(exp, recipe / "exp" / "reference")
    assert logged_steps(exp) == list(range(1, STEPS + 1))


def test_run_sh_trains_on_two_nodes_as_one_process_with_the_same_global_batch(recipe, env):
    steps = 4
    one = start(recipe, stage3("exp/one_process", steps, "--ngpu", "0",
                               args=f"--accum_steps 2 --checkpoint_every {steps}"),
                single_process_env(SPEECHDISTILL_ROOT=str(REPO)))
    two = subprocess.run(stage3("exp/two_nodes", steps, "--ngpu", "1", "--num_nodes", "2",
                                args=f"--accum_steps 1 --checkpoint_every {steps} --device cpu"),
                         cwd=recipe, env=dict(env, cmd_backend="slurm"), capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    _, stderr = one.communicate(timeout=300)
    assert one.returncode == 0, stderr[-3000:]
    console = (recipe / "exp/two_nodes/log/distill_train.log").read_text()
    assert re.search(r"^# Submitted with: sbatch --export=PATH --mem 1G --gres=gpu:1 --nodes 2 --ntasks-per-node 1 "
                     r"--cpus-per-task 1 --signal=B:USR1@120 ", console, re.M), console[:3000]
    assert "srun --export=ALL --ntasks-per-node=1 --cpus-per-task=1 python -m speechdistill.bin.distill_train" \
        in console
    train_log = (recipe / "exp/two_nodes/train.log").read_text()
    assert "launcher slurm: rank 0 of 2 (node 0, local rank 0); device cpu" in train_log
    job = show_job(job_ids(recipe / "exp/two_nodes/log/distill_train.log")[0], env)
    assert job["NodeList"] == ",".join(NODES) and job["NumNodes"] == "2"
    # the same losses, update by update (each the mean over the global batch), and the same student
    records = {exp: [json.loads(line) for line in (recipe / "exp" / exp / "metrics.jsonl").read_text().splitlines()]
               for exp in ("two_nodes", "one_process")}
    losses = [[r["loss"] for r in records[exp] if "loss" in r] for exp in ("two_nodes", "one_process")]
    assert len(losses[0]) == steps and losses[0][0] != losses[0][-1]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    found, expected = student_weights(recipe / "exp/two_nodes"), student_weights(recipe / "exp/one_process")
    for name in expected:
        for key in expected[name]:
            torch.testing.assert_close(found[name][key], expected[name][key], rtol=1e-4, atol=1e-5,
                                       msg=f"{name}:{key}")
