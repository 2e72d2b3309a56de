"""utils/slurm.pl and utils/queue.pl against fake sbatch/squeue/scancel and qsub/qstat/qdel.

The fakes record the arguments they get (one file per call, one argument per line) and run the
generated job script for each array task, as the scheduler would, so the scheduler options,
array ranges, logs, done-files, exit codes, requeue and cancellation are all checked for real.
"""
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UTILS = REPO / "egs" / "TEMPLATE" / "utils"

FAKE_SBATCH = r"""#!/usr/bin/env bash
# Fake sbatch: records its arguments, then runs the job script once per array task.
d=${FAKE_SCHED_DIR:?}
if [[ " $* " == *" --test-only "* ]]; then
  printf '%s\n' "$@" > "$d/sbatch.test-only.args"
  if [ -n "${FAKE_REFUSE:-}" ]; then
    echo "sbatch: error: Batch job submission failed: Requested node configuration is not available" >&2; exit 1
  fi
  echo "sbatch: Job 999 to start at 2026-12-06T00:00:00 using 1 processors on nodes node1 in partition debug" >&2
  exit 0
fi
n=$(( $(cat "$d/sbatch.count" 2>/dev/null || echo 0) + 1 )); echo "$n" > "$d/sbatch.count"
printf '%s\n' "$@" > "$d/sbatch.$n.args"
args=("$@"); array=""; out=/dev/null
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in --array) array=${args[i+1]} ;; -o) out=${args[i+1]} ;; esac
done
script=${args[${#args[@]}-1]}
id=$(( 1000 + n ))
tasks=""
if [ -n "$array" ]; then
  IFS=, read -ra parts <<< "${array%%\%*}"
  for part in "${parts[@]}"; do
    if [[ $part == *-* ]]; then tasks+=" $(seq -s ' ' "${part%-*}" "${part#*-}")"; else tasks+=" $part"; fi
  done
fi
export FAKE_TASKS="$tasks" FAKE_SCRIPT="$script" FAKE_ID="$id"
runner='if [ -z "$FAKE_TASKS" ]; then SLURM_JOB_ID=$FAKE_ID bash "$FAKE_SCRIPT"; else
  for t in $FAKE_TASKS; do SLURM_JOB_ID=$FAKE_ID SLURM_ARRAY_TASK_ID=$t bash "$FAKE_SCRIPT"; done; fi'
case "${FAKE_SCHED_MODE:-sync}" in
  sync) bash -c "$runner" >> "$out" 2>&1 ;;
  background)
    touch "$d/running.$id"
    setsid bash -c "$runner; rm -f '$d/running.$id'" < /dev/null >> "$out" 2>&1 &
    echo $! > "$d/pgid.$id" ;;
  lose) ;;
esac
if [[ " $* " == *" --parsable "* ]]; then echo "$id"; else echo "Submitted batch job $id"; fi
"""

FAKE_SQUEUE = r"""#!/usr/bin/env bash
d=${FAKE_SCHED_DIR:?}; printf '%s\n' "$*" >> "$d/squeue.calls"
id=${@: -1}
if [ -e "$d/running.$id" ]; then echo "  $id  debug  job  user  R  0:01  1  node1"; fi
exit 0
"""

FAKE_CANCEL = r"""#!/usr/bin/env bash
d=${FAKE_SCHED_DIR:?}; printf '%s\n' "$@" > "$d/$(basename "$0").args"
for id in "$@"; do
  if [ -f "$d/pgid.$id" ]; then kill -TERM -- "-$(cat "$d/pgid.$id")" 2>/dev/null; fi
  rm -f "$d/running.$id"
done
"""

FAKE_SCONTROL = r"""#!/usr/bin/env bash
# Fake scontrol: the fake jobs are never requeued by the scheduler itself.
d=${FAKE_SCHED_DIR:?}; printf '%s\n' "$*" >> "$d/scontrol.calls"
echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1
"""

