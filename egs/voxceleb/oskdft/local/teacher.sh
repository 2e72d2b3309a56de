#!/usr/bin/env bash
# Stage 2: the teacher as our model directory. With --teacher: import it (any format load_model reads; the
# checkpoint is checked first). Without: keep an earlier import; or, on the mini corpus (--pretrain_teacher
# auto) or with --pretrain_teacher true, pretrain a tiny HuBERT on data/train with --pretrain_config and import
# its Hugging Face export; the fbank baseline (--sv_system fbank) needs no teacher.
#
#   local/teacher.sh --teacher /models/hubert-base-ls960 --teacher_dir exp/teacher
#   local/teacher.sh --sv_system oskdft --pretrain_teacher auto
#
# Marker: <teacher_dir>/.stage2.done (teacher=<source>, and pretrained=<config, args, data> for a pretrained one).
set -euo pipefail

teacher=                # checkpoint to import
teacher_dir=exp/teacher
pretrain_teacher=auto   # auto (mini corpus only), true or false
pretrain_config=conf/demo/pretrain_hubert.yaml
pretrain_args=          # extra pretrain_hubert options
pretrain_dir=exp/pretrain_hubert
sv_system=              # the system of --sv_config (fbank needs no teacher)
sv_config=              # named in messages
ngpu=0
cpus_per_gpu=4
mem_per_gpu=32
redo=false

. ./path.sh
. ./cmd.sh
. utils/parse_options.sh
. utils/recipe.sh

marker=${teacher_dir}/.stage2.done
import_teacher() {  # import_teacher SOURCE [MARKER LINES]: check and convert SOURCE into teacher_dir, then write the marker
    run_job ${train_cmd} exp/log/import_teacher.log \
        python -m speechdistill.bin.import_teacher --src "$1" --out "${teacher_dir}" --force
    grep -E '"(format|architecture|shape|params)"' exp/log/import_teacher.log | sed 's/^ */    /' || true
    printf '%s\n' "teacher=$1" "${@:2}" > "${marker}"
}

if [ -n "${teacher}" ]; then
    source_path=$(cd "$(dirname "${teacher}")" && pwd -P)/$(basename "${teacher}")
    if up_to_date "${marker}" "teacher=${source_path}"; then
        log "${teacher_dir} already holds ${source_path}; kept"
    else
        import_teacher "${source_path}"
    fi
    exit 0
fi
if [ "${redo}" = false ] && [ -f "${marker}" ] && ! grep -q '^pretrained=' "${marker}"; then
    log "no --teacher given; keeping the teacher imported earlier: $(grep '^teacher=' "${marker}")"
    exit 0
fi
if [ "${sv_system}" = fbank ]; then
    log "no --teacher given; ${sv_config} trains the fbank baseline, which needs none"
    exit 0
fi
[ "${pretrain_teacher}" = auto ] && pretrain_teacher=$([ "$(marker_get data/.stage0.done corpus)" = mini ] && echo true || echo false)
if [ "${pretrain_teacher}" != true ]; then
    log "error: stage 2 needs a teacher for ${sv_config} (system ${sv_system}): pass --teacher PATH, a" \
        "Hugging Face model dir (e.g. a clone of facebook/hubert-base-ls960 or microsoft/wavlm-base-plus)," \
        "a fairseq .pt, an s3prl checkpoint or a speechdistill model dir (or --pretrain_teacher true to" \
        "pretrain a tiny HuBERT on data/train, as is done by default on the mini corpus)"
    exit 1
fi
# the default teacher: HuBERT's first iteration trained from scratch on data/train, exported as a Hugging Face
# dir and imported like any real teacher
train_set=$(stage0 train_set)
[ -f "${pretrain_config}" ] || { log "error: --pretrain_config ${pretrain_config} does not exist"; exit 1; }
pretrained="pretrained=${pretrain_config} $(md5sum < "${pretrain_config}" | cut -d' ' -f1) args=${pretrain_args} data=data/${train_set}"
if [ "${redo}" = false ] && [ -f "${marker}" ] && grep -qxF "${pretrained}" "${marker}"; then
    log "no --teacher given; keeping the teacher pretrained earlier (${pretrained})"
    exit 0
elif [ "${redo}" = false ] && [ -f "${marker}" ]; then
    log "error: ${teacher_dir} holds a teacher pretrained with other settings ($(grep '^pretrained=' "${marker}"));" \
        "pass --redo true to pretrain again, or --teacher_dir and --pretrain_dir for another one"
    exit 1
fi
[ "${redo}" = true ] && rm -rf "${pretrain_dir}"
log "no --teacher given: pretraining a tiny HuBERT on data/${train_set} with ${pretrain_config} -> ${pretrain_dir}/hf" \
    "(console: exp/log/pretrain_hubert.log; a rerun resumes)"
mkdir -p exp/log
started=$(date +%s)
# shellcheck disable=SC2086  # pretrain_args is split into words
run_job utils/launch_training.sh --cmd "${cuda_cmd}" --ngpu "$((ngpu > 0))" --cpus_per_gpu "${cpus_per_gpu}" \
    --mem_per_gpu "${mem_per_gpu}" exp/log/pretrain_hubert.log python -m speechdistill.bin.pretrain_hubert \
    --config "${pretrain_config}" --train-data "data/${train_set}" --output-dir "${pretrain_dir}" \
    --device "$([ "${ngpu}" -gt 0 ] && echo cuda || echo cpu)" ${pretrain_args}
grep -o 'update [0-9]*/[0-9]* epoch.*acc_unmasked [^ ]*' "${pretrain_dir}/train.log" 2> /dev/null \
    | tail -n 1 | sed 's/^/    last /' || true
import_teacher "$(cd "${pretrain_dir}" && pwd -P)/hf" "${pretrained}"
log "stage 2 done: tiny HuBERT teacher pretrained in $(($(date +%s) - started)) s, imported to ${teacher_dir}"
