#!/usr/bin/env bash
# LibriSpeech distillation recipe (RobustDistiller / DistilHuBERT-family students).
#
#   ./run.sh --stage 0 --stop_stage 1        # data, then noise and RIR dirs
#   ./run.sh --stage 2 --stop_stage 3 --teacher /path/to/hubert-base-ls960 --distill_config conf/distilhubert.yaml
#                                            # teacher import, then distillation (README: "Distillation")
#
# Corpora come from db.sh; an empty variable selects the embedded mini corpus (synthesized,
# built under ${mini_dir}). See README.md for the data dirs each stage writes.
set -euo pipefail

stage=0
stop_stage=1
nj=2                              # parallel processes for data preparation
train_sets="train-clean-100"      # real LibriSpeech parts merged into data/train
dev_sets="dev-clean"              # real parts merged into data/dev
test_sets="test-clean test-other" # real parts, each its own data/<part with _>
mini_dir=downloads/mini           # where mini corpora are synthesized when db.sh leaves a corpus empty
mini_size=default                 # default (about 30 min of training speech) or tiny (seconds; tests)
seed=0                            # seed of the mini corpora
# stages 2-3: teacher and distillation
teacher=                          # stage 2: teacher checkpoint: Hugging Face dir, fairseq .pt or s3prl checkpoint
teacher_dir=exp/teacher           # stage 2 writes the imported teacher here (our model dir); stage 3 reads it
distill_config=conf/distilhubert.yaml  # stage 3: method preset, conf/<method>.yaml
distill_exp=                      # stage 3 output dir (default: exp/distill_<config name>)
distill_args=                     # extra distill_train options, e.g. "--max_steps 20 --batch_seconds 2"
ngpu=1                            # GPUs per node; 0 trains on CPU; >1 starts one process per GPU (torchrun)
num_nodes=1                       # >1: one srun task per GPU on every node (needs cmd_backend=slurm)
cpus_per_gpu=4                    # CPUs given to each training process under Slurm
redo=false                        # true: redo stages 2-3 even where their markers say they are done

