r"""Dump an upstream's hidden states of a data dir (kaldiio ark/scp) for reuse by the ASR probe.

    python -m speechdistill.bin.dump_features --upstream exp/distill_distilhubert/student \
        --data data/train --out dump/distilhubert/train [--layers 0 1 2]

Then train on them with ``asr_train ... --train_features dump/distilhubert/train
--valid_features dump/distilhubert/dev`` (the upstream is still named: the model dir records it
and decoding runs it). Only the hidden states listed in ``--layers`` are stored (default: all);
the featurizer must read a subset of them. A rerun with the same upstream, layers and data does
nothing.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m speechdistill.bin.dump_features", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", required=True, help="model dir or checkpoint load_model reads")
    parser.add_argument("--data", required=True, help="data dir (wav.scp, utt2num_samples)")
    parser.add_argument("--out", required=True, help="output dir: feats.ark, feats.scp, feats_info.yaml")
    parser.add_argument("--layers", type=int, nargs="+", default=None,
                        help="hidden-state indices to store (0 = transformer input; negative from the end); "
                             "default all")
    parser.add_argument("--batch-seconds", type=float, default=200.0, help="seconds of padded audio per batch")
    parser.add_argument("--num-workers", type=int, default=1, help="audio loading processes")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="fp32",
                        help="autocast of the upstream (features are stored as float32 either way)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from speechdistill.asr.dump import dump_features

    try:
        result = dump_features(args.upstream, args.data, args.out, layers=args.layers,
                               batch_seconds=args.batch_seconds, num_workers=args.num_workers, device=args.device,
                               precision=args.precision)
    except ValueError as exc:
        print(f"dump_features: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    state = "is up to date" if result.up_to_date else "written"
    print(f"dump_features: {result.out_dir} {state}: {result.num_dumped} utterances"
          + (f", {len(result.skipped)} skipped (see skipped_utts.txt)" if result.skipped else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
