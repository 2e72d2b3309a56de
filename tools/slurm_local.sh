#!/usr/bin/env bash
# A real Slurm on this machine, for trying slurm.pl and for the tests: munged, slurmctld and one or two
# slurmd, from the Debian packages slurm-wlm and munge (installed with apt-get when missing and run as root).
#
#   tools/slurm_local.sh start [--nodes 1|2] [--dir DIR] [--gpus N]
#   tools/slurm_local.sh status [--dir DIR]
#   tools/slurm_local.sh stop [--dir DIR]
#   tools/slurm_local.sh install          # only install the packages (tools/install.sh calls it as root)
#
# Everything (slurm.conf, gres.conf, state, spool, logs, pid files, fake GPU devices) lives under DIR
# (default: ${TMPDIR:-/tmp}/speechdistill-slurm), so clients find the cluster with
#
#   export SLURM_CONF=DIR/slurm.conf          # 'start' prints this line last
#
# The nodes offer this machine's CPUs and most of its free memory, and N (default 4) GPUs as 'gres' backed
# by fake character devices (the numbers of /dev/null), so '--gres=gpu:2' is scheduled and the job gets
# CUDA_VISIBLE_DEVICES. With --nodes 2, two slurmd run on this host as nodes '<host>' and '<host>-n2'
# (own ports, the same CPUs and memory): 'sbatch --nodes 2' and 'srun' inside it really run on both.
# The controller and the nodes listen on free ports chosen at start, so several of these clusters
# (each with its own DIR) can run side by side. 'start' is idempotent: a cluster already running in DIR
# with the same node count is kept; with another node count it is restarted.
#
# Exit status: 0 done; 1 a failure (the daemons' logs are named); 3 this machine cannot run one
# (the packages are missing and cannot be installed without root, or munged/slurmd need root).
set -euo pipefail

prog=tools/slurm_local.sh
command=${1:-}
[ $# -gt 0 ] && shift
nodes=1
gpus=4
dir=${SLURM_LOCAL_DIR:-${TMPDIR:-/tmp}/speechdistill-slurm}
while [ $# -gt 0 ]; do
    case "$1" in
        --nodes) nodes=${2:?--nodes needs a value}; shift 2 ;;
        --gpus) gpus=${2:?--gpus needs a value}; shift 2 ;;
        --dir) dir=${2:?--dir needs a value}; shift 2 ;;
        *) echo "${prog}: unknown option '$1'; usage: ${prog} start|stop|status|install [--nodes 1|2] [--dir DIR] [--gpus N]" >&2
           exit 1 ;;
    esac
done
case "${nodes}" in 1|2) ;; *) echo "${prog}: --nodes must be 1 or 2, got '${nodes}'" >&2; exit 1 ;; esac
case "${gpus}" in ''|*[!0-9]*) echo "${prog}: --gpus must be a number, got '${gpus}'" >&2; exit 1 ;; esac
[ "${command}" != start ] || mkdir -p "${dir}"
[ ! -d "${dir}" ] || dir=$(cd "${dir}" && pwd -P)
conf=${dir}/slurm.conf
host=$(hostname -s)

cannot() { echo "${prog}: cannot run a local Slurm here: $*" >&2; exit 3; }
fail() { echo "${prog}: $*" >&2; exit 1; }

have_packages() {
    [ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/slurmd ] && [ -x /usr/sbin/munged ] \
        && command -v sbatch > /dev/null 2>&1 && command -v munge > /dev/null 2>&1
}

install_packages() {
    if have_packages; then
        return 0
    fi
    if [ "$(id -u)" != 0 ]; then
        cannot "the Debian packages slurm-wlm and munge are missing; install them as root: apt-get install slurm-wlm munge"
    fi
    command -v apt-get > /dev/null 2>&1 || cannot "slurm-wlm and munge are missing and there is no apt-get to install them"
    echo "${prog}: installing slurm-wlm and munge with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || fail "apt-get update failed"
    local apt_log=${TMPDIR:-/tmp}/speechdistill-apt-get.log
    apt-get install -y -qq --no-install-recommends slurm-wlm munge > "${apt_log}" 2>&1 \
        || fail "apt-get install slurm-wlm munge failed; see ${apt_log}"
    have_packages || fail "slurm-wlm and munge were installed but slurmctld/slurmd/munged are not found"
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2> /dev/null; }