. ./path.sh
. ./cmd.sh
. utils/parse_options.sh

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (${BASH_SOURCE[1]##*/}:${BASH_LINENO[0]}) $*"; }

if [ "${stage}" -le 0 ] && [ "${stop_stage}" -ge 0 ]; then
    log "stage 0: data -> data/train, data/dev, test sets (marker: data/.stage0.done)"
    local/data.sh --nj "${nj}" --train_sets "${train_sets}" --dev_sets "${dev_sets}" --test_sets "${test_sets}" \
        --mini_dir "${mini_dir}" --mini_size "${mini_size}" --seed "${seed}"
fi

if [ "${stage}" -le 1 ] && [ "${stop_stage}" -ge 1 ]; then
    log "stage 1: noise and RIR dirs -> data/musan_{noise,music,speech}, data/rirs (marker: data/.stage1.done)"
    local/noise_data.sh --nj "${nj}" --mini_dir "${mini_dir}" --mini_size "${mini_size}" --seed "${seed}"
fi

if [ "${stage}" -le 2 ] && [ "${stop_stage}" -ge 2 ]; then
    log "stage 2: teacher -> ${teacher_dir} (marker: ${teacher_dir}/.stage2.done)"
    if [ -z "${teacher}" ]; then
        if [ -f "${teacher_dir}/.stage2.done" ] && [ "${redo}" = false ]; then
            log "no --teacher given; keeping the teacher imported earlier: $(grep '^teacher=' "${teacher_dir}/.stage2.done")"
        else
            log "error: stage 2 needs a teacher: pass --teacher PATH, a Hugging Face model dir (e.g. a clone of" \
                "facebook/hubert-base-ls960 or microsoft/wavlm-base-plus), a fairseq checkpoint (hubert_base_ls960.pt)" \
                "or an s3prl converted checkpoint"
            exit 1
        fi
    else
        teacher_src=$(cd "$(dirname "${teacher}")" && pwd -P)/$(basename "${teacher}")
        if [ "${redo}" = false ] && [ -f "${teacher_dir}/.stage2.done" ] \
            && grep -qxF "teacher=${teacher_src}" "${teacher_dir}/.stage2.done"; then
            log "${teacher_dir} already holds ${teacher_src}; kept"
        else
            # import_teacher checks the checkpoint (format, architecture, every weight's name and shape)
            ${train_cmd} exp/log/import_teacher.log \
                python -m speechdistill.bin.import_teacher --src "${teacher_src}" --out "${teacher_dir}" --force
            grep -E '"(format|architecture|shape|params)"' exp/log/import_teacher.log | sed 's/^ */    /' || true
            echo "teacher=${teacher_src}" > "${teacher_dir}/.stage2.done"
        fi
    fi
fi

if [ "${stage}" -le 3 ] && [ "${stop_stage}" -ge 3 ]; then
    distill_exp=${distill_exp:-exp/distill_$(basename "${distill_config}" .yaml)}
    log "stage 3: distillation with ${distill_config} -> ${distill_exp}/student (marker: ${distill_exp}/.stage3.done)"
    [ -f "${teacher_dir}/.stage2.done" ] || { log "error: no teacher in ${teacher_dir}; run stage 2 first"; exit 1; }
    [ -f data/.stage0.done ] || { log "error: data/.stage0.done is missing; run stage 0 first"; exit 1; }
    train_set=$(. data/.stage0.done && echo "${train_set}")
    valid_set=$(. data/.stage0.done && echo "${valid_set}")
    if [ "${num_nodes}" -gt 1 ] && [[ "${cuda_cmd}" != *slurm.pl* ]]; then
        log "error: --num_nodes ${num_nodes} needs Slurm (cmd_backend=slurm in cmd.sh); ${cuda_cmd%% *} starts jobs on one node"
        exit 1
    fi
    # A method with next_stage (DPHuBERT: distill+prune, then distil the pruned student) is a chain of
    # runs: every run but the last writes ${distill_exp}/step<i>, the last ${distill_exp} itself.
    configs=("${distill_config}")
    while next=$(python -c 'import sys, yaml; print((yaml.safe_load(open(sys.argv[1])) or {}).get("next_stage") or "")' \
                 "${configs[-1]}") && [ -n "${next}" ]; do
        configs+=("$(dirname "${distill_config}")/${next}")
    done
    settings="configs=${configs[*]} $(cat "${configs[@]}" | md5sum | cut -d' ' -f1) args=${distill_args}
teacher=$(grep '^teacher=' "${teacher_dir}/.stage2.done") data=data/${train_set},data/${valid_set}"
    if [ "${redo}" = false ] && [ -f "${distill_exp}/.stage3.done" ] && [ -f "${distill_exp}/student/model.safetensors" ] \
        && [ "$(head -n 2 "${distill_exp}/.stage3.done")" = "${settings}" ]; then
        log "${distill_exp}/student already distilled with these settings; kept (--redo true to train again)"
    else
        [ "${redo}" = true ] && rm -rf "${distill_exp}"
        device=$([ "${ngpu}" -gt 0 ] && echo cuda || echo cpu)
        student_from=()
        for i in "${!configs[@]}"; do
            out=${distill_exp}
            [ $((i + 1)) -lt ${#configs[@]} ] && out=${distill_exp}/step$((i + 1))
            log "  ${configs[i]} -> ${out} (console: ${out}/log/distill_train.log; a rerun resumes from its checkpoints)"
            train=(-m speechdistill.bin.distill_train --config "${configs[i]}" --train-data "data/${train_set}"
                   --valid-data "data/${valid_set}" --teacher "${teacher_dir}" --output-dir "${out}"
                   --device "${device}" "${student_from[@]}")
            # shellcheck disable=SC2086  # distill_args is split into words, as ESPnet's --asr_args
            if [ "${num_nodes}" -gt 1 ]; then
                ${cuda_cmd} --gpu "${ngpu}" --num_threads $((ngpu * cpus_per_gpu)) --num_nodes "${num_nodes}" \
                    "${out}/log/distill_train.log" srun --export=ALL --ntasks-per-node="${ngpu}" \
                    --cpus-per-task="${cpus_per_gpu}" python "${train[@]}" ${distill_args}
            elif [ "${ngpu}" -gt 1 ]; then
                ${cuda_cmd} --gpu "${ngpu}" "${out}/log/distill_train.log" \
                    torchrun --standalone --nproc_per_node "${ngpu}" "${train[@]}" ${distill_args}
            else
                ${cuda_cmd} --gpu "${ngpu}" "${out}/log/distill_train.log" python "${train[@]}" ${distill_args}
            fi
            student_from=(--student_from "${out}/student")
        done
        { echo "${settings}"; echo "student=${distill_exp}/student"; } > "${distill_exp}/.stage3.done"
        log "stage 3 done: ${distill_exp}/student ($(grep -o '"student_params": [0-9]*' "${distill_exp}/distill_summary.json" || true))"
    fi
fi

log "done (stages ${stage}-${stop_stage})"
