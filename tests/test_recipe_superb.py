"""End to end: egs/superb/probe/run.sh on the tiny mini corpora with a small random-weight upstream: the four
probes (PR, KS, IC, SID) prepared, trained, evaluated and collected in RESULTS.md; every reported metric is
recomputed here from the prediction files (accuracies by hand, PER with jiwer)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import jiwer
import pytest

from conftest import REPO, copy_recipes, run_recipe
from speechdistill.data.tables import read_table

from test_asr_common import make_upstream

ARGS = ["--tasks", "pr ks ic sid", "--mini_size", "tiny", "--conf_dir", "conf/demo", "--ngpu", "0",
        "--probe_args", "--max_steps 3 --valid_every 3 --log_every 1"]


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory, librispeech_tiny_stages_0_1):
    root = tmp_path_factory.mktemp("superb")
    recipe = root / "egs" / "superb" / "probe"
    shutil.copytree(REPO / "egs" / "superb" / "probe", recipe, symlinks=True,
                    ignore=shutil.ignore_patterns("data", "exp", "downloads", "dump"))
    (root / "egs" / "TEMPLATE").symlink_to(REPO / "egs" / "TEMPLATE")
    # the tiny mini LibriSpeech and MUSAN of the session; the commands corpora and VoxCeleb are built here
    shutil.copytree(librispeech_tiny_stages_0_1 / "downloads" / "mini", recipe / "downloads" / "mini", symlinks=True)
    upstream = make_upstream(root / "upstream")
    first = run_recipe(recipe, *ARGS, "--upstream", str(upstream), timeout=900)
    return recipe, upstream, first


def test_four_probes_train_score_and_report(recipe_run):
    recipe, upstream, result = recipe_run
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]
    results = (recipe / "exp/RESULTS.md").read_text()
    row = next(line for line in results.splitlines() if line.startswith("| upstream |") and "params" not in line)
    values = [cell.strip() for cell in row.split("|")[3:7]]
    for task, value in zip(("pr", "ks", "ic", "sid"), values):
        exp = recipe / "exp" / f"{task}_upstream"
        score = json.loads((exp / "eval/test/score.json").read_text())
        assert value == f"{score['value']:.2f}" and score["task"] == task
        predictions = dict(read_table(exp / "eval/test/predictions", allow_empty_value=True))
        target_file = {"pr": "phones", "ks": "utt2label", "ic": "utt2intent", "sid": "utt2spk"}[task]
        references = read_table(recipe / "data" / f"{task}_test" / target_file)
        keys = sorted(references)
        assert sorted(predictions) == keys and score["utterances"] == len(keys) > 0
        if task == "pr":
            expected = 100 * jiwer.wer([references[k] for k in keys], [predictions[k] for k in keys])
        else:
            expected = 100 * sum(predictions[k] == references[k] for k in keys) / len(keys)
        assert score["value"] == pytest.approx(expected, abs=1e-6), task
        assert "update 3/3" in (exp / "train.log").read_text()
    labels = (recipe / "exp/ks_upstream/probe_model/labels.txt").read_text().split("\n")
    assert labels[:2] == ["label yes", "label no"] and labels[11] == "label _silence_"
    assert len((recipe / "exp/ic_upstream/probe_model/labels.txt").read_text().split("\nlocation ")) == 5
    assert "corpus_ks=mini" in results and "stress remove" in results


def test_rerun_keeps_the_probes_and_errors_are_named(recipe_run):
    recipe, upstream, _ = recipe_run
    again = run_recipe(recipe, *ARGS, "--stage", "1", "--stop_stage", "1", "--upstream", str(upstream))
    assert again.returncode == 0 and again.stdout.count("already trained with these settings; kept") == 4
    missing = run_recipe(recipe, "--stage", "1", "--upstream", str(recipe / "no_such_model"))
    assert missing.returncode == 1 and "upstream" in missing.stdout and "not found" in missing.stdout
    bad_task = run_recipe(recipe, "--tasks", "asr", "--upstream", str(upstream))
    assert bad_task.returncode == 1 and "unknown task 'asr'" in bad_task.stdout
    # new targets (same utterances, one label changed): the probe learns them from scratch, not by resuming the
    # finished run trained on the old ones, and the test set is scored again
    exp, labels_path = recipe / "exp" / "ks_upstream", recipe / "data" / "ks_train" / "utt2label"
    labels = read_table(labels_path)
    first = next(utt for utt, label in labels.items() if label == "yes")
    labels_path.write_text("".join(f"{u} {'no' if u == first else v}\n" for u, v in labels.items()))
    scored_before = (exp / "eval/test/score.json").stat().st_mtime_ns
    relabeled = run_recipe(recipe, *ARGS, "--tasks", "ks", "--stage", "1", "--stop_stage", "1", "--upstream",
                           str(upstream))
    assert relabeled.returncode == 0, relabeled.stdout[-4000:] + relabeled.stderr[-3000:]
    assert "already trained" not in relabeled.stdout and "training it afresh" in relabeled.stdout
    log = (exp / "train.log").read_text()
    assert "resumed at update" not in log and "update 3/3" in log
    assert (exp / "eval/test/score.json").stat().st_mtime_ns > scored_before


def test_pr_stage_of_the_librispeech_recipe_and_sid_stage_of_the_voxceleb_recipe(recipe_run, tmp_path,
                                                                                librispeech_tiny_stages_0_1):
    """Stage 7 of egs/librispeech/distill (PR on its own data dirs) and stage 6 of egs/voxceleb/oskdft (SID on the
    mini VoxCeleb's identification split), both through egs/superb/probe/local/probe_task.sh."""
    superb, upstream, _ = recipe_run
    egs = copy_recipes(tmp_path)
    (egs / "superb").mkdir()
    (egs / "superb" / "probe").symlink_to(superb)
    librispeech = egs / "librispeech" / "distill"
    shutil.copytree(librispeech_tiny_stages_0_1 / "data", librispeech / "data", symlinks=True)
    args = ["--pr_args", "--max_steps 2 --valid_every 2", "--pr_config", "../../superb/probe/conf/demo/pr.yaml"]
    pr = run_recipe(librispeech, "--stage", "7", "--stop_stage", "7", "--upstream", str(upstream), *args)
    assert pr.returncode == 0, pr.stdout[-4000:] + pr.stderr[-3000:]
    score = json.loads((librispeech / "exp/pr_upstream/eval/test/score.json").read_text())
    phones = read_table(librispeech / "data/pr_test/phones")
    assert score["task"] == "pr" and score["count"] == sum(len(p.split()) for p in phones.values())
    assert sorted(read_table(librispeech / "data/pr_test/phones")) == sorted(read_table(librispeech / "data/test/text"))
    voxceleb = egs / "voxceleb" / "oskdft"
    sid = run_recipe(voxceleb, "--stage", "6", "--stop_stage", "6", "--sid_upstream", str(upstream), "--mini_dir",
                     str(superb / "downloads" / "mini"), "--sid_args", "--max_steps 2 --valid_every 2")
    assert sid.returncode == 0, sid.stdout[-4000:] + sid.stderr[-3000:]
    score = json.loads((voxceleb / "exp/sid_upstream/eval/test/score.json").read_text())
    assert score["task"] == "sid" and score["utterances"] == len(read_table(voxceleb / "data/sid_test/utt2spk"))


def test_dumped_features_are_what_the_probe_trains_on(recipe_run):
    """--dump_features true: both data dirs' hidden states are dumped once under <exp>/dump and the probe reads them
    (train_features / valid_features) instead of running the upstream."""
    recipe, upstream, _ = recipe_run
    done = run_recipe(recipe, *ARGS[2:], "--tasks", "ks", "--stage", "1", "--stop_stage", "1", "--dump_features",
                      "true", "--exp_dir", "exp_dumped", "--upstream", str(upstream))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    exp = recipe / "exp_dumped" / "ks_upstream"
    for name, data in (("train", "ks_train"), ("dev", "ks_dev")):
        dumped = read_table(exp / "dump" / name / "feats.scp")
        assert sorted(dumped) == sorted(read_table(recipe / "data" / data / "utt2num_samples")), name
        assert (exp / "log" / f"dump_features.{name}.log").is_file()
    command = (exp / "log" / "probe_train.log").read_text()
    assert f"--train_features {exp.relative_to(recipe)}/dump/train" in command
    assert f"--valid_features {exp.relative_to(recipe)}/dump/dev" in command
    assert "update 3/3" in (exp / "train.log").read_text() and (exp / "eval/test/score.json").is_file()
