#!/usr/bin/env bash
# LibriSpeech distillation recipe (RobustDistiller / DistilHuBERT-family students).
#
#   ./run.sh --stage 0 --stop_stage 1        # data, then noise and RIR dirs
#   ./run.sh --stage 2 --stop_stage 3 --teacher /path/to/hubert-base-ls960 --distill_config conf/distilhubert.yaml
#                                            # teacher import, then distillation (README: "Distillation")
#   ./run.sh --stage 4 --stop_stage 5 --ngpu 0 --asr_config conf/asr_mini.yaml --test_conditions "clean snr10 reverb"
#                                            # ASR probe on the stage-3 student (or --upstream DIR), decode, RESULTS.md
#   ./run.sh --demo true                     # stages 0-6 on the embedded mini corpora with a teacher trained here
#                                            # from scratch, in minutes on a CPU (README: "Quick start")
#
# Corpora come from db.sh; an empty variable selects the embedded mini corpus (synthesized,
# built under ${mini_dir}). See README.md for the data dirs each stage writes.
set -euo pipefail

stage=0
stop_stage=6                      # default: the last stage
demo=false                        # true: the embedded demo: teacher trained from scratch, the method scaled to it
                                  # (conf/demo/), probes on student, teacher and a random student; all under exp/demo
nj=2                              # parallel processes for data preparation
train_sets="train-clean-100"      # real LibriSpeech parts merged into data/train
dev_sets="dev-clean"              # real parts merged into data/dev
test_sets="test-clean test-other" # real parts, each its own data/<part with _>
mini_dir=downloads/mini           # where mini corpora are synthesized when db.sh leaves a corpus empty
mini_size=default                 # default (about 30 min of training speech) or tiny (seconds; tests)
seed=0                            # seed of the mini corpora
# stages 2-3: teacher and distillation
teacher=                          # stage 2: teacher checkpoint: Hugging Face dir, fairseq .pt or s3prl checkpoint;
                                  # empty: train a HuBERT-style teacher from scratch on data/train (pretrain_config)
pretrain_config=conf/demo/pretrain_hubert.yaml  # stage 2 without --teacher: pretrain_hubert config
pretrain_args=                    # extra pretrain_hubert options, e.g. "--max_steps 50"
teacher_dir=exp/teacher           # stage 2 writes the imported teacher here (our model dir); stage 3 reads it
distill_config=conf/distilhubert.yaml  # stage 3: method preset, conf/<method>.yaml
distill_exp=                      # stage 3 output dir (default: exp/distill_<config name>)
distill_args=                     # extra distill_train options, e.g. "--max_steps 20 --batch_seconds 2"
ngpu=auto                         # GPUs per node; auto = the visible CUDA GPUs (0 on a CPU machine); 0 trains on
                                  # CPU; >1 starts one process per GPU (torchrun)
threads=0                         # CPU threads of each training job (0: torch's default, 1 under path.sh)
num_nodes=1                       # >1: one srun task per GPU on every node (needs cmd_backend=slurm)
cpus_per_gpu=4                    # CPUs of each training process (one per GPU; the one of a CPU job) on a cluster
mem_per_gpu=32                    # GB of memory of each training process on a cluster (--mem per node = sum)
redo=false                        # true: redo stages 2-3 even where their markers say they are done
# stages 4-5: ASR downstream (SUPERB-style probe on frozen features; README: "ASR downstream")
upstream=                         # frozen upstream(s), space-separated (any model load_model reads); default:
                                  # <distill_exp>/student of stage 3
compare=false                     # true: stages 4-6 also run on the teacher and on a randomly initialised student of
                                  # the student's architecture (stage 3 writes <distill_exp>/random_student)
