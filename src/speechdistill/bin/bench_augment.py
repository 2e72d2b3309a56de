"""Throughput of the training input path: read FLAC + random crop + noise + reverb, on one CPU thread.

    python -m speechdistill.bin.bench_augment                    # self-contained: makes its own data
    python -m speechdistill.bin.bench_augment --data-dir data/train --noise-dir data/musan_noise \\
        --rir-dir data/rirs --batch-size 16 --crop-seconds 4

Batches come from the project's own pipeline (AudioDataset: read + crop, collate_batch: pad),
then every utterance gets noise at 0-15 dB and a RIR (choice ``noise+reverb``) from banks
loaded once. Without data dirs it writes a temporary corpus (FLAC utterances of 6-16 s,
10-s noise recordings, 0.3-1 s RIRs). Prints real-time factors (audio seconds processed per
wall-clock second) for reading, for augmenting and for both, and for both per CPU-second the
process used (the per-core figure, which other jobs sharing the machine do not distort);
the target is >= 300x per core.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

import torch

from speechdistill.benchmark.input_path import make_bench_data, run_bench
from speechdistill.corpora.common import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m speechdistill.bin.bench_augment", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", "--data_dir", dest="data_dir", default=None,
                        help="data dir with wav.scp + utt2num_samples (default: a generated one)")
    parser.add_argument("--noise-dir", "--noise_dir", dest="noise_dir", default=None)
    parser.add_argument("--rir-dir", "--rir_dir", dest="rir_dir", default=None)
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=16)
    parser.add_argument("--crop-seconds", "--crop_seconds", dest="crop_seconds", type=float, default=4.0)
    parser.add_argument("--batches", type=int, default=20, help="timed batches (after one warm-up batch)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: per-core figure)")
    parser.add_argument("--device", default="cpu")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        torch.set_num_threads(args.threads)
        with tempfile.TemporaryDirectory(prefix="bench_augment.") as tmp:
            generated = make_bench_data(Path(tmp)) if not (args.data_dir and args.noise_dir and args.rir_dir) else {}
            data = Path(args.data_dir) if args.data_dir else generated["data"]
            noise = Path(args.noise_dir) if args.noise_dir else generated["noise"]
            rirs = Path(args.rir_dir) if args.rir_dir else generated["rirs"]
            run_bench(data, noise, rirs, batch_size=args.batch_size, crop_seconds=args.crop_seconds, batches=1,
                      device=args.device)  # warm-up: allocator, FFT plans
            result = run_bench(data, noise, rirs, batch_size=args.batch_size, crop_seconds=args.crop_seconds,
                               batches=args.batches, device=args.device)
        audio = result["audio"]
        total = result["read"] + result["augment"]
        print(f"bench_augment: {args.batches} batches x {args.batch_size} utterances, crops of "
              f"{args.crop_seconds:g} s, {audio:.0f} s of audio, {args.threads} thread(s), device {args.device}")
        print(f"  read FLAC + crop + pad : {audio / result['read']:8.0f}x real time")
        print(f"  noise + reverb         : {audio / result['augment']:8.0f}x real time")
        print(f"  all                    : {audio / total:8.0f}x real time")
        print(f"  all, per CPU core      : {audio / result['cpu']:8.0f}x real time "
              f"({result['cpu']:.2f} CPU-s for {total:.2f} s wall)")
        return 0

    return run_cli("bench_augment", body)


if __name__ == "__main__":
    sys.exit(main())
