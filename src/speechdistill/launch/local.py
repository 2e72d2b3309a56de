"""run.pl: run jobs on this machine, a bounded number at a time (conventions §2.3).

Each job runs ``bash -c '<command>'`` with stdout and stderr appended to its log, in its own
process group so that SIGINT/SIGTERM/SIGUSR1 given to the launcher can be forwarded to the whole job
(the trainer checkpoints on SIGTERM/SIGUSR1 and exits 99); a second SIGINT (Ctrl-C twice) kills the jobs,
while a repeated SIGTERM is only passed on again (a batch system and a wrapping ``run.sh`` may
both send one for the same stop). With ``--gpu N`` each running job gets its own N devices in
``CUDA_VISIBLE_DEVICES``.

Exit status: 0 when every job succeeded; :data:`~speechdistill.launch.REQUEUE_EXIT_CODE` (99) when
every job that did not succeed exited 99 (checkpointed on a signal: run the same command again to
resume), also after an interruption; 2 when interrupted otherwise; 1 when any job failed.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Dict, List, Optional, Tuple

from . import REQUEUE_EXIT_CODE
from .jobs import LaunchError, LaunchRequest, SignalTrap, date_string, report_failures, warn

_ENDED = re.compile(r"^# Ended \(code (\d+)(; signal (\d+))?\)")


def previous_outcome(log: Path) -> str:
    """``missing``, ``incomplete`` (no Ended line), ``succeeded`` or ``failed``, from an existing log."""
    if not log.is_file():
        return "missing"
    last = None
    with open(log, "r", encoding="utf-8", errors="replace") as handle:
        for line in handle:
            match = _ENDED.match(line)
            if match:
                last = match
    if last is None:
        return "incomplete"
    return "succeeded" if last.group(1) == "0" and last.group(2) is None else "failed"


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 32


def visible_gpus() -> Optional[List[str]]:
    """Device ids jobs may use: CUDA_VISIBLE_DEVICES if set, else one per ``nvidia-smi -L`` line.

    None when nothing could be detected.
    """
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [d.strip() for d in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    count = sum(1 for line in listing.stdout.splitlines() if line.startswith("GPU "))
    return [str(i) for i in range(count)] if listing.returncode == 0 and count else None


@dataclass
class _Running:
    index: Optional[int]
    slot: int
    log: Path
    process: subprocess.Popen
    output: IO[bytes]
    started: float


def _plan_concurrency(request: LaunchRequest, num_jobs: int) -> Tuple[int, Optional[List[List[str]]]]:
    """(jobs at once, per-slot device lists or None) from --max-jobs-run, --gpu and the machine."""
    try:
        gpus_per_job = int(request.options.get("gpu", "0"))
    except ValueError:
        raise LaunchError(f"--gpu expects an integer, got '{request.options['gpu']}'") from None
    slot_devices = None
    if gpus_per_job > 0:
        devices = visible_gpus()
        if not devices:
            warn(request.prog, "--gpu given but no GPU could be detected (nvidia-smi -L, CUDA_VISIBLE_DEVICES); "
                               "running one job at a time without setting CUDA_VISIBLE_DEVICES")
            default = 1
        else:
            if gpus_per_job > len(devices):
                warn(request.prog, f"each job asks for {gpus_per_job} GPUs but only {len(devices)} are visible")
            default = max(1, len(devices) // gpus_per_job)
            slots = request.max_jobs_run or default
            slot_devices = [[devices[(slot * gpus_per_job + k) % len(devices)]
                             for k in range(min(gpus_per_job, len(devices)))] for slot in range(slots)]
    else:
        default = cpu_count()
        # A few jobs more than the cores: running them all at once beats a straggling second round.
        if default < num_jobs < 1.4 * default:
            default = num_jobs
    return (request.max_jobs_run or default), slot_devices


def _start(request: LaunchRequest, index: Optional[int], slot: int, devices: Optional[List[str]]) -> _Running:
    log = Path(request.log_for(index))
    command = request.substitute(request.command, index)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w", encoding="utf-8") as handle:
        handle.write(f"# {command}\n# Started at {date_string()}\n#\n")
    env = dict(os.environ)
    if devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
    output = open(log, "ab")
    process = subprocess.Popen(["bash", "-c", command], stdin=subprocess.DEVNULL, stdout=output,
                               stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return _Running(index, slot, log, process, output, time.time())


def _finish(job: _Running) -> int:
    """Write the footer; returns the job's status (0 = success)."""
    code = job.process.returncode
    job.output.close()
    elapsed = int(time.time()) - int(job.started)
    if code < 0:
        ended = f"code 0; signal {-code}"
    else:
        ended = f"code {code}"
    with open(job.log, "a", encoding="utf-8") as handle:
        handle.write(f"# Accounting: time={elapsed} threads=1\n"
                     f"# Ended ({ended}) at {date_string()}, elapsed time {elapsed} seconds\n")
    return code if code >= 0 else 128 - code


