#!/usr/bin/env bash
# SUPERB-style probes of any frozen upstream: phoneme recognition (PR), keyword spotting (KS), intent
# classification (IC) and speaker identification (SID), each with the SUPERB downstream's head and
# hyperparameters (conf/<task>.yaml), and one RESULTS.md row per upstream beside the published rows.
#
#   ./run.sh --upstream "/models/hubert-base-ls960 ../../librispeech/distill/exp/distill_distilhubert/student"
#   ./run.sh --stage 1 --tasks "pr sid" --upstream DIR --ngpu 1
#   local/demo.sh                    # make demo-superb: teacher, student and random student on the mini corpora
#
# Corpora come from db.sh; an empty variable selects the embedded mini corpus (synthesized under ${mini_dir}).
set -euo pipefail

stage=0
stop_stage=3
tasks="ks ic"                     # any of "pr ks ic sid"
upstream=                         # frozen upstream(s), space-separated: model dirs, Hugging Face dirs, checkpoints
names=                            # row names in RESULTS.md, one per upstream (default: from the path)
published=                        # published SUPERB row per upstream: a model name, auto (from the path) or none
conf_dir=conf                     # where <task>.yaml presets are (conf/demo: the mini corpora on a CPU)
probe_args=                       # extra probe_train options for every task, e.g. "--max_steps 2000"
dump_features=false               # true: dump each upstream's hidden states of train/dev once and train on them
exp_dir=exp                       # probes go to <exp_dir>/<task>_<upstream name>, RESULTS.md to <exp_dir>
nj=2                              # data preparation processes; also probes trained at once on a CPU
ngpu=auto                         # auto: the visible CUDA GPUs (0 on a CPU machine); >0: one probe per GPU
threads=1                         # CPU threads of each probe job
mini_dir=downloads/mini
mini_size=default                 # default or tiny (tests)
stress=remove                     # PR phones without (remove) or with (keep) stress digits
oov=spn                           # PR: unknown words -> SPN (spn) or drop the utterance (drop)
redo=false                        # true: retrain probes even where their markers say they are done

. ./path.sh
. ./cmd.sh
. utils/parse_options.sh
. utils/stop_signals.sh  # run_job, wait_jobs: SIGTERM/SIGINT reach the jobs

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (${BASH_SOURCE[1]##*/}:${BASH_LINENO[0]}) $*"; }
die() { log "error: $*"; exit 1; }
[ "${ngpu}" = auto ] && ngpu=$(python -c 'import torch; print(torch.cuda.device_count())' 2> /dev/null || echo 0)
device=$([ "${ngpu}" -gt 0 ] && echo cuda || echo cpu)
read -r -a task_list <<< "${tasks}"
read -r -a upstreams <<< "${upstream}"
read -r -a name_list <<< "${names}"
for task in "${task_list[@]}"; do
    case ${task} in pr | ks | ic | sid) [ -f "${conf_dir}/${task}.yaml" ] || die "${conf_dir}/${task}.yaml not found" ;;
        *) die "unknown task '${task}' in --tasks. Fix: choose among pr ks ic sid" ;; esac
done
if [ "${stop_stage}" -ge 1 ] && [ "${#upstreams[@]}" = 0 ]; then
    die "no --upstream given. Fix: --upstream \"DIR ...\" (model dirs, Hugging Face dirs or checkpoints)"
fi
# upstream_name DIR: the name of its experiment dirs (a distilled student is named by its distillation exp)
upstream_name() {
    local base; base=$(basename "$1")
    case "${base}" in
        student) base=$(basename "$(dirname "$1")") ;;
        random_student) base=$(basename "$(dirname "$1")")_random ;;
    esac
    echo "${base//[^A-Za-z0-9._-]/_}"
}
for i in "${!upstreams[@]}"; do
    [ -e "${upstreams[i]}" ] || die "upstream ${upstreams[i]} not found. Fix: pass an existing model dir or checkpoint"
    [ -n "${name_list[i]:-}" ] || name_list[i]=$(upstream_name "${upstreams[i]}")
done

if [ "${stage}" -le 0 ] && [ "${stop_stage}" -ge 0 ]; then
    log "stage 0: data -> data/<task>_{train,dev,test} for ${tasks} (marker: data/.stage0.done)"
    local/data.sh --nj "${nj}" --tasks "${tasks}" --mini_dir "${mini_dir}" --mini_size "${mini_size}" \
        --stress "${stress}" --oov "${oov}"
fi

