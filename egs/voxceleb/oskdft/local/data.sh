#!/usr/bin/env bash
# Stage 0: VoxCeleb -> data/train and evaluation data dirs with trials.
#
# With VOXCELEB1/VOXCELEB2 set in db.sh: data/train holds --train_sets (vox2_dev, vox2_test,
# vox1_dev; several are prepared as data/<set> and combined), and each of --eval_sets
# (vox1_O, vox1_E, vox1_H) becomes data/<set>: the VoxCeleb1 utterances its cleaned trial list
# names, with trials ('enroll test target|nontarget'). With both empty: the embedded mini
# VoxCeleb is synthesized under --mini_dir and prepared as data/train and data/test (with
# trials); with --mini_m4a true the training speakers come as VoxCeleb2-style m4a files, which the
# prep converts to FLAC under dump/flac/train as it does for the real VoxCeleb2. Utterance ids are '<spk>/<video>/<NNNNN>.wav' (WeSpeaker's, as in the official lists).
# data/.stage0.done records the set names (sourceable). Prepared dirs are kept on a rerun.
set -euo pipefail

nj=2
train_sets="vox2_dev"
eval_sets="vox1_O vox1_E vox1_H"
mini_dir=downloads/mini
mini_size=default
mini_m4a=false
seed=0

. ./path.sh
. utils/parse_options.sh
. ./db.sh

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (${BASH_SOURCE[1]##*/}:${BASH_LINENO[0]}) $*"; }
die() { log "error: $*" >&2; exit 1; }

# corpus_root <db.sh variable>: its value, which must be an existing directory
corpus_root() {
    local variable=$1
    local value=${!variable:-}
    [ -n "${value}" ] || die "${variable} is empty in db.sh but the sets asked for need it. Fix: set ${variable}" \
        "in db.sh (or empty both VOXCELEB1 and VOXCELEB2 to use the embedded mini corpus)"
    [ -d "${value}" ] || die "${variable}='${value}' (db.sh) does not exist. Fix: set ${variable} in db.sh to the" \
        "VoxCeleb root, or empty both VOXCELEB1 and VOXCELEB2 to use the embedded mini corpus"
    echo "${value}"
}

prep() {  # prep <out> <log name> <prep_voxceleb arguments...>
    local out=$1 name=$2
    shift 2
    python -m speechdistill.bin.prep_voxceleb "$@" --out "${out}" --nj "${nj}" --log "exp/log/prep_voxceleb.${name}.log"
}

if [ -z "${VOXCELEB1:-}" ] && [ -z "${VOXCELEB2:-}" ]; then
    log "VOXCELEB1 and VOXCELEB2 are empty in db.sh: using the embedded mini VoxCeleb (synthesized speakers," \
        "not real data), built under ${mini_dir}"
    corpora=voxceleb
    [ "${mini_m4a}" = true ] && corpora="voxceleb voxceleb2"
    # shellcheck disable=SC2086  # corpora is a list of words
    python -m speechdistill.bin.make_mini_corpora --out-dir "${mini_dir}" --corpora ${corpora} \
        --size "${mini_size}" --seed "${seed}" --nj "${nj}" --log exp/log/make_mini_corpora.log
    corpus=${mini_dir}/VoxCeleb1
    kind=mini
    if [ "${mini_m4a}" = true ]; then
        prep data/train train --corpus-dir "${mini_dir}/VoxCeleb2" --subsets dev
    else
        prep data/train train --corpus-dir "${corpus}" --subsets dev
    fi
    prep data/test test --corpus-dir "${corpus}" --subsets test --trials "${corpus}/veri_test2.txt"
    test_sets="test"
else
    kind=real
    train_dirs=()
    for set in ${train_sets}; do
        case ${set} in
            vox2_dev|vox2_test) root=$(corpus_root VOXCELEB2) ;;
            vox1_dev) root=$(corpus_root VOXCELEB1) ;;
            *) die "unknown training set '${set}' in --train_sets. Fix: use vox2_dev, vox2_test, vox1_dev" ;;
        esac
        if [ "$(echo ${train_sets} | wc -w)" -eq 1 ]; then
            out=data/train
        else
            out=data/${set}
        fi
        prep "${out}" "${set}" --corpus-dir "${root}" --subsets "${set#*_}"
        train_dirs+=("${out}")
    done
    if [ "${#train_dirs[@]}" -gt 1 ]; then
        utils/combine_data.sh data/train "${train_dirs[@]}"
    fi
    for set in ${eval_sets}; do
        case ${set} in
            vox1_O) list=veri_test2.txt ;;
            vox1_E) list=list_test_all2.txt ;;
            vox1_H) list=list_test_hard2.txt ;;
            *) die "unknown evaluation set '${set}' in --eval_sets. Fix: use vox1_O, vox1_E, vox1_H" ;;
        esac
        if [[ " ${train_sets} " == *" vox1_dev "* ]] && [ "${set}" != vox1_O ]; then
            log "warning: ${set} uses speakers of vox1_dev, which is in the training sets"
        fi
        root=$(corpus_root VOXCELEB1)
        trials=""
        for candidate in "${root}/${list}" "${root}/meta/${list}"; do
            [ -f "${candidate}" ] && trials=${candidate} && break
        done
        [ -n "${trials}" ] || die "trial list ${list} (${set}) is neither in ${root} nor in ${root}/meta. Fix:" \
            "download it from https://www.robots.ox.ac.uk/~vgg/data/voxceleb/meta/ or drop ${set} from --eval_sets"
        prep "data/${set}" "${set}" --corpus-dir "${root}" --subsets dev test --trials "${trials}" \
            --trial-utts-only true
    done
    test_sets=${eval_sets}
fi

marker=data/.stage0.done
content=$(
    echo "# stage 0 of $(basename "$(pwd)"): which data dirs exist (sourceable)"
    echo "corpus=${kind}"
    echo "train_set=train"
    echo "test_sets=\"${test_sets}\""
)
# rewritten only when it changes, so that a rerun that prepares nothing modifies no file
if [ "$(cat "${marker}" 2> /dev/null)" != "${content}" ]; then
    echo "${content}" > "${marker}.tmp" && mv "${marker}.tmp" "${marker}"
fi
log "stage 0 done: data/train $(for s in ${test_sets}; do printf 'data/%s ' "${s}"; done)"
