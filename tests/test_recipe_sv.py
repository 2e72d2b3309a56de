"""End to end: egs/voxceleb/oskdft/run.sh on the tiny mini VoxCeleb: stages 0-2 importing a given teacher,
then stages 3-5 of the fbank preset with TTA, mean subtraction, AS-norm and noisy test conditions (short
settings), ending in RESULTS.md with EER/minDCF for every trial list and condition (one noisy condition
recomputed here from its score file with scikit-learn); reruns and refusals. The OS-KDFT system through stages
3-5, and stage 2 without --teacher (the pretrained default teacher), are run by tests/test_demo_sv.py.

The recipe is copied into a temporary egs/ tree beside a link to the checkout's egs/TEMPLATE, so its
data/, downloads/ and exp/ land in tmp_path. The teacher is a tiny random HuBERT saved by transformers.
"""
import re
import subprocess
from pathlib import Path

import kaldiio
import numpy as np
import pytest

from conftest import copy_recipes, scored_trials, single_process_env, sklearn_eer, sklearn_min_dcf
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
    env = single_process_env(SPEECHDISTILL_ROOT=str(repo_root))
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


def condition_rows(path):
    """trial-list name -> {condition: (EER %, minDCF 0.01)} from the per-condition table of a RESULTS.md."""
    lines = path.read_text().splitlines()
    header = next(line for line in lines if line.startswith("|trials|") and " EER (%)|" in line and "minDCF" in line
                  and "#target" not in line)
    conditions = [cell.split()[0] for cell in header.strip("|").split("|")[1::2]]
    rows = {}
    for line in lines[lines.index(header) + 2:]:
        if not line.startswith("|"):
            break
        cells = line.strip("|").split("|")
        rows[cells[0]] = {c: (float(cells[1 + 2 * i]), float(cells[2 + 2 * i])) for i, c in enumerate(conditions)}
    return rows


