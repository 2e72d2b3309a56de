#!/usr/bin/env bash
# make demo-superb: the teacher, the distilled student and the random student of the LibriSpeech demo
# (`make demo`, egs/librispeech/distill/exp/demo) through the four probes on the mini corpora:
# PR on the mini LibriSpeech, KS on the mini Speech Commands, IC on the mini Fluent Speech Commands, SID on
# the mini VoxCeleb, with the demo presets (conf/demo: SUPERB's heads, a few hundred updates on dumped
# features). When the LibriSpeech demo has not run yet, its stages 0-3 run first (teacher from scratch,
# DistilHuBERT student, random student). Results: exp/demo/RESULTS.md.
set -euo pipefail

demo_recipe=../../librispeech/distill   # where `make demo` keeps its teacher and students
method=distilhubert                     # the distillation preset of that demo
tasks="pr ks ic sid"
nj=2
stage=0

. ./path.sh
. utils/parse_options.sh

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (${BASH_SOURCE[1]##*/}:${BASH_LINENO[0]}) $*"; }
teacher=${demo_recipe}/exp/demo/teacher
student=${demo_recipe}/exp/demo/distill_${method}/student
random_student=${demo_recipe}/exp/demo/distill_${method}/random_student
if [ ! -f "${student}/model.safetensors" ] || [ ! -f "${random_student}/model.safetensors" ] \
    || [ ! -f "${teacher}/model.safetensors" ]; then
    log "no demo teacher and students in ${demo_recipe}/exp/demo: running its stages 0-3 (make demo's first half)"
    (cd "${demo_recipe}" && ./run.sh --demo true --stop_stage 3 --distill_config "conf/${method}.yaml")
fi
log "the demo's teacher, student and random student through ${tasks} (conf/demo); mini corpora under" \
    "${demo_recipe}/downloads/mini (shared with make demo)"
./run.sh --stage "${stage}" --tasks "${tasks}" --upstream "${teacher} ${student} ${random_student}" \
    --names "teacher student random_student" --published "none auto none" --conf_dir conf/demo \
    --dump_features true --exp_dir exp/demo --mini_dir "${demo_recipe}/downloads/mini" --nj "${nj}"
