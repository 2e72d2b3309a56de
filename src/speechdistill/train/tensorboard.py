"""TensorBoard event files of a training run, in ``<output_dir>/tensorboard/``.

Every record the trainer writes to ``metrics.jsonl`` is also written here, each finite number as a scalar at
the record's ``step`` under the same name: loss and loss terms, ``lr/<group>``, ``grad_norm``,
``audio_sec_per_sec``, padding and skip counters, memory, and the validation metrics (``valid/loss``,
``valid/cos/layer<i>`` per teacher layer, WER, EER, ...). View with ``tensorboard --logdir exp/``.

A resumed run drops what the killed run logged after its checkpoint, as ``metrics.jsonl`` does: the writer
starts with TensorBoard's purge marker at the first step it will log again (a fresh start purges from
step 0), and TensorBoard's readers discard older events from that step on.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Mapping, Optional

DIRECTORY = "tensorboard"


def _wait_for_a_later_file_name(log_dir: Path) -> None:
    """Readers take event files in name order (events.out.tfevents.<seconds>.<host>.<pid>...): a run that starts
    in the same second as an earlier file could sort before it (pid order) and be overridden by the events its
    purge marker drops. Wait until this run's file name is later in time than every file there."""
    stamps = []
    for path in log_dir.glob("events.out.tfevents.*"):
        parts = path.name.split(".")
        if len(parts) > 3 and parts[3].isdigit():
            stamps.append(int(parts[3]))
    if stamps:
        delay = max(stamps) + 1 - time.time()
        if delay > 0:
            time.sleep(delay)


class TensorBoardEvents:
    """Writes records of scalars to event files in ``log_dir`` (rank 0 only).

    Args:
        log_dir: directory of the event files (created).
        first_step: the first step this run logs; events of earlier runs from this step on are purged.
    """

    def __init__(self, log_dir: Path, first_step: int) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError("tensorboard: true needs the tensorboard package (pip install tensorboard, part of "
                              "speechdistill's install); or set tensorboard: false (--tensorboard false)") from None
        self.log_dir = Path(log_dir)
        _wait_for_a_later_file_name(self.log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=first_step, flush_secs=30)

    def write(self, record: Mapping[str, Any]) -> None:
        """Each finite number of ``record`` (bools and the step itself excepted) at ``record["step"]``."""
        step = int(record["step"])
        for name, value in record.items():
            if name == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                self.writer.add_scalar(name, value, global_step=step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_events(output_dir: Path, enabled: bool, first_step: int) -> Optional[TensorBoardEvents]:
    """The run's event writer, or None when TensorBoard logging is off (``tensorboard: false``, other ranks)."""
    return TensorBoardEvents(Path(output_dir) / DIRECTORY, first_step) if enabled else None
