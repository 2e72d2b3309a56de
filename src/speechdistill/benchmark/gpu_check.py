"""The GPU check: the DistilHuBERT recipe's training on one device, measured the way users run it.

``python -m speechdistill.bin.gpu_check`` (``--device cpu --quick``: the same code at toy sizes) runs,
on synthesized FLAC data and a random teacher:

(a) distillation with the real trainer (``distill_train`` subprocesses): the paper's precision (fp16
    student, fp32 teacher) and ``--precision auto`` (bf16 on a GPU with bf16); audio-s/s of the update
    loop, teacher audio-s/s, peak memory, and the fraction of the device's measured dense matmul peak in the
    student's precision (bf16 on a GPU) that the counted MACs reach;
(b) a ``torch.profiler`` pass over a few updates (auto: bf16 on a GPU) in this process: the device's idle fraction,
    host-device synchronisations and the top kernels;
(c) the training DataLoader alone with 2/4/8 workers (audio-s/s);
(d) SIGTERM during the run, exit 99, resume, and the final student compared bitwise with an
    uninterrupted run (both with ``deterministic: true``).

It writes ``gpu_check.json`` and ``gpu_check.md`` in the output dir. Sizes: :data:`FULL` and
:data:`QUICK`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import soundfile
import torch

from ..config import dump_yaml, load_config, load_yaml, merge
from ..data.audio import SAMPLE_RATE
from ..data.tables import atomic_write_text
from ..distill import DistillConfig, DistillTask
from ..distill.demo import demo_config
from ..models.checkpoints import save_model
from ..models.config import architecture
from ..models.encoder import Encoder
from ..models.profiling import count_macs
from ..distill.config import method_preset_dir
from ..train import REQUEUE_EXIT_CODE
from ..train.task import TrainContext
from ..train.trainer import Trainer
from .measure import matmul_flops

log = logging.getLogger("speechdistill.gpu_check")
METHOD = method_preset_dir() / "distilhubert.yaml"
# "auto" is bf16 for student and teacher on a GPU with bf16 (fp32 on a CPU without fast bf16); "paper" is
# DistilHuBERT's fp16 student and fp32 teacher (fp32 on a CPU, which would emulate fp16)
PRECISIONS = {"paper": {"precision": "fp16", "teacher_precision": "fp32"},
              "auto": {"precision": "auto", "teacher_precision": "auto"}}


@dataclass(frozen=True)
class CheckSizes:
    """How big each part of the check is."""

    utterances: int
    seconds: Tuple[float, float]      # utterance lengths drawn uniformly in this range
    updates: int                      # per distillation run
    stop_at: int                      # (d): SIGTERM once this many updates are logged
    profile_updates: int              # (b): updates inside the profiler's active window
    workers: Tuple[int, ...]          # (c)
    loader_batches: int               # (c): batches read per worker count
    peak_size: int                    # n of the n x n x n products of the bf16 peak
    tiny_teacher: bool                # a 64-wide 12-layer HuBERT instead of HuBERT Base
    trainer: Dict[str, Any] = field(default_factory=dict)  # trainer keys over the preset's


FULL = CheckSizes(utterances=160, seconds=(8.0, 16.0), updates=60, stop_at=30, profile_updates=5,
                  workers=(2, 4, 8), loader_batches=40, peak_size=8192, tiny_teacher=False,
                  trainer={"log_every": 10, "num_workers": 8})
QUICK = CheckSizes(utterances=16, seconds=(1.0, 2.5), updates=6, stop_at=3, profile_updates=2, workers=(0, 1, 2),
                   loader_batches=6, peak_size=512, tiny_teacher=True,
                   trainer={"log_every": 1, "num_workers": 1, "batch_seconds": 6.0, "max_seconds": 2.0,
                            "max_batch_size": None, "min_seconds": 0.5, "lr": 2.0e-3, "warmup_fraction": 0.1,
                            "threads": 1})


def synthesize_flac_dir(directory: Path, sizes: CheckSizes, seed: int = 0) -> Path:
    """A Kaldi data dir of FLAC files (16 kHz, 16 bit) holding speech-like signals: voiced stretches (a
    gliding fundamental and its harmonics) between noise bursts and pauses. Reused when complete."""
    done = directory / ".complete"
    if done.is_file():
        return directory
    (directory / "flac").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    wav_scp, num_samples = [], []
    for index in range(sizes.utterances):
        length = int(rng.uniform(*sizes.seconds) * SAMPLE_RATE)
        t = np.arange(length) / SAMPLE_RATE
        f0 = rng.uniform(90, 220) * (1 + 0.2 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t))
        phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
        voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
        envelope = (np.sin(2 * np.pi * rng.uniform(2, 5) * t + rng.uniform(0, 6)) > 0).astype(np.float64)
        signal_ = 0.2 * voiced * envelope + 0.05 * rng.standard_normal(length) * (1 - envelope)
        key = f"check{index:05d}"
        path = directory / "flac" / f"{key}.flac"
        soundfile.write(str(path), signal_.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
        wav_scp.append(f"{key} {path.resolve()}\n")
        num_samples.append(f"{key} {length}\n")
    atomic_write_text(directory / "wav.scp", "".join(wav_scp))
    atomic_write_text(directory / "utt2num_samples", "".join(num_samples))
    done.touch()
    return directory


def teacher_config(sizes: CheckSizes):
    config = architecture("hubert_base")
    if sizes.tiny_teacher:  # 12 layers, so that the preset's targets (layers 4/8/12) exist
        config = config.replace(conv_layers=[[64, 10, 5]] + [[64, 3, 2]] * 4 + [[64, 2, 2]] * 2, hidden_size=64,
                                num_heads=4, ffn_size=128, pos_conv_kernel=16, pos_conv_groups=4)
    return config


def write_run_config(out_dir: Path, sizes: CheckSizes, teacher: Path, data: Path, device: torch.device,
                     extra: Dict[str, Any]) -> Path:
    """The DistilHuBERT preset (sized to a tiny teacher in quick mode) with the check's trainer keys."""
    overlay = merge(dict(sizes.trainer), {"max_steps": sizes.updates, "checkpoint_every": sizes.updates,
                                          "valid_data": None, "valid_at_start": False, "train_data": str(data),
                                          "teacher": str(teacher), "device": device.type, **extra})
    if sizes.tiny_teacher:
        config = demo_config(METHOD, teacher_config(sizes), overlay)
    else:
        config = merge(load_yaml(METHOD), overlay)
    path = out_dir / "config.yaml"
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, dump_yaml(config))
    return path