FAKE_QSUB = r"""#!/usr/bin/env bash
# Fake qsub: records its arguments, then runs the job script once per task of -t a:b.
d=${FAKE_SCHED_DIR:?}
n=$(( $(cat "$d/qsub.count" 2>/dev/null || echo 0) + 1 )); echo "$n" > "$d/qsub.count"
printf '%s\n' "$@" > "$d/qsub.$n.args"
if [ -n "${FAKE_QMASTER_DOWN_ONCE:-}" ] && [ ! -e "$d/qmaster.was.down" ]; then
  touch "$d/qmaster.was.down"
  echo "error: commlib error: got read error (closing \"qmaster/qmaster/1\")" >&2
  echo "unable to contact qmaster using port 6444 on host \"qmaster\"" >&2
  exit 1
fi
args=("$@"); range=""; out=/dev/null
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in -t) range=${args[i+1]} ;; -o) out=${args[i+1]} ;; esac
done
script=${args[${#args[@]}-1]}
id=$(( 2000 + n ))
if [ -n "$range" ]; then
  for t in $(seq "${range%:*}" "${range#*:}"); do JOB_ID=$id SGE_TASK_ID=$t bash "$script" >> "$out" 2>&1; done
  echo "Your job-array $id.${range%:*}-${range#*:}:1 (\"$(basename "$script")\") has been submitted"
else
  JOB_ID=$id bash "$script" >> "$out" 2>&1
  echo "Your job $id (\"$(basename "$script")\") has been submitted"
fi
"""

FAKE_QSTAT = r"""#!/usr/bin/env bash
d=${FAKE_SCHED_DIR:?}; printf '%s\n' "$*" >> "$d/qstat.calls"
if [ -e "$d/running.${@: -1}" ]; then echo "job_number: ${@: -1}"; exit 0; fi
echo "Following jobs do not exist: ${@: -1}" >&2; exit 1
"""


@pytest.fixture
def cluster(tmp_path):
    """A recipe dir with a path.sh, fake scheduler programs first on PATH, and fast launcher timings."""
    fake_bin = tmp_path / "fakebin"
    fake_bin.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("squeue", FAKE_SQUEUE), ("scancel", FAKE_CANCEL),
                       ("scontrol", FAKE_SCONTROL),
                       ("qsub", FAKE_QSUB), ("qstat", FAKE_QSTAT), ("qdel", FAKE_CANCEL)):
        (fake_bin / name).write_text(text)
        (fake_bin / name).chmod(0o755)
    recipe = tmp_path / "recipe"
    recipe.mkdir()
    (recipe / "path.sh").write_text("export FROM_PATH_SH=yes\n")
    record = tmp_path / "record"
    record.mkdir()
    env = dict(os.environ, PATH=f"{fake_bin}:{os.environ['PATH']}", FAKE_SCHED_DIR=str(record),
               SPEECHDISTILL_LAUNCH_NFS_SLEEP="0", SPEECHDISTILL_LAUNCH_POLL_MAX="0.2",
               SPEECHDISTILL_LAUNCH_STATUS_WAIT="1", SPEECHDISTILL_LAUNCH_VANISHED_WAIT="1",
               SPEECHDISTILL_LAUNCH_SUBMIT_RETRY_WAIT="0")

    class Cluster:
        dir = recipe
        calls_dir = record

        def run(self, launcher, *args, extra_env=None, timeout=60):
            return subprocess.run([str(UTILS / launcher), *map(str, args)], cwd=recipe, capture_output=True,
                                  text=True, env=dict(env, **(extra_env or {})), timeout=timeout)

        def popen(self, launcher, *args, extra_env=None):
            return subprocess.Popen([str(UTILS / launcher), *map(str, args)], cwd=recipe, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=dict(env, **(extra_env or {})))

        def calls(self, program):
            count = record / f"{program}.count"
            total = int(count.read_text()) if count.exists() else 0
            return [(record / f"{program}.{i}.args").read_text().splitlines() for i in range(1, total + 1)]

        def script(self, name, text):
            path = recipe / name
            path.write_text("#!/usr/bin/env bash\n" + text + "\n")
            path.chmod(0o755)
            return f"./{name}"

    return Cluster()


