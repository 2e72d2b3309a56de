#!/usr/bin/env bash
# Stage 4 for one upstream: the SUPERB-style ASR probe (weighted sum of the frozen upstream's hidden states,
# BiLSTM-CTC) trained on data/train with --asr_config, optionally from dumped features.
#
#   local/asr_probe.sh --upstream exp/distill_distilhubert/student --asr_exp exp/asr_superb_distilhubert \
#       --asr_config conf/asr_superb.yaml --token_dir data/token_list/char
#
# Marker: <asr_exp>/.stage4.done (config, options, the upstream's files' md5, tokens, data).
set -euo pipefail

upstream=               # any model load_model reads
asr_exp=                # output dir
asr_config=conf/asr_superb.yaml
asr_args=               # extra asr_train options
token_dir=data/token_list/char
dump_features=false     # true: dump the upstream's hidden states once (<asr_exp>/dump) and train on them
ngpu=0
cpus_per_gpu=4
mem_per_gpu=32
redo=false
progress=false

. ./path.sh
. ./cmd.sh
. utils/parse_options.sh
. utils/recipe.sh

train_set=$(stage0 train_set)
valid_set=$(stage0 valid_set)
device=$([ "${ngpu}" -gt 0 ] && echo cuda || echo cpu)
progress_label=$(basename "${asr_exp}")
log "probe on ${upstream} -> ${asr_exp}/asr_model (marker: ${asr_exp}/.stage4.done)"
upstream_sum=$(find -L "${upstream}" -type f ! -name '.*' -print0 | LC_ALL=C sort -z | xargs -0 cat | md5sum | cut -d' ' -f1)
settings="config=${asr_config} $(md5sum < "${asr_config}" | cut -d' ' -f1) args=${asr_args} dump=${dump_features}
upstream=${upstream} ${upstream_sum} tokens=${token_dir} $(md5sum < "${token_dir}/tokens.txt" | cut -d' ' -f1)
data=data/${train_set},data/${valid_set}"
if up_to_date "${asr_exp}/.stage4.done" "${settings}" "${asr_exp}/asr_model/model.safetensors"; then
    log "${asr_exp}/asr_model already trained with these settings; kept (--redo true to train again)"
    exit 0
fi
[ "${redo}" = true ] && rm -rf "${asr_exp}"
feature_opts=()
[ "${dump_features}" != true ] || dump_upstream_features "${asr_exp}" "${upstream}" "${device}" "$((ngpu > 0))" \
    "${train_set}:data/${train_set}" "${valid_set}:data/${valid_set}"
log "training ${asr_exp} (console: ${asr_exp}/log/asr_train.log; a rerun resumes from its checkpoints)"
# shellcheck disable=SC2086  # asr_args is split into words, as ESPnet's --asr_args
with_progress "${asr_exp}/train.log" utils/launch_training.sh --cmd "${cuda_cmd}" --ngpu "${ngpu}" \
    --cpus_per_gpu "${cpus_per_gpu}" --mem_per_gpu "${mem_per_gpu}" "${asr_exp}/log/asr_train.log" \
    python -m speechdistill.bin.asr_train --config "${asr_config}" --train-data "data/${train_set}" \
    --valid-data "data/${valid_set}" --upstream "${upstream}" --token-dir "${token_dir}" --output-dir "${asr_exp}" \
    --device "${device}" "${feature_opts[@]}" ${asr_args}
echo "${settings}" > "${asr_exp}/.stage4.done"
log "probe done: ${asr_exp}/asr_model ($(grep -o 'validation at update.*' "${asr_exp}/train.log" | tail -n 1))"
