"""Analytic MAC counts (against torch's FlopCounterMode and hand arithmetic) and the profile entry point."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from speechdistill.models import Encoder, architecture, build_student, save_model
from speechdistill.models.profiling import count_macs, macs_per_second

torch.set_num_threads(2)
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["hubert_base", "armhubert_s", "starhubert", "wavlm_2_layers", "distilalhubert",
                                  "oskdft_2024"])
def test_analytic_macs_equal_torch_flop_counter(name, monkeypatch):
    # the counter knows aten's products (the reference path), not the CPU kernels' oneDNN ops and FFTs
    monkeypatch.setenv("SPEECHDISTILL_KERNELS", "reference")
    if name == "wavlm_2_layers":
        model, heads = Encoder(architecture("wavlm_base").replace(num_layers=2)), None
    else:
        student = build_student(name) if name != "hubert_base" else None
        model = student.encoder if student else Encoder(architecture("hubert_base"))
        heads = student.heads if student else None
    samples = 24000
    wavs = torch.randn(1, samples)
    counter = FlopCounterMode(display=False)
    with counter:  # materialised attention so that every product is an op the counter knows
        out = model(wavs, attention_layers=set(range(1, model.config.num_layers + 1)))
        if heads is not None:
            heads.from_hidden_states(out.hidden_states) if hasattr(heads, "from_hidden_states") else heads(
                out.hidden_states)
    counted = counter.get_total_flops() / 2
    analytic = count_macs(model.config, samples, heads)["total"]
    assert analytic == pytest.approx(counted, rel=2e-3)


def test_hubert_base_is_7_0_to_7_9_gmacs_per_audio_second():
    config = architecture("hubert_base")
    for seconds in (3, 10, 12.3, 20):  # 2 s gives 6.9998 G: the range of SUPERB's 1.3-20 s set
        assert 7.0e9 <= macs_per_second(config, seconds) <= 7.9e9
    parts = count_macs(config, 16000)
    # hand arithmetic (anchors §6a): conv 2 runs at 1599 frames/s with 512 x 512 x 3 MACs per frame
    frames = [3199, 1599, 799, 399, 199, 99, 49]
    expected_cnn = frames[0] * 512 * 10 + sum(f * 512 * 512 * 3 for f in frames[1:5]) + \
        sum(f * 512 * 512 * 2 for f in frames[5:])
    assert parts["cnn"] == expected_cnn
    assert parts["attention_scores"] == 12 * 2 * 49 * 49 * 768
    assert parts["feed_forward"] == 12 * 2 * 49 * 768 * 3072


def _run(args, cwd, first_on_path=()):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([*map(str, first_on_path), str(REPO / "src")]),
               OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "speechdistill.bin.profile", *args], capture_output=True, text=True,
                          env=env, cwd=cwd)


def test_profile_prints_params_macs_and_speed_as_json(tmp_path):
    run = _run(["--model", "distilhubert", "--seconds", "1", "--repeats", "2", "--warmup", "0", "--threads", "1",
                "--log", str(tmp_path / "logs" / "profile.log")], tmp_path)  # a log folder still to be made
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["params"] == 23_491_200 == report["published_params"]
    assert report["macs_per_second"] == macs_per_second(build_student("distilhubert").encoder.config, 1.0)
    assert len(report["forward_seconds"]) == 2 and report["audio_seconds_per_second"] > 0
    assert report["threads"] == 1
    assert "result:" in (tmp_path / "logs" / "profile.log").read_text()
    run = _run(["--model", "armhubert", "--no-speed"], tmp_path)
    assert json.loads(run.stdout)["params"] == 26_448_448  # counted with its 12 projection heads
    bad = _run(["--model", "no_such_model"], tmp_path)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1] == \
        "profile: error: no_such_model: no such file or directory"
    (tmp_path / "a_file").write_text("")
    unwritable = _run(["--model", "distilhubert", "--no-speed", "--log", str(tmp_path / "a_file" / "p.log")], tmp_path)
    assert unwritable.returncode == 1 and unwritable.stdout == "" and unwritable.stderr.splitlines() == [
        f"profile: error: --log {tmp_path / 'a_file' / 'p.log'}: cannot write it: File exists ({tmp_path / 'a_file'}). "
        "Fix: choose a writable path"]


def test_profile_table_lists_presets_with_ratios_to_the_reference(tmp_path):
    run = _run(["--table", "--presets", "distilhubert", "starhubert", "--seconds", "0.5", "--repeats", "1",
                "--warmup", "0", "--threads", "1", "--no-onnx"], tmp_path)
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stdout.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| model | params") and len(lines) == 4
    assert lines[1].startswith("| hubert_base | 94.37 M") and "| 1.00x |" in lines[1]
    assert lines[2].startswith("| distilhubert | 23.49 M") and lines[3].startswith("| starhubert | 22.31 M")


TINY_PRESET = """name: tiny_distilhubert
description: "DistilHuBERT's shape at 64 wide"
reference: "test"
teacher_architecture: hubert_base
encoder:
  conv_layers: [[32, 10, 5], [32, 3, 2], [32, 2, 2]]
  conv_bias: false
  feature_layer_norm: false
  mask_embedding: false
  hidden_size: 64
  num_layers: 2
  num_heads: 4
  ffn_size: 128
  pos_conv_kernel: 16
  pos_conv_groups: 4
