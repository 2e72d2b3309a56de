#!/usr/bin/env bash
# `make demo-sv`: this recipe end to end on the embedded mini VoxCeleb, with no data and no downloads, in
# minutes on a CPU. Stages 0-2 once (mini corpora, mini noise/RIRs, a tiny HuBERT teacher pretrained from
# scratch because no --teacher is given), then stages 3-5 for every demo system (conf/demo/<system>.yaml ->
# exp/demo/<system>/, two trainings side by side), then exp/demo/RESULTS.md and exp/demo/det.png comparing
# them on the mini test trials, clean and under --test_conditions (the enrolment and test audio corrupted, the
# same audio for every system). Rerunnable: every stage keeps what is done (run.sh markers).
#
#   local/demo.sh                                        # what make demo-sv runs
#   local/demo.sh --systems "oskdft random_student"      # a subset of conf/demo/*.yaml
#   local/demo.sh --teacher ../../librispeech/distill/exp/teacher   # the teacher of `make demo` instead
#   local/demo.sh --mini_size tiny --sv_args "--max_steps 3" --pretrain_args "--max_steps 4"   # CI-sized
#   local/demo.sh --seeds 0                              # each student once (the default trains seeds 0 and 1)
#   local/demo.sh --test_conditions "clean snr5 babble"  # more noisy conditions in the table
#
# The two students (systems whose config trains an OS-KDFT student) are trained once per seed of --seeds
# (exp/demo/<system> for the first, exp/demo/<system>_seed<N> for the others), because one random
# initialisation decides several points of EER on the mini corpus; RESULTS.md has a row per run and the
# mean EER per system over the seeds. The baselines are trained once.
#
# The systems (see each conf/demo/<system>.yaml):
#   oskdft          OS-KDFT: the teacher's CNN + first 4 layers + adapters, distillation and speaker loss at once
#   random_student  the same architecture trained the same way, but randomly initialised (the control)
#   ecapa_fbank     ECAPA-TDNN on log-mel fbank (the classic baseline)
#   ssl_frozen      ECAPA-TDNN on a weighted sum of the frozen teacher's layers (the teacher's own features)
set -euo pipefail

systems="oskdft random_student ecapa_fbank ssl_frozen"
mini_size=default   # default (~30 min of training speech) or tiny (seconds; tests)
teacher=            # a teacher checkpoint to import instead of pretraining the tiny HuBERT in stage 2
pretrain_args=      # extra speechdistill.bin.pretrain_hubert options for the default teacher
sv_args=            # extra sv_train options for every system, e.g. "--max_steps 20"
parallel=2          # trainings at once (each one CPU thread; on a GPU they share it)
ngpu=auto           # as run.sh: auto = the visible CUDA GPUs, 0 = CPU
seeds="0 1"         # sv_train seeds of the students (oskdft, random_student); the baselines use the first
test_conditions="clean snr5"  # run.sh --test_conditions: clean first, then MUSAN noise of stage 1 at 5 dB SNR
demo_dir=exp/demo
progress_every=30   # seconds between progress lines while systems train

. ./path.sh
. utils/parse_options.sh

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (demo.sh) $*"; }
started=$(date +%s)
for system in ${systems}; do
    [ -f "conf/demo/${system}.yaml" ] || { log "error: no conf/demo/${system}.yaml; systems: $(cd conf/demo && ls -- *.yaml \
        | grep -v pretrain | sed 's/\.yaml$//' | paste -sd ' ')"; exit 1; }
done
# --seeds before any stage runs: a bad value would otherwise surface after the teacher's pretraining
read -r -a seed_list <<< "${seeds}"
[ "${#seed_list[@]}" -gt 0 ] || { log "error: --seeds is empty; give at least one seed, e.g. --seeds 0"; exit 1; }
for seed in "${seed_list[@]}"; do
    [[ "${seed}" =~ ^[0-9]+$ ]] || { log "error: --seeds takes non-negative integers, got '${seed}'"; exit 1; }
done
[ "$(printf '%s\n' "${seed_list[@]}" | sort -u | wc -l)" -eq "${#seed_list[@]}" ] \
    || { log "error: --seeds '${seeds}' repeats a seed (each seed is one run with its own exp dir)"; exit 1; }
