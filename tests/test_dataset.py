"""AudioDataset (Kaldi data dir -> cropped waveforms) and collate_batch (padding, failures, extra fields)."""
import numpy as np
import pytest
import soundfile
import torch

from speechdistill.data.collate import collate_batch
from speechdistill.data.dataset import AudioDataset, ItemRef, LoadFailure
from speechdistill.data.tables import DataDirError

SR = 16000


def _write(directory, name, samples):
    path = directory / f"{name}.wav"
    soundfile.write(str(path), samples.astype(np.float32), SR, subtype="FLOAT")
    return path


@pytest.fixture
def data_dir(tmp_path):
    """Three utterances: 0.5 s, 2.0 s and a 0.05 s one; samples are the running index / 1e5 (identifiable)."""
    d = tmp_path / "data"
    d.mkdir()
    lengths = {"a-short": 800, "b-mid": 8000, "c-long": 32000}
    wav, counts = [], []
    for key, n in lengths.items():
        path = _write(d, key, np.arange(n) / 1e5)
        wav.append(f"{key} {path}\n")
        counts.append(f"{key} {n}\n")
    (d / "wav.scp").write_text("".join(wav))
    (d / "utt2num_samples").write_text("".join(counts))
    return d


def test_short_utterances_are_skipped_and_listed(data_dir):
    dataset = AudioDataset(data_dir, max_seconds=1.0, min_seconds=0.1)
    assert dataset.keys == ["b-mid", "c-long"]
    assert [key for key, _ in dataset.skipped] == ["a-short"]
    assert "0.050 s < min_seconds 0.1" in dataset.skipped[0][1]
    assert dataset.num_samples.tolist() == [8000, 32000]
    assert dataset.cropped_num_samples.tolist() == [8000, 16000]


def test_random_crop_is_a_contiguous_window_seeded_by_epoch_and_index(data_dir):
    dataset = AudioDataset(data_dir, max_seconds=0.25, min_seconds=0.1, seed=3)
    item = dataset[ItemRef(epoch=2, batch_index=0, index=1)]
    wav = item["wav"]
    assert wav.dtype == np.float32 and wav.shape == (4000,)
    start = int(round(wav[0] * 1e5))
    np.testing.assert_allclose(wav, (np.arange(start, start + 4000) / 1e5).astype(np.float32), rtol=0, atol=1e-7)
    # the offset is the documented generator's draw, independent of the instance
    expected = int(np.random.default_rng((3, 2, 1)).integers(0, 32000 - 4000 + 1))
    assert start == expected == dataset.crop_start(2, 1, 32000)
    again = AudioDataset(data_dir, max_seconds=0.25, min_seconds=0.1, seed=3)[ItemRef(2, 5, 1)]["wav"]
    assert np.array_equal(again, wav)
    starts = {dataset.crop_start(epoch, 1, 32000) for epoch in range(20)}
    assert len(starts) > 15  # a new crop every epoch
    # an utterance no longer than the crop is returned whole
    wider = AudioDataset(data_dir, max_seconds=0.6, min_seconds=0.1, seed=3)
    assert np.array_equal(wider[ItemRef(2, 0, 0)]["wav"], (np.arange(8000) / 1e5).astype(np.float32))


def _segmented(tmp_path):
    """A 3-s recording ``rec1`` (samples: running index / 1e5) cut into rec1-a (0.5-1.0 s) and rec1-b (2.0-2.5 s)."""
    d = tmp_path / "seg"
    d.mkdir()
    path = _write(d, "rec", np.arange(48000) / 1e5)
    (d / "wav.scp").write_text(f"rec1 {path}\n")
    (d / "segments").write_text("rec1-a rec1 0.5 1.0\nrec1-b rec1 2.0 2.5\n")
    (d / "utt2num_samples").write_text("rec1-a 8000\nrec1-b 8000\n")
    return d, path


def test_segments_cut_recordings(tmp_path):
    d, _ = _segmented(tmp_path)
    dataset = AudioDataset(d, max_seconds=None, min_seconds=0.0)
    first, second = dataset[0]["wav"], dataset[1]["wav"]
    np.testing.assert_allclose(first, (np.arange(8000, 16000) / 1e5).astype(np.float32), atol=1e-7)
    np.testing.assert_allclose(second, (np.arange(32000, 40000) / 1e5).astype(np.float32), atol=1e-7)


def test_missing_utt2num_samples_names_file_and_fix(data_dir):
    (data_dir / "utt2num_samples").unlink()
    with pytest.raises(DataDirError) as err:
        AudioDataset(data_dir)
    assert "utt2num_samples" in str(err.value) and "Fix:" in str(err.value)


def test_utterance_missing_from_utt2num_samples(data_dir):
    (data_dir / "utt2num_samples").write_text("a-short 800\nc-long 32000\n")
    with pytest.raises(DataDirError) as err:
        AudioDataset(data_dir)
    assert "b-mid" in str(err.value) and "missing" in str(err.value)


def test_unreadable_audio_becomes_a_failure_that_collate_drops(data_dir):
    (data_dir / "b-mid.wav").unlink()
    dataset = AudioDataset(data_dir, max_seconds=1.0, min_seconds=0.1)
    refs = [ItemRef(0, 7, 1), ItemRef(0, 7, 0)]
    items = [dataset[r] for r in refs]
    assert isinstance(items[1], LoadFailure) and items[1].key == "b-mid" and "not found" in items[1].message
    batch = collate_batch(items)
    assert batch["keys"] == ["c-long"]
    assert batch["wavs"].shape == (1, 16000)
    assert batch["item_failed"] == [False, True]
    assert batch["failures"][0][0] == "b-mid"
    assert batch["position"] == (0, 7)
    all_failed = collate_batch([items[1]])
    assert all_failed["wavs"].shape == (0, 0) and all_failed["keys"] == [] and all_failed["audio_seconds"] == 0.0


