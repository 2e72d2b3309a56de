"""Speaker-verification metrics: detection error trade-off, EER, minDCF; trial and score files.

Operating points. A threshold ``t`` accepts a trial when its score is strictly greater than
``t``. The thresholds are every distinct score plus minus infinity, so trials with equal
scores are always accepted or rejected together (tied scores cannot be split by any real
threshold). For each threshold, P_miss = rejected targets / targets and P_fa = accepted
nontargets / nontargets. The curve therefore runs from the accept-all point (P_miss 0,
P_fa 1) to the reject-all point (P_miss 1, P_fa 0).

EER (conventions §4.3). WeSpeaker's definition: take the first operating point where
P_miss - P_fa >= 0 and the one before it, and interpolate linearly between them to the
point where P_miss = P_fa. Without tied scores this is exactly WeSpeaker's number; with ties
WeSpeaker's result depends on how its sort orders equal scores, ours does not (it equals the
crossing of the ROC curve that scikit-learn's ``roc_curve`` draws with the diagonal).

minDCF: min over operating points of C_miss P_miss P_target + C_fa P_fa (1 - P_target),
divided by min(C_miss P_target, C_fa (1 - P_target)), the cost of the better trivial system.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from statistics import NormalDist
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

_STANDARD_NORMAL = NormalDist()
PathLike = Union[str, Path]
TARGET, NONTARGET = "target", "nontarget"


class TrialsError(ValueError):
    """A malformed trial list or score file, or a mismatch between them."""


@dataclasses.dataclass(frozen=True)
class DetCurve:
    """Operating points, ordered by increasing threshold.

    thresholds: ``[K]`` (first is ``-inf``: accept all); p_miss, p_fa: ``[K]`` in [0, 1].
    """

    thresholds: np.ndarray
    p_miss: np.ndarray
    p_fa: np.ndarray


def _check_inputs(scores: Sequence[float], is_target: Sequence[bool]) -> Tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    is_target = np.asarray(is_target, dtype=bool).reshape(-1)
    if scores.shape != is_target.shape:
        raise ValueError(f"{scores.size} scores but {is_target.size} labels")
    if not np.all(np.isfinite(scores)):
        raise TrialsError(f"{int(np.sum(~np.isfinite(scores)))} score(s) are NaN or infinite; the embeddings or "
                          "the scoring produced invalid numbers")
    num_targets = int(is_target.sum())
    if num_targets == 0 or num_targets == is_target.size:
        raise TrialsError(f"EER and minDCF need both target and nontarget trials; found {num_targets} target and "
                          f"{is_target.size - num_targets} nontarget trial(s)")
    return scores, is_target


def det_curve(scores: Sequence[float], is_target: Sequence[bool]) -> DetCurve:
    """Tie-aware operating points of a score list (see the module docstring)."""
    scores, is_target = _check_inputs(scores, is_target)
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    sorted_targets = is_target[order]
    # Index of the last trial of each run of equal scores: the threshold at that score
    # rejects the whole run.
    run_ends = np.flatnonzero(np.diff(sorted_scores) != 0)
    run_ends = np.append(run_ends, sorted_scores.size - 1)
    rejected_targets = np.cumsum(sorted_targets)[run_ends]
    rejected_nontargets = np.cumsum(~sorted_targets)[run_ends]
    num_targets = int(is_target.sum())
    num_nontargets = is_target.size - num_targets
    p_miss = np.concatenate([[0.0], rejected_targets / num_targets])
    p_fa = np.concatenate([[1.0], 1.0 - rejected_nontargets / num_nontargets])
    thresholds = np.concatenate([[-np.inf], sorted_scores[run_ends]])
    return DetCurve(thresholds=thresholds, p_miss=p_miss, p_fa=p_fa)


def equal_error_rate(curve: DetCurve) -> Tuple[float, float]:
    """EER as a fraction in [0, 1], and the threshold of the point just past the crossing."""
    difference = curve.p_miss - curve.p_fa  # non-decreasing from -1 to +1
    after = int(np.flatnonzero(difference >= 0)[0])  # >= 1 because difference[0] == -1
    before = after - 1
    fraction = difference[after] / (difference[after] - difference[before])
    eer = curve.p_miss[after] + fraction * (curve.p_miss[before] - curve.p_miss[after])
    return float(eer), float(curve.thresholds[after])


def min_dcf(curve: DetCurve, p_target: float, c_miss: float = 1.0, c_fa: float = 1.0) -> Tuple[float, float]:
    """Normalised minimum detection cost and the threshold that reaches it."""
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"p_target must lie strictly between 0 and 1, got {p_target}")
    cost = c_miss * curve.p_miss * p_target + c_fa * curve.p_fa * (1.0 - p_target)
    best = int(np.argmin(cost))
    default_cost = min(c_miss * p_target, c_fa * (1.0 - p_target))
    return float(cost[best] / default_cost), float(curve.thresholds[best])


@dataclasses.dataclass
class VerificationResult:
    """EER (fraction) and minDCF per P_target of one score list."""

    eer: float
    eer_threshold: float
    min_dcf: Dict[float, float]
    num_targets: int
    num_nontargets: int
    c_miss: float = 1.0
    c_fa: float = 1.0

    def lines(self, name: str) -> List[str]:
        """WeSpeaker-style report lines (conventions §4.3)."""
        out = [f"---- {name} -----", f"EER = {100.0 * self.eer:.3f}"]
        for p_target, value in self.min_dcf.items():
            out.append(f"minDCF (p_target:{p_target:g} c_miss:{self.c_miss:g} c_fa:{self.c_fa:g}) = {value:.3f}")
        return out


def evaluate_curve(curve: DetCurve, num_targets: int, num_nontargets: int,
                   p_targets: Sequence[float] = (0.01, 0.05), c_miss: float = 1.0, c_fa: float = 1.0
                   ) -> VerificationResult:
    eer, threshold = equal_error_rate(curve)
    dcfs = {float(p): min_dcf(curve, p, c_miss, c_fa)[0] for p in p_targets}
    return VerificationResult(eer=eer, eer_threshold=threshold, min_dcf=dcfs, num_targets=num_targets,
                              num_nontargets=num_nontargets, c_miss=c_miss, c_fa=c_fa)


def evaluate(scores: Sequence[float], is_target: Sequence[bool], p_targets: Sequence[float] = (0.01, 0.05),
             c_miss: float = 1.0, c_fa: float = 1.0) -> VerificationResult:
    """EER and minDCF at each P_target of scores ``[M]`` with target flags ``[M]``."""
    labels = np.asarray(is_target, dtype=bool)
    return evaluate_curve(det_curve(scores, labels), int(labels.sum()), int((~labels).sum()), p_targets, c_miss, c_fa)


def sv_results_table(rows: Sequence[Tuple[str, VerificationResult]]) -> str:
    """A Markdown table for RESULTS.md: trial list, #trials, EER %, one minDCF column per P_target."""
    p_targets = list(rows[0][1].min_dcf) if rows else []
    header = "|trials|#target|#nontarget|EER (%)|" + "".join(f"minDCF (p={p:g})|" for p in p_targets)
    rule = "|---" * (4 + len(p_targets)) + "|"
    lines = [header, rule]
    for name, result in rows:
        cells = [name, str(result.num_targets), str(result.num_nontargets), f"{100.0 * result.eer:.3f}"]
        cells += [f"{result.min_dcf[p]:.3f}" for p in p_targets]
        lines.append("|" + "|".join(cells) + "|")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------
