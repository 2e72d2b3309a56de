#!/usr/bin/env bash
# Stage 5: score every trial list of stage 0 under every test condition (cosine, optionally the training mean
# subtracted and AS-norm / S-norm against the per-speaker means of data/train), EER and minDCF per list
# (speechdistill.bin.compute_eer), then <sv_exp>/RESULTS.md with DET curves (speechdistill.bin.sv_results).
#
#   local/score.sh --sv_exp exp/sv_oskdft_paper --sv_config conf/oskdft_paper.yaml --score_norm asnorm --top_n 300
#
# Output: <sv_exp>/scores/<set>[_<norm>][_<condition>].{score,eer}, <set>..._det.png, <sv_exp>/RESULTS.md.
set -euo pipefail

sv_exp=
sv_config=              # named in RESULTS.md
sv_args=                # named in RESULTS.md
test_conditions=clean
condition_seed=0
tta_segments=0          # named in RESULTS.md (the embeddings were made with them)
segment_seconds=3
subtract_mean=false     # true: subtract the training set's mean embedding before the cosine
score_norm=none         # none, asnorm or snorm
top_n=300               # cohort size kept by asnorm

. ./path.sh
. ./cmd.sh
. utils/parse_options.sh
. utils/recipe.sh

train_set=$(stage0 train_set)
test_sets=$(stage0 test_sets)
started=$(date +%s)
mkdir -p "${sv_exp}/scores" "${sv_exp}/log"
train_embeddings=${sv_exp}/embeddings/${train_set}/xvector.scp
mean_opts=()
[ "${subtract_mean}" = true ] && mean_opts=(--train-embeddings "${train_embeddings}" --subtract-mean)
norm_opts=()
[ "${score_norm}" = none ] || norm_opts=(--train-embeddings "${train_embeddings}" --train-utt2spk
    "data/${train_set}/utt2spk" --score-norm "${score_norm}" --top-n "${top_n}")
lists=()
# score NAME EMBEDDINGS TRIALS [score_trials options]: <sv_exp>/scores/NAME.score
score() {
    python -m speechdistill.bin.score_trials --embeddings "$2" --trials "$3" --output "${sv_exp}/scores/$1.score" "${@:4}" \
        2> "${sv_exp}/log/score_$1.log" || { cat "${sv_exp}/log/score_$1.log" >&2; exit 1; }
}
for set in ${test_sets}; do
    trials=data/${set}/trials
    for condition in ${test_conditions}; do
        suffix=$([ "${condition}" = clean ] || echo "_${condition}")
        names=("${set}${suffix}")
        [ "${score_norm}" = none ] || names+=("${set}_${score_norm}${suffix}")
        extra=()
        [ "${score_norm}" = none ] || extra=("${norm_opts[@]}" --norm-output "${sv_exp}/scores/${names[1]}.score")
        score "${names[0]}" "${sv_exp}/embeddings/${set}${suffix}/xvector.scp" "${trials}" \
            "${mean_opts[@]}" "${extra[@]}"
        for index in "${!names[@]}"; do
            list_name=${set}$([ "${index}" = 0 ] || echo "_${score_norm}")
            python -m speechdistill.bin.compute_eer --scores "${sv_exp}/scores/${names[index]}.score" --trials "${trials}" \
                | tee "${sv_exp}/scores/${names[index]}.eer"
            if [ "${condition}" = clean ]; then lists+=(--list "${list_name}"); else lists+=(--condition-list "${list_name}" "${condition}"); fi
            lists+=("${sv_exp}/scores/${names[index]}.score" "${trials}")
        done
    done
done
record_time "${sv_exp}/stage_times.txt" 5 "${started}" scoring
embedding_note="embeddings: full utterance"
[ "${tta_segments}" = 0 ] || embedding_note+=", TTA ${tta_segments} x ${segment_seconds} s segments"
scoring_note="scoring: cosine"
[ "${subtract_mean}" != true ] || scoring_note+=", training mean subtracted"
[ "${score_norm}" = none ] || scoring_note+="; rows *_${score_norm}: ${score_norm} (top ${top_n}) against data/${train_set}"
condition_note="test conditions: clean"
if [ "${test_conditions}" != clean ]; then
    condition_note="test conditions (the enrolment and test audio of every trial corrupted, seed ${condition_seed}, the same for every system):"
    for condition in ${test_conditions}; do
        [ "${condition}" = clean ] && continue
        condition_note+=" ${condition}: $(sed -n 's/.*test condition [^:]*: \(.*\) (seed [0-9]*)$/\1/p' \
            "${sv_exp}/embeddings/${test_sets%% *}_${condition}/extract.log" | tail -n 1);"
    done
fi
python -m speechdistill.bin.sv_results --output "${sv_exp}/RESULTS.md" --det-dir "${sv_exp}/scores" \
    --model-dir "${sv_exp}/sv_model" --stage-times "${sv_exp}/stage_times.txt" "${lists[@]}" \
    --note "config: ${sv_config}${sv_args:+ with ${sv_args}}" --note "${embedding_note}" --note "${scoring_note}" \
    --note "${condition_note%;}"
