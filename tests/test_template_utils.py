"""egs/TEMPLATE as a recipe uses it: utils/ through a symlink, cmd.sh, path.sh, db.sh, the data-dir scripts."""
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "egs" / "TEMPLATE"


@pytest.fixture
def recipe(tmp_path):
    """egs/<corpus>/<recipe>-like dir: utils -> TEMPLATE/utils, and a shell without the venv activated."""
    directory = tmp_path / "egs" / "corpus" / "recipe"
    directory.mkdir(parents=True)
    (directory / "utils").symlink_to(TEMPLATE / "utils")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"

    def sh(command, **kwargs):
        return subprocess.run(["bash", "-c", command], cwd=directory, capture_output=True, text=True, env=env,
                              timeout=120, **kwargs)

    sh.dir = directory
    return sh


def write_dir(path, files):
    path.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def small_dir(recipe, name="data/train"):
    utts = ["a-1", "a-2", "b-1", "b-2", "c-1", "c-2"]
    return write_dir(recipe.dir / name, {
        "utt2spk": "".join(f"{u} {u[0]}\n" for u in utts),
        "spk2utt": "a a-1 a-2\nb b-1 b-2\nc c-1 c-2\n",
        "text": "".join(f"{u} T{i}\n" for i, u in enumerate(utts)),
        "wav.scp": "".join(f"{u} /w/{u}.wav\n" for u in utts)})


def test_wrappers_work_from_a_recipe_dir_through_the_symlink_without_an_active_venv(recipe):
    small_dir(recipe)
    result = recipe("utils/validate_data_dir.sh data/train && utils/run.pl JOB=1:2 exp/log/x.JOB.log echo JOB")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Successfully validated data-directory data/train\n"
    assert (recipe.dir / "exp/log/x.2.log").read_text().splitlines()[3] == "2"


@pytest.mark.parametrize("script", ["validate_data_dir.sh", "fix_data_dir.sh", "subset_data_dir.sh",
                                    "combine_data.sh", "copy_data_dir.sh", "split_data.sh", "get_utt2num_samples.sh",
                                    "filter_scp.pl", "utt2spk_to_spk2utt.pl", "spk2utt_to_utt2spk.pl", "run.pl",
                                    "queue.pl", "slurm.pl"])
def test_every_script_has_help(recipe, script):
    result = recipe(f"utils/{script} --help")
    assert result.returncode == 0 and "Usage:" in result.stdout + result.stderr


def test_subset_copy_combine_split(recipe):
    small_dir(recipe)
    result = recipe("utils/subset_data_dir.sh data/train 3 data/sub && "
                    "utils/subset_data_dir.sh --per-spk data/train 1 data/per && "
                    "utils/copy_data_dir.sh --utt-prefix x- --spk-prefix x- --validate-opts --non-print data/sub data/x && "
                    "utils/combine_data.sh data/all data/train data/x && "
                    "utils/split_data.sh --print-nj data/all 4")
    assert result.returncode == 0, result.stderr
    assert (recipe.dir / "data/sub/utt2spk").read_text() == "a-2 a\nb-2 b\nc-2 c\n"  # positions 1, 3, 5 of 6
    assert (recipe.dir / "data/per/utt2spk").read_text() == "a-2 a\nb-2 b\nc-2 c\n"
    assert (recipe.dir / "data/x/utt2uniq").read_text() == "x-a-2 a-2\nx-b-2 b-2\nx-c-2 c-2\n"
    assert "reducing #utt from 6 to 3" in result.stderr
    assert "Successfully validated data-directory data/x" in result.stdout
    assert "not combining utt2uniq" not in result.stderr  # synthesised for data/train instead
    assert (recipe.dir / "data/all/utt2uniq").read_text().splitlines()[:2] == ["a-1 a-1", "a-2 a-2"]
    assert result.stdout.splitlines()[-1] == "4"
    parts = [(recipe.dir / f"data/all/split4/{i}/spk2utt").read_text() for i in (1, 2, 3, 4)]
    # 9 utterances of speakers a b c (2 each) and x-a x-b x-c (1 each), cut without splitting a speaker;
    # utterance midpoints 1, 3, 5, 6.5, 7.5, 8.5 fall in parts floor(mid * 4 / 9) = 0, 1, 2, 2, 3, 3
    assert parts == ["a a-1 a-2\n", "b b-1 b-2\n", "c c-1 c-2\nx-a x-a-2\n", "x-b x-b-2\nx-c x-c-2\n"]
    again = recipe("utils/split_data.sh data/all 4")
    assert "up to date; nothing to do" in again.stderr


