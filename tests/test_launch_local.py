"""utils/run.pl (speechdistill.launch.local) run as a real subprocess in a temporary recipe dir."""
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUN_PL = REPO / "egs" / "TEMPLATE" / "utils" / "run.pl"
HEADER = re.compile(r"^# (?P<cmd>.*)\n# Started at \w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \S+ \d{4}\n#\n", re.M)
FOOTER = re.compile(r"# Accounting: time=(?P<t1>\d+) threads=1\n# Ended \(code (?P<code>\d+)\) at \w{3} \w{3} [ \d]\d "
                    r"\d\d:\d\d:\d\d \S+ \d{4}, elapsed time (?P<t2>\d+) seconds\n\Z")


def script(directory, name, text):
    """A bash script file for a job: run.pl quotes a single argument with spaces as one word."""
    path = directory / name
    path.write_text("#!/usr/bin/env bash\n" + text + "\n")
    path.chmod(0o755)
    return f"./{name}"


def run_pl(cwd, *args, env=None, timeout=60):
    return subprocess.run([str(RUN_PL), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_three_jobs_write_three_logs_with_header_and_footer(tmp_path):
    result = run_pl(tmp_path, "JOB=1:3", "exp/log/x.JOB.log", "echo", "JOB")
    assert result.returncode == 0, result.stderr
    for index in (1, 2, 3):
        text = (tmp_path / f"exp/log/x.{index}.log").read_text()
        header = HEADER.match(text)
        assert header and header.group("cmd") == f"echo {index}"
        footer = FOOTER.search(text)
        assert footer and footer.group("code") == "0" and footer.group("t1") == footer.group("t2")
        assert text[header.end():footer.start()] == f"{index}\n"
    assert result.stderr == "" and result.stdout == ""


def test_failing_job_makes_run_pl_exit_1_and_its_log_says_the_code(tmp_path):
    result = run_pl(tmp_path, "JOB=1:3", "exp/log/x.JOB.log", "bash", "-c", "echo job JOB; exit $(( JOB == 2 ? 3 : 0 ))")
    assert result.returncode == 1
    assert FOOTER.search((tmp_path / "exp/log/x.2.log").read_text()).group("code") == "3"
    assert FOOTER.search((tmp_path / "exp/log/x.1.log").read_text()).group("code") == "0"
    lines = result.stderr.splitlines()
    assert lines[0] == "run.pl: 1 / 3 failed, log is in exp/log/x.*.log"
    assert lines[1] == "run.pl: last 6 lines of exp/log/x.2.log:"
    assert lines[5] == "    job 2"  # the tail of the first failing log follows


def test_single_failing_job_message_and_command_not_found_hint(tmp_path):
    result = run_pl(tmp_path, "exp/log/one.log", "no_such_program_xyz", "arg")
    assert result.returncode == 1
    assert "run.pl: job failed, log is in exp/log/one.log" in result.stderr
    assert "no_such_program_xyz: command not found" in result.stderr
    assert "status 127 means 'command not found'" in result.stderr


@pytest.mark.parametrize("args, code, message", [
    (["JOB=1:3", "exp/one.log", "echo"], 1, "putting the output into just one log file"),
    (["JOB=0:2", "exp/x.JOB.log", "echo"], 255, "start must be at least 1"),
    (["JOB=3:1", "exp/x.JOB.log", "echo"], 255, "start is after end"),
    (["--mem=2G", "exp/x.log", "echo"], 255, "not '--mem=2G'; write '--mem 2G'"),
    (["--max-jobs-run", "0", "exp/x.log", "echo"], 255, "expected a positive integer"),
    (["--pick", "some", "exp/x.log", "echo"], 255, "--pick must be one of"),
    (["exp/x.log"], 255, "expected [options]"),
])
def test_usage_errors(tmp_path, args, code, message):
    result = run_pl(tmp_path, *args)
    assert result.returncode == code
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "exp").exists()


def test_options_interleave_with_the_range_and_cluster_options_are_ignored(tmp_path):
    result = run_pl(tmp_path, "--mem", "2G", "-q", "all.q", "JOB=2:3", "--num-threads", "4", "--gpu", "0", "--time",
                    "1:00:00", "--name", "x/y", "exp/log/JOB/o.log", "echo", "JOB", ">", "out.JOB")
    assert result.returncode == 0, result.stderr
    # JOB is replaced in the log path (even a directory) and in the command; '>' became shell syntax
    assert (tmp_path / "exp/log/2/o.log").is_file() and (tmp_path / "exp/log/3/o.log").is_file()
    assert (tmp_path / "out.3").read_text() == "3\n"
    assert not (tmp_path / "exp/log/1").exists()


def test_quoting_of_arguments_with_spaces_and_quotes(tmp_path):
    # What a recipe line  run.pl q.log echo "two words" 'say "hi" ...' "" a\\|b \| tr a-z A-Z  passes:
    result = run_pl(tmp_path, "q.log", "echo", "two words", 'say "hi" it\'s $HOME', "", "a\\|b", "|", "tr", "a-z", "A-Z")
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "q.log").read_text()
    # Kaldi's rules: spaces -> double quotes, spaces + double quote -> single quotes, none -> raw
    # (so a bare | is a pipe); ours also keeps an empty argument and escapes a ' inside '...'
    assert HEADER.match(text).group("cmd") == """echo "two words" 'say "hi" it'\\''s $HOME' '' a\\|b | tr a-z A-Z"""
    assert "\nTWO WORDS SAY \"HI\" IT'S $HOME  A|B\n" in text


def test_max_jobs_run_1_runs_jobs_one_at_a_time(tmp_path):
    # Each job holds a lock dir while it runs; a second job running at the same time would fail mkdir.
    job = script(tmp_path, "lock.sh", "mkdir lock && sleep 0.1 && rmdir lock")
    result = run_pl(tmp_path, "--max-jobs-run", "1", "JOB=1:4", "log/l.JOB.log", job)
    assert result.returncode == 0, result.stderr


