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
import os
import random
import resource
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Union

import numpy as np
import torch
from tqdm import tqdm

from .. import kernels
from ..config import dump_yaml, load_yaml, to_dict
from ..data.audio import SAMPLE_RATE
from ..data.tables import atomic_write_text
from ..launch import REQUEUE_EXIT_CODE
from . import checkpoint as ckpt
from . import distributed as dist_utils
from .config import TrainerConfig
from .loader import build_loader
from .logs import MetricsWriter, close_logger, setup_logger, write_plots
from .optim import (build_optimizer, clip_multiplier, flip_ascent_gradients, gradient_norm, group_learning_rates,
                    load_optimizer_state, step_with_multiplier)
from .precision import autocast, common_precision, resolve_device, resolve_precision, set_float32_matmul
from .run_lock import lock_run_dir
from .task import StepOutput, Task, TrainContext, item_extras_of, item_fields_of



class TrainingError(ValueError):
    """The run cannot go on (diverged, unreadable data); the message says where and what to do."""


@dataclass
class TrainResult:
    """How :meth:`Trainer.run` ended: ``finished`` or ``preempted`` (a signal asked to stop)."""

    status: str
    step: int
    checkpoint: Optional[Path]

    @property
    def exit_code(self) -> int:
        return REQUEUE_EXIT_CODE if self.status == "preempted" else 0


def _shut_down_workers(loader: Optional[torch.utils.data.DataLoader]) -> None:
    """Stop a DataLoader's persistent workers now rather than at interpreter exit.

    Workers ignore SIGTERM (see :func:`.loader.ignore_stop_signals`), and at exit ``multiprocessing``
    terminates leftover daemonic workers with SIGTERM and waits for them, which would never end.
    The DataLoader's own shutdown lets them exit cleanly; any that do not are killed.
    """
    iterator = getattr(loader, "_iterator", None) if loader is not None else None
    if iterator is None:
        return
    workers = list(getattr(iterator, "_workers", ()))
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    for worker in workers:
        if worker.is_alive():
            worker.kill()
            worker.join(timeout=5)
    loader._iterator = None


@contextlib.contextmanager
def _deterministic(enabled: bool) -> Iterator[None]:
    """Deterministic algorithms for the body (cuBLAS needs its workspace config before its first use in the
    process), then the previous settings."""
    if not enabled:
        yield
        return
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
              torch.backends.cudnn.deterministic)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[1], before[2]


