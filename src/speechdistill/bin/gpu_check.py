"""Check the training path on one GPU (or, with --device cpu --quick, the same code at toy sizes).

    python -m speechdistill.bin.gpu_check [--out exp/gpu_check] [--device cuda|cpu] [--quick]

Runs DistilHuBERT distillation with a random HuBERT Base teacher on synthesized FLAC data: 60 updates
in the paper's precision (fp16 student, fp32 teacher) and 60 with --precision auto (bf16 on a GPU with
bf16), reporting audio-s/s, teacher audio-s/s, peak memory and the fraction of the measured matmul peak;
a torch.profiler pass over 5 updates (device idle fraction, synchronisations, top kernels); a
DataLoader worker sweep (2/4/8); SIGTERM at update 30, exit 99, resume, and the final student compared
bitwise with an uninterrupted run. Writes gpu_check.json and gpu_check.md (a markdown table) in --out.
Exit status 1 when a run fails or the resume check does not hold.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional

from speechdistill.train.cli import run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m speechdistill.bin.gpu_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("exp/gpu_check"), help="output dir (default exp/gpu_check)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="device to check (default cuda)")
    parser.add_argument("--quick", action="store_true", help="toy sizes (a tiny teacher, a few updates)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    import torch
    from speechdistill.benchmark.gpu_check import run_check

    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device cuda: torch {torch.__version__} sees no CUDA device; run on a GPU machine with a "
                         "CUDA build of torch, or pass --device cpu --quick to check the code path here")
    started = time.perf_counter()

    def progress(text: str) -> None:
        print(f"gpu_check [{time.perf_counter() - started:6.1f} s] {text}", file=sys.stderr, flush=True)

    result = run_check(args.out, torch.device(args.device), args.quick, progress)
    print((args.out / "gpu_check.md").read_text())
    progress(f"wrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'}")
    return 0 if result["resume"]["passed"] and all("error" not in r for r in result["distillation"]) else 1


if __name__ == "__main__":
    run_main(main, prog="gpu_check")
