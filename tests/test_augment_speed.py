"""Speed perturbation of a data dir: Kaldi ids, lengths divided by the factor, real pitch/tempo change, resume."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from speechdistill.augment.speed import perturbed_length, speed_perturb
from speechdistill.data.tables import read_table, write_table

RATE = 16000


@pytest.fixture
def source(tmp_path):
    """Two readable utterances (440 Hz and 300 Hz tones) and one whose file is missing."""
    data = tmp_path / "train"
    data.mkdir()
    wav, num = {}, {}
    for utt, freq, seconds in (("103-1240-0000", 440.0, 1.0), ("19-198-0001", 300.0, 0.7)):
        path = tmp_path / "audio" / f"{utt}.flac"
        path.parent.mkdir(exist_ok=True)
        n = int(seconds * RATE)
        soundfile.write(str(path), 0.5 * np.sin(2 * np.pi * freq * np.arange(n) / RATE), RATE, subtype="PCM_16")
        wav[utt], num[utt] = str(path), str(n)
    wav["19-198-0002"], num["19-198-0002"] = str(tmp_path / "audio" / "gone.flac"), "16000"
    utt2spk = {u: u.rsplit("-", 1)[0] for u in wav}
    write_table(data / "wav.scp", wav)
    write_table(data / "utt2spk", utt2spk)
    write_table(data / "utt2num_samples", num)
    write_table(data / "text", {u: "HELLO WORLD" for u in wav})
    write_table(data / "spk2gender", {"103-1240": "f", "19-198": "m"})
    write_table(data / "spk2utt", {"103-1240": "103-1240-0000", "19-198": "19-198-0001 19-198-0002"})
    return data


def _dominant_hz(path):
    audio, rate = soundfile.read(str(path))
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return np.argmax(spectrum) * rate / len(audio)


def test_speed_perturbed_dir_has_kaldi_ids_lengths_and_audio(source, tmp_path, repo_root):
    out = tmp_path / "train_sp"
    counts = speed_perturb(str(source), str(out), [0.9, 1.0, 1.1], nj=1)
    wav = read_table(out / "wav.scp")
    expected_utts = {f"{p}{u}" for p in ("", "sp0.9-", "sp1.1-") for u in ("103-1240-0000", "19-198-0001")}
    expected_utts.add("19-198-0002")  # factor 1.0 keeps the original entry as it is
    assert set(wav) == expected_utts
    assert counts == {"utterances": 7, "bad_utts": 2}
    bad = read_table(out / "bad_utts")
    assert set(bad) == {"sp0.9-19-198-0002", "sp1.1-19-198-0002"} and "not found" in bad["sp0.9-19-198-0002"]
    utt2spk = read_table(out / "utt2spk")
    assert utt2spk["sp0.9-103-1240-0000"] == "sp0.9-103-1240" and utt2spk["103-1240-0000"] == "103-1240"
    uniq = read_table(out / "utt2uniq")
    assert uniq["sp1.1-19-198-0001"] == "19-198-0001" and uniq["103-1240-0000"] == "103-1240-0000"
    assert read_table(out / "spk2gender")["sp1.1-19-198"] == "m"
    assert read_table(out / "text")["sp0.9-103-1240-0000"] == "HELLO WORLD"
    num = read_table(out / "utt2num_samples")
    dur = read_table(out / "utt2dur")
    for factor, name in ((0.9, "sp0.9-103-1240-0000"), (1.1, "sp1.1-103-1240-0000")):
        assert int(num[name]) == math.ceil(16000 / factor)          # length divided by the factor
        assert soundfile.info(wav[name]).frames == int(num[name])    # and that is what was written
        assert float(dur[name]) == pytest.approx(1.0 / factor, abs=1e-4)
        assert _dominant_hz(wav[name]) == pytest.approx(440.0 * factor, abs=3.0)  # faster = higher
    assert num["103-1240-0000"] == "16000"
    result = subprocess.run([str(repo_root / "egs/TEMPLATE/utils/validate_data_dir.sh"), str(out)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_rerun_keeps_finished_audio_and_redoes_a_damaged_file(source, tmp_path):
    out = tmp_path / "train_sp"
    speed_perturb(str(source), str(out), [0.9, 1.1], nj=1)
    wav = read_table(out / "wav.scp")
    kept, damaged = wav["sp0.9-103-1240-0000"], wav["sp1.1-103-1240-0000"]
    with open(damaged, "r+b") as handle:  # cut the file: its length no longer matches
        handle.truncate(os.path.getsize(damaged) // 2)
    os.utime(kept, (1_000_000_000, 1_000_000_000))
    speed_perturb(str(source), str(out), [0.9, 1.1], nj=1)
    assert os.path.getmtime(kept) == 1_000_000_000  # not rewritten
    assert soundfile.info(damaged).frames == perturbed_length(16000, 1.1)


def test_cli_reports_a_bad_factor_in_one_line(source, tmp_path):
    result = subprocess.run([sys.executable, "-m", "speechdistill.bin.speed_perturb", "--factors", "0.9 1.00001",
                             str(source), str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("speed_perturb: error: speed factor 1.00001") and "Traceback" not in result.stderr


def test_segments_are_cut_before_perturbing_and_factor_one_is_refused(tmp_path):
    data = tmp_path / "meeting"
    data.mkdir()
    recording = tmp_path / "rec.wav"
    soundfile.write(str(recording), 0.1 * np.sin(np.arange(48000) / 5.0), RATE, subtype="PCM_16")
    write_table(data / "wav.scp", {"rec": str(recording)})
    write_table(data / "segments", {"spk1-a": "rec 0.00 1.00", "spk1-b": "rec 1.50 2.75"})
    write_table(data / "utt2spk", {"spk1-a": "spk1", "spk1-b": "spk1"})
    write_table(data / "spk2utt", {"spk1": "spk1-a spk1-b"})
    with pytest.raises(ValueError, match="segments file: factor 1.0"):
        speed_perturb(str(data), str(tmp_path / "out"), [0.9, 1.0], nj=1)
    speed_perturb(str(data), str(tmp_path / "out"), [0.9, 1.1], nj=1)
    num = read_table(tmp_path / "out" / "utt2num_samples")
    assert num == {"sp0.9-spk1-a": str(math.ceil(16000 / 0.9)), "sp0.9-spk1-b": str(math.ceil(20000 / 0.9)),
                   "sp1.1-spk1-a": str(math.ceil(16000 / 1.1)), "sp1.1-spk1-b": str(math.ceil(20000 / 1.1))}
    assert not (tmp_path / "out" / "segments").exists()  # each perturbed utterance is its own file
