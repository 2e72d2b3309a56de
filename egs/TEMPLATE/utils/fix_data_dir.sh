#!/usr/bin/env bash
# Sort, de-duplicate and keep only utterances present in every file of a data dir (old files in .backup/).
# Thin wrapper: the logic is in speechdistill.bin.datadir (fix); 'fix_data_dir.sh --help' describes the options.
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/find_python.sh" || exit 1
exec "${speechdistill_python}" -m speechdistill.bin.datadir fix "$@"
