"""``RESULTS.md`` of a speaker-verification experiment: EER and minDCF per trial list, DET curves.

Each scored trial list is evaluated with :func:`speechdistill.metrics.evaluate_files` (the same
numbers ``speechdistill.bin.compute_eer`` prints: EER and minDCF at every P_target with
C_miss = C_fa = 1), its DET curve drawn to ``<det_dir>/<name>_det.png``, and everything collected
in one Markdown file together with what the system is (from ``sv_model.yaml``) and, when the
recipe recorded them, the run time of each stage. A list scored under test conditions (noise,
reverberation, babble: :mod:`speechdistill.augment.conditions`) adds a table with one EER / minDCF
column pair per condition (minDCF at the first P_target), one row per trial list.

:func:`write_comparison` does the same for several *systems* scored on one trial list (``make
demo-sv``): one row per system with its parameter counts and, per extra test condition, its EER /
minDCF pair, and every clean DET curve in one figure.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import yaml

from ..augment.conditions import condition_sort_key
from ..data.tables import atomic_write_text
from ..metrics.verification import VerificationResult, evaluate_files, plot_det, sv_results_table

PathLike = Union[str, Path]


@dataclass
class ScoredList:
    """One trial list and its score file under one test condition; ``name`` names the trial list (the row
    of the condition table); :attr:`label` labels the detailed table's row and the DET file."""

    name: str
    scores: Path
    trials: Path
    condition: str = "clean"

    @property
    def label(self) -> str:
        return self.name if self.condition == "clean" else f"{self.name}_{self.condition}"


@dataclass
class ScoredSystem:
    """One system of a comparison: its name (table row, DET legend), clean score file, trials and model dir,
    and the score files of the same trials under other test conditions (condition -> score file)."""

    name: str
    scores: Path
    trials: Path
    model_dir: Path
    conditions: Dict[str, Path] = field(default_factory=dict)


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


def condition_table(results: Dict[str, Dict[str, VerificationResult]], p_target: float, first_column: str) -> str:
    """Markdown table: a row per name (``results`` order), an EER (%) / minDCF (``p_target``) column pair per
    test condition (clean first, then :func:`condition_sort_key` order); ``-`` where a pair was not scored."""
    conditions = sorted({c for by_condition in results.values() for c in by_condition}, key=condition_sort_key)
    header = f"|{first_column}|" + "".join(f"{c} EER (%)|{c} minDCF (p={p_target:g})|" for c in conditions)
    lines = [header, "|---" * (1 + 2 * len(conditions)) + "|"]
    for name, by_condition in results.items():
        cells = [name]
        for condition in conditions:
            result = by_condition.get(condition)
            cells += [f"{100.0 * result.eer:.3f}", f"{result.min_dcf[p_target]:.3f}"] if result else ["-", "-"]
        lines.append("|" + "|".join(cells) + "|")
    return "\n".join(lines) + "\n"


def write_results(lists: Sequence[ScoredList], output: PathLike, *, title: str, det_dir: Optional[PathLike] = None,
                  model_dir: Optional[PathLike] = None, notes: Sequence[str] = (),
                  stage_times: Optional[PathLike] = None,
                  p_targets: Sequence[float] = (0.01, 0.05)) -> List[Tuple[str, VerificationResult]]:
    """Evaluate every list, draw its DET curve, write ``output`` (atomically); returns the results (labelled
    ``<name>`` for clean lists, ``<name>_<condition>`` for the others)."""
    if not lists:
        raise ValueError("no trial list to report; give at least one --list NAME SCORES TRIALS")
    labels = [item.label for item in lists]
    if len(set(labels)) != len(labels):
        raise ValueError(f"trial list names must be unique per condition (they name the DET files), got {labels}")
    output = Path(output)
    det_dir = Path(det_dir) if det_dir is not None else output.parent / "det"
    rows: List[Tuple[str, VerificationResult]] = []
    images: List[Tuple[str, Path]] = []
    by_list: Dict[str, Dict[str, VerificationResult]] = {}
    for item in lists:
        result, curve, _ = evaluate_files(item.scores, item.trials, p_targets)
        png = det_dir / f"{item.label}_det.png"
        plot_det([(item.label, curve)], png, title=f"{item.label} ({item.trials})")
        rows.append((item.label, result))
        images.append((item.label, png))
        by_list.setdefault(item.name, {})[item.condition] = result
    lines = [f"# {title}", ""]
    if model_dir is not None:
        lines += _system_lines(Path(model_dir))
    lines += [f"- {note}" for note in notes]
    lines += [f"- written {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}", ""]
    if any(item.condition != "clean" for item in lists):
        lines += ["## EER and minDCF per test condition (enrolment and test audio corrupted; C_miss = C_fa = 1)",
                  "", condition_table(by_list, p_targets[0], "trials").rstrip("\n"), ""]
    lines += ["## EER and minDCF (C_miss = C_fa = 1)", "", sv_results_table(rows).rstrip("\n"), "",
              "|trials|score file|trial list|", "|---|---|---|"]
    lines += [f"|{item.label}|`{item.scores}`|`{item.trials}`|" for item in lists]
    lines += ["", "## DET curves", ""]
    for name, png in images:
        lines.append(f"![{name}]({os.path.relpath(png, output.parent)})")
    if stage_times is not None and Path(stage_times).is_file():
        lines += ["", "## Stage run times", "", "|stage|seconds|", "|---|---|"]
        lines += [f"|{stage}|{seconds}|" for stage, seconds in _stage_time_rows(Path(stage_times))]
    atomic_write_text(output, "\n".join(lines) + "\n")
    return rows