def run_local(request: LaunchRequest) -> int:
    """Run every job of ``request``; the exit status of run.pl (module docstring)."""
    from tqdm import tqdm

    indices = request.indices
    statuses: Dict[Optional[int], Optional[int]] = {}
    to_run = deque()
    for index in indices:
        outcome = "missing" if request.pick == "all" else previous_outcome(Path(request.log_for(index)))
        if outcome == "succeeded":
            statuses[index] = 0
        elif outcome == "failed" and request.pick == "incomplete":
            statuses[index] = 1
        else:
            to_run.append(index)
    skipped = len(indices) - len(to_run)
    if skipped:
        print(f"{request.prog}: --pick {request.pick}: {skipped} of {len(indices)} job(s) not rerun "
              f"({sum(1 for s in statuses.values() if s == 0)} already succeeded)", file=sys.stderr)
    limit, slot_devices = _plan_concurrency(request, len(to_run))
    free_slots = deque(range(limit))
    running: List[_Running] = []
    interrupted: List[int] = []
    bar = tqdm(total=len(to_run), unit="job", desc=request.prog, file=sys.stderr,
               disable=len(to_run) < 2 or not sys.stderr.isatty())
    forwarded = 0
    with SignalTrap(raise_on_signal=False) as trap:
        while to_run or running:
            while forwarded < len(trap.received):
                signum = trap.received[forwarded]
                forwarded += 1
                escalate = signum == signal.SIGINT and signal.SIGINT in trap.received[:forwarded - 1]
                interrupted.append(signum)
                for job in running:  # forward the signal to each whole job (its own process group)
                    _signal_group(job.process, signal.SIGKILL if escalate else signum)
            while to_run and free_slots and not interrupted:
                slot = free_slots.popleft()
                devices = slot_devices[slot % len(slot_devices)] if slot_devices else None
                index = to_run.popleft()
                try:
                    running.append(_start(request, index, slot, devices))
                except OSError as exc:  # e.g. the log directory is not writable
                    warn(request.prog, f"cannot start job {'' if index is None else index}: {exc}")
                    statuses[index] = 1
                    free_slots.append(slot)
                    bar.update(1)
            still = []
            for job in running:
                if job.process.poll() is None:
                    still.append(job)
                else:
                    statuses[job.index] = _finish(job)
                    free_slots.append(job.slot)
                    bar.update(1)
            running = still
            if interrupted and not running:
                break
            time.sleep(0.02 if running else 0)
    bar.close()
    failed = {i: s for i, s in statuses.items() if s}
    requeue = bool(failed) and all(s == REQUEUE_EXIT_CODE for s in failed.values())
    if interrupted:
        print(f"{request.prog}: interrupted by {signal.Signals(interrupted[0]).name}; "
              f"{len(to_run)} job(s) were not started"
              + (f"; every stopped job checkpointed (status {REQUEUE_EXIT_CODE}): run the same command again to "
                 "resume" if requeue else ""), file=sys.stderr)
        return REQUEUE_EXIT_CODE if requeue else 2
    if failed:
        report_failures(request, failed, len(indices), local=True)
        return REQUEUE_EXIT_CODE if requeue else 1
    return 0


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass
