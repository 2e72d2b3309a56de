"""queue.pl and slurm.pl: submit jobs to Grid Engine or Slurm and wait for them (conventions §2.4).

For ``<log>`` = ``exp/x/log/train.JOB.log`` the launcher writes, beside the logs, a queue dir
``exp/x/q/`` (``.../log/q`` collapses to ``.../q``) holding the scheduler's own output
``train.log``, the job script ``train.sh`` and the done-files the jobs touch when they end.
The job script ``cd``s to the submit directory, writes the log header (host, start time,
Slurm variables, the rendered ``sbatch``/``qsub`` line, the command), sources ``./path.sh``
(a failure there is written to the log and the command is not run), runs the command with
output appended to the log while passing SIGTERM/SIGUSR1 on to it (:func:`job_script`), writes
``# Accounting: ...`` and ``# Finished at ... with status N``, and touches its done-file. Status
137 (a SIGKILL, usually out of memory) makes the script exit 100: Grid Engine then holds the job
in its error state, from which it can be re-run.

slurm.pl first asks ``sbatch --test-only`` whether the cluster could ever run the job. The
launcher polls for the done-files with exponential back-off, asks ``squeue``/``qstat`` now and
then whether a job still exists, reads each job's status from the last lines of its log,
resubmits tasks that exited with :data:`speechdistill.launch.REQUEUE_EXIT_CODE` (but waits for a
job Slurm put back in its queue itself), and on SIGINT/SIGTERM/SIGUSR1 cancels its jobs
(``scancel``/``qdel``) and exits 2.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from . import REQUEUE_EXIT_CODE
from .jobs import (Interrupted, LaunchError, LaunchRequest, SignalTrap, date_string, env_seconds, report_failures,
                   tail, warn)

LAUNCHER_KEYS = ("config", "max_jobs_run", "pick", "max_requeue")
_STATUS = re.compile(r"with status (\d+)")
_JOB_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")

SLURM_DEFAULT_CONFIG = """\
# Built-in default of slurm.pl, used when neither ./conf/slurm.conf nor the toolkit's conf/slurm.conf exists.
command sbatch --export=PATH
option name=* --job-name $0
option time=* --time $0
option mem=* --mem $0
option mem=0
option num_threads=* --cpus-per-task $0
option num_nodes=* --nodes $0
default tasks_per_node=1
option tasks_per_node=* --ntasks-per-node $0
default gpu=0
option gpu=0
option gpu=* --gres=gpu:$0
default signal_lead=120
option signal_lead=0
option signal_lead=* --signal=B:USR1@$0
"""

SGE_DEFAULT_CONFIG = """\
# Built-in default of queue.pl, used when neither ./conf/queue.conf nor the toolkit's conf/queue.conf exists.
command qsub -v PATH -cwd -S /bin/bash -j y
option name=* -N $0
option time=* -l h_rt=$0
option mem=* -l mem_free=$0,ram_free=$0
option mem=0
option num_threads=* -pe smp $0
option num_threads=1
default gpu=0
option gpu=0
option gpu=* -l gpu=$0 -q '*.q'
"""


# ==================================================================================== config
@dataclass
class ClusterConfig:
    """A parsed ``conf/slurm.conf`` / ``conf/queue.conf`` (grammar in conventions §2.4)."""
    source: str
    command: List[str]
    exact: Dict[Tuple[str, str], List[str]] = field(default_factory=dict)
    star: Dict[str, List[str]] = field(default_factory=dict)
    defaults: Dict[str, str] = field(default_factory=dict)


def parse_config(text: str, source: str, *, star_requires_dollar0: bool, prog: str) -> ClusterConfig:
    """Parse config lines: ``command ...``, ``option k=* args-with-$0``, ``option k=v [args]``, ``default k=v``."""
    command: Optional[List[str]] = None
    config = ClusterConfig(source=source, command=[])
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{source}:{number}"
        try:
            if line.startswith("command "):
                command = shlex.split(line[len("command "):])
                continue
            match = re.match(r"^option\s+([^=\s]+)=(\S+)\s*(.*)$", line)
            if match:
                key, value, args = match.group(1), match.group(2), match.group(3)
                tokens = shlex.split(args)
                if value == "*":
                    if tokens and not any("$0" in t for t in tokens):
                        message = f"{where}: '{raw.strip()}' has no $0 to receive the option's value"
                        if star_requires_dollar0:
                            raise LaunchError(message + "; add $0 where the value goes", exit_code=1)
                        warn(prog, message)
                    config.star[key] = tokens
                else:
                    config.exact[(key, value)] = tokens
                continue
            match = re.match(r"^default\s+([^=\s]+)=(\S+)$", line)
            if match:
                config.defaults[match.group(1)] = match.group(2)
                continue
        except ValueError as exc:  # shlex: unbalanced quotes
            raise LaunchError(f"{where}: cannot split '{raw.strip()}': {exc}", exit_code=1) from None
        raise LaunchError(f"{where}: cannot parse '{raw.strip()}'; a line is 'command <submit command>', "
                          "'option <key>=* <args with $0>', 'option <key>=<value> [args]' or 'default <key>=<value>'",
                          exit_code=1)
    if not command:
        raise LaunchError(f"{source}: has no 'command <submit command ...>' line", exit_code=1)
    config.command = command
    return config


def sanitize_job_name(name: str) -> str:
    """Scheduler-safe job name: characters other than ``[A-Za-z0-9._-]`` become ``_`` (SGE rejects ``/``)."""
    return _JOB_NAME_UNSAFE.sub("_", name).strip("_") or "job"


# ================================================================================= schedulers
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


def scheduler_arguments(config: ClusterConfig, request: LaunchRequest, prog: str) -> Tuple[List[str], int]:
    """Map ``--key value`` options through the config; returns (submit arguments, threads per job)."""
    values = dict(request.options)
    for key, value in config.defaults.items():
        values.setdefault(key, value)
    arguments: List[str] = []
    for key, value in values.items():
        if key in LAUNCHER_KEYS:
            continue
        if key == "name":
            safe = sanitize_job_name(value)
            if safe != value:
                print(f"{prog}: job name '{value}' sanitised to '{safe}'", file=sys.stderr)
            value = safe
        if (key, value) in config.exact:
            arguments += config.exact[(key, value)]
        elif key in config.star:
            arguments += [token.replace("$0", value) for token in config.star[key]]
        else:
            spelling = "--" + key.replace("_", "-")
            raise LaunchError(f"command line option {spelling} (value '{value}') is not described in {config.source}; "
                              f"add 'option {key}=* <scheduler arguments with $0>' (or 'option {key}={value} "
                              f"<arguments>') to it")
    threads = request.pe_threads or 1
    if "num_threads" in values:
        try:
            threads = int(values["num_threads"])
        except ValueError:
            raise LaunchError(f"--num-threads expects an integer, got '{values['num_threads']}'") from None
    return arguments, threads


# ==================================================================================== paths
@dataclass
class QueuePaths:
    qdir: Path
    qlog: Path
    script: Path
    sync_base: Path


def queue_paths(request: LaunchRequest, scheduler: Scheduler) -> QueuePaths:
    log_dir = os.path.dirname(request.log) or "."
    qdir = Path(re.sub(r"/(log|LOG)/*q$", "/q", f"{log_dir}/q"))
    base = os.path.basename(request.log)
    if request.job_range:
        base = re.sub(r"\.?" + re.escape(request.job_range.name), "", base, count=1)
    qlog = qdir / base
    script_name, replaced = re.subn(r"\.[A-Za-z]{1,5}$", ".sh", base)
    script = (qdir / (script_name if replaced else base + ".sh")).absolute()
    sync_dir = (qdir / scheduler.sync_subdir) if scheduler.sync_subdir else qdir
    return QueuePaths(qdir=qdir, qlog=qlog, script=script, sync_base=(sync_dir / f"done.{os.getpid()}").absolute())


STOP_SIGNALS = ("TERM", "USR1")
"""Signals the job script traps: the scheduler's stop requests (time limit, preemption, scancel,
``sbatch --signal=B:USR1@N``, Grid Engine's ``-notify``)."""


