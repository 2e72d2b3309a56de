"""Distil a frozen teacher into a student, as one method preset composes it.

    python -m speechdistill.bin.distill_train --config conf/distilhubert.yaml \
        --train-data data/train_960 --valid-data data/dev_clean --teacher exp/teacher \
        --output-dir exp/distill_distilhubert [--resume] [--device cpu|cuda] [--key value ...]

Every config key can be set as ``--key value`` (dashes and underscores alike; nested sections
dotted, e.g. ``--masking.mask_prob 0.4``; the number of updates is ``--max_steps``); an unknown
key is an error naming the closest valid one. A rerun continues from the latest checkpoint in
the output dir; a finished run only exports again.

Products in the output dir: ``student/`` (our model dir with the target-mapping heads, what
``speechdistill.models.load_model`` loads; pruned to a dense model after DPHuBERT's first
stage), ``distill_summary.json`` (sizes, teacher-forward throughput), ``train.log``,
``metrics.jsonl`` (every loss term, lr, grad norm, audio-seconds per second; validation:
every term and ``cos/layer<t>``), ``plots/``, ``checkpoints/``. Multi-GPU: start it with
``python -m speechdistill.bin.torchrun --nproc_per_node N`` (torchrun that keeps the requeue exit
code) or one ``srun`` task per GPU.
"""
from __future__ import annotations

from typing import List, Optional

from speechdistill.train.cli import run_main, train_main


def main(argv: Optional[List[str]] = None) -> int:
    from speechdistill.distill import DistillConfig, DistillTask

    return train_main(DistillConfig, DistillTask, prog="python -m speechdistill.bin.distill_train",
                      description=__doc__, argv=argv)


if __name__ == "__main__":
    run_main(main, prog="distill_train")
