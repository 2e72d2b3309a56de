r"""Train a SUPERB-style probe (PR, KS, IC or SID) on the frozen features of an upstream model.

    python -m speechdistill.bin.probe_train --config conf/ks.yaml --train-data data/ks_train \
        --valid-data data/ks_dev --upstream exp/distill_distilhubert/student --output-dir exp/ks_distilhubert

The upstream stays frozen; a featurizer (softmax-weighted sum of its hidden states) and the task's
head are trained with the one trainer (checkpoints, resume, DDP, logs, plots). The task (``--task``,
or ``task:`` in the config) says which targets are read from the data dirs (speechdistill.probe.tasks).
At the end ``<output-dir>/probe_model/`` holds what ``probe_eval`` loads. A finished run only exports
again. Every config key can be overridden as ``--key value`` (nested: ``--head.projector_dim 128``).
"""
from __future__ import annotations

from typing import List, Optional

from speechdistill.train.cli import run_main, train_main


def main(argv: Optional[List[str]] = None) -> int:
    from speechdistill.probe.task import ProbeConfig, ProbeTask

    return train_main(ProbeConfig, ProbeTask, prog="python -m speechdistill.bin.probe_train", description=__doc__,
                      argv=argv)


if __name__ == "__main__":
    run_main(main, prog="probe_train")
