"""The benchmark's sections, run in one process; :func:`run_benchmark` returns the JSON-able result.

0. ``peak``: dense matmul FLOP/s in fp32 and the reduced precision (bf16; fp16 on a GPU without
   bf16), the denominator of every "fraction of peak".
1. ``teacher_forward``: HuBERT Base shape, random weights; ours in fp32 and under the reduced
   precision's autocast, transformers' HubertModel with the same weights on the same input, and
   the reduced precision's drift of every hidden state (:mod:`.accuracy`).
2. ``student_forward``: every student preset, forward time as a ratio of our teacher's, in fp32
   and in the step precision.
3. ``distill_step``: one update of every method preset in fp32 and in the step precision (what
   the trainer's ``--precision auto`` picks on the device, when that is not fp32), and the
   s3prl-style eager DistilHuBERT step (:mod:`.eager_baseline`) on the same utterances.
4. ``data_pipeline``: FLAC decode + crop + collate and noise + reverb on one thread
   (:mod:`speechdistill.benchmark.input_path`, as ``speechdistill.bin.bench_augment`` runs it), as multiples of real time per CPU-second.
5. ``data_loader``: the trainer's input path through a DataLoader with 2 worker processes on FLAC
   crops (audio-seconds per second), and the private memory one forked worker gains by touching
   every item of a 1,000,000-utterance data dir (:mod:`.data_loader`).

``sections`` picks a subset; the compute sections (1-3) bring the peak (0) with them. Sections 0-2
are in :mod:`.forward_sections`, 3 in :mod:`.step_section`, 4-5 in :mod:`.data_sections`; the options,
sizes and precisions in :mod:`.plan`. This module runs them and checks the results against :data:`TARGETS`.

Timed calls of compared things are interleaved and every figure is a median (:mod:`.measure`).
A reduced precision the device only emulates (bf16 on a CPU without AMX / AVX512-BF16) is ~5-10x
slower than fp32: its matmul runs on a smaller matrix and its teacher forward is timed once.
"""
from __future__ import annotations

import gc
import logging
import platform
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

from ..train.precision import cpu_flags, fastest_precision
from .data_sections import data_loader_section, pipeline_section
from .forward_sections import peak_section, student_section, teacher_section
from .hf_reference import transformers_version
from .measure import load_average, matmul_kernel_names
from .plan import (BenchmarkError, BenchmarkOptions, PrecisionPlan, Progress, Sizes, planned_runs, plan_precisions,
                   resolve_device, resolve_sections, select_presets)
from .step_section import step_section

log = logging.getLogger("speechdistill.benchmark")


# ---------------------------------------------------------------------------------------- targets
TARGETS = {
    "teacher_fp32_time_over_transformers": ("<=", 1.0),
    "teacher_bf16_speedup_over_fp32": (">=", 3.0),
    "distilhubert_step_speedup_over_eager_baseline": (">=", 2.5),
    "decode_crop_collate_real_time_per_core": (">=", 300.0),
    "noise_reverb_real_time_per_core": (">=", 300.0),
    "worker_memory_growth_mb_1m_utterances": ("<=", 50.0),
}


