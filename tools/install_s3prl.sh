#!/usr/bin/env bash
# s3prl, for the test that loads our s3prl export with s3prl's own distiller upstream (tests/test_export_s3prl.py).
#
#   tools/install_s3prl.sh           # into tools/s3prl (S3PRL_VERSION, default 0.4.18)
#
# s3prl requires torchaudio, and no torchaudio release is built for the torch this toolkit installs
# (each torchaudio release pins one torch version; pip would replace our torch by another one, a CUDA
# build on PyPI). Its distiller upstream imports neither torchaudio nor anything beyond torch, numpy,
# pyyaml, tqdm, requests and filelock, so s3prl goes without its dependencies into a directory of its
# own, tools/s3prl, with requests and filelock beside it, and runs on tools/venv's torch with
# PYTHONPATH=tools/s3prl. Nothing is installed into tools/venv. Idempotent: returns at once when the
# wanted version is there.
set -euo pipefail

tools_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
target=${tools_dir}/s3prl
version=${S3PRL_VERSION:-0.4.18}
python=${tools_dir}/venv/bin/python
stamp=${target}/.speechdistill_install_stamp

if [ -f "${stamp}" ] && [ "$(cat "${stamp}")" = "s3prl==${version}" ]; then
    exit 0
fi
[ -x "${python}" ] || { echo "tools/install_s3prl.sh: ${python} is missing; run tools/install.sh first" >&2; exit 1; }
echo "tools/install_s3prl.sh: installing s3prl==${version} (without its dependencies) into ${target}"
staging=$(mktemp -d "${tools_dir}/.s3prl.XXXXXX")
trap 'rm -rf "${staging}"' EXIT
pip=("${python}" -m pip --disable-pip-version-check install -q --target "${staging}")
"${pip[@]}" requests filelock
"${pip[@]}" --upgrade --no-deps "s3prl==${version}"  # (--upgrade: replace the bin/ of the first)
echo "s3prl==${version}" > "${staging}/.speechdistill_install_stamp"
rm -rf "${target}"
mv "${staging}" "${target}"
trap - EXIT