def _peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far in MiB: on CUDA what tensors took on the device, elsewhere the process's peak
    resident memory."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _check_writable(directory: Path) -> None:
    """Create the output dir and write a file in it, or fail naming the dir (read-only, full, no permission)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise TrainingError(ckpt.write_failure(directory, exc, "the run's output (--output-dir)")) from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


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


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class Trainer:
    """Trains ``task`` with ``config``, writing everything under ``output_dir``.

    Output layout: ``config.yaml`` (resolved config), ``train.log``, ``metrics.jsonl``,
    ``checkpoints/ckpt-<step>.pt`` (last ``keep_checkpoints``), ``plots/*.png``,
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
        self._skipped_keys: set = set()
        self._stream: Optional[Iterator[Dict[str, Any]]] = None
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
                _check_writable(self.output_dir)
            # one run per output dir, for the run's lifetime (a second one stops here, naming the holder)
            run_lock = lock_run_dir(self.output_dir, self.is_main, dist_utils.all_gather_objects)
            for signum in (signal.SIGTERM, signal.SIGUSR1):
                previous_handlers[signum] = signal.signal(signum, self._on_signal)
            # (the policy fixed for the run: the environment is not read again on every model call)
            with kernels.use(config.kernels or kernels.policy()), _deterministic(config.deterministic):
                return self._run()
        finally:
            if getattr(self, "_stream", None) is not None:
                self._stream.close()
            _shut_down_workers(getattr(self, "loader", None))
            _shut_down_workers(getattr(self, "valid_loader", None))
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
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

        self._build_data()
        self.step = 0
        self.counters = {"skipped_nonfinite": 0, "skipped_unreadable": 0}
        self.last_checkpoint: Optional[Path] = None
        self._checkpoint_step: Optional[int] = None
        self._sampler_position = self.sampler.state_dict()
        self._train_seconds = 0.0
        self._valid_step = -1
        self._update_lrs = group_learning_rates(self.optimizer)
        fresh = resume_path is None
        if resume_path is not None:
            self._restore(resume_path)
        else:
            seed_everything(config.seed + env.rank)  # separate random streams (dropout, masks) per rank
        self._write_config(resumed=not fresh)
        self.metrics = MetricsWriter(self.output_dir / "metrics.jsonl", enabled=self.is_main)
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
        if fresh and config.valid_at_start and self.valid_set is not None:
            self._validate()
        return self._train_loop()

    def _build_data(self) -> None:
        config, env, log = self.config, self.env, self.logger
        def make(data_dir: str, training: bool):
            dataset, sampler, loader = build_loader(
                config, data_dir, training=training, world_size=env.world_size, rank=env.rank,
                fields=item_fields_of(self.task, Path(data_dir)),
                extras=item_extras_of(self.task, Path(data_dir)) if training else None,
                pin_memory=self.device.type == "cuda")
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

        self.train_set, self.sampler, self.loader = make(config.train_data, True)
        self.valid_set = self.valid_sampler = self.valid_loader = None
        if config.valid_data:
            self.valid_set, self.valid_sampler, self.valid_loader = make(config.valid_data, False)
        log.info("one update = %d rank(s) x %d micro-batch(es) of at most %.1f s = at most %.1f s of audio",
                 env.world_size, config.accum_steps, config.batch_seconds,
                 env.world_size * config.accum_steps * config.batch_seconds)
        self._write_skipped_list()

    # ------------------------------------------------------------ bookkeeping
    def _write_skipped_list(self) -> None:
        """Rank 0 rewrites the too-short part of ``skipped_utts.txt``, keeping unreadable entries of earlier runs."""
        path = self.output_dir / "skipped_utts.txt"
        lines: List[str] = []
        if path.is_file():
            lines = [line for line in path.read_text(encoding="utf-8").splitlines() if " too-short: " not in line]
        self._skipped_keys = {line.split(" ", 2)[0] + " " + line.split(" ", 2)[1] for line in lines if " " in line}
        for name, dataset in (("train", self.train_set), ("valid", self.valid_set)):
            if dataset is None:
                continue
            lines.extend(f"{key} {name} {reason}" for key, reason in dataset.skipped)
            if dataset.skipped:
                self.logger.warning("%d %s utterance(s) shorter than min_seconds=%g are skipped; listed in %s",
                                    len(dataset.skipped), name, self.config.min_seconds, path)
        if self.is_main:
            atomic_write_text(path, "".join(f"{line}\n" for line in lines))
        self.counters_short = sum(len(d.skipped) for d in (self.train_set, self.valid_set) if d is not None)
        self.failures_in_row = 0

    def _note_failures(self, batch: Mapping[str, Any], split: str) -> None:
        """Count unreadable utterances, list them, stop after too many in a row."""
        failures = batch["failures"]
        if failures:
            if split == "train":
                self.counters["skipped_unreadable"] += len(failures)
            with open(self.output_dir / "skipped_utts.txt", "a", encoding="utf-8") as handle:
                for key, message in failures:
                    self.logger.warning("skipping unreadable %s utterance: %s", split, _one_line(message))
                    if f"{key} {split}" not in self._skipped_keys:
                        self._skipped_keys.add(f"{key} {split}")
                        handle.write(f"{key} {split} unreadable: {_one_line(message)}\n")
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
                    f"last one: {_one_line(message)}. Fix: check that the audio of {data_dir} is reachable from this "
                    f"machine; the unreadable ones are listed in {self.output_dir / 'skipped_utts.txt'}")

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
    def _checkpoint_state(self) -> Dict[str, Any]:
        """Everything a resume needs; per-rank entries are gathered lists indexed by rank."""
        per_rank = dist_utils.all_gather_objects({
            "rng": ckpt.capture_rng_state(),
            "task": self.task.state_dict(),
            "sampler": dict(self._sampler_position),
        })
        totals = torch.tensor([float(self.counters["skipped_unreadable"])], dtype=torch.float64, device=self.device)
        dist_utils.all_reduce_sum(totals)
        return {
            "step": self.step,
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "world_size": self.env.world_size,
            "rng": [r["rng"] for r in per_rank],
            "task": [r["task"] for r in per_rank],
            "sampler": [r["sampler"] for r in per_rank],
            "counters": {"skipped_nonfinite": self.counters["skipped_nonfinite"],
                         "skipped_unreadable": int(totals.item())},
            "train_seconds": self._train_seconds,
            "config": to_dict(self.config),
        }

    def _save_checkpoint(self) -> Path:
        state = self._checkpoint_state()
        path = ckpt.checkpoint_path(self.checkpoint_dir, self.step)
        if self.is_main:
            path = ckpt.save_checkpoint(state, self.checkpoint_dir, self.step, self.config.keep_checkpoints)
            self.logger.info("checkpoint %s", path)
        dist_utils.barrier()
        self.last_checkpoint = path
        self._checkpoint_step = self.step
        return path

    def _restore(self, path: Path) -> None:
        state = ckpt.load_checkpoint(path)
        env, log = self.env, self.logger
        try:
            self.module.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise ckpt.CheckpointError(f"{path}: the model in the checkpoint does not match the task's model "
                                       f"({_one_line(str(exc))[:300]}); resume with the configuration the run "
                                       "started with, or use another output dir") from None
        load_optimizer_state(self.optimizer, self.scheduler, state["optimizer"], state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.counters = dict(state["counters"])
        if not self.is_main:
            self.counters["skipped_unreadable"] = 0  # the saved value is the sum over ranks; rank 0 carries it
        self._train_seconds = float(state.get("train_seconds", 0.0))
        saved_world = int(state["world_size"])
        if saved_world == env.world_size:
            position = state["sampler"][env.rank]
            self.task.load_state_dict(state["task"][env.rank])
            ckpt.restore_rng_state(state["rng"][env.rank])
        else:
            # Another world size shards batches differently: continue from the same share of the epoch.
            old = state["sampler"][0]
            position = {"epoch": old["epoch"],
                        "batch_index": math.ceil(old["batch_index"] * saved_world / env.world_size)}
            self.task.load_state_dict(state["task"][min(env.rank, saved_world - 1)])
            seed_everything(self.config.seed + env.rank + 7919 * self.step)
            log.warning("the checkpoint was written by %d rank(s), this run has %d: resuming at the same point of "
                        "the data, but random streams are reseeded (the run is not bit-identical to an "
                        "uninterrupted one)", saved_world, env.world_size)
        self.sampler.load_state_dict(position)
        self._sampler_position = dict(position)
        self.last_checkpoint = Path(path)
        self._checkpoint_step = self.step
        log.info("resumed at update %d (epoch %d, batch %d of this rank)", self.step, position["epoch"],
                 position["batch_index"])

    # ------------------------------------------------------------------ loop
    def _train_batches(self) -> Iterator[Dict[str, Any]]:
        while True:
            for batch in self.loader:
                yield batch
            self.sampler.set_epoch(self.sampler.epoch + 1)

    def _next_batch(self, stream: Iterator[Dict[str, Any]]) -> Dict[str, Any]:
        """The next batch with at least one readable utterance (records the sampler position)."""
        while True:
            batch = next(stream)
            epoch, index = batch["position"]
            self._sampler_position = {"epoch": epoch, "batch_index": index + 1}
            self._note_failures(batch, "train")
            if batch["keys"]:
                return batch

    def _train_loop(self) -> TrainResult:
        config = self.config
        self.nonfinite_in_row = 0
        stream = self._stream = self._train_batches()
        window = self._new_window()
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
                    self._add_to_window(window, accumulated.micro_terms, grad_norm)
                    if self.on_update is not None:
                        self.on_update(self.step)
                elapsed = time.perf_counter() - started
                window["seconds"] += elapsed
                self._train_seconds += elapsed
                if not nonfinite:
                    if self.step % config.log_every == 0 or self.step == config.max_steps:
                        self._log(window, progress)
                        window = self._new_window()
                    if config.valid_every and self.step % config.valid_every == 0 and self.valid_set is not None:
                        self._validate()
                    if self.step % config.checkpoint_every == 0:
                        self._save_checkpoint()
                if stop:
                    return self._stop_for_requeue(window, progress)
        finally:
            progress.close()
        self._finish(validate=self._valid_step != self.step)
        return TrainResult("finished", self.step, self.last_checkpoint)

    def _accumulate_gradients(self, stream: Iterator[Dict[str, Any]], window: Dict[str, Any]
                              ) -> Optional["_Accumulated"]:
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
            start = (dict(self._sampler_position), ckpt.capture_rng_state(), self.task.state_dict())
        seen = {"audio_seconds": 0.0, "padded_samples": 0.0, "real_samples": 0.0}
        for micro in range(self.config.accum_steps):
            if micro and start is not None and self._stop_signal is not None:
                self._drop_update(start, micro)
                return None
            batch = self._next_batch(stream)
            seen["audio_seconds"] += batch["audio_seconds"]
            seen["padded_samples"] += batch["wavs"].numel()
            seen["real_samples"] += batch["audio_seconds"] * SAMPLE_RATE
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
        for name, value in seen.items():
            window[name] += value
        return acc

    def _drop_update(self, start: tuple, done: int) -> None:
        """Forget the update in progress: its gradients, and what its micro-batches drew from the data,
        the random streams and the task (``start``: sampler position, RNG states, task state before it)."""
        position, rng, task_state = start
        self.optimizer.zero_grad(set_to_none=True)
        self._sampler_position = position
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

    @staticmethod
    def _add_to_window(window: Dict[str, Any], micro_terms: List[tuple], grad_norm: torch.Tensor) -> None:
        for loss_value, terms, count in micro_terms:
            window["count"] += count
            window["loss"] += loss_value * count
            for name, value in terms.items():
                window["terms"][name] = window["terms"].get(name, 0.0) + value * count
        window["grad_norm"] += grad_norm.detach().float()
        window["updates"] += 1

    def _stop_for_requeue(self, window: Dict[str, Any], progress: tqdm) -> TrainResult:
        if window["updates"]:
            self._log(window, progress)
        if self._checkpoint_step != self.step:
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
        self.counters["skipped_nonfinite"] += 1
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
                            self.nonfinite_in_row, self.counters["skipped_nonfinite"])
        if self.nonfinite_in_row >= self.config.max_nonfinite_in_row:
            last = self.last_checkpoint if self.last_checkpoint is not None else "none yet"
            raise TrainingError(
                f"training diverged: update {attempted} is the {self.nonfinite_in_row}th in a row whose loss was not "
                f"finite (term: {what}); last good checkpoint: {last}. Fix: lower lr or grad_clip, lengthen warmup, "
                "or train in fp32/bf16, then rerun (it resumes from that checkpoint)")

    # -------------------------------------------------------------- logging
    def _new_window(self) -> Dict[str, Any]:
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        return {"count": zero.clone(), "loss": zero.clone(), "terms": {}, "grad_norm": zero.clone(), "updates": 0,
                "audio_seconds": 0.0, "padded_samples": 0.0, "real_samples": 0.0, "seconds": 0.0}

    def _log(self, window: Dict[str, Any], progress: tqdm) -> None:
        names = sorted(window["terms"])
        host = [window["audio_seconds"], window["padded_samples"], window["real_samples"],
                float(self.counters["skipped_unreadable"])]
        on_device = [window["count"].double(), window["loss"].double(), window["grad_norm"].double()] + [
            torch.as_tensor(window["terms"][n], dtype=torch.float64, device=self.device) for n in names]
        if self.env.distributed:  # the host values join the one all-reduce (one copy to the device)
            vector = torch.cat([torch.stack(on_device), torch.tensor(host, dtype=torch.float64).to(self.device)])
            dist_utils.all_reduce_sum(vector)
            values = vector.tolist()
        else:  # one read from the device, nothing copied to it
            values = torch.stack(on_device).tolist() + host
        count, loss_sum, grad_norm_sum = values[:3]
        term_sums = values[3:3 + len(names)]
        audio, padded, real, unreadable = values[3 + len(names):]
        seconds = max(window["seconds"], 1e-9)
        updates = max(window["updates"], 1)
        record: Dict[str, Any] = {"step": self.step, "epoch": self._sampler_position["epoch"],
                                  "loss": loss_sum / count if count else float("nan")}
        for name, value in zip(names, term_sums):
            record[name] = value / count if count else float("nan")
        for name, lr in self._update_lrs.items():
            record[f"lr/{name}"] = lr
        record.update({
            "grad_norm": grad_norm_sum / self.env.world_size / updates,
            "audio_sec_per_sec": audio / seconds,
            "padding_fraction": 1.0 - real / padded if padded else 0.0,
            "skipped_nonfinite": self.counters["skipped_nonfinite"],
            "skipped_unreadable": int(unreadable),
            "skipped_short": self.counters_short,
            "elapsed_s": round(self._train_seconds, 3),
        })
        if self.precision == "fp16":
            record["loss_scale"] = float(self.scaler.get_scale())
        record["max_memory_mb"] = _peak_memory_mb(self.device)
        self.metrics.write(record)
        terms_text = " ".join(f"{n} {record[n]:.4g}" for n in names)
        lrs = " ".join(f"{k[3:]} {v:.3g}" for k, v in record.items() if k.startswith("lr/"))
        self.logger.info("update %d/%d epoch %d: loss %.4g%s | lr %s | grad norm %.3g | %.1f audio-s/s | "
                         "padding %.1f%% | skipped: %d non-finite, %d unreadable, %d short",
                         self.step, self.config.max_steps, record["epoch"], record["loss"],
                         f" ({terms_text})" if terms_text else "", lrs, record["grad_norm"],
                         record["audio_sec_per_sec"], 100 * record["padding_fraction"], record["skipped_nonfinite"],
                         record["skipped_unreadable"], record["skipped_short"])
        progress.set_postfix_str(f"loss {record['loss']:.4g}, {record['audio_sec_per_sec']:.1f} audio-s/s",
                                 refresh=False)

    def _validate(self) -> Dict[str, float]:
        """Average ``Task.valid_step`` over the whole valid set (all ranks); logs ``valid/<name>``."""
        module, log = self.module, self.logger
        started = time.perf_counter()
        sums: Dict[str, float] = {}
        utterances = 0
        module.eval()
        saved_in_row = self.failures_in_row
        try:
            with ckpt.preserved_rng(), torch.no_grad(), autocast(self.device, self.precision):
                self.valid_sampler.set_epoch(0)
                for batch in self.valid_loader:
                    self._note_failures(batch, "valid")
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
            self.failures_in_row = saved_in_row
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
        if validate and self.valid_set is not None:
            self._validate()
        if self._checkpoint_step != self.step:
            self._save_checkpoint()
        if self.is_main:
            plots = write_plots(self.output_dir / "metrics.jsonl", self.output_dir / "plots")
            self.logger.info("wrote %d plot(s) in %s", len(plots), self.output_dir / "plots")
            self.task.export(self.module, self.output_dir)
            self.logger.info("finished at update %d after %.1f s of training", self.step, self._train_seconds)
        dist_utils.barrier()
