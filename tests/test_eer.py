"""EER / minDCF against scikit-learn's ROC (independent), WeSpeaker's untied definition, and hand values."""
import numpy as np
import pytest
from scipy.stats import norm

from conftest import sklearn_eer, sklearn_min_dcf

from speechdistill.metrics.verification import (TrialsError, det_curve, equal_error_rate, evaluate, min_dcf, plot_det,
                                                probit, sv_results_table)


def wespeaker_eer_without_ties(scores, labels):
    """conventions §4.3 read literally: sort by score, FNR = cumulative targets / #targets,
    FPR = 1 - cumulative nontargets / #nontargets, interpolate between the last index with
    FNR - FPR < 0 and the first with >= 0."""
    order = np.argsort(scores)
    sorted_labels = labels[order]
    fnr = np.cumsum(sorted_labels) / sorted_labels.sum()
    fpr = 1 - np.cumsum(~sorted_labels) / (~sorted_labels).sum()
    diff = fnr - fpr
    x1 = np.flatnonzero(diff >= 0)[0]
    x2 = np.flatnonzero(diff < 0)[-1]
    a = (fnr[x1] - fpr[x1]) / (fpr[x2] - fpr[x1] - (fnr[x2] - fnr[x1]))
    return fnr[x1] + a * (fnr[x2] - fnr[x1])


def random_trials(seed, num=2000, target_fraction=0.1, separation=2.0, decimals=None):
    rng = np.random.default_rng(seed)
    labels = rng.random(num) < target_fraction
    scores = rng.standard_normal(num) + separation * labels
    if decimals is not None:
        scores = np.round(scores, decimals)
    return scores, labels


@pytest.mark.parametrize("seed", range(5))
def test_random_scores_match_sklearn_and_wespeaker(seed):
    scores, labels = random_trials(seed, separation=1.0 + seed * 0.5)
    curve = det_curve(scores, labels)
    eer, _ = equal_error_rate(curve)
    assert eer == pytest.approx(sklearn_eer(scores, labels), abs=1e-10)
    assert eer == pytest.approx(wespeaker_eer_without_ties(scores, labels), abs=1e-12)
    for p_target in (0.01, 0.05, 0.5):
        assert min_dcf(curve, p_target)[0] == pytest.approx(sklearn_min_dcf(scores, labels, p_target), abs=1e-12)


@pytest.mark.parametrize("decimals", [0, 1])
def test_tied_scores_match_sklearn_and_ignore_input_order(decimals):
    scores, labels = random_trials(11, num=3000, target_fraction=0.3, decimals=decimals)
    assert len(np.unique(scores)) < 100  # heavily tied
    result = evaluate(scores, labels)
    assert result.eer == pytest.approx(sklearn_eer(scores, labels), abs=1e-10)
    for p_target in (0.01, 0.05):
        assert result.min_dcf[p_target] == pytest.approx(sklearn_min_dcf(scores, labels, p_target), abs=1e-12)
    permutation = np.random.default_rng(0).permutation(scores.size)
    shuffled = evaluate(scores[permutation], labels[permutation])
    assert shuffled.eer == result.eer and shuffled.min_dcf == result.min_dcf


def test_all_scores_tied_is_chance():
    labels = np.array([True] * 3 + [False] * 7)
    result = evaluate(np.zeros(10), labels)
    assert result.eer == pytest.approx(0.5)
    assert result.eer == pytest.approx(sklearn_eer(np.zeros(10), labels))
    assert result.min_dcf[0.01] == pytest.approx(1.0)


def test_perfectly_separable_scores():
    scores = np.array([0.1, 0.2, 0.3, 0.9, 1.0])
    labels = np.array([False, False, False, True, True])
    result = evaluate(scores, labels)
    assert result.eer == 0.0
    assert result.min_dcf == {0.01: 0.0, 0.05: 0.0}
    assert sklearn_min_dcf(scores, labels, 0.01) == 0.0
    assert sklearn_eer(scores, labels) == pytest.approx(0.0, abs=1e-12)
    # separable in the wrong direction: every threshold errs
    reversed_result = evaluate(-scores, labels)
    assert reversed_result.eer == pytest.approx(1.0)
    assert reversed_result.min_dcf[0.01] == pytest.approx(1.0)


def test_hand_computed_small_case():
    # sorted: n(0.1) t(0.2) n(0.3) t(0.4); thresholds -inf,.1,.2,.3,.4
    # P_miss: 0, 0, .5, .5, 1 ; P_fa: 1, .5, .5, 0, 0 -> P_miss - P_fa: -1,-.5,0,.5,1
    curve = det_curve([0.3, 0.1, 0.4, 0.2], [False, False, True, True])
    np.testing.assert_allclose(curve.p_miss, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(curve.p_fa, [1, 0.5, 0.5, 0, 0])
    eer, threshold = equal_error_rate(curve)
    assert eer == 0.5 and threshold == pytest.approx(0.2)
    # p=0.05: costs 0.95, 0.475, 0.025+0.475=0.5, 0.025, 0.05 -> min 0.025 / 0.05 = 0.5 at threshold 0.3
    value, at = min_dcf(curve, 0.05)
    assert value == pytest.approx(0.5) and at == pytest.approx(0.3)


def test_report_lines_follow_wespeaker_format():
    result = evaluate([0.3, 0.1, 0.4, 0.2], [False, False, True, True])
    assert result.lines("vox1_O.score") == [
        "---- vox1_O.score -----",
        "EER = 50.000",
        "minDCF (p_target:0.01 c_miss:1 c_fa:1) = 0.500",
        "minDCF (p_target:0.05 c_miss:1 c_fa:1) = 0.500",
    ]
    table = sv_results_table([("vox1_O", result)])
    assert table.splitlines()[2] == "|vox1_O|2|2|50.000|0.500|0.500|"


def test_one_class_only_is_an_error():
    with pytest.raises(TrialsError, match="both target and nontarget"):
        evaluate([0.1, 0.2], [True, True])
    with pytest.raises(TrialsError, match="NaN"):
        evaluate([0.1, float("nan")], [True, False])


def test_probit_matches_scipy_and_det_png_is_written(tmp_path):
    p = np.array([1e-3, 0.01, 0.2, 0.5, 0.9])
    np.testing.assert_allclose(probit(p), norm.ppf(p), rtol=1e-12)
    scores, labels = random_trials(3)
    out = tmp_path / "det" / "vox1_O.png"
    plot_det([("system", det_curve(scores, labels))], out, title="vox1_O")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert [p.name for p in out.parent.iterdir()] == ["vox1_O.png"]  # no temporary left behind