heads:
  kind: prediction
  source_layers: [2]
  target_layers: [4, 8, 12]
params_include_heads: true
"""


def test_profile_table_times_onnxruntime_fp32_and_int8_in_turn_with_pytorch(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY_PRESET)
    config = architecture("hubert_base").replace(conv_layers=[[32, 10, 5], [32, 3, 2], [32, 2, 2]], hidden_size=64,
                                                 num_layers=2, num_heads=4, ffn_size=128, pos_conv_kernel=16,
                                                 pos_conv_groups=4)
    save_model(Encoder(config), tmp_path / "teacher")
    run = _run(["--table", "--reference", str(tmp_path / "teacher"), "--presets", str(tmp_path / "tiny.yaml"),
                "--seconds", "0.5", "--repeats", "2", "--warmup", "1", "--threads", "1", "--log",
                str(tmp_path / "profile.log")], tmp_path)
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stdout.splitlines() if line.startswith("| ")]
    assert lines[0].endswith("| audio s / s | onnxruntime fp32 | onnxruntime int8 | int8 cosine |")
    assert len(lines) == 3 and lines[2].startswith("| tiny_distilhubert |")
    rows = [json.loads(line.split("profile: ", 1)[1]) for line in (tmp_path / "profile.log").read_text().splitlines()
            if line.split("profile: ", 1)[-1].startswith('{"model"')]
    assert [row["model"] for row in rows] == [str(tmp_path / "teacher"), "tiny_distilhubert"]
    for row, line in zip(rows, lines[1:]):
        assert row["onnx_fp32_relative_diff"] <= 1e-4
        heads = [f"head_{t}" for t in (4, 8, 12)] if row["model"] == "tiny_distilhubert" else []
        assert sorted(row["onnx_int8_cosine"]) == sorted([f"hidden_{i}" for i in range(3)] + heads)
        assert 0.99 <= row["onnx_int8_worst_cosine"] == min(row["onnx_int8_cosine"].values()) < 1.0
        for kind in ("fp32", "int8"):
            speed = row[f"onnx_{kind}_audio_seconds_per_second"]
            assert row[f"onnx_{kind}_speedup"] == pytest.approx(speed / row["onnx_round_torch_audio_seconds_per_second"])
            assert f"| {speed:.1f} ({row[f'onnx_{kind}_speedup']:.2f}x) |" in line
        assert line.endswith(f" {row['onnx_int8_worst_cosine']:.4f} |")


def test_profile_table_without_onnxruntime_says_so_before_timing_anything(tmp_path):
    from test_export_onnx import without_package

    (tmp_path / "tiny.yaml").write_text(TINY_PRESET)
    run = _run(["--table", "--reference", "distilhubert", "--presets", str(tmp_path / "tiny.yaml"), "--seconds", "0.5",
                "--repeats", "1", "--warmup", "0", "--threads", "1"], tmp_path,
               [without_package(tmp_path / "site", "onnxruntime")])
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.splitlines() == ["profile: error: the Python package 'onnxruntime' is missing; install the ONNX "
                                       "extra: pip install 'speechdistill[onnx]' (onnx, onnxscript, onnxruntime); or "
                                       "leave the onnxruntime columns out (--no-onnx)"]
