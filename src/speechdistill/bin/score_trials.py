"""Cosine scoring of a trial list from kaldiio xvector.scp embeddings, with optional
training-set mean subtraction and adaptive S-norm.

Every utterance of the trial list must have an embedding; that is checked before anything
is scored, and an error counts the missing ones. Output lines (WeSpeaker form)::

    <enroll> <test> <score, 5 decimals> target|nontarget

With ``--score-norm asnorm|snorm``, ``--norm-output`` receives the 8-column lines of
conventions §4.4: ``enroll test score label enroll_norm test_norm mean_e mean_t``. The cohort
is the per-speaker mean of ``--train-embeddings`` over ``--train-utt2spk``. A vector entry is
one embedding; a ``[1+S, D]`` matrix entry is a TTA set (row 0 the full utterance).
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from speechdistill.data.tables import DataDirError, atomic_write_text, read_table
from speechdistill.downstream.scoring import (adaptive_snorm, cosine_scores, load_embeddings, mean_embedding, prepare,
                                              speaker_mean_embeddings)
from speechdistill.metrics.verification import NONTARGET, TARGET, read_trials


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m speechdistill.bin.score_trials", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", required=True,
                        help="trial list: 'enroll test target|nontarget' or '1|0 enroll test'")
    parser.add_argument("--embeddings", required=True, help="xvector.scp of the evaluation utterances")
    parser.add_argument("--output", required=True, help="score file to write")
    parser.add_argument("--train-embeddings", "--train_embeddings", dest="train_embeddings", default=None,
                        help="xvector.scp of the training set (for --subtract-mean and the score-norm cohort)")
    parser.add_argument("--subtract-mean", "--subtract_mean", dest="subtract_mean", action="store_true",
                        help="subtract the mean training embedding from every embedding before scoring")
    parser.add_argument("--score-norm", "--score_norm", dest="score_norm", choices=["asnorm", "snorm"], default=None,
                        help="also write normalised scores: adaptive S-norm (top-N cohort) or S-norm (whole cohort)")
    parser.add_argument("--top-n", "--top_n", dest="top_n", type=int, default=300,
                        help="cohort size kept per utterance for asnorm (default 300)")
    parser.add_argument("--train-utt2spk", "--train_utt2spk", dest="train_utt2spk", default=None,
                        help="utt2spk of the training set: groups --train-embeddings into cohort speakers")
    parser.add_argument("--norm-output", "--norm_output", dest="norm_output", default=None,
                        help="file for the normalised 8-column scores (required with --score-norm)")
    return parser


def _check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if (args.subtract_mean or args.score_norm) and not args.train_embeddings:
        parser.error("--subtract-mean and --score-norm need --train-embeddings (the training set's xvector.scp)")
    if args.score_norm and not (args.train_utt2spk and args.norm_output):
        parser.error("--score-norm needs --train-utt2spk (to build the cohort) and --norm-output (where to write)")
    if args.top_n < 1:
        parser.error(f"--top-n must be at least 1, got {args.top_n}")


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_arguments(parser, args)
    try:
        trials = read_trials(args.trials)
        keys = [key for t in trials for key in (t.enroll, t.test)]
        evaluation = load_embeddings(args.embeddings, keys, progress=True)

        train = load_embeddings(args.train_embeddings, progress=True) if args.train_embeddings else None
        mean = mean_embedding(train) if (train is not None and args.subtract_mean) else None
        prepared = prepare(evaluation, mean)
        pairs = [(t.enroll, t.test) for t in trials]
        raw = cosine_scores(pairs, prepared)
        labels = [TARGET if t.is_target else NONTARGET for t in trials]
        atomic_write_text(args.output, "".join(f"{e} {t} {s:.5f} {label}\n"
                                               for (e, t), s, label in zip(pairs, raw, labels)))
        print(f"score_trials: wrote {len(pairs)} scores to {args.output}"
              + (" (training mean subtracted)" if mean is not None else ""), file=sys.stderr)

        if args.score_norm:
            try:
                utt2spk = read_table(args.train_utt2spk, nfields=2)
            except DataDirError as exc:
                raise ValueError(str(exc)) from None
            speakers, cohort, without_embedding = speaker_mean_embeddings(train, utt2spk)
            if without_embedding:
                print(f"score_trials: note: {len(without_embedding)} utterance(s) of {args.train_utt2spk} have no "
                      f"embedding in {args.train_embeddings} and are not in the cohort (e.g. {without_embedding[0]})",
                      file=sys.stderr)
            unassigned = sum(1 for key in train if key not in utt2spk)
            if unassigned:
                print(f"score_trials: note: {unassigned} embedding(s) of {args.train_embeddings} have no speaker in "
                      f"{args.train_utt2spk} and are not in the cohort", file=sys.stderr)
            if mean is not None:
                cohort = cohort - mean
            top_n = len(speakers) if args.score_norm == "snorm" else args.top_n
            if top_n > len(speakers):
                print(f"score_trials: note: --top-n {top_n} exceeds the cohort of {len(speakers)} speakers; using "
                      f"all {len(speakers)}", file=sys.stderr)
                top_n = len(speakers)
            norm = adaptive_snorm(pairs, raw, prepared, cohort, top_n)
            lines = [f"{e} {t} {s:.5f} {label} {me:.4f} {mt:.4f} {ue:.4f} {ut:.4f}\n"
                     for (e, t), s, label, me, mt, ue, ut in zip(pairs, norm.scores, labels, norm.enroll_magnitude,
                                                                 norm.test_magnitude, norm.enroll_cohort_mean,
                                                                 norm.test_cohort_mean)]
            atomic_write_text(args.norm_output, "".join(lines))
            print(f"score_trials: wrote {args.score_norm} scores (cohort {len(speakers)} speakers, top {top_n}) to "
                  f"{args.norm_output}", file=sys.stderr)
    except (ValueError, OSError) as exc:
        print(f"score_trials: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
