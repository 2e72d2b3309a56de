#!/usr/bin/env bash
# `make demo-sv`: this recipe end to end on the embedded mini VoxCeleb, with no data and no downloads, in
# minutes on a CPU. Stages 0-2 once (mini corpora, mini noise/RIRs, a tiny HuBERT teacher pretrained from
# scratch because no --teacher is given), then stages 3-5 for every demo system (conf/demo/<system>.yaml ->
# exp/demo/<system>/, two trainings side by side), then exp/demo/RESULTS.md and exp/demo/det.png comparing
# them on the mini test trials. Rerunnable: every stage keeps what is done (run.sh markers).
#
#   local/demo.sh                                        # what make demo-sv runs
#   local/demo.sh --systems "oskdft random_student"      # a subset of conf/demo/*.yaml
#   local/demo.sh --teacher ../../librispeech/distill/exp/teacher   # the teacher of `make demo` instead
#   local/demo.sh --mini_size tiny --sv_args "--max_steps 3" --pretrain_args "--max_steps 4"   # CI-sized
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
wait "${stage2}" || { log "error: stage 2 failed (see exp/log/pretrain_hubert.log, exp/log/import_teacher.log)"; exit 1; }
teacher_line=$(grep '^teacher=' exp/teacher/.stage2.done)

# stages 3-5 for every system, ${parallel} at a time
mkdir -p "${demo_dir}/log"
set -- ${systems}
while [ $# -gt 0 ]; do
    batch=()
    pids=()
    while [ $# -gt 0 ] && [ "${#batch[@]}" -lt "${parallel}" ]; do
        system=$1
        shift
        batch+=("${system}")
        log "${system}: run.sh stages 3-5 with conf/demo/${system}.yaml -> ${demo_dir}/${system} (log: ${demo_dir}/log/${system}.log)"
        ./run.sh --stage 3 --stop_stage 5 --ngpu "${ngpu}" --sv_config "conf/demo/${system}.yaml" \
            --sv_exp "${demo_dir}/${system}" --sv_args "${sv_args}" > "${demo_dir}/log/${system}.log" 2>&1 &
        pids+=($!)
    done
    watched=()
    for system in "${batch[@]}"; do
        watched+=("${system}" "${demo_dir}/${system}/train.log")
    done
    progress "${watched[@]}"
    for index in "${!batch[@]}"; do
        if ! wait "${pids[${index}]}"; then
            log "error: ${batch[${index}]} failed; the end of ${demo_dir}/log/${batch[${index}]}.log:"
            tail -n 20 "${demo_dir}/log/${batch[${index}]}.log" >&2
            exit 1
        fi
        log "${batch[${index}]}: $(grep -o 'EER = .*' "${demo_dir}/${batch[${index}]}/scores/${test_set}.eer" | head -n 1)"
    done
done

# exp/demo/RESULTS.md: one row per system, one DET figure
args=()
times=()
for system in ${systems}; do
    args+=(--system "${system}" "${demo_dir}/${system}/scores/${test_set}.score" "data/${test_set}/trials"
           "${demo_dir}/${system}/sv_model")
    train_seconds=$(awk '$1 == 3 {print $2}' "${demo_dir}/${system}/stage_times.txt" 2> /dev/null || true)
    times+=("${system} ${train_seconds:-?} s")
done
elapsed=$(($(date +%s) - started))
python -m speechdistill.bin.sv_results --output "${demo_dir}/RESULTS.md" --det "${demo_dir}/det.png" \
    --title "make demo-sv: OS-KDFT on the embedded mini VoxCeleb" "${args[@]}" \
    --note "data: the embedded mini VoxCeleb (synthesized voices, not real speech; ${mini_size} size): training on data/train, trials data/${test_set}/trials (speakers unseen in training)" \
    --note "teacher: ${teacher_line#teacher=} ($(grep -q '^pretrained=' exp/teacher/.stage2.done \
        && echo "a tiny HuBERT pretrained from scratch on data/train in stage 2" || echo "imported in stage 2"))" \
    --note "random_student: the oskdft student's architecture, trained the same way (same teacher, distillation term, speaker loss, schedule, augmentation) from a random initialisation; the EER gap is what the teacher's weights give" \
    --note "configs: conf/demo/<system>.yaml$([ -n "${sv_args}" ] && echo " with ${sv_args}"); embeddings: whole utterance; scoring: cosine" \
    --note "stage 3 (training) time: $(IFS=,; echo "${times[*]}" | sed 's/,/, /g'); whole demo: ${elapsed} s" \
    > "${demo_dir}/table.md"
log "wrote ${demo_dir}/RESULTS.md and ${demo_dir}/det.png (DET curves) in ${elapsed} s:"
echo
cat "${demo_dir}/table.md"
echo