def test_split_with_more_jobs_than_speakers_clamps_and_prints_nj(recipe):
    small_dir(recipe)
    result = recipe("nj=$(utils/split_data.sh --print-nj data/train 10) && echo nj=$nj && ls data/train/split3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["nj=3", "1", "2", "3"]
    assert "only 3 speakers: splitting into 3 parts instead of 10 (use nj=3)" in result.stderr
    result = recipe("utils/split_data.sh --per-utt data/train 4 && cat data/train/split4utt/1/utt2spk")
    assert result.stdout == "a-1 a\na-2 a\n"


def test_combine_refuses_duplicate_ids_and_subset_refuses_too_many(recipe):
    small_dir(recipe)
    result = recipe("utils/combine_data.sh data/all data/train data/train")
    assert result.returncode == 1 and "utterance id 'a-1' is in both data/train and data/train" in result.stderr
    assert not (recipe.dir / "data/all").exists()
    result = recipe("utils/subset_data_dir.sh data/train 7 data/sub")
    assert result.returncode == 1 and "asked for 7 utterances but the data dir has only 6" in result.stderr
    result = recipe("utils/copy_data_dir.sh data/train data/train")
    assert result.returncode == 1 and "source and destination are the same directory" in result.stderr


def test_filter_scp_and_spk2utt_conversions(recipe):
    small_dir(recipe)
    (recipe.dir / "ids").write_text("b-1\nc-2 extra columns\n")
    (recipe.dir / "trials").write_text("a-1 b-1 target\na-1 c-2 nontarget\nc-2 a-2 nontarget\n")
    result = recipe("utils/filter_scp.pl ids data/train/text && echo --- && "
                    "utils/filter_scp.pl --exclude ids < data/train/text && echo --- && "
                    "utils/filter_scp.pl -f 2 ids trials && echo --- && "
                    "utils/utt2spk_to_spk2utt.pl data/train/utt2spk | utils/spk2utt_to_utt2spk.pl")
    assert result.returncode == 0, result.stderr
    blocks = result.stdout.split("---\n")
    assert blocks[0] == "b-1 T2\nc-2 T5\n"
    assert blocks[1] == "a-1 T0\na-2 T1\nb-2 T3\nc-1 T4\n"
    assert blocks[2] == "a-1 b-1 target\na-1 c-2 nontarget\n"
    assert blocks[3] == (recipe.dir / "data/train/utt2spk").read_text()
    result = recipe("utils/filter_scp.pl -f 4 ids trials")
    assert result.returncode == 1 and "trials:1: has 3 field(s), but -f 4 was asked for" in result.stderr


def test_get_utt2num_samples_lists_failures_and_reruns_incrementally(recipe):
    audio = recipe.dir / "audio"
    audio.mkdir()
    soundfile.write(audio / "a.wav", np.zeros(16000, np.float32), 16000, subtype="PCM_16")
    soundfile.write(audio / "b.flac", np.zeros(8000, np.float32), 16000, subtype="PCM_16")
    write_dir(recipe.dir / "data/d", {"utt2spk": "s-a s\ns-b s\ns-c s\n",
                                      "wav.scp": "s-a audio/a.wav\ns-b flac_is_missing -d audio/b.flac |\n"
                                                 "s-c audio/c.wav\n"})
    result = recipe("utils/get_utt2num_samples.sh --nj 1 data/d")
    assert result.returncode == 1
    assert "2 utterance(s) could not be measured" in result.stderr
    assert "cannot measure s-c:" in result.stderr and "audio file not found" in result.stderr
    assert (recipe.dir / "data/d/utt2num_samples").read_text() == "s-a 16000\n"
    log = (recipe.dir / "data/d/log/get_utt2num_samples.log").read_text()
    assert "cannot measure s-b" in log and "flac_is_missing: command not found" in log
    (recipe.dir / "data/d/wav.scp").write_text("s-a audio/a.wav\ns-b cat audio/b.flac |\ns-c audio/a.wav\n")
    result = recipe("utils/get_utt2num_samples.sh data/d")
    assert result.returncode == 0, result.stderr
    assert "measured 2 utterance(s), kept 1 unchanged from before, 0 failed" in result.stderr
    assert (recipe.dir / "data/d/utt2num_samples").read_text() == "s-a 16000\ns-b 8000\ns-c 16000\n"
    assert (recipe.dir / "data/d/utt2dur").read_text() == "s-a 1\ns-b 0.5\ns-c 1\n"


def test_cmd_sh_selects_the_launchers(recipe):
    (recipe.dir / "cmd.sh").write_text((TEMPLATE / "cmd.sh").read_text())
    for backend, launcher in (("local", "utils/run.pl"), ("sge", "utils/queue.pl --mem 4G"),
                              ("slurm", "utils/slurm.pl --mem 4G")):
        result = recipe(f"set -eu; cmd_backend={backend}; . ./cmd.sh; echo \"$train_cmd|$cuda_cmd|$decode_cmd\"")
        assert result.returncode == 0 and result.stdout.split("|")[0] == launcher
    result = recipe("cmd_backend=pbs; . ./cmd.sh || echo returned $?")
    assert result.stdout == "returned 1\n" and "unknown cmd_backend 'pbs'" in result.stderr


def test_path_sh_finds_the_checkout_from_a_symlinked_recipe_and_is_idempotent(tmp_path):
    checkout = tmp_path / "checkout"
    (checkout / "tools").mkdir(parents=True)
    (checkout / "tools/activate_python.sh").write_text('activations=$(( ${activations:-0} + 1 ))\n')
    recipe_dir = checkout / "egs" / "corpus" / "recipe"
    recipe_dir.mkdir(parents=True)
    (recipe_dir / "path.sh").write_text((TEMPLATE / "path.sh").read_text())
    (recipe_dir / "local").mkdir()
    (recipe_dir / "local/path.sh").write_text("export RECIPE_LOCAL=1\n")
    (tmp_path / "elsewhere").symlink_to(recipe_dir)
    env = {k: v for k, v in os.environ.items() if k not in ("LC_ALL", "SPEECHDISTILL_ROOT")}
    result = subprocess.run(["bash", "-c", 'set -euo pipefail; . ./path.sh; . ./path.sh; '
                                           'echo "$activations $LC_ALL $PYTHONIOENCODING $OMP_NUM_THREADS $RECIPE_LOCAL"'],
                            cwd=tmp_path / "elsewhere", capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "2 C UTF-8 1 1\n"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "path.sh").write_text((TEMPLATE / "path.sh").read_text())
    result = subprocess.run(["bash", "-c", ". ./path.sh || echo failed $?"], cwd=outside, capture_output=True,
                            text=True, env=env, timeout=30)
    assert result.stdout == "failed 1\n" and "no speechdistill checkout" in result.stderr


def test_path_sh_activates_the_real_venv(tmp_path):
    (tmp_path / "path.sh").write_text((TEMPLATE / "path.sh").read_text())
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env.update(SPEECHDISTILL_ROOT=str(REPO), PATH="/usr/bin:/bin")
    result = subprocess.run(["bash", "-c", "set -eu; . ./path.sh; command -v python"], cwd=tmp_path,
                            capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(REPO / "tools/venv/bin/python")


def test_db_sh_defines_one_variable_per_corpus(tmp_path):
    result = subprocess.run(["bash", "-c", f"set -eu; . {TEMPLATE / 'db.sh'}; "
                                           "echo ${LIBRISPEECH-unset} ${VOXCELEB1-unset} ${MUSAN-unset}"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout == "\n"  # all set, all empty until the user fills them


def test_pool_runs_at_most_nj_at_once_and_pool_wait_returns_the_first_failure(recipe):
    script = (
        "set -u; . utils/recipe.sh\n"
        "job() { echo start $1 >> order; sleep $2; echo end $1 >> order; return $3; }\n"
        "pool 2 job a 0.6 0; pool 2 job b 0.2 3; pool 2 job c 0.1 0\n"
        "pool_wait; echo first=$?\n"
        "pool 2 job d 0 0; pool_wait; echo second=$?\n"
        "pool 1 job e 0 5; echo inline=$?\n")
    result = recipe(script)
    assert result.stdout.splitlines() == ["first=3", "second=0", "inline=5"], result.stderr
    order = (recipe.dir / "order").read_text().split("\n")
    # c starts only when one of a, b has ended: never three running at once
    assert order.index("start c") > min(order.index("end a"), order.index("end b"))
    assert order[-3:] == ["start e", "end e", ""] and order.index("start d") > order.index("end a")
