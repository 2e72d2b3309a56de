"""AdamW over a task's parameter groups, learning-rate schedules, s3prl-style weight-decay grouping.

Schedules. ``lr_schedule`` (linear / cosine / constant after a warmup) counts updates. The epoch
schedules (:data:`EPOCH_SCHEDULES`) change the lr once per epoch, as recipes that step a torch
scheduler after every pass over the data do; a task that knows its updates per epoch gives them to
a parameter group as its ``schedule`` (:func:`epoch_schedule`). Update ``u`` (0-based) belongs to
the 1-based epoch ``e(u) = 1 + u // steps_per_epoch``, and the lr is constant inside an epoch:

* ``cosine_restarts``: cosine annealing with warm restarts every ``period`` epochs (SGDR, torch's
  ``CosineAnnealingWarmRestarts`` with ``T_mult = 1`` stepped per epoch):
  ``floor + (1 - floor) * (1 + cos(pi * t / period)) / 2`` with ``t = (e - 1) mod period``;
* ``ramp_decay``: ``cosine_restarts`` times ``e / R`` for ``e < R`` (R = ``ramp_epochs``), then a
  factor ``decay`` per epoch from the last ramp value: ``c(R-1) * (R-1)/R * decay^(e-R+1)`` (the
  student lr of the OS-KDFT code, specs/methods/06_os_kdft.md §2).

Gradient ascent (negative learning rate). ``torch.optim.AdamW`` refuses ``lr < 0``, but DPHuBERT
trains its Lagrange multipliers with lr = -0.02 (min over the model, max over the multipliers).
For such a group the optimizer holds ``|lr|`` and the trainer negates the group's gradients just
before ``optimizer.step()`` (:func:`flip_ascent_gradients`). With zero weight decay this is the
same update as Adam with a negative lr: Adam's moments of ``-g`` are ``-m`` and ``v``, so the step
``-|lr| * (-m_hat) / (sqrt(v_hat) + eps)`` equals ``lr * m_hat / (sqrt(v_hat) + eps)`` for
``lr = -|lr|``. Weight decay on an ascent group is refused (decoupled decay would pull towards zero
instead of pushing away, so neither sign convention is what a user would expect).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from ..config import ConfigError
from .config import TrainerConfig


def lr_multiplier(update: int, *, schedule: str, warmup_steps: int, max_steps: int, min_lr_ratio: float = 0.0
                  ) -> float:
    """Factor of the peak lr for the ``update``-th optimizer update (0-based).

    Warmup rises linearly ``1/W, 2/W, ..., 1`` over the first ``W`` updates (no wasted update at
    lr 0); then ``linear`` falls linearly and ``cosine`` along a half cosine from 1 towards
    ``min_lr_ratio``, which it would reach at update ``max_steps``; ``constant`` stays at 1.
    """
    if warmup_steps > 0 and update < warmup_steps:
        return (update + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, max(0.0, (update - warmup_steps) / max(1, max_steps - warmup_steps)))
    if schedule == "linear":
        shape = 1.0 - progress
    elif schedule == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ConfigError(f"config.lr_schedule: '{schedule}' is not one of linear, cosine, constant")
    return min_lr_ratio + (1.0 - min_lr_ratio) * shape


EPOCH_SCHEDULES = ("cosine_restarts", "ramp_decay")


def epoch_of_update(update: int, steps_per_epoch: int) -> int:
    """1-based epoch of the ``update``-th optimizer update (0-based)."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    return 1 + int(update) // int(steps_per_epoch)


def cosine_restart_factor(epoch: int, period: int, floor_ratio: float) -> float:
    """``cosine_restarts`` at the 1-based ``epoch``, as a factor of the peak lr."""
    position = (epoch - 1) % period
    return floor_ratio + (1.0 - floor_ratio) * 0.5 * (1.0 + math.cos(math.pi * position / period))


def ramp_decay_factor(epoch: int, period: int, floor_ratio: float, ramp_epochs: int, decay: float) -> float:
    """``ramp_decay`` at the 1-based ``epoch``, as a factor of the peak lr."""
    if epoch < ramp_epochs:
        return cosine_restart_factor(epoch, period, floor_ratio) * epoch / ramp_epochs
    last_ramp = ramp_epochs - 1
    start = cosine_restart_factor(last_ramp, period, floor_ratio) * last_ramp / ramp_epochs
    return start * decay ** (epoch - last_ramp)


