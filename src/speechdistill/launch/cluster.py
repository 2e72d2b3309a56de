"""queue.pl and slurm.pl: submit jobs to Grid Engine or Slurm and wait for them (conventions §2.4).

Each task runs the job script of :mod:`.job_script` (log header, ``./path.sh``, the command with the
scheduler's stop signals passed on, ``# Finished at ... with status N``, a done-file); the submit
arguments come from the option-mapping config (:mod:`.cluster_config`), what differs between Slurm
and Grid Engine is in :mod:`.schedulers`.

slurm.pl first asks ``sbatch --test-only`` whether the cluster could ever run the job. The
launcher polls for the done-files with exponential back-off, asks ``squeue``/``qstat`` now and
then whether a job still exists, reads each job's status from the last lines of its log,
resubmits tasks that exited with :data:`speechdistill.launch.REQUEUE_EXIT_CODE` (but waits for a
job Slurm put back in its queue itself), and on SIGINT/SIGTERM/SIGUSR1 cancels its jobs
(``scancel``/``qdel``) and exits 2.
"""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from . import REQUEUE_EXIT_CODE
from .cluster_config import scheduler_arguments
from .job_script import done_run, job_script, queue_paths, read_status, write_executable
from .jobs import (Interrupted, LaunchError, LaunchRequest, SignalTrap, date_string, env_seconds, report_failures,
                   tail, warn)
from .schedulers import SCHEDULERS, Scheduler, load_config

__all__ = ["SCHEDULERS", "ClusterRun", "Scheduler", "run_cluster"]


@dataclass
class _Task:
    index: Optional[int]
    log: Path
    sync: Path
    attempt: int = 0
    job_id: Optional[str] = None
    status: Optional[int] = None
    finished: bool = False


