"""Write the demo version of a distillation method config (and of its next stages).

    python -m speechdistill.bin.demo_config --config conf/distilhubert.yaml --teacher exp/demo/teacher \
        --overlay conf/demo/distill.yaml --out exp/demo/conf

The student is sized to --teacher (any model load_model reads) and the schedule comes from
--overlay (trainer keys); the method's composition is kept (speechdistill.distill.demo).
Prints the path to pass as --distill_config / distill_train --config.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from speechdistill.train.cli import run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m speechdistill.bin.demo_config", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="method config, e.g. conf/distilhubert.yaml")
    parser.add_argument("--teacher", required=True, help="the teacher the student is sized to (model dir, HF dir, ...)")
    parser.add_argument("--overlay", type=Path, required=True, help="YAML of trainer keys that replace the method's")
    parser.add_argument("--out", type=Path, required=True, help="directory the derived configs are written to")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from speechdistill.distill.demo import write_demo_configs
    from speechdistill.models import load_model

    teacher = load_model(args.teacher).config
    written = write_demo_configs(args.config, teacher, args.overlay, args.out)
    print(f"demo_config: {args.config} -> {', '.join(map(str, written))}", file=sys.stderr)
    print(written[0])
    return 0


if __name__ == "__main__":
    run_main(main, prog="demo_config")
