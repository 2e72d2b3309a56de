#!/usr/bin/env bash
# LibriSpeech distillation recipe (RobustDistiller / DistilHuBERT-family students).
#
#   ./run.sh --stage 0 --stop_stage 1        # data, then noise and RIR dirs
#   ./run.sh --stage 2 --stop_stage 3 --teacher /path/to/hubert-base-ls960 --distill_config conf/distilhubert.yaml
#                                            # teacher import, then distillation (README: "Distillation")
#   ./run.sh --stage 4 --stop_stage 5 --ngpu 0 --asr_config conf/asr_mini.yaml --test_conditions "clean snr10 reverb"
#                                            # ASR probe on the stage-3 student (or --upstream DIR), decode, RESULTS.md
#   ./run.sh --stage 7 --stop_stage 7 --ngpu 1 # phoneme recognition (SUPERB PR) probe on the same upstreams
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
                                  # empty: keep a teacher imported earlier, else train a HuBERT-style teacher from
                                  # scratch on data/train (pretrain_config) in <teacher_dir>_pretrain (utils/teacher.sh)
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
# stage 7 (run it with --stop_stage 7): phoneme recognition, the SUPERB PR probe (egs/superb/probe, docs/superb.md)
pr_config=../../superb/probe/conf/pr.yaml  # the SUPERB preset (conf/demo/pr.yaml there: the mini corpus on a CPU)
pr_args=                          # extra probe_train options, e.g. "--max_steps 2000"
pr_lexicon=                       # lexicon files consulted before CMUdict (e.g. OpenSLR 11 librispeech-lexicon.txt)
pr_stress=remove                  # phones without (remove) or with (keep, s3prl libriphone's set) stress digits

. ./path.sh
. ./cmd.sh
. utils/parse_options.sh
. utils/recipe.sh  # log, stage0, markers, with_progress, pool; run_job / wait_jobs pass stop signals to the jobs

# a wrong --distill_config is reported before stages 0-2 spend hours
if [ "${stage}" -le 3 ] && [ "${stop_stage}" -ge 3 ] && [ ! -f "${distill_config}" ]; then
    log "error: --distill_config ${distill_config} does not exist. Fix: pick a method preset:" \
        "$(cd conf && ls ./*.yaml | sed 's|^\./|conf/|' | grep -v -e '^conf/asr_' -e '^conf/augment_' -e '_final.yaml' | paste -sd' ')"
    exit 1
fi
[ "${ngpu}" = auto ] && ngpu=$(python -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)
progress=false
if [ "${demo}" = true ]; then
    [ "${pr_config}" = ../../superb/probe/conf/pr.yaml ] && pr_config=../../superb/probe/conf/demo/pr.yaml
    # Every default the demo changes; options given on the command line still win where they are set.
    [ "${teacher_dir}" = exp/teacher ] && teacher_dir=exp/demo/teacher
    distill_exp=${distill_exp:-exp/demo/distill_$(basename "${distill_config}" .yaml)}
    [ "${asr_config}" = conf/asr_superb.yaml ] && asr_config=conf/demo/asr.yaml
    asr_dump_features=${asr_dump_features:-true}
    compare=true progress=true
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
job_opts=(--ngpu "${ngpu}" --cpus_per_gpu "${cpus_per_gpu}" --mem_per_gpu "${mem_per_gpu}" --redo "${redo}"
          --progress "${progress}")  # every training job's
train_opts=("${job_opts[@]}" --threads "${threads}")

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
    run_job utils/teacher.sh --teacher "${teacher}" --teacher_dir "${teacher_dir}" --pretrain_teacher true \
        --pretrain_config "${pretrain_config}" --pretrain_args "${pretrain_args}" --pretrain_dir "${teacher_dir}_pretrain" \
        --used_by "${distill_config}" "${train_opts[@]}"
fi

if [ "${stage}" -le 3 ] && [ "${stop_stage}" -ge 3 ]; then
    log "stage 3: distillation with ${distill_config} -> ${distill_exp}/student (marker: ${distill_exp}/.stage3.done)"
    if [ "${demo}" = true ]; then  # the method with its student sized to the demo teacher, the demo schedule
        distill_config=$(python -m speechdistill.bin.demo_config --config "${distill_config}" --teacher "${teacher_dir}" \
                         --overlay conf/demo/distill.yaml --out exp/demo/conf)
    fi
    run_job local/distill.sh --distill_config "${distill_config}" --teacher_dir "${teacher_dir}" \
        --distill_exp "${distill_exp}" --distill_args "${distill_args}" --num_nodes "${num_nodes}" \
        --random_student "${compare}" --seed "${seed}" "${train_opts[@]}"
fi

if [ "${stage}" -le 7 ] && [ "${stop_stage}" -ge 4 ]; then
    # Stages 4-7 find the upstreams and their probes' dirs the same way, so they can run separately.
    read -r -a upstreams <<< "${upstream:-${distill_exp}/student}"
    [ "${compare}" = true ] && upstreams+=("${teacher_dir}" "${distill_exp}/random_student")
    if [ "${#upstreams[@]}" -gt 1 ] && [ -n "${asr_exp}" ]; then
        log "error: --asr_exp names one experiment dir, but there are ${#upstreams[@]} upstreams (${upstreams[*]});" \
            "leave --asr_exp empty (each gets exp/<asr config name>_<upstream name>)"
        exit 1
    fi
    asr_exps=()
    for up in "${upstreams[@]}"; do
        name=$(basename "${up}")
        case "${name}" in
            student) name=$(basename "$(dirname "${up}")") ;;
            random_student) name=$(basename "$(dirname "${up}")")_random ;;
        esac
        asr_exps+=("${asr_exp:-$([ "${demo}" = true ] && echo exp/demo || echo exp)/$(basename "${asr_config}" .yaml)_${name//[^A-Za-z0-9._-]/_}}")
    done
