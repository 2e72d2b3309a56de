"""Evaluation metrics: WER/CER with alignments (:mod:`.wer`), EER/minDCF and DET curves
(:mod:`.verification`)."""
from .verification import (DetCurve, Trial, TrialsError, VerificationResult, det_curve, equal_error_rate, evaluate,
                           evaluate_files, min_dcf, plot_det, read_scores, read_trials, sv_results_table)
from .wer import (AlignedToken, ErrorReport, ScoringError, UtteranceScore, align, read_transcripts, results_table,
                  score, score_files, tokenize)

__all__ = ["AlignedToken", "DetCurve", "ErrorReport", "ScoringError", "Trial", "TrialsError", "UtteranceScore",
           "VerificationResult", "align", "det_curve", "equal_error_rate", "evaluate", "evaluate_files", "min_dcf",
           "plot_det", "read_scores", "read_transcripts", "read_trials", "results_table", "score", "score_files",
           "sv_results_table", "tokenize"]
