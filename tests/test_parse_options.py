"""egs/TEMPLATE/utils/parse_options.sh sourced by a real bash script under 'set -euo pipefail'."""
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PARSE_OPTIONS = REPO / "egs" / "TEMPLATE" / "utils" / "parse_options.sh"

SCRIPT = f"""#!/usr/bin/env bash
set -euo pipefail
stage=0
stop_stage=100
use_gpu=false
nj=4
opts=""
cmd=run.pl
help_message="Usage: stages.sh [options] <data-dir>"
. {PARSE_OPTIONS}
echo "stage=$stage stop_stage=$stop_stage use_gpu=$use_gpu nj=$nj opts=$opts cmd=$cmd"
for arg in "$@"; do echo "positional=$arg"; done
"""


@pytest.fixture
def stages(tmp_path):
    script = tmp_path / "stages.sh"
    script.write_text(SCRIPT)
    script.chmod(0o755)

    def run(*args):
        return subprocess.run([str(script), *args], cwd=tmp_path, capture_output=True, text=True, timeout=30)

    return run


def values(result):
    first, *rest = result.stdout.splitlines()
    return dict(item.split("=", 1) for item in first.split(" ")), [line.split("=", 1)[1] for line in rest]


def test_dashes_and_underscores_name_the_same_variable(stages):
    for spelling in ("--stop-stage", "--stop_stage"):
        result = stages(spelling, "3", "data/x")
        assert result.returncode == 0, result.stderr
        assert values(result) == ({"stage": "0", "stop_stage": "3", "use_gpu": "false", "nj": "4", "opts": "",
                                   "cmd": "run.pl"}, ["data/x"])


def test_config_is_sourced_first_and_the_command_line_wins_in_either_order(stages, tmp_path):
    (tmp_path / "c.conf").write_text("nj=8\nstop_stage=9\nuse_gpu=true\n")
    for args in (["--config", "c.conf", "--stop-stage", "3"], ["--stop-stage", "3", "--config", "c.conf"]):
        result = stages(*args)
        assert result.returncode == 0, result.stderr
        got, _ = values(result)
        assert (got["stop_stage"], got["nj"], got["use_gpu"]) == ("3", "8", "true")


def test_last_repeat_wins_and_values_may_start_with_dashes(stages):
    result = stages("--nj", "2", "--opts", "--non-print", "--nj", "6", "a", "--nj", "9")
    got, positional = values(result)
    assert (got["nj"], got["opts"]) == ("6", "--non-print")
    assert positional == ["a", "--nj", "9"]  # options after the first positional stay positional


def test_values_are_taken_literally(stages):
    result = stages("--opts", "$HOME `id` $(id) \"q\" 'x'")
    assert "opts=$HOME `id` $(id) \"q\" 'x' cmd=run.pl" in result.stdout


def test_double_dash_ends_the_options(stages):
    assert values(stages("--nj", "3", "--", "--stage", "x"))[1] == ["--stage", "x"]


@pytest.mark.parametrize("args, message", [
    (["--stop-stag", "3"], "stages.sh: invalid option --stop-stag (the script has no variable 'stop_stag')"),
    (["--nj"], "option --nj needs a value"),
    (["--nj=3"], "must be of the form --name value, got '--nj=3' (write '--nj 3')"),
    (["--use-gpu", "yes"], 'expected "true" or "false": --use-gpu yes'),
    (["--config", "missing.conf"], "missing config file 'missing.conf'"),
    (["--config"], "option --config needs a file name"),
    (["--cmd", ""], "empty argument to --cmd option"),
    (["--_po_k", "1"], "invalid option --_po_k"),
])
def test_errors_exit_1_with_one_line(stages, args, message):
    result = stages(*args)
    assert result.returncode == 1 and result.stdout == ""
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_boolean_check_uses_the_value_after_the_config(stages, tmp_path):
    (tmp_path / "c.conf").write_text("nj=true\n")
    result = stages("--config", "c.conf", "--nj", "4")
    assert result.returncode == 1 and 'expected "true" or "false": --nj 4' in result.stderr


def test_help_prints_the_help_message_and_exits_0(stages):
    for flag in ("--help", "-h"):
        result = stages("--nj", "3", flag)
        assert result.returncode == 0 and result.stdout == ""
        assert result.stderr == "Usage: stages.sh [options] <data-dir>\n"
