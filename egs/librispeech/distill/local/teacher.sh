#!/usr/bin/env bash
# Stage 2: the teacher as our model directory. With --teacher: import it (any format load_model reads; the
# checkpoint is checked first). Without: train HuBERT's first iteration from scratch on data/train (k-means
# units of MFCCs, masked prediction) with --pretrain_config, export it as a Hugging Face dir, import that.
#
#   local/teacher.sh --teacher /models/hubert-base-ls960 --teacher_dir exp/teacher
#   local/teacher.sh --pretrain_config conf/demo/pretrain_hubert.yaml --teacher_dir exp/demo/teacher
#
# Marker: <teacher_dir>/.stage2.done (the imported source and, for a trained one, its weights' md5).
set -euo pipefail

teacher=                # checkpoint to import; empty: train one from scratch
teacher_dir=exp/teacher # our model dir written here
pretrain_config=conf/demo/pretrain_hubert.yaml
pretrain_args=          # extra pretrain_hubert options
ngpu=0                  # 0: train on CPU; >0: one GPU
threads=0               # CPU threads of the training job (0: torch's default)
cpus_per_gpu=4          # cluster resources of the training job (utils/launch_training.sh)
mem_per_gpu=32
redo=false              # true: train and import again
progress=false          # true: show the training log's lines while it runs

. ./path.sh
. ./cmd.sh
. utils/parse_options.sh
. utils/recipe.sh

marker=${teacher_dir}/.stage2.done
if [ -z "${teacher}" ] && [ "${redo}" != true ] && [ -f "${marker}" ] && ! grep -q '^teacher_md5=' "${marker}"; then
    log "no --teacher given; keeping the teacher imported earlier: $(grep '^teacher=' "${marker}")"
    exit 0
fi
teacher_md5=
if [ -z "${teacher}" ]; then
    train_set=$(stage0 train_set)
    valid_set=$(stage0 valid_set)
    pretrain_dir=${teacher_dir}_pretrain
    settings="config=${pretrain_config} $(md5sum < "${pretrain_config}" | cut -d' ' -f1) args=${pretrain_args}
data=data/${train_set},data/${valid_set}"
    if up_to_date "${pretrain_dir}/.done" "${settings}" "${pretrain_dir}/hf/model.safetensors"; then
        log "no --teacher given: ${pretrain_dir}/hf was trained with these settings; kept"
    else
        [ "${redo}" = true ] && rm -rf "${pretrain_dir}"
        log "no --teacher given: training a HuBERT-style teacher from scratch with ${pretrain_config} ->" \
            "${pretrain_dir}/hf (console: ${pretrain_dir}/log/pretrain_hubert.log; progress: ${pretrain_dir}/train.log)"
        thread_opts=()
        [ "${threads}" -gt 0 ] && thread_opts=(--threads "${threads}")
        # shellcheck disable=SC2086  # pretrain_args is split into words
        with_progress "${pretrain_dir}/train.log" utils/launch_training.sh --cmd "${cuda_cmd}" --ngpu "$((ngpu > 0))" \
            --cpus_per_gpu "${cpus_per_gpu}" --mem_per_gpu "${mem_per_gpu}" "${pretrain_dir}/log/pretrain_hubert.log" \
            python -m speechdistill.bin.pretrain_hubert --config "${pretrain_config}" --train-data "data/${train_set}" \
            --valid-data "data/${valid_set}" --output-dir "${pretrain_dir}" --device "$([ "${ngpu}" -gt 0 ] && echo cuda || echo cpu)" \
            "${thread_opts[@]}" ${pretrain_args}
        grep -h 'validation at update' "${pretrain_dir}/train.log" | tail -n 1 | sed 's/^/    /' || true
        echo "${settings}" > "${pretrain_dir}/.done"
    fi
    teacher=${pretrain_dir}/hf
    teacher_md5=$(md5sum < "${teacher}/model.safetensors" | cut -d' ' -f1)
fi
source_path=$(cd "$(dirname "${teacher}")" && pwd -P)/$(basename "${teacher}")
settings="teacher=${source_path}${teacher_md5:+
teacher_md5=${teacher_md5}}"
if up_to_date "${marker}" "${settings}"; then
    log "${teacher_dir} already holds ${source_path}; kept"
    exit 0
fi
# import_teacher checks the checkpoint (format, architecture, every weight's name and shape)
import_log=exp/log/import_$(basename "${teacher_dir}").log
run_job ${train_cmd} "${import_log}" \
    python -m speechdistill.bin.import_teacher --src "${source_path}" --out "${teacher_dir}" --force
grep -E '"(format|architecture|shape|params)"' "${import_log}" | sed 's/^ */    /' || true
echo "${settings}" > "${marker}"