def job_script(request: LaunchRequest, scheduler: Scheduler, *, cwd: str, threads: int, sync_base: Path,
               submit_line: str) -> str:
    """The bash script every task of a submission runs (see the module docstring).

    The command runs in the background in a process group of its own while the script waits for
    it. SIGTERM or SIGUSR1 to the script (Slurm's ``--signal=B:USR1@N`` reaches only the batch
    shell; ``scancel``, ``scontrol requeue`` and preemption send SIGTERM) is passed on to that whole
    group as SIGUSR1: the trainer checkpoints and exits 99 on either, and ``srun`` passes SIGUSR1 on
    to its tasks, where a SIGTERM would make it kill them at once. The script then keeps waiting,
    so the command's own status (99) is what it records and what the launcher reads.
    """
    q = shlex.quote
    lines = ["#!/usr/bin/env bash",
             f"# Job script of {scheduler.prog} (speechdistill.launch), written at {date_string()}.",
             f"cd {q(cwd)} || exit 1"]
    if request.job_range:
        name, var = request.job_range.name, scheduler.task_variable
        lines += [f"task_id=${{{var}:?{var} is not set: this script runs as an array job}}",
                  f"log_template={q(request.log)}",
                  f"command_template={q(request.command)}",
                  f"log=${{log_template//{name}/${{task_id}}}}",
                  f"command=${{command_template//{name}/${{task_id}}}}",
                  f"sync_file={q(str(sync_base))}.${{task_id}}"]
    else:
        lines += [f"log={q(request.log)}", f"command={q(request.command)}", f"sync_file={q(str(sync_base))}"]
    lines += ["child=",
              "stop_signal=",
              "pass_on() {  # a stop request: give it to the command's whole process group",
              '  stop_signal=$1',
              '  if [ -n "$child" ]; then',
              '    echo "# $(date): SIG$1 received; passing SIGUSR1 to the command (process group $child)" >> "$log"',
              '    kill -USR1 -- "-$child" 2> /dev/null || true',
              "  fi",
              "}"]
    lines += [f"trap 'pass_on {sig}' {sig}" for sig in STOP_SIGNALS]
    lines += ['mkdir -p "$(dirname "$log")"']
    if scheduler.header_env_prefix == "SLURM":
        lines += ['if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ] && [ -f "$log" ]; then',
                  "  # Slurm requeued the job itself (scontrol requeue, preemption): keep the earlier run's lines",
                  '  echo "# Requeued by Slurm: run $((SLURM_RESTART_COUNT + 1)) of job ${SLURM_JOB_ID:-}" >> "$log"',
                  "else",
                  '  : > "$log"',
                  "fi"]
    else:
        lines.append(': > "$log"')
    lines += ["{",
              '  echo "# Running on $(hostname)"',
              '  echo "# Started at $(date)"']
    if scheduler.header_env_prefix:
        lines.append(f"  env | grep '^{scheduler.header_env_prefix}' | LC_ALL=C sort | sed 's/^/# /'")
    lines += [f"  printf '# Submitted with: %s\\n' {q(submit_line)}",
              "  printf '# %s\\n' \"$command\"",
              '} >> "$log"',
              "ret=0",
              "if [ -f ./path.sh ]; then",
              '  . ./path.sh >> "$log" 2>&1 || { ret=$?; echo "# sourcing ./path.sh in $(pwd) failed with status '
              '$ret; the command was not run" >> "$log"; }',
              "fi"]
    if scheduler.header_env_prefix == "SLURM":
        lines += ['if [ "${CUDA_VISIBLE_DEVICES:-}" = NoDevFiles ]; then',
                  '  echo "CUDA_VISIBLE_DEVICES set to NoDevFiles, unsetting it" >> "$log"',
                  "  unset CUDA_VISIBLE_DEVICES",
                  "fi"]
    lines += ["time1=$(date +%s)",
              'if [ "$ret" -eq 0 ] && [ -n "$stop_signal" ]; then',
              f'  echo "# SIG$stop_signal arrived before the command started; not started (status {REQUEUE_EXIT_CODE}: '
              'run it again)" >> "$log"',
              f"  ret={REQUEUE_EXIT_CODE}",
              'elif [ "$ret" -eq 0 ]; then',
              "  set -m  # job control: the command gets a process group of its own",
              "  # the subshell outlives a stop signal (trapped, so its children keep the default action) and",
              "  # returns the command's status",
              f"  ( trap : {' '.join(STOP_SIGNALS)}; eval \"$command\" ) >> \"$log\" 2>&1 < /dev/null &",
              "  child=$!",
              "  set +m",
              '  [ -z "$stop_signal" ] || pass_on "$stop_signal"',
              "  while :; do  # a trapped signal interrupts 'wait': wait again until the command has ended",
              "    stop_signal=",
              '    wait "$child"',
              "    ret=$?",
              '    [ -n "$stop_signal" ] || break',
              "  done",
              "fi",
              "time2=$(date +%s)"]
    if scheduler.header_env_prefix == "SLURM":
        lines += ['echo "# Accounting: begin_time=$time1" >> "$log"',
                  'echo "# Accounting: end_time=$time2" >> "$log"']
    lines += [f'echo "# Accounting: time=$((time2 - time1)) threads={threads}" >> "$log"',
              'echo "# Finished at $(date) with status $ret" >> "$log"']
    if scheduler.exit_100_before_sync:
        lines.append('if [ "$ret" -eq 137 ]; then exit 100; fi  # out of memory: Grid Engine error state, re-runnable')
    # the done-file holds which run of the job wrote it (Slurm counts the requeues it does itself)
    lines.append('echo "${SLURM_RESTART_COUNT:-0}" > "$sync_file"')
    if not scheduler.exit_100_before_sync:
        lines.append('if [ "$ret" -eq 137 ]; then exit 100; fi  # killed, most likely out of memory')
    lines += ['if [ "$ret" -eq 0 ]; then exit 0; fi', "exit 1", "## submitted with:", f"# {submit_line}", ""]
    return "\n".join(lines)


def _write_executable(path: Path, text: str) -> None:
    """Write via a temporary file + rename: tasks still running the previous script keep its old inode."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)


def _done_run(sync: Path) -> int:
    """Which run of the job wrote the done-file (its first line; 0 when empty or unreadable)."""
    try:
        text = sync.read_text(encoding="utf-8").strip()
    except OSError:
        return 0
    return int(text) if text.isdigit() else 0


def read_status(log: Path, wait: float) -> Optional[int]:
    """The N of the last ``with status N`` in the last 10 lines of ``log``, waiting up to ``wait`` s (NFS)."""
    deadline = time.monotonic() + wait
    while True:
        for line in reversed(tail(log, 10)):
            match = _STATUS.search(line)
            if match:
                return int(match.group(1))
        if time.monotonic() >= deadline:
            return None
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


# ====================================================================================== run
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
            _write_executable(self.paths.script, job_script(self.request, self.scheduler, cwd=self.cwd,
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
                                                                             _done_run(task.sync)):
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
