# Sourced by a recipe's run.sh and local/*.sh after path.sh, cmd.sh and parse_options.sh: logging, stage
# markers, the data sets stage 0 wrote, live progress of a training job, and a small job pool.
#
#   log MESSAGE...                 timestamped line naming the calling script and line
#   marker_get FILE VAR            the value of VAR in a marker file (a sourced 'key=value' file), or ""
#   stage0 VAR                     marker_get data/.stage0.done VAR (train_set, valid_set, test_sets), or exit
#                                  naming the stage to run
#   up_to_date MARKER SETTINGS [PRODUCT]
#                                  true when --redo is not true, PRODUCT (a file) exists and MARKER holds
#                                  exactly SETTINGS: a stage with the same settings has nothing to do
#   with_progress FILE CMD...      run_job CMD; with progress=true, also print the lines CMD writes to FILE
#                                  (a trainer's train.log) while it runs, prefixed with ${progress_label}
#   record_time FILE STAGE START WHAT
#                                  keep "STAGE SECONDS WHAT" in FILE (one line per stage; START: seconds since the
#                                  epoch), the run times a RESULTS.md reports
#   dump_upstream_features EXP UPSTREAM DEVICE GPU TRAIN_NAME:DIR VALID_NAME:DIR
#                                  dump_features of both data dirs into EXP/dump/<NAME> (logs in EXP/log/);
#                                  sets feature_opts=(--train_features ... --valid_features ...) for *_train
#   pool NJ CMD...; pool_wait      run CMD in the background, at most NJ at a time (NJ <= 1: now, in order);
#                                  pool_wait waits for all through stop signals and returns the first failure
# shellcheck shell=bash
. utils/stop_signals.sh  # run_job, wait_jobs: SIGTERM/SIGINT/SIGUSR1 reach the jobs (a checkpointing trainer: 99)

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (${BASH_SOURCE[1]##*/}:${BASH_LINENO[0]}) $*"; }

marker_get() { [ -f "$1" ] && (. "$1" && echo "${!2:-}") || true; }

stage0() {
    [ -f data/.stage0.done ] || { log "error: data/.stage0.done is missing; run stage 0 first"; exit 1; }
    marker_get data/.stage0.done "$1"
}

up_to_date() {
    [ "${redo:-false}" != true ] && [ -f "$1" ] && { [ -z "${3:-}" ] || [ -f "$3" ]; } && [ "$(cat "$1")" = "$2" ]
}

with_progress() {
    if [ "${progress:-false}" != true ]; then run_job "${@:2}"; return; fi
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

record_time() {
    mkdir -p "$(dirname "$1")"
    { grep -v "^$2 " "$1" 2> /dev/null || true; echo "$2 $(($(date +%s) - $3)) $4"; } | sort -n > "$1.tmp"
    mv "$1.tmp" "$1"
}

dump_upstream_features() {
    local exp=$1 upstream=$2 device=$3 gpu=$4 pair dumps=()
    for pair in "${@:5}"; do
        run_job ${train_cmd} --gpu "${gpu}" "${exp}/log/dump_features.${pair%%:*}.log" \
            python -m speechdistill.bin.dump_features --upstream "${upstream}" --data "${pair#*:}" \
            --out "${exp}/dump/${pair%%:*}" --device "${device}"
        dumps+=("${exp}/dump/${pair%%:*}")
    done
    feature_opts=(--train_features "${dumps[0]}" --valid_features "${dumps[1]}")
}

_pool_pids=()
pool() {
    local nj=$1
    shift
    if [ "${nj}" -le 1 ]; then "$@"; return; fi
    while [ "$(jobs -pr | wc -l)" -ge "${nj}" ]; do sleep 1; done
    "$@" &
    _pool_pids+=($!)
}
pool_wait() {
    local rc=0
    [ "${#_pool_pids[@]}" = 0 ] || wait_jobs "${_pool_pids[@]}" || rc=$?
    _pool_pids=()
    return "${rc}"
}
