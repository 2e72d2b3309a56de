#!/usr/bin/env bash
# Stage 3: train the speaker-verification system of --sv_config on data/train (speechdistill.bin.sv_train through
# utils/launch_training.sh: one process, torchrun with one rank per GPU, or srun on every node) into
# <sv_exp>/sv_model. A rerun with the same settings keeps it; an interrupted one resumes from its checkpoints.
#
#   local/sv_train.sh --sv_config conf/oskdft_paper.yaml --sv_exp exp/sv_oskdft_paper --ngpu 1
#
# Marker: <sv_exp>/.stage3.done (config and its md5, --sv_args, the teacher, the data).
set -euo pipefail

sv_config=
sv_exp=
sv_args=                # extra sv_train options
sv_system=              # the system of --sv_config (fbank needs no teacher)
teacher_dir=exp/teacher
ngpu=0
num_nodes=1
cpus_per_gpu=4
mem_per_gpu=32
redo=false

. ./path.sh
. ./cmd.sh
. utils/parse_options.sh
. utils/recipe.sh

train_set=$(stage0 train_set)
teacher_opts=()
teacher_used=none
if [ "${sv_system}" != fbank ]; then
    [ -f "${teacher_dir}/.stage2.done" ] || { log "error: ${sv_config} needs a teacher and ${teacher_dir} has none;" \
        "run stage 2 (with --teacher PATH, or on the mini corpus without it)"; exit 1; }
    teacher_opts=(--teacher "${teacher_dir}")
    teacher_used=$(paste -sd ' ' "${teacher_dir}/.stage2.done")  # the teacher's source and, if pretrained, its weights' md5
fi
settings="config=${sv_config} $(md5sum < "${sv_config}" | cut -d' ' -f1) args=${sv_args} ${teacher_used} data=data/${train_set}"
if up_to_date "${sv_exp}/.stage3.done" "${settings}" "${sv_exp}/sv_model/sv_model.yaml"; then
    log "${sv_exp}/sv_model already trained with these settings; kept (--redo true to train again)"
    exit 0
elif [ "${redo}" = false ] && [ -f "${sv_exp}/.stage3.done" ]; then
    log "error: ${sv_exp} holds a run with other settings ($(cat "${sv_exp}/.stage3.done")); pass --redo true to" \
        "train again from scratch, or --sv_exp DIR for a new experiment"
    exit 1
fi
if [ "${num_nodes}" -gt 1 ] && [[ "${cuda_cmd}" != *slurm.pl* ]]; then
    log "error: --num_nodes ${num_nodes} needs Slurm (cmd_backend=slurm)"
    exit 1
fi
[ "${redo}" = true ] && rm -rf "${sv_exp}"
started=$(date +%s)
log "console: ${sv_exp}/log/sv_train.log; a rerun resumes from ${sv_exp}/checkpoints"
# shellcheck disable=SC2086  # sv_args is split into words, as ESPnet's --asr_args
run_job utils/launch_training.sh --cmd "${cuda_cmd}" --ngpu "${ngpu}" --num_nodes "${num_nodes}" \
    --cpus_per_gpu "${cpus_per_gpu}" --mem_per_gpu "${mem_per_gpu}" "${sv_exp}/log/sv_train.log" \
    python -m speechdistill.bin.sv_train --config "${sv_config}" --train-data "data/${train_set}" "${teacher_opts[@]}" \
    --output-dir "${sv_exp}" --device "$([ "${ngpu}" -gt 0 ] && echo cuda || echo cpu)" ${sv_args}
echo "${settings}" > "${sv_exp}/.stage3.done"
record_time "${sv_exp}/stage_times.txt" 3 "${started}" training
log "stage 3 done: ${sv_exp}/sv_model ($(grep -o 'exported the speaker model.*' "${sv_exp}/train.log" | tail -n 1))"