class ClusterRun:
    def __init__(self, request: LaunchRequest, scheduler: Scheduler):
        self.request = request
        self.scheduler = scheduler
        self.prog = scheduler.prog
        self.config = load_config(request, scheduler)
        self.arguments, self.threads = scheduler_arguments(self.config, request, self.prog)
        self.paths = queue_paths(request, scheduler)
        self.cwd = os.getcwd()
        self.nfs_sleep = env_seconds("SPEECHDISTILL_LAUNCH_NFS_SLEEP", 5.0)
        self.poll_max = env_seconds("SPEECHDISTILL_LAUNCH_POLL_MAX", 3.0)
        self.vanished_wait = env_seconds("SPEECHDISTILL_LAUNCH_VANISHED_WAIT", 70.0)
        self.status_wait = env_seconds("SPEECHDISTILL_LAUNCH_STATUS_WAIT", 55.0)
        self.retry_wait = env_seconds("SPEECHDISTILL_LAUNCH_SUBMIT_RETRY_WAIT", 20.0)
        self.tasks: List[_Task] = []
        self.vanished_since: Dict[str, float] = {}
        self.notes: Dict[Optional[int], str] = {}
        self._status_command_missing = False
        self._checked = False
        self.progress = None

    # ------------------------------------------------------------------------------ submission
    def submit(self, tasks: List[_Task]) -> None:
        if self.request.job_range:
            by_index = {t.index: t for t in tasks}
            groups = [([by_index[i] for i in ids], args) for ids, args in
                      self.scheduler.array_submissions([t.index for t in tasks], self.request.max_jobs_run)]
        else:
            groups = [(tasks, [])]
        for group, array_args in groups:
            argv = (self.config.command + self.arguments + self.request.passthrough
                    + self.scheduler.output_args(str(self.paths.qlog)) + array_args + [str(self.paths.script)])
            line = shlex.join(argv)
            write_executable(self.paths.script, job_script(self.request, self.scheduler, cwd=self.cwd,
                                                           threads=self.threads, sync_base=self.paths.sync_base,
                                                           submit_line=line))
            if not self._checked:
                self._check_feasible(argv, line)
            job_id = self._run_submit(argv, line)
            for task in group:
                task.job_id = job_id

    def _check_feasible(self, argv: List[str], line: str) -> None:
        """Ask the scheduler whether it could ever run the job (``sbatch --test-only``) before submitting:
        a job asking for more nodes, GPUs, CPUs or memory than any node has would otherwise wait forever."""
        check = self.scheduler.test_only_argv(argv, self.config)
        self._checked = True
        if check is None:
            return
        try:
            result = subprocess.run(check, capture_output=True, text=True, timeout=120, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise LaunchError(f"cannot run '{check[0]} --test-only': {exc}", exit_code=1) from None
        output = ((result.stdout or "") + (result.stderr or "")).strip()
        with open(self.paths.qlog, "a", encoding="utf-8") as qlog:
            qlog.write(f"# {date_string()}: {shlex.join(check)}\n{output}\n")
        if result.returncode != 0:
            raise LaunchError(f"the cluster cannot run this job: '{check[0]} --test-only' refused it: "
                              f"{' | '.join(output.splitlines()) or f'status {result.returncode}'}; the job was "
                              f"not submitted. Ask for fewer nodes, GPUs, CPUs or less memory (or another "
                              f"partition): {line}", exit_code=1)

    def _run_submit(self, argv: List[str], line: str) -> Optional[str]:
        attempts = 4 if self.scheduler.retry_pattern is not None else 1
        for attempt in range(1, attempts + 1):
            with open(self.paths.qlog, "a", encoding="utf-8") as qlog:
                qlog.write(f"# {date_string()}: {line}\n")
            try:
                result = subprocess.run(argv, capture_output=True, text=True, check=False)
            except OSError as exc:
                raise LaunchError(f"cannot run '{argv[0]}': {exc}", exit_code=1) from None
            output = (result.stdout or "") + (result.stderr or "")
            with open(self.paths.qlog, "a", encoding="utf-8") as qlog:
                qlog.write(output)
            if result.returncode == 0 or self.request.sync:
                job_id = self.scheduler.parse_job_id(output)
                if job_id is not None:
                    return job_id
                if self.request.sync:
                    return None
                raise LaunchError(f"could not find the job id in the output of '{line}': {output.strip()!r}",
                                  exit_code=1)
            retryable = self.scheduler.retry_pattern and self.scheduler.retry_pattern.search(output)
            if retryable and attempt < attempts:
                warn(self.prog, f"'{argv[0]}' failed (attempt {attempt} of {attempts}); retrying in "
                                f"{self.retry_wait:g} s: {output.strip()}")
                time.sleep(self.retry_wait)
                continue
            raise LaunchError(f"submitting failed with status {result.returncode}: {line}\n"
                              f"{output.strip()}".replace("\n", " | "), exit_code=1)
        return None

    # --------------------------------------------------------------------------------- waiting
    def _kick_nfs(self) -> None:
        sync_dir = self.paths.sync_base.parent
        try:
            os.utime(sync_dir)
            os.listdir(sync_dir)
        except OSError:
            pass

    def _check_vanished(self, now: float) -> None:
        job_ids = {t.job_id for t in self.tasks if not t.finished and t.job_id}
        for job_id in job_ids:
            exists = self.scheduler.job_exists(job_id)
            if exists is None:
                if not self._status_command_missing:
                    warn(self.prog, f"cannot run '{self.scheduler.status_command[0]}' to watch job {job_id}; only the "
                                    "done-files will tell when it ends")
                    self._status_command_missing = True
            elif not exists:
                self.vanished_since.setdefault(job_id, now)
            else:
                self.vanished_since.pop(job_id, None)

    def _settle_vanished(self, now: float) -> None:
        for job_id, since in list(self.vanished_since.items()):
            if now - since < self.vanished_wait:
                continue
            for task in self.tasks:
                if task.job_id == job_id and not task.finished and not task.sync.exists():
                    lines = tail(task.log, 1)
                    status = read_status(task.log, 0)
                    accepted = bool(lines) and lines[-1].rstrip().endswith("status 0")
                    task.status = 0 if accepted else (status if status not in (None, 0) else None)
                    task.finished = True
                    if not accepted:
                        self.notes[task.index] = (f"job {job_id} left the queue without finishing: it may have hit its "
                                                  "time limit (--time), been cancelled, or its machine froze")
            del self.vanished_since[job_id]

    def wait(self) -> None:
        delay, polls = 0.1, 0
        while True:
            waiting = [t for t in self.tasks if not t.finished]
            if not waiting:
                return
            self._kick_nfs()
            requeue = []
            for task in waiting:
                if not task.sync.exists():
                    continue
                task.status = read_status(task.log, self.status_wait)
                if task.status != 0 and self.scheduler.requeued_by_scheduler(task.job_id, task.index,
                                                                             done_run(task.sync)):
                    # the scheduler reruns it (scontrol requeue, preemption); its rerun appends to the log
                    task.sync.unlink(missing_ok=True)
                    print(f"{self.prog}: job {task.job_id}{'' if task.index is None else f'_{task.index}'} ended "
                          f"with status {task.status} and was requeued by the scheduler itself; waiting for its "
                          "rerun", file=sys.stderr)
                    task.status = None
                elif task.status == REQUEUE_EXIT_CODE and task.attempt < self.request.max_requeue:
                    requeue.append(task)
                else:
                    task.finished = True
                    if task.status is None:
                        self.notes[task.index] = f"{task.log} has no '# Finished ... with status N' line"
            if requeue:
                self._requeue(requeue)
            if self.request.sync:
                # qsub -sync y returned, so every job has ended; one without a done-file ended abnormally.
                for task in self.tasks:
                    if not task.finished and task.job_id is None and not task.sync.exists():
                        task.status = read_status(task.log, self.status_wait)
                        task.finished = True
            if self.progress is not None:
                self.progress.n = sum(1 for t in self.tasks if t.finished)
                self.progress.refresh()
            polls += 1
            if polls % (10 if polls <= 100 else 30) == 0:
                self._check_vanished(time.monotonic())
            self._settle_vanished(time.monotonic())
            if all(t.finished for t in self.tasks):
                return
            time.sleep(delay)
            delay = min(delay * 1.5, self.poll_max)

    def _requeue(self, tasks: List[_Task]) -> None:
        for task in tasks:
            task.attempt += 1
            if task.log.exists():
                os.replace(task.log, f"{task.log}.attempt{task.attempt}")
            task.sync.unlink(missing_ok=True)
            task.status = None
        which = ", ".join(str(t.index) for t in tasks) if self.request.job_range else "the job"
        print(f"{self.prog}: {which} exited with status {REQUEUE_EXIT_CODE} (checkpointed on a signal); resubmitting "
              f"(attempt {tasks[0].attempt} of {self.request.max_requeue}; previous log kept as "
              f"<log>.attempt{tasks[0].attempt})", file=sys.stderr)
        self.submit(tasks)

    def cancel(self) -> List[str]:
        job_ids = sorted({t.job_id for t in self.tasks if not t.finished and t.job_id})
        if job_ids:
            try:
                subprocess.run(list(self.scheduler.cancel_command) + job_ids, capture_output=True, timeout=60,
                               check=False)
            except (OSError, subprocess.TimeoutExpired) as exc:
                warn(self.prog, f"could not cancel job(s) {' '.join(job_ids)}: {exc}")
        return job_ids

    # ------------------------------------------------------------------------------------ main
    def run(self) -> int:
        request = self.request
        for index in request.indices:
            log = Path(request.log_for(index))
            sync = Path(f"{self.paths.sync_base}.{index}") if request.job_range else self.paths.sync_base
            self.tasks.append(_Task(index=index, log=log, sync=sync))
        to_submit = self._pick()
        if not to_submit:
            return self._finish()
        if shutil.which(self.config.command[0]) is None:
            raise LaunchError(f"'{self.config.command[0]}' (the submit command of {self.config.source}) is not on PATH; "
                              "run on a submit host, or use utils/run.pl (cmd_backend=local in cmd.sh)", exit_code=1)
        Path(os.path.dirname(request.log) or ".").mkdir(parents=True, exist_ok=True)
        new_qdir = not self.paths.qdir.is_dir()
        self.paths.sync_base.parent.mkdir(parents=True, exist_ok=True)
        if new_qdir and self.nfs_sleep > 0:
            time.sleep(self.nfs_sleep)  # let other NFS clients see q/ before a job writes into it
        for task in to_submit:
            task.sync.unlink(missing_ok=True)
        from tqdm import tqdm

        self.progress = tqdm(total=len(self.tasks), unit="job", desc=self.prog, file=sys.stderr,
                             disable=len(self.tasks) < 2 or not sys.stderr.isatty())
        with SignalTrap(raise_on_signal=True):
            try:
                self.submit(to_submit)
                self.wait()
            except Interrupted as stop:
                cancelled = self.cancel()
                print(f"{self.prog}: caught {signal.Signals(stop.signum).name}; "
                      + (f"cancelled job(s) {' '.join(cancelled)} with {self.scheduler.cancel_command[0]}"
                         if cancelled else "no job was running"), file=sys.stderr)
                return 2
        return self._finish()

    def _pick(self) -> List[_Task]:
        if self.request.pick == "all":
            return list(self.tasks)
        chosen = []
        for task in self.tasks:
            status = read_status(task.log, 0) if task.log.is_file() else None
            if status == 0:
                task.status, task.finished = 0, True
            elif status is not None and self.request.pick == "incomplete":
                task.status, task.finished = status, True
            else:
                chosen.append(task)
        skipped = len(self.tasks) - len(chosen)
        if skipped:
            print(f"{self.prog}: --pick {self.request.pick}: {skipped} of {len(self.tasks)} job(s) not resubmitted",
                  file=sys.stderr)
        return chosen

    def _finish(self) -> int:
        if self.progress is not None:
            self.progress.close()
        for task in self.tasks:
            task.sync.unlink(missing_ok=True)
        failed = {t.index: t.status for t in self.tasks if t.status != 0}
        if not failed:
            return 0
        first = sorted(failed, key=lambda i: -1 if i is None else i)[0]
        report_failures(self.request, failed, len(self.tasks), local=False, extra_hint=self.notes.get(first))
        return 1


def run_cluster(request: LaunchRequest, scheduler: Scheduler) -> int:
    """Submit every job of ``request`` and wait; 0 if all succeeded, 1 if any failed, 2 if interrupted."""
    return ClusterRun(request, scheduler).run()
