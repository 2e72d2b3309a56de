"""``DistillTask``: the distillation task the trainer runs (``speechdistill.train.Task`` protocol).

One update, as data flows (DESIGN.md)::

    batch (clean wavs [B, T], lengths [B])
      -> corruption of a copy for the student (teacher keeps the clean input)
      -> span mask [B, N] (masking distillation), same indices for student and masked teacher
      -> teacher: frozen, eval, no_grad, teacher autocast, fused attention, only the hidden
         states the loss terms read (layers above the highest one are not computed); with a
         mask-split term, masked and unmasked passes run as one batch of 2B
      -> DistillModel (student, heads, enhancement head, Lagrangian) inside the trainer's autocast
      -> loss terms (+ λ·enhancement, + Lagrangian): a mean over the valid frames of the batch

Validation reports every loss term (no masking, clean input) and the teacher–student cosine
similarity per target layer: ``cos/layer<t>`` for feature targets (per-utterance mean over
valid frames, then the mean over utterances), ``gram_cos/layer<t>`` for Gram targets (cosine
between the rows of the student's and the teacher's temporal Gram matrices).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..config import ConfigError, from_dict, to_dict
from ..data.tables import atomic_write_text
from ..losses import LagrangianSparsity, LossTerm, enhancement_loss, evaluate_terms, teacher_layers_needed
from ..losses.distill import GRAM_KINDS, MASK_SPLIT_KINDS, student_keys_needed
from ..models.checkpoints import detect_format, import_model, load_heads, save_model
from ..models.encoder import Encoder
from ..models.heads import LayerProjections, PredictionHeads, build_heads
from ..models.masking import span_mask
from ..models.pruning import gate_parameters, has_gates, prune
from ..models.students import StudentPreset, TeacherInit, build_student, load_preset
from ..models.teacher_targets import check_frames_line_up, conv_frames, load_frozen_teacher, teacher_targets
from ..train.task import StepOutput, TrainContext
from .config import HEAD_PREFIX, DistillConfig, head_key
from .corruption import StudentCorruption
from .enhancement import EnhancementHead
from .model import DistillModel

logger = logging.getLogger("speechdistill.distill")
ENHANCEMENT_TERM = "enhancement"
NO_DECAY_NAMES = ("bias", "LayerNorm.weight", "LayerNorm.bias")


class _Stopwatch:
    """Accumulates the time of a code region without synchronising the device every step.

    On CUDA it records event pairs and folds them in once they have completed (the trainer's
    one host sync per update guarantees that for the previous update); on CPU it reads the clock.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.seconds = 0.0
        self.audio_seconds = 0.0
        self._pending: List[Tuple[Any, Any]] = []
        self._started: Any = None

    def start(self) -> None:
        if self.cuda:
            self._started = torch.cuda.Event(enable_timing=True)
            self._started.record()
        else:
            self._started = time.perf_counter()

    def stop(self, audio_seconds: float) -> None:
        self.audio_seconds += audio_seconds
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._pending.append((self._started, end))
            self._fold(block=False)
        else:
            self.seconds += time.perf_counter() - self._started

    def _fold(self, block: bool) -> None:
        still = []
        for begin, end in self._pending:
            if block:
                end.synchronize()
            if end.query():
                self.seconds += begin.elapsed_time(end) / 1000.0
            else:
                still.append((begin, end))
        self._pending = still

    def totals(self, block: bool = True) -> Tuple[float, float]:
        """(seconds of device time, seconds of audio) so far. ``block=False`` counts only the regions the
        device has finished (all of them right after the trainer's per-update synchronisation)."""
        self._fold(block=block)
        return self.seconds, self.audio_seconds