def epoch_schedule(name: str, steps_per_epoch: int, *, period: int, floor_ratio: float, ramp_epochs: int = 10,
                   decay: float = 0.93) -> Callable[[int], float]:
    """The epoch schedule ``name`` (:data:`EPOCH_SCHEDULES`) as the ``update -> lr factor`` function a
    parameter group's ``schedule`` takes. A plain function, not an object, so LambdaLR stores
    nothing of it in checkpoints."""
    if name == "cosine_restarts":
        def factor(epoch: int) -> float:
            return cosine_restart_factor(epoch, period, floor_ratio)
    elif name == "ramp_decay":
        def factor(epoch: int) -> float:
            return ramp_decay_factor(epoch, period, floor_ratio, ramp_epochs, decay)
    else:
        raise ConfigError(f"epoch schedule '{name}' is not one of {', '.join(EPOCH_SCHEDULES)}")

    def schedule(update: int) -> float:
        return factor(epoch_of_update(update, steps_per_epoch))
    return schedule


def _config_schedule(config: TrainerConfig) -> Callable[[int], float]:
    # A plain function, not an object: LambdaLR would save an object's attributes in its
    # state_dict and restore them on resume, overriding a max_steps changed on purpose.
    warmup = config.total_warmup_steps

    def schedule(update: int) -> float:
        return lr_multiplier(update, schedule=config.lr_schedule, warmup_steps=warmup, max_steps=config.max_steps,
                             min_lr_ratio=config.min_lr_ratio)
    return schedule


