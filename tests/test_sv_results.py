"""RESULTS.md collector: EER/minDCF per trial list equal an independent computation (scikit-learn's ROC),
a DET PNG per list, stage times, and errors for unscored trials."""
import subprocess
import sys

import numpy as np
import pytest
import yaml

from conftest import sklearn_eer
from test_sv_fixtures import REPO

from speechdistill.sv.results import ScoredList, write_results


def _eer(labels, scores):
    return sklearn_eer(np.asarray(scores), np.asarray(labels, dtype=bool))


def brute_min_dcf(labels, scores, p_target):
    labels = np.asarray(labels, dtype=bool)
    best = np.inf
    for threshold in np.concatenate([[-np.inf], np.unique(scores)]):
        accept = scores > threshold
        p_miss = np.mean(~accept[labels])
        p_fa = np.mean(accept[~labels])
        best = min(best, p_target * p_miss + (1 - p_target) * p_fa)
    return best / min(p_target, 1 - p_target)


def write_lists(directory, name, labels, scores):
    trials = directory / f"{name}.trials"
    score_file = directory / f"{name}.score"
    keys = [(f"e{i:03d}", f"t{i:03d}") for i in range(len(labels))]
    trials.write_text("".join(f"{e} {t} {'target' if y else 'nontarget'}\n" for (e, t), y in zip(keys, labels)))
    score_file.write_text("".join(f"{e} {t} {s:.6f}\n" for (e, t), s in zip(keys, scores)))
    return ScoredList(name, score_file, trials), np.round(np.asarray(scores), 6)


def test_numbers_match_an_independent_computation(tmp_path):
    rng = np.random.default_rng(0)
    labels_a = rng.random(400) < 0.3
    scores_a = rng.normal(size=400) + 1.2 * labels_a
    labels_b = np.array([1, 1, 0, 0, 1, 0, 0, 0], dtype=bool)
    scores_b = np.array([0.5, 0.2, 0.2, 0.1, 0.2, 0.5, -0.3, 0.1])  # ties across classes
    labels_c = np.array([1, 1, 0, 0, 0], dtype=bool)
    scores_c = np.array([0.9, 0.8, 0.1, 0.2, 0.3])  # perfectly separable
    lists = []
    expected = {}
    for name, labels, scores in (("random", labels_a, scores_a), ("ties", labels_b, scores_b),
                                 ("separable", labels_c, scores_c)):
        item, rounded = write_lists(tmp_path, name, labels, scores)
        lists.append(item)
        expected[name] = (_eer(labels, rounded), brute_min_dcf(labels, rounded, 0.01),
                          brute_min_dcf(labels, rounded, 0.05))
    (tmp_path / "times.txt").write_text("3 41.5 training\n4 3.2 embeddings\n")
    rows = dict(write_results(lists, tmp_path / "RESULTS.md", title="unit", stage_times=tmp_path / "times.txt"))
    for name, (eer, dcf01, dcf05) in expected.items():
        assert rows[name].eer == pytest.approx(eer, abs=1e-9)
        assert rows[name].min_dcf[0.01] == pytest.approx(dcf01, abs=1e-9)
        assert rows[name].min_dcf[0.05] == pytest.approx(dcf05, abs=1e-9)
    assert rows["separable"].eer == 0.0 and rows["separable"].min_dcf[0.01] == 0.0
    text = (tmp_path / "RESULTS.md").read_text()
    assert f"|random|{labels_a.sum()}|{(~labels_a).sum()}|{100 * expected['random'][0]:.3f}|" in text
    assert "|ties|3|5|" in text
    assert "![separable](det/separable_det.png)" in text
    assert "|3 (training)|41.5|" in text
    for name in expected:
        png = tmp_path / "det" / f"{name}_det.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_entry_point_refuses_an_unscored_trial_and_prints_the_table(tmp_path):
    item, _ = write_lists(tmp_path, "a", [1, 0, 1, 0], [0.9, 0.1, 0.8, 0.3])
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "speechdistill.bin.sv_results", "--output", str(tmp_path / "R.md"),
               "--list", "a", str(item.scores), str(item.trials), "--note", "scoring: cosine"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "|a|2|2|0.000|0.000|0.000|" in done.stdout
    assert "- scoring: cosine" in (tmp_path / "R.md").read_text()
    lines = item.scores.read_text().splitlines()
    item.scores.write_text("\n".join(lines[:-1]) + "\n")
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1
    assert "trial 'e003 t003' has no score" in done.stderr and "Traceback" not in done.stderr


