"""HuBERT-style pretraining from scratch: k-means units of MFCCs, masked prediction, export as a teacher.

    from speechdistill.pretrain import HubertPretrainConfig, HubertPretrainTask, prepare_labels
    prepare_labels(config, "exp/teacher")                     # k-means label stage (cached)
    Trainer(config, HubertPretrainTask(config), "exp/teacher").run()
    # -> exp/teacher/model (our format) and exp/teacher/hf (HubertModel), both read by load_model

The entry point ``python -m speechdistill.bin.pretrain_hubert`` does both.
"""
from .config import HubertPretrainConfig, LabelConfig, check_label_alignment, small_encoder
from .labels import LabelStageError, LabelStageResult, MfccLabeler, prepare_labels, read_label_table
from .model import HubertPretrainModel, PredictionLoss, cosine_logits, feature_penalty, masked_prediction_loss
from .task import HubertPretrainTask

__all__ = ["HubertPretrainConfig", "HubertPretrainModel", "HubertPretrainTask", "LabelConfig", "LabelStageError",
           "LabelStageResult", "MfccLabeler", "PredictionLoss", "check_label_alignment", "cosine_logits",
           "feature_penalty", "masked_prediction_loss", "prepare_labels", "read_label_table", "small_encoder"]
