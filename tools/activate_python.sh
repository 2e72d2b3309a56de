# Source this file: activates tools/venv. Safe to source several times and from
# non-interactive job scripts on cluster nodes.
_sd_tools_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
if [ ! -f "${_sd_tools_dir}/venv/bin/activate" ]; then
    echo "speechdistill: ${_sd_tools_dir}/venv is missing; run tools/install.sh (or 'make install') first." >&2
    return 1 2>/dev/null || exit 1
fi
# shellcheck disable=SC1091
. "${_sd_tools_dir}/venv/bin/activate"
unset _sd_tools_dir