# Files


@dataclasses.dataclass(frozen=True)
class Trial:
    enroll: str
    test: str
    is_target: bool
    line: int


def _read_lines(path: PathLike, what: str) -> List[Tuple[int, List[str]]]:
    path = Path(path)
    if not path.is_file():
        raise TrialsError(f"{path}: {what} file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TrialsError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start}). Fix: re-encode it as UTF-8") \
            from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if fields:
            rows.append((number, fields))
    return rows


def read_trials(path: PathLike) -> List[Trial]:
    """Read a trial list in Kaldi/WeSpeaker form (``enroll test target|nontarget``) or in the
    official VoxCeleb form (``1|0 enroll test``). A duplicated pair is an error."""
    trials: List[Trial] = []
    seen: Dict[Tuple[str, str], int] = {}
    for number, fields in _read_lines(path, "trials"):
        if len(fields) != 3:
            raise TrialsError(f"{path}:{number}: expected 3 fields ('enroll test target|nontarget' or "
                              f"'1|0 enroll test'), found {len(fields)}")
        if fields[2] in (TARGET, NONTARGET):
            enroll, test, is_target = fields[0], fields[1], fields[2] == TARGET
        elif fields[0] in ("0", "1"):
            enroll, test, is_target = fields[1], fields[2], fields[0] == "1"
        else:
            raise TrialsError(f"{path}:{number}: cannot tell the label: the last field must be 'target' or "
                              f"'nontarget', or the first field 1 or 0; found '{' '.join(fields)}'")
        pair = (enroll, test)
        if pair in seen:
            raise TrialsError(f"{path}:{number}: trial '{enroll} {test}' repeats line {seen[pair]}. "
                              "Fix: remove the duplicate")
        seen[pair] = number
        trials.append(Trial(enroll, test, is_target, number))
    if not trials:
        raise TrialsError(f"{path}: the trial list is empty")
    return trials


