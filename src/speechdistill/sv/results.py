"""``RESULTS.md`` of a speaker-verification experiment: EER and minDCF per trial list, DET curves.

Each scored trial list is evaluated with :func:`speechdistill.metrics.evaluate_files` (the same
numbers ``speechdistill.bin.compute_eer`` prints: EER and minDCF at every P_target with
C_miss = C_fa = 1), its DET curve drawn to ``<det_dir>/<name>_det.png``, and everything collected
in one Markdown file together with what the system is (from ``sv_model.yaml``) and, when the
recipe recorded them, the run time of each stage.

:func:`write_comparison` does the same for several *systems* scored on one trial list (``make
demo-sv``): one row per system with its parameter counts, and every DET curve in one figure.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import yaml

from ..data.tables import atomic_write_text
from ..metrics.verification import VerificationResult, evaluate_files, plot_det, sv_results_table

PathLike = Union[str, Path]


@dataclass
class ScoredList:
    """One trial list and its score file; ``name`` labels the table row and the DET file."""

    name: str
    scores: Path
    trials: Path


@dataclass
class ScoredSystem:
    """One system of a comparison: its name (table row, DET legend), score file, trials and model dir."""

    name: str
    scores: Path
    trials: Path
    model_dir: Path


def _system_lines(model_dir: Path) -> List[str]:
    path = model_dir / "sv_model.yaml"
    if not path.is_file():
        return [f"- model: `{model_dir}` (no sv_model.yaml found)"]
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    info = data.get("info") or {}
    backend = data.get("backend", {}).get("kind", "?")
    parts = [f"- system: `{data.get('system', '?')}`, back-end `{backend}`, embedding size "
             f"{data.get('embedding_size', '?')}, speaker loss `{info.get('speaker_loss', '?')}`, "
             f"{info.get('speakers', '?')} training speakers"]
    if info.get("upstream_params"):
        parts.append(f"- encoder: {int(info['upstream_params']):,} parameters"
                     + (f" (student preset `{info['student']}`)" if info.get("student") else "")
                     + (f", teacher `{info['teacher']}`" if info.get("teacher") else ""))
    if info.get("backend_params"):
        parts.append(f"- back-end: {int(info['backend_params']):,} parameters")
    parts.append(f"- model directory: `{model_dir}`")
    return parts


def _stage_time_rows(path: Path) -> List[Tuple[str, str]]:
    """Rows of a stage-times file: ``<stage> <seconds> [description...]`` per line."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.split(maxsplit=2)
        if len(fields) >= 2:
            rows.append((fields[0] + (f" ({fields[2]})" if len(fields) > 2 else ""), fields[1]))
    return rows


def write_results(lists: Sequence[ScoredList], output: PathLike, *, title: str, det_dir: Optional[PathLike] = None,
                  model_dir: Optional[PathLike] = None, notes: Sequence[str] = (),
                  stage_times: Optional[PathLike] = None,
                  p_targets: Sequence[float] = (0.01, 0.05)) -> List[Tuple[str, VerificationResult]]:
    """Evaluate every list, draw its DET curve, write ``output`` (atomically); returns the results."""
    if not lists:
        raise ValueError("no trial list to report; give at least one --list NAME SCORES TRIALS")
    names = [item.name for item in lists]
    if len(set(names)) != len(names):
        raise ValueError(f"trial list names must be unique (they name the DET files), got {names}")
    output = Path(output)
    det_dir = Path(det_dir) if det_dir is not None else output.parent / "det"
    rows: List[Tuple[str, VerificationResult]] = []
    images: List[Tuple[str, Path]] = []
    for item in lists:
        result, curve, _ = evaluate_files(item.scores, item.trials, p_targets)
        png = det_dir / f"{item.name}_det.png"
        plot_det([(item.name, curve)], png, title=f"{item.name} ({item.trials})")
        rows.append((item.name, result))
        images.append((item.name, png))
    lines = [f"# {title}", ""]
    if model_dir is not None:
        lines += _system_lines(Path(model_dir))
    lines += [f"- {note}" for note in notes]
    lines += [f"- written {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}", "",
              "## EER and minDCF (C_miss = C_fa = 1)", "", sv_results_table(rows).rstrip("\n"), "",
              "|trials|score file|trial list|", "|---|---|---|"]
    lines += [f"|{item.name}|`{item.scores}`|`{item.trials}`|" for item in lists]
    lines += ["", "## DET curves", ""]
    for name, png in images:
        lines.append(f"![{name}]({os.path.relpath(png, output.parent)})")
    if stage_times is not None and Path(stage_times).is_file():
        lines += ["", "## Stage run times", "", "|stage|seconds|", "|---|---|"]
        lines += [f"|{stage}|{seconds}|" for stage, seconds in _stage_time_rows(Path(stage_times))]
    atomic_write_text(output, "\n".join(lines) + "\n")
    return rows


