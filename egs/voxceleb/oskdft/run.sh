#!/usr/bin/env bash
# VoxCeleb speaker-verification recipe (OS-KDFT: one-step distillation and fine-tuning).
#
#   ./run.sh                                 # stages 0-5 on the embedded mini VoxCeleb with a tiny teacher
#                                            # pretrained in stage 2 (no --teacher given)
#   ./run.sh --stage 0 --stop_stage 1        # data and trials, then noise and RIR dirs
#   ./run.sh --stage 2 --stop_stage 5 --teacher /path/to/hubert-base-ls960 --sv_config conf/oskdft_paper.yaml
#                                            # teacher import, training, embeddings, scoring -> RESULTS.md
#                                            # (README: "Speaker verification: stages 2-5")
#   ./run.sh --stage 4 --stop_stage 5 --test_conditions "clean snr20 snr10 snr5 snr0 reverb babble"
#                                            # the trials' enrolment and test audio corrupted (MUSAN, RIRs of
#                                            # stage 1); RESULTS.md: an EER/minDCF pair per condition
#   ./run.sh --stage 6 --stop_stage 6       # speaker identification (SUPERB SID) probe on the teacher or --sid_upstream
#   local/demo.sh                            # `make demo-sv`: OS-KDFT vs a random student and baselines
#
# Corpora come from db.sh; empty VOXCELEB1 and VOXCELEB2 select the embedded mini VoxCeleb
# (synthesized speakers, built under ${mini_dir}). See README.md for the data dirs.
set -euo pipefail

stage=0
stop_stage=5
nj=2                              # parallel processes for data preparation
train_sets="vox2_dev"             # real subsets merged into data/train: vox2_dev vox2_test vox1_dev
eval_sets="vox1_O vox1_E vox1_H"  # real evaluation sets (cleaned trial lists), each data/<set> with trials
mini_dir=downloads/mini           # where mini corpora are synthesized when db.sh leaves a corpus empty
mini_size=default                 # default (about 30 min of training speech) or tiny (seconds; tests)
mini_m4a=false                    # true: the mini training speakers as VoxCeleb2-style m4a (converted to FLAC at prep)
seed=0                            # seed of the mini corpora
# stages 2-5: teacher, speaker-verification training, embeddings, scoring
teacher=                          # stage 2: teacher checkpoint: Hugging Face dir, fairseq .pt, s3prl checkpoint or our model dir
teacher_dir=exp/teacher           # stage 2 writes the imported teacher here (our model dir); stage 3 reads it
pretrain_teacher=auto             # stage 2 without --teacher: auto = pretrain a tiny HuBERT on the mini corpus only
                                  # (real data needs --teacher); true = on data/train whatever it is; false = never
pretrain_config=conf/demo/pretrain_hubert.yaml  # speechdistill.bin.pretrain_hubert config of that teacher
pretrain_args=                    # extra pretrain_hubert options, e.g. "--max_steps 200 --threads 2"
pretrain_dir=exp/pretrain_hubert  # where it is trained (labels/, checkpoints/, hf/); then imported into teacher_dir
sv_config=                        # stage 3: conf/<preset>.yaml (default: conf/oskdft_paper_mini.yaml on the mini
                                  # corpus, conf/oskdft_paper.yaml on VoxCeleb)
sv_exp=                           # stages 3-5 experiment dir (default: exp/sv_<config name>)
sv_args=                          # extra sv_train options, e.g. "--max_steps 30 --batch_seconds 8"
ngpu=auto                         # GPUs per node; auto = the visible CUDA GPUs (0 without CUDA); 0 trains on CPU;
                                  # >1 starts one process per GPU (torchrun)
num_nodes=1                       # >1: one srun task per GPU on every node (needs cmd_backend=slurm)
cpus_per_gpu=4                    # CPUs of each training process (one per GPU; the one of a CPU job) on a cluster
mem_per_gpu=32                    # GB of memory of each training process on a cluster (--mem per node = sum)
tta_segments=0                    # stage 4: test-time augmentation segments per utterance (OS-KDFT: 5); 0 = off
segment_seconds=3                 # stage 4: length of a TTA segment in seconds
extract_args=                     # stage 4: extra sv_extract options, e.g. "--batch-seconds 60"
test_conditions=clean             # stages 4-5: any of "clean snr20 snr10 snr5 snr0 reverb babble": the enrolment and
                                  # test audio of every trial corrupted (MUSAN noise, RIRs, MUSAN speech of stage 1)