def read_scores(path: PathLike) -> Dict[Tuple[str, str], Tuple[float, Optional[bool], int]]:
    """Read ``enroll test score [target|nontarget [more columns]]`` lines.

    This covers Kaldi score files (3 columns), WeSpeaker/our ``score_trials`` output (4) and
    score-normalised files (8). Returns ``(enroll, test) -> (score, label or None, line)``.
    """
    scores: Dict[Tuple[str, str], Tuple[float, Optional[bool], int]] = {}
    for number, fields in _read_lines(path, "scores"):
        if len(fields) < 3:
            raise TrialsError(f"{path}:{number}: expected 'enroll test score [label]', found "
                              f"'{' '.join(fields)}'")
        try:
            value = float(fields[2])
        except ValueError:
            raise TrialsError(f"{path}:{number}: the score '{fields[2]}' is not a number") from None
        if not np.isfinite(value):
            raise TrialsError(f"{path}:{number}: trial '{fields[0]} {fields[1]}' has the score '{fields[2]}', which "
                              "is not a finite number. Fix: the embedding of one of the two utterances is NaN or "
                              "infinite (check the embeddings or the scoring that wrote this file, and score again)")
        label: Optional[bool] = None
        if len(fields) >= 4:
            if fields[3] not in (TARGET, NONTARGET):
                raise TrialsError(f"{path}:{number}: the 4th field must be 'target' or 'nontarget', found "
                                  f"'{fields[3]}'")
            label = fields[3] == TARGET
        pair = (fields[0], fields[1])
        if pair in scores:
            raise TrialsError(f"{path}:{number}: pair '{fields[0]} {fields[1]}' repeats line {scores[pair][2]}. "
                              "Fix: score every trial once")
        scores[pair] = (value, label, number)
    return scores


def join_scores(trials: Sequence[Trial], scores: Dict[Tuple[str, str], Tuple[float, Optional[bool], int]],
                trials_path: PathLike = "trials", scores_path: PathLike = "scores"
                ) -> Tuple[np.ndarray, np.ndarray, int]:
    """Scores and labels in trial order. A trial without a score is an error naming the pair;
    a score whose label column contradicts the trial list is an error. Returns the number of
    scored pairs that are not in the trial list as the third value (they are ignored)."""
    values = np.empty(len(trials), dtype=np.float64)
    labels = np.empty(len(trials), dtype=bool)
    unscored = [t for t in trials if (t.enroll, t.test) not in scores]
    if unscored:
        first = unscored[0]
        raise TrialsError(f"{trials_path}:{first.line}: trial '{first.enroll} {first.test}' has no score in "
                          f"{scores_path} ({len(unscored)} of {len(trials)} trials have none). Fix: score the whole "
                          "trial list, or pass the trial list the scores were made from")
    for index, trial in enumerate(trials):
        value, label, line = scores[(trial.enroll, trial.test)]
        if label is not None and label != trial.is_target:
            raise TrialsError(f"{scores_path}:{line}: pair '{trial.enroll} {trial.test}' is labelled "
                              f"{TARGET if label else NONTARGET} but {trials_path}:{trial.line} says "
                              f"{TARGET if trial.is_target else NONTARGET}. Fix: use the trial list the scores "
                              "were made from")
        values[index] = value
        labels[index] = trial.is_target
    trial_pairs = {(t.enroll, t.test) for t in trials}
    extra = sum(1 for pair in scores if pair not in trial_pairs)
    return values, labels, extra


