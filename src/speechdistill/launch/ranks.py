"""``torchrun`` that keeps the requeue contract: one process per GPU on a node, started by
PyTorch's elastic launcher, with stop signals passed to the ranks and their exit status kept.

Plain ``torchrun`` breaks the contract of :data:`speechdistill.launch.REQUEUE_EXIT_CODE` in three
ways (each seen here with two gloo ranks of the trainer):

* it starts every rank in a session of its own, so a SIGTERM that ``run.pl`` or a batch script
  gives the job's process group reaches torchrun only; torchrun then sends SIGTERM to the ranks
  itself, which checkpoint and exit 99, but it ends with a ``SignalException`` traceback and
  status 1, and queue.pl/slurm.pl do not resubmit;
* ranks that exit 99 on their own are reported as a failure, status 1, for the same result;
* SIGUSR1 (``sbatch --signal=USR1@120``, the time-limit warning) kills torchrun at once, with
  status 138, and leaves the ranks running as orphans that are never told to stop.

:func:`main` runs torchrun's own launcher in this process (every torchrun option works the same:
``--standalone``, ``--nnodes``, ``--rdzv_*``, ``--max_restarts`` ...) with SIGTERM and SIGUSR1
taken over: the first of them is passed to each rank (the trainer finishes the update in flight,
checkpoints and exits 99) and the launcher keeps watching until every rank has ended. The exit
status is then 99 when the ranks stopped on a signal after checkpointing (every failed rank
exited 99, or was ended by torchrun with SIGTERM after another did), else the status of the first
failed rank (1 if it died by a signal), else 0. SIGINT, SIGHUP and SIGQUIT keep torchrun's
handling (its ranks are terminated, status 1).
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from . import REQUEUE_EXIT_CODE

FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
"""Signals passed on to the ranks, which checkpoint and exit with :data:`REQUEUE_EXIT_CODE`."""


def child_pids(parent: int) -> List[int]:
    """Process ids whose parent is ``parent`` (Linux ``/proc``; empty where that is missing).

    torchrun's ranks are its direct children (``subprocess.Popen``), each in a new session, so
    neither a process group nor a session reaches them."""
    children = []
    proc = Path("/proc")
    if not proc.is_dir():
        return children
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # ended while we looked
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ')'
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == parent:
            children.append(int(entry.name))
    return children


class _SignalForwarder:
    """SIGTERM/SIGUSR1 handler of the launcher process: pass the signal to each rank, remember it."""

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self._previous: Dict[int, Any] = {}

    def __enter__(self) -> "_SignalForwarder":
        for signum in FORWARDED_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: Any) -> None:  # noqa: ARG002 - signature fixed by the signal module
        if self.received is None:
            self.received = signum
            print(f"speechdistill.launch.ranks: {signal.Signals(signum).name} received; passing it to the ranks, "
                  "which checkpoint and exit", file=sys.stderr, flush=True)
        for pid in child_pids(os.getpid()):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass


def exit_status(exit_codes: List[int]) -> int:
    """The launcher's status from the failed ranks' exit codes (negative: killed by that signal).

    All requeue (99), or requeue mixed with ranks that torchrun ended with SIGTERM once another
    rank had stopped: 99. Otherwise the first real failure's code (1 for a death by signal)."""
    if not exit_codes:
        return 0
    if REQUEUE_EXIT_CODE in exit_codes and all(c in (REQUEUE_EXIT_CODE, -signal.SIGTERM) for c in exit_codes):
        return REQUEUE_EXIT_CODE
    for code in exit_codes:
        if code not in (REQUEUE_EXIT_CODE, -signal.SIGTERM):
            return code if code > 0 else 1
    return 1


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``torchrun ARGV`` in this process with the signal handling above; returns the status."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip() + "\n\nUsage: python -m speechdistill.bin.torchrun [torchrun options] "
              "SCRIPT|-m MODULE [args]\n(torchrun's options: python -m torch.distributed.run --help)")
        return 0
    args = parse_args(argv)
    # torchrun's --signals-to-handle (default SIGTERM,SIGINT,SIGHUP,SIGQUIT) without the ones passed on
    ours = {s.name for s in FORWARDED_SIGNALS}
    args.signals_to_handle = ",".join(name.strip() for name in args.signals_to_handle.split(",")
                                      if name.strip() and name.strip() not in ours)
    with _SignalForwarder() as forwarder:
        try:
            run(args)
        except ChildFailedError as error:
            codes = [failure.exitcode for _, failure in sorted(error.failures.items())]
            status = exit_status(codes)
            if status == REQUEUE_EXIT_CODE:
                stopped = f" on {signal.Signals(forwarder.received).name}" if forwarder.received else ""
                print(f"speechdistill.launch.ranks: the ranks checkpointed and stopped{stopped}; exit "
                      f"{REQUEUE_EXIT_CODE} asks queue.pl/slurm.pl to run the job again (it resumes)",
                      file=sys.stderr, flush=True)
            else:
                print(error.format_msg(), file=sys.stderr, flush=True)
            return status
    return 0
