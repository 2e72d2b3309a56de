"""The option-mapping config of queue.pl / slurm.pl (``conf/slurm.conf``, ``conf/queue.conf``; conventions §2.4).

A config maps the launcher's ``--key value`` options to scheduler arguments: ``command <submit command>``
names the submit command, ``option key=* args-with-$0`` maps any value (``$0`` receives it),
``option key=value [args]`` maps one value, ``default key=value`` gives a value when the command line
has none. The built-in defaults below apply when no config file is found
(:func:`speechdistill.launch.schedulers.load_config` looks for one).
"""
from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from .jobs import LaunchError, LaunchRequest, warn

LAUNCHER_KEYS = ("config", "max_jobs_run", "pick", "max_requeue")
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
