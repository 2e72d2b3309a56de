#!/usr/bin/env bash
# Stage 0: data/<task>_{train,dev,test} for each of --tasks (ks ic pr sid), each a Kaldi data dir with the
# task's targets (utt2label, utt2intent, phones, utt2spk; see speechdistill.probe.tasks). A corpus left empty
# in db.sh is replaced by its embedded mini version, synthesized under --mini_dir: Speech Commands and Fluent
# Speech Commands look-alikes, the mini LibriSpeech (phones from CMUdict), the mini VoxCeleb (its
# iden_split.txt). data/.stage0.done records which corpus each task used (sourceable).
set -euo pipefail

nj=2
tasks="ks ic pr sid"
mini_dir=downloads/mini
mini_size=default
seed=0
stress=remove           # PR phones: remove (39 ARPAbet phones) or keep (s3prl libriphone's stressed set)
oov=spn                 # PR: a word no lexicon knows becomes one SPN phone (spn) or drops its utterance (drop)

. ./path.sh
. utils/parse_options.sh
. ./db.sh

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (${BASH_SOURCE[1]##*/}:${BASH_LINENO[0]}) $*"; }
die() { log "error: $*" >&2; exit 1; }
mini() {  # mini CORPUS...: synthesize these embedded corpora (kept when built with the same settings)
    python -m speechdistill.bin.make_mini_corpora --out-dir "${mini_dir}" --corpora "$@" --size "${mini_size}" \
        --seed "${seed}" --nj "${nj}" --log exp/log/make_mini_corpora.log | sed 's/^/  /'
}
prep() { python -m speechdistill.bin.prep_superb "$@" | sed 's/^/  /'; }
root_of() {  # root_of VARIABLE: the db.sh value, which must be an existing directory
    [ -d "${!1}" ] || die "$1='${!1}' (db.sh) does not exist. Fix: set $1 to the corpus, or empty it for the mini corpus"
    echo "${!1}"
}

kinds=()
for task in ${tasks}; do
    case ${task} in
        ks)
            if [ -z "${SPEECH_COMMANDS}" ]; then
                log "SPEECH_COMMANDS is empty in db.sh: the embedded mini Speech Commands (synthesized, not real)"
                mini speech_commands; corpus=${mini_dir}/speech_commands; kind=mini; test_opts=()
            else
                corpus=$(root_of SPEECH_COMMANDS); kind=real; test_opts=()
                [ -n "${SPEECH_COMMANDS_TEST}" ] && test_opts=(--test-dir "$(root_of SPEECH_COMMANDS_TEST)")
            fi
            for split in train dev test; do
                opts=(); [ "${split}" = test ] && opts=("${test_opts[@]}")
                prep ks --corpus-dir "${corpus}" --split "${split}" --out "data/ks_${split}" --nj "${nj}" "${opts[@]}"
            done ;;
        ic)
            if [ -z "${FLUENT_COMMANDS}" ]; then
                log "FLUENT_COMMANDS is empty in db.sh: the embedded mini Fluent Speech Commands (synthesized)"
                mini fluent_commands; corpus=${mini_dir}/fluent_speech_commands; kind=mini
            else
                corpus=$(root_of FLUENT_COMMANDS); kind=real
            fi
            for split in train dev test; do
                prep ic --corpus-dir "${corpus}" --split "${split}" --out "data/ic_${split}" --nj "${nj}"
            done ;;
        pr)
            if [ -z "${LIBRISPEECH}" ]; then
                log "LIBRISPEECH is empty in db.sh: the embedded mini LibriSpeech (synthesized), phones from CMUdict"
                mini librispeech; corpus=${mini_dir}/LibriSpeech; kind=mini
                parts=(train:train-mini dev:dev-mini test:test-mini)
            else
                corpus=$(root_of LIBRISPEECH); [ -d "${corpus}/LibriSpeech" ] && corpus=${corpus}/LibriSpeech; kind=real
                parts=(train:train-clean-100 dev:dev-clean test:test-clean)
            fi
            for entry in "${parts[@]}"; do
                split=${entry%%:*}
                python -m speechdistill.bin.prep_librispeech --corpus-dir "${corpus}" --parts "${entry#*:}" \
                    --out "data/librispeech_${split}" --nj "${nj}" | sed 's/^/  /'
                # shellcheck disable=SC2086  # LEXICON is a list of files
                prep pr --data "data/librispeech_${split}" --out "data/pr_${split}" --stress "${stress}" --oov "${oov}" \
                    ${LEXICON:+--lexicon ${LEXICON}}
            done ;;
        sid)
            if [ -z "${VOXCELEB1}" ]; then
                log "VOXCELEB1 is empty in db.sh: the embedded mini VoxCeleb (synthesized speakers), its iden_split.txt"
                mini voxceleb; corpus=${mini_dir}/VoxCeleb1; split_list=${corpus}/iden_split.txt; kind=mini
            else
                corpus=$(root_of VOXCELEB1); kind=real; split_list=${VOXCELEB1_IDEN_SPLIT}
                for candidate in "${corpus}/iden_split.txt" "${corpus}/meta/iden_split.txt"; do
                    [ -z "${split_list}" ] && [ -f "${candidate}" ] && split_list=${candidate}
                done
                [ -n "${split_list}" ] || die "no iden_split.txt in ${corpus} or ${corpus}/meta. Fix: set" \
                    "VOXCELEB1_IDEN_SPLIT in db.sh (https://www.robots.ox.ac.uk/~vgg/data/voxceleb/meta/iden_split.txt)"
            fi
            for split in train dev test; do
                prep sid --corpus-dir "${corpus}" --iden-split "${split_list}" --split "${split}" \
                    --out "data/sid_${split}" --nj "${nj}"
            done ;;
        *) die "unknown task '${task}' in --tasks. Fix: use ks ic pr sid" ;;
    esac
    kinds+=("${task}=${kind}")
done
# tasks prepared by earlier runs keep their lines
kept=$(grep '^corpus_' data/.stage0.done 2> /dev/null | grep -v -E "^corpus_($(echo "${tasks}" | tr ' ' '|'))=" || true)
content="# stage 0 of $(basename "$(pwd)"): the corpus of each task (sourceable)
$({ [ -z "${kept}" ] || echo "${kept}"; printf 'corpus_%s\n' "${kinds[@]}"; } | sort)"
if [ "$(cat data/.stage0.done 2> /dev/null)" != "${content}" ]; then
    echo "${content}" > data/.stage0.done.tmp && mv data/.stage0.done.tmp data/.stage0.done
fi
log "stage 0 done: $(for t in ${tasks}; do printf 'data/%s_{train,dev,test} ' "${t}"; done)"
