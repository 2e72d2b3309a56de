"""`make demo-sv` shortened: egs/voxceleb/oskdft/local/demo.sh through the real run.sh on the tiny mini
VoxCeleb, with the default teacher (stage 2 pretrains a tiny HuBERT because no --teacher is given), a
few updates per system, and exp/demo/RESULTS.md + det.png comparing the OS-KDFT student with the random
student, clean and with the enrolment and test audio at 5 dB SNR (the baselines go through the same run.sh
stages in tests/test_recipe_sv.py). The table's EER and minDCF are recomputed from the score files and the
trial list without speechdistill.metrics, and the scores from the embeddings.

The recipe is copied into a temporary egs/ tree beside a link to the checkout's egs/TEMPLATE, so its
data/, downloads/ and exp/ land in tmp_path.
"""
import json
import re
import subprocess
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import yaml
from conftest import copy_recipes
from conftest import single_process_env, sklearn_eer, sklearn_min_dcf
from speechdistill.data.tables import read_table
from speechdistill.metrics.verification import det_axis_range, det_curve, plot_det
from speechdistill.models import load_model

REPO = Path(__file__).resolve().parents[1]
# a few updates of 1 s crops and a small ECAPA on top of the demo configs
SHORT = ("--max_steps 3 --max_seconds 1.0 --batch_seconds 4.0 --num_buckets 1 --num_workers 0 --log_every 1 "
         "--ecapa.channels 16 --ecapa.se_bottleneck 8 --ecapa.aggregation_channels 48 "
         "--ecapa.attention_channels 8 --ecapa.embedding_size 16")
# a 4-layer teacher of width 32 (the OS-KDFT student takes 4 layers), 3 updates, 8 units
PRETRAIN = ("--max_steps 3 --encoder.num_layers 4 --encoder.hidden_size 32 --encoder.ffn_size 64 "
            "--encoder.conv_layers [[32,10,5],[32,3,2],[32,3,2],[32,3,2],[32,3,2],[32,2,2],[32,2,2]] "
            "--encoder.pos_conv_kernel 16 --final_dim 16 --labels.num_clusters 8 --labels.kmeans_iterations 3 "
            "--labels.kmeans_init_sample 500 --batch_seconds 4.0 --min_seconds 0.5 --num_workers 0 --log_every 1 "
            "--threads 1")
SYSTEMS = ("oskdft", "random_student")
RUNS = SYSTEMS + tuple(f"{system}_seed1" for system in SYSTEMS)  # --seeds "0 1": seed 0 of each, then seed 1


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    return copy_recipes(tmp_path_factory.mktemp("demo_sv")) / "voxceleb" / "oskdft"


def demo(recipe_dir, *args):
    env = single_process_env(SPEECHDISTILL_ROOT=str(REPO))
    return subprocess.run(["local/demo.sh", *args], cwd=recipe_dir, env=env, capture_output=True, text=True,
                          timeout=600)


def comparison_rows(path):
    """system -> (encoder cell, EER %, minDCF 0.01, minDCF 0.05, snr5 EER %, snr5 minDCF 0.01) from the demo's
    RESULTS.md table."""
    rows = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^\|(\w+)\|([^|]+)\|[0-9,-]+\|[0-9,]+\|" + r"([0-9.]+)\|" * 5 + "$", line)
        if match:
            rows[match.group(1)] = (match.group(2),) + tuple(float(match.group(i)) for i in range(3, 8))
    return rows


