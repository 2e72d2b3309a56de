"""Export a model (student or teacher) to ONNX, optionally quantized to int8, and check it with onnxruntime.

MODEL is anything load_model reads (our model directory, a Hugging Face directory, a fairseq or s3prl
checkpoint). The graph takes ``wavs`` [batch, samples] float32 at 16 kHz (zero-padded) and ``lengths``
[batch] int64 (valid samples), batch and samples dynamic, and returns ``hidden_<i>`` [batch, frames, D]
for each of --layers (0 = transformer input, i = output of layer i; default all), ``frame_lengths``
[batch] and, with --heads, ``head_<t>`` for each target layer t of the heads saved with the model.

Before OUT is written, the graph runs in onnxruntime (CPU) on held-out audio (--check-data, a Kaldi
data dir, else synthetic signals), each utterance alone and in padded batches, against our PyTorch
model: float32 must agree within --tolerance (relative to the largest value), and for --int8 the
cosine similarity of every output to float32 is reported per output (mean and worst frame). The
result is printed as JSON.

Examples:
    python -m speechdistill.bin.export_onnx exp/distill_distilhubert/student exp/distilhubert.onnx
    python -m speechdistill.bin.export_onnx exp/armhubert_s/student exp/armhubert_s.int8.onnx --int8 \\
        --layers 0 4 8 12 --check-data data/dev_clean
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import List, Optional


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m speechdistill.bin.export_onnx", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="model directory or checkpoint load_model reads")
    parser.add_argument("out", help="ONNX file to write")
    parser.add_argument("--layers", nargs="+", type=int, default=None,
                        help="hidden-state indices to output (default: all, 0..L)")
    parser.add_argument("--heads", action="store_true",
                        help="also output the predictions of the heads saved with the model (head_<t>)")
    parser.add_argument("--int8", action="store_true",
                        help="quantize MatMul/Gemm weights to int8 (onnxruntime dynamic quantization)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--check-data", "--check_data", dest="check_data", default=None,
                        help="Kaldi data dir of held-out audio to check the graph on (default: synthetic)")
    parser.add_argument("--check-utts", "--check_utts", dest="check_utts", type=int, default=8,
                        help="utterances of --check-data to use (default 8)")
    parser.add_argument("--check-seconds", "--check_seconds", dest="check_seconds", type=float, default=10.0,
                        help="use at most this many seconds of each check utterance (default 10)")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="float32: largest allowed |onnx - pytorch| / max(1, largest |value|) (default 1e-4)")
    parser.add_argument("--no-check", "--no_check", dest="check", action="store_false",
                        help="write without running the check")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of torch and onnxruntime")
    parser.add_argument("--log", default=None, help="also write the progress messages to this file")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from speechdistill.train.logs import command_log_handlers

    try:
        handlers = command_log_handlers(args.log)
    except ValueError as exc:
        print(f"export_onnx: error: {exc}", file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.INFO, format="%(asctime)s export_onnx: %(message)s", handlers=handlers,
                        force=True)
    log = logging.getLogger("speechdistill.export_onnx")
    import tempfile

    import torch

    from speechdistill.models.checkpoints import detect_format, load_heads, load_model
    from speechdistill.data.tables import writable_output_file
    from speechdistill.models.export_onnx import export_onnx, require
    from speechdistill.models.onnx_runtime import OnnxModel, check_export, read_check_audio, synthetic_utterances

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    started = time.perf_counter()
    try:
        # What can fail without the model is checked before the export, which takes minutes for a teacher.
        writable_output_file(out, "model.onnx")
        if args.check and (args.check_utts < 1 or args.check_seconds <= 0):
            raise ValueError(f"--check-utts {args.check_utts} --check-seconds {args.check_seconds:g}: the check needs "
                             "at least one utterance of some length (or --no-check)")
        if args.check or args.int8:
            require("onnxruntime")
        if args.check and args.check_data:
            utterances, source = read_check_audio(args.check_data, args.check_utts, args.check_seconds), \
                args.check_data
        elif args.check:
            utterances, source = synthetic_utterances(), "synthetic"
        encoder = load_model(args.model)
        heads = None
        if args.heads:
            heads = load_heads(args.model) if detect_format(args.model) == "ours" else None
            if heads is None:
                raise ValueError(f"{args.model}: --heads given but no heads are saved with this model "
                                 "(heads.safetensors of our model directory); drop --heads")
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=str(out.parent)) as tmp:
            staged = Path(tmp) / out.name
            log.info("exporting %s (%d layers%s) with torch.export%s", args.model, encoder.config.num_layers,
                     ", heads" if heads is not None else "", " and quantizing to int8" if args.int8 else "")
            export = export_onnx(encoder, staged, layers=args.layers, heads=heads, int8=args.int8, opset=args.opset)
            log.info("graph written (%.1f s): outputs %s", time.perf_counter() - started, ", ".join(export.outputs))
            summary = {"out": str(out), "model": args.model, "int8": args.int8, "layers": export.layers,
                       "heads": export.heads, "inputs": {"wavs": "[batch, samples] float32, 16 kHz",
                                                         "lengths": "[batch] int64, valid samples"},
                       "outputs": export.outputs, "min_samples": export.min_samples}
            if args.check:
                log.info("checking against our PyTorch model on %d utterance(s) (%s), alone and batched",
                         len(utterances), source)
                result = check_export(encoder, OnnxModel(staged, threads=args.threads), utterances, heads=heads)
                relative = result.relative()
                summary["check"] = {"audio": source, "utterances": len(utterances),
                                    "frame_lengths_equal": result.lengths_equal,
                                    "max_abs_diff": result.max_abs, "relative_diff": relative,
                                    "cosine_mean": result.mean_cosine, "cosine_min_frame": result.min_cosine}
                if not result.lengths_equal:
                    raise RuntimeError("the graph's frame_lengths differ from the model's")
                if not args.int8 and max(relative.values()) > args.tolerance:
                    worst = max(relative, key=relative.get)
                    raise RuntimeError(f"float32 graph differs from the PyTorch model: {worst} by {relative[worst]:.3g} "
                                       f"(relative), more than --tolerance {args.tolerance:g}; {out} not written")
                if args.int8 and min(result.mean_cosine.values()) < 0.99:
                    worst = min(result.mean_cosine, key=result.mean_cosine.get)
                    log.warning("int8: %s has a mean cosine of %.4f to float32 (< 0.99): check the downstream "
                                "task on it, or exclude it (--layers) or use float32", worst,
                                result.mean_cosine[worst])
            staged.replace(out)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"export_onnx: error: {' '.join(str(exc).split())[:2000]}", file=sys.stderr)
        return 1
    log.info("wrote %s in %.1f s", out, time.perf_counter() - started)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
