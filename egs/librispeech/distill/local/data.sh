#!/usr/bin/env bash
# Stage 0: LibriSpeech -> data/train, data/dev and the test sets, each a Kaldi data dir.
#
# With LIBRISPEECH set in db.sh: data/train = --train_sets, data/dev = --dev_sets, and one
# data/<part> per --test_sets part (dashes become underscores: test-clean -> data/test_clean).
# With LIBRISPEECH empty: the embedded mini LibriSpeech is synthesized under --mini_dir and
# prepared as data/train, data/dev, data/test. Either way data/.stage0.done records the set
# names (shell assignments later stages may source). Prepared dirs are kept on a rerun.
set -euo pipefail

nj=2
train_sets="train-clean-100"
dev_sets="dev-clean"
test_sets="test-clean test-other"
mini_dir=downloads/mini
mini_size=default
seed=0

. ./path.sh
. utils/parse_options.sh
. ./db.sh

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (${BASH_SOURCE[1]##*/}:${BASH_LINENO[0]}) $*"; }

if [ -z "${LIBRISPEECH:-}" ]; then
    log "LIBRISPEECH is empty in db.sh: using the embedded mini LibriSpeech (synthesized speech, not real data)," \
        "built under ${mini_dir}"
    python -m speechdistill.bin.make_mini_corpora --out-dir "${mini_dir}" --corpora librispeech \
        --size "${mini_size}" --seed "${seed}" --nj "${nj}" --log exp/log/make_mini_corpora.log
    corpus=${mini_dir}/LibriSpeech
    kind=mini
    sets=("train:train-mini" "dev:dev-mini" "test:test-mini")
else
    if [ ! -d "${LIBRISPEECH}" ]; then
        log "error: LIBRISPEECH='${LIBRISPEECH}' (db.sh) does not exist. Fix: set LIBRISPEECH in db.sh to the" \
            "directory holding LibriSpeech/, or leave it empty to use the embedded mini corpus" >&2
        exit 1
    fi
    corpus=${LIBRISPEECH}/LibriSpeech
    [ -d "${corpus}" ] || corpus=${LIBRISPEECH}
    kind=real
    sets=("train:${train_sets}" "dev:${dev_sets}")
    for part in ${test_sets}; do
        sets+=("${part//-/_}:${part}")
    done
fi

names=()
for entry in "${sets[@]}"; do
    name=${entry%%:*}
    parts=${entry#*:}
    # shellcheck disable=SC2086  # parts is a space-separated list of LibriSpeech parts
    python -m speechdistill.bin.prep_librispeech --corpus-dir "${corpus}" --parts ${parts} \
        --out "data/${name}" --nj "${nj}" --log "exp/log/prep_librispeech.${name}.log"
    names+=("${name}")
done

marker=data/.stage0.done
content=$(
    echo "# stage 0 of $(basename "$(pwd)"): which data dirs exist (sourceable)"
    echo "corpus=${kind}"
    echo "train_set=train"
    echo "valid_set=dev"
    echo "test_sets=\"${names[*]:2}\""
)
# rewritten only when it changes, so that a rerun that prepares nothing modifies no file
if [ "$(cat "${marker}" 2> /dev/null)" != "${content}" ]; then
    echo "${content}" > "${marker}.tmp" && mv "${marker}.tmp" "${marker}"
fi
log "stage 0 done: ${names[*]/#/data/}"
