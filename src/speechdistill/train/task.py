"""The contract between the trainer and what it trains (distillation, ASR, speaker verification, ...).

The trainer owns the loop: data, device, precision, DDP, accumulation, clipping, the optimizer
and schedule, checkpoints, signals and logs. A task owns the model and the losses. Call order::

    task.setup(context)                    # once; move frozen models (teacher) to context.device
    model = task.model()                   # trainable module; the trainer moves it and wraps it in DDP
    groups = task.param_groups(model)      # optimizer parameter groups
    task.item_fields(data_dir)             # optional: extra per-utterance values for the batches
    task.item_extras(data_dir)             # optional: values computed per item in the DataLoader workers
    task.load_state_dict(state)            # on resume only
    out = task.train_step(model, batch, step)   # per micro-batch, inside the student autocast
    metrics = task.valid_step(model, batch)     # per validation batch, eval mode, no_grad
    task.state_dict()                      # at every checkpoint
    task.export(model, output_dir)         # once at the end, rank 0 only

Loss scaling under DDP and accumulation (what ``StepOutput.count`` is for): ``loss`` is a *mean*
over ``count`` units (frames, samples, utterances -- whatever the task averages over). The trainer
makes the update's gradient that of the mean over *all* units of *all* micro-batches on *all*
ranks: each micro-batch's ``loss * count`` is divided by the global count (an all-reduce), so
ranks holding more frames weigh more, exactly as if one process had seen the whole global batch.
A term that is not per-unit (e.g. a Lagrangian on the model size) is simply added to ``loss``;
its gradient then comes out with weight one per update. ``count=1`` weighs every micro-batch
of every rank equally.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, List, Mapping, Optional, Protocol, Union, runtime_checkable

import torch

from .precision import autocast


@dataclass
class StepOutput:
    """What :meth:`Task.train_step` returns.

    Attributes:
        loss: scalar tensor, the mean over ``count`` units that ``backward()`` runs on.
        terms: named scalar tensors (each a mean over the same units) for logging, e.g.
            ``{"l1/layer4": ..., "cos/layer4": ...}``; the same names on every rank and step.
            When the loss goes non-finite the trainer names the first non-finite term.
        count: number of units ``loss`` averages over (int, float or scalar tensor).
    """

    loss: torch.Tensor
    terms: Dict[str, torch.Tensor] = field(default_factory=dict)
    count: Union[int, float, torch.Tensor] = 1


@dataclass
class TrainContext:
    """What the trainer tells a task in :meth:`Task.setup`.

    Attributes:
        device: the device batches arrive on and the trainable model lives on.
        precision, teacher_precision: resolved (``fp32``/``bf16``/``fp16``) autocast precisions.
        rank, world_size, local_rank: DDP coordinates (0, 1, 0 without DDP).
        output_dir: the run's output directory.
        seed: the run's seed (a task seeds its own generators from it).
        logger: the run's logger (writes to train.log on rank 0).
    """

    device: torch.device
    precision: str
    teacher_precision: str
    rank: int
    world_size: int
    local_rank: int
    output_dir: Path
    seed: int
    logger: logging.Logger

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def student_autocast(self) -> ContextManager:
        """Autocast for the trainable model (the trainer already wraps ``train_step`` in it)."""
        return autocast(self.device, self.precision)

    def teacher_autocast(self) -> ContextManager:
        """Autocast for frozen models; use it around the teacher forward inside ``train_step``."""
        return autocast(self.device, self.teacher_precision)


@runtime_checkable
class Task(Protocol):
    """A trainable thing. ``item_fields`` is optional; every other method is required."""

    def setup(self, context: TrainContext) -> None:
        """Called once before anything else; load and move frozen models to ``context.device``."""

    def model(self) -> torch.nn.Module:
        """The trainable module. Only it is DDP-wrapped and checkpointed; frozen models stay in the task.

        Under DDP, gradients are synchronised only for computation done inside this module's
        ``forward``: ``train_step`` must call ``model(...)``, not its submodules directly.
        """

    def param_groups(self, model: torch.nn.Module) -> List[Dict[str, Any]]:
        """Optimizer parameter groups of ``model`` (the unwrapped module).

        Each dict has ``params`` and optionally ``name`` (for logs), ``lr`` (peak lr of the group;
        negative = gradient *ascent*, e.g. Lagrange multipliers; weight decay must then be 0),
        ``weight_decay`` and ``schedule`` (a callable ``update_index -> lr multiplier`` replacing
        the trainer's warmup/decay for this group). Return ``[{"params": model.parameters()}]``
        for one group with the config's lr and weight decay.
        """

    def train_step(self, model: torch.nn.Module, batch: Mapping[str, Any], step: int) -> StepOutput:
        """Losses of one micro-batch. ``model`` is the (DDP-wrapped) trainable module in train mode.

        ``batch`` is the collated batch on the device (``wavs [B, T]`` float32, ``lengths [B]`` int64,
        ``keys``, extra fields); ``step`` is the number of updates done so far (0-based index of the
        update this micro-batch contributes to). Runs inside the student autocast.
        """

    def valid_step(self, model: torch.nn.Module, batch: Mapping[str, Any]) -> Dict[str, Union[float, torch.Tensor]]:
        """Metrics of one validation batch, each a mean over the batch's utterances.

        ``model`` is the unwrapped module in eval mode, under ``torch.no_grad`` and the student
        autocast. The trainer averages each metric over the whole valid set weighting batches by
        their number of utterances, and logs it as ``valid/<name>``. It must not draw from the
        task's training generators (the trainer preserves the global RNGs around validation).
        """

    def state_dict(self) -> Dict[str, Any]:
        """Task state that is not in the model: its own generators (augmentation), counters, ..."""

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (this rank's copy)."""

    def export(self, model: torch.nn.Module, output_dir: Path) -> None:
        """Write the task's product under ``output_dir`` (e.g. ``output_dir / "student"``), atomically.

        Called on rank 0 with the unwrapped module, after the last update (and again on a rerun of
        a finished run, so it must be idempotent).
        """


def item_fields_of(task: Task, data_dir: Path) -> Optional[Mapping[str, Mapping[str, Any]]]:
    """The optional ``Task.item_fields(data_dir) -> {field: {utt_id: value}}`` (None when not defined).

    A task that needs per-utterance values in its batches (token ids, speaker index) defines it;
    see :mod:`speechdistill.data.collate` for how each value type is batched.
    """
    getter = getattr(task, "item_fields", None)
    return getter(data_dir) if getter is not None else None


def item_extras_of(task: Task, data_dir: Path) -> Optional[Callable[[Any], Dict[str, Any]]]:
    """The optional ``Task.item_extras(data_dir) -> extras`` (None when not defined or not wanted).

    ``extras(ref)`` returns more values for the item at ``ref`` (an :class:`ItemRef`); it runs where
    the item is read, in a DataLoader worker, so reading more audio there (e.g. a second crop from
    another data set) costs the training process nothing. It must be picklable and depend on
    ``ref`` alone (the same values after a resume). The trainer asks for the training data only.
    """
    getter = getattr(task, "item_extras", None)
    return getter(data_dir) if getter is not None else None