asr_config=conf/asr_superb.yaml   # stage 4: probe config, conf/asr_*.yaml (conf/asr_mini.yaml: fast, mini corpus on CPU)
asr_exp=                          # stages 4-5 dir (default: exp/<asr config name>_<upstream name>)
asr_args=                         # extra asr_train options, e.g. "--max_steps 30 --batch_seconds 20"
token_type=char                   # char (SUPERB) or bpe (SentencePiece trained on data/train)
nbpe=5000                         # bpe vocabulary size (ESPnet LibriSpeech: 5000; the mini corpus: 300 works, 1000 fails)
bpemode=unigram                   # SentencePiece model type for bpe
asr_nj=1                          # stage 4: probes trained at once when there are several upstreams
asr_dump_features=                # true: dump the upstream's hidden states once (<asr_exp>/dump) and train on them
                                  # (default false; true with --demo true)
decode_args=                      # extra asr_decode options, e.g. "--beam-size 10" (names the decode dir)
test_conditions=clean             # stage 5: any of "clean snr20 snr10 snr5 snr0 reverb babble" (noise, RIRs and
                                  # speech of stage 1)
condition_seed=0                  # stage 5: seed of the corrupted test audio, the same for every model
results_dir=                      # stage 6: where RESULTS.md and the PNGs go (default: exp/demo with --demo true,
                                  # else <distill_exp>)

