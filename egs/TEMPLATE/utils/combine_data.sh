#!/usr/bin/env bash
# Concatenate data dirs into a new one (duplicate utterance ids are an error), then fix it.
# Thin wrapper: the logic is in speechdistill.bin.datadir (combine); 'combine_data.sh --help' describes the options.
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/find_python.sh" || exit 1
exec "${speechdistill_python}" -m speechdistill.bin.datadir combine "$@"
