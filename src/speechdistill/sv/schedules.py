"""Epoch-based schedules of OS-KDFT, expressed in optimizer updates.

The released OS-KDFT code changes its learning rates and its distillation weight once per epoch.
Our trainer counts updates, so an update index ``u`` (0-based) belongs to epoch

    e(u) = 1 + u // steps_per_epoch          (1-based, as the released loop counts)

and every value below is constant inside an epoch. ``steps_per_epoch`` is the number of updates
of one pass over the training data (or set in the config).

Learning rates of the released paper-era code (specs/methods/06_os_kdft.md §2), re-derived:

* the back-end lr follows cosine annealing with warm restarts, stepped once per epoch, so at
  epoch e it is ``sv(e) = floor + (peak - floor) * (1 + cos(pi * t / T0)) / 2`` with
  ``t = (e - 1) mod T0``;
* the adapters use the same curve times 10 (``adapter_lr_scale``);
* the student ("kd") lr ramps up as ``sv(e) * e / R`` for ``e < R`` (R = 10), then decays by a
  factor 0.93 per epoch from its last ramp value: ``sv(R-1) * (R-1)/R * 0.93^(e-R+1)``.

(The released code also rebuilds its Adam optimizer every epoch, which resets the moment
estimates; that is not reproduced: moments carry over.)
"""
from __future__ import annotations

import math
from typing import Callable


def epoch_of_update(update: int, steps_per_epoch: int) -> int:
    """1-based epoch of the ``update``-th optimizer update (0-based)."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    return 1 + int(update) // int(steps_per_epoch)


def cosine_restart_factor(epoch: int, period: int, floor_ratio: float) -> float:
    """``sv(e) / peak`` of cosine annealing with warm restarts every ``period`` epochs (e is 1-based)."""
    position = (epoch - 1) % period
    return floor_ratio + (1.0 - floor_ratio) * 0.5 * (1.0 + math.cos(math.pi * position / period))


def kd_lr_factor(epoch: int, period: int, floor_ratio: float, ramp_epochs: int, decay: float) -> float:
    """Student lr divided by the back-end peak lr at ``epoch`` (the released kd_lr rule)."""
    if epoch < ramp_epochs:
        return cosine_restart_factor(epoch, period, floor_ratio) * epoch / ramp_epochs
    last_ramp = ramp_epochs - 1
    start = cosine_restart_factor(last_ramp, period, floor_ratio) * last_ramp / ramp_epochs
    return start * decay ** (epoch - last_ramp)


def curriculum_probability(epoch: int, epochs: float) -> float:
    """Probability that a distillation input comes from the training set: min(1, e / E)."""
    return min(1.0, epoch / float(epochs))


def per_update(factor: Callable[[int], float], steps_per_epoch: int) -> Callable[[int], float]:
    """Turn an epoch function into the ``update -> lr multiplier`` the trainer's groups take.

    Returns a plain function (not an object), so LambdaLR stores nothing of it in checkpoints.
    """
    def schedule(update: int) -> float:
        return factor(epoch_of_update(update, steps_per_epoch))
    return schedule
