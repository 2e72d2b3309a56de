"""Speaker model export/load and embedding extraction to kaldiio xvector.ark/scp (full and TTA)."""
import logging
import subprocess
import sys

import kaldiio
import numpy as np
import pytest
import torch

from test_sv_fixtures import REPO, TINY_ECAPA, save_tiny_teacher, write_speaker_data

from speechdistill.config import from_dict
from speechdistill.data.audio import read_audio
from speechdistill.sv.config import SvConfig
from speechdistill.sv.extract import ExtractOptions, extract_embeddings, segment_starts, tta_segments
from speechdistill.sv.model import SvModelError, load_sv_model
from speechdistill.sv.task import SvTask
from speechdistill.train.task import TrainContext


def trained_like_model(root, system, teacher=None):
    """A task's model with its BatchNorm statistics moved off their initial values, exported."""
    settings = dict(system=system, train_data=str(root / "train"), teacher=teacher, max_seconds=1.0, device="cpu",
                    ecapa=TINY_ECAPA, featurizer={"mode": "weighted_sum"} if system != "fbank" else {})
    task = SvTask(from_dict(SvConfig, settings))
    task.setup(TrainContext(torch.device("cpu"), "fp32", "fp32", 0, 1, 0, root, 0, logging.getLogger("test")))
    torch.manual_seed(1)
    model = task.model()
    with torch.no_grad():
        if model.featurizer is not None:
            model.featurizer.weights.copy_(torch.randn_like(model.featurizer.weights))
        for module in model.backend.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.copy_(0.1 * torch.randn_like(module.running_mean))
                module.running_var.copy_(1 + 0.5 * torch.rand_like(module.running_var))
    out_dir = root / f"exp_{system}"
    task.export(model, out_dir)
    return task, model, out_dir / "sv_model"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sv_extract")
    write_speaker_data(root / "train", speakers=(0, 1), utts_per_speaker=2, seed=3)
    # test set: lengths chosen around the 0.5 s TTA segment (8000 samples) and one too short for a frame
    write_speaker_data(root / "test", speakers=(2, 3), utts_per_speaker=2, lengths=[20000, 8000, 5000, 300])
    teacher = save_tiny_teacher(root / "teacher")
    return root, teacher


def embed_alone(embedder, wav):
    with torch.no_grad():
        x = torch.from_numpy(wav)[None]
        return embedder(x, torch.tensor([x.shape[1]]))[0].numpy()


def test_segment_starts_are_equally_spaced_by_hand():
    assert segment_starts(40000, 16000, 3).tolist() == [0, 12000, 24000]
    assert segment_starts(10001, 2000, 4).tolist() == [0, 2667, 5334, 8001]  # floor(k * 8001 / 3)
    assert segment_starts(16000, 16000, 5).tolist() == [0] * 5
    assert segment_starts(900, 16000, 2).tolist() == [0, 0]
    wavs = torch.arange(2 * 12, dtype=torch.float32).view(2, 12)
    segments, lengths = tta_segments(wavs, torch.tensor([12, 3]), segment=4, count=3)
    assert segments.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11],
                                 [12, 13, 14, 0], [12, 13, 14, 0], [12, 13, 14, 0]]
    assert lengths.tolist() == [4, 4, 4, 3, 3, 3]


@pytest.mark.parametrize("system", ["oskdft", "fbank"])
def test_exported_model_gives_the_trained_models_embeddings(setup, system):
    root, teacher = setup
    task, model, model_dir = trained_like_model(root, system, str(teacher) if system == "oskdft" else None)
    loaded = load_sv_model(model_dir)
    reference = task.embedder(model).eval()
    wav = read_audio(str(root / "test" / "wav" / "spk02-u00.wav"))
    np.testing.assert_allclose(embed_alone(loaded, wav), embed_alone(reference, wav), rtol=1e-5, atol=1e-6)
    if system == "oskdft":
        assert loaded.upstream.config.adapter_dim == 64  # the student keeps its adapters, switched on


