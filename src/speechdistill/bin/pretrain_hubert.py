"""Train a HuBERT-style teacher from scratch on any Kaldi data dir (HuBERT's first iteration).

    python -m speechdistill.bin.pretrain_hubert --config conf/pretrain/hubert_tiny.yaml \
        --train-data data/train --valid-data data/dev --output-dir exp/teacher [--key value ...]

Two stages, both rerunnable:
  labels  k-means of 39-dim MFCC frames over a sample of --train-data (cached in
          <output-dir>/labels: centroids.npy, kmeans.json with the unit statistics and the chance
          level of masked-unit accuracy, prepare_labels.log; label tables with labels.source table)
  train   masked prediction of those units (the trainer: progress, train.log, metrics.jsonl,
          plots/, checkpoints/; a rerun resumes from the latest checkpoint, a finished run only
          exports again)
--stage all (default) runs both in one process. Under torchrun/srun with several processes,
run --stage labels once in a single process first, then the training with --stage train.

Products: <output-dir>/model/ (our model dir: config.yaml + model.safetensors) and
<output-dir>/hf/ (Hugging Face HubertModel: config.json + model.safetensors), the encoder
without its prediction heads; either is a teacher for speechdistill.load_model and the
distillation recipes. Every config key can be set as --key value (dashes and underscores alike,
nested sections dotted: --encoder.num_layers 6 --labels.num_clusters 50 --masking.mask_prob 0.65).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

from speechdistill.train.cli import run_main

STAGES = ("all", "labels", "train")


def main(argv: Optional[List[str]] = None) -> int:
    from speechdistill.pretrain import HubertPretrainConfig, HubertPretrainTask, LabelStageError, prepare_labels
    from speechdistill.train import Trainer
    from speechdistill.train.cli import build_parser, parse_args
    from speechdistill.train.distributed import detect
    from speechdistill.train.precision import resolve_device

    parser = build_parser(HubertPretrainConfig, prog="python -m speechdistill.bin.pretrain_hubert",
                          description=__doc__)
    parser.add_argument("--stage", choices=STAGES, default="all",
                        help="labels: only the k-means label stage; train: only the training (labels must exist); "
                             "all: both (default)")
    config, args = parse_args(parser, HubertPretrainConfig, argv)
    output_dir: Path = args.output_dir
    env = detect(master_port=config.master_port)
    if args.stage in ("all", "labels"):
        if env.distributed:
            if args.stage == "labels":
                raise LabelStageError(f"--stage labels runs in one process, but this is rank {env.rank} of "
                                      f"{env.world_size}; start it with plain python (not torchrun/srun)")
            print(f"pretrain_hubert: {env.world_size} processes: the label stage is not run here; the training checks "
                  "that it ran (--stage labels)", file=sys.stderr)
        else:
            import torch

            if config.threads > 0:
                torch.set_num_threads(config.threads)
            result = prepare_labels(config, output_dir, device=resolve_device(config.device))
            units = result.record.get("units_50hz", {})
            print(f"pretrain_hubert: labels {'reused' if result.reused else 'written'} in {result.directory} "
                  f"({config.labels.num_clusters} units, perplexity {units.get('perplexity', float('nan')):.1f}, "
                  f"chance accuracy {100 * units.get('majority_share', float('nan')):.1f}%)", file=sys.stderr)
    if args.stage == "labels":
        return 0
    result = Trainer(config, HubertPretrainTask(config), output_dir, resume=args.resume).run()
    if result.status == "finished" and env.rank == 0:
        print(f"pretrain_hubert: teacher written to {output_dir / 'model'} and {output_dir / 'hf'}", file=sys.stderr)
    return result.exit_code


if __name__ == "__main__":
    run_main(main, prog="pretrain_hubert")
