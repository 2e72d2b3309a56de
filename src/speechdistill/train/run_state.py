"""What a checkpoint holds of a run and how a run comes back from one (:func:`capture`, :func:`restore`).

A checkpoint (``checkpoints/ckpt-<step>.pt``, written by :mod:`.checkpoint`) holds: ``step``, ``model``,
``optimizer``, ``scheduler``, ``scaler``, ``world_size``, per rank (lists indexed by rank) ``rng``, ``task``
and ``sampler`` (epoch, batch index), ``counters`` (``skipped_nonfinite``; ``skipped_unreadable`` summed over
ranks), ``train_seconds`` and the resolved ``config``."""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict

import torch

from ..config import to_dict
from . import checkpoint as ckpt
from . import distributed as dist_utils
from .optim import load_optimizer_state
from .runtime import one_line, seed_everything

if TYPE_CHECKING:  # only for the annotations: the trainer calls these
    from .trainer import Trainer


def capture(trainer: "Trainer") -> Dict[str, Any]:
    """Everything a resume needs (a collective: every rank calls it)."""
    per_rank = dist_utils.all_gather_objects({
        "rng": ckpt.capture_rng_state(),
        "task": trainer.task.state_dict(),
        "sampler": dict(trainer.sampler_position),
    })
    unreadable = torch.tensor([float(trainer.skipped.unreadable)], dtype=torch.float64, device=trainer.device)
    dist_utils.all_reduce_sum(unreadable)
    return {
        "step": trainer.step,
        "model": trainer.module.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "world_size": trainer.env.world_size,
        "rng": [r["rng"] for r in per_rank],
        "task": [r["task"] for r in per_rank],
        "sampler": [r["sampler"] for r in per_rank],
        "counters": {"skipped_nonfinite": trainer.skipped_nonfinite, "skipped_unreadable": int(unreadable.item())},
        "train_seconds": trainer.train_seconds,
        "config": to_dict(trainer.config),
    }


def restore(trainer: "Trainer", path: Path) -> None:
    """Load the checkpoint at ``path`` into the trainer's model, optimizer, counters, sampler and random streams.
    Another world size resumes at the same share of the epoch, with reseeded random streams."""
    state = ckpt.load_checkpoint(path)
    env, log = trainer.env, trainer.logger
    try:
        trainer.module.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise ckpt.CheckpointError(f"{path}: the model in the checkpoint does not match the task's model "
                                   f"({one_line(str(exc))[:300]}); resume with the configuration the run "
                                   "started with, or use another output dir") from None
    load_optimizer_state(trainer.optimizer, trainer.scheduler, state["optimizer"], state["scheduler"])
    trainer.scaler.load_state_dict(state["scaler"])
    trainer.step = int(state["step"])
    trainer.skipped_nonfinite = int(state["counters"]["skipped_nonfinite"])
    # the saved value is the sum over ranks; rank 0 carries it
    trainer.skipped.unreadable = int(state["counters"]["skipped_unreadable"]) if trainer.is_main else 0
    trainer.train_seconds = float(state.get("train_seconds", 0.0))
    saved_world = int(state["world_size"])
    if saved_world == env.world_size:
        position = state["sampler"][env.rank]
        trainer.task.load_state_dict(state["task"][env.rank])
        ckpt.restore_rng_state(state["rng"][env.rank])
    else:
        old = state["sampler"][0]
        position = {"epoch": old["epoch"], "batch_index": math.ceil(old["batch_index"] * saved_world / env.world_size)}
        trainer.task.load_state_dict(state["task"][min(env.rank, saved_world - 1)])
        seed_everything(trainer.config.seed + env.rank + 7919 * trainer.step)
        log.warning("the checkpoint was written by %d rank(s), this run has %d: resuming at the same point of "
                    "the data, but random streams are reseeded (the run is not bit-identical to an "
                    "uninterrupted one)", saved_world, env.world_size)
    trainer.data.sampler.load_state_dict(position)
    trainer.sampler_position = dict(position)
    trainer.last_checkpoint = Path(path)
    trainer.checkpoint_step = trainer.step
    log.info("resumed at update %d (epoch %d, batch %d of this rank)", trainer.step, position["epoch"],
             position["batch_index"])
