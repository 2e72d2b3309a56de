#!/usr/bin/env bash
# LibriSpeech distillation recipe (RobustDistiller / DistilHuBERT-family students).
#
#   ./run.sh --stage 0 --stop_stage 1        # data, then noise and RIR dirs
#   ./run.sh --stage 2 --stop_stage 3 --teacher /path/to/hubert-base-ls960 --distill_config conf/distilhubert.yaml
#                                            # teacher import, then distillation (README: "Distillation")
#   ./run.sh --stage 4 --stop_stage 5 --ngpu 0 --asr_config conf/asr_mini.yaml --test_conditions "clean snr10 reverb"
#                                            # ASR probe on the stage-3 student (or --upstream DIR), decode, RESULTS.md
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
# stages 4-5: ASR downstream (SUPERB-style probe on frozen features; README: "ASR downstream")
upstream=                         # frozen upstream (any model load_model reads); default: <distill_exp>/student of stage 3
asr_config=conf/asr_superb.yaml   # stage 4: probe config, conf/asr_*.yaml (conf/asr_mini.yaml: fast, mini corpus on CPU)
asr_exp=                          # stages 4-5 dir (default: exp/<asr config name>_<upstream name>)
asr_args=                         # extra asr_train options, e.g. "--max_steps 30 --batch_seconds 20"
token_type=char                   # char (SUPERB) or bpe (SentencePiece trained on data/train)
nbpe=5000                         # bpe vocabulary size (ESPnet LibriSpeech: 5000; the mini corpus: 300 works, 1000 fails)
bpemode=unigram                   # SentencePiece model type for bpe
asr_dump_features=false           # true: dump the upstream's hidden states once (<asr_exp>/dump) and train on them
decode_args=                      # extra asr_decode options, e.g. "--beam-size 10" (names the decode dir)
test_conditions=clean             # stage 5: any of "clean snr20 snr10 snr5 snr0 reverb" (noise/RIRs of stage 1)
condition_seed=0                  # stage 5: seed of the corrupted test audio, the same for every model

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
            import_log=exp/log/import_$(basename "${teacher_dir}").log
            ${train_cmd} "${import_log}" \
                python -m speechdistill.bin.import_teacher --src "${teacher_src}" --out "${teacher_dir}" --force
            grep -E '"(format|architecture|shape|params)"' "${import_log}" | sed 's/^ */    /' || true
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