read -r -a condition_list <<< "${test_conditions}"
[ "${condition_list[0]:-}" = clean ] || { log "error: --test_conditions '${test_conditions}' must start with clean" \
    "(the table compares the systems on clean trials first), e.g. \"clean snr5\""; exit 1; }
if [ "${ngpu}" = auto ]; then
    ngpu=$(python -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)')
fi
log "make demo-sv: OS-KDFT on the embedded mini VoxCeleb; systems: ${systems}; $([ "${ngpu}" -gt 0 ] \
    && echo "${ngpu} GPU(s)" || echo "CPU, ${parallel} trainings at a time")"

# progress NAME TRAIN_LOG...: the latest update line of each running training, every ${progress_every} s
# until the background jobs end
progress() {
    local waited=0 index line
    local -a pairs=("$@")
    while [ -n "$(jobs -r)" ]; do
        sleep 2
        waited=$((waited + 2))
        [ "${waited}" -ge "${progress_every}" ] || continue
        waited=0
        for ((index = 0; index + 1 < ${#pairs[@]}; index += 2)); do
            line=$(grep 'update [0-9]*/[0-9]* epoch' "${pairs[index + 1]}" 2> /dev/null | tail -n 1 \
                | sed -E 's/.*(update [0-9]+\/[0-9]+) epoch [0-9]+: (loss [^ ]+).*\| ([0-9.]+ audio-s\/s) \|.*/\1, \2, \3/' || true)
            log "  ${pairs[index]}: ${line:-starting}"
        done
    done
}

# stages 0-1: data, noise/RIRs; stage 2: the teacher (conf/demo/oskdft.yaml names a system that needs one)
./run.sh --stage 0 --stop_stage 1 --mini_size "${mini_size}" --ngpu "${ngpu}"
test_set=$(. data/.stage0.done && echo "${test_sets}")
[ "${test_set}" = test ] || { log "error: the demo runs on the mini corpus, but db.sh selects real VoxCeleb" \
    "(test sets: ${test_set}); use run.sh for real data"; exit 1; }
./run.sh --stage 2 --stop_stage 2 --ngpu "${ngpu}" --sv_config conf/demo/oskdft.yaml \
    --pretrain_args "${pretrain_args}" ${teacher:+--teacher "${teacher}"} &
stage2=$!
progress teacher exp/pretrain_hubert/train.log
wait "${stage2}" || { log "error: stage 2 failed (see exp/pretrain_hubert/log/pretrain_hubert.log, exp/log/import_teacher.log)"; exit 1; }
teacher_line=$(grep '^teacher=' exp/teacher/.stage2.done)

# the runs: "<name> <system> <seed>", every seed of the students first (they take longest), then the baselines
is_student() { grep -q '^system: oskdft' "conf/demo/$1.yaml"; }
runs=()
for index in "${!seed_list[@]}"; do
    for system in ${systems}; do
        is_student "${system}" || continue
        name=${system}
        [ "${index}" -eq 0 ] || name=${system}_seed${seed_list[${index}]}
        runs+=("${name} ${system} ${seed_list[${index}]}")
    done
done
for system in ${systems}; do
    is_student "${system}" || runs+=("${system} ${system} ${seed_list[0]}")
done

# stages 3-5 for every run, ${parallel} at a time
mkdir -p "${demo_dir}/log"
set -- "${runs[@]}"
while [ $# -gt 0 ]; do
    batch=()
    pids=()
    while [ $# -gt 0 ] && [ "${#batch[@]}" -lt "${parallel}" ]; do
        read -r name system seed <<< "$1"
        shift
        batch+=("${name}")
        log "${name}: run.sh stages 3-5 with conf/demo/${system}.yaml, seed ${seed} -> ${demo_dir}/${name} (log: ${demo_dir}/log/${name}.log)"
        ./run.sh --stage 3 --stop_stage 5 --ngpu "${ngpu}" --sv_config "conf/demo/${system}.yaml" \
            --sv_exp "${demo_dir}/${name}" --sv_args "--seed ${seed} ${sv_args}" \
            --test_conditions "${test_conditions}" > "${demo_dir}/log/${name}.log" 2>&1 &
        pids+=($!)
    done
    watched=()
    for name in "${batch[@]}"; do
        watched+=("${name}" "${demo_dir}/${name}/train.log")
    done
    progress "${watched[@]}"
    for index in "${!batch[@]}"; do
        if ! wait "${pids[${index}]}"; then
            log "error: ${batch[${index}]} failed; the end of ${demo_dir}/log/${batch[${index}]}.log:"
            tail -n 20 "${demo_dir}/log/${batch[${index}]}.log" >&2
            exit 1
        fi
        eers=()
        for condition in "${condition_list[@]}"; do
            score_name=${test_set}$([ "${condition}" = clean ] || echo "_${condition}")
            eers+=("${condition} $(grep -o 'EER = .*' "${demo_dir}/${batch[${index}]}/scores/${score_name}.eer" | head -n 1)")
        done
        log "${batch[${index}]}: $(IFS=,; echo "${eers[*]}" | sed 's/,/, /g')"
    done
done

# exp/demo/RESULTS.md: one row per run, one DET figure, the mean EER of each student over the seeds
args=()
times=()
means=()
for run in "${runs[@]}"; do
    read -r name system seed <<< "${run}"
    args+=(--system "${name}" "${demo_dir}/${name}/scores/${test_set}.score" "data/${test_set}/trials"
           "${demo_dir}/${name}/sv_model")
    for condition in "${condition_list[@]:1}"; do
        args+=(--system-condition "${name}" "${condition}" "${demo_dir}/${name}/scores/${test_set}_${condition}.score")
    done
    train_seconds=$(awk '$1 == 3 {print $2}' "${demo_dir}/${name}/stage_times.txt" 2> /dev/null || true)
    times+=("${name} ${train_seconds:-?} s")
done
for system in ${systems}; do
    is_student "${system}" || continue
    eers=()
    for run in "${runs[@]}"; do
        read -r name run_system seed <<< "${run}"
        [ "${run_system}" = "${system}" ] || continue
        eers+=("$(sed -nE 's/.*EER = ([0-9.]+).*/\1/p' "${demo_dir}/${name}/scores/${test_set}.eer" | head -n 1)")
    done
    means+=("${system} $(printf '%s\n' "${eers[@]}" | awk '{sum += $1} END {printf "%.3f", sum / NR}') % ($(IFS=/; echo "${eers[*]}"))")
done
elapsed=$(($(date +%s) - started))
python -m speechdistill.bin.sv_results --output "${demo_dir}/RESULTS.md" --det "${demo_dir}/det.png" \
    --title "make demo-sv: OS-KDFT on the embedded mini VoxCeleb" "${args[@]}" \
    --note "data: the embedded mini VoxCeleb (synthesized voices, not real speech; ${mini_size} size): training on data/train, trials data/${test_set}/trials (speakers unseen in training)" \
    --note "teacher: ${teacher_line#teacher=} ($(grep -q '^pretrained=' exp/teacher/.stage2.done \
        && echo "a tiny HuBERT pretrained from scratch on data/train in stage 2" || echo "imported in stage 2"))" \
    --note "random_student: the oskdft student's architecture, trained the same way (same teacher, distillation term, speaker loss, schedule, augmentation) from a random initialisation; the EER gap is what the teacher's weights give" \
    --note "configs: conf/demo/<system>.yaml$([ -n "${sv_args}" ] && echo " with ${sv_args}"); <system>_seed<N>: the same with sv_train --seed N (the others: seed ${seed_list[0]}); embeddings: whole utterance; scoring: cosine" \
    --note "$(grep -h '^- test conditions' "${demo_dir}/${runs[0]%% *}/RESULTS.md" | sed 's/^- //')" \
    ${means[0]:+--note "mean EER over seeds ${seeds}: $(IFS=,; echo "${means[*]}" | sed 's/,/, /g')"} \
    --note "stage 3 (training) time: $(IFS=,; echo "${times[*]}" | sed 's/,/, /g'); whole demo: ${elapsed} s" \
    > "${demo_dir}/table.md"
log "wrote ${demo_dir}/RESULTS.md and ${demo_dir}/det.png (DET curves) in ${elapsed} s:"
echo
cat "${demo_dir}/table.md"
echo
[ "${#means[@]}" -eq 0 ] || echo "mean EER over seeds ${seeds}: $(IFS=,; echo "${means[*]}" | sed 's/,/, /g')"
