"""The pretraining task's steps in process: targets from label tables or on the fly, masks, refusals.

(Whole training runs go through the entry point in test_pretrain_cli.py.)
"""
from __future__ import annotations

import logging

import pytest
import torch

from speechdistill.config import from_dict
from speechdistill.data.collate import collate_batch
from speechdistill.data.dataset import AudioDataset
from speechdistill.pretrain import HubertPretrainConfig, HubertPretrainTask, LabelStageError, prepare_labels
from speechdistill.train import TrainContext
from test_pretrain_support import make_speech_dir, tiny_config_dict


def _context(tmp_path) -> TrainContext:
    return TrainContext(device=torch.device("cpu"), precision="fp32", teacher_precision="fp32", rank=0, world_size=1,
                        local_rank=0, output_dir=tmp_path / "exp", seed=3, logger=logging.getLogger("test_pretrain"))


def _batch(task: HubertPretrainTask, data_dir, max_seconds=None):
    dataset = AudioDataset(data_dir, max_seconds=max_seconds, fields=task.item_fields(data_dir))
    return collate_batch([dataset[i] for i in range(len(dataset))])


def test_table_targets_equal_on_the_fly_targets_and_a_step_runs(tmp_path):
    train = make_speech_dir(tmp_path / "train", [9600, 12000, 14000, 8000], seed=6)
    table_config = from_dict(HubertPretrainConfig, tiny_config_dict(
        train, max_seconds=None, labels={"source": "table", "num_clusters": 8, "kmeans_iterations": 15}))
    table_config.validate()
    prepare_labels(table_config, tmp_path / "exp", num_workers=0)
    table_task = HubertPretrainTask(table_config)
    table_task.setup(_context(tmp_path))
    batch = _batch(table_task, train)
    assert batch["labels"].shape[0] == 4 and int(batch["labels"].min()) == -1  # padded by the collate
    frames = torch.tensor([table_task.frame_count(int(n)) for n in batch["lengths"]])
    num_frames = table_task.frame_count(batch["wavs"].shape[1])
    from_table = table_task.targets(batch, frames, num_frames)

    fly_config = from_dict(HubertPretrainConfig, tiny_config_dict(train, labels={"num_clusters": 8,
                                                                                 "kmeans_iterations": 15}))
    fly_task = HubertPretrainTask(fly_config)
    fly_task.setup(_context(tmp_path))  # the same centroids: on_the_fly and table share the k-means stage
    assert fly_task.item_fields(train) is None
    from_audio = fly_task.targets(batch, frames, num_frames)
    valid = torch.arange(num_frames)[None, :] < frames[:, None]
    assert torch.equal(from_table[valid], from_audio[valid])

    model = table_task.model()
    torch.manual_seed(0)
    out = table_task.train_step(model, batch, 0)
    assert torch.isfinite(out.loss) and float(out.count) > 0
    assert set(out.terms) == {"ce_masked", "acc_masked", "ce_unmasked", "acc_unmasked", "feature_penalty"}
    out.loss.backward()
    assert model.label_embeddings.grad is not None and model.encoder.mask_embedding.grad.abs().sum() > 0


def test_validation_masks_depend_only_on_the_utterances(tmp_path):
    train = make_speech_dir(tmp_path / "train", [9600, 12000, 14000], seed=7)
    config = from_dict(HubertPretrainConfig, tiny_config_dict(train))
    prepare_labels(config, tmp_path / "exp", num_workers=0)
    task = HubertPretrainTask(config)
    task.setup(_context(tmp_path))
    model = task.model().eval()
    batch = _batch(task, train)
    with torch.no_grad():
        first = task.valid_step(model, batch)
        task.train_step(model, batch, 0)  # draws from the training mask generator in between
        second = task.valid_step(model, batch)
    assert first.keys() == {"loss", "ce_masked", "acc_masked", "ce_unmasked", "acc_unmasked"}
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_training_refuses_missing_or_foreign_labels(tmp_path):
    train = make_speech_dir(tmp_path / "train", [9600, 12000], seed=8)
    config = from_dict(HubertPretrainConfig, tiny_config_dict(train))
    with pytest.raises(LabelStageError, match="are missing.*--stage labels"):
        HubertPretrainTask(config).setup(_context(tmp_path))
    prepare_labels(config, tmp_path / "exp", num_workers=0)
    other = from_dict(HubertPretrainConfig, dict(tiny_config_dict(train), labels={"num_clusters": 6}))
    with pytest.raises(LabelStageError, match="other data or settings"):
        HubertPretrainTask(other).setup(_context(tmp_path))
