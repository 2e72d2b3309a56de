#!/usr/bin/env bash
# Submit a command (or an array JOB=a:b) to Slurm with sbatch and wait; Kaldi slurm.pl contract, plus requeue.
# Thin wrapper: the logic is in speechdistill.bin.launch (slurm); 'slurm.pl --help' describes the options.
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/find_python.sh" || exit 1
exec "${speechdistill_python}" -m speechdistill.bin.launch slurm "$@"
