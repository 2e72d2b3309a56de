"""``HubertPretrainConfig``: HuBERT-style masked prediction of k-means units, as one YAML file.

Trainer keys (:class:`speechdistill.train.TrainerConfig`) and the keys below live side by side at
the top level; every key can be overridden as ``--key value`` (nested sections dotted:
``--encoder.num_layers 6``, ``--labels.num_clusters 50``, ``--masking.mask_prob 0.65``).

=====================  ======================================================================
what                   keys
=====================  ======================================================================
encoder                ``encoder`` (any :class:`speechdistill.models.EncoderConfig`; the default
                       is a small CPU-sized shape, ``conf/pretrain/hubert_base_it1.yaml`` has
                       HuBERT Base). Its CNN must make one frame per 50 Hz label.
targets                ``labels``: k-means of 39-dim MFCC frames (HuBERT iteration 1), fitted on
                       a sample of ``train_data``; read on the fly from each cropped batch or
                       from per-utterance label tables
prediction             ``final_dim`` (projection of the last layer), ``logit_temp`` (cosine
                       logits / temperature), ``masked_weight`` / ``unmasked_weight`` (CE on
                       masked / unmasked frames), ``feature_penalty_weight`` (mean square of the
                       CNN output, HuBERT's extra loss)
masking                ``masking`` (span masking with fairseq ``compute_mask_indices`` semantics)
=====================  ======================================================================

Defaults are HuBERT's published choices for the method (k = 100 MFCC units, mask_prob 0.8,
mask_length 10, at least 2 spans, final_dim 256, temperature 0.1, masked-only loss, feature
penalty 10, Adam betas (0.9, 0.98), weight decay 0.01, clip 10, 8 % warmup then linear decay)
and a CPU-sized encoder; the schedule of a real run is in the YAML files of ``conf/pretrain``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, List, Literal, Optional, Tuple

from ..config import ConfigError
from ..data.features import MfccOptions, num_frames
from ..models.masking import MaskingConfig
from ..models.config import EncoderConfig
from ..models.export_hf import _check_expressible as check_exportable
from ..train.config import TrainerConfig

LABEL_RATE = 50  # Hz: one target per encoder frame (every other 100 Hz MFCC frame)
SAMPLES_PER_LABEL = 320  # at 16 kHz
# Lengths (samples) the CNN/label agreement is checked on: the first few frame boundaries, odd
# lengths, and a long crop, which together catch any CNN whose frame count drifts from the labels'.
PROBE_LENGTHS = tuple(range(400, 400 + 3 * SAMPLES_PER_LABEL + 1, 7)) + (16000, 16001, 32319, 250000)


def _opt(default: Any, help: str) -> Any:  # noqa: A002 - the word --help prints
    """A config field with its help text; mutable defaults are copied for every instance."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def small_encoder() -> EncoderConfig:
    """The default encoder: HuBERT's CNN layout (7 layers, stride 320, receptive field 400) slimmed
    to 128 channels, 4 post-LN layers of 256 (4 heads, FFN 1024), a 64-tap positional conv.
    About 4 M parameters; trains at CPU speed on minutes of audio."""
    channels = 128
    return EncoderConfig(conv_layers=[[channels, 10, 5]] + [[channels, 3, 2]] * 4 + [[channels, 2, 2]] * 2,
                         hidden_size=256, num_layers=4, num_heads=4, ffn_size=1024, pos_conv_kernel=64,
                         pos_conv_groups=8, feature_grad_mult=0.1, dropout=0.1, attention_dropout=0.1,
                         dropout_input=0.1, mask_embedding=True)


