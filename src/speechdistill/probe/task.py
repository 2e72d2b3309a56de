"""A SUPERB-style probe as a trainer task: frozen upstream -> featurizer -> task head, one loss per task.

One training step::

    wavs [B, T], lengths [B] samples
      -> frozen upstream (eval, no_grad, teacher autocast; only the layers the featurizer reads),
         or the same hidden states read back from a dump (train_features / valid_features)
      -> ProbeModel: featurizer (softmax-weighted sum of hidden states) -> head
      -> loss: CTC (PR; torch's mean: each utterance's NLL over its target length, averaged, as
         s3prl's CTC downstream) or cross-entropy averaged over the utterances, summed over the
         slots (IC: action + object + location, as s3prl's fluent_commands)

``class_balance`` (KS) weighs each utterance's cross-entropy by N / (C * n_c) (n_c: training
utterances of its class): the same expected gradient as SUPERB's class-balanced sampler, whose
_silence_ and command words would otherwise be drowned by _unknown_.

Validation reports the loss and the task's metric (``accuracy`` % of utterances whose every
slot is right, or ``per`` %: phone errors over reference phones of greedy CTC output).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Mapping, Optional, Union

import torch
import torch.nn.functional as F

from ..asr.task import SuperbProbeConfig
from ..asr.upstream import ProbeFeatures, upstream_fingerprint
from ..config import ConfigError
from ..data.tables import DataDirError, read_table
from ..downstream.asr import ctc_loss
from ..downstream.featurizer import Featurizer
from ..downstream.probe_heads import ProbeHeadConfig
from ..metrics.wer import score as score_texts
from ..train import StepOutput, TrainContext
from .model import MODEL_DIR, ProbeModel, save_probe_model
from .tasks import TASKS, LabelSet, read_targets, task_spec


def _opt(default: Any, help: str) -> Any:  # noqa: A002 - the trainer config's wording
    if isinstance(default, (list, dict, tuple)):
        return field(default_factory=lambda: default, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class ProbeConfig(SuperbProbeConfig):
    """Trainer keys plus the probe's. Defaults are SUPERB's shared ones (Adam, constant lr 1e-4, clip 1, 200k
    updates, 32 utterances); each task's preset (egs/superb/probe/conf/<task>.yaml) sets its own."""

    task: Literal["pr", "ks", "ic", "sid"] = _opt("ks", f"probe task: {', '.join(TASKS)}")
    head: ProbeHeadConfig = field(default_factory=ProbeHeadConfig, metadata={
        "help": "projector_dim (SUPERB: 256) and pooling (mean) of the task head"})
    class_balance: bool = _opt(False, "weigh classes as a class-balanced sampler would (SUPERB KS)")
    batch_seconds: float = _opt(400.0, "seconds of padded audio per batch")
    max_batch_size: Optional[int] = _opt(32, "utterances per batch (SUPERB: 32 per update)")
    min_seconds: float = _opt(0.1, "shorter utterances are skipped and listed in skipped_utts.txt")
    valid_every: int = _opt(4000, "validate every this many updates (SUPERB: 4000)")

    def validate(self) -> None:
        super().validate()
        if self.train_features and self.max_seconds is not None:
            raise ConfigError(f"config.max_seconds: {self.max_seconds} crops the audio, but train_features holds "
                              "whole utterances. Fix: set max_seconds to null, or train on the fly")
        spec = task_spec(self.task)
        if self.class_balance and (spec.kind != "classify" or len(spec.slots) != 1):
            raise ConfigError(f"config.class_balance: true weighs the classes of a single-label task (ks, sid); the "
                              f"{spec.title} task has {'phone sequences' if spec.kind == 'ctc' else 'several slots'}. "
                              "Fix: set class_balance to false")
        if self.task == "pr" and self.max_seconds is not None:
            raise ConfigError(f"config.max_seconds: {self.max_seconds} would cut utterances apart from their phone "
                              "transcripts; PR trains on whole utterances. Fix: set it to null")