def _train_command(config: Path, out_dir: Path) -> List[str]:
    return [sys.executable, "-m", "speechdistill.bin.distill_train", "--config", str(config), "--output-dir",
            str(out_dir)]


def _records(out_dir: Path) -> List[Dict[str, Any]]:
    path = out_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _train_env() -> Dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith("SLURM_") and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}


def _resolved_precisions(out_dir: Path) -> Dict[str, str]:
    for line in (out_dir / "train.log").read_text().splitlines():
        if "; precision " in line:
            after = line.split("; precision ", 1)[1]
            student, teacher = after.split(", teacher ", 1)
            return {"student": student.strip(), "teacher": teacher.split(";")[0].split(",")[0].strip()}
    return {}


def distillation_run(name: str, work: Path, sizes: CheckSizes, teacher: Path, data: Path, device: torch.device,
                     macs_per_audio_second: float, peaks: Dict[str, float]) -> Dict[str, Any]:
    """(a): one ``distill_train`` run; throughput of the logged windows after the first (warm-up)."""
    out = work / f"distill_{name}"
    shutil.rmtree(out, ignore_errors=True)
    config = write_run_config(out, sizes, teacher, data, device, dict(PRECISIONS[name]))
    started = time.perf_counter()
    result = subprocess.run(_train_command(config, out / "run"), capture_output=True, text=True, env=_train_env())
    wall = time.perf_counter() - started
    row: Dict[str, Any] = {"run": name, "asked": PRECISIONS[name], "exit_code": result.returncode,
                           "wall_seconds": round(wall, 1)}
    if result.returncode != 0:
        row["error"] = (result.stderr or result.stdout)[-2000:]
        return row
    records = [r for r in _records(out / "run") if "audio_sec_per_sec" in r]
    steady = records[1:] or records
    speed = float(np.mean([r["audio_sec_per_sec"] for r in steady]))
    summary = json.loads((out / "run" / "distill_summary.json").read_text())
    resolved = _resolved_precisions(out / "run")
    peak = peaks.get(resolved.get("student", "fp32"))
    row.update({"resolved": resolved, "updates": records[-1]["step"],
                "audio_seconds_per_second": speed,
                "teacher_audio_seconds_per_second": summary["teacher_forward_audio_sec_per_sec"],
                "peak_memory_mib": max(r.get("max_memory_mb", 0.0) for r in records),
                "flops": 2.0 * macs_per_audio_second * speed,
                "fraction_of_peak": 2.0 * macs_per_audio_second * speed / peak if peak else None,
                "final_loss": records[-1]["loss"]})
    return row


