#!/usr/bin/env bash
# Select utterances of a data dir: evenly spaced N, --first/--last/--shortest/--per-spk/--speakers N, or --utt-list/--spk-list.
# Thin wrapper: the logic is in speechdistill.bin.datadir (subset); 'subset_data_dir.sh --help' describes the options.
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/find_python.sh" || exit 1
exec "${speechdistill_python}" -m speechdistill.bin.datadir subset "$@"
