"""The data of a training run: the train and valid loaders (with a summary in the log), and the record of
skipped utterances (``skipped_utts.txt``: too short, unreadable) with the stop after too many unreadable in a
row."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Mapping, Optional

import torch

from ..data.audio import SAMPLE_RATE
from ..data.tables import atomic_write_text
from .config import TrainerConfig
from .distributed import DistEnv
from .loader import build_loader
from .runtime import TrainingError, one_line
from .task import Task, item_extras_of, item_fields_of


@dataclass
class TrainData:
    """Datasets, batch samplers and loaders of the run (``valid_*`` None without ``valid_data``)."""

    train_set: Any
    sampler: Any
    loader: torch.utils.data.DataLoader
    valid_set: Any = None
    valid_sampler: Any = None
    valid_loader: Optional[torch.utils.data.DataLoader] = None


def build_train_data(config: TrainerConfig, task: Task, env: DistEnv, device: torch.device,
                     log: logging.Logger) -> TrainData:
    """The loaders of ``config.train_data`` (and ``valid_data``) for this rank, each summarised in the log."""
    def make(data_dir: str, training: bool):
        dataset, sampler, loader = build_loader(
            config, data_dir, training=training, world_size=env.world_size, rank=env.rank,
            fields=item_fields_of(task, Path(data_dir)),
            extras=item_extras_of(task, Path(data_dir)) if training else None, pin_memory=device.type == "cuda")
        seconds = float(dataset.num_samples.sum()) / SAMPLE_RATE
        amount = f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds:.1f} s"
        batches = sampler.global_batches(0)
        padded = sum(len(b) * max(int(dataset.cropped_num_samples[i]) for i in b) for b in batches)
        real = float(dataset.cropped_num_samples.sum())
        log.info("%s data %s: %d utterances, %s; %d skipped as shorter than min_seconds=%g; epoch 0: %d "
                 "batches (%.1f utterances and %.1f s of audio each on average, %.1f%% padding)",
                 "train" if training else "valid", data_dir, len(dataset), amount, len(dataset.skipped),
                 config.min_seconds, len(batches), len(dataset) / len(batches), real / SAMPLE_RATE / len(batches),
                 100.0 * (1 - real / padded))
        return dataset, sampler, loader

    data = TrainData(*make(config.train_data, True))
    if config.valid_data:
        data.valid_set, data.valid_sampler, data.valid_loader = make(config.valid_data, False)
    log.info("one update = %d rank(s) x %d micro-batch(es) of at most %.1f s = at most %.1f s of audio",
             env.world_size, config.accum_steps, config.batch_seconds,
             env.world_size * config.accum_steps * config.batch_seconds)
    return data


class SkippedUtterances:
    """``<output_dir>/skipped_utts.txt`` (``<key> <split> <reason>`` lines) and the unreadable-in-a-row count.

    Rank 0 rewrites the too-short part at the start of a run, keeping the unreadable entries of earlier runs;
    every rank appends the unreadable utterances it meets."""

    def __init__(self, config: TrainerConfig, data: TrainData, output_dir: Path, log: logging.Logger,
                 is_main: bool) -> None:
        self.config, self.log = config, log
        self.path = output_dir / "skipped_utts.txt"
        lines: List[str] = []
        if self.path.is_file():
            lines = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                     if " too-short: " not in line]
        self.listed = {line.split(" ", 2)[0] + " " + line.split(" ", 2)[1] for line in lines if " " in line}
        for name, dataset in (("train", data.train_set), ("valid", data.valid_set)):
            if dataset is None:
                continue
            lines.extend(f"{key} {name} {reason}" for key, reason in dataset.skipped)
            if dataset.skipped:
                log.warning("%d %s utterance(s) shorter than min_seconds=%g are skipped; listed in %s",
                            len(dataset.skipped), name, config.min_seconds, self.path)
        if is_main:
            atomic_write_text(self.path, "".join(f"{line}\n" for line in lines))
        self.short = sum(len(d.skipped) for d in (data.train_set, data.valid_set) if d is not None)
        self.unreadable = 0  # train utterances of this rank (the checkpoint keeps the sum over ranks)
        self.failures_in_row = 0

    def note(self, batch: Mapping[str, Any], split: str) -> None:
        """Count the unreadable utterances of a batch, list them, stop after too many in a row."""
        failures = batch["failures"]
        if failures:
            if split == "train":
                self.unreadable += len(failures)
            with open(self.path, "a", encoding="utf-8") as handle:
                for key, message in failures:
                    self.log.warning("skipping unreadable %s utterance: %s", split, one_line(message))
                    if f"{key} {split}" not in self.listed:
                        self.listed.add(f"{key} {split}")
                        handle.write(f"{key} {split} unreadable: {one_line(message)}\n")
        limit = self.config.max_load_failures_in_row
        messages = iter(message for _, message in failures)
        for failed in batch["item_failed"]:
            if not failed:
                self.failures_in_row = 0
                continue
            self.failures_in_row += 1
            message = next(messages)
            if self.failures_in_row >= limit:
                data_dir = self.config.train_data if split == "train" else self.config.valid_data
                raise TrainingError(
                    f"{self.failures_in_row} utterances in a row could not be read (max_load_failures_in_row); the "
                    f"last one: {one_line(message)}. Fix: check that the audio of {data_dir} is reachable from this "
                    f"machine; the unreadable ones are listed in {self.path}")
