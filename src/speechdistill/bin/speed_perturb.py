"""Speed-perturb a data dir (Kaldi naming: sp0.9-<utt>, sp0.9-<spk>), writing the audio as FLAC.

    python -m speechdistill.bin.speed_perturb --factors "0.9 1.0 1.1" data/train data/train_sp

Every factor other than 1.0 is materialised with our band-limited resampler (no sox) under
--audio-dir (default: <dst>_audio/sp<f>/), in parallel; a rerun keeps audio files that are
already complete. The data dir gets utt2uniq (new id -> original id), utt2num_samples and
utt2dur of the perturbed audio (the original's divided by the factor), text and spk2gender
carried over, and bad_utts for utterances whose audio could not be read. Factor 1.0 keeps
the original utterances with their original ids.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from speechdistill.augment.speed import speed_perturb
from speechdistill.corpora.common import run_cli, setup_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m speechdistill.bin.speed_perturb", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--factors", default="0.9 1.0 1.1",
                        help="speed factors, space-separated (default: '0.9 1.0 1.1')")
    parser.add_argument("--audio-dir", "--audio_dir", dest="audio_dir", default=None,
                        help="where perturbed audio goes (default: <dst>_audio)")
    parser.add_argument("--nj", type=int, default=2, help="parallel processes (default: 2)")
    parser.add_argument("--log", default=None, help="log file (default: <dst>/../log/speed_perturb.<name>.log)")
    parser.add_argument("src", help="source data dir")
    parser.add_argument("dst", help="output data dir")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        try:
            factors = [float(f) for f in args.factors.split()]
        except ValueError:
            raise ValueError(f"--factors '{args.factors}': expected numbers separated by spaces, e.g. '0.9 1.0 1.1'")
        dst = Path(args.dst)
        setup_logging(args.log or dst.parent / "log" / f"speed_perturb.{dst.name}.log")
        counts = speed_perturb(args.src, args.dst, factors, audio_dir=args.audio_dir, nj=args.nj)
        print(f"{args.dst}: {counts['utterances']} utterances at speeds {args.factors}, "
              f"{counts['bad_utts']} unreadable (listed in {dst / 'bad_utts'})")
        return 0

    return run_cli("speed_perturb", body)


if __name__ == "__main__":
    sys.exit(main())
