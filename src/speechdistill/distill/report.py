"""Teacher vs distilled student vs random student: one ``RESULTS.md`` table and its figures.

What a distillation run is worth, measured the same way for three upstreams:

* the teacher;
* the distilled student (``<distill_exp>/student``);
* a randomly initialised student of the same architecture and heads (``random_student``,
  :func:`save_random_student`): what the student would be without the teacher.

Columns: encoder parameters; MACs per second of audio (analytic, ``models.profiling``); CPU
forward speed in audio-seconds per second (one 10 s utterance, the three models timed
interleaved so that machine load hits them alike); held-out teacher–student cosine similarity
per target layer (the distillation task's own validation metric, recomputed over whole
utterances of the held-out data dir, for the student and the random student alike); WER and CER
of the ASR probe trained on each upstream (stages 4-5), on the first test set, clean.

Figures (PNG): ``distill_loss.png`` (every training loss term and its validation value over
updates), ``distill_cosine.png`` (held-out cosine per target layer over updates, from the
trainer's ``metrics.jsonl``), ``asr_layer_weights.png`` (the softmax weights the ASR probe's
featurizer learned over each upstream's hidden states).
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ..config import load_config
from ..data.tables import atomic_write_text
from ..train.logs import _save_figure, read_metrics

PathLike = Union[str, os.PathLike]
log = logging.getLogger("speechdistill.distill.report")

RESULTS_FILE = "RESULTS.md"
LOSS_PNG = "distill_loss.png"
COSINE_PNG = "distill_cosine.png"
# validation metrics read as the held-out similarity, in order of preference
COSINE_METRICS = ("cos/layer", "gram_cos/layer")
COSINE_KINDS = {"cos/layer": "cos", "gram_cos/layer": "Gram cos"}
COSINE_MEANINGS = {"cos": "cosine similarity of hidden states",
                   "Gram cos": "cosine similarity of Gram-matrix rows (frame-by-frame similarity maps; the method "
                               "distils those)"}
LAYER_WEIGHTS_PNG = "asr_layer_weights.png"
# Keys of metrics.jsonl records that are not loss terms (the trainer's bookkeeping).
_NOT_LOSS = {"step", "epoch", "grad_norm", "audio_sec_per_sec", "padding_fraction", "skipped_nonfinite",
             "skipped_unreadable", "skipped_short", "elapsed_s", "loss_scale", "sparsity_target", "lambda1",
             "lambda2", "expected_params", "expected_sparsity"}


class ReportError(ValueError):
    """A file the report needs is missing; the message names it and the stage that writes it."""


@dataclass
class UpstreamRow:
    """One row of the table."""

    name: str
    path: str
    params: int = 0
    macs_per_second: float = float("nan")
    audio_sec_per_sec: float = float("nan")
    cosine: Dict[int, float] = field(default_factory=dict)  # teacher layer -> held-out cosine
    wer: Optional[float] = None
    cer: Optional[float] = None
    asr_exp: Optional[str] = None
    layer_weights: Optional[List[float]] = None


# ---------------------------------------------------------------------------------------------
# the random student
# ---------------------------------------------------------------------------------------------

def save_random_student(student_dir: PathLike, out_dir: PathLike, *, seed: int = 0) -> Path:
    """Write ``out_dir``: the encoder and heads of ``student_dir`` rebuilt from their configs under
    ``seed`` (the constructors' initialisation; nothing learned, nothing copied from a teacher)."""
    from ..models.checkpoints import load_heads, load_model, save_model
    from ..models.encoder import Encoder
    from ..models.heads import build_heads, heads_config

    student = load_model(student_dir)
    heads = load_heads(student_dir)
    torch.manual_seed(seed)
    random_encoder = Encoder(student.config)
    random_heads = build_heads(heads_config(heads)) if heads is not None else None
    source = {"kind": "random student", "architecture_of": str(student_dir), "seed": seed}
    return save_model(random_encoder.eval(), out_dir, heads=random_heads, source=source)


# ---------------------------------------------------------------------------------------------
# measurements
# ---------------------------------------------------------------------------------------------

def profile_upstreams(paths: Mapping[str, PathLike], *, seconds: float = 10.0, repeats: int = 3
                      ) -> Dict[str, Tuple[int, float, float]]:
    """``name -> (parameters, MACs per audio second, CPU audio-seconds per second)`` of each encoder
    (heads excluded: downstream tasks read the encoder). Forward passes are timed interleaved."""
    from ..models.checkpoints import count_parameters, load_model
    from ..models.profiling import forward_fn, macs_per_second, make_input, measure

    device = torch.device("cpu")
    wavs = make_input(1, seconds, device)
    encoders = {name: load_model(path).eval() for name, path in paths.items()}
    runs = {name: forward_fn(encoder, wavs) for name, encoder in encoders.items()}
    timing = measure(runs, device, repeats=repeats, warmup=1)
    return {name: (count_parameters(encoder), macs_per_second(encoder.config, seconds),
                   seconds / timing[name].median) for name, encoder in encoders.items()}


def _batches(data_dir: Path, batch_seconds: float, max_seconds: Optional[float]
             ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """Whole utterances of ``data_dir`` (read up to ``max_seconds``, each longer one named in the log),
    sorted by length, padded into batches of at most ``batch_seconds`` of padded audio (at least one
    utterance): ``[(wavs [B, T], lengths [B])]``. Unreadable utterances are named and left out."""
    from ..data.inference import inference_batches

    data = inference_batches(data_dir, min_samples=1, batch_seconds=batch_seconds, max_seconds=max_seconds,
                             num_workers=0)
    for key, seconds in data.cut:
        log.info("held-out similarity: %s", data.cut_message(key, seconds))
    out = []
    for batch in data.loader:
        for key, message in batch["failures"]:
            log.warning("held-out similarity: skipping unreadable utterance %s: %s", key, " ".join(message.split()))
        if batch["keys"]:
            out.append((batch["wavs"], batch["lengths"]))
    if not out:
        raise ReportError(f"{data_dir}: no utterance could be read for the held-out similarity (see the warnings "
                          "above)")
    return out


def held_out_cosine(distill_exp: PathLike, students: Mapping[str, PathLike], teacher: PathLike,
                    data_dir: PathLike, *, batch_seconds: float = 60.0, max_seconds: Optional[float] = 20.0
                    ) -> Dict[str, Dict[int, float]]:
    """``name -> {teacher layer: cosine}`` (:func:`held_out_similarity` without its kind)."""
    return held_out_similarity(distill_exp, students, teacher, data_dir, batch_seconds=batch_seconds,
                               max_seconds=max_seconds)[1]


def held_out_similarity(distill_exp: PathLike, students: Mapping[str, PathLike], teacher: PathLike,
                        data_dir: PathLike, *, batch_seconds: float = 60.0, max_seconds: Optional[float] = 20.0
                        ) -> Tuple[str, Dict[str, Dict[int, float]]]:
    """``(kind, name -> {teacher layer: cosine})`` for each student dir, on every utterance of ``data_dir``.
    ``kind`` is ``cos`` (hidden-state cosine, the methods that predict teacher hidden states) or
    ``Gram cos`` (cosine of Gram-matrix rows, for methods that distil Gram matrices, e.g. STaRHuBERT,
    whose student width may differ from the teacher's).

    The distillation task of ``<distill_exp>/config.yaml`` computes it (its ``valid/cos/layer<t>``:
    per-utterance mean over valid frames, averaged over utterances), with the student loaded from
    each dir with its saved heads, clean input and no masking.
    """
    from ..distill.config import DistillConfig, TargetMapping
    from ..distill.task import DistillTask
    from ..models.checkpoints import read_model_config
    from ..train.task import TrainContext

    config_path = Path(distill_exp) / "config.yaml"
    if not config_path.is_file():
        raise ReportError(f"{config_path}: not found; it is written by the distillation (stage 3)")
    batches = _batches(Path(data_dir), batch_seconds, max_seconds)
    results: Dict[str, Dict[int, float]] = {}
    kind = "cos"
    for name, student_dir in students.items():
        config = load_config(DistillConfig, config_path)
        config.teacher = str(teacher)
        config.student, config.student_encoder, config.student_init = None, {}, None
        config.student_from = str(student_dir)
        has_heads = bool(read_model_config(student_dir).get("heads"))
        config.target_mapping = TargetMapping(kind="preset" if has_heads else "none")
        config.corruption.preset = None  # validation input is clean anyway; no noise data needed
        config.enhancement.weight = 0.0
        config.pruning.target_sparsity = None  # the exported student is already dense
        config.next_stage = None
        task = DistillTask(config)
        context = TrainContext(device=torch.device("cpu"), precision="fp32", teacher_precision="fp32", rank=0,
                               world_size=1, local_rank=0, output_dir=Path(distill_exp), seed=config.seed,
                               logger=log)
        task.setup(context)
        torch.manual_seed(config.seed)
        model = task.model().eval()
        sums: Dict[str, Dict[int, float]] = {prefix: {} for prefix in COSINE_METRICS}
        count = 0
        with torch.inference_mode():
            for wavs, lengths in batches:
                metrics = task.valid_step(model, {"wavs": wavs, "lengths": lengths})
                for key, value in metrics.items():
                    for prefix in COSINE_METRICS:
                        if key.startswith(prefix):
                            layer = int(key[len(prefix):])
                            sums[prefix][layer] = sums[prefix].get(layer, 0.0) + float(value) * len(lengths)
                count += len(lengths)
        # hidden-state cosine where the method predicts hidden states; Gram-matrix cosine for methods
        # whose student width differs from the teacher's and that distil Gram matrices (STaRHuBERT)
        prefix = next((prefix for prefix in COSINE_METRICS if sums[prefix]), COSINE_METRICS[0])
        kind = COSINE_KINDS[prefix]
        results[name] = {layer: total / count for layer, total in sorted(sums[prefix].items())}
    return kind, results


def asr_scores(asr_exp: PathLike) -> Tuple[Optional[float], Optional[float], Optional[str]]:
    """(WER %, CER %, decode dir name) of the first clean decode of ``asr_exp`` (stage 5), or Nones."""
    from ..asr.results import find_decode_dirs, score_decode_dir

    decodes = find_decode_dirs(asr_exp)
    clean = [d for d in decodes if d[1].name == "clean"] or decodes
    if not clean:
        return None, None, None
    name, path = clean[0]
    scored = score_decode_dir(path, name)
    return scored.reports["word"].error_rate, scored.reports["char"].error_rate, name


def featurizer_weights(asr_exp: PathLike) -> Optional[List[float]]:
    """The softmax layer weights of the probe in ``<asr_exp>/asr_model`` (None for a single-layer probe)."""
    from ..asr.model import load_asr_model

    model_dir = Path(asr_exp) / "asr_model"
    if not (model_dir / "model.safetensors").is_file():
        return None
    model, _, _ = load_asr_model(model_dir)
    if model.featurizer.weights is None:
        return None
    return [float(w) for w in model.featurizer.layer_weights()]


# ---------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------

def _series(records: Sequence[Mapping], key: str) -> Tuple[List[int], List[float]]:
    xs, ys = [], []
    for record in records:
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            xs.append(int(record["step"]))
            ys.append(float(value))
    return xs, ys


def plot_distillation(metrics_path: PathLike, out_dir: PathLike, title: str) -> List[Path]:
    """``distill_loss.png`` and ``distill_cosine.png`` from the trainer's ``metrics.jsonl``."""
    from matplotlib.figure import Figure

    records = read_metrics(Path(metrics_path))
    train = [r for r in records if not any(k.startswith("valid/") for k in r)]
    valid = [r for r in records if any(k.startswith("valid/") for k in r)]
    out_dir = Path(out_dir)
    written = []
    terms = sorted({k for r in train for k in r if k not in _NOT_LOSS and not k.startswith("lr/")},
                   key=lambda k: (k != "loss", k))
    fig = Figure(figsize=(7.0, 4.2))
    ax = fig.add_subplot()
    for i, term in enumerate(terms):
        color = f"C{i % 10}"
        ax.plot(*_series(train, term), "-", color=color, label=f"{term} (train)")
        if any(f"valid/{term}" in r for r in valid):
            ax.plot(*_series(valid, f"valid/{term}"), "o--", color=color, label=f"{term} (held out)")
    ax.set_xlabel("update")
    ax.set_ylabel("loss")
    ax.set_title(f"{title}: distillation loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.12, top=0.92)
    _save_figure(fig, out_dir / LOSS_PNG)
    written.append(out_dir / LOSS_PNG)

    cos_keys = sorted({k for r in valid for k in r if k.startswith(("valid/cos/layer", "valid/gram_cos/layer"))},
                      key=lambda k: (k.split("/")[1], int(k.rsplit("layer", 1)[1])))
    fig = Figure(figsize=(7.0, 4.2))
    ax = fig.add_subplot()
    for key in cos_keys:
        ax.plot(*_series(valid, key), "o-", label=f"teacher layer {key.rsplit('layer', 1)[1]}"
                + (" (Gram)" if "gram" in key else ""))
    ax.set_xlabel("update")
    ax.set_ylabel("held-out cosine similarity")
    ax.set_title(f"{title}: student vs teacher on held-out speech")
    ax.grid(alpha=0.3)
    if cos_keys:
        ax.legend(fontsize=8)
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.12, top=0.92)
    _save_figure(fig, out_dir / COSINE_PNG)
    written.append(out_dir / COSINE_PNG)
    return written


def plot_layer_weights(rows: Sequence[UpstreamRow], out_dir: PathLike) -> Optional[Path]:
    """One panel per upstream: the learned featurizer weight of each hidden state."""
    from matplotlib.figure import Figure

    rows = [r for r in rows if r.layer_weights]
    if not rows:
        return None
    fig = Figure(figsize=(3.2 * len(rows) + 0.8, 3.6))
    for i, row in enumerate(rows):
        ax = fig.add_subplot(1, len(rows), i + 1)
        weights = row.layer_weights
        ax.bar(range(len(weights)), weights, color=f"C{i}")
        ax.axhline(1.0 / len(weights), color="gray", linestyle=":", linewidth=1)  # the initial, uniform weights
        ax.set_title(row.name, fontsize=10)
        ax.set_xlabel("hidden state (0 = transformer input)")
        if i == 0:
            ax.set_ylabel("ASR featurizer weight")
        ax.set_xticks(range(len(weights)))
        ax.tick_params(axis="x", labelsize=7)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.16, top=0.88, wspace=0.3)
    path = Path(out_dir) / LAYER_WEIGHTS_PNG
    _save_figure(fig, path)
    return path


# ---------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------

def _fmt(value: Optional[float], digits: int = 1) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def results_markdown(rows: Sequence[UpstreamRow], *, method: str, data_dir: str, test_name: Optional[str],
                     figures: Sequence[Path], notes: Sequence[str] = (), cosine_kind: str = "cos") -> str:
    layers = sorted({layer for r in rows for layer in r.cosine})
    header = ["upstream", "params", "MACs / audio s", "CPU speed (audio s/s)"]
    header += [f"{cosine_kind} L{layer}" for layer in layers] + ["WER %", "CER %"]
    lines = [f"# Distillation results: {method}", "",
             f"Held-out {cosine_kind}: teacher–student {COSINE_MEANINGS[cosine_kind]} per target layer on every "
             f"utterance of `{data_dir}`. WER/CER: the ASR probe trained on each frozen upstream, greedy decoding of "
             f"`{test_name or 'the test set'}`. Speed: forward passes over one 10 s utterance on the CPU, fp32, "
             f"{torch.get_num_threads()} thread(s), the three models timed in turn.", "",
             "| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in rows:
        cells = [row.name, f"{row.params / 1e6:.2f} M", f"{row.macs_per_second / 1e9:.2f} G",
                 _fmt(row.audio_sec_per_sec)]
        cells += [("(target)" if row.name == "teacher" else _fmt(row.cosine.get(layer), 3)) for layer in layers]
        cells += [_fmt(row.wer), _fmt(row.cer)]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for row in rows:
        lines.append(f"- {row.name}: `{row.path}`" + (f"; ASR probe `{row.asr_exp}`" if row.asr_exp else ""))
    lines.append("")
    lines += [f"![{p.stem}]({p.name})" for p in figures]
    if notes:
        lines += [""] + list(notes)
    return "\n".join(lines) + "\n"


def write_report(*, teacher: PathLike, student: PathLike, random_student: PathLike, distill_exp: PathLike,
                 data_dir: PathLike, out_dir: PathLike, asr_exps: Mapping[str, Optional[PathLike]],
                 method: str = "", speed_repeats: int = 3, max_seconds: Optional[float] = 20.0) -> Path:
    """Measure, plot and write ``<out_dir>/RESULTS.md``; returns its path.

    ``asr_exps`` maps ``teacher`` / ``student`` / ``random student`` to their stage-4/5 dirs
    (None or a missing dir: no WER for that row). ``max_seconds``: the held-out similarity uses
    at most the first ``max_seconds`` of each utterance (None: all of it).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"teacher": Path(teacher), "student": Path(student), "random student": Path(random_student)}
    for name, path in paths.items():
        if not path.exists():
            raise ReportError(f"{path} ({name}): not found; stage 2 writes the teacher, stage 3 the student and "
                              "(with --compare true) the random student")
    metrics = Path(distill_exp) / "metrics.jsonl"
    if not metrics.is_file():
        raise ReportError(f"{metrics}: not found; it is written by the distillation (stage 3)")
    rows = [UpstreamRow(name=name, path=str(path)) for name, path in paths.items()]
    log.info("profiling the three encoders (parameters, MACs, CPU forward speed)")
    for row, (params, macs, speed) in zip(rows, profile_upstreams(paths, repeats=speed_repeats).values()):
        row.params, row.macs_per_second, row.audio_sec_per_sec = params, macs, speed
    log.info("held-out cosine similarity on %s", data_dir)
    kind, cosine = held_out_similarity(distill_exp, {"student": student, "random student": random_student}, teacher,
                                       data_dir, max_seconds=max_seconds)
    test_name = None
    for row in rows:
        row.cosine = cosine.get(row.name, {})
        asr_exp = asr_exps.get(row.name)
        if asr_exp is not None and Path(asr_exp).is_dir():
            row.asr_exp = str(asr_exp)
            row.wer, row.cer, name = asr_scores(asr_exp)
            test_name = test_name or name
            row.layer_weights = featurizer_weights(asr_exp)
    figures = plot_distillation(metrics, out_dir, method or Path(distill_exp).name)
    weights_png = plot_layer_weights(rows, out_dir)
    if weights_png is not None:
        figures.append(weights_png)
    text = results_markdown(rows, method=method or Path(distill_exp).name, data_dir=str(data_dir),
                            test_name=test_name, figures=figures, cosine_kind=kind)
    path = out_dir / RESULTS_FILE
    atomic_write_text(path, text)
    atomic_write_text(out_dir / "results.json", json.dumps(
        [{"name": r.name, "path": r.path, "params": r.params, "macs_per_second": r.macs_per_second,
          "audio_sec_per_sec": r.audio_sec_per_sec, "cosine": {str(k): v for k, v in r.cosine.items()},
          "cosine_kind": kind, "wer": r.wer, "cer": r.cer, "asr_exp": r.asr_exp, "layer_weights": r.layer_weights}
         for r in rows],
        indent=1) + "\n")
    return path
