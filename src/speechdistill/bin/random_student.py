"""Save a randomly initialised copy of a student: the same architecture and heads, fresh weights.

    python -m speechdistill.bin.random_student --student exp/distill_x/student --out exp/distill_x/random_student

The baseline a distilled student is compared with (stages 4-6 with --compare true): the weights
are what the encoder and heads constructors draw under --seed, nothing copied from a teacher.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from speechdistill.train.cli import run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m speechdistill.bin.random_student", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", type=Path, required=True, help="our model dir (a distilled student)")
    parser.add_argument("--out", type=Path, required=True, help="model dir to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initialisation (default 0)")
    parser.add_argument("--skip-if-current", "--skip_if_current", action="store_true",
                        help="do nothing when --out already holds a random student of this --seed written after "
                             "--student's weights (a rerun of the recipe stage)")
    return parser


def _is_current(out: Path, student: Path, seed: int) -> bool:
    """``out`` holds a random student drawn with ``seed``, written after ``student``'s weights."""
    from speechdistill.models.checkpoints import WEIGHTS_FILE, ModelFormatError, read_model_config

    written, source = out / WEIGHTS_FILE, student / WEIGHTS_FILE
    if not (written.is_file() and source.is_file()) or written.stat().st_mtime < source.stat().st_mtime:
        return False
    try:
        return (read_model_config(out).get("source") or {}).get("seed") == seed
    except ModelFormatError:
        return False


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from speechdistill.distill.report import save_random_student

    if args.skip_if_current and _is_current(args.out, args.student, args.seed):
        print(f"random_student: {args.out} (seed {args.seed}) is newer than {args.student}; kept", file=sys.stderr)
        return 0

    save_random_student(args.student, args.out, seed=args.seed)
    print(f"random_student: {args.out} (architecture of {args.student}, seed {args.seed})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_main(main, prog="random_student")
