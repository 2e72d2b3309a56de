"""Job launchers: ``python -m speechdistill.bin.launch run|queue|slurm [options] [JOB=a:b] <log> <command...>``.

``egs/TEMPLATE/utils/run.pl``, ``queue.pl`` and ``slurm.pl`` run this with ``run``, ``queue``
and ``slurm``. The contract (log lines, exit codes, options, configs, requeue) is described in
:mod:`speechdistill.launch`.
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence

BACKENDS = {"run": "run.pl", "queue": "queue.pl", "slurm": "slurm.pl"}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    if not argv or argv[0] not in BACKENDS:
        print(f"usage: python -m speechdistill.bin.launch {{{','.join(BACKENDS)}}} [options] [JOB=a:b] <log> "
              "<command...>", file=sys.stderr)
        return 1
    backend, rest = argv[0], argv[1:]
    prog = BACKENDS[backend]
    from speechdistill import launch
    from speechdistill.launch.jobs import LaunchError, parse_launch_args, usage

    if rest[:1] in (["-h"], ["--help"]):
        print(usage(prog))
        print(launch.__doc__)
        return 0
    try:
        request = parse_launch_args(prog, rest)
        if backend == "run":
            from speechdistill.launch.local import run_local

            return run_local(request)
        from speechdistill.launch.cluster import SCHEDULERS, run_cluster

        return run_cluster(request, SCHEDULERS[backend])
    except LaunchError as exc:
        print(f"{prog}: ERROR: {' '.join(str(exc).splitlines())}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # an unwritable log or q/ directory, a full disk
        print(f"{prog}: ERROR: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
