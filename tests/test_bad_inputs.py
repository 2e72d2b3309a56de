"""Hostile input through the real entry points: every case gives a message naming the file, line, key or option
and the fix, with the exit status a script can test, and loses nothing else.

Each case runs the command a user runs (``python -m speechdistill.bin.*``, ``utils/*.sh``, ``run.sh``) as a
subprocess on small files made here."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from conftest import REPO, copy_librispeech_recipe, single_process_env
from test_sv_fixtures import TINY_ECAPA, save_tiny_teacher, speaker_tone, write_speaker_data

from speechdistill.data.tables import read_table

UTILS = REPO / "egs" / "TEMPLATE" / "utils"


def run(*args, cwd=None, timeout=300, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env=env or single_process_env())


def module(name: str, *args, **kwargs) -> subprocess.CompletedProcess:
    return run(sys.executable, "-m", f"speechdistill.bin.{name}", *args, **kwargs)


def one_line_error(done: subprocess.CompletedProcess, prog: str) -> str:
    """The last stderr line, which must be the one-line error of ``prog`` (no traceback)."""
    assert done.returncode == 1, (done.returncode, done.stdout[-1500:], done.stderr[-1500:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith(f"{prog}: error: "), done.stderr[-1500:]
    return line


def sv_train(data, out, *extra, prefix=(), **kwargs) -> subprocess.CompletedProcess:
    """Two updates of the fbank system (no teacher needed) on ``data``."""
    command = [*prefix, sys.executable, "-m", "speechdistill.bin.sv_train", "--train-data", data, "--output-dir", out,
               "--system", "fbank", "--device", "cpu", "--precision", "fp32", "--max_seconds", "1.0",
               "--batch_seconds", "4.0", "--num_workers", "0", "--valid_every", "0", "--num_buckets", "1",
               "--max_steps", "2", "--ecapa", json.dumps(TINY_ECAPA), *extra]
    return run(*command, **kwargs)


@pytest.fixture(scope="module")
def speakers(tmp_path_factory):
    return write_speaker_data(tmp_path_factory.mktemp("bad_inputs") / "train", seed=2)


def with_bad_audio(base: Path, target: Path) -> Path:
    """A copy of ``base`` whose first four utterances are hostile: a wav.scp command that hangs, a WAV cut short
    after its header, 8 kHz audio and stereo audio (each keeps its utt2num_samples count)."""
    shutil.copytree(base, target)
    wav = read_table(target / "wav.scp")
    keys = list(wav)
    hung, cut, narrow, stereo = keys[:4]
    wav[hung] = f"sleep 60; cat {wav[hung]} |"
    path = Path(wav[cut])
    soundfile.write(str(path), speaker_tone(0, 131072, np.random.default_rng(0)), 16000, subtype="PCM_16")
    path.write_bytes(path.read_bytes()[:44 + 2 * 22594])
    counts = read_table(target / "utt2num_samples")
    counts[cut] = "131072"
    soundfile.write(wav[narrow], np.zeros(12000, np.float32), 8000, subtype="PCM_16")
    soundfile.write(wav[stereo], np.zeros((16000, 2), np.float32), 16000, subtype="PCM_16")
    (target / "wav.scp").write_text("".join(f"{k} {v}\n" for k, v in wav.items()))
    (target / "utt2num_samples").write_text("".join(f"{k} {v}\n" for k, v in counts.items()))
    return target


# ------------------------------------------------------------------------------------- audio in training
def test_training_skips_hung_pipes_cut_files_and_wrong_formats_with_key_command_and_reason(speakers, tmp_path):
    data = with_bad_audio(speakers, tmp_path / "train")
    keys = list(read_table(data / "wav.scp"))
    done = sv_train(data, tmp_path / "run", "--pipe_timeout", "1", "--max_steps", "4", "--max_load_failures_in_row",
                    "5", timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    skipped = {line.split(" ", 1)[0]: line for line in (tmp_path / "run" / "skipped_utts.txt").read_text().splitlines()}
    assert f"utterance '{keys[0]}' (sleep 60; cat " in skipped[keys[0]]
    assert "the wav.scp command did not finish within 1 s (pipe timeout); killed it" in skipped[keys[0]]
    assert "truncated: the header says 131072 samples, the file holds 22594" in skipped[keys[1]]
    assert "sample rate is 8000 Hz, expected 16000 Hz. Fix: convert the corpus to 16 kHz mono" in skipped[keys[2]]
    assert "2 channels, expected mono. Fix: convert the corpus to 16 kHz mono" in skipped[keys[3]]
    for line in skipped.values():  # no hint at switches the trainers do not have
        assert "--resample" not in line and "mix_channels" not in line
    assert "finished at update 4" in (tmp_path / "run" / "train.log").read_text()


def test_an_empty_wav_scp_is_named(speakers, tmp_path):
    data = tmp_path / "empty"
    shutil.copytree(speakers, data)
    for name in ("wav.scp", "utt2spk", "spk2utt", "utt2num_samples"):
        (data / name).write_text("")
    line = one_line_error(sv_train(data, tmp_path / "run"), "sv_train")
    assert f"{data / 'wav.scp'}: is empty: the data dir has no utterances. Fix:" in line
    assert "min_seconds" not in line


def test_the_training_config_errors_name_their_source(speakers, tmp_path):
    config = tmp_path / "sv.yaml"
    config.write_text("system: fbank\nlr: .nan\n")
    line = one_line_error(sv_train(speakers, tmp_path / "a", "--config", config), "sv_train")
    assert f"{config}.lr: must be a finite number, found nan" in line
    config.write_text("system: fbank\nlr: 0.001\n")
    line = one_line_error(sv_train(speakers, tmp_path / "b", "--config", config, "--max_stepz", "3"), "sv_train")
    assert "command line: unknown option '--max_stepz'; did you mean '--max_steps'?" in line
    assert str(config) not in line
    teacher = save_tiny_teacher(tmp_path / "teacher")
    done = sv_train(speakers, tmp_path / "c", "--system", "oskdft", "--teacher", teacher, "--student",
                    "oskdft", "--student_encoder", '{"hiden_size": 8}')
    line = one_line_error(done, "sv_train")
    assert "student_encoder: unknown key 'hiden_size'; did you mean 'hidden_size'?" in line
    assert "oskdft.yaml" not in line and "preset" not in line


def _mount_namespace() -> bool:
    probe = subprocess.run(["unshare", "-rm", "bash", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True) if shutil.which("unshare") else None
    return probe is not None and probe.returncode == 0


@pytest.mark.skipif(not _mount_namespace(), reason="needs unshare -rm and tmpfs mounts (a mount namespace)")
@pytest.mark.parametrize("mount,expected", [
    ("ro,size=1m", "{out}: cannot write the run's output (--output-dir): Read-only file system. Fix: make {out} "
                   "writable or choose another --output-dir"),
    ("size=96k", "{out}/checkpoints/ckpt-2.pt: cannot write the checkpoint: No space left on device. Fix: free "
                 "space on the disk of {out}/checkpoints"),
])
def test_a_read_only_or_full_output_disk_is_named_with_the_path(speakers, tmp_path, mount, expected):
    disk = tmp_path / "disk"
    disk.mkdir()
    out = disk / "run"
    done = sv_train(speakers, out, prefix=("unshare", "-rm", "bash", "-c",
                                           f'mount -t tmpfs -o {mount} tmpfs {disk} && exec "$@"', "bash"))
    line = one_line_error(done, "sv_train")
    assert expected.format(out=out) in line


@pytest.mark.skipif(not _mount_namespace(), reason="needs unshare -rm and tmpfs mounts (a mount namespace)")
def test_a_checkpoint_that_fills_the_disk_is_reported_as_a_full_disk_wherever_the_write_fails(tmp_path):
    """torch.save hides the errno of a failed write ("unexpected pos ..."); however full the disk already is, the
    message says the disk is full, the temporary is removed and the earlier checkpoint stays."""
    disk = tmp_path / "disk"
    disk.mkdir()
    script = (
        "import sys, torch\n"
        "from pathlib import Path\n"
        "from speechdistill.train.checkpoint import CheckpointError, save_checkpoint\n"
        "folder = Path(sys.argv[1]) / 'checkpoints'\n"
        "save_checkpoint({'step': 1}, folder, 1, keep=5)\n"
        "(Path(sys.argv[1]) / 'filler').write_bytes(bytes(int(sys.argv[2])))\n"
        "try:\n"
        "    save_checkpoint({'step': 2, 'model': torch.arange(60000.0)}, folder, 2, keep=5)\n"
        "except CheckpointError as exc:\n"
        "    print(exc)\n"
        "print(sorted(p.name for p in folder.iterdir()))\n")
    for filler in (0, 30_000, 60_000, 85_000):
        done = run("unshare", "-rm", "bash", "-c", f'mount -t tmpfs -o size=96k tmpfs {disk} && exec "$@"', "bash",
                   sys.executable, "-c", script, disk, filler)
        assert done.returncode == 0, done.stderr[-2000:]
        message, names = done.stdout.strip().splitlines()
        assert message.startswith(f"{disk}/checkpoints/ckpt-2.pt: cannot write the checkpoint: No space left on "
                                  f"device. Fix: free space on the disk of {disk}/checkpoints ("), (filler, message)
        assert message.endswith("the earlier checkpoints are kept and a rerun resumes from the last one"), message
        assert names == "['ckpt-1.pt']", (filler, names)


# ------------------------------------------------------------------------------------------- data dirs
def test_a_byte_order_mark_is_reported_as_such_and_fix_keeps_the_utterance(speakers, tmp_path):
    data = tmp_path / "bom"
    shutil.copytree(speakers, data)
    original = (data / "wav.scp").read_bytes()
    (data / "wav.scp").write_bytes(b"\xef\xbb\xbf" + original)
    done = run(UTILS / "validate_data_dir.sh", "--no-text", data)
    assert done.returncode == 1
    assert (f"{data / 'wav.scp'}:1: starts with a UTF-8 byte-order mark (BOM, bytes EF BB BF)" in done.stderr
            and f"Fix: utils/fix_data_dir.sh {data} removes it" in done.stderr)
    assert "not sorted" not in done.stderr and "keys differ" not in done.stderr
    fixed = run(UTILS / "fix_data_dir.sh", data)
    assert fixed.returncode == 0, fixed.stderr
    assert "removed the UTF-8 byte-order mark" in fixed.stderr and "kept 16 utterances out of 16" in fixed.stderr
    assert (data / "wav.scp").read_bytes() == original
    assert run(UTILS / "validate_data_dir.sh", "--no-text", data).returncode == 0


# ------------------------------------------------------------------------------------------------ models
def test_a_truncated_model_safetensors_is_named(tmp_path):
    teacher = save_tiny_teacher(tmp_path / "teacher")
    weights = teacher / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    line = one_line_error(module("import_teacher", "--src", teacher, "--out", tmp_path / "imported"),
                          "import_teacher")
    assert f"{weights}: cannot read the weights" in line and "truncated" in line and "Fix: copy or export" in line


# -------------------------------------------------------------------------------------------- scoring
def test_score_wer_refuses_an_empty_hypothesis_file_and_disjoint_ids(tmp_path):
    ref, hyp = tmp_path / "ref", tmp_path / "hyp"
    ref.write_text("u1 A B C\nu2 B C\n")
    hyp.write_text("")
    line = one_line_error(module("score_wer", "--ref", ref, "--hyp", hyp), "score_wer")
    assert f"{hyp}: the hypothesis file is empty: no utterance was decoded" in line
    hyp.write_text("x1 A B C\nx2 B C\n")
    line = one_line_error(module("score_wer", "--ref", ref, "--hyp", hyp), "score_wer")
    assert f"{hyp}: none of its 2 utterance id(s) is in the reference {ref}" in line
    hyp.write_text("u1 A B C\n")
    done = module("score_wer", "--ref", ref, "--hyp", hyp)
    assert done.returncode == 0 and done.stdout.startswith("%WER 40.00 [ 2 / 5")  # u2 missing: 2 deletions


def test_compute_eer_names_the_trial_with_a_nan_score(tmp_path):
    trials, scores = tmp_path / "trials", tmp_path / "scores"
    trials.write_text("a b target\na c nontarget\nb c nontarget\n")
    scores.write_text("a b 0.9\na c nan\nb c 0.1\n")
    line = one_line_error(module("compute_eer", "--scores", scores, "--trials", trials), "compute_eer")
    assert f"{scores}:2: trial 'a c' has the score 'nan', which is not a finite number" in line


def test_run_sh_with_a_missing_distill_config_says_so_first(tmp_path):
    recipe = copy_librispeech_recipe(tmp_path)
    done = run("./run.sh", "--stage", "3", "--distill_config", "conf/missing.yaml", cwd=recipe,
               env=single_process_env(SPEECHDISTILL_ROOT=str(REPO)))
    assert done.returncode == 1
    output = done.stdout + done.stderr
    assert "error: --distill_config conf/missing.yaml does not exist. Fix: pick a method preset:" in output
    assert "conf/distilhubert.yaml" in output
    assert "Traceback" not in output and "cat:" not in output