def test_collate_pads_and_measures_padding():
    items = [{"key": "x", "wav": np.ones(3, np.float32), "ref": ItemRef(1, 4, 0)},
             {"key": "y", "wav": 2 * np.ones(5, np.float32), "ref": ItemRef(1, 4, 1)}]
    batch = collate_batch(items)
    assert batch["wavs"].dtype == torch.float32 and batch["lengths"].dtype == torch.int64
    assert batch["wavs"].tolist() == [[1, 1, 1, 0, 0], [2, 2, 2, 2, 2]]
    assert batch["lengths"].tolist() == [3, 5]
    assert batch["padding_fraction"] == pytest.approx(1 - 8 / 10)
    assert batch["audio_seconds"] == pytest.approx(8 / SR)
    assert batch["position"] == (1, 4)


def test_extra_fields_from_the_task(data_dir):
    fields = {"speaker": {"b-mid": 3, "c-long": 7},
              "tokens": {"b-mid": [5, 6, 7], "c-long": [9]},
              "weight": {"b-mid": 0.5, "c-long": 2.0},
              "text": {"b-mid": "HELLO", "c-long": "WORLD"}}
    dataset = AudioDataset(data_dir, max_seconds=1.0, min_seconds=0.1, fields=fields)
    batch = collate_batch([dataset[0], dataset[1]])
    assert batch["speaker"].tolist() == [3, 7] and batch["speaker"].dtype == torch.int64
    assert batch["tokens"].tolist() == [[5, 6, 7], [9, -1, -1]]
    assert batch["tokens_lengths"].tolist() == [3, 1]
    assert batch["weight"].dtype == torch.float32 and batch["weight"].tolist() == [0.5, 2.0]
    assert batch["text"] == ["HELLO", "WORLD"]


def test_extra_field_must_cover_every_utterance_and_not_shadow_batch_keys(data_dir):
    with pytest.raises(DataDirError) as err:
        AudioDataset(data_dir, min_seconds=0.1, fields={"speaker": {"b-mid": 1}})
    assert "speaker" in str(err.value) and "c-long" in str(err.value)
    with pytest.raises(ValueError) as err:
        AudioDataset(data_dir, min_seconds=0.1, fields={"lengths": {"b-mid": 1, "c-long": 2}})
    assert "lengths" in str(err.value)


def test_a_crop_of_a_long_flac_decodes_only_the_crop(tmp_path):
    """A 1-s crop of a 10-minute FLAC: the samples of that window, with a bounded allocation (the whole file would
    be 38 MB of float32); the crop equals the same window of the whole decoded file."""
    import tracemalloc

    d = tmp_path / "long"
    d.mkdir()
    minutes = 10
    t = np.arange(minutes * 60 * SR) / SR
    signal = (0.25 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 0.1 * t))).astype(np.float32)
    path = d / "long.flac"
    soundfile.write(str(path), signal, SR, subtype="PCM_16")
    (d / "wav.scp").write_text(f"long {path}\n")
    (d / "utt2num_samples").write_text(f"long {len(signal)}\n")
    dataset = AudioDataset(d, max_seconds=1.0, seed=4)
    dataset[ItemRef(0, 0, 0)]  # warm libsndfile up: its first-use allocations are not the read
    tracemalloc.start()
    try:
        item = dataset[ItemRef(3, 0, 0)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    start = dataset.crop_start(3, 0, len(signal))
    assert start > 60 * SR  # far into the file
    whole, _ = soundfile.read(str(path), dtype="float32")
    assert np.array_equal(item["wav"], whole[start:start + SR])
    assert peak < 2 * SR * 4 + 2 ** 20, f"peak allocation {peak / 2 ** 20:.1f} MiB for a 1-s crop"


def test_an_empty_wav_scp_says_so(data_dir):
    (data_dir / "wav.scp").write_text("")
    with pytest.raises(DataDirError, match=r"wav.scp: is empty: the data dir has no utterances"):
        AudioDataset(data_dir)


def test_the_index_is_flat_arrays_a_forked_worker_shares(tmp_path):
    """Keys, sources, segments and fields live in numpy arrays (no per-utterance Python objects to copy)."""
    d, path = _segmented(tmp_path)
    dataset = AudioDataset(d, fields={"speaker": {"rec1-a": 3, "rec1-b": 4}, "tokens": {"rec1-a": [1, 2], "rec1-b": []},
                                      "text": {"rec1-a": "A", "rec1-b": "ÉB"}})
    assert dataset.source(1) == ("rec1-b", str(path), (2.0, 2.5))
    assert dataset.keys == ["rec1-a", "rec1-b"] and dataset.key(0) == "rec1-a"
    assert [type(v).__name__ for v in vars(dataset).values() if isinstance(v, (list, dict, tuple))] == \
        ["list", "dict"]  # skipped (empty here) and the field columns; nothing per utterance
    assert dataset.fields["speaker"][1] == 4 and dataset.fields["tokens"][0].tolist() == [1, 2]
    assert dataset.fields["tokens"][1].tolist() == [] and dataset.fields["text"][1] == "ÉB"
