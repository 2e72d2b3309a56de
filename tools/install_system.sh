#!/usr/bin/env bash
# System programs the recipes and tests run: ffmpeg (VoxCeleb2's m4a -> FLAC at data preparation).
#
#   tools/install_system.sh          # install what is missing (apt-get; needs root), else say what to do
#
# Idempotent: returns at once when every program is on PATH. Without root or apt-get it installs
# nothing and prints the command to run; the rest of the toolkit works without these programs.
set -euo pipefail

# program -> Debian package
declare -A packages=([ffmpeg]=ffmpeg [ffprobe]=ffmpeg)

missing=()
for program in "${!packages[@]}"; do
    command -v "${program}" > /dev/null 2>&1 || missing+=("${packages[${program}]}")
done
[ "${#missing[@]}" -eq 0 ] && exit 0
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get > /dev/null 2>&1; then
    echo "tools/install_system.sh: missing Debian package(s): ${missing[*]} (VoxCeleb2 m4a conversion needs" \
        "ffmpeg). Install with: sudo apt-get install -y ${missing[*]}" >&2
    exit 0
fi
echo "tools/install_system.sh: installing Debian package(s): ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -q --no-install-recommends "${missing[@]}" > /tmp/install_system.$$.log 2>&1; then
    # a clean image has no package lists yet
    apt-get update -q > /dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" > /tmp/install_system.$$.log 2>&1 || {
        tail -n 20 /tmp/install_system.$$.log >&2
        echo "tools/install_system.sh: apt-get install ${missing[*]} failed (log above)" >&2
        rm -f /tmp/install_system.$$.log
        exit 1
    }
fi
rm -f /tmp/install_system.$$.log
echo "tools/install_system.sh: installed ${missing[*]}"
