#!/usr/bin/env bash
# Stage 3: distil the teacher of stage 2 into a student with a method preset. A preset that names a
# next_stage (DPHuBERT: distil and prune, then distil the pruned student) is a chain of runs: each but the
# last writes <distill_exp>/step<i>, the last <distill_exp> itself, each from the student of the one before.
#
#   local/distill.sh --distill_config conf/distilhubert.yaml --teacher_dir exp/teacher --distill_exp exp/distill_x
#
# Marker: <distill_exp>/.stage3.done (configs and their md5, extra options, teacher, data; the student's path).
# A rerun with other settings trains again (a killed run resumes from its checkpoints).
set -euo pipefail

distill_config=conf/distilhubert.yaml
teacher_dir=exp/teacher
distill_exp=
distill_args=           # extra distill_train options
ngpu=0                  # 0: CPU; 1: one GPU; >1: one process per GPU (torchrun, or srun with --num_nodes > 1)
num_nodes=1
threads=0
cpus_per_gpu=4
mem_per_gpu=32
random_student=false    # true: also write <distill_exp>/random_student (the student at its random initialisation)
seed=0                  # seed of the random student
redo=false
progress=false

. ./path.sh
. ./cmd.sh
. utils/parse_options.sh
. utils/recipe.sh

distill_exp=${distill_exp:-exp/distill_$(basename "${distill_config}" .yaml)}
[ -f "${teacher_dir}/.stage2.done" ] || { log "error: no teacher in ${teacher_dir}; run stage 2 first"; exit 1; }
if [ "${num_nodes}" -gt 1 ] && [[ "${cuda_cmd}" != *slurm.pl* ]]; then
    log "error: --num_nodes ${num_nodes} needs Slurm (cmd_backend=slurm in cmd.sh); ${cuda_cmd%% *} starts jobs on one node"
    exit 1
fi
train_set=$(stage0 train_set)
valid_set=$(stage0 valid_set)
chain=$(python -m speechdistill.bin.distill_chain "${distill_config}")  # the preset, then its next_stage configs
mapfile -t configs <<< "${chain}"
settings="configs=${configs[*]} $(cat "${configs[@]}" | md5sum | cut -d' ' -f1) args=${distill_args}
$(paste -sd' ' "${teacher_dir}/.stage2.done") data=data/${train_set},data/${valid_set}
student=${distill_exp}/student"
if up_to_date "${distill_exp}/.stage3.done" "${settings}" "${distill_exp}/student/model.safetensors"; then
    log "${distill_exp}/student already distilled with these settings; kept (--redo true to train again)"
else
    [ "${redo}" = true ] && rm -rf "${distill_exp}"
    thread_opts=()
    [ "${threads}" -gt 0 ] && thread_opts=(--threads "${threads}")
    student_from=()
    for i in "${!configs[@]}"; do
        out=${distill_exp}
        [ $((i + 1)) -lt ${#configs[@]} ] && out=${distill_exp}/step$((i + 1))
        log "${configs[i]} -> ${out} (console: ${out}/log/distill_train.log; a rerun resumes from its checkpoints)"
        # one process, torchrun with one rank per GPU, or srun with one rank per GPU on every node
        # shellcheck disable=SC2086  # distill_args is split into words, as ESPnet's --asr_args
        with_progress "${out}/train.log" utils/launch_training.sh --cmd "${cuda_cmd}" --ngpu "${ngpu}" \
            --num_nodes "${num_nodes}" --cpus_per_gpu "${cpus_per_gpu}" --mem_per_gpu "${mem_per_gpu}" \
            "${out}/log/distill_train.log" python -m speechdistill.bin.distill_train --config "${configs[i]}" \
            --train-data "data/${train_set}" --valid-data "data/${valid_set}" --teacher "${teacher_dir}" \
            --output-dir "${out}" --device "$([ "${ngpu}" -gt 0 ] && echo cuda || echo cpu)" "${student_from[@]}" \
            "${thread_opts[@]}" ${distill_args}
        student_from=(--student_from "${out}/student")
    done
    echo "${settings}" > "${distill_exp}/.stage3.done"
    log "done: ${distill_exp}/student ($(grep -o '"student_params": [0-9]*' "${distill_exp}/distill_summary.json" || true))"
fi
if [ "${random_student}" = true ]; then  # the baseline of stages 4-6: the student's architecture at random init
    python -m speechdistill.bin.random_student --student "${distill_exp}/student" \
        --out "${distill_exp}/random_student" --seed "${seed}" --skip-if-current
fi
