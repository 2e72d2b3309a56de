#!/usr/bin/env bash
# VoxCeleb speaker-verification recipe (OS-KDFT: one-step distillation and fine-tuning).
#
#   ./run.sh                                 # stages 0-5 on the embedded mini VoxCeleb with a tiny teacher
#                                            # pretrained in stage 2 (no --teacher given)
#   ./run.sh --stage 0 --stop_stage 1        # data and trials, then noise and RIR dirs
#   ./run.sh --stage 2 --stop_stage 5 --teacher /path/to/hubert-base-ls960 --sv_config conf/oskdft_paper.yaml
#                                            # teacher import, training, embeddings, scoring -> RESULTS.md
#                                            # (README: "Speaker verification: stages 2-5")
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
. utils/stop_signals.sh  # run_job: SIGTERM/SIGINT reach the jobs (a checkpointing trainer: exit 99)
# training jobs: CPUs and memory per process on a cluster (utils/launch_training.sh)
train_resources=(--cpus_per_gpu "${cpus_per_gpu}" --mem_per_gpu "${mem_per_gpu}")

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (${BASH_SOURCE[1]##*/}:${BASH_LINENO[0]}) $*"; }

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

# resolve_sv: the speaker-verification config and experiment dir of stages 2-5 (after stage 0 ran)
resolve_sv() {
    [ -z "${sv_system:-}" ] || return 0  # resolved by an earlier stage of this run
    if [ -z "${sv_config}" ]; then
        if [ -f data/.stage0.done ] && [ "$(. data/.stage0.done && echo "${corpus}")" = mini ]; then
            sv_config=conf/oskdft_paper_mini.yaml
        else
            sv_config=conf/oskdft_paper.yaml
        fi
        log "using --sv_config ${sv_config}"
    fi
    [ -f "${sv_config}" ] || { log "error: --sv_config ${sv_config} does not exist; see conf/*.yaml"; exit 1; }
    sv_exp=${sv_exp:-exp/sv_$(basename "${sv_config}" .yaml)}
    # shellcheck disable=SC2086  # sv_args is split into words, as ESPnet's --asr_args
    sv_system=$(python -m speechdistill.bin.sv_train --config "${sv_config}" ${sv_args} --print-key system)
}

# record_time <stage> <start, seconds since the epoch> <what>: keep the stage's run time for RESULTS.md
record_time() {
    local file=${sv_exp}/stage_times.txt
    mkdir -p "${sv_exp}"
    { grep -v "^$1 " "${file}" 2> /dev/null || true; echo "$1 $(($(date +%s) - $2)) $3"; } | sort -n > "${file}.tmp"
    mv "${file}.tmp" "${file}"
}

if [ "${stage}" -le 2 ] && [ "${stop_stage}" -ge 2 ]; then
    resolve_sv
    log "stage 2: teacher -> ${teacher_dir} (marker: ${teacher_dir}/.stage2.done)"
    if [ -z "${teacher}" ]; then
        corpus=$([ -f data/.stage0.done ] && (. data/.stage0.done && echo "${corpus}") || echo unknown)
        if [ "${pretrain_teacher}" = auto ]; then
            pretrain_teacher=$([ "${corpus}" = mini ] && echo true || echo false)
        fi
        if [ -f "${teacher_dir}/.stage2.done" ] && [ "${redo}" = false ] \
            && ! grep -q '^pretrained=' "${teacher_dir}/.stage2.done"; then
            log "no --teacher given; keeping the teacher imported earlier: $(grep '^teacher=' "${teacher_dir}/.stage2.done")"
        elif [ "${sv_system}" = fbank ]; then
            log "no --teacher given; ${sv_config} trains the fbank baseline, which needs none"
        elif [ "${pretrain_teacher}" = true ]; then
            # the default teacher: HuBERT's first iteration trained from scratch on data/train, exported as a
            # Hugging Face dir and imported like any real teacher
            [ -f data/.stage0.done ] || { log "error: data/.stage0.done is missing; run stage 0 first"; exit 1; }
            [ -f "${pretrain_config}" ] || { log "error: --pretrain_config ${pretrain_config} does not exist"; exit 1; }
            train_set=$(. data/.stage0.done && echo "${train_set}")
            pretrained="pretrained=${pretrain_config} $(md5sum < "${pretrain_config}" | cut -d' ' -f1) args=${pretrain_args} data=data/${train_set}"
            if [ "${redo}" = false ] && [ -f "${teacher_dir}/.stage2.done" ] \
                && grep -qxF "${pretrained}" "${teacher_dir}/.stage2.done"; then
                log "no --teacher given; keeping the teacher pretrained earlier (${pretrained})"
            elif [ "${redo}" = false ] && [ -f "${teacher_dir}/.stage2.done" ]; then
                log "error: ${teacher_dir} holds a teacher pretrained with other settings" \
                    "($(grep '^pretrained=' "${teacher_dir}/.stage2.done")); pass --redo true to pretrain again," \
                    "or --teacher_dir and --pretrain_dir for another one"
                exit 1
            else
                [ "${redo}" = true ] && rm -rf "${pretrain_dir}"
                log "no --teacher given: pretraining a tiny HuBERT on data/${train_set} with ${pretrain_config}" \
                    "-> ${pretrain_dir}/hf (console: exp/log/pretrain_hubert.log; a rerun resumes)"
                mkdir -p exp/log
                started=$(date +%s)
                # shellcheck disable=SC2086  # pretrain_args is split into words
                run_job utils/launch_training.sh --cmd "${cuda_cmd}" --ngpu "$([ "${ngpu}" -gt 0 ] && echo 1 || echo 0)" \
                    "${train_resources[@]}" exp/log/pretrain_hubert.log python -m speechdistill.bin.pretrain_hubert --config "${pretrain_config}" \
                    --train-data "data/${train_set}" --output-dir "${pretrain_dir}" \
                    --device "$([ "${ngpu}" -gt 0 ] && echo cuda || echo cpu)" ${pretrain_args}
                grep -o 'update [0-9]*/[0-9]* epoch.*acc_unmasked [^ ]*' "${pretrain_dir}/train.log" 2> /dev/null \
                    | tail -n 1 | sed 's/^/    last /' || true
                teacher_src=$(cd "${pretrain_dir}" && pwd -P)/hf
                run_job ${train_cmd} exp/log/import_teacher.log \
                    python -m speechdistill.bin.import_teacher --src "${teacher_src}" --out "${teacher_dir}" --force
                printf 'teacher=%s\n%s\n' "${teacher_src}" "${pretrained}" > "${teacher_dir}/.stage2.done"
                log "stage 2 done: tiny HuBERT teacher pretrained in $(($(date +%s) - started)) s, imported to ${teacher_dir}"
            fi
        else
            log "error: stage 2 needs a teacher for ${sv_config} (system ${sv_system}): pass --teacher PATH, a" \
                "Hugging Face model dir (e.g. a clone of facebook/hubert-base-ls960 or microsoft/wavlm-base-plus)," \
                "a fairseq .pt, an s3prl checkpoint or a speechdistill model dir (or --pretrain_teacher true to" \
                "pretrain a tiny HuBERT on data/train, as is done by default on the mini corpus)"
            exit 1
        fi
    else
        teacher_src=$(cd "$(dirname "${teacher}")" && pwd -P)/$(basename "${teacher}")
        if [ "${redo}" = false ] && [ -f "${teacher_dir}/.stage2.done" ] \
            && grep -qxF "teacher=${teacher_src}" "${teacher_dir}/.stage2.done" \
            && ! grep -q '^pretrained=' "${teacher_dir}/.stage2.done"; then
            log "${teacher_dir} already holds ${teacher_src}; kept"
        else
            # import_teacher checks the checkpoint (format, architecture, every weight's name and shape)
            run_job ${train_cmd} exp/log/import_teacher.log \
                python -m speechdistill.bin.import_teacher --src "${teacher_src}" --out "${teacher_dir}" --force
            grep -E '"(format|architecture|shape|params)"' exp/log/import_teacher.log | sed 's/^ */    /' || true
            echo "teacher=${teacher_src}" > "${teacher_dir}/.stage2.done"
        fi
    fi
fi

if [ "${stage}" -le 3 ] && [ "${stop_stage}" -ge 3 ]; then
    resolve_sv
    log "stage 3: ${sv_system} training with ${sv_config} -> ${sv_exp}/sv_model (marker: ${sv_exp}/.stage3.done)"
    [ -f data/.stage0.done ] || { log "error: data/.stage0.done is missing; run stage 0 first"; exit 1; }
    train_set=$(. data/.stage0.done && echo "${train_set}")
    teacher_opts=()
    teacher_used=none
    if [ "${sv_system}" != fbank ]; then
        [ -f "${teacher_dir}/.stage2.done" ] || { log "error: ${sv_config} needs a teacher and ${teacher_dir} has none;" \
            "run stage 2 (with --teacher PATH, or on the mini corpus without it)"; exit 1; }
        teacher_opts=(--teacher "${teacher_dir}")
        teacher_used=$(grep -E '^(teacher|pretrained)=' "${teacher_dir}/.stage2.done" | paste -sd ' ')
    fi
    settings="config=${sv_config} $(md5sum < "${sv_config}" | cut -d' ' -f1) args=${sv_args} ${teacher_used} data=data/${train_set}"
    if [ "${redo}" = false ] && [ -f "${sv_exp}/.stage3.done" ] && [ -f "${sv_exp}/sv_model/sv_model.yaml" ] \
        && [ "$(cat "${sv_exp}/.stage3.done")" = "${settings}" ]; then
        log "${sv_exp}/sv_model already trained with these settings; kept (--redo true to train again)"
    elif [ "${redo}" = false ] && [ -f "${sv_exp}/.stage3.done" ]; then
        log "error: ${sv_exp} holds a run with other settings ($(cat "${sv_exp}/.stage3.done")); pass --redo true to" \
            "train again from scratch, or --sv_exp DIR for a new experiment"
        exit 1
    else
        [ "${redo}" = true ] && rm -rf "${sv_exp}"
        started=$(date +%s)
        device=$([ "${ngpu}" -gt 0 ] && echo cuda || echo cpu)
        train=(-m speechdistill.bin.sv_train --config "${sv_config}" --train-data "data/${train_set}"
               "${teacher_opts[@]}" --output-dir "${sv_exp}" --device "${device}")
        log "  console: ${sv_exp}/log/sv_train.log; a rerun resumes from ${sv_exp}/checkpoints"
        if [ "${num_nodes}" -gt 1 ] && [[ "${cuda_cmd}" != *slurm.pl* ]]; then
            log "error: --num_nodes ${num_nodes} needs Slurm (cmd_backend=slurm)"
            exit 1
        fi
        # one process, torchrun with one rank per GPU, or srun with one rank per GPU on every node
        # shellcheck disable=SC2086  # sv_args is split into words
        run_job utils/launch_training.sh --cmd "${cuda_cmd}" --ngpu "${ngpu}" --num_nodes "${num_nodes}" \
            "${train_resources[@]}" "${sv_exp}/log/sv_train.log" python "${train[@]}" ${sv_args}
        echo "${settings}" > "${sv_exp}/.stage3.done"
        record_time 3 "${started}" "training"
        log "stage 3 done: ${sv_exp}/sv_model ($(grep -o 'exported the speaker model.*' "${sv_exp}/train.log" | tail -n 1))"
    fi
fi

if [ "${stage}" -le 4 ] && [ "${stop_stage}" -ge 4 ]; then
    resolve_sv
    log "stage 4: embeddings -> ${sv_exp}/embeddings/<set>/xvector.{ark,scp}"
    [ -f "${sv_exp}/sv_model/sv_model.yaml" ] || { log "error: no ${sv_exp}/sv_model; run stage 3 first"; exit 1; }
    train_set=$(. data/.stage0.done && echo "${train_set}")
    test_sets=$(. data/.stage0.done && echo "${test_sets}")
    sets=${test_sets}
    if [ "${subtract_mean}" = true ] || [ "${score_norm}" != none ]; then
        sets="${train_set} ${sets}"  # the training set gives the mean embedding and the score-norm cohort
    fi
    started=$(date +%s)
    computed=false
    gpu=$([ "${ngpu}" -gt 0 ] && echo 1 || echo 0)
    device=$([ "${ngpu}" -gt 0 ] && echo cuda || echo cpu)
    for set in ${sets}; do
        tta=$([ "${set}" = "${train_set}" ] && echo 0 || echo "${tta_segments}")
        # shellcheck disable=SC2086  # extract_args is split into words
        run_job ${cuda_cmd} --gpu "${gpu}" "${sv_exp}/log/extract_${set}.log" \
            python -m speechdistill.bin.sv_extract --model-dir "${sv_exp}/sv_model" --data "data/${set}" \
            --output-dir "${sv_exp}/embeddings/${set}" --tta-segments "${tta}" --segment-seconds "${segment_seconds}" \
            --device "${device}" $([ "${redo}" = true ] && echo --force) ${extract_args}
        grep '^sv_extract:' "${sv_exp}/log/extract_${set}.log" | sed 's/^/    /' || true
        grep -q 'is up to date' "${sv_exp}/log/extract_${set}.log" || computed=true
    done
    if [ "${computed}" = true ]; then
        record_time 4 "${started}" "embeddings"
    fi
fi

if [ "${stage}" -le 5 ] && [ "${stop_stage}" -ge 5 ]; then
    resolve_sv
    log "stage 5: scoring -> ${sv_exp}/scores, ${sv_exp}/RESULTS.md"
    train_set=$(. data/.stage0.done && echo "${train_set}")
    test_sets=$(. data/.stage0.done && echo "${test_sets}")
    started=$(date +%s)
    mkdir -p "${sv_exp}/scores"
    train_embeddings=${sv_exp}/embeddings/${train_set}/xvector.scp
    mean_opts=()
    if [ "${subtract_mean}" = true ]; then
        mean_opts=(--train-embeddings "${train_embeddings}" --subtract-mean)
    fi
    lists=()
    for set in ${test_sets}; do
        trials=data/${set}/trials
        score=${sv_exp}/scores/${set}.score
        norm_opts=()
        if [ "${score_norm}" != none ]; then
            norm_opts=(--train-embeddings "${train_embeddings}" --train-utt2spk "data/${train_set}/utt2spk"
                       --score-norm "${score_norm}" --top-n "${top_n}"
                       --norm-output "${sv_exp}/scores/${set}_${score_norm}.score")
        fi
        python -m speechdistill.bin.score_trials --trials "${trials}" --embeddings "${sv_exp}/embeddings/${set}/xvector.scp" \
            --output "${score}" "${mean_opts[@]}" "${norm_opts[@]}" 2> "${sv_exp}/log/score_${set}.log" \
            || { cat "${sv_exp}/log/score_${set}.log" >&2; exit 1; }
        python -m speechdistill.bin.compute_eer --scores "${score}" --trials "${trials}" | tee "${sv_exp}/scores/${set}.eer"
        lists+=(--list "${set}" "${score}" "${trials}")
        if [ "${score_norm}" != none ]; then
            python -m speechdistill.bin.compute_eer --scores "${sv_exp}/scores/${set}_${score_norm}.score" \
                --trials "${trials}" | tee "${sv_exp}/scores/${set}_${score_norm}.eer"
            lists+=(--list "${set}_${score_norm}" "${sv_exp}/scores/${set}_${score_norm}.score" "${trials}")
        fi
    done
    record_time 5 "${started}" "scoring"
    embedding_note="embeddings: full utterance"
    if [ "${tta_segments}" -gt 0 ]; then
        embedding_note+=", TTA ${tta_segments} x ${segment_seconds} s segments"
    fi
    scoring_note="scoring: cosine"
    if [ "${subtract_mean}" = true ]; then
        scoring_note+=", training mean subtracted"
    fi
    if [ "${score_norm}" != none ]; then
        scoring_note+="; rows *_${score_norm}: ${score_norm} (top ${top_n}) against data/${train_set}"
    fi
    python -m speechdistill.bin.sv_results --output "${sv_exp}/RESULTS.md" --det-dir "${sv_exp}/scores" \
        --model-dir "${sv_exp}/sv_model" --stage-times "${sv_exp}/stage_times.txt" "${lists[@]}" \
        --note "config: ${sv_config}${sv_args:+ with ${sv_args}}" --note "${embedding_note}" --note "${scoring_note}"
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
