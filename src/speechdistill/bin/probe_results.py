r"""Collect the probes' scores into RESULTS.md: one row per upstream, every task's metric, and the published
SUPERB row of the same model below it.

    python -m speechdistill.bin.probe_results --exp-dir exp --out exp/RESULTS.md \
        --upstreams exp/teacher exp/distill_distilhubert/student --names teacher student \
        --published "HuBERT Base" auto

``--published``: per upstream, a model of speechdistill.probe.results.PUBLISHED, ``auto`` (guessed
from the path: a method preset or Hugging Face model name) or ``none``. Prints the table.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m speechdistill.bin.probe_results", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp-dir", required=True, help="dir searched for score.json files (probe_eval outputs)")
    parser.add_argument("--out", required=True, help="the RESULTS.md to write")
    parser.add_argument("--upstreams", nargs="*", default=[], help="row order (default: every upstream found)")
    parser.add_argument("--names", nargs="*", default=[], help="row names, one per upstream")
    parser.add_argument("--published", nargs="*", default=[], help="published model per upstream, auto or none")
    parser.add_argument("--note", action="append", default=[], help="a line for the notes (repeatable)")
    args = parser.parse_args(argv)
    from speechdistill.probe.results import write_results

    try:
        path = write_results(args.exp_dir, args.out, args.upstreams, args.names, args.published, args.note)
    except (ValueError, OSError) as exc:
        print(f"probe_results: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    print(path.read_text(encoding="utf-8"), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
