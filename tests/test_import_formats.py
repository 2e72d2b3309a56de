"""Every import path gives the transformers reference: Hugging Face directories (plain, task wrappers,
.bin), fairseq checkpoints (plain dict cfg, omegaconf-pickled cfg without omegaconf installed,
argparse-era args, CTC fine-tuned), unilm WavLM, s3prl converted checkpoints, our directory;
unknown files are errors that say what was found; the import_teacher entry point."""
import argparse
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from speechdistill.models import ModelFormatError, import_model, load_model, save_model
from speechdistill.models.unpickle import CheckpointUnpicklingError, load_checkpoint, plain
from test_models_encoder import batch
from test_models_support import (SMALL, SMALL_LARGE_STYLE, SMALL_WAVLM, fairseq_model_cfg, fairseq_state,
                                 hf_model, max_diff_per_utterance, save_with_fake_omegaconf)

torch.set_num_threads(2)
REPO = Path(__file__).resolve().parents[1]


def assert_matches(ours, reference, tolerance=1e-4):
    wavs, lengths = batch([7000, 4500])
    with torch.no_grad():
        diffs = max_diff_per_utterance(ours(wavs, lengths), reference, wavs, lengths)
    assert max(diffs) < tolerance, diffs


@pytest.fixture(scope="module")
def references():
    torch.manual_seed(0)
    return {"hubert": hf_model("hubert", **SMALL), "large": hf_model("wav2vec2", **SMALL_LARGE_STYLE),
            "wavlm": hf_model("wavlm", **SMALL_WAVLM)}


def test_hf_task_wrappers_and_bin_weights(tmp_path, references):
    from transformers import HubertForCTC
    reference = references["hubert"]
    ctc = HubertForCTC(reference.config)
    ctc.hubert.load_state_dict(reference.state_dict())
    ctc.save_pretrained(tmp_path / "ctc")
    model, report = import_model(tmp_path / "ctc")
    assert report.format == "huggingface" and report.architecture == "hubert"
    assert set(report.ignored_keys) == {"lm_head.weight", "lm_head.bias"}
    assert_matches(model, reference)
    # pytorch_model.bin with the legacy weight-norm names
    directory = tmp_path / "bin"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(reference.config.to_dict()))
    state = {k.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1",
                                                                                  "weight_v"): v
             for k, v in reference.state_dict().items()}
    torch.save(state, directory / "pytorch_model.bin")
    assert_matches(load_model(directory), reference)


@pytest.mark.parametrize("name", ["hubert", "large", "wavlm"])
def test_fairseq_checkpoint_with_plain_dict_config(tmp_path, references, name):
    reference = references[name]
    weights = fairseq_state(reference.state_dict(), layer_norm_cnn=name == "large")
    weights["final_proj.weight"] = torch.randn(8, 64)  # pretraining heads are skipped
    weights["label_embs_concat"] = torch.randn(5, 8)
    cfg = {"model": fairseq_model_cfg(reference.config, wavlm=name == "wavlm"), "task": {"normalize": False}}
    torch.save({"cfg": cfg, "model": weights, "optimizer_history": []}, tmp_path / "model.pt")
    model, report = import_model(tmp_path / "model.pt")
    assert report.format == "fairseq"
    assert report.architecture == ("wavlm" if name == "wavlm" else "hubert")
    assert set(report.ignored_keys) == {"final_proj.weight", "label_embs_concat"}
    assert model.config.layerdrop == 0.0 and model.config.feature_grad_mult == 0.1
    assert_matches(model, reference)


def test_fairseq_checkpoint_whose_cfg_is_an_omegaconf_dictconfig(tmp_path, references):
    reference = references["large"]
    path = str(tmp_path / "hubert_large.pt")
    weights = fairseq_state(reference.state_dict(), layer_norm_cnn=True, parametrized_weight_norm=True)
    model_cfg = fairseq_model_cfg(reference.config)
    save_with_fake_omegaconf(path, lambda to_config: {
        "cfg": to_config({"common": {"fp16": True}, "model": model_cfg, "task": {"normalize": True, "labels": ["km"]}}),
        "model": weights, "extra_state": {"best": 0.5}})
    assert not any(name.startswith(("omegaconf", "fairseq")) for name in sys.modules)
    raw = load_checkpoint(path)
    cfg = plain(raw["cfg"])
    assert cfg["model"]["extractor_mode"] == "layer_norm"  # enum member -> its value
    assert cfg["task"] == {"normalize": True, "labels": ["km"]}
    model, report = import_model(path)
    assert not any(name.startswith(("omegaconf", "fairseq")) for name in sys.modules)
    assert model.config.normalize_waveform is True and model.config.layer_norm_first is True
    model.config.normalize_waveform = False  # transformers' model does not normalise by itself
    assert_matches(model, reference)


def test_argparse_era_and_ctc_finetuned_fairseq_checkpoints(tmp_path, references):
    reference = references["hubert"]
    weights = fairseq_state(reference.state_dict(), layer_norm_cnn=False)
    args = argparse.Namespace(**fairseq_model_cfg(reference.config), normalize=False, arch="wav2vec2")
    torch.save({"args": args, "cfg": None, "model": weights}, tmp_path / "old.pt")
    assert_matches(load_model(tmp_path / "old.pt"), reference)
    finetuned = {f"w2v_encoder.w2v_model.{k}": v for k, v in weights.items()}
    finetuned["w2v_encoder.proj.weight"] = torch.randn(32, 64)
    cfg = {"model": {"_name": "hubert_ctc", "w2v_args": {"model": fairseq_model_cfg(reference.config),
                                                          "task": {"normalize": False}}}, "task": {}}
    torch.save({"cfg": cfg, "model": finetuned}, tmp_path / "ctc.pt")
    model, report = import_model(tmp_path / "ctc.pt")
    assert "w2v_encoder.proj.weight" in report.ignored_keys and "fine-tuned" in report.notes[0]
    assert_matches(model, reference)


