"""asr_train as a user runs it (real subprocesses): training from dumped features, the exported model
dir, a rerun of a finished run, and one-line errors."""
from __future__ import annotations

import json

import pytest
import torch

from speechdistill.asr.dump import dump_features
from speechdistill.asr.model import load_asr_model
from speechdistill.downstream.tokenizer import train_char

from event_files import assert_events_match_metrics
from test_asr_common import make_data_dir, make_upstream, random_texts, run_module

TINY = ["--max_steps", "24", "--batch_seconds", "6", "--lr", "5e-3", "--downstream.hidden_size", "16",
        "--downstream.num_layers", "1", "--downstream.projection_size", "null", "--downstream.dropout", "0",
        "--valid_every", "12", "--log_every", "6", "--num_workers", "0", "--threads", "1", "--precision", "fp32",
        "--teacher_precision", "fp32", "--num_buckets", "2", "--checkpoint_every", "12"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("asr_train")
    upstream = make_upstream(root / "upstream")
    train = make_data_dir(root / "train", random_texts(16, seed=1), seed=1)
    dev = make_data_dir(root / "dev", random_texts(4, seed=2, prefix="spk9"), seed=2)
    train_char([line.split(" ", 1)[1] for line in (train / "text").read_text().splitlines()], root / "tokens")
    for name, data in (("train", train), ("dev", dev)):
        dump_features(upstream, data, root / "dump" / name, num_workers=0)
    return root


def _train(root, out, *extra):
    return run_module("speechdistill.bin.asr_train", "--train-data", root / "train", "--valid-data", root / "dev",
                      "--upstream", root / "upstream", "--token-dir", root / "tokens", "--output-dir", out,
                      "--train_features", root / "dump/train", "--valid_features", root / "dump/dev", *TINY, *extra)


def test_training_from_dumps_exports_a_model_that_learned_and_a_rerun_only_exports(prepared):
    out = prepared / "exp"
    first = _train(prepared, out)
    assert first.returncode == 0, first.stderr[-3000:]
    log = (out / "train.log").read_text()
    assert "train features from" in log and "exported the ASR model" in log
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in records if "valid/loss" in r]
    assert [r["step"] for r in valid] == [0, 12, 24]
    assert {"valid/cer", "valid/wer", "valid/infeasible"} <= set(valid[0])
    # the CTC loss of the held-out set drops (blank and token priors are learned in a few updates)
    assert valid[-1]["valid/loss"] < 0.5 * valid[0]["valid/loss"]
    train_terms = [r for r in records if "ctc" in r]
    assert train_terms[-1]["ctc"] < train_terms[0]["ctc"] and train_terms[-1]["infeasible"] == 0.0
    assert {"valid/wer", "valid/cer", "ctc", "grad_norm"} <= set(assert_events_match_metrics(out))  # TensorBoard
    model, tokenizer, info = load_asr_model(out / "asr_model")
    assert info.token_type == "char" and tokenizer.vocab_size == model.vocab_size
    weights = model.featurizer.layer_weights()
    assert weights.shape == (3,) and float(weights.max() - weights.min()) > 1e-4  # gradients reached the featurizer
    before = {k: v.clone() for k, v in model.state_dict().items()}

    again = _train(prepared, out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already reached max_steps=24; nothing to train" in (out / "train.log").read_text()
    reloaded, _, _ = load_asr_model(out / "asr_model")
    assert all(torch.equal(before[k], v) for k, v in reloaded.state_dict().items())


def test_train_errors_name_the_fix(prepared):
    from speechdistill.bin.asr_train import main

    with pytest.raises(ValueError, match="tokens.txt: token list not found"):
        main(["--train-data", str(prepared / "train"), "--upstream", str(prepared / "upstream"),
              "--token-dir", str(prepared / "nowhere"), "--output-dir", str(prepared / "exp_tok"), *TINY])
    other = make_upstream(prepared / "other", seed=4)
    with pytest.raises(ValueError, match="dumped from .* whose files differ from the upstream"):
        main(["--train-data", str(prepared / "train"), "--upstream", str(other), "--token-dir",
              str(prepared / "tokens"), "--output-dir", str(prepared / "exp_other"), "--train_features",
              str(prepared / "dump/train"), *TINY])
