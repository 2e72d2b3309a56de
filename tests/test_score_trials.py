"""score_trials: cosine scoring, mean subtraction, AS-norm and TTA, from real kaldiio files."""
import subprocess
import sys

import kaldiio
import numpy as np
import pytest


def run(module, *args):
    return subprocess.run([sys.executable, "-m", f"speechdistill.bin.{module}", *map(str, args)],
                          capture_output=True, text=True)


def write_scp(directory, name, embeddings):
    directory.mkdir(parents=True, exist_ok=True)
    ark, scp = directory / f"{name}.ark", directory / f"{name}.scp"
    with kaldiio.WriteHelper(f"ark,scp:{ark},{scp}") as writer:
        for key in sorted(embeddings):
            writer(key, np.asarray(embeddings[key], dtype=np.float32))
    return scp


def cos(a, b):
    return float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture
def setup(tmp_path):
    rng = np.random.default_rng(0)
    dim = 16
    speakers = {f"spk{s}": rng.standard_normal(dim) for s in range(6)}
    offset = 3.0 * rng.standard_normal(dim)  # a shared offset that mean subtraction removes
    evaluation = {}
    for spk in ("spk0", "spk1", "spk2"):
        for u in range(3):
            evaluation[f"{spk}-u{u}"] = speakers[spk] + 0.5 * rng.standard_normal(dim) + offset
    train, utt2spk = {}, {}
    for spk in ("spk3", "spk4", "spk5", "spk0", "spk1"):
        for u in range(4):
            key = f"{spk}-t{u}"
            train[key] = speakers[spk] + 0.5 * rng.standard_normal(dim) + offset
            utt2spk[key] = spk
    keys = sorted(evaluation)
    trials = [(e, t) for e in keys for t in keys if e < t]
    trial_file = tmp_path / "trials"
    trial_file.write_text("".join(f"{e} {t} {'target' if e.split('-')[0] == t.split('-')[0] else 'nontarget'}\n"
                                  for e, t in trials))
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "utt2spk").write_text("".join(f"{k} {utt2spk[k]}\n" for k in sorted(utt2spk)))
    return dict(tmp=tmp_path, evaluation=evaluation, train=train, utt2spk=utt2spk, trials=trials, trial_file=trial_file,
                eval_scp=write_scp(tmp_path / "eval", "xvector", evaluation),
                train_scp=write_scp(tmp_path / "train", "xvector", train))


def read_score_lines(path):
    return [line.split() for line in path.read_text().splitlines()]


def test_plain_cosine_scores_in_trial_order(setup):
    out_file = setup["tmp"] / "scores" / "plain.score"
    out = run("score_trials", "--trials", setup["trial_file"], "--embeddings", setup["eval_scp"], "--output", out_file)
    assert out.returncode == 0, out.stderr
    rows = read_score_lines(out_file)
    assert [(r[0], r[1]) for r in rows] == setup["trials"]
    ev = setup["evaluation"]
    for (e, t), row in zip(setup["trials"], rows):
        assert float(row[2]) == pytest.approx(cos(ev[e], ev[t]), abs=6e-6)
        assert row[3] == ("target" if e[:4] == t[:4] else "nontarget")
        assert len(row[2].split(".")[1]) == 5


def test_mean_subtraction_and_asnorm_match_a_direct_computation(setup):
    out_file = setup["tmp"] / "raw.score"
    norm_file = setup["tmp"] / "asnorm3.score"
    top_n = 3
    out = run("score_trials", "--trials", setup["trial_file"], "--embeddings", setup["eval_scp"], "--output", out_file,
              "--train-embeddings", setup["train_scp"], "--subtract-mean", "--score-norm", "asnorm", "--top-n", top_n,
              "--train-utt2spk", setup["tmp"] / "train" / "utt2spk", "--norm-output", norm_file)
    assert out.returncode == 0, out.stderr

    train = {k: v.astype(np.float32).astype(np.float64) for k, v in setup["train"].items()}
    ev = {k: v.astype(np.float32).astype(np.float64) for k, v in setup["evaluation"].items()}
    mean = np.mean(list(train.values()), axis=0)
    cohort = []
    for spk in sorted(set(setup["utt2spk"].values())):
        members = [train[k] for k, s in setup["utt2spk"].items() if s == spk]
        cohort.append(np.mean(members, axis=0) - mean)

    def stats(vector):
        similarities = sorted((cos(vector, c) for c in cohort), reverse=True)[:top_n]
        return np.mean(similarities), np.sqrt(np.mean((np.array(similarities) - np.mean(similarities)) ** 2))

    raw_rows = read_score_lines(out_file)
    norm_rows = read_score_lines(norm_file)
    for (e, t), raw_row, norm_row in zip(setup["trials"], raw_rows, norm_rows):
        enroll, test = ev[e] - mean, ev[t] - mean
        score = cos(enroll, test)
        assert float(raw_row[2]) == pytest.approx(score, abs=6e-6)
        mu_e, sd_e = stats(enroll)
        mu_t, sd_t = stats(test)
        expected = 0.5 * ((score - mu_e) / sd_e + (score - mu_t) / sd_t)
        assert norm_row[:2] == [e, t] and norm_row[3] == raw_row[3]
        assert float(norm_row[2]) == pytest.approx(expected, abs=2e-5)
        assert [float(v) for v in norm_row[4:]] == pytest.approx(
            [np.linalg.norm(enroll), np.linalg.norm(test), mu_e, mu_t], abs=6e-5)
    assert "cohort 5 speakers, top 3" in out.stderr

    # the normalised file is a valid compute_eer input
    eer = run("compute_eer", "--scores", norm_file, "--trials", setup["trial_file"])
    assert eer.returncode == 0, eer.stderr
    assert eer.stdout.splitlines()[0] == "---- asnorm3.score -----"


