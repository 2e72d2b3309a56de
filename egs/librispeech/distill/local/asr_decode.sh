#!/usr/bin/env bash
# Stage 5 for one ASR probe: decode every test set of stage 0 under every test condition (corrupted with the
# noise and RIR dirs of stage 1, seeded: the same audio for every probe), then score into <asr_exp>/RESULTS.md.
#
#   local/asr_decode.sh --asr_exp exp/asr_superb_distilhubert --test_conditions "clean snr10 reverb"
set -euo pipefail

asr_exp=
test_conditions=clean   # any of: clean snr20 snr10 snr5 snr0 reverb
condition_seed=0
decode_args=            # extra asr_decode options, e.g. "--beam-size 10" (they name the decode dir)
ngpu=0

. ./path.sh
. ./cmd.sh
. utils/parse_options.sh
. utils/recipe.sh

if [ ! -f "${asr_exp}/asr_model/model.safetensors" ]; then
    log "error: no ASR model in ${asr_exp}/asr_model. Fix: run stage 4 first, with the same --upstream and" \
        "--asr_config (or pass --asr_exp)"
    exit 1
fi
noise_dir=$(marker_get data/.stage1.done noise_dirs)
noise_dir=${noise_dir%% *}  # the first listed: MUSAN noise
rir_dir=$(marker_get data/.stage1.done rir_dir)
if [ -z "${noise_dir}" ] && [[ " ${test_conditions} " == *" snr"* ]]; then
    log "no data/.stage1.done: the snr conditions add white Gaussian noise (run stage 1 for MUSAN noise)"
fi
decode_tag=decode_greedy
if [ -n "${decode_args}" ]; then
    decode_tag=decode_$(echo "${decode_args}" | sed -e 's/--//g' -e 's/[^A-Za-z0-9.]\{1,\}/_/g' -e 's/^_//' -e 's/_$//')
fi
for eval_set in $(stage0 test_sets); do
    for condition in ${test_conditions}; do
        out=${asr_exp}/${decode_tag}/${eval_set}/${condition}
        condition_opts=()
        case "${condition}" in
            snr*) [ -n "${noise_dir}" ] && condition_opts=(--noise-data "${noise_dir}") ;;
            reverb) [ -n "${rir_dir}" ] && condition_opts=(--rir-data "${rir_dir}") ;;
        esac
        # shellcheck disable=SC2086  # decode_args is split into words
        run_job ${decode_cmd} --gpu "$((ngpu > 0))" "${out}/log/asr_decode.log" \
            python -m speechdistill.bin.asr_decode --asr-model "${asr_exp}/asr_model" --data "data/${eval_set}" \
            --output-dir "${out}" --condition "${condition}" --seed "${condition_seed}" \
            --device "$([ "${ngpu}" -gt 0 ] && echo cuda || echo cpu)" "${condition_opts[@]}" ${decode_args}
        log "$(grep '^asr_decode:' "${out}/log/asr_decode.log" | tail -n 1)"
    done
done
python -m speechdistill.bin.asr_score --exp-dir "${asr_exp}"
log "${asr_exp}/RESULTS.md written"