. ./path.sh
. ./cmd.sh
. utils/parse_options.sh
. utils/stop_signals.sh  # run_job, wait_jobs: SIGTERM/SIGINT reach the jobs (a checkpointing trainer: exit 99)

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (${BASH_SOURCE[1]##*/}:${BASH_LINENO[0]}) $*"; }
# with_progress FILE CMD...: run_job CMD; with --demo true, also show the lines it writes to FILE (the
# trainer's train.log: loss, throughput, validation) while it runs, so that a newcomer sees the run move.
with_progress() {
    if [ "${demo}" != true ]; then run_job "${@:2}"; return; fi
    local file=$1 alive tail_pid rc=0
    shift
    sleep 100000 &  # tail follows the file while this lives
    alive=$!
    tail -n 0 -F --pid="${alive}" "${file}" 2> /dev/null | sed -u "s/^/    | ${progress_label:+${progress_label}: }/" &
    tail_pid=$!
    run_job "$@" || rc=$?
    kill "${alive}" 2> /dev/null || true
    wait "${tail_pid}" || true
    return "${rc}"
}
# training jobs: CPUs and memory per process on a cluster (utils/launch_training.sh)
train_resources=(--cpus_per_gpu "${cpus_per_gpu}" --mem_per_gpu "${mem_per_gpu}")

# a wrong --distill_config is reported before stages 0-2 spend hours
if [ "${stage}" -le 3 ] && [ "${stop_stage}" -ge 3 ] && [ ! -f "${distill_config}" ]; then
    log "error: --distill_config ${distill_config} does not exist. Fix: pick a method preset:" \
        "$(cd conf && ls ./*.yaml | sed 's|^\./|conf/|' | grep -v -e '^conf/asr_' -e '^conf/augment_' -e '_final.yaml' | paste -sd' ')"
    exit 1
fi
if [ "${ngpu}" = auto ]; then
    ngpu=$(python -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)
fi
if [ "${demo}" = true ]; then
    # Every default the demo changes; options given on the command line still win where they are set.
    [ "${teacher_dir}" = exp/teacher ] && teacher_dir=exp/demo/teacher
    distill_exp=${distill_exp:-exp/demo/distill_$(basename "${distill_config}" .yaml)}
    [ "${asr_config}" = conf/asr_superb.yaml ] && asr_config=conf/demo/asr.yaml
    asr_dump_features=${asr_dump_features:-true}
    compare=true
    results_dir=${results_dir:-exp/demo}
    [ "${asr_nj}" = 1 ] && [ "${ngpu}" = 0 ] && asr_nj=3  # the three single-threaded probes side by side
    if [ "${threads}" = 0 ]; then  # the CPUs this process may use (nproc alone obeys path.sh's OMP_NUM_THREADS=1)
        threads=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
        [ "${threads}" -gt 4 ] && threads=4
    fi
    log "demo: ${distill_config} scaled to a teacher trained here (${pretrain_config}), ngpu ${ngpu}," \
        "${threads} thread(s) per job; everything under exp/demo"
fi
distill_exp=${distill_exp:-exp/distill_$(basename "${distill_config}" .yaml)}
asr_dump_features=${asr_dump_features:-false}
thread_opts=()
[ "${threads}" -gt 0 ] && thread_opts=(--threads "${threads}")

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
    teacher_md5=
    if [ -z "${teacher}" ] && [ "${redo}" = false ] && [ -f "${teacher_dir}/.stage2.done" ] \
        && ! grep -q '^teacher_md5=' "${teacher_dir}/.stage2.done"; then
        log "no --teacher given; keeping the teacher imported earlier: $(grep '^teacher=' "${teacher_dir}/.stage2.done")"
    else
        if [ -z "${teacher}" ]; then
            # No teacher given: HuBERT's first iteration from scratch on data/train (k-means units of MFCCs,
            # masked prediction), exported as a Hugging Face dir and imported below like any real teacher.
            [ -f data/.stage0.done ] || { log "error: data/.stage0.done is missing; run stage 0 first"; exit 1; }
            train_set=$(. data/.stage0.done && echo "${train_set}")
            valid_set=$(. data/.stage0.done && echo "${valid_set}")
            pretrain_dir=${teacher_dir}_pretrain
            settings="config=${pretrain_config} $(md5sum < "${pretrain_config}" | cut -d' ' -f1) args=${pretrain_args}
data=data/${train_set},data/${valid_set}"
            if [ "${redo}" = false ] && [ -f "${pretrain_dir}/.done" ] && [ -f "${pretrain_dir}/hf/model.safetensors" ] \
                && [ "$(cat "${pretrain_dir}/.done")" = "${settings}" ]; then
                log "  no --teacher given: ${pretrain_dir}/hf was trained with these settings; kept"
            else
                [ "${redo}" = true ] && rm -rf "${pretrain_dir}"
                device=$([ "${ngpu}" -gt 0 ] && echo cuda || echo cpu)
                log "  no --teacher given: training a HuBERT-style teacher from scratch with ${pretrain_config}" \
                    "-> ${pretrain_dir}/hf (console: ${pretrain_dir}/log/pretrain_hubert.log; progress: ${pretrain_dir}/train.log)"
                # shellcheck disable=SC2086  # pretrain_args is split into words
                with_progress "${pretrain_dir}/train.log" utils/launch_training.sh --cmd "${cuda_cmd}" \
                    --ngpu "$((ngpu > 0 ? 1 : 0))" "${train_resources[@]}" "${pretrain_dir}/log/pretrain_hubert.log" \
                    python -m speechdistill.bin.pretrain_hubert --config "${pretrain_config}" \
                    --train-data "data/${train_set}" --valid-data "data/${valid_set}" --output-dir "${pretrain_dir}" \
                    --device "${device}" "${thread_opts[@]}" ${pretrain_args}
                grep -h 'validation at update' "${pretrain_dir}/train.log" | tail -n 1 | sed 's/^/    /' || true
                echo "${settings}" > "${pretrain_dir}/.done"
            fi
            teacher=${pretrain_dir}/hf
            teacher_md5=$(md5sum < "${teacher}/model.safetensors" | cut -d' ' -f1)
        fi
        teacher_src=$(cd "$(dirname "${teacher}")" && pwd -P)/$(basename "${teacher}")
        marker="teacher=${teacher_src}"
        [ -n "${teacher_md5}" ] && marker="${marker}
teacher_md5=${teacher_md5}"
        if [ "${redo}" = false ] && [ -f "${teacher_dir}/.stage2.done" ] \
            && [ "$(cat "${teacher_dir}/.stage2.done")" = "${marker}" ]; then
            log "${teacher_dir} already holds ${teacher_src}; kept"
        else
            # import_teacher checks the checkpoint (format, architecture, every weight's name and shape)
            import_log=exp/log/import_$(basename "${teacher_dir}").log
            run_job ${train_cmd} "${import_log}" \
                python -m speechdistill.bin.import_teacher --src "${teacher_src}" --out "${teacher_dir}" --force
            grep -E '"(format|architecture|shape|params)"' "${import_log}" | sed 's/^ */    /' || true
            echo "${marker}" > "${teacher_dir}/.stage2.done"
        fi
    fi
fi

if [ "${stage}" -le 3 ] && [ "${stop_stage}" -ge 3 ]; then
    log "stage 3: distillation with ${distill_config} -> ${distill_exp}/student (marker: ${distill_exp}/.stage3.done)"
    [ -f "${teacher_dir}/.stage2.done" ] || { log "error: no teacher in ${teacher_dir}; run stage 2 first"; exit 1; }
    if [ "${demo}" = true ]; then
        # The same method with its student sized to the demo teacher and the demo schedule (conf/demo/distill.yaml)
        demo_conf_dir=exp/demo/conf
        python -m speechdistill.bin.demo_config --config "${distill_config}" --teacher "${teacher_dir}" \
            --overlay conf/demo/distill.yaml --out "${demo_conf_dir}"
        distill_config=${demo_conf_dir}/$(basename "${distill_config}")
    fi
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
        [ -f "${configs[-1]}" ] || { log "error: ${configs[-2]} names next_stage: ${next}, but ${configs[-1]} does" \
            "not exist. Fix: put ${next} beside it or correct next_stage"; exit 1; }
    done
    settings="configs=${configs[*]} $(cat "${configs[@]}" | md5sum | cut -d' ' -f1) args=${distill_args}
$(paste -sd' ' "${teacher_dir}/.stage2.done") data=data/${train_set},data/${valid_set}"
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
                   --device "${device}" "${student_from[@]}" "${thread_opts[@]}")
            # one process, torchrun with one rank per GPU, or srun with one rank per GPU on every node
            # shellcheck disable=SC2086  # distill_args is split into words, as ESPnet's --asr_args
            with_progress "${out}/train.log" utils/launch_training.sh --cmd "${cuda_cmd}" --ngpu "${ngpu}" \
                --num_nodes "${num_nodes}" "${train_resources[@]}" "${out}/log/distill_train.log" \
                python "${train[@]}" ${distill_args}
            student_from=(--student_from "${out}/student")
        done
        { echo "${settings}"; echo "student=${distill_exp}/student"; } > "${distill_exp}/.stage3.done"
        log "stage 3 done: ${distill_exp}/student ($(grep -o '"student_params": [0-9]*' "${distill_exp}/distill_summary.json" || true))"
    fi
    if [ "${compare}" = true ] && { [ ! -f "${distill_exp}/random_student/model.safetensors" ] \
        || [ "${distill_exp}/student/model.safetensors" -nt "${distill_exp}/random_student/model.safetensors" ]; }; then
        # The baseline of stages 4-6: the student's architecture (and heads) at its random initialisation
        python -m speechdistill.bin.random_student --student "${distill_exp}/student" \
            --out "${distill_exp}/random_student" --seed "${seed}"
    fi
fi

if [ "${stage}" -le 6 ] && [ "${stop_stage}" -ge 4 ]; then
    # Stages 4-6 find the upstreams and the experiment dirs the same way, so they can run separately.
    read -r -a upstreams <<< "${upstream:-${distill_exp}/student}"
    [ "${compare}" = true ] && upstreams+=("${teacher_dir}" "${distill_exp}/random_student")
    if [ "${#upstreams[@]}" -gt 1 ] && [ -n "${asr_exp}" ]; then
        log "error: --asr_exp names one experiment dir, but there are ${#upstreams[@]} upstreams (${upstreams[*]});" \
            "leave --asr_exp empty (each gets exp/<asr config name>_<upstream name>)"
        exit 1
    fi
    asr_exp_root=$([ "${demo}" = true ] && echo exp/demo || echo exp)
    asr_exps=()
    for up in "${upstreams[@]}"; do
        upstream_name=$(basename "${up}")
        case "${upstream_name}" in
            student) upstream_name=$(basename "$(dirname "${up}")") ;;
            random_student) upstream_name=$(basename "$(dirname "${up}")")_random ;;
        esac
        asr_exps+=("${asr_exp:-${asr_exp_root}/$(basename "${asr_config}" .yaml)_${upstream_name//[^A-Za-z0-9._-]/_}}")
    done
    asr_device=$([ "${ngpu}" -gt 0 ] && echo cuda || echo cpu)