def evaluate_targets(result: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The issue's targets for this machine class, with the measured value and whether it is met."""
    values: Dict[str, Optional[float]] = {name: None for name in TARGETS}
    teacher = result.get("teacher_forward") or {}
    ratios = teacher.get("ratios", {})
    values["teacher_fp32_time_over_transformers"] = ratios.get("ours_fp32_time_over_transformers")
    values["teacher_bf16_speedup_over_fp32"] = ratios.get("ours_bf16_speedup_over_fp32")
    speedup = (result.get("distill_step") or {}).get("speedup_over_baseline")
    values["distilhubert_step_speedup_over_eager_baseline"] = speedup["speedup"] if speedup else None
    pipeline = result.get("data_pipeline") or {}
    values["decode_crop_collate_real_time_per_core"] = pipeline.get("decode_crop_collate_real_time_per_core")
    values["noise_reverb_real_time_per_core"] = pipeline.get("noise_reverb_real_time_per_core")
    memory = (result.get("data_loader") or {}).get("worker_memory") or {}
    if memory.get("utterances", 0) >= 1_000_000:  # the bound is for a dir of that size
        values["worker_memory_growth_mb_1m_utterances"] = memory["growth_mb"]
    # What the device allows, measured in the same run, next to the ratios that depend on it.
    context: Dict[str, str] = {}
    peak_ratio = (result.get("peak") or {}).get("bf16_over_fp32")
    rows_of_teacher = teacher.get("rows", {})
    if peak_ratio and "ours_bf16" in rows_of_teacher and "ours_fp32" in rows_of_teacher:
        context["teacher_bf16_speedup_over_fp32"] = (
            f"device bf16/fp32 peak {peak_ratio:.2f}x; fraction of peak bf16 "
            f"{rows_of_teacher['ours_bf16']['fraction_of_peak']:.0%}, fp32 {rows_of_teacher['ours_fp32']['fraction_of_peak']:.0%}")
    if speedup and speedup.get("fp32_speedup") is not None:
        context["distilhubert_step_speedup_over_eager_baseline"] = f"ours in fp32: {speedup['fp32_speedup']:.2f}x"
    rows = []
    for name, (relation, bound) in TARGETS.items():
        value = values[name]
        met = None if value is None else (value <= bound if relation == "<=" else value >= bound)
        rows.append({"name": name, "value": value, "relation": relation, "target": bound, "met": met,
                     "context": context.get(name, "")})
    return rows


# ---------------------------------------------------------------------------------------- the run
def run_benchmark(options: BenchmarkOptions, *, show_progress: bool = True) -> Dict[str, Any]:
    """Run every section and return the result dict (see the module docstring)."""
    device = resolve_device(options.device)
    plan = plan_precisions(options.precision, device)
    students, methods = select_presets(options.presets)
    sections = resolve_sections(options.sections)
    sizes = options.sizes or Sizes.for_device(device, options.quick)
    if options.threads is not None:
        if options.threads < 1:
            raise BenchmarkError(f"--threads {options.threads}: give at least 1")
        torch.set_num_threads(options.threads)
    if not plan.native and plan.fast == plan.reduced:
        log.warning("--precision %s: this CPU has no bf16 units (no AMX / AVX512-BF16), so every bf16 figure is "
                    "emulated and slow; the default (auto) measures bf16 only where it is informative", plan.fast)
    started = time.perf_counter()
    result: Dict[str, Any] = {"meta": _meta(device, plan, sizes, options)}
    peer = transformers_version() is not None
    progress = Progress(planned_runs(sizes, plan, students, methods, peer,
                                     peak_kernels=len(matmul_kernel_names(device)), sections=sections),
                        enabled=show_progress)
    section_seconds: Dict[str, float] = {}

    def timed(name: str, section: Callable[[], Dict[str, Any]]) -> None:
        if name not in sections:
            return
        begin = time.perf_counter()
        result[name] = section()
        section_seconds[name] = time.perf_counter() - begin
        gc.collect()

    try:
        with tempfile.TemporaryDirectory(prefix="speechdistill-benchmark.", dir=options.work_dir) as scratch:
            work_dir = Path(scratch)
            from .input_path import make_bench_data
            data_dirs = make_bench_data(work_dir / "pipeline")
            timed("peak", lambda: peak_section(device, plan, sizes, progress))
            peaks = result["peak"]["flops"] if "peak" in result else {}
            timed("teacher_forward", lambda: teacher_section(device, plan, sizes, peaks, progress))
            timed("student_forward", lambda: student_section(device, plan, sizes, students, progress))
            corruption = {"noise": data_dirs["noise"], "rirs": data_dirs["rirs"]}
            timed("distill_step", lambda: step_section(device, plan, sizes, methods, peaks, work_dir, corruption,
                                                       options.compile, progress))
            timed("data_pipeline", lambda: pipeline_section(sizes, data_dirs, progress))
            timed("data_loader", lambda: data_loader_section(sizes, data_dirs, work_dir, progress))
    finally:
        progress.close()
    result["precision"] = _precision_summary(device, options.precision, plan, result)
    result["targets"] = evaluate_targets(result)
    result["meta"]["section_seconds"] = section_seconds
    result["meta"]["wall_seconds"] = time.perf_counter() - started
    result["meta"]["load_average_after"] = load_average()
    return result


def _precision_summary(device: torch.device, asked: str, plan: PrecisionPlan,
                       result: Dict[str, Any]) -> Dict[str, Any]:
    """What ``--precision auto`` of the trainer picks here, and whether this run's measurements agree.

    The measured fastest is that of the distillation steps where they compared two precisions
    (fp32 and the trainer's choice), else that of the teacher forward (fp32 against the reduced
    precision): on a CPU without bf16 units the steps run in fp32 only, and the teacher forward
    shows what bf16 would cost."""
    summary: Dict[str, Any] = {"asked": asked, "reduced": plan.reduced, "reduced_native": plan.native,
                               "step_precisions": ["fp32"] + ([plan.fast] if plan.fast != "fp32" else []),
                               "trainer_auto": fastest_precision(device)}
    teacher_fastest = (result.get("teacher_forward") or {}).get("fastest_precision")
    steps = result.get("distill_step") or {}
    speedup = steps.get("speedup_over_baseline")
    measured = teacher_fastest
    if speedup and plan.fast != "fp32":
        measured = speedup["precision"]
    summary["fastest_teacher_forward"] = teacher_fastest
    summary["fastest_measured"] = measured
    summary["trainer_auto_is_fastest"] = None if measured is None else measured == summary["trainer_auto"]
    return summary


def _meta(device: torch.device, plan: PrecisionPlan, sizes: Sizes, options: BenchmarkOptions) -> Dict[str, Any]:
    flags = cpu_flags()
    meta: Dict[str, Any] = {
        "device": str(device), "reduced_precision": plan.reduced, "step_precision": plan.fast,
        "reduced_precision_native": plan.native, "quick": options.quick,
        "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(), "cpu_model": _cpu_model(),
        "cpu_matrix_flags": sorted(f for f in flags if f.startswith(("amx", "avx512_bf16", "avx512_fp16",
                                                                       "avx512_vnni", "avx_vnni"))),
        "sizes": asdict(sizes), "load_average_before": load_average(), "compile": options.compile,
    }
    if device.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(device)
    return meta


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
