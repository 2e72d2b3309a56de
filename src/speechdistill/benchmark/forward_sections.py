"""The compute sections without training: the device's dense matmul peak (the denominator of every
"fraction of peak"), the teacher forward (ours in fp32 and the reduced precision against transformers'
HubertModel on the same weights, with the reduced precision's drift, :mod:`.accuracy`), and every
student preset's forward as a ratio of the teacher's."""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Optional, Sequence

import torch

from ..models.config import architecture
from ..models.encoder import Encoder
from ..models.profiling import count_macs, forward_fn, make_input, resolve_model
from ..train.precision import autocast_dtype
from . import accuracy
from .hf_reference import attention_implementation, build_peer, peer_forward, transformers_version
from .measure import matmul_flops_by_kernel, time_interleaved
from .plan import PrecisionPlan, Progress, Sizes

log = logging.getLogger("speechdistill.benchmark")


class KeepLast:
    """Wraps a callable and keeps the result of its latest call (compared after timing)."""

    def __init__(self, run: Callable[[], Any]) -> None:
        self.run = run
        self.result: Any = None

    def __call__(self) -> Any:
        self.result = self.run()
        return self.result


def _dtype_name(dtype: Optional[torch.dtype]) -> str:
    return "fp32" if dtype is None else {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def peak_section(device: torch.device, plan: PrecisionPlan, sizes: Sizes, progress: Progress) -> Dict[str, Any]:
    """Dense matmul FLOP/s of each precision (its fastest kernel in ``flops``, every kernel in
    ``flops_by_kernel``) on square matrices of ``matrix_sizes`` rows."""
    progress.section("matmul peak")
    matrix_sizes = {name: sizes.matmul_size if (name == "fp32" or plan.native) else sizes.emulated_matmul_size
                    for name in plan.peak_precisions}
    by_kernel = matmul_flops_by_kernel(device, {_dtype_of(name): n for name, n in matrix_sizes.items()},
                                       repeats=sizes.repeats, warmup=sizes.warmup, progress=progress.tick)
    names = {d: _dtype_name(None if d == torch.float32 else d) for d in by_kernel}
    result = {"matrix_size": sizes.matmul_size, "matrix_sizes": matrix_sizes,
              "flops": {names[d]: max(k.values()) for d, k in by_kernel.items()},
              "kernel": {names[d]: max(k, key=k.get) for d, k in by_kernel.items()},
              "flops_by_kernel": {names[d]: k for d, k in by_kernel.items()}}
    if plan.reduced != "fp32":
        result[f"{plan.reduced}_over_fp32"] = result["flops"][plan.reduced] / result["flops"]["fp32"]
    log.info("matmul peak: %s", ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in result["flops"].items()))
    return result


def _dtype_of(name: str) -> torch.dtype:
    return autocast_dtype(name) or torch.float32


