#!/usr/bin/env bash
# One SUPERB-style probe of one upstream: train it on --train (validated on --dev), then score it on --test.
# Used by this recipe's run.sh and by the LibriSpeech (PR) and VoxCeleb (SID) recipes; runs in the calling
# recipe's directory (its path.sh, cmd.sh and utils/). Skips training when <exp>/.done holds the same
# settings (preset, arguments, upstream files, data and targets); a rerun after other settings resumes the run
# (e.g. a raised max_steps), but after another upstream or other data (<exp>/.inputs) trains afresh. The score
# is recomputed only when missing or stale.
#
#   ../../superb/probe/local/probe_task.sh --task pr --probe_config conf/pr.yaml --upstream exp/x/student \
#       --train data/pr_train --dev data/pr_dev --test data/pr_test --exp exp/pr_student
set -euo pipefail

task=
probe_config=
upstream=
train=
dev=
test=
exp=
probe_args=          # extra probe_train options
dump_features=false  # true: dump the upstream's hidden states of train and dev once, train on them
ngpu=0
threads=1
redo=false

. ./path.sh
. ./cmd.sh
. utils/parse_options.sh
. utils/recipe.sh

for variable in task probe_config upstream train dev test exp; do
    [ -n "${!variable}" ] || { log "error: --${variable} is required"; exit 1; }
done
[ -f "${probe_config}" ] || { log "error: --probe_config ${probe_config} not found"; exit 1; }
[ -e "${upstream}" ] || { log "error: upstream ${upstream} not found. Fix: pass an existing model dir or checkpoint"
    exit 1; }
case ${task} in  # the file of each data dir the task's targets come from (speechdistill.probe.tasks)
    pr) targets=phones ;; ks) targets=utt2label ;; ic) targets=utt2intent ;; sid) targets=utt2spk ;;
    *) log "error: unknown --task '${task}'. Fix: one of pr ks ic sid"; exit 1 ;;
esac
for data in "${train}" "${dev}" "${test}"; do
    [ -f "${data}/utt2num_samples" ] && [ -f "${data}/${targets}" ] || { log "error: ${data} is not a prepared" \
        "data dir with the ${task} targets (${targets}). Fix: run stage 0 first"; exit 1; }
done
device=$([ "${ngpu}" -gt 0 ] && echo cuda || echo cpu)
gpu=$([ "${ngpu}" -gt 0 ] && echo 1 || echo 0)
# what the probe learns from: a run started on other inputs is not resumed
inputs="task=${task}
upstream=${upstream} $(find -L "${upstream}" -type f ! -name '.*' -print0 | LC_ALL=C sort -z | xargs -0 cat | md5sum | cut -d' ' -f1)
data=$(cat "${train}/utt2num_samples" "${train}/${targets}" "${dev}/utt2num_samples" "${dev}/${targets}" | md5sum | cut -d' ' -f1)"
settings="config=${probe_config} $(md5sum < "${probe_config}" | cut -d' ' -f1) args=${probe_args} dump=${dump_features}
${inputs}"
if up_to_date "${exp}/.done" "${settings}" "${exp}/probe_model/model.safetensors"; then
    log "${exp}/probe_model already trained with these settings; kept"
else
    if [ "${redo}" = true ]; then
        rm -rf "${exp}"
    elif [ -f "${exp}/.inputs" ] && [ "$(cat "${exp}/.inputs")" != "${inputs}" ]; then
        log "${exp} was trained on another upstream or other data (${exp}/.inputs); training it afresh"
        rm -rf "${exp}"
    fi
    mkdir -p "${exp}"
    echo "${inputs}" > "${exp}/.inputs"
    feature_opts=()
    [ "${dump_features}" != true ] || dump_upstream_features "${exp}" "${upstream}" "${device}" "${gpu}" \
        "train:${train}" "dev:${dev}"
    log "${task} probe on ${upstream} -> ${exp} (log: ${exp}/log/probe_train.log; a rerun resumes)"
    # shellcheck disable=SC2086  # probe_args is split into words
    run_job utils/launch_training.sh --cmd "${cuda_cmd}" --ngpu "${gpu}" "${exp}/log/probe_train.log" \
        python -m speechdistill.bin.probe_train --config "${probe_config}" --task "${task}" --train-data "${train}" \
        --valid-data "${dev}" --upstream "${upstream}" --output-dir "${exp}" --device "${device}" \
        --threads "${threads}" "${feature_opts[@]}" ${probe_args}
    echo "${settings}" > "${exp}/.done"
    log "${exp}: $(grep -o 'validation at update.*' "${exp}/train.log" | tail -n 1)"
    rm -f "${exp}/eval/test/score.json"
fi
if [ ! -f "${exp}/eval/test/score.json" ] || [ "${exp}/probe_model/model.safetensors" -nt "${exp}/eval/test/score.json" ] \
    || [ "${test}/utt2num_samples" -nt "${exp}/eval/test/score.json" ] \
    || [ "${test}/${targets}" -nt "${exp}/eval/test/score.json" ]; then
    run_job ${decode_cmd} --gpu "${gpu}" "${exp}/eval/test/log/probe_eval.log" \
        python -m speechdistill.bin.probe_eval --probe-model "${exp}/probe_model" --data "${test}" \
        --output-dir "${exp}/eval/test" --device "${device}" --num-workers 0
fi
log "$(grep '^probe_eval:' "${exp}/eval/test/log/probe_eval.log" | tail -n 1)"
