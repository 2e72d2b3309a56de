"""End to end: egs/voxceleb/oskdft/run.sh on the tiny mini VoxCeleb: stages 0-2 importing a given teacher,
then stages 3-5 of the fbank preset with TTA, mean subtraction and AS-norm (short settings), ending in
RESULTS.md with EER/minDCF for every trial list; reruns and refusals. The OS-KDFT system through stages
3-5, and stage 2 without --teacher (the pretrained default teacher), are run by tests/test_demo_sv.py.

The recipe is copied into a temporary egs/ tree beside a link to the checkout's egs/TEMPLATE, so its
data/, downloads/ and exp/ land in tmp_path. The teacher is a tiny random HuBERT saved by transformers.
"""
import os
import re
import subprocess
from pathlib import Path

import kaldiio
import pytest

from conftest import copy_recipes
from test_sv_fixtures import save_tiny_hf_teacher

from speechdistill.data.tables import read_table

# tiny sizes on top of the mini presets: 1 s crops, 4 s batches, a few updates, a small ECAPA
SHORT = ("--max_steps 3 --max_seconds 1.0 --batch_seconds 4.0 --num_buckets 1 --num_workers 0 --log_every 1 "
         "--ecapa.channels 16 --ecapa.se_bottleneck 8 --ecapa.aggregation_channels 48 "
         "--ecapa.attention_channels 8 --ecapa.embedding_size 16")


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    repo_root = Path(__file__).resolve().parents[1]
    root = tmp_path_factory.mktemp("recipe_sv")
    copy_recipes(root)
    save_tiny_hf_teacher(root / "hf_teacher")
    return root / "egs" / "voxceleb" / "oskdft", root / "hf_teacher", repo_root


def run(recipe_dir, repo_root, *args, check=True):
    env = dict(os.environ, SPEECHDISTILL_ROOT=str(repo_root))
    done = subprocess.run(["./run.sh", *args], cwd=recipe_dir, env=env, capture_output=True, text=True, timeout=900)
    if check:
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done


def results_rows(path):
    """trial-list name -> (EER %, minDCF 0.01, minDCF 0.05) from a RESULTS.md table."""
    rows = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^\|([^|]+)\|(\d+)\|(\d+)\|([0-9.]+)\|([0-9.]+)\|([0-9.]+)\|$", line)
        if match:
            rows[match.group(1)] = tuple(float(match.group(i)) for i in (4, 5, 6))
    return rows


def test_stages_0_to_2_with_a_teacher_then_fbank(recipe):
    recipe_dir, teacher, repo_root = recipe
    first = run(recipe_dir, repo_root, "--stage", "0", "--stop_stage", "2", "--mini_size", "tiny", "--ngpu", "0",
                "--teacher", str(teacher))
    output = first.stdout + first.stderr
    assert "using --sv_config conf/oskdft_paper_mini.yaml" in output  # mini corpus -> the mini preset
    assert (recipe_dir / "exp/teacher/.stage2.done").read_text() == f"teacher={teacher.resolve()}\n"
    assert '"architecture"' in output  # import_teacher's report of the checked checkpoint

    # the fbank baseline through stages 3-5, with TTA, mean subtraction and AS-norm
    fbank = run(recipe_dir, repo_root, "--stage", "2", "--stop_stage", "5", "--ngpu", "0",
                "--sv_config", "conf/ecapa_fbank_mini.yaml", "--sv_args", SHORT, "--tta_segments", "2",
                "--segment_seconds", "1", "--subtract_mean", "true", "--score_norm", "asnorm", "--top_n", "3")
    output = fbank.stdout + fbank.stderr
    assert "keeping the teacher imported earlier" in fbank.stdout
    exp_fbank = recipe_dir / "exp" / "sv_ecapa_fbank_mini"
    assert "system: fbank" in (exp_fbank / "sv_model/sv_model.yaml").read_text()
    test_utts = read_table(recipe_dir / "data/test/wav.scp")
    embeddings = kaldiio.load_scp(str(exp_fbank / "embeddings/test/xvector.scp"))
    assert set(embeddings) == set(test_utts) and embeddings[next(iter(test_utts))].shape == (3, 16)
    assert (exp_fbank / "embeddings/train/xvector.scp").is_file()  # the mean and the AS-norm cohort
    rows = results_rows(exp_fbank / "RESULTS.md")
    assert set(rows) == {"test", "test_asnorm"}  # the mini corpus has one trial list, plus its AS-norm scores
    eer, dcf01, dcf05 = rows["test"]
    assert 0.0 <= eer <= 100.0 and 0.0 <= dcf01 and 0.0 <= dcf05
    assert f"EER = {eer:.3f}" in (exp_fbank / "scores/test.eer").read_text() and f"EER = {eer:.3f}" in output
    assert (exp_fbank / "scores/test_det.png").read_bytes()[:4] == b"\x89PNG"
    assert [line.split()[0] for line in (exp_fbank / "stage_times.txt").read_text().splitlines()] == ["3", "4", "5"]
    text = (exp_fbank / "RESULTS.md").read_text()
    assert "TTA 2 x 1 s segments" in text and "training mean subtracted" in text and "asnorm (top 3)" in text

    # a rerun trains nothing; another config in the same exp dir is refused
    again = run(recipe_dir, repo_root, "--stage", "3", "--stop_stage", "4", "--ngpu", "0",
                "--sv_config", "conf/ecapa_fbank_mini.yaml", "--sv_args", SHORT, "--tta_segments", "2",
                "--segment_seconds", "1", "--subtract_mean", "true", "--score_norm", "asnorm")
    assert "already trained with these settings; kept" in again.stdout and "is up to date" in again.stdout
    refused = run(recipe_dir, repo_root, "--stage", "3", "--stop_stage", "3", "--ngpu", "0",
                  "--sv_config", "conf/ecapa_fbank_mini.yaml", "--sv_args", SHORT + " --lr 0.1", check=False)
    assert refused.returncode != 0 and "holds a run with other settings" in refused.stdout + refused.stderr


def test_stage_2_without_a_teacher_says_what_to_pass(recipe):
    recipe_dir, _, repo_root = recipe
    (recipe_dir / "data").mkdir(exist_ok=True)
    # on the mini corpus stage 2 would pretrain a default teacher (test_demo_sv.py); --pretrain_teacher false
    # is what real data gets
    done = run(recipe_dir, repo_root, "--stage", "2", "--stop_stage", "2", "--teacher_dir", "exp/no_teacher",
               "--sv_config", "conf/oskdft_2024_mini.yaml", "--pretrain_teacher", "false", check=False)
    assert done.returncode == 1
    assert "stage 2 needs a teacher for conf/oskdft_2024_mini.yaml (system oskdft): pass --teacher PATH" in \
        done.stdout + done.stderr
