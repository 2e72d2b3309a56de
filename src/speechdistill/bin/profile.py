"""Parameters, MACs per second of audio and measured forward speed of a model, as JSON.

--model is a student preset (conf/students/<name>.yaml, or a path to such a YAML), a teacher
architecture (hubert_base, wav2vec2_large, wavlm_base, ...) or a model path (our model
directory, a Hugging Face directory, a fairseq / s3prl checkpoint). Presets and architectures
get random weights. MACs are counted analytically from the module shapes (attention products
included); speed is the median of --repeats timed forward passes after --warmup passes.

--table prints the README table of every student preset: parameters, MACs per audio second
and CPU time relative to our HuBERT Base, all measured round-robin in one process. On a CPU it
also exports every model to ONNX (float32, and int8 by onnxruntime's dynamic quantization) and
times both graphs in onnxruntime in turn with our PyTorch float32 forward of the same model, as
audio-s/s and as a multiple of that forward's speed; the int8 column's accuracy is the cosine similarity of each
hidden state to the float32 model on held-out audio (--check-data, else synthetic speech-like
signals), and the float32 graph is checked against PyTorch (JSON rows in the log). --no-onnx
leaves these columns out.

Examples:
    python -m speechdistill.bin.profile --model hubert_base --seconds 10 --batch 4 --threads 2
    python -m speechdistill.bin.profile --table --batch 4 --seconds 10 --threads 2 --log exp/profile.log
    python -m speechdistill.bin.profile --table --no-onnx --presets distilhubert armhubert_s
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import List, Optional


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m speechdistill.bin.profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="preset name / YAML, architecture name, or model path")
    parser.add_argument("--table", action="store_true", help="print the markdown table of all student presets")
    parser.add_argument("--reference", default="hubert_base", help="model the --table speed ratios are relative to")
    parser.add_argument("--presets", nargs="+", default=None, help="--table rows (default: every student preset)")
    parser.add_argument("--seconds", type=float, default=10.0, help="utterance length in seconds (default 10)")
    parser.add_argument("--batch", type=int, default=1, help="utterances per forward pass (default 1)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=3, help="timed forward passes (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed forward passes first (default 1)")
    parser.add_argument("--bf16", action="store_true", help="time under bfloat16 autocast")
    parser.add_argument("--no-speed", "--no_speed", dest="no_speed", action="store_true",
                        help="only count parameters and MACs")
    parser.add_argument("--no-onnx", "--no_onnx", dest="onnx", action="store_false",
                        help="--table: leave out the onnxruntime fp32/int8 columns (no exports)")
    parser.add_argument("--check-data", "--check_data", dest="check_data", default=None,
                        help="--table: Kaldi data dir of held-out audio for the int8 cosine (default: synthetic)")
    parser.add_argument("--check-utts", "--check_utts", dest="check_utts", type=int, default=8,
                        help="utterances of --check-data to use (default 8, at most 10 s each)")
    parser.add_argument("--log", default=None, help="also write progress and results to this file")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.table and not args.model:
        print("profile: error: give --model NAME_OR_PATH or --table", file=sys.stderr)
        return 1
    if args.seconds <= 0 or args.batch < 1 or args.repeats < 1 or args.warmup < 0:
        print("profile: error: --seconds must be > 0, --batch and --repeats >= 1, --warmup >= 0", file=sys.stderr)
        return 1
    from speechdistill.train.logs import command_log_handlers

    try:
        handlers = command_log_handlers(args.log)
    except ValueError as exc:
        print(f"profile: error: {exc}", file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.INFO, format="%(asctime)s profile: %(message)s", handlers=handlers, force=True)
    log = logging.getLogger("speechdistill.profile")

    import torch
    from tqdm import tqdm

    from speechdistill.models import profiling
    from speechdistill.models.students import list_presets

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        device = torch.device(args.device)
        if args.table:
            presets = args.presets or list_presets()
            onnx = args.onnx and device.type == "cpu"
            if args.onnx and not onnx:
                log.info("onnxruntime columns are measured on a CPU only: leaving them out on %s", device)
            check_audio = []
            if onnx:
                from speechdistill.models.export_onnx import OnnxExportError, require
                from speechdistill.models.onnx_runtime import read_check_audio, synthetic_utterances
                try:  # (now, not after the PyTorch rounds of every model)
                    for package in ("onnx", "onnxscript", "onnxruntime"):
                        require(package)
                except OnnxExportError as exc:
                    raise ValueError(f"{exc}; or leave the onnxruntime columns out (--no-onnx)") from None
                check_audio = (read_check_audio(args.check_data, args.check_utts, 10.0) if args.check_data
                               else synthetic_utterances())
            total = (len(presets) + 1) * args.repeats * (4 if onnx else 1)  # (+ torch, fp32, int8 per model)
            exported = []

            def on_export(name: str) -> None:
                exported.append(name)
                log.info("exporting %s to ONNX (float32 and int8) and checking it on %d utterance(s) (%d/%d)",
                         name, len(check_audio), len(exported), len(presets) + 1)

            with tqdm(total=total, desc="forward passes", unit="pass", file=sys.stderr) as bar:
                audio = args.batch * args.seconds

                def step() -> None:
                    bar.update(1)
                    bar.set_postfix_str(f"{audio:g} audio s per pass")

                rows = profiling.student_table(presets, reference=args.reference, seconds=args.seconds,
                                               batch=args.batch, device=device, repeats=args.repeats,
                                               warmup=args.warmup, progress=step, onnx=onnx,
                                               check_audio=check_audio, on_export=on_export,
                                               on_row=lambda row: log.info("%s", json.dumps(row)))
            table = profiling.markdown_table(rows, seconds=args.seconds, batch=args.batch, device=str(device),
                                             threads=torch.get_num_threads())
            print(table)
            return 0
        model = profiling.resolve_model(args.model)
        log.info("profiling %s (%s), %s x %g s on %s", model.name, model.kind, args.batch, args.seconds, device)
        report = profiling.profile_report(model, seconds=args.seconds, batch=args.batch, device=device,
                                          repeats=args.repeats, warmup=args.warmup,
                                          measure_speed=not args.no_speed,
                                          autocast_dtype=torch.bfloat16 if args.bf16 else None)
    except ValueError as exc:
        print(f"profile: error: {exc}", file=sys.stderr)
        return 1
    text = json.dumps(report, indent=2)
    log.info("result: %s", json.dumps(report))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
