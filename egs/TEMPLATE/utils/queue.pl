#!/usr/bin/env bash
# Submit a command (or an array JOB=a:b) to Sun/Univa Grid Engine with qsub and wait; Kaldi queue.pl contract.
# Thin wrapper: the logic is in speechdistill.bin.launch (queue); 'queue.pl --help' describes the options.
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/find_python.sh" || exit 1
exec "${speechdistill_python}" -m speechdistill.bin.launch queue "$@"