fi

if [ "${stage}" -le 4 ] && [ "${stop_stage}" -ge 4 ]; then
    log "stage 4: ${token_type} tokens, then the ASR probe with ${asr_config} on ${upstreams[*]} (${asr_nj} at a time)"
    [ -f data/.stage0.done ] || { log "error: data/.stage0.done is missing; run stage 0 first"; exit 1; }
    for upstream in "${upstreams[@]}"; do
        if [ ! -e "${upstream}" ]; then
            log "error: upstream ${upstream} not found. Fix: run stage 3 (it writes <distill_exp>/student), or pass" \
                "--upstream with any model dir, Hugging Face dir or checkpoint"
            exit 1
        fi
    done
    train_set=$(. data/.stage0.done && echo "${train_set}")
    valid_set=$(. data/.stage0.done && echo "${valid_set}")
    token_opts=()
    token_dir=data/token_list/${token_type}
    if [ "${token_type}" = bpe ]; then
        token_dir=data/token_list/bpe_${bpemode}${nbpe}
        token_opts=(--vocab-size "${nbpe}" --model-type "${bpemode}")
    fi
    run_job ${train_cmd} "exp/log/asr_tokenizer.$(basename "${token_dir}").log" python -m speechdistill.bin.asr_tokenizer \
        --token-type "${token_type}" --data "data/${train_set}" --out "${token_dir}" "${token_opts[@]}"
    log "  $(grep '^asr_tokenizer' "exp/log/asr_tokenizer.$(basename "${token_dir}").log" | tail -n 1)"

    # asr_probe UPSTREAM ASR_EXP: features (optionally dumped), then the probe; skipped when up to date
    asr_probe() {
        local upstream=$1 asr_exp=$2 progress_label
        progress_label=$(basename "${asr_exp}")
        log "  probe on ${upstream} -> ${asr_exp}/asr_model (marker: ${asr_exp}/.stage4.done)"
        upstream_sum=$(find -L "${upstream}" -type f ! -name '.*' -print0 | LC_ALL=C sort -z | xargs -0 cat | md5sum | cut -d' ' -f1)
        settings="config=${asr_config} $(md5sum < "${asr_config}" | cut -d' ' -f1) args=${asr_args} dump=${asr_dump_features}
upstream=${upstream} ${upstream_sum} tokens=${token_dir} $(md5sum < "${token_dir}/tokens.txt" | cut -d' ' -f1)
data=data/${train_set},data/${valid_set}"
        if [ "${redo}" = false ] && [ -f "${asr_exp}/.stage4.done" ] && [ -f "${asr_exp}/asr_model/model.safetensors" ] \
            && [ "$(cat "${asr_exp}/.stage4.done")" = "${settings}" ]; then
            log "${asr_exp}/asr_model already trained with these settings; kept (--redo true to train again)"
            return 0
        fi
        [ "${redo}" = true ] && rm -rf "${asr_exp}"
        feature_opts=()
        if [ "${asr_dump_features}" = true ]; then
            for dset in "${train_set}" "${valid_set}"; do
                run_job ${train_cmd} --gpu "$((ngpu > 0 ? 1 : 0))" "${asr_exp}/log/dump_features.${dset}.log" \
                    python -m speechdistill.bin.dump_features --upstream "${upstream}" --data "data/${dset}" \
                    --out "${asr_exp}/dump/${dset}" --device "${asr_device}"
            done
            feature_opts=(--train_features "${asr_exp}/dump/${train_set}" --valid_features "${asr_exp}/dump/${valid_set}")
        fi
        log "  training ${asr_exp} (console: ${asr_exp}/log/asr_train.log; a rerun resumes from its checkpoints)"
        train=(-m speechdistill.bin.asr_train --config "${asr_config}" --train-data "data/${train_set}"
               --valid-data "data/${valid_set}" --upstream "${upstream}" --token-dir "${token_dir}"
               --output-dir "${asr_exp}" --device "${asr_device}" "${feature_opts[@]}")
        # shellcheck disable=SC2086  # asr_args is split into words, as ESPnet's --asr_args
        with_progress "${asr_exp}/train.log" utils/launch_training.sh --cmd "${cuda_cmd}" --ngpu "${ngpu}" \
            "${train_resources[@]}" "${asr_exp}/log/asr_train.log" python "${train[@]}" ${asr_args}
        echo "${settings}" > "${asr_exp}/.stage4.done"
        log "  probe done: ${asr_exp}/asr_model ($(grep -o 'validation at update.*' "${asr_exp}/train.log" | tail -n 1))"
    }
    pids=()
    for i in "${!upstreams[@]}"; do
        if [ "${asr_nj}" -le 1 ]; then
            asr_probe "${upstreams[i]}" "${asr_exps[i]}"
            continue
        fi
        while [ "$(jobs -pr | wc -l)" -ge "${asr_nj}" ]; do sleep 1; done
        asr_probe "${upstreams[i]}" "${asr_exps[i]}" &
        pids+=($!)
    done
    failed=0
    wait_jobs "${pids[@]}" || failed=$?
    [ "${failed}" = 0 ] || { log "error: an ASR probe failed; see the logs named above"; exit "${failed}"; }
    log "stage 4 done: ${asr_exps[*]}"
