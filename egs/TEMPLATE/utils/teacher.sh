#!/usr/bin/env bash
# The teacher stage of a recipe: the teacher as our model directory. With --teacher: import it (any format
# load_model reads; import_teacher checks the checkpoint first). Without: keep a teacher imported there earlier;
# else, when pretraining is on (--pretrain_teacher true, or auto on the mini corpus), train HuBERT's first
# iteration from scratch on data/<train_set> (k-means units of MFCCs, masked prediction; validated on
# data/<valid_set> when stage 0 has one) with --pretrain_config into --pretrain_dir, and import its Hugging Face
# export like any real teacher.
#
#   utils/teacher.sh --teacher /models/hubert-base-ls960 --teacher_dir exp/teacher
#   utils/teacher.sh --pretrain_teacher true --pretrain_config conf/demo/pretrain_hubert.yaml --teacher_dir exp/demo/teacher
#
# Marker <teacher_dir>/.stage2.done: teacher=<absolute source>; for a pretrained teacher also teacher_md5=<md5 of
# its weights> (a retrained teacher is imported again) and pretrained=<config> <its md5> args=<pretrain_args>
# data=<data dirs>. <pretrain_dir>/.settings holds that pretrained= line from the start of the training: a rerun
# with the same settings resumes or keeps the run; other settings are refused (--redo true pretrains again), so
# that checkpoints of one config never continue under another.
set -euo pipefail

teacher=                # checkpoint to import; empty: keep an earlier import, or pretrain one
teacher_dir=exp/teacher # our model dir written here
pretrain_teacher=auto   # without --teacher: true = pretrain on data/<train_set>; auto = only on the mini corpus
                        # (data/.stage0.done corpus=mini); false = never (stage 2 then needs --teacher)
pretrain_config=conf/demo/pretrain_hubert.yaml
pretrain_args=          # extra pretrain_hubert options, e.g. "--max_steps 200"
pretrain_dir=           # where the teacher is pretrained (labels/, checkpoints/, model/, hf/); default: <teacher_dir>_pretrain
needs_teacher=true      # false: what stage 3 trains needs no teacher (without --teacher nothing is done)
used_by=                # what stage 3 trains with the teacher (a config, a system), named in messages
ngpu=0                  # 0: pretrain on CPU; >0: on one GPU
threads=0               # CPU threads of the pretraining job (0: torch's default)
cpus_per_gpu=4          # cluster resources of the pretraining job (utils/launch_training.sh)
mem_per_gpu=32
redo=false              # true: pretrain (without --teacher) and import again
progress=false          # true: show the pretraining log's lines while it runs

. ./path.sh
. ./cmd.sh
. utils/parse_options.sh
. utils/recipe.sh

pretrain_dir=${pretrain_dir:-${teacher_dir}_pretrain}
marker=${teacher_dir}/.stage2.done
case "${pretrain_teacher}" in auto | true | false) ;; *)
    log "error: --pretrain_teacher must be auto, true or false, found '${pretrain_teacher}'"; exit 1 ;; esac

absolute() { echo "$(cd "$(dirname "$1")" && pwd -P)/$(basename "$1")"; }
write_marker() {  # write_marker LINE...: the marker, atomically
    mkdir -p "${teacher_dir}"
    printf '%s\n' "$@" > "${marker}.tmp" && mv "${marker}.tmp" "${marker}"
}
import_teacher() {  # import_teacher SOURCE [MARKER LINES]: check and convert SOURCE unless the marker holds it
    local lines=("teacher=$1" "${@:2}") import_log
    if up_to_date "${marker}" "$(printf '%s\n' "${lines[@]}")"; then
        log "${teacher_dir} already holds $1; kept"
        return
    fi
    import_log=exp/log/import_$(basename "${teacher_dir}").log
    run_job ${train_cmd} "${import_log}" \
        python -m speechdistill.bin.import_teacher --src "$1" --out "${teacher_dir}" --force
    grep -E '"(format|architecture|shape|params)"' "${import_log}" | sed 's/^ */    /' || true
    write_marker "${lines[@]}"
    log "${teacher_dir}: $1 imported (log: ${import_log})"
}

if [ -n "${teacher}" ]; then
    [ -e "${teacher}" ] || { log "error: --teacher ${teacher} does not exist"; exit 1; }
    import_teacher "$(absolute "${teacher}")"
    exit 0
fi
if [ "${redo}" != true ] && [ -f "${marker}" ] && ! grep -qE '^(teacher_md5|pretrained)=' "${marker}"; then
    log "no --teacher given; keeping the teacher imported earlier: $(grep '^teacher=' "${marker}")"
    exit 0
fi
if [ "${needs_teacher}" = false ]; then
    log "no --teacher given; ${used_by:-stage 3} needs none"
    exit 0