def test_systems_are_compared_on_one_trial_list(tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.random(200) < 0.5
    systems = []
    expected = {}
    for name, separation, init in (("good", 2.0, None), ("weak", 0.5, {})):
        item, rounded = write_lists(tmp_path, name, labels, rng.normal(size=200) + separation * labels)
        model_dir = tmp_path / name / "sv_model"
        model_dir.mkdir(parents=True)
        info = {"student": "oskdft", "student_init": init, "upstream_params": 1234567, "backend_params": 890}
        (model_dir / "sv_model.yaml").write_text(yaml.safe_dump({"system": "oskdft", "info": info}))
        systems += ["--system", name, str(item.scores), str(tmp_path / "good.trials"), str(model_dir)]
        expected[name] = _eer(labels, rounded)
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "speechdistill.bin.sv_results", "--output", str(tmp_path / "cmp/RESULTS.md"),
               *systems, "--note", "demo"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"|good|student `oskdft` (copied from the teacher)|1,234,567|890|{100 * expected['good']:.3f}|" in done.stdout
    assert f"|weak|student `oskdft` (random init)|1,234,567|890|{100 * expected['weak']:.3f}|" in done.stdout
    assert expected["good"] < expected["weak"]
    text = (tmp_path / "cmp/RESULTS.md").read_text()
    assert f"{labels.sum()} target and {(~labels).sum()} nontarget trials" in text and "- demo" in text
    assert "![DET curves](det.png)" in text and (tmp_path / "cmp/det.png").read_bytes()[:4] == b"\x89PNG"
    # a system scored on another trial list, or --list mixed with --system, is refused
    (tmp_path / "other.trials").write_bytes((tmp_path / "good.trials").read_bytes())
    other = command[:5] + ["--system", "x", systems[2], str(tmp_path / "other.trials"), systems[4]] + command[5:]
    done = subprocess.run(other, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1 and "compared on one trial list" in done.stderr
    mixed = command + ["--list", "a", systems[2], systems[3]]
    done = subprocess.run(mixed, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and "not both" in done.stderr


def test_conditions_get_one_eer_mindcf_pair_each(tmp_path):
    """--condition-list: the same trial list scored under test conditions; RESULTS.md gets a row per list and an
    EER / minDCF (p=0.01) pair per condition, clean first; the comparison of systems gets the same pair per
    extra condition (--system-condition)."""
    rng = np.random.default_rng(2)
    labels = rng.random(300) < 0.4
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    args, expected = [], {}
    for condition, separation in (("clean", 3.0), ("snr0", 0.8), ("snr10", 1.5)):
        item, rounded = write_lists(tmp_path, f"test_{condition}", labels, rng.normal(size=300) + separation * labels)
        trials = str(tmp_path / "test_clean.trials")
        args += (["--list", "test", str(item.scores), trials] if condition == "clean"
                 else ["--condition-list", "test", condition, str(item.scores), trials])
        expected[condition] = (100 * _eer(labels, rounded), brute_min_dcf(labels, rounded, 0.01))
    command = [sys.executable, "-m", "speechdistill.bin.sv_results", "--output", str(tmp_path / "R.md"), *args]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "R.md").read_text()
    assert ("|trials|clean EER (%)|clean minDCF (p=0.01)|snr10 EER (%)|snr10 minDCF (p=0.01)|snr0 EER (%)|"
            "snr0 minDCF (p=0.01)|") in text
    row = "|test|" + "".join(f"{expected[c][0]:.3f}|{expected[c][1]:.3f}|" for c in ("clean", "snr10", "snr0"))
    assert row in text
    assert "|test_snr0|" in done.stdout and (tmp_path / "det" / "test_snr0_det.png").is_file()

    model_dir = tmp_path / "sys" / "sv_model"
    model_dir.mkdir(parents=True)
    (model_dir / "sv_model.yaml").write_text(yaml.safe_dump({"system": "fbank", "info": {"backend_params": 7}}))
    systems = ["--system", "a", args[2], args[3], str(model_dir),
               "--system-condition", "a", "snr0", str(tmp_path / "test_snr0.score")]
    command = [sys.executable, "-m", "speechdistill.bin.sv_results", "--output", str(tmp_path / "cmp/R.md"), *systems]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"|{expected['snr0'][0]:.3f}|{expected['snr0'][1]:.3f}|" in done.stdout.splitlines()[-1]
    assert done.stdout.splitlines()[0].endswith("|snr0 EER (%)|snr0 minDCF (p=0.01)|")
    done = subprocess.run(command[:-3] + ["b", "snr0", str(tmp_path / "test_snr0.score")], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 1 and "no --system named b" in done.stderr


def test_the_encoder_column_says_what_the_saved_model_feeds_its_back_end(tmp_path):
    """The encoder cell comes from what sv_model.yaml records (front end, featurizer, student), so a frozen
    teacher read at one layer is not reported as a weighted sum."""
    from speechdistill.sv.results import ScoredSystem, write_comparison

    rng = np.random.default_rng(4)
    labels = rng.random(60) < 0.5
    saved = {
        "fbank": {"system": "fbank", "frontend": "fbank", "info": {"backend_params": 10}},
        "last": {"system": "ssl_frozen", "frontend": "upstream", "info": {"student": None, "upstream_params": 100},
                 "featurizer": {"num_hidden_states": 5, "config": {"mode": "single", "layer": -1}}},
        "sum": {"system": "ssl_frozen", "frontend": "upstream", "info": {"student": None, "upstream_params": 100},
                "featurizer": {"num_hidden_states": 5, "config": {"mode": "weighted_sum", "layers": None}}},
        "some": {"system": "ssl_frozen", "frontend": "upstream", "info": {"student": None, "upstream_params": 100},
                 "featurizer": {"num_hidden_states": 5, "config": {"mode": "weighted_sum", "layers": [2, 4]}}},
    }
    systems = []
    for name, document in saved.items():
        item, _ = write_lists(tmp_path, name, labels, rng.normal(size=60) + labels)
        (tmp_path / name).mkdir()
        (tmp_path / name / "sv_model.yaml").write_text(yaml.safe_dump(document))
        systems.append(ScoredSystem(name, item.scores, tmp_path / "fbank.trials", tmp_path / name))
    table = write_comparison(systems, tmp_path / "RESULTS.md", title="t", det_png=tmp_path / "det.png")
    cells = {line.split("|")[1]: line.split("|")[2] for line in table.splitlines()[2:]}
    assert cells == {"fbank": "log-mel fbank", "last": "frozen teacher, hidden state -1",
                     "sum": "frozen teacher, weighted sum of all layers",
                     "some": "frozen teacher, weighted sum of hidden states [2, 4]"}