def test_demo_sv_shortened(recipe):
    done = demo(recipe, "--mini_size", "tiny", "--systems", " ".join(SYSTEMS), "--ngpu", "0",
                "--pretrain_args", PRETRAIN, "--sv_args", SHORT, "--progress_every", "4")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]

    # stage 2 pretrained the default teacher (HF export) and imported it like a real one
    assert "no --teacher given: pretraining a HuBERT teacher from scratch" in output
    marker = (recipe / "exp/teacher/.stage2.done").read_text()
    hf_dir = recipe / "exp/pretrain_hubert/hf"
    assert f"teacher={hf_dir.resolve()}" in marker.splitlines() and "pretrained=conf/demo/pretrain_hubert.yaml" in marker
    assert (hf_dir / "config.json").is_file()
    teacher = load_model(recipe / "exp/teacher")
    assert teacher.num_layers == 4 and teacher.config.hidden_size == 32

    # every run (each student with seeds 0 and 1, the default --seeds) went through stages 3-5 in its own exp dir
    test_utts = read_table(recipe / "data/test/wav.scp")
    for system in RUNS:
        exp = recipe / "exp/demo" / system
        assert [line.split()[0] for line in (exp / "stage_times.txt").read_text().splitlines()] == ["3", "4", "5"]
        embeddings = kaldiio.load_scp(str(exp / "embeddings/test/xvector.scp"))
        assert set(embeddings) == set(test_utts) and embeddings[next(iter(embeddings))].shape == (16,)
    student = yaml.safe_load((recipe / "exp/demo/oskdft/sv_model/sv_model.yaml").read_text())["info"]
    random_student = yaml.safe_load((recipe / "exp/demo/random_student/sv_model/sv_model.yaml").read_text())["info"]
    assert student["student_init"] is None and random_student["student_init"] == {}
    assert student["upstream_params"] == random_student["upstream_params"] > 0  # the same architecture
    assert "adapter_dim: 64" in (recipe / "exp/demo/oskdft/sv_model/upstream/config.yaml").read_text()
    assert "randomly initialised" in (recipe / "exp/demo/random_student/train.log").read_text()
    assert "copied" in (recipe / "exp/demo/oskdft/train.log").read_text()

    # the comparison: one row per system, the same numbers compute_eer wrote, one DET figure
    rows = comparison_rows(recipe / "exp/demo/RESULTS.md")
    assert list(rows) == list(RUNS)
    # seed 1 is another initialisation (the random student) and other crops: other embeddings
    for system in SYSTEMS:
        first = kaldiio.load_scp(str(recipe / "exp/demo" / system / "embeddings/test/xvector.scp"))
        second = kaldiio.load_scp(str(recipe / "exp/demo" / f"{system}_seed1" / "embeddings/test/xvector.scp"))
        key = next(iter(first))
        assert not np.allclose(first[key], second[key]), system
        assert "seed: 1" in (recipe / "exp/demo" / f"{system}_seed1" / "config.yaml").read_text().splitlines()
    means = re.search(r"mean EER over seeds 0 1: oskdft ([0-9.]+) % \(([0-9.]+)/([0-9.]+)\), "
                      r"random_student ([0-9.]+) % \(([0-9.]+)/([0-9.]+)\)", (recipe / "exp/demo/RESULTS.md").read_text())
    assert means, (recipe / "exp/demo/RESULTS.md").read_text()
    for offset, system in ((1, "oskdft"), (4, "random_student")):
        per_seed = [float(means.group(offset + 1)), float(means.group(offset + 2))]
        assert per_seed == [rows[system][1], rows[f"{system}_seed1"][1]]
        assert float(means.group(offset)) == pytest.approx(sum(per_seed) / 2, abs=1e-3)
    assert rows["oskdft"][0] == "student `oskdft` (copied from the teacher)"
    assert rows["random_student"][0] == "student `oskdft` (random init)"
    header = next(line for line in (recipe / "exp/demo/RESULTS.md").read_text().splitlines() if line.startswith("|system|"))
    assert header.endswith("|EER (%)|minDCF (p=0.01)|minDCF (p=0.05)|snr5 EER (%)|snr5 minDCF (p=0.01)|")
    for system, (_, eer, dcf01, dcf05, snr5_eer, _) in rows.items():
        assert f"EER = {eer:.3f}" in (recipe / "exp/demo" / system / "scores/test.eer").read_text()
        assert f"EER = {snr5_eer:.3f}" in (recipe / "exp/demo" / system / "scores/test_snr5.eer").read_text()
        assert 0.0 <= eer <= 100.0 and 0.0 <= dcf01 <= 1.0 + 1e-9 and 0.0 <= dcf05 <= 1.0 + 1e-9
    # every system heard the same corrupted test audio: the same condition, noise recordings and seed
    settings = {json.loads((recipe / "exp/demo" / system / "embeddings/test_snr5/extract.done").read_text())["condition"]
                for system in RUNS}
    assert len(settings) == 1 and '"noise_sha256"' in settings.pop()
    # ... and those numbers are right: recomputed here from the score files and the trial list, independently of
    # speechdistill.metrics (EER where scikit-learn's ROC crosses the diagonal, minDCF over its operating points),
    # and each score is the cosine of the two utterances' embeddings (the corrupted ones for snr5)
    trials = [line.split() for line in (recipe / "data/test/trials").read_text().splitlines()]
    assert trials and all(label in ("target", "nontarget") for _, _, label in trials)
    is_target = np.array([label == "target" for _, _, label in trials])
    for system, (_, eer, dcf01, dcf05, snr5_eer, snr5_dcf01) in rows.items():
        exp = recipe / "exp/demo" / system
        for condition, expected in (("clean", (eer, dcf01, dcf05)), ("snr5", (snr5_eer, snr5_dcf01))):
            score_file = exp / ("scores/test.score" if condition == "clean" else f"scores/test_{condition}.score")
            scored = {(f[0], f[1]): float(f[2]) for f in map(str.split, score_file.read_text().splitlines())}
            assert set(scored) == {(enroll, test) for enroll, test, _ in trials}
            scores = np.array([scored[(enroll, test)] for enroll, test, _ in trials])
            assert expected[0] == pytest.approx(100.0 * sklearn_eer(scores, is_target), abs=5.1e-4), (system, condition)
            for p_target, dcf in zip((0.01, 0.05), expected[1:]):
                assert dcf == pytest.approx(sklearn_min_dcf(scores, is_target, p_target), abs=5.1e-4), \
                    (system, condition, p_target)
            embeddings = kaldiio.load_scp(str(exp / ("embeddings/test" if condition == "clean"
                                                     else f"embeddings/test_{condition}") / "xvector.scp"))
            for enroll, test, _ in trials[:20]:
                a, b = np.asarray(embeddings[enroll], np.float64), np.asarray(embeddings[test], np.float64)
                assert scored[(enroll, test)] == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b), abs=1e-5)
    assert (recipe / "exp/demo/det.png").read_bytes()[:4] == b"\x89PNG"
    assert "![DET curves](det.png)" in (recipe / "exp/demo/RESULTS.md").read_text()
    assert "|random_student|student `oskdft` (random init)|" in done.stdout  # the table is printed at the end
    assert means.group(0) in done.stdout  # ... and the means

    # a rerun (here of one system) trains nothing and reports the same numbers
    again = demo(recipe, "--mini_size", "tiny", "--systems", "oskdft", "--ngpu", "0",
                 "--pretrain_args", PRETRAIN, "--sv_args", SHORT)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert "keeping the teacher pretrained earlier" in again.stdout
    assert "already trained with these settings; kept" in (recipe / "exp/demo/log/oskdft.log").read_text()
    assert "is up to date" in (recipe / "exp/demo/log/oskdft.log").read_text()
    assert comparison_rows(recipe / "exp/demo/RESULTS.md") == {"oskdft": rows["oskdft"],
                                                               "oskdft_seed1": rows["oskdft_seed1"]}


