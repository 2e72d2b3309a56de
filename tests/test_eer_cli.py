"""The compute_eer entry point, run as a real subprocess on real files."""
import subprocess
import sys

import numpy as np
import pytest

from conftest import sklearn_eer, sklearn_min_dcf


def run(*args):
    return subprocess.run([sys.executable, "-m", "speechdistill.bin.compute_eer", *map(str, args)],
                          capture_output=True, text=True)


@pytest.fixture
def trial_files(tmp_path):
    rng = np.random.default_rng(5)
    labels = rng.random(400) < 0.25
    scores = rng.standard_normal(400) + 1.5 * labels
    trials = tmp_path / "vox1_O.kaldi"
    score_file = tmp_path / "vox1_O.score"
    pairs = [(f"id1{i % 7:04d}/yt{i:03d}/00001.wav", f"id2{i % 5:04d}/yt{i:03d}/00002.wav") for i in range(400)]
    trials.write_text("".join(f"{e} {t} {'target' if lab else 'nontarget'}\n" for (e, t), lab in zip(pairs, labels)))
    # scores in a different order than the trials, WeSpeaker 4-column form
    order = rng.permutation(400)
    score_file.write_text("".join(f"{pairs[i][0]} {pairs[i][1]} {scores[i]:.5f} "
                                  f"{'target' if labels[i] else 'nontarget'}\n" for i in order))
    rounded = np.array([float(f"{s:.5f}") for s in scores])
    return trials, score_file, pairs, labels, rounded


def test_prints_wespeaker_lines_equal_to_sklearn(trial_files, tmp_path):
    trials, score_file, _, labels, scores = trial_files
    out = run("--scores", score_file, "--trials", trials, "--det-png", tmp_path / "det.png")
    assert out.returncode == 0, out.stderr
    eer = sklearn_eer(scores, labels)
    dcf = {p: sklearn_min_dcf(scores, labels, p) for p in (0.01, 0.05)}
    assert out.stdout.splitlines() == [
        "---- vox1_O.score -----",
        f"EER = {100 * eer:.3f}",
        f"minDCF (p_target:0.01 c_miss:1 c_fa:1) = {dcf[0.01]:.3f}",
        f"minDCF (p_target:0.05 c_miss:1 c_fa:1) = {dcf[0.05]:.3f}",
    ]
    assert (tmp_path / "det.png").read_bytes()[:4] == b"\x89PNG"


def test_official_trial_format_and_custom_p_target(trial_files, tmp_path):
    trials, score_file, pairs, labels, _ = trial_files
    official = tmp_path / "veri_test2.txt"
    official.write_text("".join(f"{int(lab)} {e} {t}\n" for (e, t), lab in zip(pairs, labels)))
    a = run("--scores", score_file, "--trials", trials, "--p-target", "0.001")
    b = run("--scores", score_file, "--trials", official, "--p-target", "0.001")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert a.stdout == b.stdout
    assert a.stdout.splitlines()[2].startswith("minDCF (p_target:0.001 c_miss:1 c_fa:1) = ")
    assert len(a.stdout.splitlines()) == 3


def test_trial_without_score_is_an_error_naming_the_pair(trial_files, tmp_path):
    trials, score_file, pairs, _, _ = trial_files
    lines = score_file.read_text().splitlines(keepends=True)
    dropped = lines.pop(17)
    partial = tmp_path / "partial.score"
    partial.write_text("".join(lines))
    out = run("--scores", partial, "--trials", trials)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    enroll, test = dropped.split()[:2]
    line_number = pairs.index((enroll, test)) + 1
    assert f"{trials}:{line_number}: trial '{enroll} {test}' has no score" in out.stderr
    assert "(1 of 400 trials have none)" in out.stderr
    assert out.stderr.count("\n") == 1


def test_label_mismatch_and_malformed_lines_are_errors(tmp_path):
    trials = tmp_path / "trials"
    trials.write_text("a b target\nc d nontarget\n")
    scores = tmp_path / "scores"
    scores.write_text("a b 0.9 nontarget\nc d 0.1 nontarget\n")
    out = run("--scores", scores, "--trials", trials)
    assert out.returncode == 1 and f"{scores}:1: pair 'a b' is labelled nontarget" in out.stderr
    trials.write_text("a b maybe\n")
    out = run("--scores", scores, "--trials", trials)
    assert out.returncode == 1 and f"{trials}:1: cannot tell the label" in out.stderr
    trials.write_text("a b target\nc d nontarget\n")
    scores.write_text("a b high\n")
    out = run("--scores", scores, "--trials", trials)
    assert out.returncode == 1 and "the score 'high' is not a number" in out.stderr


def test_extra_scores_are_reported_not_fatal(tmp_path):
    trials = tmp_path / "trials"
    trials.write_text("a b target\nc d nontarget\n")
    scores = tmp_path / "scores"
    scores.write_text("a b 0.9\nc d 0.1\ne f 0.5\n")  # Kaldi 3-column form
    out = run("--scores", scores, "--trials", trials)
    assert out.returncode == 0
    assert "EER = 0.000" in out.stdout
    assert "1 scored pair(s)" in out.stderr and "ignored" in out.stderr
