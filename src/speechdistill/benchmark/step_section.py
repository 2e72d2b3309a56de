"""The ``distill_step`` section: one update of every method preset in fp32 and in the step precision,
with FLOP/s from counted MACs, fraction of peak and peak memory, and the s3prl-style eager DistilHuBERT
step (:mod:`.eager_baseline`) on the same utterances."""
from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .distill_step import OurDistillStep, Workload, method_teacher_architecture, padded, save_random_teacher
from ..data.collate import pad_waveforms
from .eager_baseline import EagerDistilHubertStep, fixed_count_batches
from .measure import time_interleaved
from .plan import BASELINE_METHOD, PrecisionPlan, Progress, Sizes

SAMPLE_RATE = 16000
log = logging.getLogger("speechdistill.benchmark")


def step_section(device: torch.device, plan: PrecisionPlan, sizes: Sizes, methods: Sequence[str],
                 peaks: Dict[str, float], work_dir: Path, corruption_dirs: Dict[str, Path], compile_model: bool,
                 progress: Progress) -> Dict[str, Any]:
    """Per method and precision, a pass of updates over the workload's utterances: seconds, audio seconds
    per second, FLOP/s from counted MACs, fraction of peak, peak memory (bytes); with the baseline method
    also the eager baseline's row and our speedup over it."""
    workload = Workload.make(sizes.step_seconds, budget_seconds=sizes.step_budget_seconds,
                             baseline_batch_size=sizes.baseline_batch_size)
    ours = workload.our_batches()
    baseline_batches = fixed_count_batches(workload.lengths, workload.baseline_batch_size)
    precisions = ["fp32"] + ([plan.fast] if plan.fast != "fp32" else [])
    audio = workload.audio_seconds
    result: Dict[str, Any] = {
        "utterance_seconds": list(sizes.step_seconds), "audio_seconds": audio,
        "our_batches": [[workload.lengths[i] / SAMPLE_RATE for i in b] for b in ours],
        "baseline_batches": [[workload.lengths[i] / SAMPLE_RATE for i in b] for b in baseline_batches],
        "our_padding_fraction": _padding_fraction(workload.lengths, ours),
        "baseline_padding_fraction": _padding_fraction(workload.lengths, baseline_batches),
        "rows": [], "baseline": None,
    }
    our_inputs = [padded(workload.waveforms, b, device) for b in ours]
    for method in methods:
        progress.section(f"step {method}")
        teacher_dir = save_random_teacher(method_teacher_architecture(method), work_dir / "teachers")
        step = OurDistillStep(method, teacher_dir, device, corruption_dirs=corruption_dirs,
                              output_dir=work_dir / "steps" / method, compile_model=compile_model)
        macs = step.macs(workload.lengths)
        runs: Dict[str, Callable[[], Any]] = {}
        for precision in precisions:
            runs[precision] = _our_epoch(step, precision, our_inputs)
        baseline = None
        if method == BASELINE_METHOD:
            baseline = EagerDistilHubertStep(step.task.teacher, step.module.student, step.module.heads,
                                             [layer for _, layer in step.config.loss_terms[0].layers],
                                             student_fp16=device.type == "cuda").to(device)
            baseline_inputs = [pad_waveforms([workload.waveforms[i] for i in b]) for b in baseline_batches]
            baseline_inputs = [(w.to(device), n.to(device)) for w, n in baseline_inputs]
            runs["s3prl_eager_fp32"] = _baseline_epoch(baseline, baseline_inputs)
        repeats = sizes.baseline_repeats if baseline is not None else sizes.step_repeats
        timings = time_interleaved(runs, device, repeats=repeats, warmup=sizes.warmup, progress=progress.tick,
                                   memory=True)
        for precision in precisions:
            row = _step_row(method, precision, timings[precision], audio, macs, peaks)
            result["rows"].append(row)
            log.info("step %s %s: %.2f audio-s/s, %.1f GFLOP/s (%.0f%% of peak), peak memory %s", method, precision,
                     row["audio_seconds_per_second"], row["flops"] / 1e9, 100 * row["fraction_of_peak"],
                     _megabytes(row["peak_memory_bytes"]))
        if baseline is not None:
            row = _step_row(method, "fp32", timings["s3prl_eager_fp32"], audio, macs, peaks)
            row["implementation"] = "s3prl-style eager (benchmark.eager_baseline)"
            if device.type == "cuda":
                row["precision"] = "fp32 teacher, fp16 student"
            result["baseline"] = row
            fastest = max((r for r in result["rows"] if r["method"] == method),
                          key=lambda r: r["audio_seconds_per_second"])
            result["speedup_over_baseline"] = {
                "method": method, "precision": fastest["precision"],
                "speedup": fastest["audio_seconds_per_second"] / row["audio_seconds_per_second"],
                "fp32_speedup": next(r for r in result["rows"] if r["method"] == method and r["precision"] == "fp32")[
                    "audio_seconds_per_second"] / row["audio_seconds_per_second"]}
            log.info("step %s: eager s3prl-style baseline %.2f audio-s/s; ours (%s) is %.2fx faster", method,
                     row["audio_seconds_per_second"], fastest["precision"], result["speedup_over_baseline"]["speedup"])
            del baseline
        del step, runs
        gc.collect()
    return result


def _our_epoch(step: OurDistillStep, precision: str, inputs: List[Dict[str, Any]]) -> Callable[[], Any]:
    def run() -> Any:
        step.set_precision(precision)
        losses = [step(batch) for batch in inputs]
        return float(torch.stack(losses).sum())  # the host reads the result, as a log line would
    return run


def _baseline_epoch(step: EagerDistilHubertStep, inputs: List[Tuple[torch.Tensor, torch.Tensor]]
                    ) -> Callable[[], Any]:
    def run() -> Any:
        return [step(wavs, lengths)["loss"] for wavs, lengths in inputs]
    return run


def _step_row(method: str, precision: str, timing: Any, audio: float, macs: int,
              peaks: Dict[str, float]) -> Dict[str, Any]:
    flops = 2.0 * macs / timing.median
    return {"method": method, "precision": precision, "seconds": timing.median, "seconds_all": timing.seconds,
            "audio_seconds_per_second": audio / timing.median, "counted_macs": macs, "flops": flops,
            "fraction_of_peak": flops / peaks[precision], "peak_memory_bytes": timing.peak_memory_bytes,
            "memory_method": timing.memory_method}


def _padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    padded_total = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1.0 - sum(lengths) / padded_total


def _megabytes(value: Optional[int]) -> str:
    return "n/a" if value is None else f"{value / 2 ** 20:.0f} MiB"
