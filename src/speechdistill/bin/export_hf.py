"""Export one of our model directories to a Hugging Face directory (config.json + model.safetensors).

Students whose structure HubertModel / WavLMModel can express are exported (DistilHuBERT's
body, MaskHuBERT, STaRHuBERT, DistilALHuBERT unrolled, pruned DPHuBERT with equal layers,
teachers); attention-map reuse, adapters and gates are refused with the reason.

Example:
    python -m speechdistill.bin.export_hf --model exp/distill_distilhubert/student --out exp/distilhubert_hf
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m speechdistill.bin.export_hf", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model directory or checkpoint load_model reads")
    parser.add_argument("--out", required=True, help="Hugging Face directory to write")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from speechdistill.models.checkpoints import load_model
    from speechdistill.models.export_hf import export_hf, hf_config

    try:
        model = load_model(args.model)
        out = export_hf(model, args.out)
    except (ValueError, OSError) as exc:
        print(f"export_hf: error: {exc}", file=sys.stderr)
        return 1
    config = hf_config(model.config)
    print(json.dumps({"out": str(out), "architecture": config["architectures"][0],
                      "num_hidden_layers": config["num_hidden_layers"], "hidden_size": config["hidden_size"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
