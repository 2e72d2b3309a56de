"""Word and character error rates with per-utterance Levenshtein alignments.

Scoring follows Kaldi's ``compute-wer`` arithmetic (unit costs: every substitution,
deletion and insertion is one error) and writes per-utterance alignments in the manner of
sclite's ``result.txt`` (``REF:`` / ``HYP:`` / ``Eval:`` rows, ``*`` filling the side a word
is missing from). Tokens are compared exactly as written: no case folding and no
punctuation removal, so normalise both texts the same way before scoring.

Units:

* ``word``: whitespace-separated tokens of the transcript.
* ``char``: the characters of the transcript with its words re-joined by single spaces; the
  space between two words is a token of its own (shown as ``<space>`` in alignments), as in
  ESPnet's ``score_cer`` and in jiwer's ``cer``.

Utterances of the reference that have no hypothesis line are scored against an empty
hypothesis (all their tokens are deletions) and listed; hypothesis lines without a reference
are not scored and are listed.
"""
from __future__ import annotations

import dataclasses
import math
import unicodedata
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..data.tables import DataDirError, read_table

CORRECT, SUBSTITUTION, DELETION, INSERTION = "C", "S", "D", "I"
SPACE_TOKEN = "<space>"
UNITS = ("word", "char")


class ScoringError(ValueError):
    """Inputs that cannot be scored; the message names the file or key and the fix."""


@dataclasses.dataclass(frozen=True)
class AlignedToken:
    """One column of an alignment: ``op`` is C, S, D or I; the missing side is ``None``."""

    op: str
    ref: Optional[str]
    hyp: Optional[str]


def _edit_distance_matrix(ref_ids: np.ndarray, hyp_ids: np.ndarray) -> np.ndarray:
    """Full Levenshtein matrix ``d[i, j]`` = edits between ``ref[:i]`` and ``hyp[:j]``.

    Each row is computed with numpy: ``d[i, j] = min(best_from_row_above[j], d[i, j-1] + 1)``
    unrolls to ``min_k<=j (best_from_row_above[k] + j - k)``, a running minimum of
    ``best_from_row_above - j`` -- so the only Python loop is over reference tokens.
    """
    num_ref, num_hyp = len(ref_ids), len(hyp_ids)
    d = np.empty((num_ref + 1, num_hyp + 1), dtype=np.int64)
    columns = np.arange(num_hyp + 1)
    d[0] = columns
    for i in range(1, num_ref + 1):
        best = np.empty(num_hyp + 1, dtype=np.int64)
        best[0] = i
        best[1:] = np.minimum(d[i - 1, :-1] + (hyp_ids != ref_ids[i - 1]), d[i - 1, 1:] + 1)
        d[i] = np.minimum.accumulate(best - columns) + columns
    return d