def _encoder_cells(model_dir: Path) -> Tuple[str, str, str]:
    """(encoder description, encoder parameters, back-end parameters) of a speaker model dir."""
    path = model_dir / "sv_model.yaml"
    if not path.is_file():
        raise ValueError(f"{path} not found: the system's model dir must hold the sv_model exported by sv_train")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    info = data.get("info") or {}
    system = data.get("system", "?")
    if system == "fbank":
        encoder = "log-mel fbank"
    elif system == "ssl_frozen":
        encoder = "frozen teacher, weighted sum of all layers"
    else:
        init = info.get("student_init")
        origin = "random init" if init is not None and not any(init.values()) else "copied from the teacher"
        encoder = f"student `{info.get('student', '?')}` ({origin})"
    upstream = int(info.get("upstream_params") or 0)
    backend = int(info.get("backend_params") or 0)
    return encoder, f"{upstream:,}" if upstream else "-", f"{backend:,}" if backend else "?"


def write_comparison(systems: Sequence[ScoredSystem], output: PathLike, *, title: str, det_png: PathLike,
                     notes: Sequence[str] = (), p_targets: Sequence[float] = (0.01, 0.05)) -> str:
    """Compare systems on one trial list: a table row per system (encoder, parameter counts, EER,
    minDCF per p_target) and one DET figure ``det_png`` with every system; ``output`` is written
    atomically. Returns the Markdown table."""
    if not systems:
        raise ValueError("no system to compare; give at least one --system NAME SCORES TRIALS MODEL_DIR")
    names = [item.name for item in systems]
    if len(set(names)) != len(names):
        raise ValueError(f"system names must be unique, got {names}")
    trial_lists = {str(item.trials) for item in systems}
    if len(trial_lists) != 1:
        raise ValueError(f"systems are compared on one trial list, got {sorted(trial_lists)}")
    output = Path(output)
    results: List[VerificationResult] = []
    curves = []
    table = ["|system|encoder|encoder params|back-end params|EER (%)|"
             + "".join(f"minDCF (p={p:g})|" for p in p_targets), "|---" * (5 + len(p_targets)) + "|"]
    for item in systems:
        encoder, upstream, backend = _encoder_cells(Path(item.model_dir))
        result, curve, _ = evaluate_files(item.scores, item.trials, p_targets)
        results.append(result)
        curves.append((item.name, curve))
        table.append(f"|{item.name}|{encoder}|{upstream}|{backend}|{100.0 * result.eer:.3f}|"
                     + "".join(f"{result.min_dcf[p]:.3f}|" for p in p_targets))
    first = results[0]
    plot_det(curves, det_png, title=f"DET: {Path(systems[0].trials)}")
    lines = [f"# {title}", "", f"Trial list `{systems[0].trials}`: {first.num_targets} target and "
             f"{first.num_nontargets} nontarget trials; C_miss = C_fa = 1.", ""]
    lines += table
    lines += [""] + [f"- {note}" for note in notes]
    lines += [f"- written {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}", "",
              "|system|score file|model|", "|---|---|---|"]
    lines += [f"|{item.name}|`{item.scores}`|`{item.model_dir}`|" for item in systems]
    lines += ["", "## DET curves", "", f"![DET curves]({os.path.relpath(det_png, output.parent)})"]
    atomic_write_text(output, "\n".join(lines) + "\n")
    return "\n".join(table) + "\n"