def test_demo_sv_names_an_unknown_system(recipe):
    done = demo(recipe, "--systems", "oskdft nosuch")
    assert done.returncode == 1
    assert "no conf/demo/nosuch.yaml; systems: ecapa_fbank oskdft random_student ssl_frozen" in done.stdout


@pytest.mark.parametrize("seeds,message", [("0 x", "--seeds takes non-negative integers, got 'x'"),
                                           ("0 1 1", "--seeds '0 1 1' repeats a seed"),
                                           ("", "--seeds is empty")])
def test_demo_sv_rejects_bad_seeds_before_any_stage(recipe, seeds, message):
    done = demo(recipe, "--systems", "oskdft", "--seeds", seeds)
    assert done.returncode == 1 and message in done.stdout, done.stdout + done.stderr
    assert "run.sh" not in done.stdout + done.stderr  # no stage started


def test_det_axes_cover_weak_systems(tmp_path):
    """The demo's EERs are 15-45 %: the DET axes then reach 99 % instead of stopping at 50 %, right past the
    EER; good systems keep the usual 0.05-50 % view."""
    assert det_axis_range([0.01, 0.08]) == (0.0005, 0.5)
    assert det_axis_range([0.16, 0.42]) == (0.0005, 0.99)
    rng = np.random.default_rng(0)
    weak = det_curve(np.r_[rng.normal(0.5, 1.0, 150), rng.normal(0.0, 1.0, 150)], np.r_[[True] * 150, [False] * 150])
    assert plot_det([("weak", weak)], tmp_path / "det.png") == pytest.approx((0.0005, 0.99), rel=1e-6)
    assert (tmp_path / "det.png").read_bytes()[:4] == b"\x89PNG"
    good = det_curve(np.r_[rng.normal(4.0, 1.0, 150), rng.normal(0.0, 1.0, 150)], np.r_[[True] * 150, [False] * 150])
    assert plot_det([("good", good)], tmp_path / "good.png") == pytest.approx((0.0005, 0.5), rel=1e-6)