@dataclass
class LabelConfig:
    """HuBERT iteration-1 targets: k-means clusters of MFCC + Δ + ΔΔ frames.

    The k-means stage (``prepare_labels``) computes 100 Hz MFCCs over a random sample of the
    training utterances, fits ``num_clusters`` centroids and writes them (with label statistics)
    under ``dir``. Training then labels every 50 Hz encoder frame with its nearest centroid:
    ``on_the_fly`` recomputes the MFCCs of each (randomly cropped) batch, which is always aligned
    with the crop; ``table`` reads per-utterance label tables that the stage also writes
    (``train.km``, ``valid.km``: ``<utt> <label> <label> ...`` at 50 Hz), which needs whole
    utterances (``max_seconds: null``) because the data pipeline's crops are not frame-aligned.
    """

    source: Literal["on_the_fly", "table"] = _opt("on_the_fly", "where training reads the targets: on_the_fly "
                                                                "(MFCC of each cropped batch) or table (the "
                                                                "stage's label tables; needs max_seconds null)")
    dir: Optional[str] = _opt(None, "where the k-means stage writes centroids, statistics and label tables; "
                                    "null = <output_dir>/labels")
    num_clusters: int = _opt(100, "k of k-means (HuBERT iteration 1: 100 MFCC units)")
    kmeans_fraction: float = _opt(1.0, "fraction of training utterances whose frames the k-means is fitted on "
                                       "(HuBERT: 0.1)")
    kmeans_max_hours: Optional[float] = _opt(100.0, "cap on the audio of that sample, in hours (bounds memory: "
                                                    "100 h of 100 Hz 39-dim frames is 5.6 GB); null = no cap")
    kmeans_batch_size: Optional[int] = _opt(None, "null = full-batch Lloyd; an integer = mini-batch k-means with "
                                                  "that many frames per step (HuBERT: 10000)")
    kmeans_iterations: int = _opt(100, "Lloyd iterations, or mini-batch steps when kmeans_batch_size is set")
    kmeans_init_sample: Optional[int] = _opt(None, "k-means++ seeding on this many random frames; null = all")
    mfcc: MfccOptions = field(default_factory=MfccOptions, metadata={
        "help": "Kaldi MFCC options (defaults: HuBERT's 13 cepstra, 23 mel bins, no energy, 25/10 ms)"})


def _hubert_masking() -> MaskingConfig:
    # fairseq HubertModel.apply_mask passes min_masks=2; mask_prob and mask_length from the Base config.
    return MaskingConfig(mask_prob=0.8, mask_length=10, min_masks=2)


