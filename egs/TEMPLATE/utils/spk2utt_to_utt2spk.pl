#!/usr/bin/env bash
# spk2utt -> utt2spk (in spk2utt order).
# Thin wrapper: the logic is in speechdistill.bin.datadir (utt2spk); 'spk2utt_to_utt2spk.pl --help' describes the options.
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/find_python.sh" || exit 1
exec "${speechdistill_python}" -m speechdistill.bin.datadir utt2spk "$@"
