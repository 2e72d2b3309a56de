#!/usr/bin/env bash
# Run a command (or an array JOB=a:b of commands) on this machine, one log per job; Kaldi run.pl contract.
# Thin wrapper: the logic is in speechdistill.bin.launch (run); 'run.pl --help' describes the options.
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/find_python.sh" || exit 1
exec "${speechdistill_python}" -m speechdistill.bin.launch run "$@"