def probit(p: np.ndarray, floor: float = 1e-6) -> np.ndarray:
    """Inverse standard-normal CDF (the DET axis warp) of probabilities clipped to [floor, 1-floor]."""
    clipped = np.clip(np.asarray(p, dtype=np.float64), floor, 1.0 - floor)
    return np.vectorize(_STANDARD_NORMAL.inv_cdf, otypes=[np.float64])(clipped)


DET_TICKS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.99)


def det_axis_range(eers: Sequence[float]) -> Tuple[float, float]:
    """Error-rate range ``(low, high)`` of both DET axes for curves with these EERs (fractions).

    0.05 % to 50 %, the usual view, when every EER is at most 10 %; otherwise up to 99 %, because
    a weak system (EER of 20-45 %) has most of its curve above 50 % miss or false-alarm rate and
    would be cut off right around its EER.
    """
    return (0.0005, 0.5 if max(eers, default=0.0) <= 0.1 else 0.99)


def plot_det(curves: Sequence[Tuple[str, DetCurve]], out_png: PathLike, title: Optional[str] = None
             ) -> Tuple[float, float]:
    """Draw DET curves (probit-warped P_fa vs P_miss, EER marked) into a PNG, atomically; the axes
    span ``det_axis_range`` of the curves' EERs. Returns the (low, high) error rates the axes span,
    read back from the drawn figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 5.5), dpi=100)
    try:
        eers = []
        for name, curve in curves:
            eer, _ = equal_error_rate(curve)
            eers.append(eer)
            line, = axis.plot(probit(curve.p_fa), probit(curve.p_miss), label=f"{name} (EER {100 * eer:.2f}%)")
            axis.plot(probit(np.array([eer])), probit(np.array([eer])), "o", color=line.get_color())
        low, high = det_axis_range(eers)
        # the wide view compresses the low rates: drop 0.2 % and 0.5 % there so that labels do not overlap
        ticks = np.array([t for t in DET_TICKS if low <= t <= high and (high <= 0.5 or t not in (0.002, 0.005))])
        positions = probit(ticks)
        labels = [f"{100 * t:g}" for t in ticks]
        axis.set_xticks(positions, labels)
        axis.set_yticks(positions, labels)
        limits = probit(np.array([low, high]))
        axis.set_xlim(*limits)
        axis.set_ylim(*limits)
        axis.plot(limits, limits, ":", color="gray", linewidth=0.8)
        axis.set_xlabel("false-alarm rate (%)")
        axis.set_ylabel("miss rate (%)")
        if title:
            axis.set_title(title)
        axis.grid(True, linewidth=0.5)
        axis.legend(loc="upper right", fontsize=8)
        out_png = Path(out_png)
        out_png.parent.mkdir(parents=True, exist_ok=True)
        temporary = out_png.with_name(f".{out_png.name}.tmp.png")
        figure.savefig(temporary, format="png")
        temporary.replace(out_png)
        drawn = _STANDARD_NORMAL.cdf(axis.get_xlim()[0]), _STANDARD_NORMAL.cdf(axis.get_xlim()[1])
        return float(drawn[0]), float(drawn[1])
    finally:
        plt.close(figure)


def evaluate_files(scores_path: PathLike, trials_path: PathLike, p_targets: Sequence[float] = (0.01, 0.05),
                   c_miss: float = 1.0, c_fa: float = 1.0) -> Tuple[VerificationResult, DetCurve, int]:
    """Join a score file with its trial list and evaluate; returns (result, curve, #extra scores)."""
    trials = read_trials(trials_path)
    values, labels, extra = join_scores(trials, read_scores(scores_path), trials_path, scores_path)
    curve = det_curve(values, labels)
    result = evaluate_curve(curve, int(labels.sum()), int((~labels).sum()), p_targets, c_miss, c_fa)
    return result, curve, extra


__all__ = ["DET_TICKS", "DetCurve", "Trial", "TrialsError", "VerificationResult", "det_axis_range", "det_curve",
           "equal_error_rate", "evaluate", "evaluate_curve", "evaluate_files", "join_scores", "min_dcf", "plot_det",
           "probit", "read_scores", "read_trials", "sv_results_table"]