def test_unilm_wavlm_and_s3prl_converted_checkpoints(tmp_path, references):
    reference = references["wavlm"]
    weights = fairseq_state(reference.state_dict(), layer_norm_cnn=False)
    flat = dict(fairseq_model_cfg(reference.config, wavlm=True), normalize=False)
    torch.save({"cfg": flat, "model": weights}, tmp_path / "WavLM-Base.pt")
    model, report = import_model(tmp_path / "WavLM-Base.pt")
    assert (report.format, report.architecture) == ("fairseq", "wavlm")
    assert_matches(model, reference)
    hubert = references["hubert"]
    torch.save({"task_cfg": {"normalize": False, "sample_rate": 16000},
                "model_cfg": fairseq_model_cfg(hubert.config),
                "model_weight": fairseq_state(hubert.state_dict(), layer_norm_cnn=False, parametrized_weight_norm=True),
                "dictionaries_symbols": [["<s>", "0", "1"]]}, tmp_path / "hubert_base_ls960.pt")
    model, report = import_model(tmp_path / "hubert_base_ls960.pt")
    assert (report.format, report.architecture) == ("s3prl", "hubert")
    assert_matches(model, hubert)


def test_our_directory_round_trip_is_exact_and_atomic(tmp_path, references):
    model = load_model(_hf_dir(tmp_path, references["wavlm"]))
    out = save_model(model, tmp_path / "ours", source={"path": "x", "format": "huggingface"})
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "model.safetensors"]
    reloaded, report = import_model(out)
    assert report.format == "ours" and reloaded.config == model.config
    wavs, lengths = batch([5000, 3000])
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model(wavs, lengths).hidden_states,
                                                      reloaded(wavs, lengths).hidden_states))
    save_model(model, out)  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "ours"]  # no temporary leftovers
    text = (out / "config.yaml").read_text().replace("hidden_size:", "hiden_size:")
    (out / "config.yaml").write_text(text)
    with pytest.raises(ModelFormatError, match="config.yaml: encoder: unknown key 'hiden_size'"):
        load_model(out)


def _hf_dir(tmp_path, reference):
    reference.save_pretrained(tmp_path / "hf")
    return tmp_path / "hf"


def test_unrecognised_inputs_say_what_was_found(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(1)}, "config": {}}, tmp_path / "torchaudio.pth")
    with pytest.raises(ModelFormatError, match=r"top-level keys \['config', 'state_dict'\].*torchaudio-style"):
        load_model(tmp_path / "torchaudio.pth")
    torch.save({"foo": 1, "bar": [1, 2]}, tmp_path / "other.pt")
    with pytest.raises(ModelFormatError, match=r"unrecognised checkpoint with top-level keys \['bar', 'foo'\]"):
        load_model(tmp_path / "other.pt")
    (tmp_path / "noise.bin").write_bytes(os.urandom(64))
    with pytest.raises(ModelFormatError, match="not a PyTorch checkpoint"):
        load_model(tmp_path / "noise.bin")
    with pytest.raises(ModelFormatError, match="no such file or directory"):
        load_model(tmp_path / "missing.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFormatError, match="neither config.yaml .* nor config.json"):
        load_model(tmp_path / "empty")
    (tmp_path / "w.safetensors").write_bytes(b"x")
    with pytest.raises(ModelFormatError, match="lone .safetensors file"):
        load_model(tmp_path / "w.safetensors")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ModelFormatError, match="holds a list"):
        load_model(tmp_path / "list.pt")


def test_the_unpickler_refuses_code_references(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump({"cfg": Evil(), "model": {}}, handle)
    with pytest.raises(CheckpointUnpicklingError, match=r"references the Python object '(posix|os)\.system'"):
        load_checkpoint(str(path))
    with pytest.raises(ModelFormatError, match="system"):
        load_model(path)


def test_import_teacher_entry_point_checks_converts_and_is_rerunnable(tmp_path, references):
    src = _hf_dir(tmp_path, references["hubert"])
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "speechdistill.bin.import_teacher", "--src", str(src)]
    run = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout)
    assert found["format"] == "huggingface" and found["architecture"] == "hubert"
    assert found["params"] == sum(p.numel() for p in references["hubert"].parameters())
    assert "3 post-LN layers of 64" in found["shape"]
    out = tmp_path / "teacher"
    run = subprocess.run(command + ["--out", str(out)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert_matches(load_model(out), references["hubert"])
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    again = subprocess.run(command + ["--out", str(out)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert again.returncode == 0 and "already imported" in again.stdout
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    bad = subprocess.run([sys.executable, "-m", "speechdistill.bin.import_teacher", "--src", "junk.pt"],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert bad.returncode == 1
    assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("import_teacher: error: junk.pt: not a PyTorch")
    assert "Traceback" not in bad.stderr
