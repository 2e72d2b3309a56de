r"""Train the ASR probe (SUPERB manner) on the frozen features of an upstream model.

    python -m speechdistill.bin.asr_train --config conf/asr_superb.yaml --train-data data/train \
        --valid-data data/dev --upstream exp/distill_distilhubert/student \
        --token-dir data/token_list/char --output-dir exp/asr_distilhubert [--resume] [--key value ...]

The upstream stays frozen; a featurizer (weighted sum of its hidden states, or one of them) and
a BiLSTM-CTC are trained with the one trainer (checkpoints, resume, DDP, logs, plots). At the
end ``<output-dir>/asr_model/`` holds what ``asr_decode`` loads. A finished run only exports
again. Every config key can be overridden as ``--key value`` (nested: ``--downstream.hidden_size 256``).
"""
from __future__ import annotations

from typing import List, Optional

from speechdistill.train.cli import run_main, train_main


def main(argv: Optional[List[str]] = None) -> int:
    from speechdistill.asr.task import AsrConfig, AsrTask

    return train_main(AsrConfig, AsrTask, prog="python -m speechdistill.bin.asr_train", description=__doc__,
                      argv=argv)


if __name__ == "__main__":
    run_main(main, prog="asr_train")