def _featurizer_words(featurizer: dict) -> str:
    """What the featurizer section of ``sv_model.yaml`` feeds the back-end, in words."""
    config = featurizer.get("config") or {}
    if config.get("mode") == "single":
        return f"hidden state {config.get('layer', -1)}"
    layers = config.get("layers")
    return "weighted sum of all layers" if layers is None else f"weighted sum of hidden states {layers}"


def _encoder_cells(model_dir: Path) -> Tuple[str, str, str]:
    """(encoder description, encoder parameters, back-end parameters) of a speaker model dir."""
    path = model_dir / "sv_model.yaml"
    if not path.is_file():
        raise ValueError(f"{path} not found: the system's model dir must hold the sv_model exported by sv_train")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    info = data.get("info") or {}
    if data.get("frontend") == "fbank":
        encoder = "log-mel fbank"
    elif not info.get("student"):
        encoder = f"frozen teacher, {_featurizer_words(data.get('featurizer') or {})}"
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
    conditions = sorted({c for item in systems for c in item.conditions}, key=condition_sort_key)
    if "clean" in conditions:
        raise ValueError("a system's clean scores are its score file; list only the other test conditions")
    results: List[VerificationResult] = []
    curves = []
    table = ["|system|encoder|encoder params|back-end params|EER (%)|"
             + "".join(f"minDCF (p={p:g})|" for p in p_targets)
             + "".join(f"{c} EER (%)|{c} minDCF (p={p_targets[0]:g})|" for c in conditions),
             "|---" * (5 + len(p_targets) + 2 * len(conditions)) + "|"]
    for item in systems:
        encoder, upstream, backend = _encoder_cells(Path(item.model_dir))
        result, curve, _ = evaluate_files(item.scores, item.trials, p_targets)
        results.append(result)
        curves.append((item.name, curve))
        cells = [f"{100.0 * result.eer:.3f}"] + [f"{result.min_dcf[p]:.3f}" for p in p_targets]
        for condition in conditions:
            if condition in item.conditions:
                noisy, _, _ = evaluate_files(item.conditions[condition], item.trials, p_targets[:1])
                cells += [f"{100.0 * noisy.eer:.3f}", f"{noisy.min_dcf[p_targets[0]]:.3f}"]
            else:
                cells += ["-", "-"]
        table.append(f"|{item.name}|{encoder}|{upstream}|{backend}|" + "|".join(cells) + "|")
    first = results[0]
    plot_det(curves, det_png, title=f"DET: {Path(systems[0].trials)}")
    lines = [f"# {title}", "", f"Trial list `{systems[0].trials}`: {first.num_targets} target and "
             f"{first.num_nontargets} nontarget trials; C_miss = C_fa = 1"
             + (f"; clean, then per test condition ({', '.join(conditions)}: enrolment and test audio corrupted)"
                if conditions else "") + ".", ""]
    lines += table
    lines += [""] + [f"- {note}" for note in notes]
    lines += [f"- written {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}", "",
              "|system|score file|model|", "|---|---|---|"]
    for item in systems:
        lines.append(f"|{item.name}|`{item.scores}`|`{item.model_dir}`|")
        lines += [f"|{item.name} ({c})|`{item.conditions[c]}`|`{item.model_dir}`|" for c in conditions
                  if c in item.conditions]
    lines += ["", "## DET curves", "", f"![DET curves]({os.path.relpath(det_png, output.parent)})"]
    atomic_write_text(output, "\n".join(lines) + "\n")
    return "\n".join(table) + "\n"
