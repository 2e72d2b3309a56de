"""``RESULTS.md`` of a speaker-verification experiment: EER and minDCF per trial list, DET curves.

Each scored trial list is evaluated with :func:`speechdistill.metrics.evaluate_files` (the same
numbers ``speechdistill.bin.compute_eer`` prints: EER and minDCF at every P_target with
C_miss = C_fa = 1), its DET curve drawn to ``<det_dir>/<name>_det.png``, and everything collected
in one Markdown file together with what the system is (from ``sv_model.yaml``) and, when the
recipe recorded them, the run time of each stage.
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