def test_slurm_array_job_options_logs_and_success(cluster):
    result = cluster.run("slurm.pl", "--mem", "2G", "--num-threads", "2", "--gpu", "1", "--max-jobs-run", "2",
                         "--name", "exp/x/train", "JOB=1:3", "exp/x/log/t.JOB.log", "echo", "JOB", "$FROM_PATH_SH")
    assert result.returncode == 0, result.stderr
    script = cluster.dir / "exp/x/q/t.sh"
    # options mapped through the toolkit's conf/slurm.conf, then the q-log, the array with %max, the script
    assert cluster.calls("sbatch") == [[
        "--export=PATH", "--mem", "2G", "--cpus-per-task", "2", "--gres=gpu:1", "--job-name", "exp_x_train",
        "--ntasks-per-node", "1", "--signal=B:USR1@120", "--open-mode=append", "-e", "exp/x/q/t.log",
        "-o", "exp/x/q/t.log", "--array", "1-3%2", str(script)]]
    # the same line went to 'sbatch --test-only' first
    assert (cluster.calls_dir / "sbatch.test-only.args").read_text().splitlines() == \
        ["--export=PATH", "--test-only"] + cluster.calls("sbatch")[0][1:]
    assert "job name 'exp/x/train' sanitised to 'exp_x_train'" in result.stderr
    for index in (1, 2, 3):
        lines = (cluster.dir / f"exp/x/log/t.{index}.log").read_text().splitlines()
        assert lines[0].startswith("# Running on ") and re.match(r"# Started at \w{3} \w{3} ", lines[1])
        assert f"# SLURM_ARRAY_TASK_ID={index}" in lines and "# SLURM_JOB_ID=1001" in lines
        submitted = next(line for line in lines if line.startswith("# Submitted with: "))
        assert submitted.endswith(f"--array 1-3%2 {script}") and submitted.startswith("# Submitted with: sbatch ")
        command_at = lines.index(f"# echo {index} $FROM_PATH_SH")
        assert lines[command_at + 1] == f"{index} yes"  # ./path.sh was sourced in the job
        assert re.fullmatch(r"# Accounting: begin_time=\d+", lines[-4])
        assert re.fullmatch(r"# Accounting: end_time=\d+", lines[-3])
        assert re.fullmatch(r"# Accounting: time=\d+ threads=2", lines[-2])
        assert re.fullmatch(r"# Finished at .* with status 0", lines[-1])
    assert sorted(p.name for p in (cluster.dir / "exp/x/q").iterdir()) == ["t.log", "t.sh"]  # done-files removed
    assert "Submitted batch job 1001" in (cluster.dir / "exp/x/q/t.log").read_text()


def test_single_job_has_no_array_and_its_own_q_dir(cluster):
    result = cluster.run("slurm.pl", "log/one.log", "echo", "hello")
    assert result.returncode == 0, result.stderr
    # 'default gpu=0' of the config applies; 'option gpu=0' adds nothing; no --array
    assert cluster.calls("sbatch") == [["--export=PATH", "--ntasks-per-node", "1", "--signal=B:USR1@120",
                                        "--open-mode=append", "-e", "log/q/one.log", "-o", "log/q/one.log",
                                        str(cluster.dir / "log/q/one.sh")]]
    assert (cluster.dir / "log/one.log").read_text().splitlines()[-1].endswith("with status 0")
    script = (cluster.dir / "log/q/one.sh").read_text()
    assert re.search(r"sync_file=\S+/log/q/done\.\d+\n", script)  # no .<task> suffix


def test_failing_task_exits_1_with_the_failure_line_and_log_tail(cluster):
    job = cluster.script("fail.sh", 'echo "task $1"; [ "$1" != 2 ] || exit 5')
    result = cluster.run("slurm.pl", "JOB=1:2", "exp/log/f.JOB.log", job, "JOB")
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0] == "slurm.pl: 1 / 2 failed, log is in exp/log/f.*.log"
    assert lines[1].startswith("slurm.pl: last ") and lines[1].endswith("lines of exp/log/f.2.log:")
    assert "    task 2" in lines and re.fullmatch(r"    # Finished at .* with status 5", lines[-1])


def test_oom_kill_is_reported_with_status_137(cluster):
    job = cluster.script("oom.sh", "kill -9 $$")
    result = cluster.run("slurm.pl", "exp/log/oom.log", job)
    assert result.returncode == 1
    assert (cluster.dir / "exp/log/oom.log").read_text().splitlines()[-1].endswith("with status 137")
    assert "ask for more with --mem" in result.stderr


REQUEUE_JOB = ('n=$(cat "count.$1" 2>/dev/null || echo 0); echo $((n + 1)) > "count.$1"; '
               'echo "attempt $((n + 1))"; if [ "$1" = 2 ] && [ "$n" -lt "$2" ]; then exit 99; fi')


def test_requeue_resubmits_only_the_task_that_exited_99(cluster):
    job = cluster.script("requeue.sh", REQUEUE_JOB)
    result = cluster.run("slurm.pl", "JOB=1:3", "exp/log/r.JOB.log", job, "JOB", "1")
    assert result.returncode == 0, result.stderr
    calls = cluster.calls("sbatch")
    assert len(calls) == 2 and calls[0][-3:-1] == ["--array", "1-3"] and calls[1][-3:-1] == ["--array", "2"]
    assert "exited with status 99" in result.stderr and "attempt 1 of 3" in result.stderr
    first = (cluster.dir / "exp/log/r.2.log.attempt1").read_text()
    assert "attempt 1\n" in first and first.rstrip().endswith("with status 99")
    second = (cluster.dir / "exp/log/r.2.log").read_text()
    assert "attempt 2\n" in second and second.rstrip().endswith("with status 0")
    assert [(cluster.dir / f"count.{i}").read_text() for i in (1, 2, 3)] == ["1\n", "2\n", "1\n"]