def step_macs_per_audio_second(config_path: Path, seconds: float) -> float:
    """Counted MACs of one update per second of audio: the teacher up to the deepest target layer, and three
    times the student with its heads (backward ~= 2 x forward), as the benchmark counts them; the student is
    built as the run builds it (on the CPU: only shapes matter)."""
    config = load_config(DistillConfig, config_path)
    task = DistillTask(config)
    task.setup(TrainContext(device=torch.device("cpu"), precision="fp32", teacher_precision="fp32", rank=0,
                            world_size=1, local_rank=0, output_dir=config_path.parent, seed=0, logger=log))
    model = task.model()
    samples = int(seconds * SAMPLE_RATE)
    teacher = task.teacher.config
    macs = count_macs(teacher.replace(num_layers=max(task.teacher_layers)), samples)["total"]
    macs += 3 * count_macs(model.student.config, samples, model.heads)["total"]
    return macs / seconds


def profile_updates(work: Path, sizes: CheckSizes, teacher: Path, data: Path, device: torch.device
                    ) -> Dict[str, Any]:
    """(b): the trainer in this process under ``torch.profiler`` for ``profile_updates`` updates in the auto
    precision (after one to wait and one to warm up)."""
    from torch.profiler import ProfilerActivity, profile, schedule
    out = work / "profile"
    shutil.rmtree(out, ignore_errors=True)
    extra = dict(PRECISIONS["auto"], max_steps=sizes.profile_updates + 2)
    config = load_config(DistillConfig, write_run_config(out, sizes, teacher, data, device, extra))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    window = schedule(wait=1, warmup=1, active=sizes.profile_updates, repeat=1)
    marks: List[float] = []
    with profile(activities=activities, schedule=window) as profiler:
        def on_update(step: int) -> None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            marks.append(time.perf_counter())
            profiler.step()
        Trainer(config, DistillTask(config), out / "run", resume="auto", on_update=on_update).run()
    return summarize_profile(profiler, device, wall=marks[-1] - marks[1] if len(marks) > 2 else None,
                             updates=sizes.profile_updates)


# What makes the host wait for a GPU (CUDA runtime calls); on a CPU only value reads can be counted, and those
# cost nothing there
CUDA_SYNC_EVENTS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")
VALUE_READ_EVENTS = ("aten::_local_scalar_dense", "aten::nonzero")


def summarize_profile(profiler: Any, device: torch.device, wall: Optional[float], updates: int) -> Dict[str, Any]:
    """Idle fraction of the device (1 - busy kernel time / wall time), synchronisations per update and the
    ten ops or kernels that took most device time (most CPU time on a CPU)."""
    events = profiler.key_averages()
    on_cuda = device.type == "cuda"

    def device_time(event: Any) -> float:
        return float(getattr(event, "self_device_time_total", getattr(event, "self_cuda_time_total", 0.0)))

    syncs = {e.key: int(e.count) for e in events if e.key in (CUDA_SYNC_EVENTS if on_cuda else VALUE_READ_EVENTS)}
    if on_cuda:
        kernels = [e for e in events if device_time(e) > 0]
        busy = sum(device_time(e) for e in kernels) / 1e6
        top = sorted(kernels, key=device_time, reverse=True)[:10]
        rows = [{"name": e.key[:90], "device_ms": device_time(e) / 1e3, "calls": int(e.count)} for e in top]
    else:
        busy = None
        top = sorted(events, key=lambda e: float(e.self_cpu_time_total), reverse=True)[:10]
        rows = [{"name": e.key[:90], "cpu_ms": float(e.self_cpu_time_total) / 1e3, "calls": int(e.count)} for e in top]
    return {"updates": updates, "wall_seconds": wall,
            "device_idle_fraction": (max(0.0, 1.0 - busy / wall) if busy is not None and wall else None),
            "synchronisations": syncs, "synchronisations_per_update": sum(syncs.values()) / max(updates, 1),
            "top": rows}


