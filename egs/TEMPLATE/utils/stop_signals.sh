# Sourced by a recipe's run.sh (after parse_options.sh): SIGTERM, SIGINT and SIGUSR1 to run.sh stop its
# jobs the way they stop a job, instead of leaving them running as orphans (SIGUSR1: the time-limit
# warning 'sbatch --signal=B:USR1@N' gives a run.sh that is itself a batch job).
#
#   run_job CMD...     run CMD (a launcher line: ${cuda_cmd} ..., utils/launch_training.sh ...) in a
#                      process group of its own and wait for it; returns its status. A SIGTERM, SIGINT
#                      or SIGUSR1 that reaches run.sh meanwhile (alone, or with its whole process group,
#                      or from a batch system that signals every process) is passed to CMD once;
#                      run.pl passes it to the job, the trainer checkpoints and exits 99, run.pl
#                      exits 99, and run.sh then exits with that status (99: run it again to resume).
#   wait_jobs PID...   wait for background subshells (that call run_job themselves) through signals;
#                      returns 0 when all succeeded, else the first failing status.
#
# A signal that arrives while no job runs ends run.sh at once (status 128 + the signal number).
_sd_stop_signal=
_sd_signals=0
_sd_busy=0
_sd_trap_pid=

_sd_on_stop() {
    _sd_stop_signal=$1
    _sd_signals=$((_sd_signals + 1))
    local pids
    pids=$(jobs -pr | paste -sd' ' -)
    if [ "${_sd_busy}" = 0 ]; then
        echo "$(basename "$0"): SIG$1 received; stopping" >&2
        # shellcheck disable=SC2086
        [ -z "${pids}" ] || kill -s "$1" ${pids} 2> /dev/null || true
        exit $((128 + $(kill -l "$1")))
    fi
    echo "$(basename "$0"): SIG$1 received; passing it to the running job(s) (PID ${pids:-none}) and waiting" >&2
    # shellcheck disable=SC2086
    [ -z "${pids}" ] || kill -s "$1" ${pids} 2> /dev/null || true
}

_sd_install_traps() {
    trap '_sd_on_stop TERM' TERM
    trap '_sd_on_stop INT' INT
    trap '_sd_on_stop USR1' USR1
    _sd_trap_pid=${BASHPID}
}
_sd_install_traps

# _sd_wait PID: wait until PID has ended, also when a trapped signal interrupts 'wait'; returns its status
_sd_wait() {
    local before rc
    while :; do
        before=${_sd_signals}
        rc=0
        wait "$1" || rc=$?
        [ "${_sd_signals}" = "${before}" ] && return "${rc}"
    done
}

# _sd_after_stop STATUS: after a stop signal, end this (sub)shell with the job's status
_sd_after_stop() {
    [ -n "${_sd_stop_signal}" ] || return 0
    local status=$1
    [ "${status}" != 0 ] || status=$((128 + $(kill -l "${_sd_stop_signal}")))
    if [ "${status}" = 99 ]; then
        echo "$(basename "$0"): stopped by SIG${_sd_stop_signal}; the job checkpointed (status 99): run the same" \
             "command again to resume" >&2
    else
        echo "$(basename "$0"): stopped by SIG${_sd_stop_signal} (status ${status})" >&2
    fi
    exit "${status}"
}

run_job() {
    # a background subshell does not inherit the traps: install them here
    [ "${_sd_trap_pid}" = "${BASHPID}" ] || _sd_install_traps
    local pid status=0
    _sd_busy=$((_sd_busy + 1))
    setsid "$@" &
    pid=$!
    _sd_wait "${pid}" || status=$?
    _sd_busy=$((_sd_busy - 1))
    _sd_after_stop "${status}"
    return "${status}"
}

wait_jobs() {
    local pid status=0 rc
    _sd_busy=$((_sd_busy + 1))
    for pid in "$@"; do
        rc=0
        _sd_wait "${pid}" || rc=$?
        [ "${status}" != 0 ] || status=${rc}
    done
    _sd_busy=$((_sd_busy - 1))
    _sd_after_stop "${status}"
    return "${status}"
}
