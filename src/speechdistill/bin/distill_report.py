"""Teacher vs distilled student vs random student: RESULTS.md and PNGs (speechdistill.distill.report).

    python -m speechdistill.bin.distill_report --teacher exp/demo/teacher \
        --student exp/demo/distill_distilhubert/student --random-student exp/demo/distill_distilhubert/random_student \
        --distill-exp exp/demo/distill_distilhubert --data data/dev --out exp/demo \
        --asr-exp teacher=exp/demo/asr_teacher --asr-exp student=... --asr-exp "random student=..."

Writes <out>/RESULTS.md (parameters, MACs per audio second, CPU forward speed, held-out cosine
per target layer, ASR WER/CER), results.json, distill_loss.png, distill_cosine.png and
asr_layer_weights.png, then prints RESULTS.md. The run.sh stage that calls it is rerunnable: it
measures again (speed is a measurement, not a cached number).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional

from speechdistill.train.cli import run_main

ROWS = ("teacher", "student", "random student")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m speechdistill.bin.distill_report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="teacher model (stage 2's teacher dir)")
    parser.add_argument("--student", required=True, help="distilled student dir (<distill_exp>/student)")
    parser.add_argument("--random-student", "--random_student", dest="random_student", required=True,
                        help="random student dir (python -m speechdistill.bin.random_student)")
    parser.add_argument("--distill-exp", "--distill_exp", dest="distill_exp", required=True,
                        help="distillation run dir (config.yaml, metrics.jsonl)")
    parser.add_argument("--data", required=True, help="held-out data dir for the cosine similarity (data/dev)")
    parser.add_argument("--out", required=True, type=Path, help="where RESULTS.md and the PNGs go")
    parser.add_argument("--asr-exp", "--asr_exp", dest="asr_exp", action="append", default=[], metavar="ROW=DIR",
                        help=f"ASR experiment of a row ({', '.join(ROWS)}); repeat per row")
    parser.add_argument("--method", default="", help="title of the table (default: the distill exp name)")
    parser.add_argument("--max-seconds", "--max_seconds", dest="max_seconds", type=float, default=20.0,
                        help="the held-out similarity uses at most the first MAX seconds of each utterance, naming "
                             "each longer one in the log (default 20; 0 = whole utterances)")
    parser.add_argument("--speed-repeats", "--speed_repeats", dest="speed_repeats", type=int, default=3,
                        help="timed forward passes per model (default 3)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s distill_report: %(message)s", stream=sys.stderr)
    asr_exps = {}
    for item in args.asr_exp:
        name, sep, path = item.partition("=")
        if not sep or name not in ROWS:
            raise ValueError(f"--asr-exp '{item}': write ROW=DIR with ROW one of: {', '.join(ROWS)}")
        asr_exps[name] = path
    from speechdistill.distill.report import write_report

    path = write_report(teacher=args.teacher, student=args.student, random_student=args.random_student,
                        distill_exp=args.distill_exp, data_dir=args.data, out_dir=args.out, asr_exps=asr_exps,
                        method=args.method, speed_repeats=args.speed_repeats,
                        max_seconds=args.max_seconds if args.max_seconds > 0 else None)
    sys.stdout.write(path.read_text())
    print(f"distill_report: wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_main(main, prog="distill_report")
