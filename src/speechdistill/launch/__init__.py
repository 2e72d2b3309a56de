"""Job launchers behind ``egs/TEMPLATE/utils/{run,queue,slurm}.pl`` (conventions §2.3, §2.4).

All three take the Kaldi command line::

    run.pl   [options] [JOB=a:b] <log> <command...>
    queue.pl [options] [JOB=a:b] <log> <command...>
    slurm.pl [options] [JOB=a:b] <log> <command...>

``JOB`` (any identifier) is replaced by the job index everywhere in the log path and the
command; with more than one job the log path must contain it. Each job's log starts with
``# <command>`` and ends with run.pl's ``# Accounting: ...`` / ``# Ended (code N) at ...``
lines, or the cluster launchers' ``# Accounting: ...`` / ``# Finished at ... with status N``.

Exit status of a launcher: 0 when every job succeeded, 1 when any failed (the failing count,
the log path and the last ~20 lines of the first failing log go to stderr), 2 when the
launcher was interrupted by SIGINT/SIGTERM/SIGUSR1 (running jobs are signalled or cancelled with
``scancel``/``qdel``), 255 for a usage or configuration error (Kaldi's ``die``). run.pl exits
:data:`REQUEUE_EXIT_CODE` instead of 1 or 2 when every job that did not succeed exited with it,
so that a recipe stage (and a ``run.sh`` that is itself a batch job) passes the request on.

Options (``--a-b`` and ``--a_b`` alike; each takes one value):

* ``--max-jobs-run N`` / ``-tc N``: concurrency (smallest wins); for clusters, ``%N`` / ``-tc N``
  on array jobs;
* ``--gpu N``: run.pl runs as many jobs at once as there are N-GPU slots and gives each job
  its own ``CUDA_VISIBLE_DEVICES`` (Kaldi's run.pl sets none); clusters look it up in the config;
* ``--pick all|failed|incomplete``: rerun every job (default), or skip jobs whose log says they
  succeeded; ``incomplete`` also leaves failed jobs failed and runs only those never finished;
* ``--max-requeue N`` (queue.pl, slurm.pl; default :data:`DEFAULT_MAX_REQUEUE`): see below;
* ``--config FILE`` (clusters): the option-mapping file, default ``conf/slurm.conf`` or
  ``conf/queue.conf`` in the current directory, else the toolkit's top-level ``conf/`` file,
  else a built-in default. Any other ``--key value`` (``--mem``, ``--num-threads``,
  ``--time``, ``--name``, ``--num-nodes``, ...) is ignored by run.pl and must be described in
  the cluster config (an undescribed option is fatal);
* single-dash options (``-q all.q``, ``-p gpu``, ``-pe smp 4``, ``-V``, ``-sync y``) are ignored by
  run.pl and passed verbatim to qsub/sbatch.

Requeue: a job that exits with :data:`REQUEUE_EXIT_CODE` (99) is telling the launcher "I was
stopped by a signal (preemption, time limit), saved a checkpoint, please run me again"; the
trainer (:mod:`speechdistill.train`) exits with it after checkpointing on SIGTERM/SIGUSR1.
queue.pl and slurm.pl then resubmit that task, keeping the previous log as ``<log>.attempt<k>``, up to ``--max-requeue``
times (default 3: each resubmission resumes from a checkpoint, and the bound stops a job that
is killed over and over from cycling forever; ``--max-requeue 0`` turns it off). A task that
Slurm put back in its queue itself (``scontrol requeue``, preemption with requeue) is not
resubmitted: its rerun appends to the same log. The job script traps SIGTERM and SIGUSR1 and
passes them on (as SIGUSR1, which ``srun`` forwards to its tasks) to the command, whose status it
then records, so a trainer stopped by the scheduler's own signals is requeued; ``conf/slurm.conf``
asks for ``--signal=B:USR1@<signal_lead>`` seconds before the time limit. Before the first
submission slurm.pl asks ``sbatch --test-only`` whether the cluster could ever run the job and
stops with Slurm's reason when it could not. run.pl never requeues: a local SIGTERM is a user
asking to stop; it exits 99 and rerunning the same command resumes.

Timings, overridable by environment variables (seconds):

* ``SPEECHDISTILL_LAUNCH_NFS_SLEEP`` (5): pause after creating the ``q/`` dir, for NFS;
* ``SPEECHDISTILL_LAUNCH_POLL_MAX`` (3): longest pause between polls for the done-files;
* ``SPEECHDISTILL_LAUNCH_VANISHED_WAIT`` (70): how long a job may be gone from the queue
  without its done-file before its log decides;
* ``SPEECHDISTILL_LAUNCH_STATUS_WAIT`` (55): how long to wait for a log's status line;
* ``SPEECHDISTILL_LAUNCH_SUBMIT_RETRY_WAIT`` (20): pause before retrying an unreachable qmaster.
"""
REQUEUE_EXIT_CODE = 99
"""Exit code of a job that checkpointed on a signal and asks to be run again (see above)."""

DEFAULT_MAX_REQUEUE = 3
"""How many times queue.pl/slurm.pl resubmit a task that exited with REQUEUE_EXIT_CODE."""

USAGE_EXIT_CODE = 255
"""Exit code for a launcher usage or configuration error (Kaldi's launchers ``die``)."""

__all__ = ["REQUEUE_EXIT_CODE", "DEFAULT_MAX_REQUEUE", "USAGE_EXIT_CODE"]