munge_running() { munge -n 2> /dev/null | unmunge > /dev/null 2>&1; }

start_munge() {
    munge_running && return 0
    [ "$(id -u)" = 0 ] || cannot "munged is not running and starting it needs root"
    if [ ! -s /etc/munge/munge.key ]; then
        mungekey --create --keyfile /etc/munge/munge.key > /dev/null 2>&1 \
            || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 2> /dev/null
        chown munge:munge /etc/munge/munge.key
        chmod 0400 /etc/munge/munge.key
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    runuser -u munge -- /usr/sbin/munged || fail "munged did not start; see /var/log/munge/munged.log"
    for _ in $(seq 50); do munge_running && return 0; sleep 0.1; done
    fail "munged started but 'munge -n | unmunge' fails; see /var/log/munge/munged.log"
}

free_port() {
    # a TCP port nothing listens on, from a range Linux does not hand out as ephemeral ports
    local port
    for _ in $(seq 200); do
        port=$((15000 + RANDOM % 10000))
        if ! (exec 3<> "/dev/tcp/127.0.0.1/${port}") 2> /dev/null \
            && ! grep -q -- "=${port}\$" "${dir}/ports" 2> /dev/null; then
            echo "x=${port}" >> "${dir}/ports"
            echo "${port}"
            return 0
        fi
    done
    fail "found no free TCP port"
}

node_names() {
    echo "${host}"
    [ "${nodes}" = 2 ] && echo "${host}-n2"
    return 0
}

