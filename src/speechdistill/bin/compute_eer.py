"""EER and minDCF of a score file against its trial list, printed as WeSpeaker prints them.

Scores: ``enroll test score [target|nontarget ...]`` lines (Kaldi, WeSpeaker or score-norm
output). Trials: ``enroll test target|nontarget`` or the official ``1|0 enroll test``. Every
trial must have a score: a missing one is an error naming the pair. Output::

    ---- <scores file name> -----
    EER = 2.345
    minDCF (p_target:0.01 c_miss:1 c_fa:1) = 0.123
    minDCF (p_target:0.05 c_miss:1 c_fa:1) = 0.101
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from speechdistill.metrics.verification import evaluate_files, plot_det


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m speechdistill.bin.compute_eer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scores", required=True, help="score file")
    parser.add_argument("--trials", required=True, help="trial list the scores were made from")
    parser.add_argument("--p-target", "--p_target", dest="p_target", type=float, nargs="+", default=[0.01, 0.05],
                        help="target priors of the minDCF lines (default: 0.01 0.05)")
    parser.add_argument("--c-miss", "--c_miss", dest="c_miss", type=float, default=1.0, help="cost of a miss")
    parser.add_argument("--c-fa", "--c_fa", dest="c_fa", type=float, default=1.0, help="cost of a false alarm")
    parser.add_argument("--det-png", "--det_png", dest="det_png", default=None, metavar="OUT",
                        help="also draw the DET curve into this PNG")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result, curve, extra = evaluate_files(args.scores, args.trials, args.p_target, args.c_miss, args.c_fa)
        name = os.path.basename(args.scores)
        if args.det_png:
            plot_det([(name, curve)], args.det_png, title=os.path.basename(args.trials))
    except (ValueError, OSError) as exc:
        print(f"compute_eer: error: {exc}", file=sys.stderr)
        return 1
    for line in result.lines(name):
        print(line)
    if extra:
        print(f"compute_eer: note: {extra} scored pair(s) in {args.scores} are not in {args.trials} and were ignored",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
