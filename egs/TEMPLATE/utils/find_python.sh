# Sourced by the utils/ wrappers: sets speechdistill_python to the interpreter that runs
# speechdistill. Order: $SPEECHDISTILL_PYTHON, <repo>/tools/venv, the active virtualenv, python3.
# The checkout's src/ goes first on PYTHONPATH (once), so a wrapper always runs the code of the
# checkout it belongs to, even from a recipe dir whose utils/ is a symlink to egs/TEMPLATE/utils.
_sd_utils_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
_sd_root=$(cd "${_sd_utils_dir}/../../.." && pwd -P)
if [ -n "${SPEECHDISTILL_PYTHON:-}" ]; then
    speechdistill_python=${SPEECHDISTILL_PYTHON}
elif [ -x "${_sd_root}/tools/venv/bin/python" ]; then
    speechdistill_python=${_sd_root}/tools/venv/bin/python
elif [ -n "${VIRTUAL_ENV:-}" ] && [ -x "${VIRTUAL_ENV}/bin/python" ]; then
    speechdistill_python=${VIRTUAL_ENV}/bin/python
elif command -v python3 > /dev/null 2>&1; then
    speechdistill_python=python3
else
    echo "$(basename "$0"): no Python found; run tools/install.sh in ${_sd_root}, or set SPEECHDISTILL_PYTHON" >&2
    return 1 2> /dev/null || exit 1
fi
if [ -d "${_sd_root}/src/speechdistill" ]; then
    case ":${PYTHONPATH:-}:" in
        *":${_sd_root}/src:"*) ;;
        *) export PYTHONPATH="${_sd_root}/src${PYTHONPATH:+:${PYTHONPATH}}" ;;
    esac
fi
unset _sd_utils_dir _sd_root
