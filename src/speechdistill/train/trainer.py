"""The one trainer: data, device, precision, DDP, accumulation, clipping, checkpoints, signals, logs.

One optimizer update, as the loop below does it::

    for each of accum_steps micro-batches:
        batch -> device; out = task.train_step(model, batch, step) under the student autocast
        all-reduce [count, loss non-finite?, stop requested?]        # one small tensor, no host sync
        backward(out.loss * out.count * world_size / count_of_first_micro_batch)
    grads *= count_of_first_micro_batch / total_count               # only when accum_steps > 1
    one host sync: [non-finite?, stop?, grad norm]
    non-finite -> skip the update (count it; K in a row stops the run)
    else: clip, flip ascent-group gradients, optimizer and scheduler step
    log / validate / checkpoint every N updates; SIGTERM/SIGUSR1 -> checkpoint and exit 99

DDP averages gradients over ranks, hence the ``world_size`` factor: the update's gradient is the
gradient of the mean of the loss over all units (frames, samples) of all micro-batches of all
ranks, whatever the number of units each rank holds (see :mod:`speechdistill.train.task`).
"""
from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Union

import torch
from tqdm import tqdm

from .. import kernels
from ..config import dump_yaml, load_yaml, to_dict
from ..data.audio import SAMPLE_RATE
from ..data.tables import atomic_write_text
from ..launch import REQUEUE_EXIT_CODE
from . import checkpoint as ckpt
from . import distributed as dist_utils
from . import run_state
from .config import TrainerConfig
from .data_setup import SkippedUtterances, build_train_data
from .log_window import LogWindow, update_line
from .logs import MetricsWriter, close_logger, setup_logger, write_plots
from .optim import (build_optimizer, clip_multiplier, flip_ascent_gradients, gradient_norm, group_learning_rates,
                    step_with_multiplier)
from .precision import autocast, common_precision, resolve_device, resolve_precision, set_float32_matmul
from .run_lock import lock_run_dir
from .runtime import TrainingError, check_writable, deterministic, peak_memory_mb, seed_everything, shut_down_workers
from .task import StepOutput, Task, TrainContext
from .tensorboard import open_events

__all__ = ["Trainer", "TrainResult", "TrainingError", "seed_everything"]

@dataclass
class TrainResult:
    """How :meth:`Trainer.run` ended: ``finished`` or ``preempted`` (a signal asked to stop)."""

    status: str
    step: int
    checkpoint: Optional[Path]

    @property
    def exit_code(self) -> int:
        return REQUEUE_EXIT_CODE if self.status == "preempted" else 0


@dataclass
class _Accumulated:
    """One update's micro-batches: the global unit count of the first (``reference``) and of all
    (``total``), summed flags ``[non-finite losses, stop requests]``, and per micro-batch
    ``(loss, terms, local count)`` for logging."""

    flags: torch.Tensor
    reference: Optional[torch.Tensor] = None
    total: Optional[torch.Tensor] = None
    micro_terms: List[tuple] = field(default_factory=list)
    flags_host: List[float] = field(default_factory=list)