@dataclass
class HubertPretrainConfig(TrainerConfig):
    """Trainer keys plus HuBERT masked prediction (module docstring)."""

    encoder: EncoderConfig = field(default_factory=small_encoder, metadata={
        "help": "encoder structure (EncoderConfig keys), e.g. --encoder.num_layers 6 --encoder.hidden_size 384"})
    labels: LabelConfig = field(default_factory=LabelConfig, metadata={"help": "k-means targets"})
    masking: MaskingConfig = field(default_factory=_hubert_masking, metadata={
        "help": "span masking (HuBERT: mask_prob 0.8, mask_length 10, min_masks 2)"})
    final_dim: int = _opt(256, "width of the projection of the last layer and of the label embeddings")
    logit_temp: float = _opt(0.1, "logits = cosine(projection, label embedding) / logit_temp")
    masked_weight: float = _opt(1.0, "weight of the cross-entropy on masked frames")
    unmasked_weight: float = _opt(0.0, "weight of the cross-entropy on unmasked frames (HuBERT: 0)")
    feature_penalty_weight: float = _opt(10.0, "weight of the mean square of the CNN output (HuBERT: 10)")
    # Trainer keys whose defaults follow HuBERT's recipe.
    lr: float = _opt(5e-4, "peak learning rate (HuBERT Base: 5e-4)")
    weight_decay: float = _opt(0.01, "AdamW weight decay (HuBERT: 0.01)")
    grad_clip: float = _opt(10.0, "gradient norm clip (HuBERT: 10)")
    warmup_fraction: Optional[float] = _opt(0.08, "warmup as a fraction of max_steps (HuBERT: 8 %)")
    adam_betas: Tuple[float, float] = _opt((0.9, 0.98), "AdamW betas (HuBERT: 0.9, 0.98)")
    min_seconds: float = _opt(1.0, "shorter utterances are skipped (HuBERT: 2 s)")

    def validate(self) -> None:
        super().validate()
        self.encoder.validate()
        if self.encoder.num_layers < 1:
            raise ConfigError("config.encoder.num_layers: the prediction reads the last transformer layer; "
                              "give at least 1")
        if not self.encoder.mask_embedding and self.masking.enabled:
            raise ConfigError("config.encoder.mask_embedding: masked prediction replaces masked frames by the mask "
                              "embedding; set it to true")
        check_label_alignment(self.encoder.conv_layers, self.labels.mfcc)
        try:  # the product is a Hugging Face directory: refuse now what it could not express after training
            check_exportable(self.encoder)
        except ValueError as exc:
            raise ConfigError(f"config.encoder: {exc}") from None
        if self.final_dim < 1:
            raise ConfigError(f"config.final_dim: must be >= 1, found {self.final_dim}")
        if not self.logit_temp > 0:
            raise ConfigError(f"config.logit_temp: must be positive, found {self.logit_temp}")
        for name in ("masked_weight", "unmasked_weight", "feature_penalty_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"config.{name}: must not be negative, found {getattr(self, name)}")
        if self.masked_weight == 0 and self.unmasked_weight == 0:
            raise ConfigError("config.masked_weight and config.unmasked_weight are both 0: nothing to predict; "
                              "HuBERT uses masked_weight 1")
        if self.masked_weight > 0 and not self.masking.enabled:
            raise ConfigError("config.masking.mask_prob is 0 but masked_weight > 0: no frame would be masked; "
                              "set masking.mask_prob (HuBERT: 0.8)")
        m = self.masking
        if not 0.0 <= m.mask_prob <= 1.0:
            raise ConfigError(f"config.masking.mask_prob: must lie in [0, 1], found {m.mask_prob}")
        if m.mask_length < 1 or m.min_space < 0 or m.min_masks < 0:
            raise ConfigError("config.masking: mask_length must be >= 1, min_space and min_masks >= 0")
        labels = self.labels
        if labels.num_clusters < 2:
            raise ConfigError(f"config.labels.num_clusters: must be >= 2, found {labels.num_clusters}")
        if not 0.0 < labels.kmeans_fraction <= 1.0:
            raise ConfigError(f"config.labels.kmeans_fraction: must lie in (0, 1], found {labels.kmeans_fraction}")
        if labels.kmeans_max_hours is not None and not labels.kmeans_max_hours > 0:
            raise ConfigError(f"config.labels.kmeans_max_hours: must be positive or null, found "
                              f"{labels.kmeans_max_hours}")
        if labels.kmeans_iterations < 1:
            raise ConfigError(f"config.labels.kmeans_iterations: must be >= 1, found {labels.kmeans_iterations}")
        for name in ("kmeans_batch_size", "kmeans_init_sample"):
            value = getattr(labels, name)
            if value is not None and value < 1:
                raise ConfigError(f"config.labels.{name}: must be >= 1 or null, found {value}")
        if labels.kmeans_init_sample is not None and labels.kmeans_init_sample < labels.num_clusters:
            raise ConfigError(f"config.labels.kmeans_init_sample ({labels.kmeans_init_sample}) is smaller than "
                              f"num_clusters ({labels.num_clusters}); k-means++ needs at least k frames")
        if labels.source == "table" and self.max_seconds is not None:
            raise ConfigError(
                f"config.labels.source is 'table' but max_seconds is {self.max_seconds}: the data pipeline crops at "
                "any sample, so a crop would not line up with the label table's 20 ms frames. Fix: set max_seconds "
                "to null (whole utterances) or use labels.source on_the_fly")
        if self.min_seconds * 16000 < self.encoder.receptive_field:
            raise ConfigError(f"config.min_seconds: {self.min_seconds} s is shorter than the encoder's receptive "
                              f"field ({self.encoder.receptive_field} samples); raise it")


def encoder_frame_count(conv_layers: List[List[int]], num_samples: int) -> int:
    """Frames a CNN makes of ``num_samples`` samples: ``floor((L - k) / s) + 1`` layer by layer."""
    length = int(num_samples)
    for _, kernel, stride in conv_layers:
        length = (length - int(kernel)) // int(stride) + 1
    return length


def label_frame_count(num_samples: int, options: MfccOptions) -> int:
    """50 Hz labels of ``num_samples`` samples: every other 100 Hz MFCC frame, ``ceil(N_100 / 2)``."""
    frames = int(num_frames(num_samples, options))
    return (frames + 1) // 2


def check_label_alignment(conv_layers: List[List[int]], options: MfccOptions) -> None:
    """Refuse a CNN or MFCC setting whose frames do not pair one to one with the 50 Hz labels."""
    if options.sample_rate != 16000 or options.frame_shift_ms != 10.0:
        raise ConfigError(f"config.labels.mfcc: HuBERT labels are 100 Hz MFCC frames of 16 kHz audio read at 50 Hz; "
                          f"found sample_rate {options.sample_rate}, frame_shift_ms {options.frame_shift_ms} "
                          "(keep 16000 and 10.0)")
    for length in PROBE_LENGTHS:
        frames = encoder_frame_count(conv_layers, length)
        labels = label_frame_count(length, options)
        if frames != labels:
            stride = 1
            for layer in conv_layers:
                stride *= int(layer[2])
            raise ConfigError(
                f"config.encoder.conv_layers: the CNN makes {frames} frame(s) of {length} samples where the 50 Hz "
                f"labels (MFCC window {options.frame_length} samples, every other 10 ms frame) give {labels}; "
                f"the CNN has stride {stride} samples. Fix: keep HuBERT's kernels and strides "
                "[[C, 10, 5]] + [[C, 3, 2]] * 4 + [[C, 2, 2]] * 2 (any channel count C) and the 25 ms MFCC window")
