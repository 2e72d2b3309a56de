"""Write a DistilHuBERT-family student as the checkpoint s3prl's own ``distiller_local`` upstream loads.

MODEL is our model directory (the heads saved with it become the distiller's prediction heads; without
heads, or with --no-heads, the encoder alone is written). In s3prl:

    upstream = s3prl.hub.distiller_local(ckpt="exp/distilhubert.ckpt").eval()
    states = upstream([wav])           # list of 1-D float tensors at 16 kHz
    states["hidden_states"]            # [projected CNN features, layer 1..L, head predictions...]

or, in s3prl's downstream runner, ``-u distiller_local -k exp/distilhubert.ckpt``. Students the distiller
cannot express (attention reuse, adapters, WavLM's relative position bias, a feature LayerNorm, pre-LN
layers, pruned shapes) are refused with the reason; the ONNX (bin.export_onnx) and Hugging Face
(bin.export_hf) routes take them. The result is printed as JSON.

Example:
    python -m speechdistill.bin.export_s3prl exp/distill_distilhubert/student exp/distilhubert.ckpt
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m speechdistill.bin.export_s3prl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="our model directory (config.yaml + model.safetensors)")
    parser.add_argument("out", help="checkpoint file to write (e.g. exp/distilhubert.ckpt)")
    parser.add_argument("--no-heads", "--no_heads", dest="heads", action="store_false",
                        help="write the encoder without the heads saved with it")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from speechdistill.models.checkpoints import detect_format, load_heads, load_model
    from speechdistill.models.export_s3prl import export_s3prl

    try:
        found = detect_format(args.model)
        if found != "ours":
            kind = "a Hugging Face directory" if found == "huggingface" else "a checkpoint file"
            raise ValueError(f"{args.model}: {kind}, not our model directory (config.yaml + model.safetensors); "
                             "the s3prl export writes students trained here: give the student's directory "
                             "(exp/<run>/student)")
        encoder = load_model(args.model)
        heads = load_heads(args.model) if args.heads else None
        config = export_s3prl(encoder, args.out, heads=heads)["distiller"]
    except (ValueError, OSError) as exc:
        print(f"export_s3prl: error: {exc}", file=sys.stderr)
        return 1
    layers = config["encoder_layers"]
    predictions = config["pred_layer_id"] if config["out_layer_type"] == "expand-last" else []
    print(json.dumps({"out": args.out, "upstream": "distiller_local", "encoder_layers": layers,
                      "hidden_states": ["projected CNN features"] + [f"layer {i}" for i in range(1, layers + 1)]
                      + ([f"prediction of teacher layer {t}" for t in predictions] if predictions
                         else [f"entry {i} again" for i in range(layers + 1)])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
