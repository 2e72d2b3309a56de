r"""Evaluate a trained probe on a test data dir: predictions, then accuracy (KS, IC, SID) or PER (PR).

    python -m speechdistill.bin.probe_eval --probe-model exp/ks_student/probe_model --data data/ks_test \
        --output-dir exp/ks_student/eval/ks_test

Writes ``predictions`` (utt -> labels or phones), ``score.json`` (written last: its presence marks a
finished evaluation), ``skipped_utts.txt`` and, for PR, ``result.txt`` (alignments). Prints one
line: task, metric, value. An utterance without a prediction counts as wrong.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m speechdistill.bin.probe_eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probe-model", required=True, help="probe model dir (<probe exp>/probe_model)")
    parser.add_argument("--data", required=True, help="test data dir with the task's target file")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--upstream", default=None, help="upstream (default: the one recorded in the probe model)")
    parser.add_argument("--batch-seconds", type=float, default=200.0)
    parser.add_argument("--max-seconds", type=float, default=300.0,
                        help="read at most this much of an utterance (0 = whole)")
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="fp32")
    args = parser.parse_args(argv)
    from speechdistill.probe.evaluate import EvalOptions, evaluate_probe

    options = EvalOptions(batch_seconds=args.batch_seconds, max_seconds=args.max_seconds or None,
                          num_workers=args.num_workers, device=args.device, precision=args.precision)
    try:
        record = evaluate_probe(args.probe_model, args.data, args.output_dir, upstream=args.upstream, options=options)
    except (ValueError, OSError) as exc:
        print(f"probe_eval: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    name = "PER" if record["metric"] == "per" else "accuracy"
    print(f"probe_eval: {record['task']} {args.data}: {name} {record['value']:.2f} % ({record['errors']} errors / "
          f"{record['count']}; {record['skipped']} skipped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