def align(ref: Sequence[str], hyp: Sequence[str]) -> List[AlignedToken]:
    """Minimum-edit alignment of two token sequences (unit costs).

    Several alignments can have the same number of errors and differ in how they split it
    into S, D and I. Ties are broken as rapidfuzz (and so jiwer) breaks them, so that counts
    can be checked against jiwer exactly: a common prefix and suffix are matched first; the
    rest is traced back from the end, taking a deletion whenever the cell above is one edit
    cheaper, otherwise an insertion when, one hypothesis token to the left, the cell is
    strictly cheaper than the cell above it, otherwise the diagonal (match or substitution).
    """
    ref, hyp = list(ref), list(hyp)
    prefix = 0
    while prefix < len(ref) and prefix < len(hyp) and ref[prefix] == hyp[prefix]:
        prefix += 1
    suffix = 0
    while (suffix < len(ref) - prefix and suffix < len(hyp) - prefix
           and ref[len(ref) - 1 - suffix] == hyp[len(hyp) - 1 - suffix]):
        suffix += 1
    mid_ref = ref[prefix:len(ref) - suffix]
    mid_hyp = hyp[prefix:len(hyp) - suffix]

    vocabulary: Dict[str, int] = {}
    ref_ids = np.array([vocabulary.setdefault(t, len(vocabulary)) for t in mid_ref], dtype=np.int64)
    hyp_ids = np.array([vocabulary.setdefault(t, len(vocabulary)) for t in mid_hyp], dtype=np.int64)
    d = _edit_distance_matrix(ref_ids, hyp_ids)

    middle: List[AlignedToken] = []
    i, j = len(mid_ref), len(mid_hyp)
    while i > 0 and j > 0:
        if d[i, j] - d[i - 1, j] == 1:
            i -= 1
            middle.append(AlignedToken(DELETION, mid_ref[i], None))
            continue
        j -= 1
        if j > 0 and d[i, j] - d[i - 1, j] == -1:
            middle.append(AlignedToken(INSERTION, None, mid_hyp[j]))
            continue
        i -= 1
        op = CORRECT if mid_ref[i] == mid_hyp[j] else SUBSTITUTION
        middle.append(AlignedToken(op, mid_ref[i], mid_hyp[j]))
    while i > 0:
        i -= 1
        middle.append(AlignedToken(DELETION, mid_ref[i], None))
    while j > 0:
        j -= 1
        middle.append(AlignedToken(INSERTION, None, mid_hyp[j]))
    middle.reverse()

    head = [AlignedToken(CORRECT, t, t) for t in ref[:prefix]]
    tail = [AlignedToken(CORRECT, t, t) for t in ref[len(ref) - suffix:]]
    return head + middle + tail


def tokenize(text: str, unit: str) -> List[str]:
    """Split a transcript into scoring tokens (see the module docstring for ``unit``)."""
    words = text.split()
    if unit == "word":
        return words
    if unit == "char":
        tokens: List[str] = []
        for index, word in enumerate(words):
            if index:
                tokens.append(SPACE_TOKEN)
            tokens.extend(word)
        return tokens
    raise ValueError(f"unknown scoring unit '{unit}'; expected one of {UNITS}")


@dataclasses.dataclass
class UtteranceScore:
    """Alignment and counts of one utterance (``missing``: it had no hypothesis line)."""

    key: str
    alignment: List[AlignedToken]
    missing: bool = False

    def count(self, op: str) -> int:
        return sum(1 for column in self.alignment if column.op == op)

    @property
    def num_ref(self) -> int:
        return sum(1 for column in self.alignment if column.op != INSERTION)

    @property
    def errors(self) -> int:
        return sum(1 for column in self.alignment if column.op != CORRECT)


def _display_width(text: str) -> int:
    """Terminal columns ``text`` occupies (East Asian wide characters take two)."""
    width = 0
    for char in text:
        if unicodedata.combining(char):
            continue
        width += 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
    return width


def _pad(text: str, width: int) -> str:
    return text + " " * (width - _display_width(text))


def format_alignment(score: UtteranceScore) -> str:
    """sclite-style block: ``id:``, ``Scores: (#C #S #D #I)``, ``REF:``, ``HYP:``, ``Eval:``."""
    ref_cells, hyp_cells, eval_cells = [], [], []
    for column in score.alignment:
        ref = column.ref if column.ref is not None else ""
        hyp = column.hyp if column.hyp is not None else ""
        width = max(_display_width(ref), _display_width(hyp), 1)
        ref_cells.append(_pad(ref, width) if column.ref is not None else "*" * width)
        hyp_cells.append(_pad(hyp, width) if column.hyp is not None else "*" * width)
        eval_cells.append(_pad("" if column.op == CORRECT else column.op, width))
    counts = " ".join(str(score.count(op)) for op in (CORRECT, SUBSTITUTION, DELETION, INSERTION))
    lines = [f"id: ({score.key})" + ("  [no hypothesis: scored as all deletions]" if score.missing else ""),
             f"Scores: (#C #S #D #I) {counts}",
             ("REF:  " + " ".join(ref_cells)).rstrip(),
             ("HYP:  " + " ".join(hyp_cells)).rstrip(),
             ("Eval: " + " ".join(eval_cells)).rstrip()]
    return "\n".join(lines) + "\n"


