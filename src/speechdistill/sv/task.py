"""``SvTask``: speaker-verification training through the one trainer (see ``train/task.py``).

The system is composed along the axes of ``SvConfig`` (``sv/config.py``). Per micro-batch (``B``
cropped utterances ``wavs [B, T]`` with their speaker indices), by ``upstream``:

``fbank``          augment -> fbank -> back-end -> speaker loss.
``frozen_teacher`` augment -> frozen teacher (``models.teacher_targets``) -> weighted sum ->
                   back-end -> speaker loss.
``student``        augment -> student (adapters on) -> featurizer -> back-end -> speaker loss, and
                   with ``kd_terms`` a distillation branch (OS-KDFT, specs/methods/06_os_kdft.md):
                   1. the teacher gets the clean crop of the student's input (``kd_input:
                      same_crop``, the paper) -- or, with ``kd_input: separate``, the branch gets
                      *other* utterances (from ``kd_data``, mixed with training utterances with
                      probability epoch / ``kd_curriculum_epochs``), which is what the 2024 scripts
                      meant to do; their data bug, which fed both branches the same VoxCeleb crop,
                      is not reproduced. These inputs are read by the DataLoader workers with the
                      training items (:class:`KdInputSource`);
                   2. one student forward over ``[kd inputs; student inputs]`` with the adapters
                      off for the first half (distillation branch) and on for the second (speaker
                      branch);
                   3. loss = Σ distillation terms (weights may decay linearly over epochs) +
                      speaker loss, the terms against the teacher's targets aligned frame by frame.

Epochs: the distillation weight decay, the kd curriculum and the epoch learning-rate schedules are
functions of the 1-based epoch ``1 + update // steps_per_epoch`` (``train.optim.epoch_of_update``),
where ``steps_per_epoch`` is the number of updates in one pass over ``train_data`` as the trainer's
batch sampler makes it (its first epoch; later epochs differ by a batch or so) unless the config
sets it.

Learning rates (param groups): ``student`` (encoder and distillation heads, lr x
``student_lr_scale``), ``adapters`` (lr x ``adapter_lr_scale``) and ``backend`` (featurizer,
back-end, speaker head: lr). Each group follows the trainer's warmup/decay, or the epoch schedule
``group_lr_schedules`` names for it.

Export: ``<output_dir>/sv_model`` (``sv/model.py``): the encoder (the student with its adapters,
or the frozen teacher) and the back-end, loadable by ``load_sv_model`` and
``speechdistill.bin.sv_extract``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch

from ..config import ConfigError, from_dict
from ..data.audio import SAMPLE_RATE, AudioError
from ..data.dataset import AudioDataset, ItemExtras, ItemRef
from ..data.sampler import BucketBatchSampler
from ..data.tables import DataDirError, byte_key, read_table
from ..downstream.featurizer import Featurizer
from ..downstream.frontend import Fbank
from ..losses.distill import LossTerm, check_terms, evaluate_terms, student_keys_needed, teacher_layers_needed
from ..models.teacher_targets import TeacherTargets, check_frames_line_up, load_frozen_teacher, teacher_targets
from ..train.optim import epoch_of_update, epoch_schedule
from ..train.task import StepOutput, TrainContext
from .config import SvConfig
from .model import SpeakerEmbedder, SvTrainModel, build_backend, build_speaker_head, save_sv_model

logger = logging.getLogger("speechdistill.sv")
ADAPTER_MARK = ".adapter."


class SvDataError(ValueError):
    """Speaker labels or data that do not fit together; the message names the file and key."""


def read_speakers(data_dir: Union[str, Path]) -> Dict[str, str]:
    """utt -> speaker from ``<data_dir>/utt2spk``."""
    try:
        return read_table(Path(data_dir) / "utt2spk", nfields=2)
    except DataDirError as exc:
        raise SvDataError(str(exc)) from None


def speaker_indices(utt2spk: Mapping[str, str]) -> Dict[str, int]:
    """Speaker -> class index, speakers in C-locale byte order."""
    return {speaker: index for index, speaker in enumerate(sorted(set(utt2spk.values()), key=byte_key))}


def curriculum_probability(epoch: int, epochs: float) -> float:
    """Probability that a distillation input of the 1-based ``epoch`` comes from the training set: min(1, e / E)."""
    return min(1.0, epoch / float(epochs))


def resolve_kd_terms(raw_terms: List[Mapping[str, Any]], student_states: int, teacher_states: int,
                     head_targets: List[int]) -> List[LossTerm]:
    """LossTerms from config dicts: negative indices count from the end of the hidden states
    (``student_states`` / ``teacher_states`` of them), ``layers: heads`` pairs each head ``h<t>``
    with teacher layer ``t``."""
    terms = []
    for number, raw in enumerate(raw_terms):
        where = f"config.kd_terms[{number}]"
        data = dict(raw)
        layers = data.get("layers")
        if layers == "heads":
            if not head_targets:
                raise ConfigError(f"{where}: 'layers: heads' but the student preset has no prediction heads")
            data["layers"] = [[f"h{t}", t] for t in head_targets]
        elif isinstance(layers, list):
            pairs = []
            for pair in layers:
                if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                    raise ConfigError(f"{where}: layer pair {pair!r} must be [student, teacher]")
                student_key, teacher_layer = pair
                if isinstance(student_key, int) and not isinstance(student_key, bool):
                    if not -student_states <= student_key < student_states:
                        raise ConfigError(f"{where}: student hidden state {student_key} does not exist (the student "
                                          f"has {student_states}: 0..{student_states - 1})")
                    student_key %= student_states
                elif isinstance(student_key, str) and student_key not in [f"h{t}" for t in head_targets]:
                    raise ConfigError(f"{where}: student key '{student_key}' is no prediction head (heads: "
                                      f"{[f'h{t}' for t in head_targets]})")
                if isinstance(teacher_layer, int) and not isinstance(teacher_layer, bool):
                    if not -teacher_states <= teacher_layer < teacher_states:
                        raise ConfigError(f"{where}: teacher hidden state {teacher_layer} does not exist (the teacher "
                                          f"has {teacher_states}: 0..{teacher_states - 1})")
                    teacher_layer %= teacher_states
                pairs.append([student_key, teacher_layer])
            data["layers"] = pairs
        terms.append(from_dict(LossTerm, data, where=where))
    check_terms(terms)
    for term in terms:
        for _, teacher_layer in term.layers:
            if teacher_layer >= teacher_states:
                raise ConfigError(f"loss term '{term.name}': teacher hidden state {teacher_layer} does not exist (the "
                                  f"teacher has {teacher_states})")
    return terms


class KdInputSource:
    """Random crops for the distillation branch when it does not see the speaker branch's crop.

    An item function of the training dataset (``Task.item_extras``): the DataLoader worker that reads
    a training item also reads its distillation input, ``kd_wav`` (float32 ``[T]`` samples; the batch
    gets ``kd_wav`` ``[B, T]`` and ``kd_wav_lengths`` ``[B]``), so these reads cost the training
    process nothing. It comes from ``kd_set`` (e.g. LibriSpeech), or from ``train_set`` with
    probability ``curriculum_probability(epoch, curriculum_epochs)`` (always when there is no
    ``kd_set``), where ``epoch`` is the 1-based pass over the training data the item belongs to.
    Every choice is seeded by ``(seed, epoch, batch_index, index)`` of the item: the same on any
    worker and after a resume. An unreadable input is replaced by another draw and reported in
    ``kd_note``.
    """

    MAX_ATTEMPTS = 50

    def __init__(self, train_set: AudioDataset, kd_set: Optional[AudioDataset],
                 curriculum_epochs: Optional[float], seed: int = 0) -> None:
        self.train_set = train_set
        self.kd_set = kd_set
        self.curriculum_epochs = curriculum_epochs
        self.seed = seed

    def train_probability(self, epoch: int) -> float:
        """Probability that an input of the 1-based ``epoch`` comes from the training set."""
        if self.kd_set is None:
            return 1.0
        return 0.0 if self.curriculum_epochs is None else curriculum_probability(epoch, self.curriculum_epochs)

    def __call__(self, ref: ItemRef) -> Dict[str, Any]:
        rng = np.random.default_rng([self.seed, 1_000_003, ref.epoch, ref.batch_index, ref.index])
        p_train = self.train_probability(ref.epoch + 1)
        notes = []
        for _ in range(self.MAX_ATTEMPTS):
            dataset = self.train_set if rng.random() < p_train else self.kd_set
            index = int(rng.integers(len(dataset)))
            try:
                wav = dataset.read(index, epoch=int(rng.integers(2 ** 31)))  # the crop offset, seeded
            except (AudioError, OSError) as exc:
                notes.append(" ".join(str(exc).split()))
                continue
            return {"kd_wav": wav, "kd_note": "; ".join(notes)}
        raise SvDataError(f"the distillation inputs cannot be read ({self.MAX_ATTEMPTS} failures in a row; the last: "
                          f"{notes[-1]}). Fix: check the audio of kd_data / train_data")


class SvTask:
    """The speaker-verification task (see the module docstring)."""

    def __init__(self, config: SvConfig) -> None:
        self.config = config
        self.context: Optional[TrainContext] = None
        self.teacher: Optional[torch.nn.Module] = None
        self.kd_terms: List[LossTerm] = []
        self.teacher_layers: List[int] = []
        self.train_module: Optional[SvTrainModel] = None
        self.augmenter = None
        self.kd_source: Optional[KdInputSource] = None
        self.labelled_dirs: Dict[str, bool] = {}

    # ------------------------------------------------------------------ setup
    def setup(self, context: TrainContext) -> None:
        cfg = self.config
        self.context = context
        log = context.logger
        self.utt2spk = read_speakers(cfg.train_data)
        self.speakers = speaker_indices(self.utt2spk)
        # the trainer's own dataset crops with (seed, epoch, index); this copy, which counts updates per
        # epoch and serves separate distillation inputs, uses another seed so its crops are independent
        self.train_set = AudioDataset(cfg.train_data, max_seconds=cfg.max_seconds, min_seconds=cfg.min_seconds,
                                      seed=cfg.seed + 1, pipe_timeout=cfg.pipe_timeout)
        missing = [utt for utt in self.train_set.keys if utt not in self.utt2spk]
        if missing:
            raise SvDataError(f"{Path(cfg.train_data) / 'utt2spk'}: {len(missing)} utterance(s) of wav.scp have no "
                              f"speaker (e.g. '{missing[0]}'). Fix: run utils/fix_data_dir.sh on {cfg.train_data}")
        counts = np.bincount([self.speakers[self.utt2spk[u]] for u in self.train_set.keys],
                             minlength=len(self.speakers))
        if int((counts == 0).sum()):
            log.warning("%d speaker(s) of %s have no utterance long enough to train on", int((counts == 0).sum()),
                        cfg.train_data)
        self.class_weights = None
        if cfg.class_weighted:
            self.class_weights = torch.tensor(len(self.train_set) / (len(self.speakers) * np.maximum(counts, 1)),
                                              dtype=torch.float32)
        self.steps_per_epoch = cfg.steps_per_epoch or self._updates_per_epoch(context.world_size)
        log.info("speaker verification: %s, %d training speakers, %d utterances; %d updates per epoch (%s)",
                 self._describe(), len(self.speakers), len(self.train_set), self.steps_per_epoch,
                 "config" if cfg.steps_per_epoch else "one pass over train_data")
        if cfg.upstream != "fbank":
            self.teacher, report = load_frozen_teacher(cfg.teacher, context.device)
            log.info("teacher %s: %s, %d layers, %s parameters", cfg.teacher, report.architecture,
                     self.teacher.num_layers, f"{report.num_params:,}")
        self.generator = torch.Generator().manual_seed(cfg.seed * 7919 + context.rank)
        if cfg.augment is not None:
            self.augmenter = self._build_augmenter(context.device)
        if cfg.kd_terms and cfg.kd_input == "separate":
            kd_set = None
            if cfg.kd_data is not None:
                kd_set = AudioDataset(cfg.kd_data, max_seconds=cfg.max_seconds, min_seconds=cfg.min_seconds,
                                      seed=cfg.seed + 2, pipe_timeout=cfg.pipe_timeout)
            self.kd_source = KdInputSource(self.train_set, kd_set, cfg.kd_curriculum_epochs, seed=cfg.seed)
            log.info("distillation inputs: separate crops from %s%s, read by the DataLoader workers",
                     cfg.kd_data or cfg.train_data,
                     f" (training utterances with probability epoch/{cfg.kd_curriculum_epochs:g})"
                     if cfg.kd_data and cfg.kd_curriculum_epochs else "")

    def _describe(self) -> str:
        cfg = self.config
        parts = [f"upstream {cfg.upstream}" + (f" (system {cfg.system})" if cfg.system else "")]
        if cfg.upstream == "student":
            parts.append(f"{len(cfg.kd_terms)} distillation term(s)" if cfg.kd_terms else "no distillation")
            parts.append("adapters in the speaker branch" if cfg.adapters else "no adapters")
        return ", ".join(parts)

    def _updates_per_epoch(self, world_size: int) -> int:
        cfg = self.config
        sampler = BucketBatchSampler(self.train_set.cropped_num_samples.tolist(),
                                     batch_samples=int(round(cfg.batch_seconds * SAMPLE_RATE)),
                                     max_batch_size=cfg.max_batch_size, num_buckets=cfg.num_buckets, shuffle=True,
                                     seed=cfg.seed, num_replicas=world_size, rank=0, even_shards=True)
        return max(1, len(sampler.rank_batches(0)) // cfg.accum_steps)

    def _build_augmenter(self, device: torch.device):
        from ..augment import Augmenter, load_augment_config

        settings = load_augment_config(self.config.augment, self.config.augment_overrides or None)
        augmenter = Augmenter.from_config(settings, device=device)
        if self.context is not None:
            self.context.logger.info("augmentation '%s' of the %s input: p=%g, choices %s", self.config.augment,
                                     "student" if self.config.upstream == "student" else "system",
                                     settings.apply_prob, ", ".join(augmenter.choice_names))
        return augmenter

    # ------------------------------------------------------------------ model
    def model(self) -> SvTrainModel:
        cfg = self.config
        log = self.context.logger if self.context is not None else logger
        head_kwargs = dict(margin=cfg.aam_margin, scale=cfg.aam_scale, class_weights=self.class_weights)
        if cfg.upstream == "fbank":
            fbank = Fbank(cfg.fbank)
            backend = build_backend(cfg.backend, cfg.fbank.num_mel_bins, cfg.ecapa, cfg.mean_std)
            head = build_speaker_head(cfg.speaker_loss, backend.embedding_size, len(self.speakers), **head_kwargs)
            module = SvTrainModel(backend, head, fbank=fbank)
        elif cfg.upstream == "frozen_teacher":
            featurizer = Featurizer(self.teacher.num_layers + 1, cfg.featurizer)
            backend = build_backend(cfg.backend, self.teacher.config.hidden_size, cfg.ecapa, cfg.mean_std)
            head = build_speaker_head(cfg.speaker_loss, backend.embedding_size, len(self.speakers), **head_kwargs)
            module = SvTrainModel(backend, head, featurizer=featurizer)
        else:
            module = self._build_student(head_kwargs, log)
        self.train_module = module
        return module

    def _build_student(self, head_kwargs: Dict[str, Any], log: logging.Logger) -> SvTrainModel:
        from ..models.students import TeacherInit, build_student, load_preset

        cfg = self.config
        preset = load_preset(cfg.student)
        if cfg.student_init is not None:
            preset.init_from_teacher = from_dict(TeacherInit, cfg.student_init, where="config.student_init")
        if cfg.heads_target_layers is not None:
            if not preset.heads:
                raise ConfigError(f"config.heads_target_layers is set but student preset '{preset.name}' has no heads")
            preset.heads = {**preset.heads, "target_layers": list(cfg.heads_target_layers)}
        overrides = dict(cfg.student_encoder)
        if not cfg.adapters:
            overrides["adapter_dim"] = 0
        student = build_student(preset, self.teacher, overrides=overrides)
        encoder = student.encoder
        if cfg.adapters and not encoder.config.adapter_dim:
            log.warning("student preset '%s' has no adapters (adapter_dim 0): both branches run the same network "
                        "(adapters: false says so)", preset.name)
        if student.init_report is not None:
            log.info("student %s: %s", preset.name, student.init_report.summary())
        else:
            log.info("student %s: randomly initialised (student_init copies nothing from the teacher)", preset.name)
        if cfg.kd_terms:
            check_frames_line_up(encoder.config.conv_layers, self.teacher.config.conv_layers,
                                 f"student preset '{preset.name}'")
        head_targets = list(student.heads.config.target_layers) if student.heads is not None else []
        self.kd_terms = resolve_kd_terms(cfg.kd_terms, encoder.num_layers + 1, self.teacher.num_layers + 1,
                                         head_targets) if cfg.kd_terms else []
        self.teacher_layers = teacher_layers_needed(self.kd_terms) if self.kd_terms else []
        used_keys = student_keys_needed(self.kd_terms) if self.kd_terms else []
        kd_layers = [k for k in used_keys if isinstance(k, int)]
        heads = student.heads if any(isinstance(k, str) for k in used_keys) else None
        if student.heads is not None and heads is None:
            log.warning("the student preset's prediction heads are unused by kd_terms; they are left out")
        featurizer = Featurizer(encoder.num_layers + 1, cfg.featurizer)
        backend = build_backend(cfg.backend, encoder.config.hidden_size, cfg.ecapa, cfg.mean_std)
        head = build_speaker_head(cfg.speaker_loss, backend.embedding_size, len(self.speakers), **head_kwargs)
        described = []
        for term in self.kd_terms:
            decay = f", decaying over {term.linear_decay_epochs:g} epochs" if term.linear_decay_epochs else ""
            described.append(f"{term.name} ({term.kind}, weight {term.weight:g}{decay})")
        if described:
            log.info("distillation terms: %s; teacher layers %s", ", ".join(described), self.teacher_layers)
        return SvTrainModel(backend, head, student=encoder, featurizer=featurizer, kd_heads=heads,
                            kd_student_layers=kd_layers)

    # ------------------------------------------------------------------ optimisation
    def param_groups(self, model: SvTrainModel) -> List[Dict[str, Any]]:
        cfg = self.config
        backend_params = [p for name, p in model.named_parameters()
                          if not name.startswith(("student.", "kd_heads."))]
        groups: List[Dict[str, Any]] = [{"name": "backend", "params": backend_params, "lr": cfg.lr}]
        if model.student is not None:
            named = list(model.named_parameters())
            adapters = [p for name, p in named if name.startswith("student.") and ADAPTER_MARK in name]
            student = [p for name, p in named
                       if (name.startswith("student.") and ADAPTER_MARK not in name) or name.startswith("kd_heads.")]
            groups.insert(0, {"name": "student", "params": student, "lr": cfg.lr * cfg.student_lr_scale})
            if adapters:
                groups.insert(1, {"name": "adapters", "params": adapters, "lr": cfg.lr * cfg.adapter_lr_scale})
        for group in groups:
            name = cfg.group_lr_schedules.get(group["name"])
            if name is not None:
                group["schedule"] = epoch_schedule(name, self.steps_per_epoch, period=cfg.cosine_restart_epochs,
                                                   floor_ratio=cfg.min_lr_ratio, ramp_epochs=cfg.kd_lr_ramp_epochs,
                                                   decay=cfg.kd_lr_decay)
        return [g for g in groups if g["params"]]

    def item_fields(self, data_dir: Path) -> Dict[str, Dict[str, int]]:
        """``speaker``: the training speaker index of every utterance (-1 for an unknown speaker,
        allowed only outside train_data: validation then reports no speaker metrics)."""
        utt2spk = read_speakers(data_dir)
        labels = {utt: self.speakers.get(spk, -1) for utt, spk in utt2spk.items()}
        unknown = sum(1 for v in labels.values() if v < 0)
        is_train = Path(data_dir).resolve() == Path(self.config.train_data).resolve()
        if unknown and is_train:
            raise SvDataError(f"{Path(data_dir) / 'utt2spk'}: {unknown} utterance(s) have no training speaker")
        self.labelled_dirs[str(Path(data_dir).resolve())] = unknown == 0
        if unknown and self.context is not None:
            self.context.logger.info("%s: %d of %d utterances belong to speakers not in train_data; validation reports "
                                     "%s", data_dir, unknown, len(labels),
                                     "distillation terms only" if self.config.kd_terms else "no metric")
        return {"speaker": labels}

    def item_extras(self, data_dir: Path) -> Optional[ItemExtras]:
        """With ``kd_input: separate``: each training item also carries its distillation input (``kd_wav``)."""
        if self.kd_source is None or Path(data_dir).resolve() != Path(self.config.train_data).resolve():
            return None
        return self.kd_source

    # ------------------------------------------------------------------ steps
    def _corrupt(self, wavs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self.augmenter is None:
            return wavs
        return self.augmenter(wavs, lengths, self.generator).noisy

    def _teacher(self, wavs: torch.Tensor, lengths: torch.Tensor, layers: List[int],
                 host_lengths: Optional[List[int]] = None) -> TeacherTargets:
        return teacher_targets(self.teacher, wavs, lengths, layers, autocast=self.context.teacher_autocast,
                               host_lengths=host_lengths)

    def _kd_loss(self, predictions: Mapping[Union[int, str], torch.Tensor], targets: TeacherTargets,
                 epoch: Optional[int]) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        return evaluate_terms(self.kd_terms, targets.align(predictions), targets.hidden, targets.valid(), epoch=epoch)

    def train_step(self, model: torch.nn.Module, batch: Mapping[str, Any], step: int) -> StepOutput:
        if batch["wavs"].shape[0] > 1:
            return self._train_step(model, batch, step)
        # One utterance gives no batch statistics (BatchNorm1d refuses it); such a batch -- a bucket's
        # last one -- runs its BatchNorm layers on their running statistics instead.
        norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training]
        for module in norms:
            module.eval()
        try:
            return self._train_step(model, batch, step)
        finally:
            for module in norms:
                module.train()

    def _train_step(self, model: torch.nn.Module, batch: Mapping[str, Any], step: int) -> StepOutput:
        wavs, lengths, labels = batch["wavs"], batch["lengths"], batch["speaker"]
        host_lengths = batch.get("host_lengths")
        epoch = epoch_of_update(step, self.steps_per_epoch)
        student_wavs = self._corrupt(wavs, lengths)
        terms: Dict[str, torch.Tensor] = {}
        if self.config.upstream == "frozen_teacher":
            upstream = self._teacher(student_wavs, lengths, self.train_module.featurizer.selected_layers, host_lengths)
            out = model(None, None, labels, upstream_states=upstream.hidden, upstream_frames=upstream.frame_lengths)
            loss = out.speaker.loss
        elif not self.kd_terms:
            out = model(student_wavs, lengths, labels)
            loss = out.speaker.loss
        else:
            kd_host_lengths = None
            if self.kd_source is None:
                kd_clean, kd_lengths, kd_student, kd_host_lengths = wavs, lengths, student_wavs, host_lengths
            else:
                if "kd_wav" not in batch:
                    raise SvDataError("kd_input separate: the batch has no kd_wav; the training dataset must be built "
                                      "with this task's item_extras")
                for note in batch.get("kd_note", ()):
                    if note and self.context is not None:
                        self.context.logger.warning("distillation input skipped: %s", note)
                kd_clean, kd_lengths = batch["kd_wav"], batch["kd_wav_lengths"]
                kd_student = self._corrupt(kd_clean, kd_lengths)
            targets = self._teacher(kd_clean, kd_lengths, self.teacher_layers, kd_host_lengths)
            out = model(student_wavs, lengths, labels, kd_wavs=kd_student, kd_lengths=kd_lengths)
            kd_total, kd_values = self._kd_loss(out.kd_predictions, targets, epoch)
            loss = kd_total + out.speaker.loss
            terms.update(kd_values)
            for term in self.kd_terms:
                if term.linear_decay_epochs is not None:
                    terms[f"{term.name}_weight"] = torch.tensor(term.weight_at(epoch), device=wavs.device)
        terms["speaker_loss"] = out.speaker.loss.detach()
        terms["accuracy"] = out.speaker.accuracy.detach()
        return StepOutput(loss=loss, terms=terms, count=wavs.shape[0])

    def valid_step(self, model: torch.nn.Module, batch: Mapping[str, Any]) -> Dict[str, Union[float, torch.Tensor]]:
        cfg = self.config
        wavs, lengths, labels = batch["wavs"], batch["lengths"], batch["speaker"]
        host_lengths = batch.get("host_lengths")
        labelled = self.labelled_dirs.get(str(Path(cfg.valid_data).resolve()), False) if cfg.valid_data else False
        metrics: Dict[str, Union[float, torch.Tensor]] = {}
        if self.kd_terms:
            targets = self._teacher(wavs, lengths, self.teacher_layers, host_lengths)
            out = model(wavs if labelled else None, lengths if labelled else None, labels if labelled else None,
                        kd_wavs=wavs, kd_lengths=lengths)
            _, values = self._kd_loss(out.kd_predictions, targets, epoch=1)
            metrics.update(values)
        elif labelled:
            if cfg.upstream == "frozen_teacher":
                upstream = self._teacher(wavs, lengths, self.train_module.featurizer.selected_layers, host_lengths)
                out = model(None, None, labels, upstream_states=upstream.hidden, upstream_frames=upstream.frame_lengths)
            else:
                out = model(wavs, lengths, labels)
        if labelled:
            metrics["speaker_loss"] = out.speaker.loss
            metrics["accuracy"] = out.speaker.accuracy
        return metrics

    # ------------------------------------------------------------------ state and export
    def state_dict(self) -> Dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.generator.set_state(state["generator"])

    def embedder(self, model: SvTrainModel) -> SpeakerEmbedder:
        """The trained system as a waveform -> embedding module (shares the model's modules)."""
        if model.fbank is not None:
            return SpeakerEmbedder(model.backend, fbank=model.fbank)
        upstream = model.student if model.student is not None else self.teacher
        return SpeakerEmbedder(model.backend, upstream=upstream, featurizer=model.featurizer)

    def export(self, model: torch.nn.Module, output_dir: Path) -> None:
        cfg = self.config
        info = {"speakers": len(self.speakers), "train_data": str(cfg.train_data), "teacher": cfg.teacher,
                "student": cfg.student if cfg.upstream == "student" else None,
                "student_init": cfg.student_init if cfg.upstream == "student" else None, "backend": cfg.backend,
                "speaker_loss": cfg.speaker_loss}
        embedder = self.embedder(model)
        upstream_params = sum(p.numel() for p in embedder.upstream.parameters()) if embedder.upstream else 0
        info["upstream_params"] = int(upstream_params)
        info["backend_params"] = int(sum(p.numel() for p in embedder.backend.parameters()))
        path = save_sv_model(embedder, Path(output_dir) / "sv_model", system=cfg.system, info=info)
        if self.context is not None:
            self.context.logger.info("exported the speaker model to %s (encoder %s parameters, back-end %s)", path,
                                     f"{upstream_params:,}", f"{info['backend_params']:,}")
