"""The k-means label stage and the alignment of 50 Hz labels with encoder frames."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile
import torch

from speechdistill.config import ConfigError, from_dict
from speechdistill.data.features import MfccOptions, hubert_mfcc_features
from speechdistill.models import Encoder, EncoderConfig
from speechdistill.pretrain import (HubertPretrainConfig, MfccLabeler, check_label_alignment, prepare_labels,
                                    read_label_table, small_encoder)
from speechdistill.pretrain.config import label_frame_count
from test_pretrain_support import TINY_ENCODER, make_speech_dir, tiny_config_dict


def _config(tmp_path, **changes) -> HubertPretrainConfig:
    train = tmp_path / "train"
    if not train.exists():
        make_speech_dir(train, [9600, 12000, 14000, 8000, 16000, 11000], seed=1)
    config = from_dict(HubertPretrainConfig, tiny_config_dict(train, **changes))
    config.validate()
    return config


def test_label_count_equals_the_encoder_frame_count_for_every_length():
    encoder = Encoder(small_encoder())
    lengths = torch.arange(400, 400 + 4 * 320 + 1, 13)
    expected = encoder.frame_lengths(lengths)
    assert [label_frame_count(int(n), MfccOptions()) for n in lengths] == expected.tolist()
    # and what the on-the-fly labeller really returns for a padded batch equals a real forward's frame count
    tiny = Encoder(EncoderConfig(**TINY_ENCODER)).eval()
    wavs = torch.randn(3, 5000) * 0.1
    batch_lengths = torch.tensor([5000, 4003, 719])
    labeler = MfccLabeler(torch.randn(8, 39), MfccOptions())
    units, label_lengths = labeler(wavs, batch_lengths)
    with torch.no_grad():
        out = tiny(wavs, batch_lengths)
    assert label_lengths.tolist() == out.lengths.tolist() == [15, 12, 1]
    assert units.shape == (3, out.hidden_states[-1].shape[1])


def test_a_cnn_off_the_label_grid_is_refused_naming_the_key():
    check_label_alignment(small_encoder().conv_layers, MfccOptions())  # HuBERT's layout at any width passes
    strided = [[16, 10, 5], [16, 8, 4], [16, 4, 4], [16, 4, 4]]  # stride 320, receptive field 345
    with pytest.raises(ConfigError, match=r"conv_layers.*HuBERT's kernels and strides"):
        HubertPretrainConfig(train_data="x", encoder=EncoderConfig(conv_layers=strided, hidden_size=32, num_heads=2,
                                                                   pos_conv_kernel=8, pos_conv_groups=2)).validate()
    with pytest.raises(ConfigError, match="frame_shift_ms"):
        check_label_alignment(small_encoder().conv_layers, MfccOptions(frame_shift_ms=20.0))


def test_table_labels_need_whole_utterances(tmp_path):
    with pytest.raises(ConfigError, match="max_seconds to null"):
        _config(tmp_path, labels={"source": "table", "num_clusters": 8}, max_seconds=1.5)


def _all_mfcc(directory) -> list:
    features = []
    for line in (directory / "wav.scp").read_text().splitlines():
        key, path = line.split()
        audio = torch.from_numpy(soundfile.read(path, dtype="float32")[0])
        feats, n = hubert_mfcc_features(audio[None], torch.tensor([len(audio)]), label_rate=100)
        features.append((key, audio, feats[0, :int(n[0])]))
    return features


def test_stage_fits_records_statistics_and_is_cached(tmp_path):
    config = _config(tmp_path)
    first = prepare_labels(config, tmp_path / "exp", num_workers=0)
    assert not first.reused and first.centroids.shape == (8, 39)
    centroids_file = first.directory / "centroids.npy"
    assert first.directory == tmp_path / "exp" / "labels" and centroids_file.is_file()
    # statistics of the sample's 50 Hz units, recomputed here with plain numpy distances
    counts = np.zeros(8, dtype=np.int64)
    centroids = first.centroids.numpy().astype(np.float64)
    for _, _, feats in _all_mfcc(config_train := tmp_path / "train"):
        frames = feats.numpy()[::2].astype(np.float64)
        nearest = ((frames[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
        counts += np.bincount(nearest, minlength=8)
    units = first.record["units_50hz"]
    assert units["frames"] == int(counts.sum()) == sum(label_frame_count(int(n), MfccOptions()) for n in
                                                       [9600, 12000, 14000, 8000, 16000, 11000])
    assert units["majority_share"] == pytest.approx(counts.max() / counts.sum())
    assert units["used_units"] == int((counts > 0).sum())
    assert json.loads((first.directory / "kmeans.json").read_text())["settings"]["train_data"]["path"] == \
        str(config_train.resolve())
    assert "k-means done" in (first.directory / "prepare_labels.log").read_text()

    stamp = centroids_file.stat().st_mtime_ns
    again = prepare_labels(config, tmp_path / "exp", num_workers=0)
    assert again.reused and centroids_file.stat().st_mtime_ns == stamp
    assert torch.equal(again.centroids, first.centroids)

    changed = _config(tmp_path, labels={"num_clusters": 5, "kmeans_iterations": 15})
    refit = prepare_labels(changed, tmp_path / "exp", num_workers=0)
    assert not refit.reused and refit.centroids.shape == (5, 39)


def test_table_labels_line_up_with_on_the_fly_labels_of_padded_batches_and_aligned_crops(tmp_path):
    valid = make_speech_dir(tmp_path / "valid", [7000, 9000], seed=9, prefix="dev")
    config = _config(tmp_path, labels={"source": "table", "num_clusters": 8, "kmeans_iterations": 15},
                     max_seconds=None, valid_data=str(valid))
    result = prepare_labels(config, tmp_path / "exp", num_workers=0)
    assert set(result.tables) == {"train", "valid"}
    table = read_label_table(result.tables["train"], 8)
    assert set(read_label_table(result.tables["valid"], 8)) == {"dev000", "dev001"}
    utterances = _all_mfcc(tmp_path / "train")
    labeler = MfccLabeler(result.centroids, MfccOptions())
    longest = max(len(audio) for _, audio, _ in utterances)
    wavs = torch.zeros(len(utterances), longest)
    for row, (_, audio, _) in enumerate(utterances):
        wavs[row, :len(audio)] = audio
    lengths = torch.tensor([len(audio) for _, audio, _ in utterances])
    units, frames = labeler(wavs, lengths)
    for row, (key, audio, _) in enumerate(utterances):
        assert len(table[key]) == int(frames[row])
        assert units[row, :int(frames[row])].tolist() == table[key].tolist()
    # A crop that starts at 20 ms frame j gets the table's frames j, j+1, ... away from its edges
    # (there Δ and ΔΔ see the crop's own edge instead of the neighbouring audio).
    key, audio, _ = utterances[4]
    for first_frame in (3, 10):
        crop = audio[320 * first_frame: 320 * first_frame + 6400]
        crop_units, crop_frames = labeler(crop[None], torch.tensor([len(crop)]))
        n = int(crop_frames[0])
        assert crop_units[0, 2:n - 3].tolist() == table[key][first_frame + 2:first_frame + n - 3].tolist()


def test_unreadable_audio_is_listed_and_the_rest_is_used(tmp_path):
    train = make_speech_dir(tmp_path / "train", [9600, 12000, 14000], seed=2)
    lines = (train / "wav.scp").read_text().splitlines()
    lines[1] = "utt001 " + str(tmp_path / "missing.wav")
    (train / "wav.scp").write_text("\n".join(lines) + "\n")
    config = from_dict(HubertPretrainConfig, tiny_config_dict(train))
    result = prepare_labels(config, tmp_path / "exp", num_workers=0)
    listed = (result.directory / "unreadable_kmeans_sample.txt").read_text()
    assert listed.startswith("utt001 ") and "missing.wav" in listed
    assert result.record["sample"] == {**result.record["sample"], "utterances": 2, "unreadable": 1}
