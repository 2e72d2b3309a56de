# path.sh: the environment of every stage and every job of a recipe. run.sh sources it, and so
# does each cluster job: the job scripts of queue.pl/slurm.pl run '. ./path.sh' in the recipe
# directory on the compute node. It is idempotent, needs no interactive shell, and works under
# 'set -euo pipefail'. A recipe links it (egs/<corpus>/<recipe>/path.sh -> ../../TEMPLATE/path.sh);
# put recipe-specific settings in local/path.sh, which is sourced last.

# The checkout is found by walking up from the physical directory of this file (pwd -P), so the
# recipe works from egs/<corpus>/<recipe>/, through symlinked directories, and at any depth.
# SPEECHDISTILL_ROOT, if you set it, names the checkout instead.
if [ -n "${SPEECHDISTILL_ROOT:-}" ]; then
    _sd_root=${SPEECHDISTILL_ROOT}
else
    _sd_root=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
    while [ "${_sd_root}" != / ] && [ ! -f "${_sd_root}/tools/activate_python.sh" ]; do
        _sd_root=$(dirname "${_sd_root}")
    done
fi
if [ ! -f "${_sd_root}/tools/activate_python.sh" ]; then
    echo "path.sh: no speechdistill checkout (tools/activate_python.sh) above $(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P); run the recipe inside the checkout or set SPEECHDISTILL_ROOT" >&2
    unset _sd_root
    return 1 2> /dev/null || exit 1
fi
# shellcheck disable=SC1091
. "${_sd_root}/tools/activate_python.sh" || { unset _sd_root; return 1 2> /dev/null || exit 1; }
unset _sd_root

export LC_ALL=C                # every sort and comparison in byte order (data dirs depend on it)
export PYTHONIOENCODING=UTF-8  # LC_ALL=C would otherwise make Python's stdio ASCII
export OMP_NUM_THREADS=1       # one thread per job; launchers run many jobs side by side
# Multi-node NCCL on machines with docker/virtual interfaces may need:
# export NCCL_SOCKET_IFNAME="^lo,docker,virbr,vmnet,vboxnet"

if [ -f local/path.sh ]; then
    # shellcheck disable=SC1091
    . local/path.sh
fi
