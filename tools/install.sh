#!/usr/bin/env bash
# Create tools/venv and install speechdistill into it (editable), torch first.
#
#   tools/install.sh                 # CPU build of torch ${TH_VERSION:-2.13.0}
#   TH_VERSION=2.5.1 tools/install.sh
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124 tools/install.sh   # a CUDA build
#
# Idempotent: when the venv exists, torch is at the wanted version and setup.py has not
# changed since the last successful install, it returns in about a second. System programs
# (ffmpeg) come from tools/install_system.sh (apt-get when run as root;
# SPEECHDISTILL_SKIP_SYSTEM=1 skips it).
#
# s3prl, which the tests load our s3prl export with, goes into tools/s3prl (tools/install_s3prl.sh says why
# not into the venv).
#
# Run as root on Debian/Ubuntu, it also installs the system packages slurm-wlm and munge when they are
# missing (tools/slurm_local.sh install): the tests run slurm.pl against a real local Slurm. Without root
# those tests skip, saying why; SPEECHDISTILL_SKIP_SLURM=1 leaves the packages alone.
set -euo pipefail

tools_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
root=$(dirname "${tools_dir}")
venv=${tools_dir}/venv
th_version=${TH_VERSION:-2.13.0}
python=${PYTHON:-python3}
stamp=${venv}/.speechdistill_install_stamp

if [ "${SPEECHDISTILL_SKIP_SLURM:-}" != 1 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null 2>&1; then
        "${tools_dir}/slurm_local.sh" install
    elif ! command -v sbatch > /dev/null 2>&1; then
        echo "tools/install.sh: slurm-wlm and munge are not installed (needs root: apt-get install slurm-wlm munge);" \
             "the tests on a real Slurm will skip"
    fi
fi

want_stamp() {
    # What the install depends on: torch version and the package metadata.
    echo "torch=${th_version} index=${TORCH_INDEX_URL:-} setup=$(cksum < "${root}/setup.py")"
}

[ "${SPEECHDISTILL_SKIP_SYSTEM:-0}" = 1 ] || "${tools_dir}/install_system.sh"

if [ -f "${stamp}" ] && [ "$(cat "${stamp}")" = "$(want_stamp)" ] && [ -x "${venv}/bin/python" ]; then
    "${tools_dir}/install_s3prl.sh"
    echo "tools/install.sh: ${venv} is up to date (torch ${th_version}); nothing to do."
    exit 0
fi

if [ ! -x "${venv}/bin/python" ]; then
    echo "tools/install.sh: creating ${venv} with $(${python} --version 2>&1)"
    "${python}" -m venv "${venv}"
fi
pip=("${venv}/bin/python" -m pip --disable-pip-version-check)

"${pip[@]}" install -q --upgrade pip setuptools wheel
current_torch=$("${venv}/bin/python" -c 'import torch,sys; sys.stdout.write(torch.__version__.split("+")[0])' 2>/dev/null || true)
if [ "${current_torch}" != "${th_version}" ]; then
    echo "tools/install.sh: installing torch==${th_version} (found: '${current_torch:-none}')"
    if [ -n "${TORCH_INDEX_URL:-}" ]; then
        "${pip[@]}" install "torch==${th_version}" --index-url "${TORCH_INDEX_URL}"
    else
        "${pip[@]}" install "torch==${th_version}"
    fi
fi
echo "tools/install.sh: installing speechdistill[synth,superb,onnx,test] (editable)"
(cd "${root}" && "${pip[@]}" install -q -e ".[synth,superb,onnx,test]")
want_stamp > "${stamp}.tmp" && mv "${stamp}.tmp" "${stamp}"
"${tools_dir}/install_s3prl.sh"
echo "tools/install.sh: done. Activate with: . tools/activate_python.sh"
