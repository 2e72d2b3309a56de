"""The benchmark command in reduced mode, its measuring tools and the s3prl-style eager baseline.

The command runs as a real subprocess (``--quick``, one preset, one thread); the JSON must hold
every section, positive throughputs, and ratios that follow from the figures of the same run.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from speechdistill import kernels
from speechdistill.benchmark.measure import matmul_kernel_names
from speechdistill.benchmark.distill_step import Workload, list_methods, method_student
from speechdistill.benchmark.eager_baseline import EagerEncoder, EagerPredictionHeads, fixed_count_batches
from speechdistill.data.collate import pad_waveforms
from speechdistill.benchmark.measure import PeakMemory, time_interleaved
from speechdistill.models import Encoder, EncoderConfig, architecture, build_student
from speechdistill.models.heads import HeadsConfig, PredictionHeads
from speechdistill.models.profiling import count_macs
from speechdistill.train.precision import (BF16_CPU_FLAGS, cpu_bf16_speedup, cpu_flags, fastest_precision,
                                           resolve_precision)

REPO = Path(__file__).resolve().parents[1]
TINY_CONV = [[32, 10, 5]] + [[32, 3, 2]] * 4 + [[32, 2, 2]] * 2


def _run(*args: str, cwd: Path, timeout: int = 400) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "speechdistill.bin.benchmark", *args], cwd=cwd, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    done = _run("--quick", "--preset", "distilhubert", "--threads", "1", "--json", str(out / "b.json"), cwd=out)
    return out, done


def test_quick_run_writes_every_section_with_consistent_figures(quick_run):
    out, done = quick_run
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "b.json").read_text())
    log = (out / "b.log").read_text()
    assert "teacher forward ours_fp32" in log and "step distilhubert" in log
    for section in ("meta", "peak", "teacher_forward", "student_forward", "distill_step", "data_pipeline",
                    "data_loader", "targets"):
        assert section in result, section
    assert "| ours fp32 |" in done.stdout and "eager baseline" in done.stdout

    # a CPU always compares bf16 with fp32 in the peak and teacher sections; the students and
    # steps run in fp32 and in what the trainer's --precision auto picks (if that is not fp32)
    native = bool(cpu_flags() & BF16_CPU_FLAGS)
    assert result["meta"]["reduced_precision"] == "bf16"
    assert result["meta"]["reduced_precision_native"] is native
    fast = result["meta"]["step_precision"]
    assert fast == resolve_precision("auto", torch.device("cpu"))
    peaks = result["peak"]["flops"]
    assert set(peaks) == {"fp32", "bf16"}
    assert peaks["fp32"] > 1e8 and peaks["bf16"] > 1e7
    assert result["peak"]["matrix_sizes"] == {"fp32": 512, "bf16": 512}
    # the limit is the faster of the two kernels (MKL's fp32 GEMM is half of oneDNN's on AMD CPUs)
    for name, flops in result["peak"]["flops_by_kernel"].items():
        assert {"linear", "conv1d_k1"} <= set(flops) <= set(matmul_kernel_names(torch.device("cpu")))
        assert all(v > 1e7 for v in flops.values())
        assert peaks[name] == max(flops.values())
        assert result["peak"]["kernel"][name] == max(flops, key=flops.get)

    teacher = result["teacher_forward"]
    audio = teacher["batch"] * teacher["seconds"]
    macs = teacher["batch"] * count_macs(architecture("hubert_base"), int(teacher["seconds"] * 16000))["total"]
    assert set(teacher["rows"]) == {"ours_fp32", "ours_bf16", "transformers_fp32"}
    for name, row in teacher["rows"].items():
        assert row["seconds"] == pytest.approx(statistics.median(row["seconds_all"]))
        # --quick: two timed repetitions; emulated bf16 (10x slower) is timed once
        assert len(row["seconds_all"]) == (1 if row.get("emulated") else 2)
        assert row.get("emulated", False) is (name == "ours_bf16" and not native)
        assert row["audio_seconds_per_second"] == pytest.approx(audio / row["seconds"])
        assert row["flops"] == pytest.approx(2 * macs / row["seconds"])
        assert row["fraction_of_peak"] == pytest.approx(row["flops"] / peaks[row["precision"]])
        # an emulated bf16 peak (a square product) says little about the model's mix of kernels
        assert 0 < row["fraction_of_peak"] < (10 if row.get("emulated") else 1.5)
    assert teacher["ratios"]["ours_fp32_time_over_transformers"] == pytest.approx(
        teacher["rows"]["ours_fp32"]["seconds"] / teacher["rows"]["transformers_fp32"]["seconds"])
    assert teacher["max_abs_difference_vs_transformers"] < 1e-3  # same weights, same input
    assert teacher["ratios"]["ours_bf16_speedup_over_fp32"] == pytest.approx(
        teacher["rows"]["ours_fp32"]["seconds"] / teacher["rows"]["ours_bf16"]["seconds"])
    drift = teacher["reduced_precision_drift"]
    assert len(drift["relative_error_per_hidden_state"]) == 13  # every hidden state of HuBERT Base
    assert 1e-4 < drift["max_relative_error"] and drift["within_tolerance"] is True

    students = result["student_forward"]
    assert [row["preset"] for row in students["rows"]] == ["distilhubert"]
    row = students["rows"][0]
    assert row["time_ratio_fp32"] == pytest.approx(row["seconds_fp32"] / students["reference_seconds"]["seconds_fp32"])
    assert 0.05 < row["time_ratio_fp32"] < 2.0

    steps = result["distill_step"]
    lengths = [round(s * 16000) for s in steps["utterance_seconds"]]
    student = build_student("distilhubert")
    teacher_to_12 = architecture("hubert_base")
    expected_macs = sum(count_macs(teacher_to_12, n)["total"] + 3 * count_macs(student.encoder.config, n,
                                                                              student.heads)["total"]
                        for n in lengths)
    precisions = [r["precision"] for r in steps["rows"]]
    assert precisions == (["fp32", "bf16"] if fast == "bf16" else ["fp32"])
    for row in steps["rows"] + [steps["baseline"]]:
        assert row["counted_macs"] == expected_macs
        assert row["audio_seconds_per_second"] == pytest.approx(steps["audio_seconds"] / row["seconds"])
        assert row["flops"] == pytest.approx(2 * expected_macs / row["seconds"])
        assert row["peak_memory_bytes"] is None or row["peak_memory_bytes"] > 1e6
    best = max(steps["rows"], key=lambda r: r["audio_seconds_per_second"])
    speedup = steps["speedup_over_baseline"]
    assert speedup["precision"] == best["precision"]
    assert speedup["speedup"] == pytest.approx(best["audio_seconds_per_second"]
                                               / steps["baseline"]["audio_seconds_per_second"])

    pipeline = result["data_pipeline"]
    assert pipeline["decode_crop_collate_real_time"] > 1 and pipeline["noise_reverb_real_time"] > 1
    assert pipeline["audio_seconds"] == pytest.approx(2 * 4 * 1.0)  # 2 batches x 4 crops of 1 s

    targets = {t["name"]: t for t in result["targets"]}
    assert targets["distilhubert_step_speedup_over_eager_baseline"]["value"] == pytest.approx(speedup["speedup"])
    assert targets["noise_reverb_real_time_per_core"]["met"] == (pipeline["noise_reverb_real_time_per_core"] >= 300)
    # the device's own bf16/fp32 limit, measured in the same run, stands next to the bf16 speed-up
    if native:
        assert f"device bf16/fp32 peak {result['peak']['bf16_over_fp32']:.2f}x" in \
            targets["teacher_bf16_speedup_over_fp32"]["context"]
    assert targets["distilhubert_step_speedup_over_eager_baseline"]["context"] == \
        f"ours in fp32: {speedup['fp32_speedup']:.2f}x"
    # per core = per CPU-second, which is never less than per wall second on one thread
    assert pipeline["decode_crop_collate_real_time_per_core"] >= 0.9 * pipeline["decode_crop_collate_real_time"]

    # --precision auto of the trainer is what this run measured fastest
    summary = result["precision"]
    assert summary["trainer_auto"] == fast
    fastest_teacher = min(("fp32", "bf16"), key=lambda p: teacher["rows"][f"ours_{p}"]["seconds"])
    assert summary["fastest_teacher_forward"] == fastest_teacher
    if not native:  # emulated bf16 is several times slower than fp32: no noise can flip this
        assert fast == "fp32" and fastest_teacher == "fp32" and summary["trainer_auto_is_fastest"] is True
    assert f"--precision auto picks {fast}" in done.stdout


def test_data_loader_section_on_a_million_utterances(tmp_path):
    """--section data_loader alone: the trainer's DataLoader (2 workers, FLAC crops) delivers audio, and a forked
    worker that touched every item of a 1,000,000-utterance data dir grew by less than 50 MB."""
    done = _run("--section", "data_loader", "--json", str(tmp_path / "b.json"), cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "b.json").read_text())
    assert set(result) >= {"meta", "data_loader", "targets"} and "peak" not in result and "distill_step" not in result
    speed, memory = result["data_loader"]["throughput"], result["data_loader"]["worker_memory"]
    assert speed["workers"] == 2 and speed["failures"] == 0 and speed["batches"] == 30
    assert speed["audio_seconds"] == pytest.approx(speed["audio_seconds_per_second"] * speed["seconds"])
    assert speed["audio_seconds_per_second"] > 10
    assert memory["utterances"] == 1_000_000
    assert 0 <= memory["growth_mb"] < 50
    target = {t["name"]: t for t in result["targets"]}["worker_memory_growth_mb_1m_utterances"]
    assert target["value"] == pytest.approx(memory["growth_mb"]) and target["met"] is True
    assert "worker private memory growth after touching all 1,000,000 items" in done.stdout


def test_unknown_preset_is_one_line_error(tmp_path):
    done = _run("--preset", "nosuch", "--json", str(tmp_path / "b.json"), cwd=tmp_path, timeout=120)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    message = [line for line in done.stderr.splitlines() if line.startswith("benchmark: error:")]
    assert len(message) == 1 and "nosuch" in message[0] and "distilhubert" in message[0]
    assert not (tmp_path / "b.json").exists()


def test_help_has_no_side_effects(tmp_path):
    done = _run("--help", cwd=tmp_path, timeout=60)
    assert done.returncode == 0 and "--preset" in done.stdout and "--quick" in done.stdout
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------ tools
def test_peak_memory_sees_a_large_temporary():
    with PeakMemory(torch.device("cpu")) as memory:
        block = torch.ones(50 * 2 ** 20 // 4 * 4)  # 200 MiB of float32, touched
        del block
    if memory.bytes is None:
        pytest.skip(f"peak memory not measurable here: {memory.method}")
    assert 190 * 2 ** 20 < memory.bytes < 400 * 2 ** 20


def test_interleaved_timing_takes_medians_of_alternating_calls():
    calls = []
    timings = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                               torch.device("cpu"), repeats=3, warmup=1)
    assert calls == ["a", "b"] * 4
    assert len(timings["a"].seconds) == 3 and timings["a"].median == statistics.median(timings["a"].seconds)


def test_fastest_precision_follows_flags_then_the_probe():
    cpu = torch.device("cpu")
    assert fastest_precision(cpu, flags=frozenset({"avx2"})) == "fp32"
    if cpu_flags() & BF16_CPU_FLAGS:
        speedup = cpu_bf16_speedup()
        assert speedup > 0 and cpu_bf16_speedup() == speedup  # measured once per process
        assert fastest_precision(cpu) == ("bf16" if speedup >= 1.2 else "fp32")


# ------------------------------------------------------------------------------------------ baseline
def tiny_config(**changes):
    fields = dict(conv_layers=TINY_CONV, hidden_size=64, num_layers=3, num_heads=4, ffn_size=128, pos_conv_kernel=16,
                  pos_conv_groups=4)
    fields.update(changes)
    return EncoderConfig(**fields)


@pytest.mark.parametrize("feature_layer_norm", [True, False])
def test_eager_encoder_reproduces_ours_on_unpadded_input(feature_layer_norm):
    torch.manual_seed(0)
    ours = Encoder(tiny_config(feature_layer_norm=feature_layer_norm)).eval()
    # give the GroupNorm and pos-conv gain non-trivial values so that wrong copies would show
    with torch.no_grad():
        ours.feature_extractor.blocks[0].norm.weight.uniform_(0.5, 1.5)
        ours.feature_extractor.blocks[0].norm.bias.uniform_(-0.2, 0.2)
        ours.pos_conv.weight_g.mul_(1.7)
    eager = EagerEncoder.from_encoder(ours).eval()
    wavs = 0.3 * torch.randn(2, 4000, generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([4000, 4000])
    with torch.no_grad():
        expected = ours(wavs, lengths).hidden_states
        hidden, padding = eager(wavs, lengths)
    assert len(hidden) == 4 and not padding.any()
    for mine, theirs in zip(expected, hidden):
        torch.testing.assert_close(theirs, mine, atol=1e-4, rtol=1e-4)


def test_eager_encoder_normalises_over_padding_like_fairseq():
    torch.manual_seed(0)
    ours = Encoder(tiny_config()).eval()
    eager = EagerEncoder.from_encoder(ours).eval()
    wav = 0.3 * torch.randn(1, 3000, generator=torch.Generator().manual_seed(2))
    padded = torch.cat([wav, torch.zeros(1, 1000)], dim=1)
    with torch.no_grad():
        alone, _ = eager(wav, torch.tensor([3000]))
        in_padding, mask = eager(padded, torch.tensor([3000]))
        ours_padded = ours(padded, torch.tensor([3000])).hidden_states
    frames = alone[0].shape[1]
    assert mask[0, :frames].logical_not().all() and mask[0, frames:].all()
    # ours ignores the padding; the fairseq-style GroupNorm statistics see the zeros
    torch.testing.assert_close(ours_padded[-1][:, :frames], alone[-1], atol=1e-4, rtol=1e-4)
    assert (in_padding[-1][:, :frames] - alone[-1]).abs().max() > 1e-3


def test_eager_heads_match_ours():
    torch.manual_seed(0)
    heads = PredictionHeads(HeadsConfig(kind="prediction", in_dim=16, out_dim=8, source_layers=[2],
                                        target_layers=[4, 8, 12]))
    eager = EagerPredictionHeads.from_heads(heads)
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        torch.testing.assert_close(eager(x), heads(x), atol=1e-5, rtol=1e-5)


def test_fixed_count_batches_sort_longest_first_and_pad():
    assert fixed_count_batches([5, 9, 7, 3], 3) == [[1, 2, 0], [3]]
    assert fixed_count_batches([4, 4, 2], 2) == [[0, 1], [2]]
    wavs, lengths = pad_waveforms([torch.ones(3), np.full(5, 2.0)])
    assert wavs.tolist() == [[1, 1, 1, 0, 0], [2, 2, 2, 2, 2]] and lengths.tolist() == [3, 5]
    assert wavs.dtype == torch.float32 and lengths.dtype == torch.int64
    assert [tuple(t.shape) for t in pad_waveforms([])] == [(0, 0), (0,)]
    with pytest.raises(ValueError, match="batch_size"):
        fixed_count_batches([1], 0)


def test_workload_batches_follow_the_seconds_budget():
    workload = Workload.make((2.6, 2.2, 1.8, 1.4), budget_seconds=5.2, baseline_batch_size=2)
    assert workload.audio_seconds == pytest.approx(8.0)
    # length-sorted, filled while count x longest <= 5.2 s: {1.4, 1.8}, then {2.2, 2.6}
    assert workload.our_batches() == [[3, 2], [1, 0]]
    assert fixed_count_batches(workload.lengths, 2) == [[0, 1], [2, 3]]


def test_method_presets_are_the_first_stage_recipes():
    methods = list_methods()
    assert "distilhubert" in methods and "robustdistiller" in methods
    assert not any(m.endswith("_final") or m.startswith(("asr_", "augment_")) for m in methods)
    assert method_student("robustdistiller") == "distilhubert"


def test_peak_kernels_compute_the_product_they_are_credited_with():
    """Every peak kernel is credited with 2 n^3 FLOP: each must compute a @ b^T of the full n x n x n size."""
    from speechdistill.benchmark.measure import dense_products, matmul_kernel_names
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 64, generator=generator), torch.randn(64, 64, generator=generator)
    runs = dense_products(a, b)
    assert list(runs) == matmul_kernel_names(torch.device("cpu"), size=64)
    assert {"linear", "conv1d_k1"} <= set(runs)
    # the registry's packed oneDNN kernel where it applies here (the CPU's own limit on AMD processors)
    assert ("linear/onednn-packed" in runs) == kernels.kernels("linear")[0].applies(kernels.Request(
        "linear", torch.device("cpu"), torch.float32, frozen=True, grad=False, size=64 ** 3))
    assert not any(name.startswith("linear/frozen") for name in runs)  # F.linear again: the linear entry
    expected = a.double() @ b.double().t()
    torch.testing.assert_close(runs["conv1d_k1"]()[0].t().double(), expected, rtol=1e-5, atol=1e-4)
    for name, run in runs.items():
        if name != "conv1d_k1":
            torch.testing.assert_close(run().double(), expected, rtol=1e-5, atol=1e-4)
