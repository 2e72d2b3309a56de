"""The ASR probe as a trainer task: frozen upstream -> featurizer -> BiLSTM-CTC, CTC loss over tokens.

One training step::

    wavs [B, T], lengths [B] samples
      -> upstream (frozen: eval, no_grad, teacher autocast; only the layers the featurizer reads)
         or the same hidden states read back from a dump (train_features / valid_features)
      -> AsrModel (trainable): featurizer [B, N, D] -> SpecAugment -> BiLSTM -> log-probs [B, N, V]
      -> CTC loss against the utterance's token ids (``tokens`` field built from <data>/text)

Loss normalisation: the loss is the CTC negative log-likelihood of each utterance (summed over
its frames and tokens), averaged over the utterances of the batch, and ``StepOutput.count`` is
the number of utterances (ESPnet's convention). Under DDP and accumulation the update therefore
follows the mean utterance NLL of the whole global batch. An utterance whose tokens cannot be
aligned to its frames (fewer frames than tokens plus repeats) contributes zero loss and zero
gradient; the ``infeasible`` term reports their share so that a too-fine token type (or a
too-coarse upstream frame rate) shows up in the logs instead of silently training on nothing.

Validation reports, per batch (the trainer averages over utterances): the same CTC loss,
``cer`` and ``wer`` in percent of greedy hypotheses against the reference text (each batch's
error count over its reference length, as :mod:`speechdistill.metrics.wer` scores them).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Mapping, Optional, Tuple, Union

import torch

from ..config import ConfigError
from ..data.tables import DataDirError, format_error, read_table
from ..downstream.asr import BiLstmCtcConfig, ctc_loss
from ..downstream.ctc_decode import greedy_decode
from ..downstream.featurizer import Featurizer, FeaturizerConfig
from ..downstream.specaugment import SpecAugmentConfig
from ..downstream.tokenizer import Tokenizer, load_tokenizer
from ..metrics.wer import score as score_texts
from ..train import StepOutput, TrainContext, TrainerConfig
from .model import AsrModel, save_asr_model
from .upstream import ProbeFeatures, upstream_fingerprint

ASR_MODEL_DIR = "asr_model"


def _opt(default: Any, help: str) -> Any:  # noqa: A002 - the trainer config's wording
    if isinstance(default, (list, dict, tuple)):
        return field(default_factory=lambda: default, metadata={"help": help})
    return field(default=default, metadata={"help": help})


def _superb_downstream() -> BiLstmCtcConfig:
    """SUPERB ASR probe (s3prl downstream/asr): 1024-d projection, 2 x BiLSTM 1024, dropout 0.2,
    SpecAugment with 2 time masks of 0-40 frames and 4 feature masks of 0-50 dims (no time warp)."""
    return BiLstmCtcConfig(hidden_size=1024, num_layers=2, projection_size=1024, dropout=0.2,
                           spec_augment=SpecAugmentConfig(num_time_masks=2, max_time_mask_frames=40,
                                                          num_feature_masks=4, max_feature_mask_dims=50))


@dataclass
class SuperbProbeConfig(TrainerConfig):
    """What every probe of a frozen upstream shares (the ASR probe, speechdistill.probe's PR/KS/IC/SID): the
    upstream, the featurizer, optional feature dumps, and the trainer defaults of SUPERB's downstream recipes
    (Adam with torch's betas, constant lr 1e-4, gradient clip 1, 200k updates)."""

    upstream: str = _opt("", "frozen upstream: any model dir or checkpoint load_model reads (the student of "
                             "the distillation stage, an imported teacher)")
    featurizer: FeaturizerConfig = field(default_factory=FeaturizerConfig, metadata={
        "help": "mode weighted_sum (SUPERB: softmax-weighted sum of layers, all by default) or single (one layer); "
                "e.g. --featurizer.mode single --featurizer.layer 4"})
    train_features: Optional[str] = _opt(None, "dump of train_data's hidden states (dump_features); null = run "
                                               "the upstream on the fly")
    valid_features: Optional[str] = _opt(None, "dump of valid_data's hidden states; null = on the fly")
    max_seconds: Optional[float] = _opt(None, "random training crop in seconds; null = whole utterances")
    lr: float = _opt(1e-4, "Adam learning rate (SUPERB: 1e-4)")
    lr_schedule: Literal["linear", "cosine", "constant"] = _opt("constant", "SUPERB keeps the learning rate constant")
    adam_betas: Tuple[float, float] = _opt((0.9, 0.999), "Adam betas (torch defaults, as SUPERB)")
    adam_eps: float = _opt(1e-8, "Adam epsilon")
    grad_clip: float = _opt(1.0, "gradient norm clip (SUPERB: 1)")
    max_steps: int = _opt(200000, "updates (SUPERB: 200k)")

    def validate(self) -> None:
        super().validate()
        if not self.upstream:
            raise ConfigError("config.upstream: no upstream given; pass --upstream DIR (a student dir such as "
                              "exp/distill_<config>/student, or any model load_model reads)")
        if self.valid_features and not self.valid_data:
            raise ConfigError("config.valid_features is set but valid_data is not; give --valid-data too")


@dataclass
class AsrConfig(SuperbProbeConfig):
    """Trainer keys plus the ASR probe's; defaults follow SUPERB's ASR task (conventions §5.1)."""

    token_dir: str = _opt("", "token list dir written by asr_tokenizer (tokens.txt, plus bpe.model for bpe)")
    downstream: BiLstmCtcConfig = field(default_factory=_superb_downstream, metadata={
        "help": "BiLSTM-CTC sizes: hidden_size per direction, num_layers, projection_size (null = none), dropout, "
                "spec_augment (null = off), e.g. --downstream.hidden_size 256"})
    # Trainer keys whose defaults differ for the ASR probe (SUPERB: 32 utterances, validation every 2000).
    max_seconds: Optional[float] = _opt(None, "must stay null: CTC needs whole utterances with their transcripts")
    batch_seconds: float = _opt(400.0, "seconds of padded audio per batch (SUPERB: 32 utterances of ~12 s)")
    min_seconds: float = _opt(0.5, "shorter utterances are skipped and listed in skipped_utts.txt")
    valid_every: int = _opt(2000, "validate every this many updates (SUPERB: 2000)")

    def validate(self) -> None:
        super().validate()
        if not self.token_dir:
            raise ConfigError("config.token_dir: no token list given; pass --token-dir DIR written by "
                              "python -m speechdistill.bin.asr_tokenizer")
        if self.max_seconds is not None:
            raise ConfigError(f"config.max_seconds: {self.max_seconds} would crop utterances and cut their "
                              "transcripts apart; ASR trains on whole utterances. Fix: set it to null and bound "
                              "batches with batch_seconds")


def ctc_infeasible(frame_lengths: torch.Tensor, targets: torch.Tensor, target_lengths: torch.Tensor) -> torch.Tensor:
    """``[B]`` bool: True where ``frame_lengths`` frames cannot hold the target under CTC, i.e. fewer
    frames than tokens plus adjacent repeats (each repeat needs a blank between).

    targets: ``[B, S]`` padded token ids; target_lengths: ``[B]``.
    """
    if targets.shape[1] < 2:
        repeats = torch.zeros_like(target_lengths)
    else:
        same = targets[:, 1:] == targets[:, :-1]
        inside = torch.arange(1, targets.shape[1], device=targets.device)[None, :] < target_lengths[:, None]
        repeats = (same & inside).sum(dim=1)
    return frame_lengths < target_lengths + repeats


class AsrTask:
    """Implements :class:`speechdistill.train.Task` for the ASR probe (see the module docstring)."""

    def __init__(self, config: AsrConfig) -> None:
        self.config = config
        self._tokenizer: Optional[Tokenizer] = None

    # ------------------------------------------------------------------ setup
    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.config.token_dir)
        return self._tokenizer

    def setup(self, context: TrainContext) -> None:
        config, log = self.config, context.logger
        self.context = context
        self.fingerprint = upstream_fingerprint(config.upstream)
        self.features = ProbeFeatures(config.upstream, context.device, train_features=config.train_features,
                                      valid_features=config.valid_features, has_valid=bool(config.valid_data),
                                      min_seconds=config.min_seconds)
        self.num_hidden_states, self.hidden_size = self.features.num_hidden_states, self.features.hidden_size
        self.layers = Featurizer(self.num_hidden_states, config.featurizer).selected_layers
        self.features.check_layers(self.layers)
        log.info("ASR upstream %s (%d hidden states of %d, %s); featurizer %s over hidden states %s; %s tokens: %d "
                 "(%s)", config.upstream, self.num_hidden_states, self.hidden_size, self.features.description,
                 config.featurizer.mode, self.layers, self.tokenizer.token_type, self.tokenizer.vocab_size,
                 config.token_dir)

    def model(self) -> torch.nn.Module:
        return AsrModel(self.num_hidden_states, self.hidden_size, self.tokenizer.vocab_size, self.config.featurizer,
                        self.config.downstream)

    def param_groups(self, model: torch.nn.Module) -> List[Dict[str, Any]]:
        return [{"name": "asr", "params": [p for p in model.parameters() if p.requires_grad]}]

    def item_fields(self, data_dir: Path) -> Dict[str, Dict[str, Any]]:
        """``tokens`` (token ids) and ``text`` (the transcript) of every utterance of ``data_dir``."""
        text_path = Path(data_dir) / "text"
        try:
            texts = read_table(text_path, allow_empty_value=True)
            lengths = read_table(Path(data_dir) / "utt2num_samples", nfields=2)
        except DataDirError as exc:
            raise DataDirError(f"{exc} (the ASR task reads transcripts from {text_path})") from None
        missing = [utt for utt in lengths if utt not in texts]
        if missing:
            raise DataDirError(format_error(text_path, f"{len(missing)} utterance(s) of the data dir have no "
                                            f"transcript, e.g. '{missing[0]}'",
                                            fix="add their transcripts or remove them with utils/fix_data_dir.sh"))
        tokenizer = self.tokenizer
        return {"tokens": {utt: tokenizer.encode(text) for utt, text in texts.items()},
                "text": dict(texts)}

    # ------------------------------------------------------------------ steps
    def _loss(self, model: torch.nn.Module, batch: Mapping[str, Any], training: bool):
        states, frame_lengths = self.features(batch, training, self.context.teacher_autocast())
        log_probs, frame_lengths = model(states, frame_lengths)
        targets = batch["tokens"].clamp(min=0)  # collate pads with -1; CTC ignores past target_lengths
        target_lengths = batch["tokens_lengths"]
        loss = ctc_loss(log_probs, frame_lengths, targets, target_lengths, reduction="mean_per_utterance")
        infeasible = ctc_infeasible(frame_lengths, targets, target_lengths).float().mean()
        return loss, infeasible, log_probs, frame_lengths

    def train_step(self, model: torch.nn.Module, batch: Mapping[str, Any], step: int) -> StepOutput:
        loss, infeasible, _, _ = self._loss(model, batch, True)
        return StepOutput(loss=loss, terms={"ctc": loss.detach(), "infeasible": infeasible},
                          count=len(batch["keys"]))

    def valid_step(self, model: torch.nn.Module, batch: Mapping[str, Any]) -> Dict[str, Union[float, torch.Tensor]]:
        loss, infeasible, log_probs, frame_lengths = self._loss(model, batch, False)
        hyps = [self.tokenizer.decode(ids) for ids in greedy_decode(log_probs, frame_lengths)]
        refs = dict(zip(batch["keys"], batch["text"]))
        hyp_map = dict(zip(batch["keys"], hyps))
        metrics: Dict[str, Union[float, torch.Tensor]] = {"loss": loss, "infeasible": infeasible}
        for name, unit in (("cer", "char"), ("wer", "word")):
            report = score_texts(refs, hyp_map, unit)
            metrics[name] = 100.0 * report.errors / max(report.num_ref, 1)
        return metrics

    def state_dict(self) -> Dict[str, Any]:
        return {}  # SpecAugment and dropout draw from torch's global RNG, which the trainer checkpoints

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        return None

    def export(self, model: torch.nn.Module, output_dir: Path) -> None:
        out = save_asr_model(model, self.config.token_dir, Path(output_dir) / ASR_MODEL_DIR,
                             token_type=self.tokenizer.token_type, upstream=self.config.upstream,
                             upstream_fingerprint=self.fingerprint)
        weights = model.featurizer.layer_weights().tolist()
        self.context.logger.info("exported the ASR model to %s; featurizer weights: %s", out,
                                 ", ".join(f"{layer}: {w:.3f}" for layer, w in zip(model.selected_layers, weights)))