fi
[ "${pretrain_teacher}" = auto ] && pretrain_teacher=$([ "$(marker_get data/.stage0.done corpus)" = mini ] && echo true || echo false)
if [ "${pretrain_teacher}" != true ]; then
    log "error: stage 2 needs a teacher${used_by:+ for ${used_by}}: pass --teacher PATH, a" \
        "Hugging Face model dir (e.g. a clone of facebook/hubert-base-ls960 or microsoft/wavlm-base-plus)," \
        "a fairseq .pt, an s3prl checkpoint or a speechdistill model dir (or --pretrain_teacher true to" \
        "pretrain a tiny HuBERT on data/train, as is done by default on the mini corpus)"
    exit 1
fi

# pretraining: its settings, recorded in the teacher's marker and in <pretrain_dir>/.settings
[ -f "${pretrain_config}" ] || { log "error: --pretrain_config ${pretrain_config} does not exist"; exit 1; }
train_set=$(stage0 train_set)
valid_set=$(stage0 valid_set)
data=data/${train_set}${valid_set:+,data/${valid_set}}
config_md5=$(md5sum < "${pretrain_config}" | cut -d' ' -f1)
settings="pretrained=${pretrain_config} ${config_md5} args=${pretrain_args} data=${data}"
hf_dir=${pretrain_dir}/hf
weights_md5() { md5sum < "${hf_dir}/model.safetensors" | cut -d' ' -f1; }
if [ "${redo}" != true ] && [ -f "${marker}" ] && grep -qxF "${settings}" "${marker}" \
    && grep -qxF "teacher=$(absolute "${hf_dir}")" "${marker}" \
    && { ! grep -q '^teacher_md5=' "${marker}" \
         || { [ -f "${hf_dir}/model.safetensors" ] && grep -qxF "teacher_md5=$(weights_md5)" "${marker}"; }; }; then
    log "no --teacher given; keeping the teacher pretrained earlier (${settings})"
    exit 0
fi
record=${pretrain_dir}/.settings
if [ "${redo}" = true ]; then
    rm -rf "${pretrain_dir}"
elif [ -f "${record}" ] && [ "$(cat "${record}")" != "${settings}" ]; then
    log "error: ${pretrain_dir} holds a teacher pretrained with other settings ($(cat "${record}")), not" \
        "${settings}; pass --redo true to pretrain again, or another --pretrain_dir"
    exit 1
elif [ ! -f "${record}" ] && [ -n "$(ls -d "${pretrain_dir}"/{checkpoints,model,hf} 2> /dev/null)" ]; then
    log "error: ${pretrain_dir} holds a pretraining run whose settings are not recorded in ${record}; pass" \
        "--redo true to pretrain again, or another --pretrain_dir"
    exit 1
fi
if [ -f "${record}" ] && [ -f "${hf_dir}/model.safetensors" ]; then
    log "no --teacher given: ${hf_dir} was trained with these settings; kept"
else
    log "no --teacher given: pretraining a HuBERT teacher from scratch on ${data} with ${pretrain_config} ->" \
        "${hf_dir} (console: ${pretrain_dir}/log/pretrain_hubert.log; progress: ${pretrain_dir}/train.log; a rerun" \
        "resumes)"
    mkdir -p "${pretrain_dir}"
    echo "${settings}" > "${record}.tmp" && mv "${record}.tmp" "${record}"
    started=$(date +%s)
    thread_opts=()
    [ "${threads}" -gt 0 ] && thread_opts=(--threads "${threads}")
    valid_opts=()
    [ -z "${valid_set}" ] || valid_opts=(--valid-data "data/${valid_set}")
    # shellcheck disable=SC2086  # pretrain_args is split into words
    with_progress "${pretrain_dir}/train.log" utils/launch_training.sh --cmd "${cuda_cmd}" --ngpu "$((ngpu > 0))" \
        --cpus_per_gpu "${cpus_per_gpu}" --mem_per_gpu "${mem_per_gpu}" "${pretrain_dir}/log/pretrain_hubert.log" \
        python -m speechdistill.bin.pretrain_hubert --config "${pretrain_config}" --train-data "data/${train_set}" \
        "${valid_opts[@]}" --output-dir "${pretrain_dir}" --device "$([ "${ngpu}" -gt 0 ] && echo cuda || echo cpu)" \
        "${thread_opts[@]}" ${pretrain_args}
    last=$(grep -h 'validation at update' "${pretrain_dir}/train.log" 2> /dev/null | tail -n 1 || true)
    [ -n "${last}" ] || last=$(grep -o 'update [0-9]*/[0-9]* epoch.*acc_unmasked [^ ]*' "${pretrain_dir}/train.log" \
                               2> /dev/null | tail -n 1 || true)
    [ -z "${last}" ] || echo "    last: ${last}"
    log "teacher pretrained in $(($(date +%s) - started)) s"
fi
import_teacher "$(absolute "${hf_dir}")" "teacher_md5=$(weights_md5)" "${settings}"
