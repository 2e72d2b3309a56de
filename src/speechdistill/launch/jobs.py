"""What the three launchers share: the Kaldi command line, JOB ranges, quoting, logs, reports."""
from __future__ import annotations

import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from . import DEFAULT_MAX_REQUEUE, REQUEUE_EXIT_CODE, USAGE_EXIT_CODE

_RANGE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(\d+):(\d+)$")
_SINGLE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(\d+)$")
_LOOKS_LIKE_RANGE = re.compile(r".+=.*:.*$")
PICK_CHOICES = ("all", "failed", "incomplete")
TAIL_LINES = 20


class LaunchError(ValueError):
    """A launcher command line or configuration a user wrote is wrong."""

    def __init__(self, message: str, exit_code: int = USAGE_EXIT_CODE):
        super().__init__(message)
        self.exit_code = exit_code


class Interrupted(Exception):
    """SIGINT or SIGTERM reached the launcher."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@dataclass
class JobRange:
    """``NAME=start:end`` (inclusive, start >= 1)."""
    name: str
    start: int
    end: int

    @property
    def indices(self) -> List[int]:
        return list(range(self.start, self.end + 1))


@dataclass
class LaunchRequest:
    """A parsed launcher command line."""
    prog: str
    log: str
    command_args: List[str]
    job_range: Optional[JobRange] = None
    options: Dict[str, str] = field(default_factory=dict)   # --foo-bar value, as foo_bar -> value (last wins)
    passthrough: List[str] = field(default_factory=list)    # single-dash scheduler options, verbatim
    sync: bool = False
    pe_threads: Optional[int] = None
    max_jobs_run: Optional[int] = None
    pick: str = "all"
    max_requeue: int = DEFAULT_MAX_REQUEUE
    config: Optional[str] = None

    @property
    def command(self) -> str:
        return quote_command(self.command_args)

    @property
    def indices(self) -> List[Optional[int]]:
        """Job indices; ``[None]`` for a plain job without a JOB range."""
        return self.job_range.indices if self.job_range else [None]

    def substitute(self, text: str, index: Optional[int]) -> str:
        """Replace every occurrence of the JOB name by ``index`` (plain text replacement, as Kaldi)."""
        if self.job_range is None or index is None:
            return text
        return text.replace(self.job_range.name, str(index))

    def log_for(self, index: Optional[int]) -> str:
        return self.substitute(self.log, index)

    def log_pattern(self) -> str:
        """The log path with the JOB name replaced by ``*`` (for messages)."""
        return self.log.replace(self.job_range.name, "*") if self.job_range else self.log


def usage(prog: str) -> str:
    return (f"Usage: {prog} [options] [JOB=1:N] <log-file> <command...>\n"
            f"  e.g. {prog} JOB=1:4 exp/log/job.JOB.log echo JOB\n"
            "Options: --max-jobs-run N, --gpu N, --mem X, --num-threads N, --time T, --name NAME, --num-nodes N, "
            "--pick all|failed|incomplete, --max-requeue N, --config FILE (clusters), single-dash options are "
            "passed to the scheduler.\nSee 'python -c \"import speechdistill.launch as l; help(l)\"' for details.")


def warn(prog: str, message: str) -> None:
    print(f"{prog}: WARNING: {message}", file=sys.stderr)


def parse_launch_args(prog: str, argv: Sequence[str]) -> LaunchRequest:
    """Scan options and the JOB range (in any interleaving) until the log file argument."""
    args = list(argv)
    if len(args) < 2:
        raise LaunchError(f"expected [options] [JOB=a:b] <log> <command...>, got {len(args)} argument(s) "
                          "(see --help)")
    request = LaunchRequest(prog=prog, log="", command_args=[])
    while True:
        progressed = False
        while len(args) >= 2 and args[0].startswith("-"):
            progressed = True
            _take_option(request, args)
        if args and request.job_range is None and (_RANGE.match(args[0]) or _SINGLE.match(args[0])):
            request.job_range = _parse_range(args.pop(0))
            progressed = True
        elif args and _LOOKS_LIKE_RANGE.match(args[0]) and not progressed:
            warn(prog, f"suspicious first argument '{args[0]}' (not NAME=a:b); taking it as the log file")
        if not progressed:
            break
    if len(args) < 2:
        raise LaunchError("missing the log file or the command after the options (see --help)")
    request.log, request.command_args = args[0], args[1:]
    if request.job_range and request.job_range.end > request.job_range.start \
            and request.job_range.name not in request.log:
        raise LaunchError(f"you are trying to run a parallel job but you are putting the output into just one log "
                          f"file ({request.log}); put {request.job_range.name} in the log path", exit_code=1)
    return request


def _parse_range(text: str) -> JobRange:
    match = _RANGE.match(text)
    if match:
        name, start, end = match.group(1), int(match.group(2)), int(match.group(3))
    else:
        match = _SINGLE.match(text)
        name, start = match.group(1), int(match.group(2))
        end = start
    if start > end:
        raise LaunchError(f"invalid job range {text}: start is after end")
    if start < 1:
        raise LaunchError(f"invalid job range {text}: start must be at least 1 (a Grid Engine requirement)")
    return JobRange(name, start, end)


def _positive_int(option: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise LaunchError(f"invalid option {option} {value}: expected a positive integer")
    return number


def _take_option(request: LaunchRequest, args: List[str]) -> None:
    switch = args.pop(0)
    if switch == "-V":
        request.passthrough.append("-V")
        return
    if switch.startswith("--") and "=" in switch:
        name, _, value = switch.partition("=")
        raise LaunchError(f"options are '--name value', not '{switch}'; write '{name} {value}'")
    value = args.pop(0)
    if value.startswith("--"):
        warn(request.prog, f"suspicious argument '{value}' to {switch}; starts with '-'")
    if switch == "-sync":
        request.sync = value[:1] in ("y", "Y")
        request.passthrough += [switch, value]
    elif switch == "-pe":
        if not args:
            raise LaunchError("-pe takes two values, e.g. '-pe smp 4'")
        slots = args.pop(0)
        request.passthrough += [switch, value, slots]
        request.pe_threads = _positive_int("-pe " + value, slots)
    elif switch in ("--max-jobs-run", "--max_jobs_run", "-tc"):
        limit = _positive_int(switch, value)
        request.max_jobs_run = limit if request.max_jobs_run is None else min(request.max_jobs_run, limit)
    elif switch == "--pick":
        if value not in PICK_CHOICES:
            raise LaunchError(f"--pick must be one of {', '.join(PICK_CHOICES)}, got '{value}'")
        request.pick = value
    elif switch in ("--max-requeue", "--max_requeue"):
        try:
            request.max_requeue = int(value)
        except ValueError:
            request.max_requeue = -1
        if request.max_requeue < 0:
            raise LaunchError(f"--max-requeue expects an integer >= 0, got '{value}'")
    elif switch == "--config":
        request.config = value
    elif switch.startswith("--"):
        request.options[switch[2:].replace("-", "_")] = value
    else:
        request.passthrough += [switch, value]


_NEEDS_NO_QUOTES = re.compile(r"^\S+$")


def quote_command(args: Sequence[str]) -> str:
    """Join arguments for bash the way Kaldi's launchers do (conventions §2.3).

    An argument without whitespace is used as is (so an escaped ``\\|`` or ``\\>`` becomes shell
    syntax); one with whitespace is wrapped in double quotes, or in single quotes if it holds a
    double quote. Unlike Kaldi, an empty argument stays an (empty) argument and a single quote
    inside single quotes is escaped.
    """
    parts = []
    for arg in args:
        if arg == "":
            parts.append("''")
        elif _NEEDS_NO_QUOTES.match(arg):
            parts.append(arg)
        elif '"' in arg:
            parts.append("'" + arg.replace("'", "'\\''") + "'")
        else:
            parts.append('"' + arg + '"')
    return " ".join(parts)


def date_string() -> str:
    """The time as ``date`` prints it in the C locale, e.g. ``Tue Nov 24 00:31:20 UTC 2026``."""
    return time.strftime("%a %b %e %H:%M:%S %Z %Y")


def env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise LaunchError(f"environment variable {name}='{raw}' is not a number of seconds") from None
    if value < 0:
        raise LaunchError(f"environment variable {name}='{raw}' must not be negative")
    return value


def tail(path: Path, lines: int = TAIL_LINES) -> List[str]:
    """The last ``lines`` lines of a text file (decoding errors replaced)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            data = handle.read()
    except OSError:
        return []
    return data.decode("utf-8", "replace").splitlines()[-lines:]