write_config() {
    local cpus mem_mb ctld_port port i name
    cpus=$(getconf _NPROCESSORS_ONLN)
    # most of the memory available now, leaving 1 GiB to everything else
    mem_mb=$(awk '/^MemAvailable:/ {m = int($2 / 1024) - 1024; if (m < 512) m = 512; print m}' /proc/meminfo)
    rm -f "${dir}/ports"
    ctld_port=$(free_port)
    mkdir -p "${dir}/state" "${dir}/log" "${dir}/run"
    cat > "${conf}.tmp" << EOF
# Written by ${prog} on $(date -u '+%Y-%m-%dT%H:%M:%SZ'): a local test cluster, everything under ${dir}.
ClusterName=speechdistill
SlurmctldHost=${host}
SlurmctldPort=${ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a job requeued by Slurm may start again after ~11 s instead of ~2 min
AuthInfo=cred_expire=10
StateSaveLocation=${dir}/state
SlurmdSpoolDir=${dir}/spool/%n
SlurmctldPidFile=${dir}/run/slurmctld.pid
SlurmdPidFile=${dir}/run/slurmd.%n.pid
SlurmctldLogFile=${dir}/log/slurmctld.log
SlurmdLogFile=${dir}/log/slurmd.%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
JobRequeue=1
# refuse at submission what the partition can never give (else 'sbatch -N3' pends forever)
EnforcePartLimits=ALL
GresTypes=gpu
MailProg=/bin/true
MinJobAge=300
KillWait=30
EOF
    : > "${dir}/gres.conf.tmp"
    i=0
    for name in $(node_names); do
        i=$((i + 1))
        port=$(free_port)
        mkdir -p "${dir}/spool/${name}" "${dir}/fakedev/${name}"
        local extra=""
        [ "${i}" -gt 1 ] && extra=" NodeAddr=127.0.0.1"
        local gres=""
        if [ "${gpus}" -gt 0 ]; then
            gres=" Gres=gpu:${gpus}"
            local g
            for g in $(seq 0 $((gpus - 1))); do
                [ -e "${dir}/fakedev/${name}/nvidia${g}" ] || mknod "${dir}/fakedev/${name}/nvidia${g}" c 1 3 \
                    || cannot "mknod (fake GPU devices) failed; it needs root"
            done
            echo "NodeName=${name} Name=gpu File=${dir}/fakedev/${name}/nvidia[0-$((gpus - 1))]" >> "${dir}/gres.conf.tmp"
        fi
        echo "NodeName=${name} NodeHostname=${host}${extra} Port=${port} CPUs=${cpus} Boards=1 SocketsPerBoard=1" \
             "CoresPerSocket=${cpus} ThreadsPerCore=1 RealMemory=${mem_mb}${gres} State=UNKNOWN" >> "${conf}.tmp"
    done
    echo "PartitionName=debug Nodes=$(node_names | paste -sd, -) Default=YES MaxTime=INFINITE State=UP" >> "${conf}.tmp"
    echo "nodes=${nodes} gpus=${gpus}" > "${dir}/cluster.settings"
    mv "${dir}/gres.conf.tmp" "${dir}/gres.conf"
    mv "${conf}.tmp" "${conf}"
}

running() {
    # 0 when slurmctld and every slurmd of DIR run
    [ -f "${conf}" ] && pid_alive "${dir}/run/slurmctld.pid" || return 1
    local name
    for name in $(grep -o '^NodeName=[^ ]* NodeHostname' "${conf}" | sed 's/^NodeName=//; s/ NodeHostname$//'); do
        pid_alive "${dir}/run/slurmd.${name}.pid" || return 1
    done
}

stop_daemons() {
    local file pid stopped=0
    for file in "${dir}"/run/slurmd.*.pid "${dir}/run/slurmctld.pid"; do
        [ -f "${file}" ] || continue
        pid=$(cat "${file}")
        if kill -0 "${pid}" 2> /dev/null; then
            kill "${pid}" 2> /dev/null || true
            for _ in $(seq 100); do kill -0 "${pid}" 2> /dev/null || break; sleep 0.05; done
            kill -9 "${pid}" 2> /dev/null || true
            stopped=$((stopped + 1))
        fi
        rm -f "${file}"
    done
    echo "${prog}: stopped ${stopped} daemon(s) of ${dir}"
}

wait_idle() {
    local want states
    want=$(node_names | wc -l)
    for _ in $(seq 300); do
        states=$(SLURM_CONF=${conf} sinfo -h -N -o '%N %T' 2> /dev/null | awk '$2 == "idle" || $2 == "mixed" || $2 == "allocated"' | wc -l)
        [ "${states}" -ge "${want}" ] && return 0
        sleep 0.1
    done
    SLURM_CONF=${conf} sinfo -N -l >&2 || true
    fail "the nodes did not become idle within 30 s; see ${dir}/log/"
}

case "${command}" in
    install)
        install_packages
        echo "${prog}: slurm-wlm and munge are installed"
        ;;
    start)
        if running && [ "$(cat "${dir}/cluster.settings" 2> /dev/null)" = "nodes=${nodes} gpus=${gpus}" ]; then
            echo "${prog}: already running in ${dir} (${nodes} node(s))"
        else
            running && stop_daemons
            install_packages
            [ "$(id -u)" = 0 ] || cannot "slurmd runs jobs as their users and needs root"
            start_munge
            write_config
            # A fresh state dir: no jobs, job ids start at 1.
            rm -rf "${dir}/state"
            mkdir -p "${dir}/state"
            SLURM_CONF=${conf} slurmctld -i || fail "slurmctld did not start; see ${dir}/log/slurmctld.log"
            for name in $(node_names); do
                SLURM_CONF=${conf} slurmd -N "${name}" || fail "slurmd -N ${name} did not start; see ${dir}/log/slurmd.${name}.log"
            done
            wait_idle
            echo "${prog}: running in ${dir}: $(node_names | paste -sd' ' -) (${nodes} node(s), $(getconf _NPROCESSORS_ONLN) CPUs and ${gpus} fake GPUs each)"
        fi
        echo "export SLURM_CONF=${conf}"
        ;;
    stop)
        stop_daemons
        ;;
    status)
        if running; then
            echo "${prog}: running in ${dir} ($(cat "${dir}/cluster.settings"))"
            SLURM_CONF=${conf} sinfo -N -o '%N %T %c %m %G'
            echo "export SLURM_CONF=${conf}"
        else
            echo "${prog}: not running in ${dir}"
            exit 1
        fi
        ;;
    *)
        echo "usage: ${prog} start|stop|status|install [--nodes 1|2] [--dir DIR] [--gpus N]" >&2
        exit 1
        ;;
esac
