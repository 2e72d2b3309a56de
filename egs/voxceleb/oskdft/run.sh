#!/usr/bin/env bash
# VoxCeleb speaker-verification recipe (OS-KDFT: one-step distillation and fine-tuning).
#
#   ./run.sh --stage 0 --stop_stage 1        # data and trials, then noise and RIR dirs
#
# Corpora come from db.sh; empty VOXCELEB1 and VOXCELEB2 select the embedded mini VoxCeleb
# (synthesized speakers, built under ${mini_dir}). See README.md for the data dirs.
set -euo pipefail

stage=0
stop_stage=1
nj=2                              # parallel processes for data preparation
train_sets="vox2_dev"             # real subsets merged into data/train: vox2_dev vox2_test vox1_dev
eval_sets="vox1_O vox1_E vox1_H"  # real evaluation sets (cleaned trial lists), each data/<set> with trials
mini_dir=downloads/mini           # where mini corpora are synthesized when db.sh leaves a corpus empty
mini_size=default                 # default (about 30 min of training speech) or tiny (seconds; tests)
seed=0                            # seed of the mini corpora

. ./path.sh
. ./cmd.sh
. utils/parse_options.sh

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (${BASH_SOURCE[1]##*/}:${BASH_LINENO[0]}) $*"; }

if [ "${stage}" -le 0 ] && [ "${stop_stage}" -ge 0 ]; then
    log "stage 0: data -> data/train and evaluation sets with trials (marker: data/.stage0.done)"
    local/data.sh --nj "${nj}" --train_sets "${train_sets}" --eval_sets "${eval_sets}" \
        --mini_dir "${mini_dir}" --mini_size "${mini_size}" --seed "${seed}"
fi

if [ "${stage}" -le 1 ] && [ "${stop_stage}" -ge 1 ]; then
    log "stage 1: noise and RIR dirs -> data/musan_{noise,music,speech}, data/rirs (marker: data/.stage1.done)"
    local/noise_data.sh --nj "${nj}" --mini_dir "${mini_dir}" --mini_size "${mini_size}" --seed "${seed}"
fi

log "done (stages ${stage}-${stop_stage})"
