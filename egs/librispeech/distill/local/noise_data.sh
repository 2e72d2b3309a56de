#!/usr/bin/env bash
# Stage 1: noise and RIR dirs for augmentation: data/musan_{noise,music,speech} and data/rirs.
#
# MUSAN and RIRS_NOISES come from db.sh; an empty variable selects the embedded mini corpus
# (synthesized noises, music and babble speech; pyroomacoustics RIRs) built under --mini_dir.
# data/.stage1.done records the dirs (sourceable). Prepared dirs are kept on a rerun.
set -euo pipefail

nj=2
mini_dir=downloads/mini
mini_size=default
seed=0

. ./path.sh
. utils/parse_options.sh
. ./db.sh

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (${BASH_SOURCE[1]##*/}:${BASH_LINENO[0]}) $*"; }

# check_corpus <db.sh variable> <what>: an empty variable is fine (mini corpus), a missing path is not
check_corpus() {
    local variable=$1 what=$2
    local value=${!variable:-}
    if [ -n "${value}" ] && [ ! -d "${value}" ]; then
        log "error: ${variable}='${value}' (db.sh) does not exist. Fix: set ${variable} in db.sh to the ${what}" \
            "directory, or leave it empty to use the embedded mini corpus" >&2
        exit 1
    fi
}
check_corpus MUSAN musan
check_corpus RIRS_NOISES RIRS_NOISES

musan=${MUSAN:-${mini_dir}/musan}
rirs=${RIRS_NOISES:-${mini_dir}/RIRS_NOISES}
mini=()
if [ -z "${MUSAN:-}" ]; then
    log "MUSAN is empty in db.sh: using the embedded mini MUSAN (synthesized noise, music and babble speech," \
        "not real data), built under ${mini_dir}"
    mini+=(musan)
fi
if [ -z "${RIRS_NOISES:-}" ]; then
    log "RIRS_NOISES is empty in db.sh: using the embedded mini RIRS_NOISES (simulated room impulse responses)," \
        "built under ${mini_dir}"
    mini+=(rirs)
fi
if [ "${#mini[@]}" -gt 0 ]; then
    python -m speechdistill.bin.make_mini_corpora --out-dir "${mini_dir}" --corpora "${mini[@]}" \
        --size "${mini_size}" --seed "${seed}" --nj "${nj}" --log exp/log/make_mini_corpora.log
fi

python -m speechdistill.bin.prep_musan --corpus-dir "${musan}" --out-root data --nj "${nj}" --log exp/log/prep_musan.log
python -m speechdistill.bin.prep_rirs --corpus-dir "${rirs}" --out data/rirs --nj "${nj}" --log exp/log/prep_rirs.log

marker=data/.stage1.done
content=$(
    echo "# stage 1 of $(basename "$(pwd)"): noise and RIR dirs (sourceable)"
    echo "noise_dirs=\"data/musan_noise data/musan_music data/musan_speech\""
    echo "rir_dir=data/rirs"
)
# rewritten only when it changes, so that a rerun that prepares nothing modifies no file
if [ "$(cat "${marker}" 2> /dev/null)" != "${content}" ]; then
    echo "${content}" > "${marker}.tmp" && mv "${marker}.tmp" "${marker}"
fi
log "stage 1 done: data/musan_noise data/musan_music data/musan_speech data/rirs"
