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

``sections`` picks a subset; the compute sections (1-3) bring the peak (0) with them.

Timed calls of compared things are interleaved and every figure is a median (:mod:`.measure`).
A reduced precision the device only emulates (bf16 on a CPU without AMX / AVX512-BF16) is ~5-10x
slower than fp32: its matmul runs on a smaller matrix and its teacher forward is timed once.
"""
from __future__ import annotations

import gc
import logging
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..models.config import architecture
from ..models.encoder import Encoder
from ..models.profiling import count_macs, forward_fn, make_input, resolve_model
from ..models.students import list_presets
from ..train.precision import BF16_CPU_FLAGS, autocast_dtype, cpu_flags, fastest_precision
from . import accuracy
from .distill_step import (OurDistillStep, Workload, list_methods, method_student, method_teacher_architecture,
                           padded, save_random_teacher)
from .eager_baseline import EagerDistilHubertStep, fixed_count_batches, pad_batch
from .hf_reference import attention_implementation, build_peer, peer_forward, transformers_version
from .measure import load_average, matmul_kernel_names, matmul_flops_by_kernel, time_interleaved, torch_threads

SAMPLE_RATE = 16000
BASELINE_METHOD = "distilhubert"
log = logging.getLogger("speechdistill.benchmark")


class BenchmarkError(ValueError):
    """A benchmark option a user gave cannot work; the message says which and what to do."""


@dataclass
class Sizes:
    """How much work each section does. ``for_device`` picks the defaults (CPU: about 4 minutes
    on 2 cores; the distillation steps are most of it)."""

    repeats: int = 3
    warmup: int = 1
    matmul_size: int = 2048
    emulated_matmul_size: int = 1024  # a reduced precision the device only emulates is ~10x slower
    teacher_batch: int = 1
    teacher_seconds: float = 4.0
    student_batch: int = 1
    student_seconds: float = 2.0
    # Utterances of 1.4-2.6 s: the recipes train on 10-16 s, which would not fit the CPU budget; at
    # 0.7-1.3 s the per-update costs that do not grow with audio (AdamW over 27 M parameters, weight
    # casts and norms) weighed twice as much as in training, and the DistilHuBERT ratio read 1.9x, not 2.6x.
    step_seconds: Tuple[float, ...] = (2.6, 2.2, 1.8, 1.4)
    step_budget_seconds: float = 5.2
    baseline_batch_size: int = 2
    step_repeats: int = 2  # every method preset is timed
    # the headline comparison (the baseline method against the eager baseline): a median of 5, as its
    # ratio moved by +-10 % between runs with 3 on this drifting 2-core machine
    baseline_repeats: int = 5
    pipeline_batches: int = 20
    pipeline_batch_size: int = 16
    pipeline_crop_seconds: float = 4.0
    loader_workers: int = 2
    loader_batches: int = 30
    loader_batch_seconds: float = 64.0
    index_utterances: int = 1_000_000

    @classmethod
    def for_device(cls, device: torch.device, quick: bool) -> "Sizes":
        if quick:
            return cls(repeats=2, warmup=1, matmul_size=512, emulated_matmul_size=512, teacher_batch=1,
                       teacher_seconds=1.0, student_batch=1, student_seconds=1.0, step_seconds=(1.0, 0.8),
                       step_budget_seconds=2.0, baseline_batch_size=2, step_repeats=2, baseline_repeats=2,
                       pipeline_batches=2,
                       pipeline_batch_size=4, pipeline_crop_seconds=1.0, loader_batches=3, loader_batch_seconds=8.0,
                       index_utterances=20_000)
        if device.type == "cuda":
            # Batches of the size the recipes train with (s3prl: 24 x 15.6 s crops).
            crops = tuple(15.6 - 0.25 * i for i in range(24))
            return cls(repeats=5, warmup=2, matmul_size=8192, emulated_matmul_size=8192, teacher_batch=8,
                       teacher_seconds=15.6, student_batch=8, student_seconds=15.6, step_seconds=crops,
                       step_budget_seconds=375.0, baseline_batch_size=24, step_repeats=5, baseline_repeats=5)
        return cls()


@dataclass
class BenchmarkOptions:
    """What ``python -m speechdistill.bin.benchmark`` was asked to do."""

    device: str = "cpu"
    precision: str = "auto"  # the reduced precision compared with fp32 (auto: the device's fastest)
    presets: Optional[List[str]] = None  # None: every student and method preset
    quick: bool = False
    threads: Optional[int] = None
    compile: bool = False
    sizes: Optional[Sizes] = None
    work_dir: Optional[Path] = None  # scratch space (teachers, data); a temporary directory when None
    sections: Optional[List[str]] = None  # None: every section


SECTIONS = ("peak", "teacher_forward", "student_forward", "distill_step", "data_pipeline", "data_loader")


def resolve_sections(names: Optional[Sequence[str]]) -> List[str]:
    """The sections to run, in order; the compute sections need the peak, which is added."""
    if not names:
        return list(SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise BenchmarkError(f"--section {', '.join(unknown)}: unknown; sections: {', '.join(SECTIONS)}")
    wanted = set(names)
    if wanted & {"teacher_forward", "student_forward", "distill_step"}:
        wanted.add("peak")
    return [n for n in SECTIONS if n in wanted]


def _dtype_name(dtype: Optional[torch.dtype]) -> str:
    return "fp32" if dtype is None else {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def _resolve_device(name: str) -> torch.device:
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise BenchmarkError(f"--device cuda: torch {torch.__version__} sees no CUDA device; run with "
                                 "--device cpu or on a machine with a GPU and a CUDA build of torch")
        return torch.device("cuda", 0)
    raise BenchmarkError(f"--device {name!r} is not one of cpu, cuda")


@dataclass
class PrecisionPlan:
    """Which precisions each section measures.

    Attributes:
        reduced: compared with fp32 in the peak and teacher sections ("fp32": none).
        fast: measured beside fp32 for the students and the distillation steps: what the
            trainer's ``--precision auto`` picks on this device, or the precision asked for.
        native: whether the device computes ``reduced`` in hardware (False: a CPU without
            AMX / AVX512-BF16, where bf16 is converted to fp32 in software).
    """

    reduced: str
    fast: str
    native: bool
    device_type: str = "cpu"

    @property
    def peak_precisions(self) -> List[str]:
        """fp32, the reduced precision, and fp16 on a GPU (its tensor cores' other format)."""
        names = ["fp32"] + ([self.reduced] if self.reduced != "fp32" else [])
        if self.device_type == "cuda" and "fp16" not in names:
            names.append("fp16")
        return names


def _plan_precisions(name: str, device: torch.device) -> PrecisionPlan:
    if name not in ("auto", "fp32", "bf16", "fp16"):
        raise BenchmarkError(f"--precision {name!r} is not one of auto, fp32, bf16, fp16")
    if name == "fp16" and device.type == "cpu":
        raise BenchmarkError("--precision fp16: CPUs have no fp16 matrix units worth measuring; use bf16 or fp32 "
                             "(fp16 is for --device cuda)")
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise BenchmarkError("--precision bf16: this GPU has no bf16 support; use fp16")
    bf16_ok = device.type == "cpu" or torch.cuda.is_bf16_supported()
    if name == "auto":
        fast = fastest_precision(device)
        # A GPU without bf16 (V100, T4) has fp16 tensor cores: that is its fast precision.
        if fast == "fp32" and device.type == "cuda":
            fast = "fp16"
        reduced = "bf16" if bf16_ok else "fp16"
    else:
        fast = reduced = name
    native = device.type == "cuda" or reduced != "bf16" or bool(cpu_flags() & BF16_CPU_FLAGS)
    return PrecisionPlan(reduced=reduced, fast=fast, native=native, device_type=device.type)


def _select(presets: Optional[List[str]]) -> Tuple[List[str], List[str]]:
    """(student presets, method presets) to measure; unknown names are an error listing the known ones."""
    students, methods = list_presets(), list_methods()
    if not presets:
        return students, methods
    unknown = [p for p in presets if p not in students and p not in methods]
    if unknown:
        raise BenchmarkError(f"--preset {', '.join(unknown)}: unknown; student presets: {', '.join(students)}; "
                             f"method presets: {', '.join(methods)}")
    chosen_methods = [m for m in methods if m in presets]
    chosen_students = sorted({p for p in presets if p in students} | {method_student(m) for m in chosen_methods})
    return chosen_students, chosen_methods


class Progress:
    """A tqdm bar over timed calls that shows the current section and its latest throughput."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        from tqdm import tqdm
        self.bar = tqdm(total=total, unit="run", desc="benchmark", file=sys.stderr, dynamic_ncols=True,
                        disable=not enabled, mininterval=0.5 if sys.stderr.isatty() else 30.0)
        self.note = ""

    def tick(self) -> None:
        self.bar.update(1)

    def section(self, text: str) -> None:
        self.note = text
        self.bar.set_postfix_str(text, refresh=False)

    def close(self) -> None:
        self.bar.close()


def planned_runs(sizes: Sizes, plan: PrecisionPlan, students: Sequence[str], methods: Sequence[str],
                 peer: bool, peak_kernels: int = 1, sections: Sequence[str] = SECTIONS) -> int:
    per = sizes.warmup + sizes.repeats
    step_per = sizes.warmup + sizes.step_repeats
    reduced = 1 if plan.reduced != "fp32" else 0
    fast = 2 if plan.fast != "fp32" else 1
    runs = {"peak": per * len(plan.peak_precisions) * peak_kernels,  # matmul
            "teacher_forward": per * (1 + (1 if peer else 0)) + (per if plan.native else 1) * reduced,
            "student_forward": per * fast * (len(students) + 1),  # students + teacher reference
            "distill_step": 0,
            "data_pipeline": 2,  # warm-up batch + timed batches
            "data_loader": 2}  # throughput, worker memory
    baseline_per = sizes.warmup + sizes.baseline_repeats
    for method in methods:
        runs["distill_step"] += ((baseline_per if method == BASELINE_METHOD else step_per)
                                 * (fast + (1 if method == BASELINE_METHOD else 0)))
    return sum(runs[name] for name in sections)


class KeepLast:
    """Wraps a callable and keeps the result of its latest call (compared after timing)."""

    def __init__(self, run: Callable[[], Any]) -> None:
        self.run = run
        self.result: Any = None

    def __call__(self) -> Any:
        self.result = self.run()
        return self.result


# ---------------------------------------------------------------------------------------- sections
def peak_section(device: torch.device, plan: PrecisionPlan, sizes: Sizes, progress: Progress) -> Dict[str, Any]:
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


def step_section(device: torch.device, plan: PrecisionPlan, sizes: Sizes, methods: Sequence[str],
                 peaks: Dict[str, float], work_dir: Path, corruption_dirs: Dict[str, Path], compile_model: bool,
                 progress: Progress) -> Dict[str, Any]:
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
            baseline_inputs = [pad_batch([workload.waveforms[i] for i in b]) for b in baseline_batches]
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


def pipeline_section(sizes: Sizes, data_dirs: Dict[str, Path], progress: Progress) -> Dict[str, Any]:
    from .input_path import run_bench

    progress.section("data pipeline")
    with torch_threads(1):
        run_bench(data_dirs["data"], data_dirs["noise"], data_dirs["rirs"], batch_size=sizes.pipeline_batch_size,
                  crop_seconds=sizes.pipeline_crop_seconds, batches=1, device="cpu")
        progress.tick()
        measured = run_bench(data_dirs["data"], data_dirs["noise"], data_dirs["rirs"],
                             batch_size=sizes.pipeline_batch_size, crop_seconds=sizes.pipeline_crop_seconds,
                             batches=sizes.pipeline_batches, device="cpu")
        progress.tick()
    audio = measured["audio"]
    result = {
        "threads": 1, "batches": sizes.pipeline_batches, "batch_size": sizes.pipeline_batch_size,
        "crop_seconds": sizes.pipeline_crop_seconds, "audio_seconds": audio,
        # per core: audio seconds per CPU-second the part used (what other jobs on a shared machine
        # do not distort); wall: audio seconds per elapsed second on the one thread
        "decode_crop_collate_real_time_per_core": audio / measured["read_cpu"],
        "noise_reverb_real_time_per_core": audio / measured["augment_cpu"],
        "both_real_time_per_core": audio / measured["cpu"],
        "decode_crop_collate_real_time": audio / measured["read"],
        "noise_reverb_real_time": audio / measured["augment"],
        "both_real_time": audio / (measured["read"] + measured["augment"]),
    }
    log.info("data pipeline (1 thread): decode+crop+collate %.0fx, noise+reverb %.0fx real time per core (wall: "
             "%.0fx, %.0fx)", result["decode_crop_collate_real_time_per_core"],
             result["noise_reverb_real_time_per_core"], result["decode_crop_collate_real_time"],
             result["noise_reverb_real_time"])
    return result


def data_loader_section(sizes: Sizes, data_dirs: Dict[str, Path], work_dir: Path, progress: Progress
                        ) -> Dict[str, Any]:
    import shutil

    from .data_loader import loader_throughput, worker_memory_growth, write_index_dir

    progress.section("data loader")
    throughput = loader_throughput(data_dirs["data"], workers=sizes.loader_workers,
                                   crop_seconds=sizes.pipeline_crop_seconds, batch_seconds=sizes.loader_batch_seconds,
                                   batches=sizes.loader_batches)
    progress.tick()
    log.info("DataLoader, %d workers, FLAC crops of %g s: %.0f audio-s/s (%d batches)", throughput["workers"],
             throughput["crop_seconds"], throughput["audio_seconds_per_second"], throughput["batches"])
    progress.section(f"worker memory, {sizes.index_utterances:,}-utterance dir")
    index_dir = write_index_dir(work_dir / "index", sizes.index_utterances)
    try:
        memory = worker_memory_growth(index_dir)
    finally:
        shutil.rmtree(index_dir, ignore_errors=True)
    progress.tick()
    log.info("one DataLoader worker after touching every item of a %d-utterance dir: +%.1f MiB private memory "
             "(index built in %.1f s)", memory["utterances"], memory["growth_mb"], memory["load_seconds"])
    return {"throughput": throughput, "worker_memory": memory}


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
    device = _resolve_device(options.device)
    plan = _plan_precisions(options.precision, device)
    students, methods = _select(options.presets)
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
