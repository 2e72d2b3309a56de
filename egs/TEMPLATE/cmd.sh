# cmd.sh: how a recipe's stages run their jobs. run.sh sources it; a stage then calls e.g.
#
#     ${train_cmd} JOB=1:${nj} exp/x/log/prep.JOB.log <command with JOB>
#     ${cuda_cmd} --gpu 1 --mem 16G --time 24:00:00 exp/x/log/train.log <command>
#
# Choose the backend with cmd_backend (edit the default below, or 'cmd_backend=slurm ./run.sh'):
#
#   local   utils/run.pl: jobs on this machine, as many at once as there are CPUs (--max-jobs-run
#           N to limit); with --gpu N, one job per N visible GPUs, each given its own
#           CUDA_VISIBLE_DEVICES. --mem, --time, --num-threads, ... are accepted and ignored.
#   sge     utils/queue.pl: Sun/Univa Grid Engine through qsub.
#   slurm   utils/slurm.pl: Slurm through sbatch.
#
# The cluster launchers turn --mem (per node), --num-threads (CPUs per task), --gpu (per node),
# --time, --name, --num-nodes, --tasks-per-node into scheduler arguments through conf/queue.conf
# or conf/slurm.conf: the recipe's own conf/ if it has one, else the toolkit's top-level conf/.
# An option the config does not describe is an error, so add site-specific lines (partitions,
# queues, accounts) there, not here. Training stages ask for CPUs and memory per GPU themselves
# (run.sh --cpus_per_gpu, --mem_per_gpu; their --mem replaces the one below).
# Jobs that exit with status 99 (the trainer checkpointed on SIGTERM/SIGUSR1, e.g. at the time
# limit or when preempted) are resubmitted by queue.pl/slurm.pl up to --max-requeue times
# (default 3); run.pl exits 99 itself, and so does run.sh.
cmd_backend=${cmd_backend:-local}

case "${cmd_backend}" in
    local)
        export train_cmd="utils/run.pl"
        export cuda_cmd="utils/run.pl"
        export decode_cmd="utils/run.pl"
        ;;
    sge)
        export train_cmd="utils/queue.pl --mem 4G"
        export cuda_cmd="utils/queue.pl --mem 16G"
        export decode_cmd="utils/queue.pl --mem 8G"
        ;;
    slurm)
        export train_cmd="utils/slurm.pl --mem 4G"
        export cuda_cmd="utils/slurm.pl --mem 16G"
        export decode_cmd="utils/slurm.pl --mem 8G"
        ;;
    *)
        echo "cmd.sh: unknown cmd_backend '${cmd_backend}'; use local, sge or slurm" >&2
        return 1 2> /dev/null || exit 1
        ;;
esac