def test_snorm_uses_the_whole_cohort(setup):
    snorm = setup["tmp"] / "snorm.score"
    asnorm_all = setup["tmp"] / "asnorm5.score"
    common = ["--trials", setup["trial_file"], "--embeddings", setup["eval_scp"], "--output", setup["tmp"] / "raw",
              "--train-embeddings", setup["train_scp"], "--train-utt2spk", setup["tmp"] / "train" / "utt2spk"]
    assert run("score_trials", *common, "--score-norm", "snorm", "--norm-output", snorm).returncode == 0
    assert run("score_trials", *common, "--score-norm", "asnorm", "--top-n", 5,
               "--norm-output", asnorm_all).returncode == 0
    assert snorm.read_text() == asnorm_all.read_text()
    big = run("score_trials", *common, "--score-norm", "asnorm", "--top-n", 300, "--norm-output", asnorm_all)
    assert big.returncode == 0 and "exceeds the cohort of 5 speakers" in big.stderr
    assert snorm.read_text() == asnorm_all.read_text()


def test_missing_embeddings_are_counted_before_scoring(setup):
    trial_file = setup["tmp"] / "trials_more"
    trial_file.write_text(setup["trial_file"].read_text() + "spk0-u0 ghost-1 nontarget\nghost-2 spk1-u1 nontarget\n")
    out_file = setup["tmp"] / "never.score"
    out = run("score_trials", "--trials", trial_file, "--embeddings", setup["eval_scp"], "--output", out_file)
    assert out.returncode == 1
    assert "2 of 11 utterances have no embedding (e.g. ghost-1, ghost-2)" in out.stderr
    assert str(setup["eval_scp"]) in out.stderr and "Traceback" not in out.stderr
    assert not out_file.exists()


def test_tta_matrices_average_full_and_segment_pair_cosines(tmp_path):
    rng = np.random.default_rng(3)
    embeddings = {"a": rng.standard_normal((4, 8)), "b": rng.standard_normal((3, 8)), "c": rng.standard_normal((4, 8))}
    scp = write_scp(tmp_path, "xvector", embeddings)
    trials = tmp_path / "trials"
    trials.write_text("a b target\na c nontarget\n")
    out_file = tmp_path / "tta.score"
    out = run("score_trials", "--trials", trials, "--embeddings", scp, "--output", out_file)
    assert out.returncode == 0, out.stderr
    emb = {k: v.astype(np.float32).astype(np.float64) for k, v in embeddings.items()}
    for (e, t), row in zip([("a", "b"), ("a", "c")], read_score_lines(out_file)):
        pair_mean = np.mean([cos(x, y) for x in emb[e][1:] for y in emb[t][1:]])
        assert float(row[2]) == pytest.approx(0.5 * (cos(emb[e][0], emb[t][0]) + pair_mean), abs=6e-6)

    write_scp(tmp_path / "mixed", "xvector", {"a": embeddings["a"], "b": embeddings["b"][0], "c": embeddings["c"]})
    out = run("score_trials", "--trials", trials, "--embeddings", tmp_path / "mixed" / "xvector.scp",
              "--output", out_file)
    assert out.returncode == 1 and "trial 'a b': one side has TTA segment embeddings" in out.stderr


def test_argument_combinations_are_checked(setup):
    out = run("score_trials", "--trials", setup["trial_file"], "--embeddings", setup["eval_scp"],
              "--output", setup["tmp"] / "x", "--score-norm", "asnorm")
    assert out.returncode == 2 and "--train-embeddings" in out.stderr