def teacher_section(device: torch.device, plan: PrecisionPlan, sizes: Sizes, peaks: Dict[str, float],
                    progress: Progress) -> Dict[str, Any]:
    """Ours fp32 and transformers interleaved; ours in the reduced precision interleaved too, or,
    where the device only emulates it (10x slower), timed once after them."""
    progress.section("teacher forward")
    torch.manual_seed(0)
    encoder = Encoder(architecture("hubert_base")).to(device).eval()
    batch, seconds = sizes.teacher_batch, sizes.teacher_seconds
    wavs = make_input(batch, seconds, device)
    samples = wavs.shape[1]
    macs = batch * count_macs(encoder.config, samples)["total"]
    runs: Dict[str, KeepLast] = {"ours_fp32": KeepLast(forward_fn(encoder, wavs))}
    reduced = plan.reduced if plan.reduced != "fp32" else None
    reduced_run = KeepLast(forward_fn(encoder, wavs, autocast_dtype(reduced))) if reduced else None
    if reduced_run is not None and plan.native:
        runs[f"ours_{reduced}"] = reduced_run
    version = transformers_version()
    peer = None
    if version is not None:
        peer = build_peer(encoder)
        runs["transformers_fp32"] = KeepLast(peer_forward(peer, wavs))
    else:
        log.warning("transformers is not importable: the transformers row of the teacher section is skipped")
    timings = time_interleaved(dict(runs), device, repeats=sizes.repeats, warmup=sizes.warmup,
                               progress=progress.tick)
    if reduced_run is not None and not plan.native:
        timings[f"ours_{reduced}"] = time_interleaved({"reduced": reduced_run}, device, repeats=1, warmup=0,
                                                      progress=progress.tick)["reduced"]
        runs[f"ours_{reduced}"] = reduced_run
    audio = batch * seconds
    rows = {}
    for name, timing in timings.items():
        precision = name.rsplit("_", 1)[1]
        flops = 2.0 * macs / timing.median
        rows[name] = {"seconds": timing.median, "seconds_all": timing.seconds, "audio_seconds_per_second":
                      audio / timing.median, "flops": flops, "fraction_of_peak": flops / peaks[precision],
                      "precision": precision}
    if reduced and not plan.native:
        rows[f"ours_{reduced}"]["emulated"] = True
    result: Dict[str, Any] = {
        "architecture": "hubert_base", "weights": "random (seed 0)", "batch": batch, "seconds": seconds,
        "macs_per_audio_second": macs / audio, "rows": rows, "transformers_version": version,
    }
    ratios: Dict[str, float] = {}
    ours_hidden = runs["ours_fp32"].result.hidden_states
    if peer is not None:
        result["transformers_attention"] = attention_implementation(peer)
        ratios["ours_fp32_time_over_transformers"] = rows["ours_fp32"]["seconds"] / rows["transformers_fp32"]["seconds"]
        theirs = runs["transformers_fp32"].result.hidden_states
        result["max_abs_difference_vs_transformers"] = max(float((a - b).abs().max())
                                                           for a, b in zip(ours_hidden, theirs))
        del peer
    if reduced:
        ratios[f"ours_{reduced}_speedup_over_fp32"] = rows["ours_fp32"]["seconds"] / rows[f"ours_{reduced}"]["seconds"]
        drift = accuracy.hidden_state_drift(ours_hidden, runs[f"ours_{reduced}"].result.hidden_states)
        result["reduced_precision_drift"] = {
            "precision": reduced, "relative_error_per_hidden_state": drift.relative_errors,
            "max_relative_error": drift.max_relative_error, "min_frame_cosine": drift.min_cosine,
            "tolerance_max_relative_error": accuracy.BF16_MAX_RELATIVE_ERROR,
            "tolerance_min_frame_cosine": accuracy.BF16_MIN_FRAME_COSINE, "within_tolerance": drift.within()}
        fastest = min(("fp32", reduced), key=lambda p: rows[f"ours_{p}"]["seconds"])
        result["fastest_precision"] = fastest
    result["ratios"] = ratios
    for name, row in rows.items():
        log.info("teacher forward %s: %.2f s for %g audio-s = %.2f audio-s/s, %.1f GFLOP/s (%.0f%% of %s peak)%s",
                 name, row["seconds"], audio, row["audio_seconds_per_second"], row["flops"] / 1e9,
                 100 * row["fraction_of_peak"], row["precision"], " [emulated, timed once]" if row.get("emulated")
                 else "")
    return result


def student_section(device: torch.device, plan: PrecisionPlan, sizes: Sizes, students: Sequence[str],
                    progress: Progress) -> Dict[str, Any]:
    """Per student preset: parameters, MACs per audio second, and forward seconds in fp32 and the step
    precision as ratios of HuBERT Base's on the same [student_batch, student_seconds * 16000] input."""
    progress.section("student forward")
    batch, seconds = sizes.student_batch, sizes.student_seconds
    wavs = make_input(batch, seconds, device)
    samples = wavs.shape[1]
    precisions = ["fp32"] + ([plan.fast] if plan.fast != "fp32" else [])
    teacher = resolve_model("hubert_base")
    models = [teacher] + [resolve_model(name) for name in students]
    runs: Dict[str, Callable[[], Any]] = {}
    for model in models:
        model.encoder.to(device).eval()
        if model.heads is not None:
            model.heads.to(device).eval()
        for precision in precisions:
            runs[f"{model.name}/{precision}"] = forward_fn(model.encoder, wavs, autocast_dtype(precision), model.heads)
    timings = time_interleaved(runs, device, repeats=sizes.repeats, warmup=sizes.warmup, progress=progress.tick)
    rows = []
    teacher_macs = count_macs(teacher.encoder.config, samples)["total"]
    for model in models[1:]:
        macs = count_macs(model.encoder.config, samples, model.heads)["total"]
        row: Dict[str, Any] = {"preset": model.name, "params": model.params, "macs_per_audio_second": macs / seconds,
                               "mac_ratio": macs / teacher_macs}
        for precision in precisions:
            median = timings[f"{model.name}/{precision}"].median
            row[f"seconds_{precision}"] = median
            row[f"time_ratio_{precision}"] = median / timings[f"{teacher.name}/{precision}"].median
            row[f"audio_seconds_per_second_{precision}"] = batch * seconds / median
        rows.append(row)
        log.info("student %s: %s (%.2fx its MACs)", model.name,
                 ", ".join(f"{p} {row[f'time_ratio_{p}']:.2f}x teacher time" for p in precisions), row["mac_ratio"])
    teacher_row = {f"seconds_{p}": timings[f"{teacher.name}/{p}"].median for p in precisions}
    return {"batch": batch, "seconds": seconds, "reference": "hubert_base", "reference_seconds": teacher_row,
            "teacher_macs_per_audio_second": teacher_macs / seconds, "rows": rows}