def loader_sweep(sizes: CheckSizes, data: Path, config_path: Path) -> List[Dict[str, Any]]:
    """(c): the trainer's DataLoader alone (decode, crop, collate) with each worker count."""
    from ..train.loader import build_loader
    config = load_config(DistillConfig, config_path)
    rows = []
    for workers in sizes.workers:
        loader = build_loader(dataclasses.replace(config, num_workers=workers), str(data), training=True)[2]
        batches, audio = 0, 0.0
        iterator = iter(loader)
        next(iterator)  # worker start-up is not throughput
        started = time.perf_counter()
        for batch in iterator:
            audio += batch["audio_seconds"]
            batches += 1
            if batches >= sizes.loader_batches:
                break
        seconds = time.perf_counter() - started
        rows.append({"workers": workers, "batches": batches, "audio_seconds_per_second": audio / seconds})
        del iterator, loader
    return rows


def resume_check(work: Path, sizes: CheckSizes, teacher: Path, data: Path, device: torch.device) -> Dict[str, Any]:
    """(d): an uninterrupted deterministic run, and one sent SIGTERM after ``stop_at`` updates, resumed; the
    final students compared bitwise."""
    extra = dict(PRECISIONS["auto"], deterministic=True, log_every=1)
    runs = {}
    for name in ("uninterrupted", "interrupted"):
        out = work / f"resume_{name}"
        shutil.rmtree(out, ignore_errors=True)
        config = write_run_config(out, sizes, teacher, data, device, extra)
        runs[name] = (config, out / "run")
    config, run_dir = runs["uninterrupted"]
    plain = subprocess.run(_train_command(config, run_dir), capture_output=True, text=True, env=_train_env())
    config, run_dir = runs["interrupted"]
    process = subprocess.Popen(_train_command(config, run_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=_train_env())
    signalled_at = None
    while process.poll() is None:
        steps = [r["step"] for r in _records(run_dir) if "loss" in r]
        if steps and steps[-1] >= sizes.stop_at and signalled_at is None:
            process.send_signal(signal.SIGTERM)
            signalled_at = steps[-1]
        time.sleep(0.05)
    first_exit = process.returncode
    stopped_at = max((r["step"] for r in _records(run_dir) if "loss" in r), default=0)
    resumed = subprocess.run(_train_command(config, run_dir), capture_output=True, text=True, env=_train_env())
    result: Dict[str, Any] = {"signalled_after_update": signalled_at, "first_exit_code": first_exit,
                              "stopped_at_update": stopped_at, "resume_exit_code": resumed.returncode,
                              "uninterrupted_exit_code": plain.returncode}
    if plain.returncode == 0 and resumed.returncode == 0:
        from safetensors.torch import load_file
        a = load_file(str(runs["uninterrupted"][1] / "student" / "model.safetensors"))
        b = load_file(str(run_dir / "student" / "model.safetensors"))
        result["bitwise_equal"] = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        result["max_abs_difference"] = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    else:
        result["error"] = ((resumed.stderr if resumed.returncode else plain.stderr) or "")[-2000:]
    result["passed"] = (first_exit == REQUEUE_EXIT_CODE and result.get("bitwise_equal") is True
                        and signalled_at is not None and stopped_at < sizes.updates)
    return result


def markdown(result: Dict[str, Any]) -> str:
    """The report of :func:`run_check` as markdown."""
    meta = result["meta"]
    lines = [f"GPU check on {meta['device_name']} ({meta['device']}), torch {meta['torch']}, {meta['date']}"
             f"{', quick sizes' if meta['quick'] else ''}; `python -m speechdistill.bin.gpu_check"
             f"{' --device ' + meta['device'] if meta['device'] != 'cuda' else ''}{' --quick' if meta['quick'] else ''}`"
             f", {meta['wall_seconds']:.0f} s.", "",
             "Dense matmul peak (n = {}): {}; counted work per audio second: {:.2f} GMAC.".format(
                 meta["peak_size"], ", ".join(f"{k} {v / 1e12:.2f} TFLOP/s" for k, v in result["peak_flops"].items()),
                 result["macs_per_audio_second"] / 1e9), "",
             "| run | precision (student / teacher) | audio s / s | teacher audio s / s | peak memory | "
             "fraction of the student precision's peak |", "|---|---|---:|---:|---:|---:|"]
    for row in result["distillation"]:
        if "error" in row:
            lines.append(f"| {row['run']} | failed (exit {row['exit_code']}) | | | | |")
            continue
        resolved = row["resolved"]
        fraction = row["fraction_of_peak"]
        lines.append(f"| {row['run']} | {resolved.get('student')} / {resolved.get('teacher')} | "
                     f"{row['audio_seconds_per_second']:.1f} | {row['teacher_audio_seconds_per_second']:.1f} | "
                     f"{row['peak_memory_mib']:.0f} MiB | {'' if fraction is None else f'{100 * fraction:.1f} %'} |")
    profile_ = result["profile"]
    idle = profile_["device_idle_fraction"]
    syncs = ", ".join(f"{k} {v}" for k, v in profile_["synchronisations"].items()) or "none"
    lines += ["", f"Profiler over {profile_['updates']} updates (auto precision): device idle "
                  + (f"{100 * idle:.1f} %, {profile_['synchronisations_per_update']:.1f} host-device "
                     f"synchronisations per update ({syncs})." if idle is not None else
                     f"n/a on a CPU; value reads into Python: {profile_['synchronisations_per_update']:.1f} per "
                     f"update ({syncs}), free on a CPU."), "",
              "| top op / kernel | time (ms) | calls |", "|---|---:|---:|"]
    for row in profile_["top"]:
        lines.append(f"| `{row['name']}` | {row.get('device_ms', row.get('cpu_ms')):.1f} | {row['calls']} |")
    lines += ["", "| DataLoader workers | audio s / s |", "|---:|---:|"]
    for row in result["loader"]:
        lines.append(f"| {row['workers']} | {row['audio_seconds_per_second']:.0f} |")
    resume = result["resume"]
    lines += ["", f"SIGTERM after update {resume['signalled_after_update']}: exit {resume['first_exit_code']} at "
                  f"update {resume['stopped_at_update']}; resumed run exit {resume['resume_exit_code']}; final student "
                  f"bitwise equal to an uninterrupted run: {resume.get('bitwise_equal')} "
                  f"({'passed' if resume['passed'] else 'FAILED'})."]
    return "\n".join(lines) + "\n"


def run_check(out_dir: Path, device: torch.device, quick: bool,
              progress: Callable[[str], None] = lambda text: None) -> Dict[str, Any]:
    """Run (a)-(d) in ``out_dir`` and write ``gpu_check.json`` and ``gpu_check.md`` there."""
    sizes = QUICK if quick else FULL
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    progress("synthesizing FLAC data")
    data = synthesize_flac_dir(out_dir / "data", sizes)
    progress("writing a random teacher")
    torch.manual_seed(0)
    teacher_model = Encoder(teacher_config(sizes))
    teacher = out_dir / "teacher"
    if not (teacher / "model.safetensors").is_file():
        save_model(teacher_model, teacher)
    progress("measuring the dense matmul peaks")
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, **({"fp16": torch.float16} if device.type == "cuda" else {})}
    measured = matmul_flops(device, {dtype: sizes.peak_size for dtype in dtypes.values()}, repeats=3)
    peaks = {name: measured[dtype] for name, dtype in dtypes.items()}
    reference_config = write_run_config(out_dir / "reference", sizes, teacher, data, device, {})
    macs = step_macs_per_audio_second(reference_config, float(np.mean(sizes.seconds)))
    rows = []
    for name in PRECISIONS:
        progress(f"(a) distillation, {name} precision")
        rows.append(distillation_run(name, out_dir, sizes, teacher, data, device, macs, peaks))
    progress("(b) profiler")
    profile_ = profile_updates(out_dir, sizes, teacher, data, device)
    progress("(c) DataLoader workers")
    loader = loader_sweep(sizes, data, reference_config)
    progress("(d) SIGTERM, resume, bitwise check")
    resume = resume_check(out_dir, sizes, teacher, data, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    result = {"meta": {"device": device.type, "device_name": name, "torch": torch.__version__, "quick": quick,
                       "date": time.strftime("%Y-%m-%d"), "peak_size": sizes.peak_size,
                       "wall_seconds": time.perf_counter() - started, "sizes": asdict(sizes)},
              "peak_flops": peaks, "macs_per_audio_second": macs, "distillation": rows,
              "profile": profile_, "loader": loader, "resume": resume}
    atomic_write_text(out_dir / "gpu_check.json", json.dumps(result, indent=1) + "\n")
    atomic_write_text(out_dir / "gpu_check.md", markdown(result))
    return result


def _cpu_name() -> str:
    from ..train.precision import cpu_model_name
    return cpu_model_name()
