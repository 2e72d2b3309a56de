"""Print the configs a distillation method runs, one per line: the preset, then every ``next_stage`` after it.

    python -m speechdistill.bin.distill_chain conf/dphubert.yaml
    conf/dphubert.yaml
    conf/dphubert_final.yaml

The recipe's stage 3 runs them in this order, each from the student of the one before.
"""
from __future__ import annotations

import argparse
from typing import List, Optional

from speechdistill.train.cli import run_main


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m speechdistill.bin.distill_chain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="method preset, e.g. conf/dphubert.yaml")
    args = parser.parse_args(argv)
    from speechdistill.distill.config import config_chain

    for path in config_chain(args.config):
        print(path)
    return 0


if __name__ == "__main__":
    run_main(main, prog="distill_chain")