def test_extracted_embeddings_equal_single_utterance_embeddings(setup, tmp_path):
    root, teacher = setup
    _, _, model_dir = trained_like_model(root, "oskdft", str(teacher))
    embedder = load_sv_model(model_dir)
    result = extract_embeddings(embedder, model_dir, root / "test", tmp_path / "full",
                                options=ExtractOptions(batch_seconds=3.0, num_workers=0), progress=False)
    table = kaldiio.load_scp(str(result.scp))
    assert sorted(table) == ["spk02-u00", "spk02-u01", "spk03-u00"]
    assert [k for k, _ in result.skipped] == ["spk03-u01"]  # 300 samples: no frame
    assert "spk03-u01 too-short" in (tmp_path / "full" / "skipped_utts.txt").read_text()
    for key in table:
        wav = read_audio(str(root / "test" / "wav" / f"{key}.wav"))
        assert table[key].shape == (12,)
        np.testing.assert_allclose(table[key], embed_alone(embedder, wav), rtol=1e-4, atol=1e-5)

    options = ExtractOptions(tta_segments=3, segment_seconds=0.5, num_workers=0)
    result = extract_embeddings(embedder, model_dir, root / "test", tmp_path / "tta", options=options, progress=False)
    table = kaldiio.load_scp(str(result.scp))
    wav = read_audio(str(root / "test" / "wav" / "spk02-u00.wav"))  # 20000 samples: starts 0, 6000, 12000
    matrix = table["spk02-u00"]
    assert matrix.shape == (4, 12)
    np.testing.assert_allclose(matrix[0], embed_alone(embedder, wav), rtol=1e-4, atol=1e-5)
    for row, start in enumerate([0, 6000, 12000], start=1):
        np.testing.assert_allclose(matrix[row], embed_alone(embedder, wav[start:start + 8000]), rtol=1e-4, atol=1e-5)
    short = table["spk03-u00"]  # 5000 samples < one segment: every segment is the whole utterance
    np.testing.assert_allclose(short[1:], np.repeat(short[:1], 3, axis=0), rtol=1e-4, atol=1e-5)


def test_rerun_is_a_no_op_until_an_input_changes(setup, tmp_path):
    root, _ = setup
    _, _, model_dir = trained_like_model(root, "fbank")
    embedder = load_sv_model(model_dir)
    options = ExtractOptions(num_workers=0)
    first = extract_embeddings(embedder, model_dir, root / "train", tmp_path, options=options, progress=False)
    stamp = (tmp_path / "xvector.ark").stat().st_mtime_ns
    again = extract_embeddings(embedder, model_dir, root / "train", tmp_path, options=options, progress=False)
    assert again.already_done and again.num_utts == first.num_utts == 4
    assert (tmp_path / "xvector.ark").stat().st_mtime_ns == stamp
    changed = extract_embeddings(embedder, model_dir, root / "train", tmp_path,
                                 options=ExtractOptions(num_workers=0, tta_segments=2), progress=False)
    assert not changed.already_done
    assert kaldiio.load_scp(str(changed.scp))["spk00-u00"].shape == (3, 12)
    assert not list(tmp_path.glob(".*tmp*"))


def test_a_test_condition_corrupts_every_utterance_as_its_seed_says(setup, tmp_path):
    """Under snr5, each embedding is that of the utterance corrupted by its own generator (seed, condition, id),
    for any system: here the fbank baseline and the OS-KDFT student, whole utterance and TTA segments alike."""
    from test_asr_common import make_noise_dir

    from speechdistill.augment.conditions import corrupt_batch, parse_condition
    root, teacher = setup
    condition = parse_condition("snr5", noise_dirs=[make_noise_dir(tmp_path / "noise")])
    options = ExtractOptions(num_workers=0, tta_segments=2, segment_seconds=0.5)
    for system in ("fbank", "oskdft"):
        _, _, model_dir = trained_like_model(root, system, str(teacher) if system == "oskdft" else None)
        embedder = load_sv_model(model_dir)
        out = tmp_path / system
        result = extract_embeddings(embedder, model_dir, root / "test", out, options=options, progress=False,
                                    condition=condition, condition_seed=7)
        table = kaldiio.load_scp(str(result.scp))
        clean = kaldiio.load_scp(str(extract_embeddings(embedder, model_dir, root / "test", tmp_path / f"{system}_clean",
                                                        options=options, progress=False).scp))
        noisy = {}
        for key in ("spk02-u00", "spk03-u00"):
            wav = torch.from_numpy(read_audio(str(root / "test" / "wav" / f"{key}.wav")))[None]
            noisy[key] = corrupt_batch(condition, wav, torch.tensor([wav.shape[1]]), [key], seed=7)[0].numpy()
            assert not np.allclose(noisy[key], wav[0].numpy())
            np.testing.assert_allclose(table[key][0], embed_alone(embedder, noisy[key]), rtol=1e-4, atol=1e-5)
            assert not np.allclose(table[key][0], clean[key][0], rtol=1e-3, atol=1e-4)
        # the second TTA segment of the 20000-sample utterance starts at 12000: cut from the corrupted audio
        np.testing.assert_allclose(table["spk02-u00"][2], embed_alone(embedder, noisy["spk02-u00"][12000:20000]),
                                   rtol=1e-4, atol=1e-5)
        assert "test condition snr5" in (out / "extract.log").read_text()
        again = extract_embeddings(embedder, model_dir, root / "test", out, options=options, progress=False,
                                   condition=condition, condition_seed=7)
        assert again.already_done
        reseeded = extract_embeddings(embedder, model_dir, root / "test", out, options=options, progress=False,
                                      condition=condition, condition_seed=8)
        assert not reseeded.already_done