# probe UPSTREAM NAME TASK: features (optionally dumped), then the probe; skipped when up to date
probe() {
    local up=$1 name=$2 task=$3 exp=${exp_dir}/$3_$2 config=${conf_dir}/$3.yaml settings feature_opts=()
    settings="config=${config} $(md5sum < "${config}" | cut -d' ' -f1) args=${probe_args} dump=${dump_features}
upstream=${up} $(find -L "${up}" -type f ! -name '.*' -print0 | LC_ALL=C sort -z | xargs -0 cat | md5sum | cut -d' ' -f1)
data=$(cat "data/${task}_train/utt2num_samples" "data/${task}_dev/utt2num_samples" | md5sum | cut -d' ' -f1)"
    if [ "${redo}" = false ] && [ -f "${exp}/.done" ] && [ "$(cat "${exp}/.done")" = "${settings}" ]; then
        log "  ${exp}/probe_model already trained with these settings; kept"; return 0
    fi
    [ "${redo}" = true ] && rm -rf "${exp}"
    if [ "${dump_features}" = true ]; then
        for split in train dev; do
            run_job ${train_cmd} --gpu "$((ngpu > 0 ? 1 : 0))" "${exp}/log/dump_features.${split}.log" \
                python -m speechdistill.bin.dump_features --upstream "${up}" --data "data/${task}_${split}" \
                --out "${exp}/dump/${split}" --device "${device}"
        done
        feature_opts=(--train_features "${exp}/dump/train" --valid_features "${exp}/dump/dev")
    fi
    log "  ${task} probe on ${up} -> ${exp} (log: ${exp}/log/probe_train.log; a rerun resumes)"
    # shellcheck disable=SC2086  # probe_args is split into words
    run_job utils/launch_training.sh --cmd "${cuda_cmd}" --ngpu "$((ngpu > 0 ? 1 : 0))" "${exp}/log/probe_train.log" \
        python -m speechdistill.bin.probe_train --config "${config}" --train-data "data/${task}_train" \
        --valid-data "data/${task}_dev" --upstream "${up}" --output-dir "${exp}" --device "${device}" \
        --threads "${threads}" "${feature_opts[@]}" ${probe_args}
    echo "${settings}" > "${exp}/.done"
    log "  ${exp}: $(grep -o 'validation at update.*' "${exp}/train.log" | tail -n 1)"
}

# evaluate NAME TASK: the probe on data/<task>_test -> score.json
evaluate() {
    local exp=${exp_dir}/$2_$1
    [ -f "${exp}/probe_model/model.safetensors" ] || die "no probe in ${exp}/probe_model. Fix: run stage 1 first"
    run_job ${decode_cmd} --gpu "$((ngpu > 0 ? 1 : 0))" "${exp}/eval/test/log/probe_eval.log" \
        python -m speechdistill.bin.probe_eval --probe-model "${exp}/probe_model" --data "data/$2_test" \
        --output-dir "${exp}/eval/test" --device "${device}" --num-workers 0
    log "  $(grep '^probe_eval:' "${exp}/eval/test/log/probe_eval.log" | tail -n 1)"
}

# in_parallel FUNCTION: FUNCTION UPSTREAM NAME TASK (or NAME TASK) for every upstream and task, nj at a time
in_parallel() {
    local fn=$1 pids=() failed=0 jobs_at_once=$([ "${ngpu}" -gt 0 ] && echo "${ngpu}" || echo "${nj}")
    for i in "${!upstreams[@]}"; do
        for task in "${task_list[@]}"; do
            while [ "$(jobs -pr | wc -l)" -ge "${jobs_at_once}" ]; do sleep 1; done
            if [ "${fn}" = probe ]; then probe "${upstreams[i]}" "${name_list[i]}" "${task}" &
            else evaluate "${name_list[i]}" "${task}" & fi
            pids+=($!)
        done
    done
    wait_jobs "${pids[@]}" || failed=$?
    [ "${failed}" = 0 ] || die "a ${fn} job failed; see the logs named above"
}

if [ "${stage}" -le 1 ] && [ "${stop_stage}" -ge 1 ]; then
    log "stage 1: ${tasks} probes (${conf_dir}/<task>.yaml) on ${upstreams[*]}"
    for task in "${task_list[@]}"; do
        [ -f "data/${task}_train/utt2num_samples" ] || die "data/${task}_train is missing. Fix: run stage 0 first"
    done
    in_parallel probe
fi

if [ "${stage}" -le 2 ] && [ "${stop_stage}" -ge 2 ]; then
    log "stage 2: every probe on its test set -> <probe exp>/eval/test/score.json"
    in_parallel evaluate
fi

if [ "${stage}" -le 3 ] && [ "${stop_stage}" -ge 3 ]; then
    log "stage 3: ${exp_dir}/RESULTS.md"
    read -r -a published_list <<< "${published}"
    corpora=$( [ -f data/.stage0.done ] && grep '^corpus_' data/.stage0.done | tr '\n' ' ')
    python -m speechdistill.bin.probe_results --exp-dir "${exp_dir}" --out "${exp_dir}/RESULTS.md" \
        --upstreams "${upstreams[@]}" --names "${name_list[@]}" --published "${published_list[@]}" \
        --note "presets: ${conf_dir}/{$(echo "${tasks}" | tr ' ' ',')}.yaml${probe_args:+, with ${probe_args}};" \
        --note "data: ${corpora:-see data/.stage0.done}; PR phones: stress ${stress}, unknown words ${oov}" \
        > /dev/null
    cat "${exp_dir}/RESULTS.md"
fi
log "done (stages ${stage}-${stop_stage})"
