#!/usr/bin/env bash
# Split a data dir into <dir>/split<N>/<1..N> for parallel jobs (whole speakers per part, or --per-utt).
# Thin wrapper: the logic is in speechdistill.bin.datadir (split); 'split_data.sh --help' describes the options.
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/find_python.sh" || exit 1
exec "${speechdistill_python}" -m speechdistill.bin.datadir split "$@"