condition_seed=0                  # stages 4-5: seed of the corrupted audio, the same for every system
subtract_mean=false               # stage 5: subtract the training set's mean embedding before the cosine
score_norm=none                   # stage 5: none, asnorm or snorm (cohort: per-speaker means of data/train)
top_n=300                         # stage 5: cohort size kept by asnorm
redo=false                        # true: redo stages 2-4 even where their markers say they are done
# stage 6 (run it with --stop_stage 6): speaker identification, the SUPERB SID probe (egs/superb/probe)
sid_upstream=                     # frozen upstream of the probe (default: the teacher of stage 2); any model dir
sid_config=                       # default: ../../superb/probe/conf/sid.yaml (conf/demo/sid.yaml on the mini corpus)
sid_args=                         # extra probe_train options, e.g. "--max_steps 2000"

. ./path.sh
. ./cmd.sh
. utils/parse_options.sh
. utils/recipe.sh  # log, stage0, markers, record_time; run_job passes stop signals to the jobs
job_opts=(--cpus_per_gpu "${cpus_per_gpu}" --mem_per_gpu "${mem_per_gpu}" --redo "${redo}")  # training jobs'

if [ "${ngpu}" = auto ]; then
    if [ "${stop_stage}" -ge 2 ] && [ "${stage}" -le 4 ]; then
        ngpu=$(python -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)')
        log "--ngpu auto: ${ngpu} visible CUDA GPU(s)$([ "${ngpu}" = 0 ] && echo '; training on the CPU')"
    else
        ngpu=0  # stages 0, 1 and 5 use no GPU
    fi
fi
[[ "${ngpu}" =~ ^[0-9]+$ ]] || { log "error: --ngpu must be auto or a number of GPUs, found '${ngpu}'"; exit 1; }
case "${pretrain_teacher}" in auto | true | false) ;; *)
    log "error: --pretrain_teacher must be auto, true or false, found '${pretrain_teacher}'"; exit 1 ;; esac

if [ "${stage}" -le 0 ] && [ "${stop_stage}" -ge 0 ]; then
    log "stage 0: data -> data/train and evaluation sets with trials (marker: data/.stage0.done)"
    local/data.sh --nj "${nj}" --train_sets "${train_sets}" --eval_sets "${eval_sets}" \
        --mini_dir "${mini_dir}" --mini_size "${mini_size}" --mini_m4a "${mini_m4a}" --seed "${seed}"
fi

if [ "${stage}" -le 1 ] && [ "${stop_stage}" -ge 1 ]; then
    log "stage 1: noise and RIR dirs -> data/musan_{noise,music,speech}, data/rirs (marker: data/.stage1.done)"
    local/noise_data.sh --nj "${nj}" --mini_dir "${mini_dir}" --mini_size "${mini_size}" --seed "${seed}"
fi

# resolve_sv: the speaker-verification config, experiment dir and system of stages 2-5 (after stage 0 ran)
resolve_sv() {
    [ -z "${sv_system:-}" ] || return 0  # resolved by an earlier stage of this run
    if [ -z "${sv_config}" ]; then
        sv_config=conf/oskdft_paper.yaml
        [ "$(marker_get data/.stage0.done corpus)" != mini ] || sv_config=conf/oskdft_paper_mini.yaml
        log "using --sv_config ${sv_config}"
    fi
    [ -f "${sv_config}" ] || { log "error: --sv_config ${sv_config} does not exist; see conf/*.yaml"; exit 1; }
    sv_exp=${sv_exp:-exp/sv_$(basename "${sv_config}" .yaml)}
    # shellcheck disable=SC2086  # sv_args is split into words, as ESPnet's --asr_args
    sv_system=$(python -m speechdistill.bin.sv_train --config "${sv_config}" ${sv_args} --print-key system)
}

