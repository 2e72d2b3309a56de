#!/usr/bin/env bash
# Stage 4: one embedding per utterance of every evaluation set of stage 0 (speechdistill.bin.sv_extract), once
# per test condition: each condition other than clean corrupts the enrolment and test audio of every trial,
# seeded by (--condition_seed, condition, utterance) alone, with the MUSAN noise, RIRs and MUSAN speech of stage 1.
# The training set (clean) too when stage 5 needs its mean embedding or score-normalisation cohort.
#
#   local/extract.sh --sv_exp exp/sv_oskdft_paper --test_conditions "clean snr5 reverb" --tta_segments 5
#
# Output: <sv_exp>/embeddings/<set>[_<condition>]/xvector.{ark,scp} (each keeps itself when up to date).
set -euo pipefail

sv_exp=
test_conditions=clean   # any of: clean snr<N> reverb babble babble<N>
condition_seed=0
tta_segments=0          # test-time augmentation segments per utterance (OS-KDFT: 5); 0 = off
segment_seconds=3
extract_args=           # extra sv_extract options
with_train=false        # true: also the training set (clean)
ngpu=0
redo=false

. ./path.sh
. ./cmd.sh
. utils/parse_options.sh
. utils/recipe.sh

[ -f "${sv_exp}/sv_model/sv_model.yaml" ] || { log "error: no ${sv_exp}/sv_model; run stage 3 first"; exit 1; }
if [[ " ${test_conditions} " =~ \ (snr|reverb|babble) ]] && [ ! -f data/.stage1.done ]; then
    log "no data/.stage1.done: snr conditions add white Gaussian noise; reverb and babble need stage 1" \
        "(run it for MUSAN and RIRs)"
fi
noise_dirs=$(marker_get data/.stage1.done noise_dirs)  # MUSAN noise first, MUSAN speech last
rir_dir=$(marker_get data/.stage1.done rir_dir)
train_set=$(stage0 train_set)
sets=$(stage0 test_sets)
[ "${with_train}" = true ] && sets="${train_set} ${sets}"
started=$(date +%s)
computed=false
for set in ${sets}; do
    tta=$([ "${set}" = "${train_set}" ] && echo 0 || echo "${tta_segments}")
    conditions=$([ "${set}" = "${train_set}" ] && echo clean || echo "${test_conditions}")  # mean, cohort: clean
    for condition in ${conditions}; do
        name=${set}$([ "${condition}" = clean ] || echo "_${condition}")
        condition_opts=()
        case "${condition}" in
            snr*) [ -n "${noise_dirs}" ] && condition_opts=(--noise-data "${noise_dirs%% *}") ;;
            reverb) [ -n "${rir_dir}" ] && condition_opts=(--rir-data "${rir_dir}") ;;
            babble*) [ -n "${noise_dirs}" ] && condition_opts=(--babble-data "${noise_dirs##* }") ;;
        esac
        [ "${condition}" = clean ] || condition_opts+=(--condition "${condition}" --seed "${condition_seed}")
        [ "${redo}" = true ] && condition_opts+=(--force)
        # shellcheck disable=SC2086  # extract_args is split into words
        run_job ${cuda_cmd} --gpu "$((ngpu > 0))" "${sv_exp}/log/extract_${name}.log" \
            python -m speechdistill.bin.sv_extract --model-dir "${sv_exp}/sv_model" --data "data/${set}" \
            --output-dir "${sv_exp}/embeddings/${name}" --tta-segments "${tta}" --segment-seconds "${segment_seconds}" \
            --device "$([ "${ngpu}" -gt 0 ] && echo cuda || echo cpu)" "${condition_opts[@]}" ${extract_args}
        grep '^sv_extract:' "${sv_exp}/log/extract_${name}.log" | sed 's/^/    /' || true
        grep -q 'is up to date' "${sv_exp}/log/extract_${name}.log" || computed=true
    done
done
[ "${computed}" = false ] || record_time "${sv_exp}/stage_times.txt" 4 "${started}" embeddings
