"""What differs between Slurm (slurm.pl) and Grid Engine (queue.pl), and which config file each reads."""
from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from .cluster_config import SGE_DEFAULT_CONFIG, SLURM_DEFAULT_CONFIG, ClusterConfig, parse_config
from .jobs import LaunchError, LaunchRequest


class Scheduler:
    """What differs between Slurm and Grid Engine."""
    prog = ""
    config_name = ""
    default_config = ""
    task_variable = ""
    job_id_pattern = re.compile(r"")
    status_command: Tuple[str, ...] = ()
    cancel_command: Tuple[str, ...] = ()
    sync_subdir = ""
    star_requires_dollar0 = False
    header_env_prefix: Optional[str] = None
    exit_100_before_sync = False
    retry_pattern: Optional[re.Pattern] = None

    def output_args(self, qlog: str) -> List[str]:
        raise NotImplementedError

    def parse_job_id(self, output: str) -> Optional[str]:
        match = self.job_id_pattern.search(output)
        return match.group(1) if match else None

    def array_submissions(self, tasks: Sequence[int], max_jobs_run: Optional[int]) -> List[Tuple[List[int], List[str]]]:
        """Group task ids into submissions: [(tasks, scheduler array arguments)]."""
        raise NotImplementedError

    def job_exists(self, job_id: str) -> Optional[bool]:
        """True/False from the status command; None when it cannot be run."""
        try:
            result = subprocess.run(list(self.status_command) + [job_id], capture_output=True, text=True,
                                    timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return result.returncode == 0 and self._listed(result.stdout)

    def _listed(self, stdout: str) -> bool:
        return True

    def test_only_argv(self, argv: List[str], config: ClusterConfig) -> Optional[List[str]]:
        """The submit command that only checks whether the scheduler could ever run the job, or None."""
        return None

    def requeued_by_scheduler(self, job_id: Optional[str], index: Optional[int], done_run: int) -> bool:
        """True when the scheduler itself put the job (task ``index`` of an array) back in its queue after
        its run ``done_run`` (0 = first) ended, e.g. after ``scontrol requeue`` or a preemption, so that it
        runs again without a resubmission."""
        return False


def _runs(tasks: Sequence[int]) -> List[Tuple[int, int]]:
    """Consecutive runs of sorted task ids: [1,2,3,5] -> [(1,3), (5,5)]."""
    runs: List[Tuple[int, int]] = []
    for task in sorted(tasks):
        if runs and task == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], task)
        else:
            runs.append((task, task))
    return runs


class Slurm(Scheduler):
    prog = "slurm.pl"
    config_name = "slurm.conf"
    default_config = SLURM_DEFAULT_CONFIG
    task_variable = "SLURM_ARRAY_TASK_ID"
    job_id_pattern = re.compile(r"Submitted batch job (\d+)")
    status_command = ("squeue", "-h", "-j")
    cancel_command = ("scancel",)
    sync_subdir = ""
    star_requires_dollar0 = False
    header_env_prefix = "SLURM"

    def output_args(self, qlog: str) -> List[str]:
        return ["--open-mode=append", "-e", qlog, "-o", qlog]

    def parse_job_id(self, output: str) -> Optional[str]:
        """'Submitted batch job 123', or only '123[;cluster]' when the config adds --parsable."""
        job_id = super().parse_job_id(output)
        if job_id is None:
            parsable = re.search(r"^(\d+)(?:;\S+)?\s*$", output, re.M)
            job_id = parsable.group(1) if parsable else None
        return job_id

    def array_submissions(self, tasks, max_jobs_run):
        spec = ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in _runs(tasks))
        if max_jobs_run:
            spec += f"%{max_jobs_run}"
        return [(list(tasks), ["--array", spec])]

    def _listed(self, stdout: str) -> bool:
        return bool(stdout.strip())

    def test_only_argv(self, argv, config):
        """``sbatch --test-only ...``: refuses, with Slurm's reason, what no node of the cluster can give."""
        if os.path.basename(config.command[0]) != "sbatch":
            return None
        size = len(config.command)
        return argv[:size] + ["--test-only"] + argv[size:]

    def requeued_by_scheduler(self, job_id, index, done_run, settle: float = 30.0):
        """Slurm counts a job's requeues (``Restarts``, ``SLURM_RESTART_COUNT`` in the job): a count above
        the one of the run that wrote the done-file, or a job pending again, means Slurm reruns it."""
        if not job_id:
            return False
        target = job_id if index is None else f"{job_id}_{index}"
        deadline = time.monotonic() + settle
        while True:
            try:
                result = subprocess.run(["scontrol", "show", "job", target], capture_output=True, text=True,
                                        timeout=60, check=False)
            except (OSError, subprocess.TimeoutExpired):
                return False
            state = re.search(r"\bJobState=(\S+)", result.stdout) if result.returncode == 0 else None
            restarts = re.search(r"\bRestarts=(\d+)", result.stdout) if result.returncode == 0 else None
            if state is None:
                return False  # no longer known to Slurm
            if (restarts is not None and int(restarts.group(1)) > done_run) \
                    or state.group(1) in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"):
                return True
            # the done-file is written just before the batch script ends: wait until Slurm has moved on
            if state.group(1) not in ("RUNNING", "COMPLETING", "CONFIGURING", "SIGNALING") \
                    or time.monotonic() >= deadline:
                return False
            time.sleep(0.5)


class GridEngine(Scheduler):
    prog = "queue.pl"
    config_name = "queue.conf"
    default_config = SGE_DEFAULT_CONFIG
    task_variable = "SGE_TASK_ID"
    job_id_pattern = re.compile(r"Your job(?:-array)? (\d+)")
    status_command = ("qstat", "-j")
    cancel_command = ("qdel",)
    sync_subdir = "sync"
    star_requires_dollar0 = True
    exit_100_before_sync = True
    retry_pattern = re.compile(r"qmaster|gdi request", re.IGNORECASE)

    def output_args(self, qlog: str) -> List[str]:
        return ["-o", qlog]

    def array_submissions(self, tasks, max_jobs_run):
        submissions = []
        for start, end in _runs(tasks):
            args = ["-t", f"{start}:{end}"]
            if max_jobs_run:
                args += ["-tc", str(max_jobs_run)]
            submissions.append((list(range(start, end + 1)), args))
        return submissions


SCHEDULERS = {"slurm": Slurm(), "queue": GridEngine()}


def toolkit_conf_dir() -> Path:
    """``conf/`` at the top of the checkout this package lives in (src/speechdistill/launch -> ../../..)."""
    return Path(__file__).resolve().parents[3] / "conf"


def load_config(request: LaunchRequest, scheduler: Scheduler) -> ClusterConfig:
    """--config FILE, else ./conf/<name>, else the toolkit's conf/<name>, else the built-in default."""
    if request.config is not None:
        path = Path(request.config)
        if not path.is_file():
            raise LaunchError(f"could not open config file {request.config} (given with --config)", exit_code=1)
        candidates = [path]
    else:
        candidates = [p for p in (Path("conf") / scheduler.config_name, toolkit_conf_dir() / scheduler.config_name)
                      if p.is_file()]
    if candidates:
        path = candidates[0]
        return parse_config(path.read_text(encoding="utf-8"), str(path),
                            star_requires_dollar0=scheduler.star_requires_dollar0, prog=scheduler.prog)
    return parse_config(scheduler.default_config, "the built-in default config",
                        star_requires_dollar0=scheduler.star_requires_dollar0, prog=scheduler.prog)