@dataclasses.dataclass
class ErrorReport:
    """Scores of one hypothesis set against one reference set.

    ``utterances`` are in reference order; ``missing`` lists reference keys without a
    hypothesis (scored as all deletions); ``extra`` lists hypothesis keys without a reference
    (not scored).
    """

    unit: str
    utterances: List[UtteranceScore]
    missing: List[str]
    extra: List[str]

    def _total(self, op: str) -> int:
        return sum(u.count(op) for u in self.utterances)

    @property
    def correct(self) -> int:
        return self._total(CORRECT)

    @property
    def substitutions(self) -> int:
        return self._total(SUBSTITUTION)

    @property
    def deletions(self) -> int:
        return self._total(DELETION)

    @property
    def insertions(self) -> int:
        return self._total(INSERTION)

    @property
    def num_ref(self) -> int:
        """Reference tokens (words, or characters for ``char``)."""
        return sum(u.num_ref for u in self.utterances)

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def sentence_errors(self) -> int:
        return sum(1 for u in self.utterances if u.errors)

    @property
    def error_rate(self) -> float:
        """Errors per reference token, in percent. With an empty reference set it is 0 when
        there are no errors and infinite otherwise (any insertion is infinitely many per word)."""
        if self.num_ref == 0:
            return 0.0 if self.errors == 0 else math.inf
        return 100.0 * self.errors / self.num_ref

    @property
    def sentence_error_rate(self) -> float:
        return 100.0 * self.sentence_errors / len(self.utterances) if self.utterances else 0.0

    @property
    def name(self) -> str:
        return "WER" if self.unit == "word" else "CER"

    def summary_line(self) -> str:
        """Kaldi ``compute-wer`` line: ``%WER 12.34 [ 10 / 81, 2 ins, 3 del, 5 sub ]``."""
        return (f"%{self.name} {self.error_rate:.2f} [ {self.errors} / {self.num_ref}, {self.insertions} ins, "
                f"{self.deletions} del, {self.substitutions} sub ]")

    def sentence_line(self) -> str:
        return f"%SER {self.sentence_error_rate:.2f} [ {self.sentence_errors} / {len(self.utterances)} ]"

    def scored_line(self) -> str:
        return f"Scored {len(self.utterances)} sentences, {len(self.missing)} not present in hyp."

    def notice_lines(self, max_keys: int = 10) -> List[str]:
        """Lines naming missing and extra utterances (empty when there are none)."""
        lines = []
        if self.missing:
            lines.append(f"{len(self.missing)} reference utterance(s) have no hypothesis and were scored as all "
                         f"deletions: {_key_list(self.missing, max_keys)}")
        if self.extra:
            lines.append(f"{len(self.extra)} hypothesis utterance(s) have no reference and were not scored: "
                         f"{_key_list(self.extra, max_keys)}")
        return lines

    def table_row(self, dataset: str) -> str:
        """RESULTS.md row ``|dataset|Snt|Wrd|Corr|Sub|Del|Ins|Err|S.Err|`` (percentages, 1 decimal)."""
        words = self.num_ref

        def percent(count: int) -> str:
            return f"{100.0 * count / words:.1f}" if words else ("0.0" if count == 0 else "inf")

        sentence_errors = f"{self.sentence_error_rate:.1f}"
        cells = [dataset, str(len(self.utterances)), str(words), percent(self.correct), percent(self.substitutions),
                 percent(self.deletions), percent(self.insertions), percent(self.errors), sentence_errors]
        return "|" + "|".join(cells) + "|"

    def result_txt(self, ref_path: Optional[str] = None, hyp_path: Optional[str] = None) -> str:
        """The whole report: summary lines, the table row, notices, then every alignment."""
        header = [f"speechdistill score_wer ({self.name}, unit: {self.unit})"]
        if ref_path is not None:
            header.append(f"REF: {ref_path}")
        if hyp_path is not None:
            header.append(f"HYP: {hyp_path}")
        header += ["", self.summary_line(), self.sentence_line(), self.scored_line(), "",
                   results_table_header(), self.table_row("all")]
        notices = self.notice_lines(max_keys=len(self.missing) + len(self.extra))
        if notices:
            header += [""] + notices
        body = "\n".join(format_alignment(u) for u in self.utterances)
        return "\n".join(header) + "\n\n" + body