def test_requeue_stops_at_max_requeue(cluster):
    job = cluster.script("requeue.sh", REQUEUE_JOB)
    result = cluster.run("slurm.pl", "--max-requeue", "1", "JOB=2", "exp/log/r.JOB.log", job, "JOB", "5")
    assert result.returncode == 1
    assert len(cluster.calls("sbatch")) == 2 and (cluster.dir / "count.2").read_text() == "2\n"
    assert "--max-requeue limit was reached" in result.stderr
    result = cluster.run("slurm.pl", "--max-requeue", "0", "JOB=2", "exp/log/s.JOB.log", job, "JOB", "5")
    assert result.returncode == 1 and len(cluster.calls("sbatch")) == 3


def test_pick_failed_resubmits_only_failed_tasks(cluster):
    job = cluster.script("p.sh", '[ "$1" != 2 ] || [ -e fixed ]')
    assert cluster.run("slurm.pl", "JOB=1:3", "exp/log/p.JOB.log", job, "JOB").returncode == 1
    (cluster.dir / "fixed").touch()
    result = cluster.run("slurm.pl", "--pick", "failed", "JOB=1:3", "exp/log/p.JOB.log", job, "JOB")
    assert result.returncode == 0, result.stderr
    assert cluster.calls("sbatch")[1][-3:-1] == ["--array", "2"]
    assert "2 of 3 job(s) not resubmitted" in result.stderr


def test_sigterm_cancels_the_submitted_jobs(cluster):
    job = cluster.script("long.sh", "sleep 30")
    process = cluster.popen("slurm.pl", "JOB=1:2", "exp/log/l.JOB.log", job, extra_env={"FAKE_SCHED_MODE": "background"})
    for _ in range(200):
        if (cluster.calls_dir / "running.1001").exists() and (cluster.dir / "exp/log/l.1.log").exists():
            break
        time.sleep(0.05)
    start = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 2 and time.monotonic() - start < 10
    assert (cluster.calls_dir / "scancel.args").read_text().split() == ["1001"]
    assert "caught SIGTERM; cancelled job(s) 1001 with scancel" in stderr


def test_job_that_leaves_the_queue_without_finishing_fails_with_a_hint(cluster):
    result = cluster.run("slurm.pl", "exp/log/v.log", "echo", "never", extra_env={"FAKE_SCHED_MODE": "lose"})
    assert result.returncode == 1
    assert "left the queue without finishing" in result.stderr
    assert "exp/log/v.log is missing or empty: the job never started" in result.stderr
    assert (cluster.calls_dir / "squeue.calls").read_text().splitlines()[0] == "-h -j 1001"


def test_recipe_conf_wins_and_undescribed_options_are_fatal(cluster):
    conf = cluster.dir / "conf"
    conf.mkdir()
    (conf / "slurm.conf").write_text("# site config\ncommand sbatch --parsable --partition=short  # comment\n"
                                     "option mem=* --mem $0\n")
    assert cluster.run("slurm.pl", "--mem", "1G", "a.log", "true").returncode == 0
    assert cluster.calls("sbatch")[0][:4] == ["--parsable", "--partition=short", "--mem", "1G"]
    result = cluster.run("slurm.pl", "--gpu", "1", "a.log", "true")
    assert result.returncode == 255
    assert ("command line option --gpu (value '1') is not described in conf/slurm.conf; add 'option gpu=*"
            in result.stderr)


@pytest.mark.parametrize("config, code, message", [
    (None, 1, "could not open config file missing.conf"),
    ("option mem=* --mem $0\n", 1, "has no 'command <submit command ...>' line"),
    ("command sbatch\nmem=2G\n", 1, "bad.conf:2: cannot parse 'mem=2G'"),
])
def test_config_file_errors(cluster, config, code, message):
    name = "missing.conf" if config is None else "bad.conf"
    if config is not None:
        (cluster.dir / name).write_text(config)
    result = cluster.run("slurm.pl", "--config", name, "a.log", "true")
    assert result.returncode == code and message in result.stderr
    assert cluster.calls("sbatch") == []