fi

if [ "${stage}" -le 4 ] && [ "${stop_stage}" -ge 4 ]; then
    log "stage 4: ${token_type} tokens, then the ASR probe with ${asr_config} on ${upstreams[*]} (${asr_nj} at a time)"
    for up in "${upstreams[@]}"; do
        [ -e "${up}" ] || { log "error: upstream ${up} not found. Fix: run stage 3 (it writes <distill_exp>/student)," \
            "or pass --upstream with any model dir, Hugging Face dir or checkpoint"; exit 1; }
    done
    token_dir=data/token_list/${token_type} token_opts=()
    [ "${token_type}" = bpe ] && token_dir=data/token_list/bpe_${bpemode}${nbpe} \
        token_opts=(--vocab-size "${nbpe}" --model-type "${bpemode}")
    run_job ${train_cmd} "exp/log/asr_tokenizer.$(basename "${token_dir}").log" python -m speechdistill.bin.asr_tokenizer \
        --token-type "${token_type}" --data "data/$(stage0 train_set)" --out "${token_dir}" "${token_opts[@]}"
    log "$(grep '^asr_tokenizer' "exp/log/asr_tokenizer.$(basename "${token_dir}").log" | tail -n 1)"
    for i in "${!upstreams[@]}"; do
        pool "${asr_nj}" run_job local/asr_probe.sh --upstream "${upstreams[i]}" --asr_exp "${asr_exps[i]}" \
            --asr_config "${asr_config}" --asr_args "${asr_args}" --token_dir "${token_dir}" \
            --dump_features "${asr_dump_features:-false}" "${job_opts[@]}"
    done
    pool_wait || { rc=$?; log "error: an ASR probe failed; see the logs named above"; exit "${rc}"; }
    log "stage 4 done: ${asr_exps[*]}"
fi

if [ "${stage}" -le 5 ] && [ "${stop_stage}" -ge 5 ]; then
    log "stage 5: decode every test set under '${test_conditions}' with each ASR probe -> <asr_exp>/RESULTS.md"
    for exp in "${asr_exps[@]}"; do
        pool "${asr_nj}" run_job local/asr_decode.sh --asr_exp "${exp}" --test_conditions "${test_conditions}" \
            --condition_seed "${condition_seed}" --decode_args "${decode_args}" --ngpu "${ngpu}"
    done
    pool_wait || { rc=$?; log "error: a decode failed; see the logs named above"; exit "${rc}"; }
    log "stage 5 done: ${asr_exps[*]/%//RESULTS.md}"
fi

if [ "${stage}" -le 6 ] && [ "${stop_stage}" -ge 6 ]; then
    results_dir=${results_dir:-${distill_exp}}
    log "stage 6: teacher vs student vs random student -> ${results_dir}/RESULTS.md and PNGs"
    report_opts=()
    for i in "${!upstreams[@]}"; do
        case "${upstreams[i]}" in
            "${distill_exp}/student") report_opts+=(--asr-exp "student=${asr_exps[i]}") ;;
            "${distill_exp}/random_student") report_opts+=(--asr-exp "random student=${asr_exps[i]}") ;;
            "${teacher_dir}") report_opts+=(--asr-exp "teacher=${asr_exps[i]}") ;;
        esac
    done
    python -m speechdistill.bin.random_student --student "${distill_exp}/student" --out "${distill_exp}/random_student" \
        --seed "${seed}" --skip-if-current
    run_job ${train_cmd} "${results_dir}/log/distill_report.log" python -m speechdistill.bin.distill_report \
        --teacher "${teacher_dir}" --student "${distill_exp}/student" --random-student "${distill_exp}/random_student" \
        --distill-exp "${distill_exp}" --data "data/$(stage0 valid_set)" --out "${results_dir}" \
        --method "$(basename "${distill_config}" .yaml)" "${report_opts[@]}"
    printf '\n%s\n\n' "$(cat "${results_dir}/RESULTS.md")"
    log "stage 6 done: ${results_dir}/RESULTS.md, PNGs: $(cd "${results_dir}" && ls ./*.png | tr '\n' ' ')"
fi

if [ "${stage}" -le 7 ] && [ "${stop_stage}" -ge 7 ]; then
    log "stage 7: PR probes (${pr_config}) on ${upstreams[*]} -> <exp>/pr_<upstream>/eval/test/score.json"
    pr_sets=(train:"$(stage0 train_set)" dev:"$(stage0 valid_set)" test:"$(stage0 test_sets | cut -d' ' -f1)")
    for entry in "${pr_sets[@]}"; do  # data/pr_<split>: the same utterances with phones (CMUdict, stress removed)
        # shellcheck disable=SC2086  # pr_lexicon is a list of files
        python -m speechdistill.bin.prep_superb pr --data "data/${entry#*:}" --out "data/pr_${entry%%:*}" \
            --stress "${pr_stress}" ${pr_lexicon:+--lexicon ${pr_lexicon}}
    done
    for i in "${!upstreams[@]}"; do
        pool "${asr_nj}" ../../superb/probe/local/probe_task.sh --task pr --probe_config "${pr_config}" \
            --upstream "${upstreams[i]}" --train data/pr_train --dev data/pr_dev --test data/pr_test \
            --exp "${asr_exps[i]%/*}/pr_$(basename "${asr_exps[i]}" | sed "s/^$(basename "${asr_config}" .yaml)_//")" \
            --probe_args "${pr_args}" --ngpu "$((ngpu > 0 ? 1 : 0))" --redo "${redo}"
    done
    pool_wait || { log "error: a PR probe failed; see the logs named above"; exit 1; }
fi

log "done (stages ${stage}-${stop_stage})"