def test_stages_0_to_2_with_a_teacher_then_fbank(recipe):
    recipe_dir, teacher, repo_root = recipe
    first = run(recipe_dir, repo_root, "--stage", "0", "--stop_stage", "2", "--mini_size", "tiny", "--ngpu", "0",
                "--teacher", str(teacher))
    output = first.stdout + first.stderr
    assert "using --sv_config conf/oskdft_paper_mini.yaml" in output  # mini corpus -> the mini preset
    assert (recipe_dir / "exp/teacher/.stage2.done").read_text() == f"teacher={teacher.resolve()}\n"
    assert '"architecture"' in output  # import_teacher's report of the checked checkpoint
    imported = (recipe_dir / "exp/teacher/model.safetensors").stat().st_mtime_ns
    again = run(recipe_dir, repo_root, "--stage", "2", "--stop_stage", "2", "--ngpu", "0", "--teacher", str(teacher))
    assert f"exp/teacher already holds {teacher.resolve()}; kept" in again.stdout
    assert (recipe_dir / "exp/teacher/model.safetensors").stat().st_mtime_ns == imported

    # the fbank baseline through stages 3-5, with TTA, mean subtraction, AS-norm and noisy trials
    conditions = ["clean", "snr5", "reverb", "babble"]
    fbank = run(recipe_dir, repo_root, "--stage", "2", "--stop_stage", "5", "--ngpu", "0",
                "--sv_config", "conf/ecapa_fbank_mini.yaml", "--sv_args", SHORT, "--tta_segments", "2",
                "--segment_seconds", "1", "--subtract_mean", "true", "--score_norm", "asnorm", "--top_n", "3",
                "--test_conditions", " ".join(conditions), "--condition_seed", "4")
    output = fbank.stdout + fbank.stderr
    assert "keeping the teacher imported earlier" in fbank.stdout
    exp_fbank = recipe_dir / "exp" / "sv_ecapa_fbank_mini"
    assert "system: fbank" in (exp_fbank / "sv_model/sv_model.yaml").read_text()
    test_utts = read_table(recipe_dir / "data/test/wav.scp")
    embeddings = kaldiio.load_scp(str(exp_fbank / "embeddings/test/xvector.scp"))
    assert set(embeddings) == set(test_utts) and embeddings[next(iter(test_utts))].shape == (3, 16)
    assert (exp_fbank / "embeddings/train/xvector.scp").is_file()  # the mean and the AS-norm cohort
    rows = results_rows(exp_fbank / "RESULTS.md")
    # the mini corpus has one trial list, plus its AS-norm scores, each under every condition
    assert set(rows) == {f"{name}{'' if c == 'clean' else '_' + c}" for name in ("test", "test_asnorm")
                         for c in conditions}
    eer, dcf01, dcf05 = rows["test"]
    clean_scores, clean_labels = scored_trials(exp_fbank / "scores/test.score", recipe_dir / "data/test/trials")
    assert eer == pytest.approx(100 * sklearn_eer(clean_scores, clean_labels), abs=5.1e-4)
    assert (dcf01, dcf05) == pytest.approx([sklearn_min_dcf(clean_scores, clean_labels, p) for p in (0.01, 0.05)],
                                           abs=5.1e-4)
    assert f"EER = {eer:.3f}" in (exp_fbank / "scores/test.eer").read_text() and f"EER = {eer:.3f}" in output
    assert (exp_fbank / "scores/test_det.png").read_bytes()[:4] == b"\x89PNG"
    assert [line.split()[0] for line in (exp_fbank / "stage_times.txt").read_text().splitlines()] == ["3", "4", "5"]
    text = (exp_fbank / "RESULTS.md").read_text()
    assert "TTA 2 x 1 s segments" in text and "training mean subtracted" in text and "asnorm (top 3)" in text

    # per condition: the enrolment and test utterances corrupted; one EER / minDCF pair per condition
    by_condition = condition_rows(exp_fbank / "RESULTS.md")
    assert list(by_condition) == ["test", "test_asnorm"] and list(by_condition["test"]) == conditions
    assert by_condition["test"]["clean"] == (eer, dcf01)
    for condition in conditions[1:]:
        noisy = kaldiio.load_scp(str(exp_fbank / f"embeddings/test_{condition}/xvector.scp"))
        assert set(noisy) == set(test_utts)
        assert not np.allclose(noisy[next(iter(test_utts))], embeddings[next(iter(test_utts))])
        assert f"test condition {condition}:" in (exp_fbank / f"embeddings/test_{condition}/extract.log").read_text()
        assert by_condition["test"][condition] == rows[f"test_{condition}"][:2]
    assert "babble of 3-7 talkers from data/musan_speech" in text and "seed 4" in text
    # snr5 recomputed from its score file with scikit-learn's ROC, independently of speechdistill.metrics
    scores, labels = scored_trials(exp_fbank / "scores/test_snr5.score", recipe_dir / "data/test/trials")
    snr5_eer, snr5_dcf = by_condition["test"]["snr5"]
    assert snr5_eer == pytest.approx(100 * sklearn_eer(scores, labels), abs=5.1e-4)
    assert snr5_dcf == pytest.approx(sklearn_min_dcf(scores, labels, 0.01), abs=5.1e-4)
    assert f"EER = {snr5_eer:.3f}" in (exp_fbank / "scores/test_snr5.eer").read_text()

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


def test_stage_2_refuses_to_continue_a_pretraining_run_of_other_settings(recipe):
    """The checkpoints in --pretrain_dir belong to the settings in its .settings: other settings (here another
    config) are refused before anything is trained, as is a run whose settings are not recorded."""
    recipe_dir, _, repo_root = recipe
    assert (recipe_dir / "data/.stage0.done").is_file()  # stage 0 of the first test
    pretrain_dir = recipe_dir / "exp/other_pretrain"
    (pretrain_dir / "checkpoints").mkdir(parents=True)
    recorded = "pretrained=conf/demo/pretrain_hubert.yaml 0123 args= data=data/train"
    (pretrain_dir / ".settings").write_text(recorded + "\n")
    args = ("--stage", "2", "--stop_stage", "2", "--ngpu", "0", "--teacher_dir", "exp/other_teacher",
            "--pretrain_dir", "exp/other_pretrain", "--sv_config", "conf/oskdft_2024_mini.yaml")
    done = run(recipe_dir, repo_root, *args, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert f"exp/other_pretrain holds a teacher pretrained with other settings ({recorded})" in output
    assert "pass --redo true to pretrain again" in output
    assert not (pretrain_dir / "train.log").exists() and not (recipe_dir / "exp/other_teacher").exists()
    (pretrain_dir / ".settings").unlink()
    done = run(recipe_dir, repo_root, *args, check=False)
    assert done.returncode == 1 and "whose settings are not recorded" in done.stdout + done.stderr
    assert (pretrain_dir / "checkpoints").is_dir() and not (pretrain_dir / "train.log").exists()
