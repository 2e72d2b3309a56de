#!/usr/bin/env bash
# Check a Kaldi data directory; exit 1 and name file, line, key and fix for every problem.
# Thin wrapper: the logic is in speechdistill.bin.datadir (validate); 'validate_data_dir.sh --help' describes the options.
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/find_python.sh" || exit 1
exec "${speechdistill_python}" -m speechdistill.bin.datadir validate "$@"
