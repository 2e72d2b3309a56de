"""The printed table of a benchmark result (the README shows one)."""
from __future__ import annotations

from typing import Any, Dict, List, Optional


def _g(value: Optional[float], scale: float = 1e9, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value / scale:.{digits}f}"


def _pct(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def _mib(value: Optional[int]) -> str:
    return "n/a" if value is None else f"{value / 2 ** 20:,.0f}"


def format_report(result: Dict[str, Any]) -> str:
    """Markdown tables of every section, then the targets."""
    meta = result["meta"]
    reduced = meta["reduced_precision"]
    fast = meta.get("step_precision", reduced)
    lines: List[str] = []
    device = meta.get("gpu") or meta.get("cpu_model") or meta["device"]
    lines.append(f"speechdistill benchmark on {meta['device']} ({device}), {meta['threads']} threads, torch "
                 f"{meta['torch']}; reduced precision {reduced} ({'native' if meta.get('reduced_precision_native', True) else 'emulated: no bf16 units'}); "
                 f"steps in {', '.join(dict.fromkeys(['fp32', fast]))}; {'quick mode; ' if meta['quick'] else ''}"
                 f"load average before {meta.get('load_average_before')}, after {meta.get('load_average_after')}; "
                 f"{meta.get('wall_seconds', 0):.0f} s")
    lines.append("")

    peak = result.get("peak")
    if peak:
        lines.append("0. Dense matmul peak (n x n x n product, 2 n^3 FLOP; the fastest of F.linear, a kernel-1 conv1d "
                     "and the linear kernels of speechdistill.kernels that apply here)")
        lines.append("")
        by_kernel = peak.get("flops_by_kernel", {})
        kernels = sorted({k for flops in by_kernel.values() for k in flops})
        lines.append("| dtype | n | GFLOP/s (peak) | vs fp32 |" + "".join(f" {k} GFLOP/s |" for k in kernels))
        lines.append("|---|---:|---:|---:|" + "---:|" * len(kernels))
        sizes = peak.get("matrix_sizes", {})
        for name, flops in peak["flops"].items():
            lines.append(f"| {name} | {sizes.get(name, peak['matrix_size'])} | {_g(flops)} | "
                         f"{flops / peak['flops']['fp32']:.2f}x |"
                         + "".join(f" {_g(by_kernel.get(name, {}).get(k))} |" for k in kernels))
        lines.append("")

    teacher = result.get("teacher_forward")
    if teacher:
        lines.append(f"1. Teacher forward, HuBERT Base shape ({teacher['batch']} x {teacher['seconds']:g} s, "
                     f"{teacher['macs_per_audio_second'] / 1e9:.2f} GMAC per audio second)")
        lines.append("")
        lines.append("| implementation | audio s / s | time vs ours fp32 | GFLOP/s | fraction of peak |")
        lines.append("|---|---:|---:|---:|---:|")
        reference = teacher["rows"]["ours_fp32"]["seconds"]
        for name, row in teacher["rows"].items():
            label = name.replace("_", " ")
            if name.startswith("transformers"):
                label += f" {teacher.get('transformers_version')} HubertModel ({teacher.get('transformers_attention', '?')} attention)"
            if row.get("emulated"):
                label += " (emulated, timed once)"
            lines.append(f"| {label} | {row['audio_seconds_per_second']:.2f} | {row['seconds'] / reference:.2f}x | "
                         f"{_g(row['flops'])} | {_pct(row['fraction_of_peak'])} |")
        if teacher.get("transformers_version") is None:
            lines.append("| transformers | not importable: row skipped | | | |")
        lines.append("")
        drift = teacher.get("reduced_precision_drift")
        if drift:
            lines.append(f"{drift['precision']} hidden states vs fp32: max relative error "
                         f"{drift['max_relative_error']:.4f} (tolerance {drift['tolerance_max_relative_error']}), "
                         f"min frame cosine {drift['min_frame_cosine']:.5f} (tolerance "
                         f"{drift['tolerance_min_frame_cosine']}): "
                         f"{'within' if drift['within_tolerance'] else 'OUTSIDE'} tolerance")
        if "max_abs_difference_vs_transformers" in teacher:
            lines.append(f"ours fp32 vs transformers, max |difference| over all hidden states: "
                         f"{teacher['max_abs_difference_vs_transformers']:.2e}")
        lines.append("")

    students = result.get("student_forward")
    if students and students["rows"]:
        precisions = ["fp32"] + ([fast] if fast != "fp32" else [])
        lines.append(f"2. Student forward ({students['batch']} x {students['seconds']:g} s), time as a multiple of "
                     f"our teacher's in the same precision")
        lines.append("")
        lines.append("| student preset | params | GMAC / audio s | MACs vs teacher | " +
                     " | ".join(f"time vs teacher {p}" for p in precisions) + " |")
        lines.append("|---|---:|---:|---:|" + "---:|" * len(precisions))
        for row in students["rows"]:
            mac_ratio = row.get("mac_ratio")
            lines.append(f"| {row['preset']} | {row['params'] / 1e6:.2f} M | {row['macs_per_audio_second'] / 1e9:.2f} | "
                         f"{'n/a' if mac_ratio is None else f'{mac_ratio:.2f}x'} | "
                         + " | ".join(f"{row[f'time_ratio_{p}']:.2f}x" for p in precisions) + " |")
        lines.append("")

    steps = result.get("distill_step")
    if steps and (steps["rows"] or steps.get("baseline")):
        lines.append(f"3. Distillation step (teacher forward + student forward/backward + AdamW) over "
                     f"{len(steps['utterance_seconds'])} utterances, {steps['audio_seconds']:.1f} s of audio; our "
                     f"batches {steps['our_batches']} s (padding {_pct(steps['our_padding_fraction'])}), baseline "
                     f"batches {steps['baseline_batches']} s (padding {_pct(steps['baseline_padding_fraction'])})")
        lines.append("")
        lines.append("| method | precision | audio s / s | GFLOP/s (counted) | fraction of peak | peak memory MiB |")
        lines.append("|---|---|---:|---:|---:|---:|")
        rows = list(steps["rows"])
        if steps.get("baseline"):
            rows.append(dict(steps["baseline"], method="distilhubert, s3prl-style eager baseline"))
        for row in rows:
            lines.append(f"| {row['method']} | {row['precision']} | {row['audio_seconds_per_second']:.2f} | "
                         f"{_g(row['flops'])} | {_pct(row['fraction_of_peak'])} | {_mib(row['peak_memory_bytes'])} |")
        speedup = steps.get("speedup_over_baseline")
        if speedup:
            lines.append("")
            lines.append(f"{speedup['method']} step, ours in {speedup['precision']}: {speedup['speedup']:.2f}x the "
                         f"eager baseline (ours in fp32: {speedup['fp32_speedup']:.2f}x)")
        lines.append("")

    pipeline = result.get("data_pipeline")
    if pipeline:
        lines.append(f"4. Data pipeline on 1 thread ({pipeline['batches']} batches x {pipeline['batch_size']} crops of "
                     f"{pipeline['crop_seconds']:g} s), multiples of real time")
        lines.append("")
        lines.append("| stage | x real time per core (CPU time) | x real time (wall) |")
        lines.append("|---|---:|---:|")
        for label, key in (("FLAC decode + crop + collate", "decode_crop_collate"), ("noise + reverb", "noise_reverb"),
                           ("both", "both")):
            lines.append(f"| {label} | {pipeline[f'{key}_real_time_per_core']:.0f} | {pipeline[f'{key}_real_time']:.0f} |")
        lines.append("")

    loader = result.get("data_loader")
    if loader:
        speed, memory = loader["throughput"], loader["worker_memory"]
        lines.append(f"5. DataLoader as the trainer runs it ({speed['workers']} worker processes, FLAC crops of "
                     f"{speed['crop_seconds']:g} s, {speed['batches']} batches) and one forked worker's memory")
        lines.append("")
        lines.append("| measure | value |")
        lines.append("|---|---:|")
        lines.append(f"| audio-s / s delivered | {speed['audio_seconds_per_second']:.0f} |")
        lines.append(f"| worker private memory growth after touching all {memory['utterances']:,} items | "
                     f"{memory['growth_mb']:.1f} MiB |")
        lines.append(f"| index build time ({memory['utterances']:,} utterances) | {memory['load_seconds']:.1f} s |")
        lines.append("")

    summary = result.get("precision")
    if summary:
        agrees = summary.get("trainer_auto_is_fastest")
        lines.append(f"The trainer's --precision auto picks {summary['trainer_auto']} here; fastest measured in this run: "
                     f"{summary.get('fastest_measured') or 'n/a'}"
                     + ("" if agrees is None else (" (agrees)" if agrees else " (DISAGREES)")))
        lines.append("")

    targets = result.get("targets")
    if targets:
        lines.append("Targets")
        lines.append("")
        lines.append("| target | measured | bound | met | context (same run) |")
        lines.append("|---|---:|---:|---|---|")
        for target in targets:
            value = "n/a" if target["value"] is None else f"{target['value']:.2f}"
            met = "n/a" if target["met"] is None else ("yes" if target["met"] else "no")
            lines.append(f"| {target['name']} | {value} | {target['relation']} {target['target']:g} | {met} "
                         f"| {target.get('context', '')} |")
    return "\n".join(lines)