def test_max_jobs_run_3_runs_three_jobs_at_once(tmp_path):
    # A barrier: every job waits (up to 10 s) until all three have started.
    barrier = script(tmp_path, "barrier.sh", 'touch "started.$1"; for i in $(seq 100); do '
                                             '[ "$(ls started.* | wc -l)" -ge 3 ] && exit 0; sleep 0.1; done; exit 1')
    result = run_pl(tmp_path, "--max-jobs-run", "3", "JOB=1:3", "log/b.JOB.log", barrier, "JOB")
    assert result.returncode == 0, result.stderr


def test_pick_failed_reruns_only_failed_jobs_and_incomplete_does_not(tmp_path):
    command = [script(tmp_path, "p.sh", 'echo "run $1" >> runs; test "$1" != 2 || test -e fixed'), "JOB"]
    assert run_pl(tmp_path, "JOB=1:3", "log/p.JOB.log", *command).returncode == 1
    first_log = (tmp_path / "log/p.1.log").read_text()
    # incomplete: a log without an 'Ended' line is rerun; a failed one stays failed
    (tmp_path / "log/p.3.log").write_text("# echo run 3\n# Started at Mon Jan  1 00:00:00 UTC 2024\n#\n")
    (tmp_path / "fixed").touch()
    result = run_pl(tmp_path, "--pick", "incomplete", "JOB=1:3", "log/p.JOB.log", *command)
    assert result.returncode == 1 and "1 / 3 failed" in result.stderr
    assert (tmp_path / "runs").read_text().split("\n")[3:] == ["run 3", ""]
    result = run_pl(tmp_path, "--pick", "failed", "JOB=1:3", "log/p.JOB.log", *command)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "runs").read_text().splitlines()[-1] == "run 2"
    assert (tmp_path / "log/p.1.log").read_text() == first_log


def test_gpu_jobs_get_their_own_devices(tmp_path):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    smi = fake_bin / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: Fake (UUID: a)'\necho 'GPU 1: Fake (UUID: b)'\n")
    smi.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env["PATH"] = f"{fake_bin}:{env['PATH']}"
    # two slots of one GPU each; jobs 1+2 and 3+4 wait for each other, so each pair runs at the same time
    barrier = script(tmp_path, "gpu.sh", 'echo "dev=$CUDA_VISIBLE_DEVICES"; touch "s.$1"; p=$(( $1 % 2 ? $1 + 1 : $1 - 1 ));'
                                         ' for i in $(seq 100); do [ -e "s.$p" ] && exit 0; sleep 0.1; done; exit 1')
    result = run_pl(tmp_path, "--gpu", "1", "JOB=1:4", "log/g.JOB.log", barrier, "JOB", env=env)
    assert result.returncode == 0, result.stderr
    devices = [re.search(r"dev=(\S*)", (tmp_path / f"log/g.{i}.log").read_text()).group(1) for i in (1, 2, 3, 4)]
    assert devices[:2] == ["0", "1"] and sorted(devices[2:]) == ["0", "1"]


def test_requeue_code_passes_through_run_pl_with_a_resume_hint(tmp_path):
    result = run_pl(tmp_path, "log/r.log", "exit", "99")
    assert result.returncode == 99
    assert "rerun the same command" in result.stderr
    # one job asking for requeue and one failing: a failure
    job = script(tmp_path, "mixed.sh", '[ "$1" = 1 ] && exit 99; exit 3')
    assert run_pl(tmp_path, "JOB=1:2", "log/m.JOB.log", job, "JOB").returncode == 1


def _start_and_wait_ready(tmp_path, job, *launcher_args):
    process = subprocess.Popen([str(RUN_PL), *launcher_args, job], cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    for _ in range(200):
        if (tmp_path / "ready").exists():
            break
        time.sleep(0.05)
    return process


def _signal_twice(process, signum, pause):
    """Send ``signum`` to run.pl twice, ``pause`` s apart; returns its stderr once it ended (within 10 s)."""
    start = time.monotonic()
    process.send_signal(signum)
    time.sleep(pause)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=20)
    assert time.monotonic() - start < 10
    return stderr


def test_sigterm_is_forwarded_to_the_job_which_checkpoints_and_run_pl_exits_99(tmp_path):
    job = script(tmp_path, "t.sh", "trap 'echo checkpointed; sleep 0.5; exit 99' TERM; touch ready; sleep 30 & wait")
    process = _start_and_wait_ready(tmp_path, job, "log/t.log")
    # the same stop request twice (Slurm and a wrapping run.sh both send one): passed on, no kill
    stderr = _signal_twice(process, signal.SIGTERM, 0.1)
    assert process.returncode == 99
    assert "interrupted by SIGTERM" in stderr and "every stopped job checkpointed" in stderr
    text = (tmp_path / "log/t.log").read_text()
    assert "checkpointed\n" in text and FOOTER.search(text).group("code") == "99"


def test_a_job_that_does_not_checkpoint_makes_an_interrupted_run_pl_exit_2_and_ctrl_c_twice_kills(tmp_path):
    job = script(tmp_path, "i.sh", "trap 'echo stopping slowly; sleep 20; exit 0' INT; touch ready; sleep 30 & wait")
    process = _start_and_wait_ready(tmp_path, job, "log/i.log")
    _signal_twice(process, signal.SIGINT, 0.5)  # impatient: the second Ctrl-C kills
    assert process.returncode == 2
    text = (tmp_path / "log/i.log").read_text()
    assert "stopping slowly\n" in text and "# Ended (code 0; signal 9)" in text
