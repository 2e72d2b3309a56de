"""``HubertPretrainTask``: HuBERT masked prediction as a trainer task (``speechdistill.train.Task``).

One update, as data flows::

    batch (wavs [B, T] randomly cropped, lengths [B] samples)
      -> targets [B, N]: nearest k-means centroid of every 50 Hz MFCC frame of the crop (on the
         fly, float32) or the utterance's row of the label table (whole utterances)
      -> span mask [B, N] (fairseq compute_mask_indices: mask_prob 0.8, spans of 10, >= 2 spans)
      -> HubertPretrainModel: encoder with masked frames replaced by the mask embedding,
         final_proj of the last layer, cosine logits against the unit embeddings / logit_temp
      -> CE on masked frames (+ unmasked_weight x CE on the others) / counted frames
         + feature_penalty_weight x mean square of the CNN output

Validation uses a mask drawn from a generator seeded by the batch's utterance ids (the same masks
at every validation, and nothing drawn from the training generators) and reports per utterance,
averaged over utterances: ``loss``, ``ce_masked``, ``acc_masked`` (masked-unit accuracy; the
label stage logs its chance level), ``ce_unmasked``, ``acc_unmasked``.

The product (``export``): ``<output_dir>/model/`` (our model dir: the encoder without the
prediction heads, what ``speechdistill.load_model`` loads) and ``<output_dir>/hf/`` (a Hugging Face
``HubertModel`` directory of the same encoder, imported by ``load_model`` like any real teacher),
plus ``pretrain_summary.json``.
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

from ..data.tables import DataDirError, atomic_write_text, format_error
from ..data.kmeans import load_centroids
from ..models.checkpoints import save_model
from ..models.encoder import Encoder
from ..models.export_hf import export_hf
from ..models.masking import span_mask
from ..train.task import StepOutput, TrainContext
from .config import HubertPretrainConfig, encoder_frame_count
from .labels import (CENTROIDS_FILE, LabelStageError, MfccLabeler, kmeans_settings, label_table_name,
                     labels_directory, read_label_table, read_record)
from .model import HubertPretrainModel, masked_prediction_loss

MODEL_DIR = "model"
HF_DIR = "hf"
SUMMARY_FILE = "pretrain_summary.json"
MFCC_DIMS = 39


class HubertPretrainTask:
    """Implements :class:`speechdistill.train.Task` for HuBERT pretraining (module docstring).

    The k-means label stage must have run for the same data and settings
    (:func:`speechdistill.pretrain.prepare_labels`; the ``pretrain_hubert`` entry point runs it first).
    """

    def __init__(self, config: HubertPretrainConfig) -> None:
        self.config = config
        self.encoder: Optional[Encoder] = None
        self.labeler: Optional[MfccLabeler] = None
        self.record: Dict[str, Any] = {}

    # ------------------------------------------------------------------ setup
    def setup(self, context: TrainContext) -> None:
        """Load the centroids of the label stage (checking they belong to this data and config)."""
        config = self.config
        self.context = context
        self.log = context.logger
        self.directory = labels_directory(config, context.output_dir)
        record = read_record(self.directory)
        if record is None or record.get("settings") != kmeans_settings(config):
            what = "are missing" if record is None else "were made from other data or settings"
            raise LabelStageError(
                f"{self.directory}: the k-means labels {what}. Fix: run the label stage first "
                f"(python -m speechdistill.bin.pretrain_hubert runs it before training, in one process; under "
                f"torchrun/srun run it once with --stage labels)")
        self.record = record
        centroids = load_centroids(self.directory / CENTROIDS_FILE)
        if centroids.shape != (config.labels.num_clusters, MFCC_DIMS):
            raise LabelStageError(f"{self.directory / CENTROIDS_FILE}: centroids {list(centroids.shape)} do not "
                                  f"match num_clusters={config.labels.num_clusters} of {MFCC_DIMS}-dim MFCCs; "
                                  "delete the labels directory and rerun")
        self.labeler = MfccLabeler(centroids, config.labels.mfcc).to(context.device)
        self.mask_rng = np.random.default_rng([config.seed, context.rank, 5501])
        units = record.get("units_50hz", {})
        self.log.info("targets: %d k-means units of MFCCs from %s (%s); chance level of masked-unit accuracy "
                      "(most frequent unit): %.1f%%, unit perplexity %.1f", config.labels.num_clusters,
                      self.directory, "computed on the fly from each crop" if config.labels.source == "on_the_fly"
                      else "label tables", 100 * units.get("majority_share", float("nan")),
                      units.get("perplexity", float("nan")))

    def model(self) -> HubertPretrainModel:
        config = self.config
        self.encoder = Encoder(config.encoder)
        return HubertPretrainModel(self.encoder, config.labels.num_clusters, config.final_dim, config.logit_temp)

    def param_groups(self, model: torch.nn.Module) -> List[Dict[str, Any]]:
        # fairseq's Adam decays every parameter (weight_decay 0.01 in HuBERT Base): one group.
        return [{"name": "main", "params": [p for p in model.parameters() if p.requires_grad]}]

    def item_fields(self, data_dir: Path) -> Optional[Dict[str, Dict[str, Any]]]:
        """With ``labels.source: table``: ``{"labels": {utt: int64 [N]}}`` for the train or valid data dir."""
        config = self.config
        if config.labels.source != "table":
            return None
        resolved = Path(data_dir).resolve()
        for which, path in (("train", config.train_data), ("valid", config.valid_data)):
            if path and Path(path).resolve() == resolved:
                table = self.directory / label_table_name(which)
                if not table.is_file():
                    raise LabelStageError(f"{table}: label table not found; rerun the label stage with "
                                          "labels.source table")
                return {"labels": read_label_table(table, config.labels.num_clusters)}
        raise LabelStageError(f"{data_dir}: no label table for this data dir (only train_data and valid_data get one)")

    # ------------------------------------------------------------------ steps
    def frame_count(self, num_samples: int) -> int:
        return encoder_frame_count(self.config.encoder.conv_layers, num_samples)

    def targets(self, batch: Mapping[str, Any], frame_lengths: torch.Tensor, num_frames: int) -> torch.Tensor:
        """``[B, N]`` int64 units of the batch's frames (whatever value past each utterance's frames)."""
        if self.config.labels.source == "table":
            units, label_lengths = batch["labels"], batch["labels_lengths"]
        else:
            units, label_lengths = self.labeler(batch["wavs"], batch["lengths"])
        mismatch = (label_lengths.to(frame_lengths.device) != frame_lengths).nonzero().flatten().tolist()
        if mismatch:
            row = mismatch[0]
            found = f"{int(label_lengths[row])} labels but the audio gives {int(frame_lengths[row])} encoder frames"
            if self.config.labels.source == "table":
                raise DataDirError(format_error(self.directory, found, key=batch["keys"][row],
                                                fix="the label tables were made from other audio; delete "
                                                    f"{self.directory} and rerun the label stage"))
            raise LabelStageError(f"utterance {batch['keys'][row]}: {found}; the CNN and the MFCC framing disagree "
                                  "(config.encoder.conv_layers must keep HuBERT's kernels and strides)")
        units = units.to(frame_lengths.device).clamp_min(0)
        if units.shape[1] >= num_frames:
            return units[:, :num_frames]
        return torch.nn.functional.pad(units, (0, num_frames - units.shape[1]))

    def _masks(self, batch: Mapping[str, Any], rng: np.random.Generator) -> Tuple[torch.Tensor, torch.Tensor, int]:
        m = self.config.masking
        lengths = batch["lengths"]
        num_frames = self.frame_count(batch["wavs"].shape[1])
        frame_lengths = torch.tensor([self.frame_count(int(n)) for n in lengths.tolist()], device=lengths.device)
        mask = span_mask(frame_lengths, num_frames, m.mask_prob, m.mask_length, selection=m.selection,
                         mask_other=m.mask_other, min_masks=m.min_masks, no_overlap=m.no_overlap,
                         min_space=m.min_space, require_same_masks=m.require_same_masks, rng=rng)
        return mask, frame_lengths, num_frames

    def losses(self, model: torch.nn.Module, batch: Mapping[str, Any], rng: np.random.Generator):
        """Targets, masks, forward and loss of one batch; returns ``(total, PredictionLoss, model output)``."""
        config = self.config
        mask, frame_lengths, num_frames = self._masks(batch, rng) if config.masking.enabled else (
            None, None, self.frame_count(batch["wavs"].shape[1]))
        out = model(batch["wavs"], batch["lengths"], mask_indices=mask)
        targets = self.targets(batch, out["frame_lengths"], num_frames)
        prediction = masked_prediction_loss(out["logits"], targets, mask, out["valid"],
                                            masked_weight=config.masked_weight, unmasked_weight=config.unmasked_weight)
        total = prediction.loss + config.feature_penalty_weight * out["feature_penalty"]
        return total, prediction, out, targets, mask

    def train_step(self, model: torch.nn.Module, batch: Mapping[str, Any], step: int) -> StepOutput:
        total, p, out, _, _ = self.losses(model, batch, self.mask_rng)
        terms = {"ce_masked": p.ce_masked.detach(), "acc_masked": p.acc_masked.detach(),
                 "ce_unmasked": p.ce_unmasked.detach(), "acc_unmasked": p.acc_unmasked.detach(),
                 "feature_penalty": out["feature_penalty"].detach()}
        return StepOutput(loss=total, terms=terms, count=p.count)

    def valid_step(self, model: torch.nn.Module, batch: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
        """Per-utterance metrics averaged over the batch (the trainer weights batches by utterances)."""
        config = self.config
        # Masks depend only on the utterances, so every validation sees the same ones.
        rng = np.random.default_rng([config.seed, zlib.crc32(" ".join(batch["keys"]).encode("utf-8"))])
        total, _, out, targets, mask = self.losses(model, batch, rng)
        rows = []
        for row in range(len(batch["keys"])):
            valid = out["valid"][row:row + 1]
            row_mask = None if mask is None else mask[row:row + 1]
            rows.append(masked_prediction_loss(out["logits"][row:row + 1], targets[row:row + 1], row_mask, valid,
                                               masked_weight=config.masked_weight,
                                               unmasked_weight=config.unmasked_weight))
        metrics = {"loss": total.detach()}
        for name in ("ce_masked", "acc_masked", "ce_unmasked", "acc_unmasked"):
            metrics[name] = torch.stack([getattr(r, name) for r in rows]).mean()
        return metrics

    # ------------------------------------------------------------------ state, export
    def state_dict(self) -> Dict[str, Any]:
        return {"mask_rng": self.mask_rng.bit_generator.state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.mask_rng.bit_generator.state = state["mask_rng"]

    def export(self, model: torch.nn.Module, output_dir: Path) -> None:
        """``model/`` (our format) and ``hf/`` (HubertModel) of the encoder, and ``pretrain_summary.json``."""
        config, output_dir = self.config, Path(output_dir)
        encoder: Encoder = model.encoder
        was_training = encoder.training
        encoder.eval()
        num_params = int(sum(p.numel() for p in encoder.parameters()))
        source = {"kind": "HuBERT-style pretraining (iteration 1: k-means of MFCCs)", "train_data": config.train_data,
                  "num_clusters": config.labels.num_clusters, "labels": str(self.directory)}
        model_dir = save_model(encoder, output_dir / MODEL_DIR, source=source)
        hf_dir = export_hf(encoder, output_dir / HF_DIR)
        encoder.train(was_training)
        summary = {"model": str(model_dir), "hf": str(hf_dir), "encoder_params": num_params,
                   "head_params": int(sum(p.numel() for p in model.parameters())) - num_params,
                   "num_layers": config.encoder.num_layers, "hidden_size": config.encoder.hidden_size,
                   "units": self.record.get("units_50hz", {})}
        atomic_write_text(output_dir / SUMMARY_FILE, json.dumps(summary, indent=1) + "\n")
        self.log.info("exported the encoder (%s parameters, without the %s of the prediction heads) to %s and, as a "
                      "Hugging Face HubertModel, to %s", f"{num_params:,}", f"{summary['head_params']:,}", model_dir,
                      hf_dir)