fi

if [ "${stage}" -le 5 ] && [ "${stop_stage}" -ge 5 ]; then
    log "stage 5: decode every test set under '${test_conditions}' with each ASR probe -> <asr_exp>/RESULTS.md" \
        "(${asr_exps[*]})"
    [ -f data/.stage0.done ] || { log "error: data/.stage0.done is missing; run stage 0 first"; exit 1; }
    eval_sets=$(. data/.stage0.done && echo "${test_sets}")
    noise_dir= rir_dir= babble_dir=
    if [ -f data/.stage1.done ]; then
        noise_dir=$(. data/.stage1.done && echo "${noise_dirs%% *}")  # the first listed: MUSAN noise
        rir_dir=$(. data/.stage1.done && echo "${rir_dir}")
        babble_dir=$(. data/.stage1.done && echo "${noise_dirs##* }")  # the last listed: MUSAN speech
    elif [[ " ${test_conditions} " == *" snr"* ]]; then
        log "  no data/.stage1.done: the snr conditions add white Gaussian noise (run stage 1 for MUSAN noise)"
    fi
    decode_tag=decode_greedy
    if [ -n "${decode_args}" ]; then
        decode_tag=decode_$(echo "${decode_args}" | sed -e 's/--//g' -e 's/[^A-Za-z0-9.]\{1,\}/_/g' -e 's/^_//' -e 's/_$//')
    fi
    # asr_decode_all ASR_EXP: every test set under every condition, then scoring
    asr_decode_all() {
        local asr_exp=$1
        for eval_set in ${eval_sets}; do
            for condition in ${test_conditions}; do
                out=${asr_exp}/${decode_tag}/${eval_set}/${condition}
                condition_opts=()
                case "${condition}" in
                    snr*) [ -n "${noise_dir}" ] && condition_opts=(--noise-data "${noise_dir}") ;;
                    reverb) [ -n "${rir_dir}" ] && condition_opts=(--rir-data "${rir_dir}") ;;
                    babble*) [ -n "${babble_dir}" ] && condition_opts=(--babble-data "${babble_dir}") ;;
                esac
                # shellcheck disable=SC2086  # decode_args is split into words
                run_job ${decode_cmd} --gpu "$((ngpu > 0 ? 1 : 0))" "${out}/log/asr_decode.log" \
                    python -m speechdistill.bin.asr_decode --asr-model "${asr_exp}/asr_model" --data "data/${eval_set}" \
                    --output-dir "${out}" --condition "${condition}" --seed "${condition_seed}" --device "${asr_device}" \
                    "${condition_opts[@]}" ${decode_args}
                log "  $(grep '^asr_decode:' "${out}/log/asr_decode.log" | tail -n 1)"
            done
        done
        python -m speechdistill.bin.asr_score --exp-dir "${asr_exp}"
        log "  ${asr_exp}/RESULTS.md written"
    }
    for i in "${!upstreams[@]}"; do
        if [ ! -f "${asr_exps[i]}/asr_model/model.safetensors" ]; then
            log "error: no ASR model in ${asr_exps[i]}/asr_model. Fix: run stage 4 first, with the same --upstream and" \
                "--asr_config (or pass --asr_exp)"
            exit 1
        fi
    done
    pids=()
    for i in "${!upstreams[@]}"; do
        if [ "${asr_nj}" -le 1 ]; then
            asr_decode_all "${asr_exps[i]}"
            continue
        fi
        while [ "$(jobs -pr | wc -l)" -ge "${asr_nj}" ]; do sleep 1; done
        asr_decode_all "${asr_exps[i]}" &
        pids+=($!)
    done
    failed=0
    wait_jobs "${pids[@]}" || failed=$?
    [ "${failed}" = 0 ] || { log "error: a decode failed; see the logs named above"; exit "${failed}"; }
    log "stage 5 done: ${asr_exps[*]/%//RESULTS.md}"
