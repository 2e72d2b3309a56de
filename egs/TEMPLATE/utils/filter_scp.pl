#!/usr/bin/env bash
# Keep (--exclude: drop) lines whose field -f N is in the first column of an id list; order kept.
# Thin wrapper: the logic is in speechdistill.bin.datadir (filter-scp); 'filter_scp.pl --help' describes the options.
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/find_python.sh" || exit 1
exec "${speechdistill_python}" -m speechdistill.bin.datadir filter-scp "$@"