def _to_device(batch: Mapping[str, Any], device: torch.device) -> Dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class Trainer:
    """Trains ``task`` with ``config``, writing everything under ``output_dir``.

    Output layout: ``config.yaml`` (resolved config), ``train.log``, ``metrics.jsonl``, ``tensorboard/``
    (the same scalars as event files), ``checkpoints/ckpt-<step>.pt`` (last ``keep_checkpoints``), ``plots/*.png``,
    ``skipped_utts.txt``, and whatever ``task.export`` writes.

    Args:
        resume: ``"auto"`` (default) continues from the latest checkpoint in ``output_dir`` if there is
            one; ``"latest"`` requires one; a path resumes from that checkpoint file.
        on_update: called with the update count after every applied update (e.g. to step a profiler).
    """

    def __init__(self, config: TrainerConfig, task: Task, output_dir: Union[str, Path], *,
                 resume: Optional[str] = "auto", on_update: Optional[Callable[[int], None]] = None) -> None:
        config.validate()
        self.config = config
        self.task = task
        self.output_dir = Path(output_dir)
        self.checkpoint_dir = self.output_dir / "checkpoints"
        self.resume = resume or "auto"
        self.module: Optional[torch.nn.Module] = None  # the unwrapped trainable module, after run()
        self._stop_signal: Optional[str] = None
        self._grad_multiplier: Optional[torch.Tensor] = None  # accumulation rescale x clip, for the next update
        self._stream: Optional[Iterator[Dict[str, Any]]] = None
        self.data = None
        self.on_update = on_update

    # ------------------------------------------------------------------ setup
    def run(self) -> TrainResult:
        """Train up to ``max_steps`` updates (or until SIGTERM/SIGUSR1); see :class:`TrainResult`."""
        config = self.config
        self.env = dist_utils.detect(master_port=config.master_port)
        self.device = resolve_device(config.device, self.env.local_rank)
        if config.threads > 0:
            torch.set_num_threads(config.threads)
        dist_utils.init_process_group(self.env, self.device, config.dist_backend, config.dist_timeout_minutes)
        previous_handlers = {}
        self.logger = None
        run_lock = None
        try:
            if self.is_main:  # a read-only or full output dir is named before anything is written in it
                check_writable(self.output_dir)
            # one run per output dir, for the run's lifetime (a second one stops here, naming the holder)
            run_lock = lock_run_dir(self.output_dir, self.is_main, dist_utils.all_gather_objects)
            for signum in (signal.SIGTERM, signal.SIGUSR1):
                previous_handlers[signum] = signal.signal(signum, self._on_signal)
            # (the policy fixed for the run: the environment is not read again on every model call)
            with kernels.use(config.kernels or kernels.policy()), deterministic(config.deterministic):
                return self._run()
        finally:
            if getattr(self, "_stream", None) is not None:
                self._stream.close()
            if getattr(self, "data", None) is not None:
                shut_down_workers(self.data.loader)
                shut_down_workers(self.data.valid_loader)
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
            if getattr(self, "metrics", None) is not None:
                self.metrics.close()
            if self.logger is not None:
                close_logger(self.logger)
            if run_lock is not None:
                run_lock.release()
            dist_utils.destroy_process_group()

    def _on_every_rank(self, key: str, resolved: str) -> str:
        """One precision for all ranks (:func:`common_precision`); a disagreement is logged."""
        per_rank = dist_utils.all_gather_objects(resolved)
        agreed = common_precision(per_rank)
        if len(set(per_rank)) > 1 and self.is_main:
            self.logger.warning("%s '%s' resolved differently on the ranks (%s); every rank trains in %s", key,
                                getattr(self.config, key), ", ".join(f"rank {r}: {p}" for r, p in enumerate(per_rank)),
                                agreed)
        return agreed

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._stop_signal = signal.Signals(signum).name

    @property
    def is_main(self) -> bool:
        return self.env.rank == 0

    def _find_resume_checkpoint(self) -> Optional[Path]:
        if self.resume == "auto":
            return ckpt.latest_checkpoint(self.checkpoint_dir)
        if self.resume == "latest":
            found = ckpt.latest_checkpoint(self.checkpoint_dir)
            if found is None:
                raise ckpt.CheckpointError(f"{self.checkpoint_dir}: --resume was given but there is no checkpoint "
                                           "to resume from; drop --resume to start a fresh run")
            return found
        return Path(self.resume)

    def _run(self) -> TrainResult:
        config, env = self.config, self.env
        if self.is_main:
            ckpt.remove_stale_temporaries(self.checkpoint_dir)
        dist_utils.barrier()
        self.logger = setup_logger(self.output_dir / "train.log", env.rank)
        log = self.logger
        emulated = config.allow_emulated_precision
        self.precision = self._on_every_rank("precision", resolve_precision(
            config.precision, self.device, allow_emulated=emulated, key="precision", log=log))
        self.teacher_precision = self._on_every_rank("teacher_precision", resolve_precision(
            config.teacher_precision, self.device, allow_emulated=emulated, key="teacher_precision", log=log))
        tf32 = set_float32_matmul(self.device, config.tf32)
        resume_path = self._find_resume_checkpoint()
        log.info("%s %s", "resuming from " + str(resume_path) if resume_path else "starting",
                 f"in {self.output_dir}; command: {' '.join(sys.argv)}")
        log.info("launcher %s: rank %d of %d (node %d, local rank %d); device %s; precision %s, teacher %s%s; "
                 "kernels %s; %d CPU threads; torch %s", env.launcher, env.rank, env.world_size, env.node_rank,
                 env.local_rank, self.device, self.precision, self.teacher_precision,
                 ", TF32 matmuls" if tf32 else "", kernels.policy(), torch.get_num_threads(), torch.__version__)

        self.context = TrainContext(device=self.device, precision=self.precision,
                                    teacher_precision=self.teacher_precision, rank=env.rank,
                                    world_size=env.world_size, local_rank=env.local_rank,
                                    output_dir=self.output_dir, seed=config.seed, logger=log)
        self.task.setup(self.context)
        seed_everything(config.seed)  # identical initialisation on every rank
        module = self.task.model()
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"Task.model() must return a torch.nn.Module, not {type(module).__name__}")
        module.to(self.device)
        module.train()
        self.module = module
        self.optimizer, self.scheduler = build_optimizer(module, self.task.param_groups(module), config)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
        log.info("trainable parameters: %s in %d group(s): %s", f"{trainable:,}", len(self.optimizer.param_groups),
                 ", ".join(f"{n} (lr {lr:g})" for n, lr in group_learning_rates(self.optimizer).items()))

        self.data = build_train_data(config, self.task, env, self.device, log)
        self.skipped = SkippedUtterances(config, self.data, self.output_dir, log, self.is_main)
        self.step = 0
        self.skipped_nonfinite = 0
        self.last_checkpoint: Optional[Path] = None
        self.checkpoint_step: Optional[int] = None  # the update of the last checkpoint written or resumed
        self.sampler_position = self.data.sampler.state_dict()  # where the next batch comes from
        self.train_seconds = 0.0
        self._valid_step = -1
        self._update_lrs = group_learning_rates(self.optimizer)
        fresh = resume_path is None
        if resume_path is not None:
            run_state.restore(self, resume_path)
        else:
            seed_everything(config.seed + env.rank)  # separate random streams (dropout, masks) per rank
        self._write_config(resumed=not fresh)
        events = open_events(self.output_dir, config.tensorboard and self.is_main, 0 if fresh else self.step + 1)
        self.metrics = MetricsWriter(self.output_dir / "metrics.jsonl", enabled=self.is_main, events=events)
        # keep only what the resumed state saw; a fresh start keeps nothing of a run killed before its first checkpoint
        self.metrics.truncate_after(self.step if not fresh else -1)

        self.model: torch.nn.Module = module
        self.ddp: Optional[torch.nn.parallel.DistributedDataParallel] = None
        if env.distributed:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=config.find_unused_parameters,
                gradient_as_bucket_view=True)  # gradients live in the all-reduce buckets: no copy, less memory
            self.model = self.ddp
        if config.compile:
            self.model = torch.compile(self.model)

        if self.step >= config.max_steps:
            log.info("the run already reached max_steps=%d; nothing to train", config.max_steps)
            self._finish(validate=False)
            return TrainResult("finished", self.step, self.last_checkpoint)
        if fresh and config.valid_at_start and self.data.valid_set is not None:
            self._validate()
        return self._train_loop()

    # ------------------------------------------------------------ bookkeeping
    def _write_config(self, resumed: bool) -> None:
        if not self.is_main:
            return
        path = self.output_dir / "config.yaml"
        current = to_dict(self.config)
        if resumed and path.is_file():
            before = load_yaml(path)
            changed = sorted(k for k in set(before) | set(current) if before.get(k) != current.get(k))
            if changed:
                self.logger.warning("configuration changed since the run started: %s",
                                    "; ".join(f"{k}: {before.get(k)!r} -> {current.get(k)!r}" for k in changed))
        atomic_write_text(path, dump_yaml(self.config))

    # ------------------------------------------------------------ checkpoints
    def _save_checkpoint(self) -> Path:
        state = run_state.capture(self)
        path = ckpt.checkpoint_path(self.checkpoint_dir, self.step)
        if self.is_main:
            path = ckpt.save_checkpoint(state, self.checkpoint_dir, self.step, self.config.keep_checkpoints)
            self.logger.info("checkpoint %s", path)
        dist_utils.barrier()
        self.last_checkpoint = path
        self.checkpoint_step = self.step
        return path

    # ------------------------------------------------------------------ loop
    def _train_batches(self) -> Iterator[Dict[str, Any]]:
        while True:
            for batch in self.data.loader:
                yield batch
            self.data.sampler.set_epoch(self.data.sampler.epoch + 1)

    def _next_batch(self, stream: Iterator[Dict[str, Any]]) -> Dict[str, Any]:
        """The next batch with at least one readable utterance (records the sampler position)."""
        while True:
            batch = next(stream)
            epoch, index = batch["position"]
            self.sampler_position = {"epoch": epoch, "batch_index": index + 1}
            self.skipped.note(batch, "train")
            if batch["keys"]:
                return batch

    def _train_loop(self) -> TrainResult:
        config = self.config
        self.nonfinite_in_row = 0
        stream = self._stream = self._train_batches()
        window = LogWindow(self.device)
        progress = tqdm(total=config.max_steps, initial=self.step, disable=not self.is_main, unit="step",
                        dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 60.0, file=sys.stderr,
                        desc="train")
        try:
            while self.step < config.max_steps:
                started = time.perf_counter()
                accumulated = self._accumulate_gradients(stream, window)
                if accumulated is None:  # a stop signal between micro-batches: this update is dropped
                    return self._stop_for_requeue(window, progress)
                nonfinite, stop, grad_norm = self._check_gradients(accumulated)
                if nonfinite:
                    self._skip_update(accumulated.micro_terms, gradient_only=accumulated.flags_host[0] == 0)
                else:
                    self._apply_update()
                    progress.update(1)
                    window.add_update(accumulated.micro_terms, grad_norm)
                    if self.on_update is not None:
                        self.on_update(self.step)
                elapsed = time.perf_counter() - started
                window.seconds += elapsed
                self.train_seconds += elapsed
                if not nonfinite:
                    if self.step % config.log_every == 0 or self.step == config.max_steps:
                        self._log(window, progress)
                        window = LogWindow(self.device)
                    if config.valid_every and self.step % config.valid_every == 0 and self.data.valid_set is not None:
                        self._validate()
                    if self.step % config.checkpoint_every == 0:
                        self._save_checkpoint()
                if stop:
                    return self._stop_for_requeue(window, progress)
        finally:
            progress.close()
        self._finish(validate=self._valid_step != self.step)
        return TrainResult("finished", self.step, self.last_checkpoint)

    def _accumulate_gradients(self, stream: Iterator[Dict[str, Any]], window: LogWindow) -> Optional["_Accumulated"]:
        """Forward and backward ``accum_steps`` micro-batches; see the module docstring for the scaling.

        A single-process run that receives SIGTERM/SIGUSR1 between two micro-batches drops the update in
        progress (None): the sampler position, the random streams and the task's state go back to where
        the update started, so the checkpoint written next resumes exactly there, and the stop does not
        wait for the remaining micro-batches (on slow hardware, longer than a scheduler's grace period).
        DDP ranks stop at update boundaries, where they agree without an extra synchronisation."""
        world = float(self.env.world_size)
        self.optimizer.zero_grad(set_to_none=True)
        acc = _Accumulated(flags=torch.zeros(2, device=self.device))
        start = None
        if self.config.accum_steps > 1 and not self.env.distributed:
            start = (dict(self.sampler_position), ckpt.capture_rng_state(), self.task.state_dict())
        seen = [0.0, 0.0, 0.0]  # audio seconds, padded samples, real samples
        for micro in range(self.config.accum_steps):
            if micro and start is not None and self._stop_signal is not None:
                self._drop_update(start, micro)
                return None
            batch = self._next_batch(stream)
            seen = [seen[0] + batch["audio_seconds"], seen[1] + batch["wavs"].numel(),
                    seen[2] + batch["audio_seconds"] * SAMPLE_RATE]
            on_device = _to_device(batch, self.device)
            last = micro == self.config.accum_steps - 1
            # DDP all-reduces gradients in backward(); accumulating micro-batches skip it
            sync = contextlib.nullcontext() if (self.ddp is None or last) else self.ddp.no_sync()
            with sync:
                with autocast(self.device, self.precision):
                    out = self.task.train_step(self.model, on_device, self.step)
                if not isinstance(out, StepOutput):
                    raise TypeError(f"Task.train_step must return a StepOutput, not {type(out).__name__}")
                loss = out.loss.float()
                count = (out.count.detach().float() if isinstance(out.count, torch.Tensor)
                         else torch.full((), float(out.count), device=self.device))
                stopping = torch.full((), float(self._stop_signal is not None), device=self.device)
                shared = torch.stack([count, (~torch.isfinite(loss.detach())).float(), stopping])
                dist_utils.all_reduce_sum(shared)  # [global count, ranks with a non-finite loss, ranks stopping]
                if acc.reference is None:
                    acc.reference = torch.where(shared[0] > 0, shared[0], torch.ones_like(shared[0]))
                    acc.total = torch.zeros_like(acc.reference)
                acc.total += shared[0]
                acc.flags += shared[1:]
                self.scaler.scale(loss * count * world / acc.reference).backward()
            acc.micro_terms.append((loss.detach(), {k: v.detach().float() for k, v in out.terms.items()}, count))
        window.add_data(*seen)
        return acc

    def _drop_update(self, start: tuple, done: int) -> None:
        """Forget the update in progress: its gradients, and what its micro-batches drew from the data,
        the random streams and the task (``start``: sampler position, RNG states, task state before it)."""
        position, rng, task_state = start
        self.optimizer.zero_grad(set_to_none=True)
        self.sampler_position = position
        ckpt.restore_rng_state(rng)
        self.task.load_state_dict(task_state)
        self.logger.info("%s received after %d of %d micro-batches of update %d: the update is dropped and a rerun "
                         "redoes it", self._stop_signal, done, self.config.accum_steps, self.step + 1)

    def _check_gradients(self, acc: "_Accumulated") -> tuple:
        """Finish the gradients and decide, with the step's one host sync: (non-finite?, stop?, grad norm)."""
        grad_norm = None
        if self.precision != "fp16":
            grad_norm = self._finish_gradients(acc.reference, acc.total)
            decision = torch.cat([acc.flags, grad_norm.reshape(1).float()]).tolist()
            acc.flags_host = decision[:2]
            return decision[0] > 0 or not math.isfinite(decision[2]), decision[1] > 0, grad_norm
        # fp16: inf/NaN gradients are the scaler's business (it skips and lowers the scale); only a
        # non-finite loss is ours, decided before unscaling so that a skipped step leaves the scaler as it was.
        acc.flags_host = acc.flags.tolist()
        nonfinite = acc.flags_host[0] > 0
        if not nonfinite:
            self.scaler.unscale_(self.optimizer)
            grad_norm = self._finish_gradients(acc.reference, acc.total)
        return nonfinite, acc.flags_host[1] > 0, grad_norm

    def _apply_update(self) -> None:
        self.nonfinite_in_row = 0
        flip_ascent_gradients(self.optimizer)
        step_with_multiplier(self.optimizer, self._grad_multiplier, self.scaler)
        self._grad_multiplier = None
        self._update_lrs = group_learning_rates(self.optimizer)  # the lrs this update used
        self.scheduler.step()
        self.step += 1

    def _stop_for_requeue(self, window: LogWindow, progress: tqdm) -> TrainResult:
        if window.updates:
            self._log(window, progress)
        if self.checkpoint_step != self.step:
            self._save_checkpoint()
        self.logger.warning("%s received: stopped after update %d with checkpoint %s; exit code %d asks the "
                            "launcher to requeue, and a rerun resumes here", self._stop_signal or "stop request",
                            self.step, self.last_checkpoint, REQUEUE_EXIT_CODE)
        return TrainResult("preempted", self.step, self.last_checkpoint)

    def _finish_gradients(self, reference: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
        """The gradients' norm after rescaling accumulated ones to the mean over all micro-batches;
        that rescaling and the clipping are left to the update (``self._grad_multiplier``, applied
        by :func:`step_with_multiplier` inside a fused optimizer's pass)."""
        grads = [p.grad for p in self.module.parameters() if p.grad is not None]
        self._grad_multiplier = None
        if not grads:
            return torch.zeros((), device=self.device)
        factor = None
        if self.config.accum_steps > 1:
            factor = reference / torch.where(total > 0, total, torch.ones_like(total))
        norm = gradient_norm(grads)
        if factor is not None:
            norm = norm * factor
        self._grad_multiplier = clip_multiplier(norm, self.config.grad_clip, factor)
        return norm

    def _skip_update(self, micro_terms: List[tuple], gradient_only: bool) -> None:
        """A non-finite loss or gradient: no update, count it, stop after too many in a row."""
        self.optimizer.zero_grad(set_to_none=True)
        self.skipped_nonfinite += 1
        self.nonfinite_in_row += 1
        local = []
        for loss_value, terms, _ in micro_terms:
            local.extend(name for name, value in terms.items() if not bool(torch.isfinite(value)))
            if not bool(torch.isfinite(loss_value)) and not any(not bool(torch.isfinite(v)) for v in terms.values()):
                local.append("loss")
        names = sorted({n for rank_names in dist_utils.all_gather_objects(local) for n in rank_names})
        what = ", ".join(names) if names else ("the gradient" if gradient_only else "loss")
        attempted = self.step + 1
        self.logger.warning("update %d skipped: non-finite %s (%d in a row, %d skipped in total)", attempted, what,
                            self.nonfinite_in_row, self.skipped_nonfinite)
        if self.nonfinite_in_row >= self.config.max_nonfinite_in_row:
            last = self.last_checkpoint if self.last_checkpoint is not None else "none yet"
            raise TrainingError(
                f"training diverged: update {attempted} is the {self.nonfinite_in_row}th in a row whose loss was not "
                f"finite (term: {what}); last good checkpoint: {last}. Fix: lower lr or grad_clip, lengthen warmup, "
                "or train in fp32/bf16, then rerun (it resumes from that checkpoint)")

    # -------------------------------------------------------------- logging
    def _log(self, window: LogWindow, progress: tqdm) -> None:
        losses, rates = window.summarise(self.skipped.unreadable, self.env.world_size)
        record: Dict[str, Any] = {"step": self.step, "epoch": self.sampler_position["epoch"], **losses}
        record.update({f"lr/{name}": lr for name, lr in self._update_lrs.items()})
        record.update(rates)
        record.update({"skipped_nonfinite": self.skipped_nonfinite, "skipped_short": self.skipped.short,
                       "elapsed_s": round(self.train_seconds, 3)})
        if self.precision == "fp16":
            record["loss_scale"] = float(self.scaler.get_scale())
        record["max_memory_mb"] = peak_memory_mb(self.device)
        self.metrics.write(record)
        self.logger.info("%s", update_line(record, sorted(window.terms), self.config.max_steps))
        progress.set_postfix_str(f"loss {record['loss']:.4g}, {record['audio_sec_per_sec']:.1f} audio-s/s",
                                 refresh=False)

    def _validate(self) -> Dict[str, float]:
        """Average ``Task.valid_step`` over the whole valid set (all ranks); logs ``valid/<name>``."""
        module, log = self.module, self.logger
        started = time.perf_counter()
        sums: Dict[str, float] = {}
        utterances = 0
        module.eval()
        saved_in_row = self.skipped.failures_in_row
        try:
            with ckpt.preserved_rng(), torch.no_grad(), autocast(self.device, self.precision):
                self.data.valid_sampler.set_epoch(0)
                for batch in self.data.valid_loader:
                    self.skipped.note(batch, "valid")
                    if not batch["keys"]:
                        continue
                    metrics = self.task.valid_step(module, _to_device(batch, self.device))
                    size = len(batch["keys"])
                    for name, value in metrics.items():
                        value = float(value.detach().float()) if isinstance(value, torch.Tensor) else float(value)
                        sums[name] = sums.get(name, 0.0) + value * size
                    utterances += size
        finally:
            module.train()
            self.skipped.failures_in_row = saved_in_row
        gathered = dist_utils.all_gather_objects((utterances, sums))
        total = sum(n for n, _ in gathered)
        names = sorted({name for _, s in gathered for name in s})
        result = {f"valid/{name}": sum(s.get(name, 0.0) for _, s in gathered) / total
                  for name in names} if total else {}
        record = {"step": self.step, **result, "valid/num_utts": total}
        self.metrics.write(record)
        log.info("validation at update %d on %d utterances (%.1f s): %s", self.step, total,
                 time.perf_counter() - started, " ".join(f"{k[6:]} {v:.4g}" for k, v in result.items()))
        self._valid_step = self.step
        return result

    def _finish(self, validate: bool) -> None:
        if validate and self.data.valid_set is not None:
            self._validate()
        if self.checkpoint_step != self.step:
            self._save_checkpoint()
        if self.is_main:
            plots = write_plots(self.output_dir / "metrics.jsonl", self.output_dir / "plots")
            self.logger.info("wrote %d plot(s) in %s", len(plots), self.output_dir / "plots")
            self.task.export(self.module, self.output_dir)
            self.logger.info("finished at update %d after %.1f s of training", self.step, self.train_seconds)
        dist_utils.barrier()
