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
stop_stage=2
tasks="ks ic"                     # any of "pr ks ic sid"
upstream=                         # frozen upstream(s), space-separated: model dirs, Hugging Face dirs, checkpoints
names=                            # row names in RESULTS.md, one per upstream (default: from the path)
published=                        # published SUPERB row per upstream: a model name (HuBERT_Base: _ for spaces), auto or none
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
. utils/recipe.sh  # log, pool; run_job / wait_jobs pass stop signals to the jobs

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

probe_opts=(--probe_args "${probe_args}" --dump_features "${dump_features}" --ngpu "$((ngpu > 0 ? 1 : 0))"
            --threads "${threads}" --redo "${redo}")
jobs_at_once=$([ "${ngpu}" -gt 0 ] && echo "${ngpu}" || echo "${nj}")
if [ "${stage}" -le 1 ] && [ "${stop_stage}" -ge 1 ]; then
    log "stage 1: ${tasks} probes (${conf_dir}/<task>.yaml) on ${upstreams[*]}, each scored on its test set"
    for task in "${task_list[@]}"; do
        [ -f "data/${task}_train/utt2num_samples" ] || die "data/${task}_train is missing. Fix: run stage 0 first"
    done
    for i in "${!upstreams[@]}"; do
        for task in "${task_list[@]}"; do
            pool "${jobs_at_once}" local/probe_task.sh --task "${task}" --probe_config "${conf_dir}/${task}.yaml" \
                --upstream "${upstreams[i]}" --train "data/${task}_train" --dev "data/${task}_dev" \
                --test "data/${task}_test" --exp "${exp_dir}/${task}_${name_list[i]}" "${probe_opts[@]}"
        done
    done
    pool_wait || { log "error: a probe failed; see the logs named above"; exit 1; }
fi

if [ "${stage}" -le 2 ] && [ "${stop_stage}" -ge 2 ]; then
    log "stage 2: ${exp_dir}/RESULTS.md"
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