fi

if [ "${stage}" -le 6 ] && [ "${stop_stage}" -ge 6 ]; then
    results_dir=${results_dir:-${distill_exp}}
    log "stage 6: teacher vs student vs random student -> ${results_dir}/RESULTS.md and PNGs"
    [ -f data/.stage0.done ] || { log "error: data/.stage0.done is missing; run stage 0 first"; exit 1; }
    valid_set=$(. data/.stage0.done && echo "${valid_set}")
    if [ ! -f "${distill_exp}/random_student/model.safetensors" ] \
        || [ "${distill_exp}/student/model.safetensors" -nt "${distill_exp}/random_student/model.safetensors" ]; then
        python -m speechdistill.bin.random_student --student "${distill_exp}/student" \
            --out "${distill_exp}/random_student" --seed "${seed}"
    fi
    report_opts=()
    for i in "${!upstreams[@]}"; do
        case "${upstreams[i]}" in
            "${distill_exp}/student") report_opts+=(--asr-exp "student=${asr_exps[i]}") ;;
            "${distill_exp}/random_student") report_opts+=(--asr-exp "random student=${asr_exps[i]}") ;;
            "${teacher_dir}") report_opts+=(--asr-exp "teacher=${asr_exps[i]}") ;;
        esac
    done
    run_job ${train_cmd} "${results_dir}/log/distill_report.log" python -m speechdistill.bin.distill_report \
        --teacher "${teacher_dir}" --student "${distill_exp}/student" --random-student "${distill_exp}/random_student" \
        --distill-exp "${distill_exp}" --data "data/${valid_set}" --out "${results_dir}" \
        --method "$(basename "${distill_config}" .yaml)" "${report_opts[@]}"
    echo
    cat "${results_dir}/RESULTS.md"
    echo
    log "stage 6 done: ${results_dir}/RESULTS.md, PNGs: $(cd "${results_dir}" && ls ./*.png | tr '\n' ' ')"
fi

log "done (stages ${stage}-${stop_stage})"
