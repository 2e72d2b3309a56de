#!/usr/bin/env bash
# Launch one training job through a launcher (run.pl, queue.pl, slurm.pl) with the resources it needs.
#
#   utils/launch_training.sh --cmd "${cuda_cmd}" --ngpu N [--num_nodes M] [--cpus_per_gpu C] [--mem_per_gpu G] \
#       <log> python -m speechdistill.bin.<x>_train <args...>
#
# Every process of the job (one per GPU, or the one process of a CPU job) gets C CPUs and G GB of memory:
#
#   N <= 1, M = 1   <cmd> --gpu N --num-threads C --mem GG <log> python ...
#   N > 1,  M = 1   <cmd> --gpu N --num-threads N*C --mem N*GG <log>
#                       python -m speechdistill.bin.torchrun --standalone --nproc_per_node N ...
#                   (one task; torchrun starts a rank per GPU and passes SIGTERM/SIGUSR1 to them)
#   M > 1           <cmd> --gpu N --num-nodes M --tasks-per-node P --num-threads C --mem P*GG <log>
#                       srun --export=ALL --ntasks-per-node=P --cpus-per-task=C python ...
#                   (P = max(N, 1) tasks per node, one rank each, ranks from SLURM_PROCID; needs slurm.pl)
#
# The launcher maps --gpu/--num-threads/--mem/--num-nodes/--tasks-per-node through conf/slurm.conf
# or conf/queue.conf (run.pl ignores all but --gpu). The launcher's process replaces this script's,
# so signals and the exit status (99: checkpointed, run again) are the launcher's.
set -euo pipefail

cmd=
ngpu=0
num_nodes=1
cpus_per_gpu=4
mem_per_gpu=32
while [ $# -gt 0 ]; do
    case "$1" in
        --cmd) cmd=$2; shift 2 ;;
        --ngpu) ngpu=$2; shift 2 ;;
        --num_nodes|--num-nodes) num_nodes=$2; shift 2 ;;
        --cpus_per_gpu|--cpus-per-gpu) cpus_per_gpu=$2; shift 2 ;;
        --mem_per_gpu|--mem-per-gpu) mem_per_gpu=$2; shift 2 ;;
        --*) echo "$0: unknown option $1" >&2; exit 1 ;;
        *) break ;;
    esac
done
if [ $# -lt 2 ] || [ -z "${cmd}" ]; then
    echo "usage: $0 --cmd '<launcher ...>' --ngpu N [--num_nodes M] [--cpus_per_gpu C] [--mem_per_gpu G] <log> python ..." >&2
    exit 1
fi
for name in ngpu num_nodes cpus_per_gpu mem_per_gpu; do
    [[ "${!name}" =~ ^[0-9]+$ ]] || { echo "$0: --${name} must be a whole number, got '${!name}'" >&2; exit 1; }
done
[ "${num_nodes}" -ge 1 ] && [ "${cpus_per_gpu}" -ge 1 ] && [ "${mem_per_gpu}" -ge 1 ] \
    || { echo "$0: --num_nodes, --cpus_per_gpu and --mem_per_gpu must be at least 1" >&2; exit 1; }
log=$1
shift
if [ "$1" != python ]; then
    echo "$0: the command must start with 'python' (it becomes torchrun or srun as needed), got '$1'" >&2
    exit 1
fi
shift
read -r -a launcher <<< "${cmd}"
procs=$((ngpu > 1 ? ngpu : 1))

if [ "${num_nodes}" -gt 1 ]; then
    if [[ "${launcher[0]}" != *slurm.pl ]]; then
        echo "$0: --num_nodes ${num_nodes} needs Slurm (cmd_backend=slurm in cmd.sh); ${launcher[0]} starts jobs on one node" >&2
        exit 1
    fi
    exec "${launcher[@]}" --gpu "${ngpu}" --num-nodes "${num_nodes}" --tasks-per-node "${procs}" \
        --num-threads "${cpus_per_gpu}" --mem "$((procs * mem_per_gpu))G" "${log}" \
        srun --export=ALL --ntasks-per-node="${procs}" --cpus-per-task="${cpus_per_gpu}" python "$@"
elif [ "${ngpu}" -gt 1 ]; then
    exec "${launcher[@]}" --gpu "${ngpu}" --num-threads "$((ngpu * cpus_per_gpu))" --mem "$((ngpu * mem_per_gpu))G" \
        "${log}" python -m speechdistill.bin.torchrun --standalone --nproc_per_node "${ngpu}" "$@"
else
    exec "${launcher[@]}" --gpu "${ngpu}" --num-threads "${cpus_per_gpu}" --mem "${mem_per_gpu}G" "${log}" python "$@"
fi