def results_table_header() -> str:
    return "|dataset|Snt|Wrd|Corr|Sub|Del|Ins|Err|S.Err|\n|---|---|---|---|---|---|---|---|---|"


def results_table(rows: Sequence[Tuple[str, ErrorReport]]) -> str:
    """A Markdown table of ``(dataset name, report)`` rows for RESULTS.md."""
    return results_table_header() + "\n" + "\n".join(report.table_row(name) for name, report in rows) + "\n"


def _key_list(keys: Sequence[str], max_keys: int) -> str:
    shown = ", ".join(keys[:max_keys])
    return shown + (f", ... ({len(keys) - max_keys} more)" if len(keys) > max_keys else "")


def score(refs: Mapping[str, str], hyps: Mapping[str, str], unit: str = "word") -> ErrorReport:
    """Score ``hyps`` against ``refs`` (both ``key -> transcript``) in ``unit`` tokens."""
    if unit not in UNITS:
        raise ValueError(f"unknown scoring unit '{unit}'; expected one of {UNITS}")
    utterances, missing = [], []
    for key, ref_text in refs.items():
        hyp_text = hyps.get(key)
        if hyp_text is None:
            missing.append(key)
        alignment = align(tokenize(ref_text, unit), tokenize(hyp_text or "", unit))
        utterances.append(UtteranceScore(key, alignment, missing=hyp_text is None))
    extra = [key for key in hyps if key not in refs]
    return ErrorReport(unit=unit, utterances=utterances, missing=missing, extra=extra)


def read_transcripts(path: Union[str, Path]) -> Dict[str, str]:
    """Read a Kaldi ``text`` file (``<utt-id> <transcript>``); an empty transcript is allowed.

    Order is not checked (hypotheses come from decoders in any order); duplicates are errors.
    """
    try:
        return read_table(path, allow_empty_value=True, check_sorted=False)
    except DataDirError as exc:
        raise ScoringError(str(exc)) from None


def score_files(ref_path: Union[str, Path], hyp_path: Union[str, Path], unit: str = "word") -> ErrorReport:
    """Read two Kaldi ``text`` files and score them; an empty reference or hypothesis file, or two files
    without a common utterance id, is an error (a WER of 100 % would hide a wrong file)."""
    refs = read_transcripts(ref_path)
    if not refs:
        raise ScoringError(f"{ref_path}: the reference has no utterances. Fix: point --ref to the 'text' file of "
                           f"the test set")
    hyps = read_transcripts(hyp_path)
    if not hyps:
        raise ScoringError(f"{hyp_path}: the hypothesis file is empty: no utterance was decoded, so there is no "
                           "error rate to report. Fix: see the decoding log and skipped_utts.txt beside it, and decode "
                           "again")
    if refs.keys().isdisjoint(hyps):
        raise ScoringError(f"{hyp_path}: none of its {len(hyps)} utterance id(s) is in the reference {ref_path} "
                           f"({len(refs)} utterances; e.g. '{next(iter(hyps))}' vs '{next(iter(refs))}'). Fix: score "
                           "against the text of the data dir that was decoded")
    return score(refs, hyps, unit)
