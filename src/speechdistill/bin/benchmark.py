"""Throughput against peers and against the hardware limit, measured in one process.

    python -m speechdistill.bin.benchmark                          # CPU, every preset, < 5 min
    python -m speechdistill.bin.benchmark --device cuda --json exp/benchmark/h100.json
    python -m speechdistill.bin.benchmark --preset distilhubert --quick

Sections: 0. dense matmul FLOP/s per dtype (the peak every "fraction of peak" divides by);
1. teacher forward, HuBERT Base shape: ours fp32, ours under bf16/fp16 autocast (with the drift
of every hidden state), transformers' HubertModel on the same weights and input; 2. every
student preset's forward as a ratio of our teacher's; 3. one distillation update (teacher
forward + student forward/backward + AdamW) of every method preset in fp32 and in the fastest
precision (the trainer's --precision auto), plus an s3prl-style eager DistilHuBERT step (fp32,
eager attention, fixed-count padded batches) on the same utterances; 4. FLAC decode + crop +
collate and noise + reverb on one thread, as multiples of real time per CPU-second; 5. the
trainer's DataLoader with 2 worker processes on FLAC crops (audio-s/s) and the private memory a
forked worker gains by touching every item of a 1,000,000-utterance data dir. --section picks
some of them (e.g. --section data_loader).

Every figure is the median of --repeats runs after warm-up, with the compared runs interleaved,
so ratios hold on a busy machine; absolute figures need a quiet one (the load average is
recorded). Prints markdown tables and writes the JSON (--json) and a log beside it.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import List, Optional


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m speechdistill.bin.benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device to measure (default cpu)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                        help="precision compared with fp32 everywhere (default auto: bf16 (fp16 on a GPU without "
                             "bf16) for the matmul peak and the teacher forward, and for the students and steps "
                             "what the trainer's --precision auto picks on this device)")
    parser.add_argument("--preset", action="append", default=None, metavar="NAME",
                        help="only this student or method preset (repeatable; default: all)")
    parser.add_argument("--json", default="exp/benchmark/benchmark.json", metavar="OUT",
                        help="where to write the JSON result (default exp/benchmark/benchmark.json); the log goes "
                             "beside it as <OUT without .json>.log")
    parser.add_argument("--quick", action="store_true", help="tiny inputs and 2 repeats (tests; figures are rough)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs per figure (default 3, and 2 for the steps of the method presets other "
                             "than distilhubert; 5 on cuda)")
    parser.add_argument("--section", action="append", default=None, metavar="NAME",
                        help="only this section (repeatable): peak, teacher_forward, student_forward, distill_step, "
                             "data_pipeline, data_loader (default: all)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the student model of the distillation steps (GPU; slow to start)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.json)
    log_path = out.with_suffix(".log") if out.suffix == ".json" else Path(str(out) + ".log")

    def body() -> int:
        if args.repeats is not None and args.repeats < 1:
            raise ValueError(f"--repeats {args.repeats}: give at least 1")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        to_terminal = logging.StreamHandler(sys.stderr)
        to_terminal.setLevel(logging.WARNING)  # the terminal shows the progress bar, warnings and the table
        logging.basicConfig(level=logging.INFO, format="%(asctime)s benchmark: %(message)s", force=True,
                            handlers=[logging.FileHandler(log_path, mode="w"), to_terminal])
        import dataclasses

        import torch

        from speechdistill.benchmark import BenchmarkOptions, Sizes, format_report, run_benchmark
        from speechdistill.data.tables import atomic_write_text

        device = torch.device("cuda" if args.device == "cuda" else "cpu")
        sizes = Sizes.for_device(device, args.quick)
        if args.repeats is not None:
            sizes = dataclasses.replace(sizes, repeats=args.repeats, step_repeats=args.repeats,
                                        baseline_repeats=args.repeats)
        options = BenchmarkOptions(device=args.device, precision=args.precision, presets=args.preset,
                                   quick=args.quick, threads=args.threads, compile=args.compile, sizes=sizes,
                                   sections=args.section)
        logging.getLogger("speechdistill.benchmark").info("command: %s", " ".join(sys.argv))
        result = run_benchmark(options)
        result["meta"]["command"] = " ".join(sys.argv)
        atomic_write_text(out, json.dumps(result, indent=1) + "\n")
        table = format_report(result)
        logging.getLogger("speechdistill.benchmark").info("result table:\n%s", table)
        print(table)
        print(f"\nwrote {out} and {log_path}", file=sys.stderr)
        return 0

    from speechdistill.corpora.common import run_cli
    return run_cli("benchmark", body)


if __name__ == "__main__":
    sys.exit(main())
