"""Parameters, analytic multiply-accumulate counts and measured forward speed.

MACs are counted from the module shapes (no hooks, so fused attention is not missed): every
convolution, linear map and attention product (Q K^T and A V) of one forward pass over one
utterance. Normalisations, activations and softmax are not MACs and are not counted.
HuBERT Base comes out at 7.0-7.9 G per second of audio for 2-20 s inputs (anchors.md §6a).
"""
from __future__ import annotations

import re
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

import torch
from torch import nn

from .config import EncoderConfig
from .feature_extractor import conv_output_length
from .heads import LayerProjections, PredictionHeads

SAMPLE_RATE = 16000


def count_macs(config: EncoderConfig, num_samples: int, heads: Optional[nn.Module] = None) -> Dict[str, int]:
    """MACs of one forward pass over one utterance of ``num_samples`` samples, by part.

    Returns a dict with keys cnn, feature_projection, pos_conv, attention_projections,
    attention_scores, feed_forward, relative_position_gates, adapters, heads and total.
    """
    c = config
    parts = {k: 0 for k in ("cnn", "feature_projection", "pos_conv", "attention_projections", "attention_scores",
                            "feed_forward", "relative_position_gates", "adapters", "heads")}
    frames = num_samples
    in_channels = 1
    for channels, kernel, stride in c.conv_layers:
        frames = conv_output_length(frames, int(kernel), int(stride))
        if frames < 1:
            raise ValueError(f"{num_samples} samples are too few for this CNN (receptive field {c.receptive_field})")
        parts["cnn"] += frames * int(channels) * in_channels * int(kernel)
        in_channels = int(channels)
    n, d = frames, c.hidden_size
    if c.feature_projection:
        parts["feature_projection"] = n * in_channels * d
    parts["pos_conv"] = n * d * (d // c.pos_conv_groups) * c.pos_conv_kernel
    hd = c.attention_head_dim
    for layer in range(c.num_layers):
        unique = c.unique_index(layer)
        inner = c.heads_of(unique) * hd
        projections = 1 if c.reuses_attention(layer) else 3
        parts["attention_projections"] += projections * n * d * inner + n * inner * d
        scores = 1 if c.reuses_attention(layer) else 2  # a reuse layer only computes A V
        parts["attention_scores"] += scores * n * n * inner
        parts["feed_forward"] += 2 * n * d * c.ffn_of(unique)
        if c.relative_position_bias:
            parts["relative_position_gates"] += n * c.heads_of(unique) * (d // c.num_heads) * 8
        if c.adapter_dim:
            parts["adapters"] += 2 * n * d * c.adapter_dim
    if isinstance(heads, PredictionHeads):
        hc = heads.config
        hidden = hc.hidden_dim or hc.in_dim
        parts["heads"] = n * hc.in_dim * hidden * len(hc.target_layers) + n * len(hc.target_layers) * hidden * hc.out_dim
    elif isinstance(heads, LayerProjections):
        hc = heads.config
        parts["heads"] = n * hc.in_dim * hc.out_dim * len(hc.source_layers)
    parts["total"] = sum(parts.values())
    return parts


def macs_per_second(config: EncoderConfig, seconds: float, heads: Optional[nn.Module] = None) -> float:
    """MACs per second of audio for an utterance of ``seconds`` seconds."""
    samples = int(round(seconds * SAMPLE_RATE))
    return count_macs(config, samples, heads)["total"] / (samples / SAMPLE_RATE)


@dataclass
class SpeedResult:
    """Measured forward passes: median seconds per pass and audio seconds processed per second."""

    seconds_per_pass: List[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds_per_pass)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward(forward: Callable[[], object], device: torch.device) -> float:
    _synchronize(device)
    start = time.perf_counter()
    forward()
    _synchronize(device)
    return time.perf_counter() - start


def make_input(batch: int, seconds: float, device: torch.device, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (0.1 * torch.randn(batch, int(round(seconds * SAMPLE_RATE)), generator=generator)).to(device)


def forward_fn(model: nn.Module, wavs: torch.Tensor, autocast_dtype: Optional[torch.dtype] = None,
               heads: Optional[nn.Module] = None) -> Callable[[], object]:
    """A no-argument callable running one inference forward pass (heads included when given). The model and
    heads are frozen (``requires_grad=False``), as inference models are, so that their prepared weights are
    kept between calls (:mod:`speechdistill.kernels`)."""
    model.requires_grad_(False)
    if heads is not None:
        heads.requires_grad_(False)

    def run() -> object:
        with torch.inference_mode(), torch.autocast(wavs.device.type, dtype=autocast_dtype or torch.bfloat16,
                                                    enabled=autocast_dtype is not None):
            out = model(wavs)
            if isinstance(heads, PredictionHeads):
                heads.from_hidden_states(out.hidden_states)
            elif isinstance(heads, LayerProjections):
                heads(out.hidden_states)
            return out
    return run


def measure(runs: Dict[str, Callable[[], object]], device: torch.device, repeats: int = 3, warmup: int = 1,
            progress: Optional[Callable[[], None]] = None) -> Dict[str, SpeedResult]:
    """Time several forward callables interleaved (a, b, a, b, ...), so that a change in machine
    load affects them alike; returns the per-pass times of each."""
    results = {name: SpeedResult() for name in runs}
    for _ in range(warmup):
        for run in runs.values():
            run()
    for _ in range(repeats):
        for name, run in runs.items():
            results[name].seconds_per_pass.append(time_forward(run, device))
            if progress is not None:
                progress()
    return results


# ---------------------------------------------------------------------------------------------
# Profiling a named model: what the profile entry point reports
# ---------------------------------------------------------------------------------------------

@dataclass
class ProfiledModel:
    """A model ready to profile and how its parameters are counted."""

    name: str
    kind: str  # preset | architecture | checkpoint
    encoder: nn.Module
    heads: Optional[nn.Module]
    params: int
    params_counted_as: str
    published_params: Optional[int] = None
    published_params_text: str = ""
    published_macs: str = ""


def resolve_model(spec: str, *, seed: int = 0) -> ProfiledModel:
    """A student preset (name or YAML path), a teacher architecture name or a model path.

    Presets and architectures get random weights (shapes are all that profiling needs). A
    preset with a ``target_sparsity`` is pruned with the same fraction kept in every gate
    group (``pruning.set_uniform_sparsity``), a stand-in for a trained pruned model.
    """
    from .checkpoints import count_parameters, import_model
    from .config import ARCHITECTURES, architecture
    from .encoder import Encoder
    from .pruning import prune, set_uniform_sparsity
    from .students import build_student, list_presets

    torch.manual_seed(seed)
    if spec in list_presets() or spec.endswith((".yaml", ".yml")):
        student = build_student(spec)
        preset = student.preset
        encoder, heads = student.encoder, student.heads
        counted = "encoder"
        if preset.target_sparsity is not None:
            original = count_parameters(Encoder(architecture(preset.teacher_architecture).replace(
                mask_embedding=False)))
            set_uniform_sparsity(encoder, preset.target_sparsity, original, seed=seed)
            encoder = prune(encoder.eval())
            counted = (f"encoder after pruning to sparsity {preset.target_sparsity} with the same fraction kept "
                       f"in every gate group (stand-in for a trained mask)")
            params = count_parameters(encoder)
        else:
            params = student.num_params()
            if heads is not None and preset.params_include_heads:
                counted = f"encoder + {type(heads).__name__} ({len(heads.config.target_layers)} heads)"
        return ProfiledModel(name=preset.name, kind="preset", encoder=encoder,
                             heads=heads if preset.params_include_heads else None, params=params,
                             params_counted_as=counted, published_params=preset.published_params,
                             published_params_text=preset.published_params_text,
                             published_macs=preset.published_macs)
    if spec in ARCHITECTURES:
        encoder = Encoder(architecture(spec))
        return ProfiledModel(name=spec, kind="architecture", encoder=encoder, heads=None,
                             params=count_parameters(encoder), params_counted_as="encoder")
    encoder, report = import_model(spec)
    return ProfiledModel(name=spec, kind=f"checkpoint ({report.format}, {report.architecture})", encoder=encoder,
                         heads=None, params=report.num_params, params_counted_as="encoder")


def profile_report(model: ProfiledModel, *, seconds: float, batch: int, device: torch.device,
                   repeats: int, warmup: int, measure_speed: bool = True,
                   autocast_dtype: Optional[torch.dtype] = None) -> Dict[str, object]:
    """The JSON-able report of ``python -m speechdistill.bin.profile``."""
    config = model.encoder.config
    macs = count_macs(config, int(round(seconds * SAMPLE_RATE)), model.heads)
    report: Dict[str, object] = {
        "model": model.name,
        "kind": model.kind,
        "params": model.params,
        "params_counted_as": model.params_counted_as,
        "published_params": model.published_params,
        "macs_per_second": macs["total"] / seconds,
        "macs_per_second_by_part": {k: v / seconds for k, v in macs.items() if k != "total" and v},
        "seconds": seconds,
        "batch": batch,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "dtype": "float32" if autocast_dtype is None else f"autocast {str(autocast_dtype).replace('torch.', '')}",
    }
    if measure_speed:
        encoder = model.encoder.to(device).eval()
        heads = model.heads.to(device).eval() if model.heads is not None else None
        run = forward_fn(encoder, make_input(batch, seconds, device), autocast_dtype, heads)
        timing = measure({"model": run}, device, repeats=repeats, warmup=warmup)["model"]
        report["forward_seconds_median"] = timing.median
        report["forward_seconds"] = timing.seconds_per_pass
        report["audio_seconds_per_second"] = batch * seconds / timing.median
    return report


@dataclass
class OnnxVariants:
    """A model exported to ONNX (float32 and int8) in onnxruntime sessions, with what the export costs in
    accuracy on the check audio: the float32 graph's largest difference to our PyTorch model relative to the
    output's scale, and the int8 graph's cosine similarity to our float32 model per output (mean over frames)."""

    fp32: Any
    int8: Any
    fp32_relative_diff: float
    int8_cosine: Dict[str, float]


def onnx_variants(model: ProfiledModel, directory: Path, check_audio: Sequence[torch.Tensor],
                  threads: int) -> OnnxVariants:
    """Export ``model`` (every hidden state, and its heads where they are counted) to ``directory`` as float32
    and int8 graphs, and check both on ``check_audio`` (each utterance alone and batched)."""
    from .export_onnx import export_onnx, quantize_int8
    from .onnx_runtime import OnnxModel, check_export

    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", model.name)
    fp32_path = export_onnx(model.encoder, directory / f"{name}.onnx", heads=model.heads).path
    int8_path = quantize_int8(fp32_path, directory / f"{name}.int8.onnx")
    fp32, int8 = OnnxModel(fp32_path, threads=threads), OnnxModel(int8_path, threads=threads)
    fp32_check = check_export(model.encoder, fp32, check_audio, heads=model.heads)
    int8_check = check_export(model.encoder, int8, check_audio, heads=model.heads)
    return OnnxVariants(fp32, int8, max(fp32_check.relative().values()), int8_check.mean_cosine)


def student_table(presets: List[str], *, reference: str = "hubert_base", seconds: float, batch: int,
                  device: torch.device, repeats: int, warmup: int, progress: Optional[Callable[[], None]] = None,
                  onnx: bool = False, check_audio: Sequence[torch.Tensor] = (),
                  on_export: Optional[Callable[[str], None]] = None,
                  on_row: Optional[Callable[[Dict[str, object]], None]] = None) -> List[Dict[str, object]]:
    """Rows (reference first) with params, MACs/s and CPU time relative to the reference.

    All models run round-robin (reference, student 1, student 2, ..., reference, ...) so that
    load changes on a shared machine affect every model alike; ratios are of medians. With ``onnx``
    (CPU only) each model is then exported (:func:`onnx_variants`, checked on ``check_audio``;
    ``on_export(name)`` is called first) and its float32 and int8 graphs run round-robin with our PyTorch
    forward of the same model; a model's sessions are closed before the next one's open (each keeps
    its working memory, ~1 GB for a student on 4 x 10 s). ``on_row(row)`` is called as each row is complete
    (a long run shows its results as it goes).
    """
    models = [resolve_model(reference)] + [resolve_model(name) for name in presets]
    wavs = make_input(batch, seconds, device)
    runs: Dict[str, Callable[[], object]] = {}
    for m in models:
        m.encoder.to(device).eval()
        if m.heads is not None:
            m.heads.to(device).eval()
        runs[m.name] = forward_fn(m.encoder, wavs, None, m.heads)
    timings = measure(runs, device, repeats=repeats, warmup=warmup, progress=progress)
    reference_time = timings[models[0].name].median
    rows = []
    for m in models:
        macs = count_macs(m.encoder.config, int(round(seconds * SAMPLE_RATE)), m.heads)["total"] / seconds
        median = timings[m.name].median
        rows.append({
            "model": m.name, "params": m.params, "params_counted_as": m.params_counted_as,
            "published_params": m.published_params_text or (f"{m.published_params:,}" if m.published_params else ""),
            "published_macs": m.published_macs, "macs_per_second": macs, "forward_seconds_median": median,
            "time_ratio": median / reference_time, "audio_seconds_per_second": batch * seconds / median})
    if on_row is not None and not onnx:
        for row in rows:
            on_row(row)
    if onnx:
        host_wavs, host_lengths = wavs.cpu().numpy(), np.full(batch, wavs.shape[1], dtype=np.int64)
        for m, row in zip(models, rows):
            if on_export is not None:
                on_export(m.name)
            with tempfile.TemporaryDirectory(prefix="speechdistill-profile-") as scratch:
                found = onnx_variants(m, Path(scratch), check_audio, torch.get_num_threads())
                graphs = {kind: getattr(found, kind) for kind in ("fp32", "int8")}
                rounds = measure(dict({"torch": runs[m.name]}, **{kind: (lambda g=g: g(host_wavs, host_lengths))
                                                                  for kind, g in graphs.items()}),
                                 device, repeats=repeats, warmup=warmup, progress=progress)
            row["onnx_round_torch_audio_seconds_per_second"] = batch * seconds / rounds["torch"].median
            for kind in graphs:
                row[f"onnx_{kind}_audio_seconds_per_second"] = batch * seconds / rounds[kind].median
                row[f"onnx_{kind}_speedup"] = rounds["torch"].median / rounds[kind].median  # x our PyTorch fp32
            row["onnx_fp32_relative_diff"] = found.fp32_relative_diff
            row["onnx_int8_cosine"] = found.int8_cosine
            row["onnx_int8_worst_cosine"] = min(found.int8_cosine.values())
            del found, graphs, rounds  # (the sessions and their working memory)
            if on_row is not None:
                on_row(row)
    return rows


def markdown_table(rows: List[Dict[str, object]], *, seconds: float, batch: int, device: str, threads: int) -> str:
    onnx = "onnx_fp32_speedup" in rows[0]
    lines = [f"Measured on {device} ({threads} threads), fp32, batch {batch} x {seconds:g} s, random weights; "
             f"MACs per second of audio for {seconds:g} s utterances; time ratio = median forward time / "
             f"median forward time of {rows[0]['model']} (interleaved runs)."
             + (" onnxruntime columns: audio s / s of the exported graph (x our PyTorch float32 forward of the "
                "same model, timed in turn with it); int8 cosine = the lowest, over hidden states, of the mean per-frame "
                "cosine similarity of the int8 graph's output to the float32 model's." if onnx else ""), "",
             "| model | params | published params | GMACs / audio s | published MACs | CPU time vs "
             f"{rows[0]['model']} | audio s / s |" + (" onnxruntime fp32 | onnxruntime int8 | int8 cosine |"
                                                       if onnx else ""),
             "|---|---:|---|---:|---|---:|---:|" + ("---:|---:|---:|" if onnx else "")]
    for row in rows:
        line = (f"| {row['model']} | {row['params'] / 1e6:.2f} M | {row['published_params']} | "
                f"{row['macs_per_second'] / 1e9:.2f} | {row['published_macs']} | "
                f"{row['time_ratio']:.2f}x | {row['audio_seconds_per_second']:.1f} |")
        if onnx:
            line += (f" {row['onnx_fp32_audio_seconds_per_second']:.1f} ({row['onnx_fp32_speedup']:.2f}x) |"
                     f" {row['onnx_int8_audio_seconds_per_second']:.1f} ({row['onnx_int8_speedup']:.2f}x) |"
                     f" {row['onnx_int8_worst_cosine']:.4f} |")
        lines.append(line)
    return "\n".join(lines)