def test_entry_point_writes_embeddings_and_reports_errors_on_one_line(setup, tmp_path):
    root, _ = setup
    _, _, model_dir = trained_like_model(root, "fbank")
    command = [sys.executable, "-m", "speechdistill.bin.sv_extract", "--model-dir", str(model_dir), "--data",
               str(root / "train"), "--output-dir", str(tmp_path / "emb"), "--tta-segments", "2", "--num-workers", "0"]
    env = {"PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "wrote 4 embeddings" in done.stderr
    assert kaldiio.load_scp(str(tmp_path / "emb" / "xvector.scp"))["spk01-u01"].shape == (3, 12)
    assert "wrote 4 embeddings" in (tmp_path / "emb" / "extract.log").read_text()
    bad = subprocess.run(command[:4] + [str(root / "teacher")] + command[5:], capture_output=True, text=True,
                         env=env, timeout=300)
    assert bad.returncode == 1
    assert "sv_model.yaml: not found" in bad.stderr and "encoder model dir" in bad.stderr
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_a_damaged_model_directory_is_named(setup, tmp_path):
    root, _ = setup
    _, _, model_dir = trained_like_model(root, "fbank")
    (model_dir / "backend.safetensors").unlink()
    with pytest.raises(SvModelError, match="backend.safetensors: not found"):
        load_sv_model(model_dir)


def test_a_long_utterance_is_embedded_from_its_start_with_a_message_and_truncated_weights_are_named(setup,
                                                                                                    tmp_path):
    """sv_extract --max-seconds 1 on a dir with a 6-s utterance: named in the log and the summary, embedded as
    its first second alone would be; every utterance gets an embedding; batches stay within --batch-seconds."""
    import shutil

    import soundfile

    root, _ = setup
    _, _, model_dir = trained_like_model(root, "fbank")
    data = tmp_path / "data"
    write_speaker_data(data, speakers=(4,), utts_per_speaker=3, lengths=[96000, 16000, 12000])
    head = tmp_path / "head"
    shutil.copytree(data, head)
    audio, _ = soundfile.read(str(data / "wav" / "spk04-u00.wav"), dtype="float32")
    soundfile.write(str(head / "wav" / "spk04-u00.wav"), audio[:16000], 16000, subtype="PCM_16")
    (head / "utt2num_samples").write_text("spk04-u00 16000\nspk04-u01 16000\nspk04-u02 12000\n")
    env = {"PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}

    def extract(data_dir, out, *extra):
        return subprocess.run([sys.executable, "-m", "speechdistill.bin.sv_extract", "--model-dir", str(model_dir),
                               "--data", str(data_dir), "--output-dir", str(out), "--num-workers", "0",
                               "--batch-seconds", "2", *extra], capture_output=True, text=True, env=env, timeout=300)

    done = extract(data, tmp_path / "emb", "--max-seconds", "1")
    assert done.returncode == 0, done.stderr
    assert "wrote 3 embeddings" in done.stderr and "1 longer than --max-seconds embedded from their start" in done.stderr
    log = (tmp_path / "emb" / "extract.log").read_text()
    assert "utterance 'spk04-u00' is 6.0 s long: only its first 1 s are used (--max-seconds 1" in log
    assert "batches of at most 2.0 s" in log
    reference = extract(head, tmp_path / "ref")
    assert reference.returncode == 0, reference.stderr
    cut = kaldiio.load_scp(str(tmp_path / "emb" / "xvector.scp"))
    whole = kaldiio.load_scp(str(tmp_path / "ref" / "xvector.scp"))
    np.testing.assert_allclose(cut["spk04-u00"], whole["spk04-u00"], rtol=1e-5, atol=1e-6)

    weights = model_dir / "backend.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])  # an interrupted copy
    bad = extract(data, tmp_path / "emb2")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert f"{weights}: cannot read the weights" in bad.stderr and "truncated" in bad.stderr