def test_submit_program_missing_from_path(cluster, tmp_path):
    bare = tmp_path / "bare-bin"  # what the wrapper needs, and no sbatch (which /usr/bin may have)
    bare.mkdir()
    for tool in ("bash", "dirname"):
        (bare / tool).symlink_to(shutil.which(tool))
    result = cluster.run("slurm.pl", "a.log", "true", extra_env={"PATH": str(bare)})
    assert result.returncode == 1 and "'sbatch' (the submit command of" in result.stderr


def test_queue_pl_array_options_logs_and_sync_dir(cluster):
    result = cluster.run("queue.pl", "--mem", "2G", "--num-threads", "2", "--max-jobs-run", "2", "--name", "exp/a b",
                         "JOB=1:3", "exp/x/log/q.JOB.log", "echo", "JOB", "$FROM_PATH_SH")
    assert result.returncode == 0, result.stderr
    script = cluster.dir / "exp/x/q/q.sh"
    assert cluster.calls("qsub") == [[
        "-v", "PATH", "-cwd", "-S", "/bin/bash", "-j", "y", "-l", "mem_free=2G,ram_free=2G", "-pe", "smp", "2",
        "-N", "exp_a_b", "-o", "exp/x/q/q.log", "-t", "1:3", "-tc", "2", str(script)]]
    for index in (1, 2, 3):
        lines = (cluster.dir / f"exp/x/log/q.{index}.log").read_text().splitlines()
        assert lines[0].startswith("# Running on ") and not any(line.startswith("# SLURM") for line in lines)
        assert lines[lines.index(f"# echo {index} $FROM_PATH_SH") + 1] == f"{index} yes"
        assert re.fullmatch(r"# Accounting: time=\d+ threads=2", lines[-2])
        assert re.fullmatch(r"# Finished at .* with status 0", lines[-1])
    assert 'sync_file=' in script.read_text() and "/exp/x/q/sync/done." in script.read_text()
    assert (cluster.dir / "exp/x/q/sync").is_dir() and not list((cluster.dir / "exp/x/q/sync").iterdir())


def test_queue_pl_retries_when_qmaster_is_unreachable(cluster):
    result = cluster.run("queue.pl", "a.log", "true", extra_env={"FAKE_QMASTER_DOWN_ONCE": "1"})
    assert result.returncode == 0, result.stderr
    assert len(cluster.calls("qsub")) == 2 and "retrying" in result.stderr


def test_queue_pl_oom_exit_100_leaves_no_done_file_and_the_log_decides(cluster):
    job = cluster.script("oom.sh", "kill -9 $$")
    result = cluster.run("queue.pl", "JOB=1:1", "exp/log/o.JOB.log", job)
    assert result.returncode == 1
    assert (cluster.dir / "exp/log/o.1.log").read_text().splitlines()[-1].endswith("with status 137")
    assert "ask for more with --mem" in result.stderr and "left the queue without finishing" in result.stderr
    assert (cluster.calls_dir / "qstat.calls").read_text().splitlines()[0] == "-j 2001"


def test_queue_conf_requires_dollar0_in_star_options(cluster):
    (cluster.dir / "q.conf").write_text("command qsub\noption mem=* -l mem_free\n")
    result = cluster.run("queue.pl", "--config", "q.conf", "--mem", "1G", "a.log", "true")
    assert result.returncode == 1 and "q.conf:2" in result.stderr and "no $0" in result.stderr


def test_readme_shows_the_sbatch_lines_of_1_8_and_2x4_gpu_training_jobs(cluster):
    """docs/clusters.md (and the README's 8-GPU example): the lines utils/launch_training.sh and slurm.pl submit
    for stage 3 with the default conf/slurm.conf and cmd.sh's cuda_cmd."""
    readme = (REPO / "docs" / "clusters.md").read_text()
    short = (REPO / "README.md").read_text()
    log = "exp/distill_distilhubert/log/distill_train.log"
    for options in (["--ngpu", "1"], ["--ngpu", "8"], ["--ngpu", "4", "--num_nodes", "2"]):
        cluster.run("launch_training.sh", "--cmd", f"{UTILS / 'slurm.pl'} --mem 16G", *options, log, "python", "-m",
                    "speechdistill.bin.distill_train", "--config", "conf/distilhubert.yaml",
                    extra_env={"FAKE_SCHED_MODE": "lose"})
        line = "sbatch " + " ".join(cluster.calls("sbatch")[-1]).replace(f"{cluster.dir}/", "$PWD/")
        assert f"# ./run.sh --stage 3 --stop_stage 3 {' '.join(options)}\n{line}\n" in readme
        if options == ["--ngpu", "8"]:
            assert f"\n{line}\n" in short
