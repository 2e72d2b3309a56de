"""The job script a queue.pl / slurm.pl task runs, where it lives, and the files it leaves for the launcher.

For ``<log>`` = ``exp/x/log/train.JOB.log`` the launcher writes, beside the logs, a queue dir
``exp/x/q/`` (``.../log/q`` collapses to ``.../q``; :func:`queue_paths`) holding the scheduler's own
output ``train.log``, the job script ``train.sh`` and the done-files the jobs touch when they end.
The job script ``cd``s to the submit directory, writes the log header (host, start time,
Slurm variables, the rendered ``sbatch``/``qsub`` line, the command), sources ``./path.sh``
(a failure there is written to the log and the command is not run), runs the command with
output appended to the log while passing SIGTERM/SIGUSR1 on to it (:func:`job_script`), writes
``# Accounting: ...`` and ``# Finished at ... with status N``, and touches its done-file. Status
137 (a SIGKILL, usually out of memory) makes the script exit 100: Grid Engine then holds the job
in its error state, from which it can be re-run. The launcher reads a task's status from the last
lines of its log (:func:`read_status`) and which run of the job ended from its done-file (:func:`done_run`).
"""
from __future__ import annotations

import os
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from . import REQUEUE_EXIT_CODE
from .jobs import LaunchRequest, date_string, tail
from .schedulers import Scheduler

_STATUS = re.compile(r"with status (\d+)")


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


def write_executable(path: Path, text: str) -> None:
    """Write via a temporary file + rename: tasks still running the previous script keep its old inode."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)


def done_run(sync: Path) -> int:
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