class ProbeTask:
    """Implements :class:`speechdistill.train.Task` for every probe task (see the module docstring)."""

    def __init__(self, config: ProbeConfig) -> None:
        self.config = config
        self.spec = task_spec(config.task)
        self.labels: Optional[LabelSet] = None
        self.class_weights: Optional[torch.Tensor] = None

    def setup(self, context: TrainContext) -> None:
        config, log = self.config, context.logger
        self.context = context
        self.fingerprint = upstream_fingerprint(config.upstream)
        train_targets = read_targets(self.spec, config.train_data)
        self.labels = LabelSet.build(self.spec, train_targets)
        self.features = ProbeFeatures(config.upstream, context.device, train_features=config.train_features,
                                      valid_features=config.valid_features, has_valid=bool(config.valid_data),
                                      min_seconds=config.min_seconds)
        self.layers = Featurizer(self.features.num_hidden_states, config.featurizer).selected_layers
        self.features.check_layers(self.layers)
        if config.class_balance:
            index = self.labels.index(0)
            counts = torch.zeros(self.labels.sizes[0])
            for fields in train_targets.values():
                counts[index[fields[0]]] += 1
            present = counts > 0
            weights = torch.zeros_like(counts)
            weights[present] = counts.sum() / (present.sum() * counts[present])
            self.class_weights = weights.to(context.device)
            log.info("class-balanced loss: weights %s", ", ".join(
                f"{label} {w:.2f}" for label, w in zip(self.labels.slots[0], weights.tolist())))
        log.info("%s probe on %s (%d hidden states of %d, %s); featurizer %s over %s; %s", self.spec.title,
                 config.upstream, self.features.num_hidden_states, self.features.hidden_size,
                 self.features.description, config.featurizer.mode, self.layers,
                 "; ".join(f"{name}: {size} labels" for name, size in zip(self.spec.slots, self.labels.sizes)))

    def model(self) -> torch.nn.Module:
        return ProbeModel(self.spec, self.labels, self.features.num_hidden_states, self.features.hidden_size,
                          self.config.featurizer, self.config.head)

    def param_groups(self, model: torch.nn.Module) -> List[Dict[str, Any]]:
        return [{"name": self.spec.name, "params": [p for p in model.parameters() if p.requires_grad]}]

    def item_fields(self, data_dir: Path) -> Dict[str, Dict[str, Any]]:
        """Per utterance: ``targets`` (label ids, one per slot; -1 for a label the training data lacks) or,
        for PR, ``tokens`` (phone ids; phones the training data lacks are left out) and ``reference``."""
        targets = read_targets(self.spec, data_dir)
        lengths = read_table(Path(data_dir) / "utt2num_samples", nfields=2)
        missing = [utt for utt in lengths if utt not in targets]
        if missing:
            raise DataDirError(f"{Path(data_dir) / self.spec.target_file}: {len(missing)} utterance(s) of the data "
                               f"dir have no target, e.g. '{missing[0]}'. Fix: prepare the data dir again or remove "
                               "them with utils/fix_data_dir.sh")
        if self.spec.kind == "ctc":
            index = self.labels.index(0)
            return {"tokens": {utt: [index[p] for p in targets[utt] if p in index] for utt in lengths},
                    "reference": {utt: " ".join(targets[utt]) for utt in lengths}}
        indices = [self.labels.index(s) for s in range(len(self.spec.slots))]
        return {"targets": {utt: [indices[s].get(value, -1) for s, value in enumerate(targets[utt])]
                            for utt in lengths}}

    def _forward(self, model: torch.nn.Module, batch: Mapping[str, Any], training: bool):
        states, frame_lengths = self.features(batch, training, self.context.teacher_autocast())
        return model(states, frame_lengths)

    def _loss(self, output, batch: Mapping[str, Any], head) -> torch.Tensor:
        if self.spec.kind == "ctc":
            log_probs, lengths = output
            return ctc_loss(log_probs, lengths, batch["tokens"].clamp(min=0), batch["tokens_lengths"], reduction="mean")
        targets = batch["targets"]
        loss = torch.zeros((), device=targets.device)
        for slot, logits in enumerate(head.split(output)):
            per_utt = F.cross_entropy(logits.float(), targets[:, slot], ignore_index=-1, reduction="none")
            if self.class_weights is not None:
                per_utt = per_utt * self.class_weights[targets[:, slot].clamp(min=0)]
            loss = loss + per_utt.mean()
        return loss

    def train_step(self, model: torch.nn.Module, batch: Mapping[str, Any], step: int) -> StepOutput:
        output = self._forward(model, batch, True)
        head = getattr(model, "module", model).head
        loss = self._loss(output, batch, head)
        return StepOutput(loss=loss, terms={self.spec.name: loss.detach()}, count=len(batch["keys"]))

    def valid_step(self, model: torch.nn.Module, batch: Mapping[str, Any]) -> Dict[str, Union[float, torch.Tensor]]:
        output = self._forward(model, batch, False)
        loss = self._loss(output, batch, model.head)
        predictions = model.predict(output)
        if self.spec.kind == "ctc":
            report = score_texts(dict(zip(batch["keys"], batch["reference"])), dict(zip(batch["keys"], predictions)),
                                 "word")
            return {"loss": loss, "per": 100.0 * report.errors / max(report.num_ref, 1)}
        slots = [[self.labels.slots[s][i] if i >= 0 else None for s, i in enumerate(row)]
                 for row in batch["targets"].tolist()]
        right = [prediction.split() == truth for prediction, truth in zip(predictions, slots)]
        return {"loss": loss, "accuracy": 100.0 * sum(right) / max(len(right), 1)}

    def state_dict(self) -> Dict[str, Any]:
        return {}  # dropout draws from torch's global RNG, which the trainer checkpoints

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        return None

    def export(self, model: torch.nn.Module, output_dir: Path) -> None:
        out = save_probe_model(model, Path(output_dir) / MODEL_DIR, upstream=self.config.upstream,
                               upstream_fingerprint=self.fingerprint)
        weights = model.featurizer.layer_weights().tolist()
        self.context.logger.info("exported the %s probe to %s; featurizer weights: %s", self.spec.title, out,
                                 ", ".join(f"{layer}: {w:.3f}" for layer, w in zip(model.selected_layers, weights)))