def decay_param_groups(model: torch.nn.Module, weight_decay: float = 0.01,
                       no_decay: Sequence[str] = ("bias", "LayerNorm.weight", "LayerNorm.bias")
                       ) -> List[Dict[str, Any]]:
    """Two groups, s3prl style: ``weight_decay`` for every trainable parameter whose name contains
    none of ``no_decay``, 0 for the others (biases and modules literally named ``LayerNorm``)."""
    decay, plain = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (plain if any(part in name for part in no_decay) else decay).append(parameter)
    groups = [{"name": "decay", "params": decay, "weight_decay": weight_decay},
              {"name": "no_decay", "params": plain, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: torch.nn.Module, groups: Iterable[Dict[str, Any]], config: TrainerConfig
                    ) -> Tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over ``groups`` (see ``Task.param_groups``) and the LambdaLR schedule of ``config``.

    Every trainable parameter of ``model`` must be in exactly one group. Each optimizer group
    keeps ``name``, ``ascent`` (True for a negative lr) for logs and :func:`flip_ascent_gradients`.
    """
    names = {id(p): n for n, p in model.named_parameters()}
    seen: Dict[int, str] = {}
    prepared: List[Dict[str, Any]] = []
    lambdas: List[Callable[[int], float]] = []
    default = _config_schedule(config)
    for index, group in enumerate(groups):
        group = dict(group)
        label = str(group.pop("name", f"group{index}"))
        params = [p for p in group.pop("params") if p.requires_grad]
        if not params:
            raise ConfigError(f"parameter group '{label}' has no trainable parameter; drop it from param_groups")
        for parameter in params:
            if id(parameter) in seen:
                raise ConfigError(f"parameter '{names.get(id(parameter), '?')}' is in two groups "
                                  f"('{seen[id(parameter)]}' and '{label}'); each belongs to one")
            seen[id(parameter)] = label
        lr = float(group.pop("lr", config.lr))
        weight_decay = float(group.pop("weight_decay", config.weight_decay))
        schedule = group.pop("schedule", None)
        if group:
            raise ConfigError(f"parameter group '{label}': unknown keys {sorted(group)}; allowed: params, name, lr, "
                              "weight_decay, schedule")
        if lr < 0 and weight_decay != 0:
            raise ConfigError(f"parameter group '{label}' has a negative lr (gradient ascent) and weight decay "
                              f"{weight_decay}; set its weight_decay to 0")
        prepared.append({"params": params, "lr": abs(lr), "weight_decay": weight_decay, "name": label,
                         "ascent": lr < 0})
        lambdas.append(schedule if schedule is not None else default)
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    if missing:
        raise ConfigError(f"{len(missing)} trainable parameter(s) are in no optimizer group, e.g. "
                          f"{', '.join(missing[:5])}; add them to Task.param_groups or set requires_grad=False")
    # The fused kernel updates every tensor in one pass over its memory; the default per-tensor loop
    # on a CPU runs ~10 ops per tensor and was 7 % of a DistilHuBERT step (benchmark profile).
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point()
                for group in prepared for p in group["params"])
    optimizer = torch.optim.AdamW(prepared, lr=config.lr, betas=tuple(config.adam_betas), eps=config.adam_eps,
                                  weight_decay=config.weight_decay, fused=fused or None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
    return optimizer, scheduler


def gradient_norm(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """The L2 norm over all of ``grads``, a float32 0-d tensor on their device (no host sync; inf or
    NaN when any gradient is). On a CPU, a sum of per-tensor dot products (BLAS, multi-threaded):
    the per-tensor ``linalg.vector_norm`` that ``clip_grad_norm_`` runs there took 1.3x longer."""
    if not grads:
        raise ValueError("gradient_norm needs at least one gradient")
    if all(g.device.type == "cpu" for g in grads):
        flat = [g.reshape(-1).float() for g in grads]  # (no copy for float32 contiguous gradients)
        return torch.stack([torch.dot(f, f) for f in flat]).sum().sqrt()
    return torch.nn.utils.get_total_norm(grads, foreach=True).float()


def clip_multiplier(norm: torch.Tensor, max_norm: float, scale: Optional[torch.Tensor] = None
                    ) -> Optional[torch.Tensor]:
    """What the gradients are to be multiplied by before the update: ``scale`` (e.g. accumulation's
    rescaling) times the clipping factor ``min(1, max_norm / (norm + 1e-6))`` (``clip_grad_norm_``'s)
    when ``max_norm > 0``; ``norm`` is that of the already scaled gradients. None: leave them."""
    if max_norm <= 0:
        return scale
    clip = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    return clip if scale is None else scale * clip


def _fused_step_scales(optimizer: torch.optim.Optimizer) -> bool:
    return bool(optimizer.defaults.get("fused")) and getattr(optimizer, "_step_supports_amp_scaling", False)


def step_with_multiplier(optimizer: torch.optim.Optimizer, multiplier: Optional[torch.Tensor],
                         scaler: Optional[torch.amp.GradScaler] = None) -> None:
    """``optimizer.step()`` on the gradients times ``multiplier`` (0-d tensor or None), through
    ``scaler`` when it is enabled (fp16; its gradients must be unscaled already).

    A fused optimizer takes the multiplier inside its own pass over the gradients, as the divisor
    ``grad_scale`` that GradScaler hands to it (the gradients are left multiplied, as after a
    separate ``mul_``); that saves a read and a write of every gradient, ~3 % of a DistilHuBERT
    step on a CPU together with :func:`gradient_norm`. Otherwise the gradients are multiplied first.
    """
    scaled = scaler is not None and scaler.is_enabled()
    if multiplier is not None and not scaled and _fused_step_scales(optimizer):
        optimizer.grad_scale = multiplier.reciprocal().float()
        try:
            optimizer.step()
        finally:
            del optimizer.grad_scale
        return
    if multiplier is not None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        torch._foreach_mul_(grads, multiplier)
    if scaled:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


def flip_ascent_gradients(optimizer: torch.optim.Optimizer) -> None:
    """Negate the gradients of every ``ascent`` group (call right before ``optimizer.step()``)."""
    for group in optimizer.param_groups:
        if group.get("ascent"):
            for parameter in group["params"]:
                if parameter.grad is not None:
                    parameter.grad.neg_()


def group_learning_rates(optimizer: torch.optim.Optimizer) -> Dict[str, float]:
    """Current signed lr of every group by name (negative for ascent groups)."""
    return {group["name"]: (-group["lr"] if group.get("ascent") else group["lr"]) for group in optimizer.param_groups}


_HYPERPARAMETERS = ("lr", "initial_lr", "betas", "eps", "weight_decay", "name", "ascent")


def load_optimizer_state(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
                         optimizer_state: Dict[str, Any], scheduler_state: Dict[str, Any]) -> None:
    """Restore moments and the update count from a checkpoint; keep the *current* hyperparameters.

    ``load_state_dict`` would bring back the learning rates, betas and weight decay saved in the
    checkpoint; a user who resumes with ``--lr`` or ``--max_steps`` changed means the new values,
    so the groups' hyperparameters and the scheduler's base lrs are re-applied afterwards and the
    lr recomputed for the restored update count.
    """
    fresh = [{key: group[key] for key in _HYPERPARAMETERS if key in group} for group in optimizer.param_groups]
    base_lrs = list(scheduler.base_lrs)
    if len(optimizer_state["param_groups"]) != len(fresh):
        raise ConfigError(f"the checkpoint has {len(optimizer_state['param_groups'])} optimizer groups, the task now "
                          f"builds {len(fresh)}; resume with the configuration the run started with")
    optimizer.load_state_dict(optimizer_state)
    scheduler.load_state_dict(scheduler_state)
    scheduler.base_lrs = base_lrs
    for group, saved, base, schedule in zip(optimizer.param_groups, fresh, base_lrs, scheduler.lr_lambdas):
        group.update(saved)
        group["lr"] = base * schedule(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
