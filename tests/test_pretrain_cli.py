"""``python -m speechdistill.bin.pretrain_hubert`` end to end on a tiny synthetic corpus, as a real subprocess:
labels, training that lowers the masked-prediction loss, the exported teacher in both formats (the
Hugging Face one reproduced by transformers), reruns, and user errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from speechdistill.models import load_model
from event_files import assert_events_match_metrics
from test_pretrain_support import make_speech_dir, tiny_config_dict

STEPS = 10


def run_cli(*args, check=True):
    env = dict(os.environ, OMP_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-m", "speechdistill.bin.pretrain_hubert", *map(str, args)],
                         capture_output=True, text=True, env=env)
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain_cli")
    train = make_speech_dir(root / "train", [16000, 20000, 24000, 18000, 22000, 26000, 17000, 21000], seed=4)
    valid = make_speech_dir(root / "valid", [16000, 20000, 18000, 21000], seed=5, prefix="dev")
    keys = tiny_config_dict(train, valid, max_steps=STEPS)
    for key in ("train_data", "valid_data"):
        keys.pop(key)
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(keys))
    out_dir = root / "exp"
    args = ["--config", config, "--train-data", train, "--valid-data", valid, "--output-dir", out_dir]
    first = run_cli(*args)
    again = run_cli(*args)
    return {"dir": out_dir, "args": args, "first": first, "again": again}


def test_training_lowers_the_validation_loss(run):
    records = [json.loads(line) for line in (run["dir"] / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in records if "valid/ce_masked" in r]
    assert [r["step"] for r in valid] == [0, STEPS]
    # deterministic validation masks, so start and end compare the same frames
    assert valid[-1]["valid/ce_masked"] < valid[0]["valid/ce_masked"] - 0.2
    assert valid[-1]["valid/loss"] < valid[0]["valid/loss"]
    train = [r for r in records if "ce_masked" in r and "valid/ce_masked" not in r]
    assert len(train) == STEPS and all(0.0 <= r["acc_masked"] <= 1.0 for r in train)
    assert "chance level of masked-unit accuracy" in (run["dir"] / "train.log").read_text()
    assert (run["dir"] / "plots" / "acc_masked.png").is_file()
    assert {"ce_masked", "acc_masked", "valid/ce_masked"} <= set(assert_events_match_metrics(run["dir"]))


def test_products_are_the_encoder_in_our_format_and_as_hubert_model(run):
    transformers = pytest.importorskip("transformers")
    out_dir = run["dir"]
    ours = load_model(out_dir / "model")
    assert ours.config.hidden_size == 32 and ours.config.num_layers == 2
    assert not any("final_proj" in k or "label" in k for k in ours.state_dict())
    summary = json.loads((out_dir / "pretrain_summary.json").read_text())
    assert summary["encoder_params"] == sum(p.numel() for p in ours.parameters())
    assert summary["head_params"] == 32 * 16 + 16 + 8 * 16  # final_proj and 8 unit embeddings of 16
    reference = transformers.HubertModel.from_pretrained(str(out_dir / "hf")).eval()
    imported = load_model(out_dir / "hf")
    wav = 0.1 * torch.randn(2, 12345, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mine = ours(wav).hidden_states
        theirs = reference(wav, output_hidden_states=True).hidden_states
        again = imported(wav).hidden_states
    assert len(mine) == len(theirs) == 3
    for a, b, c in zip(mine, theirs, again):
        assert a.shape == b.shape == (2, 38, 32)
        assert float((a - b).abs().max()) < 1e-4
        assert torch.equal(a, c)


def test_a_rerun_reuses_the_labels_and_does_not_train_again(run):
    assert "labels written" in run["first"].stderr and "teacher written to" in run["first"].stderr
    assert "labels reused" in run["again"].stderr
    assert "already reached max_steps" in (run["dir"] / "train.log").read_text()
    checkpoints = sorted(p.name for p in (run["dir"] / "checkpoints").iterdir())
    assert checkpoints == [f"ckpt-{STEPS}.pt"]


def _main_in_process(argv, capsys):
    """The entry point as ``python -m`` runs it (``run_main`` around ``main``), in this process."""
    from speechdistill.bin.pretrain_hubert import main
    from speechdistill.train.cli import run_main

    with pytest.raises(SystemExit) as stopped:
        run_main(lambda: main([str(a) for a in argv]), prog="pretrain_hubert")
    captured = capsys.readouterr()
    return stopped.value.code, captured.out, captured.err


def test_help_lists_the_keys_and_writes_nothing(tmp_path, capsys):
    code, out, _ = _main_in_process(["--train-data", tmp_path / "train", "--output-dir", tmp_path / "exp", "--help"],
                                    capsys)
    assert code == 0 and "--stage" in out and "--labels" in out and "logit_temp" in out
    assert not (tmp_path / "exp").exists()


def test_user_errors_are_one_line_without_traceback(tmp_path, capsys):
    train = make_speech_dir(tmp_path / "train", [9600], seed=1)
    code, _, err = _main_in_process(["--train-data", train, "--output-dir", tmp_path / "exp", "--encoder.conv_layers",
                                     "[[64, 10, 5], [64, 8, 4], [64, 4, 4], [64, 4, 4]]"], capsys)
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("pretrain_hubert: error: config.encoder.conv_layers") and "[[C, 10, 5]]" in err
    code, _, err = _main_in_process(["--train-data", tmp_path / "nowhere", "--output-dir", tmp_path / "exp2"], capsys)
    assert code == 1 and "Traceback" not in err
    assert "nowhere: data directory not found" in err.strip().splitlines()[-1]
