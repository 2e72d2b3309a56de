#!/usr/bin/env bash
# Copy a data dir with utterance/speaker id prefixes or suffixes, then validate the copy.
# Thin wrapper: the logic is in speechdistill.bin.datadir (copy); 'copy_data_dir.sh --help' describes the options.
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/find_python.sh" || exit 1
exec "${speechdistill_python}" -m speechdistill.bin.datadir copy "$@"