def status_hint(status: Optional[int], *, local: bool) -> Optional[str]:
    """One sentence on what a job exit status usually means, or None."""
    if status == 127:
        return ("status 127 means 'command not found': check that the program is installed and on PATH "
                "(did ./path.sh activate tools/venv?)")
    if status in (137, 100):
        return ("the job was killed with SIGKILL (status 137), most often for using more memory than it was given; "
                "ask for more with --mem")
    if status == REQUEUE_EXIT_CODE:
        if local:
            return (f"status {REQUEUE_EXIT_CODE}: the job saved a checkpoint on a signal and asked to be run again "
                    f"(run.pl exits {REQUEUE_EXIT_CODE} too); rerun the same command (with --pick failed: only the "
                    "stopped jobs) to resume it")
        return (f"status {REQUEUE_EXIT_CODE}: the job checkpointed on a signal and asked to be requeued, and the "
                "--max-requeue limit was reached; rerun with --pick failed, or raise --max-requeue")
    if status is not None and status > 128 and status - 128 < 65:
        try:
            name = signal.Signals(status - 128).name
        except ValueError:
            return None
        return f"status {status}: the job was killed by {name}"
    return None


def report_failures(request: LaunchRequest, failed: Dict[Optional[int], Optional[int]], total: int, *,
                    local: bool, extra_hint: Optional[str] = None) -> None:
    """Print Kaldi's failure line, then the tail of the first failing log and a hint, to stderr."""
    prog = request.prog
    if total == 1:
        index = next(iter(failed))
        log = request.log_for(index)
        print(f"{prog}: job failed, log is in {log}", file=sys.stderr)
        if request.job_range is None and "JOB" in log:
            print(f"{prog}: probably you forgot to put JOB=1:$nj in your script", file=sys.stderr)
    else:
        print(f"{prog}: {len(failed)} / {total} failed, log is in {request.log_pattern()}", file=sys.stderr)
    first = sorted(failed, key=lambda i: -1 if i is None else i)[0]
    first_log = Path(request.log_for(first))
    lines = tail(first_log)
    if lines:
        print(f"{prog}: last {len(lines)} lines of {first_log}:", file=sys.stderr)
        for line in lines:
            print(f"    {line}", file=sys.stderr)
    else:
        print(f"{prog}: {first_log} is missing or empty: the job never started", file=sys.stderr)
    hint = status_hint(failed[first], local=local)
    for text in (hint, extra_hint):
        if text:
            print(f"{prog}: {text}", file=sys.stderr)


class SignalTrap:
    """Turn SIGINT, SIGTERM and SIGUSR1 (a batch system's time-limit warning to a launcher that runs inside a
    job) into :class:`Interrupted` in the main thread while active, or only record them
    (``raise_on_signal=False``)."""

    def __init__(self, raise_on_signal: bool = True,
                 signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)):
        self.raise_on_signal = raise_on_signal
        self.signals = tuple(signals)
        self.received: List[int] = []
        self._previous = {}

    def _handle(self, signum, frame):  # noqa: ARG002 - signature fixed by the signal module
        self.received.append(signum)
        if self.raise_on_signal:
            raise Interrupted(signum)

    def __enter__(self) -> "SignalTrap":
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
