#!/usr/bin/env bash
# Write utt2num_samples, utt2dur (and reco2dur with segments) measured from a data dir's audio.
# Thin wrapper: the logic is in speechdistill.bin.datadir (get-lengths); 'get_utt2num_samples.sh --help' describes the options.
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/find_python.sh" || exit 1
exec "${speechdistill_python}" -m speechdistill.bin.datadir get-lengths "$@"
