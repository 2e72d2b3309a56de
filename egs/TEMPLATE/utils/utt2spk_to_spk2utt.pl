#!/usr/bin/env bash
# utt2spk -> spk2utt (speakers in order of first appearance).
# Thin wrapper: the logic is in speechdistill.bin.datadir (spk2utt); 'utt2spk_to_spk2utt.pl --help' describes the options.
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/find_python.sh" || exit 1
exec "${speechdistill_python}" -m speechdistill.bin.datadir spk2utt "$@"