if [ "${stage}" -le 2 ] && [ "${stop_stage}" -ge 2 ]; then
    resolve_sv
    log "stage 2: teacher -> ${teacher_dir} (marker: ${teacher_dir}/.stage2.done)"
    run_job utils/teacher.sh --teacher "${teacher}" --teacher_dir "${teacher_dir}" --pretrain_teacher "${pretrain_teacher}" \
        --pretrain_config "${pretrain_config}" --pretrain_args "${pretrain_args}" --pretrain_dir "${pretrain_dir}" \
        --needs_teacher "$([ "${sv_system}" = fbank ] && echo false || echo true)" \
        --used_by "${sv_config} (system ${sv_system})" --ngpu "${ngpu}" "${job_opts[@]}"
fi

if [ "${stage}" -le 3 ] && [ "${stop_stage}" -ge 3 ]; then
    resolve_sv
    log "stage 3: ${sv_system} training with ${sv_config} -> ${sv_exp}/sv_model (marker: ${sv_exp}/.stage3.done)"
    run_job local/sv_train.sh --sv_config "${sv_config}" --sv_exp "${sv_exp}" --sv_args "${sv_args}" \
        --sv_system "${sv_system}" --teacher_dir "${teacher_dir}" --ngpu "${ngpu}" --num_nodes "${num_nodes}" "${job_opts[@]}"
fi

if [ "${stage}" -le 4 ] && [ "${stop_stage}" -ge 4 ]; then
    resolve_sv
    log "stage 4: embeddings -> ${sv_exp}/embeddings/<set>[_<condition>]/xvector.{ark,scp} (conditions: ${test_conditions})"
    run_job local/extract.sh --sv_exp "${sv_exp}" --test_conditions "${test_conditions}" \
        --condition_seed "${condition_seed}" --tta_segments "${tta_segments}" --segment_seconds "${segment_seconds}" \
        --extract_args "${extract_args}" --ngpu "${ngpu}" --redo "${redo}" \
        --with_train "$([ "${subtract_mean}" = true ] || [ "${score_norm}" != none ] && echo true || echo false)"
fi

if [ "${stage}" -le 5 ] && [ "${stop_stage}" -ge 5 ]; then
    resolve_sv
    log "stage 5: scoring -> ${sv_exp}/scores, ${sv_exp}/RESULTS.md"
    run_job local/score.sh --sv_exp "${sv_exp}" --sv_config "${sv_config}" --sv_args "${sv_args}" \
        --subtract_mean "${subtract_mean}" --score_norm "${score_norm}" --top_n "${top_n}" \
        --test_conditions "${test_conditions}" --condition_seed "${condition_seed}" \
        --tta_segments "${tta_segments}" --segment_seconds "${segment_seconds}"
    log "stage 5 done: ${sv_exp}/RESULTS.md"
fi

if [ "${stage}" -le 6 ] && [ "${stop_stage}" -ge 6 ]; then
    . ./db.sh
    if [ -z "${VOXCELEB1:-}" ]; then  # the mini VoxCeleb of stage 0 carries its own iden_split.txt
        corpus=${mini_dir}/VoxCeleb1 split_list=${mini_dir}/VoxCeleb1/iden_split.txt
        sid_config=${sid_config:-../../superb/probe/conf/demo/sid.yaml}
    else
        corpus=${VOXCELEB1} split_list=${VOXCELEB1_IDEN_SPLIT:-${VOXCELEB1}/iden_split.txt}
        [ -f "${split_list}" ] || split_list=${VOXCELEB1}/meta/iden_split.txt
        sid_config=${sid_config:-../../superb/probe/conf/sid.yaml}
    fi
    sid_upstream=${sid_upstream:-${teacher_dir}}
    sid_exp=exp/sid_$(basename "${sid_upstream}")
    log "stage 6: SID probe (${sid_config}) on ${sid_upstream}, VoxCeleb1 identification split -> ${sid_exp}"
    for split in train dev test; do
        python -m speechdistill.bin.prep_superb sid --corpus-dir "${corpus}" --iden-split "${split_list}" \
            --split "${split}" --out "data/sid_${split}" --nj "${nj}"
    done
    run_job ../../superb/probe/local/probe_task.sh --task sid --probe_config "${sid_config}" --upstream "${sid_upstream}" \
        --train data/sid_train --dev data/sid_dev --test data/sid_test --exp "${sid_exp}" --probe_args "${sid_args}" \
        --ngpu "$([ "${ngpu}" -gt 0 ] && echo 1 || echo 0)" --redo "${redo}"
fi

log "done (stages ${stage}-${stop_stage})"