class DistillTask:
    """Distillation of a frozen teacher into a student, composed as ``config`` says.

    Useful outside the trainer (tests, notebooks): after :meth:`setup` and :meth:`model`,
    :meth:`teacher_targets` and :meth:`losses` compute what a training step computes.
    """

    def __init__(self, config: DistillConfig) -> None:
        self.config = config
        self.terms: List[LossTerm] = list(config.loss_terms)
        self.teacher_layers = teacher_layers_needed(self.terms)
        self.student_keys = student_keys_needed(self.terms)
        self.masked_teacher_pass = any(t.kind in MASK_SPLIT_KINDS for t in self.terms)
        self.cosine_pairs = self._cosine_pairs(self.terms)
        self.teacher: Optional[Encoder] = None
        self.last_step = 0

    # ------------------------------------------------------------------ setup
    @staticmethod
    def _cosine_pairs(terms: Sequence[LossTerm]) -> List[Tuple[str, Any, int]]:
        """(kind, student key, teacher layer) per target layer: the first pair that reads it."""
        pairs: Dict[int, Tuple[str, Any, int]] = {}
        for term in terms:
            kind = "gram" if term.kind in GRAM_KINDS else "feature"
            for key, layer in term.layers:
                if layer not in pairs or (kind == "feature" and pairs[layer][0] == "gram"):
                    pairs[layer] = (kind, key, layer)
        return [pairs[layer] for layer in sorted(pairs)]

    def setup(self, context: TrainContext) -> None:
        """Load the teacher (frozen, eval, on the device) and the generators of masks and corruption."""
        config = self.config
        self.context = context
        self.device = context.device
        self.log = context.logger or logger
        teacher, report = load_frozen_teacher(config.teacher, self.device)
        self.teacher = teacher
        self.teacher_num_params = sum(p.numel() for p in teacher.parameters())
        self.log.info("teacher %s (%s, %s): %s parameters; hidden states read by the loss: %s%s", config.teacher,
                      report.format, report.architecture, f"{self.teacher_num_params:,}", self.teacher_layers,
                      "; masked and unmasked passes" if self.masked_teacher_pass else "")
        deepest = max(self.teacher_layers)
        if deepest > teacher.config.num_layers:
            raise ConfigError(f"loss terms read teacher layer {deepest} but the teacher {config.teacher} has "
                              f"{teacher.config.num_layers} layers; fix the layer pairs of loss_terms")
        if self.masked_teacher_pass and teacher.mask_embedding is None:
            raise ConfigError(f"masking distillation needs the teacher's mask embedding, and {config.teacher} has none "
                              "(an HF model saved with mask_time_prob 0, or a fine-tuned checkpoint); use a "
                              "pretrained checkpoint that keeps it")
        self.mask_rng = np.random.default_rng([config.seed, context.rank, 7741])
        self.corruption: Optional[StudentCorruption] = None
        if config.corruption.enabled:
            self.corruption = StudentCorruption(config.corruption, self.device, seed=config.seed + 1009 * context.rank)
        self.teacher_clock = _Stopwatch(self.device)

    def _build_student(self) -> Tuple[Encoder, Optional[torch.nn.Module]]:
        config, teacher = self.config, self.teacher
        mapping = config.target_mapping
        if config.student_from is not None:
            student, report = import_model(config.student_from)
            heads = None
            if detect_format(config.student_from) == "ours" and mapping.kind == "preset":
                heads = load_heads(config.student_from)
            self.log.info("student loaded from %s (%s); %s", config.student_from, report.format,
                          "heads carried over" if heads is not None else "no heads carried over")
            if mapping.kind in ("prediction", "projection"):
                heads = self._mapping_heads(student)
            elif mapping.kind == "none":
                heads = None
            return student.train(), heads
        if config.student is not None:
            preset = load_preset(config.student)
            overrides = dict(config.student_encoder)
        else:
            preset = StudentPreset(name="custom", encoder=dict(config.student_encoder))
            overrides = {}
        if config.student_init is not None:
            preset.init_from_teacher = from_dict(TeacherInit, config.student_init, where="config.student_init")
        if mapping.kind != "preset":
            preset.heads = mapping.heads_fields()
        built = build_student(preset, teacher, overrides=overrides)
        if built.init_report is not None:
            self.log.info("student %s: %s", preset.name, built.init_report.summary())
        return built.encoder.train(), built.heads

    def _mapping_heads(self, student: Encoder) -> torch.nn.Module:
        fields = self.config.target_mapping.heads_fields()
        fields.setdefault("in_dim", student.config.hidden_size)
        fields.setdefault("out_dim", self.teacher.config.hidden_size)
        return build_heads(fields, where="target_mapping")

    def model(self) -> DistillModel:
        """Build the student (seeded by the trainer), its heads, the enhancement head and the Lagrangian."""
        config = self.config
        student, heads = self._build_student()
        self._check_composition(student, heads)
        enhancement = None
        if config.enhancement.enabled:
            e = config.enhancement
            width = student.config.conv_channels if e.input == "cnn" else student.config.hidden_size
            enhancement = EnhancementHead(width, lstm_layers=e.lstm_layers, lstm_hidden=e.lstm_hidden,
                                          dropout=e.dropout, packed=not e.include_padding)
        lagrangian = None
        if config.pruning.enabled:
            if not has_gates(student):
                raise ConfigError("pruning.target_sparsity is set but the student has no hard-concrete gates; use the "
                                  "dphubert student preset or set prune_conv/prune_heads/prune_ffn in student_encoder")
            lagrangian = LagrangianSparsity(config.pruning.target_sparsity, config.pruning.sparsity_warmup_steps)
        elif has_gates(student):
            raise ConfigError("the student has hard-concrete gates but pruning.target_sparsity is null; set it "
                              "(DPHuBERT: 0.75) or turn the gates off in student_encoder")
        # Parameters that never get a gradient are frozen: DDP refuses them, and AdamW would decay them.
        if student.mask_embedding is not None and not config.masking.enabled:
            student.mask_embedding.requires_grad_(False)
        if student.config.feature_grad_mult == 0:  # the encoder runs its CNN without gradient
            student.feature_extractor.requires_grad_(False)
        self.distill_model = DistillModel(student, heads, self.student_keys, layer0_source=config.layer0_source,
                                          enhancement=enhancement, enhancement_input=config.enhancement.input,
                                          lagrangian=lagrangian, original_num_params=self.teacher_num_params)
        return self.distill_model

    def _check_composition(self, student: Encoder, heads: Optional[torch.nn.Module]) -> None:
        """Refuse, before training, a composition whose pieces do not fit together."""
        teacher = self.teacher
        check_frames_line_up(student.config.conv_layers, teacher.config.conv_layers)
        head_targets = set(heads.config.target_layers) if isinstance(heads, PredictionHeads) else set()
        projected = set(heads.config.source_layers) if isinstance(heads, LayerProjections) else set()
        for key in self.student_keys:
            if isinstance(key, str):
                if not (key.startswith(HEAD_PREFIX) and key[len(HEAD_PREFIX):].isdigit()
                        and int(key[len(HEAD_PREFIX):]) in head_targets):
                    have = ", ".join(head_key(t) for t in sorted(head_targets)) or "none"
                    raise ConfigError(f"loss terms read student key '{key}', but the prediction heads give: {have}; "
                                      "fix loss_terms or target_mapping")
            elif not 0 <= key <= student.config.num_layers:
                raise ConfigError(f"loss terms read student hidden state {key}; the student has "
                                  f"{student.config.num_layers} layers (states 0..{student.config.num_layers})")
        unused = projected - {k for k in self.student_keys if isinstance(k, int)}
        if unused:
            raise ConfigError(f"target_mapping projects student layer(s) {sorted(unused)} that no loss term reads; "
                              "drop them from the mapping or add loss terms")
        teacher_width = teacher.config.hidden_size
        for term in self.terms:
            if term.kind in GRAM_KINDS:
                continue
            for key, layer in term.layers:
                if isinstance(key, int) and key not in projected and student.config.hidden_size != teacher_width:
                    raise ConfigError(f"loss term '{term.name}' compares raw student layer {key} "
                                      f"({student.config.hidden_size}-d) with teacher layer {layer} "
                                      f"({teacher_width}-d); add a projection for it (target_mapping) or use "
                                      "a Gram kind")

    def param_groups(self, model: DistillModel) -> List[Dict[str, Any]]:
        """Main parameters (s3prl decay grouping on request), and for pruning the gate logits
        (lr ``reg_lr``) and the Lagrange multipliers (lr ``-reg_lr``: gradient ascent)."""
        config = self.config
        special: Dict[int, str] = {}
        groups: List[Dict[str, Any]] = []
        if config.pruning.enabled:
            gates = list(gate_parameters(model.student))
            multipliers = model.lagrangian.multipliers()
            special.update({id(p): "gates" for p in gates})
            special.update({id(p): "lagrange" for p in multipliers})
            groups += [{"name": "gates", "params": gates, "lr": config.pruning.reg_lr, "weight_decay": 0.0},
                       {"name": "lagrange", "params": multipliers, "lr": -config.pruning.reg_lr,
                        "weight_decay": 0.0}]
        main = [(name, p) for name, p in model.named_parameters() if p.requires_grad and id(p) not in special]
        if config.weight_decay_grouping == "s3prl":
            decay = [p for name, p in main if not any(part in name for part in NO_DECAY_NAMES)]
            plain = [p for name, p in main if any(part in name for part in NO_DECAY_NAMES)]
            main_groups = [{"name": "decay", "params": decay, "weight_decay": config.weight_decay},
                           {"name": "no_decay", "params": plain, "weight_decay": 0.0}]
        else:
            main_groups = [{"name": "main", "params": [p for _, p in main]}]
        return [g for g in main_groups if g["params"]] + groups

    # ------------------------------------------------------------------ steps
    def _mask_indices(self, lengths: torch.Tensor, num_samples: int, host_lengths: Optional[Sequence[int]] = None
                      ) -> torch.Tensor:
        m = self.config.masking
        conv_layers = self.teacher.config.conv_layers
        frame_lengths = (self.teacher.frame_lengths(lengths) if host_lengths is None
                         else [conv_frames(n, conv_layers) for n in host_lengths])
        return span_mask(frame_lengths, conv_frames(num_samples, conv_layers), m.mask_prob, m.mask_length,
                         selection=m.selection, mask_other=m.mask_other, min_masks=m.min_masks,
                         no_overlap=m.no_overlap, min_space=m.min_space, require_same_masks=m.require_same_masks,
                         rng=self.mask_rng, device=lengths.device)

    def teacher_targets(self, wavs: torch.Tensor, lengths: torch.Tensor,
                        mask_indices: Optional[torch.Tensor] = None, host_lengths: Optional[Sequence[int]] = None
                        ) -> Tuple[List[Optional[torch.Tensor]], Optional[List[Optional[torch.Tensor]]]]:
        """Teacher hidden states the loss reads, on clean input (``models.teacher_targets``).

        Args:
            wavs: ``[B, T]`` clean waveforms; lengths: ``[B]`` samples.
            mask_indices: ``[B, N]`` bool; when given (and a mask-split term exists) the masked pass
                runs too, batched with the unmasked one.
            host_lengths: ``lengths`` as Python ints, when known (the teacher then reads nothing back).
        Returns:
            ``(hidden, masked_hidden)``: lists indexed like hidden states (None where not needed);
            ``masked_hidden`` is None without a masked pass.
        """
        targets = teacher_targets(self.teacher, wavs, lengths, self.teacher_layers,
                                  autocast=self.context.teacher_autocast, layer0_source=self.config.layer0_source,
                                  mask_indices=mask_indices if self.masked_teacher_pass else None,
                                  host_lengths=host_lengths)
        return targets.hidden, targets.masked

    def losses(self, model: torch.nn.Module, wavs: torch.Tensor, lengths: torch.Tensor, step: int, *,
               training: bool = True, audio_seconds: Optional[float] = None,
               host_lengths: Optional[Sequence[int]] = None
               ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], Dict[str, Any], Any]:
        """Everything one step computes for a clean batch.

        ``training`` corrupts the student input and masks frames (validation does neither);
        ``audio_seconds`` (the batch's real audio) times the teacher forward for the throughput report;
        ``host_lengths`` (``lengths`` as Python ints, as a collated batch carries them) spare the encoders
        a read from the device.

        Returns:
            ``(total, terms, student_output, teacher_hidden)``: the loss (mean over the valid frames;
            Lagrangian added), the unweighted value of every term, :meth:`DistillModel.forward`'s
            dict plus ``input`` (the student's waveforms) and ``mask_indices`` (``[B, N]`` or None),
            and the (unmasked) teacher hidden states.
        """
        config = self.config
        student_wavs = wavs
        if self.corruption is not None and training:
            student_wavs = self.corruption(wavs, lengths)
        mask_indices = None
        if config.masking.enabled and training:
            mask_indices = self._mask_indices(lengths, wavs.shape[1], host_lengths)
        if audio_seconds is not None:
            self.teacher_clock.start()
        teacher_hidden, masked_hidden = self.teacher_targets(wavs, lengths, mask_indices, host_lengths)
        if audio_seconds is not None:
            self.teacher_clock.stop(audio_seconds)
        student = model(student_wavs, lengths, mask_indices=mask_indices, step=step, host_lengths=host_lengths)
        student["input"], student["mask_indices"] = student_wavs, mask_indices
        if self.masked_teacher_pass and masked_hidden is None:
            # Validation: no mask, so every frame is "unmasked" and compared with the one teacher pass.
            masked_hidden = teacher_hidden
            mask_indices = torch.zeros_like(student["valid"])
        total, terms = evaluate_terms(self.terms, student["predictions"], teacher_hidden, student["valid"],
                                      masked_teacher=masked_hidden, mask_indices=mask_indices)
        if student["enhancement_mask"] is not None:
            e = config.enhancement
            value = enhancement_loss(student["enhancement_mask"], student_wavs, wavs, lengths, kind=e.loss,
                                     include_padding=e.include_padding)
            terms[ENHANCEMENT_TERM] = value.detach()
            total = total + e.weight * value
        if student["regularizer"] is not None:
            total = total + student["regularizer"]
            terms.update({k: v.detach().float().to(total.device) for k, v in student["regularizer_terms"].items()})
        return total, terms, student, teacher_hidden

    def train_step(self, model: torch.nn.Module, batch: Mapping[str, Any], step: int) -> StepOutput:
        self.last_step = step
        wavs, lengths = batch["wavs"], batch["lengths"]
        total, terms, student, _ = self.losses(model, wavs, lengths, step, training=True,
                                               audio_seconds=float(batch.get("audio_seconds", 0.0)),
                                               host_lengths=batch.get("host_lengths"))
        return StepOutput(loss=total, terms=terms, count=student["valid"].sum())

    def valid_step(self, model: torch.nn.Module, batch: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
        """Every loss term on clean, unmasked input, and the teacher–student cosine per target layer."""
        wavs, lengths = batch["wavs"], batch["lengths"]
        total, terms, student, teacher_hidden = self.losses(model, wavs, lengths, self.last_step, training=False,
                                                            host_lengths=batch.get("host_lengths"))
        metrics: Dict[str, torch.Tensor] = {"loss": total.detach(), **terms}
        metrics.pop("sparsity_target", None)
        metrics.pop("lambda1", None)
        metrics.pop("lambda2", None)
        valid = student["valid"]
        for kind, key, layer in self.cosine_pairs:
            prediction, target = student["predictions"][key], teacher_hidden[layer]
            if kind == "feature":
                metrics[f"cos/layer{layer}"] = per_utterance_cosine(prediction, target, valid).mean()
            else:
                metrics[f"gram_cos/layer{layer}"] = gram_row_cosine(prediction, target, valid).mean()
        return metrics

    # ------------------------------------------------------------------ state, export
    def state_dict(self) -> Dict[str, Any]:
        seconds, audio = self.teacher_clock.totals(block=False)
        state: Dict[str, Any] = {"mask_rng": self.mask_rng.bit_generator.state, "last_step": self.last_step,
                                 "teacher_seconds": seconds, "train_audio_seconds": audio}
        if self.corruption is not None:
            state["corruption"] = self.corruption.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.mask_rng.bit_generator.state = state["mask_rng"]
        self.last_step = int(state["last_step"])
        self.teacher_clock.seconds = float(state.get("teacher_seconds", 0.0))
        self.teacher_clock.audio_seconds = float(state.get("train_audio_seconds", 0.0))
        if self.corruption is not None:
            if "corruption" not in state:
                raise ConfigError("the checkpoint was written without input corruption; resume with the "
                                  "configuration the run started with")
            self.corruption.load_state_dict(state["corruption"])

    def export(self, model: torch.nn.Module, output_dir: Path) -> None:
        """Write ``<output_dir>/student/`` (pruned to a dense model when the run pruned), with the
        target-mapping heads, and ``enhancement_head.safetensors`` when there is one."""
        config = self.config
        output_dir = Path(output_dir)
        student: Encoder = model.student
        if has_gates(student):
            student = prune(student)
        heads = model.heads if isinstance(model.heads, (PredictionHeads, LayerProjections)) else None
        source = {"kind": "distilled student", "teacher": str(config.teacher), "student_preset": config.student,
                  "student_from": config.student_from, "pruned": has_gates(model.student),
                  "num_params": int(sum(p.numel() for p in student.parameters()))}
        path = save_model(student.eval(), output_dir / "student", heads=heads, source=source)
        model.student.train()
        if model.enhancement is not None:
            from safetensors.torch import save_file
            tmp = output_dir / ".enhancement_head.safetensors.tmp"
            state = {k: v.detach().cpu().contiguous() for k, v in model.enhancement.state_dict().items()}
            save_file(state, str(tmp), metadata={"config": json.dumps(to_dict(config.enhancement)),
                                                 "in_dim": str(model.enhancement.in_dim)})
            tmp.replace(output_dir / "enhancement_head.safetensors")
        seconds, audio = self.teacher_clock.totals()
        speed = audio / seconds if seconds > 0 else float("nan")
        summary = {"teacher_forward_seconds": seconds, "train_audio_seconds": audio,
                   "teacher_forward_audio_sec_per_sec": speed, "student_params": source["num_params"],
                   "teacher_params": self.teacher_num_params}
        atomic_write_text(output_dir / "distill_summary.json", json.dumps(summary, indent=1) + "\n")
        self.log.info("exported the student (%s parameters%s) to %s; teacher forward alone ran at %.1f audio-s/s "
                      "(%.1f s for %.1f s of audio on rank 0)", f"{source['num_params']:,}",
                      ", pruned" if source["pruned"] else "", path, speed, seconds, audio)


def per_utterance_cosine(prediction: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every valid frame, averaged per utterance.

    Args:
        prediction, target: ``[B, N, D]``; valid: ``[B, N]`` bool.
    Returns:
        ``[B]`` float32 mean cosine of each utterance's valid frames.
    """
    cosine = F.cosine_similarity(prediction.float(), target.float(), dim=-1, eps=1e-8)
    weights = valid.float()
    return (cosine * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def gram_row_cosine(prediction: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per utterance, the mean over its frames i of cos(G_s[i, :n], G_t[i, :n]), G = F Fᵀ over its n
    valid frames: how alike the student's and the teacher's frame-to-frame similarities are.

    Args:
        prediction: ``[B, N, d_s]``; target: ``[B, N, d_t]``; valid: ``[B, N]`` bool (a prefix per row).
    Returns:
        ``[B]`` float32.
    """
    lengths = valid.sum(1).tolist()
    values = []
    for row, length in enumerate(lengths):
        student = prediction[row, :length].float()
        teacher = target[row, :length].float()
        values.append(F.cosine_similarity(student @ student.T, teacher @ teacher.T, dim=-1, eps=1e-8).mean())
    return torch.stack(values)