if [ "${stage}" -le 5 ] && [ "${stop_stage}" -ge 4 ]; then
    # Stages 4 and 5 find the upstream and the experiment dir the same way, so they can run separately.
    upstream=${upstream:-${distill_exp:-exp/distill_$(basename "${distill_config}" .yaml)}/student}
    if [ -z "${asr_exp}" ]; then
        upstream_name=$(basename "${upstream}")
        [ "${upstream_name}" = student ] && upstream_name=$(basename "$(dirname "${upstream}")")
        asr_exp=exp/$(basename "${asr_config}" .yaml)_${upstream_name//[^A-Za-z0-9._-]/_}
    fi
    asr_device=$([ "${ngpu}" -gt 0 ] && echo cuda || echo cpu)
fi

if [ "${stage}" -le 4 ] && [ "${stop_stage}" -ge 4 ]; then
    log "stage 4: ${token_type} tokens, then the ASR probe on ${upstream} with ${asr_config} -> ${asr_exp}/asr_model" \
        "(marker: ${asr_exp}/.stage4.done)"
    [ -f data/.stage0.done ] || { log "error: data/.stage0.done is missing; run stage 0 first"; exit 1; }
    if [ ! -e "${upstream}" ]; then
        log "error: upstream ${upstream} not found. Fix: run stage 3 (it writes <distill_exp>/student), or pass" \
            "--upstream with any model dir, Hugging Face dir or checkpoint"
        exit 1
    fi
    train_set=$(. data/.stage0.done && echo "${train_set}")
    valid_set=$(. data/.stage0.done && echo "${valid_set}")
    token_opts=()
    token_dir=data/token_list/${token_type}
    if [ "${token_type}" = bpe ]; then
        token_dir=data/token_list/bpe_${bpemode}${nbpe}
        token_opts=(--vocab-size "${nbpe}" --model-type "${bpemode}")
    fi
    ${train_cmd} "exp/log/asr_tokenizer.$(basename "${token_dir}").log" python -m speechdistill.bin.asr_tokenizer \
        --token-type "${token_type}" --data "data/${train_set}" --out "${token_dir}" "${token_opts[@]}"
    log "  $(grep '^asr_tokenizer' "exp/log/asr_tokenizer.$(basename "${token_dir}").log" | tail -n 1)"
    upstream_sum=$(find -L "${upstream}" -type f ! -name '.*' -print0 | LC_ALL=C sort -z | xargs -0 cat | md5sum | cut -d' ' -f1)
    settings="config=${asr_config} $(md5sum < "${asr_config}" | cut -d' ' -f1) args=${asr_args} dump=${asr_dump_features}
upstream=${upstream} ${upstream_sum} tokens=${token_dir} $(md5sum < "${token_dir}/tokens.txt" | cut -d' ' -f1)
data=data/${train_set},data/${valid_set}"
    if [ "${redo}" = false ] && [ -f "${asr_exp}/.stage4.done" ] && [ -f "${asr_exp}/asr_model/model.safetensors" ] \
        && [ "$(cat "${asr_exp}/.stage4.done")" = "${settings}" ]; then
        log "${asr_exp}/asr_model already trained with these settings; kept (--redo true to train again)"
    else
        [ "${redo}" = true ] && rm -rf "${asr_exp}"
        feature_opts=()
        if [ "${asr_dump_features}" = true ]; then
            for dset in "${train_set}" "${valid_set}"; do
                ${train_cmd} --gpu "$((ngpu > 0 ? 1 : 0))" "${asr_exp}/log/dump_features.${dset}.log" \
                    python -m speechdistill.bin.dump_features --upstream "${upstream}" --data "data/${dset}" \
                    --out "${asr_exp}/dump/${dset}" --device "${asr_device}"
            done
            feature_opts=(--train_features "${asr_exp}/dump/${train_set}" --valid_features "${asr_exp}/dump/${valid_set}")
        fi
        log "  training (console: ${asr_exp}/log/asr_train.log; a rerun resumes from its checkpoints)"
        train=(-m speechdistill.bin.asr_train --config "${asr_config}" --train-data "data/${train_set}"
               --valid-data "data/${valid_set}" --upstream "${upstream}" --token-dir "${token_dir}"
               --output-dir "${asr_exp}" --device "${asr_device}" "${feature_opts[@]}")
        # shellcheck disable=SC2086  # asr_args is split into words, as ESPnet's --asr_args
        if [ "${ngpu}" -gt 1 ]; then
            ${cuda_cmd} --gpu "${ngpu}" "${asr_exp}/log/asr_train.log" \
                torchrun --standalone --nproc_per_node "${ngpu}" "${train[@]}" ${asr_args}
        else
            ${cuda_cmd} --gpu "${ngpu}" "${asr_exp}/log/asr_train.log" python "${train[@]}" ${asr_args}
        fi
        echo "${settings}" > "${asr_exp}/.stage4.done"
        log "stage 4 done: ${asr_exp}/asr_model ($(grep -o 'validation at update.*' "${asr_exp}/train.log" | tail -n 1))"
    fi
fi

if [ "${stage}" -le 5 ] && [ "${stop_stage}" -ge 5 ]; then
    log "stage 5: decode every test set under '${test_conditions}' with ${asr_exp}/asr_model -> ${asr_exp}/RESULTS.md"
    [ -f data/.stage0.done ] || { log "error: data/.stage0.done is missing; run stage 0 first"; exit 1; }
    if [ ! -f "${asr_exp}/asr_model/model.safetensors" ]; then
        log "error: no ASR model in ${asr_exp}/asr_model. Fix: run stage 4 first, with the same --upstream and" \
            "--asr_config (or pass --asr_exp)"
        exit 1
    fi
    eval_sets=$(. data/.stage0.done && echo "${test_sets}")
    noise_dir= rir_dir=
    if [ -f data/.stage1.done ]; then
        noise_dir=$(. data/.stage1.done && echo "${noise_dirs%% *}")  # the first listed: MUSAN noise
        rir_dir=$(. data/.stage1.done && echo "${rir_dir}")
    elif [[ " ${test_conditions} " == *" snr"* ]]; then
        log "  no data/.stage1.done: the snr conditions add white Gaussian noise (run stage 1 for MUSAN noise)"
    fi
    decode_tag=decode_greedy
    if [ -n "${decode_args}" ]; then
        decode_tag=decode_$(echo "${decode_args}" | sed -e 's/--//g' -e 's/[^A-Za-z0-9.]\{1,\}/_/g' -e 's/^_//' -e 's/_$//')
    fi
    for eval_set in ${eval_sets}; do
        for condition in ${test_conditions}; do
            out=${asr_exp}/${decode_tag}/${eval_set}/${condition}
            condition_opts=()
            case "${condition}" in
                snr*) [ -n "${noise_dir}" ] && condition_opts=(--noise-data "${noise_dir}") ;;
                reverb) [ -n "${rir_dir}" ] && condition_opts=(--rir-data "${rir_dir}") ;;
            esac
            # shellcheck disable=SC2086  # decode_args is split into words
            ${decode_cmd} --gpu "$((ngpu > 0 ? 1 : 0))" "${out}/log/asr_decode.log" \
                python -m speechdistill.bin.asr_decode --asr-model "${asr_exp}/asr_model" --data "data/${eval_set}" \
                --output-dir "${out}" --condition "${condition}" --seed "${condition_seed}" --device "${asr_device}" \
                "${condition_opts[@]}" ${decode_args}
            log "  $(grep '^asr_decode:' "${out}/log/asr_decode.log" | tail -n 1)"
        done
    done
    python -m speechdistill.bin.asr_score --exp-dir "${asr_exp}"
    log "stage 5 done: ${asr_exp}/RESULTS.md"
fi

log "done (stages ${stage}-${stop_stage})"
