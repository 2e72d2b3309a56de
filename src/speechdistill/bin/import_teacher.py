"""Check a teacher checkpoint and convert it into our model directory.

--src is a Hugging Face directory (HubertModel / Wav2Vec2Model / WavLMModel and their task
wrappers), a fairseq .pt (HuBERT, wav2vec 2.0, WavLM; fairseq need not be installed), an
s3prl converted checkpoint or one of our model directories. The format is detected; the
command prints what it found (format, architecture, shape, parameters, skipped keys) as JSON
and, with --out, writes config.yaml + model.safetensors there (atomically). A rerun with an
existing --out that came from the same source is a no-op unless --force is given.

Example:
    python -m speechdistill.bin.import_teacher --src downloads/hubert_base_ls960.pt --out exp/teachers/hubert_base
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import List, Optional


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m speechdistill.bin.import_teacher", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, help="teacher checkpoint file or directory")
    parser.add_argument("--out", default=None, help="write our model directory here (omit to only check)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from speechdistill.models.checkpoints import ModelFormatError, import_model, read_model_config, save_model

    src = os.path.abspath(args.src)
    if args.out and not args.force and (Path(args.out) / "model.safetensors").is_file():
        try:
            previous = (read_model_config(args.out).get("source") or {}).get("path")
        except ModelFormatError:
            previous = None
        if previous == src:
            print(json.dumps({"out": args.out, "status": "already imported from this source (use --force to redo)"}))
            return 0
        print(f"import_teacher: error: {args.out} already holds a model imported from {previous}; "
              "use --force to overwrite it or choose another --out", file=sys.stderr)
        return 1
    try:
        model, report = import_model(args.src)
        summary = report.summary()
        if args.out:
            save_model(model, args.out, source={"path": src, "format": report.format,
                                                 "architecture": report.architecture})
            summary["out"] = args.out
    except (ValueError, OSError) as exc:
        print(f"import_teacher: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
