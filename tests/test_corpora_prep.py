"""Real-layout corpus prep on tiny hand-made trees with planted corrupt files."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from speechdistill.corpora import CorpusError, prepare_librispeech, prepare_musan, prepare_rirs, prepare_voxceleb
from speechdistill.data.tables import read_table

RATE = 16000


def tone(path: Path, samples: int, rate: int = RATE, channels: int = 1, freq: float = 200.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    signal = 0.3 * np.sin(2 * np.pi * freq * np.arange(samples) / rate)
    data = np.stack([signal] * channels, axis=1) if channels > 1 else signal
    soundfile.write(str(path), data, rate, subtype="PCM_16", format="FLAC" if path.suffix == ".flac" else "WAV")
    return path


def truncate(path: Path) -> Path:
    with open(path, "r+b") as handle:
        handle.truncate(int(os.path.getsize(path) * 0.6))
    return path


def validate(repo_root: Path, data_dir: Path, *options: str) -> None:
    result = subprocess.run([str(repo_root / "egs/TEMPLATE/utils/validate_data_dir.sh"), *options, str(data_dir)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# ----------------------------------------------------------------------------------- LibriSpeech
@pytest.fixture
def librispeech(tmp_path):
    root = tmp_path / "LibriSpeech"
    part = root / "train-clean-100"
    chapter = part / "19" / "198"
    tone(chapter / "19-198-0000.flac", 16000)
    tone(chapter / "19-198-0001.flac", 24000)
    truncate(tone(chapter / "19-198-0002.flac", 40000))               # planted: cut short
    tone(chapter / "19-198-0004.flac", 8000)                           # planted: no transcript line
    (chapter / "19-198.trans.txt").write_text(
        "19-198-0000 NORTHANGER ABBEY\n19-198-0001 THIS LITTLE WORK WAS FINISHED\n"
        "19-198-0002 IT WAS SOLD TO A BOOKSELLER\n19-198-0003 SOME OBSERVATION IS NECESSARY\n")  # 0003: no audio
    chapter = part / "103" / "1240"
    tone(chapter / "103-1240-0000.flac", 12000)
    (chapter / "103-1240-0001.flac").write_bytes(b"")                  # planted: empty file
    (chapter / "103-1240-0002.flac").write_bytes(b"not audio at all" * 50)  # planted: garbage
    (chapter / "103-1240.trans.txt").write_text(
        "103-1240-0000 CHAPTER ONE MISSUS RACHEL LYNDE IS SURPRISED\n103-1240-0001 MISSUS RACHEL LYNDE LIVED\n"
        "103-1240-0002 JUST WHERE THE AVONLEA MAIN ROAD DIPPED\n")
    chapter = part / "1034" / "121119"
    tone(chapter / "1034-121119-0000.flac", 20000)
    tone(chapter / "1034-121119-0001.flac", 8000, rate=8000)           # planted: wrong sample rate
    (chapter / "1034-121119.trans.txt").write_text("1034-121119-0000 ANOTHER LINE\n1034-121119-0001 AND MORE\n")
    dev = root / "dev-clean" / "1272" / "128104"
    tone(dev / "1272-128104-0000.flac", 16000)
    (dev / "1272-128104.trans.txt").write_text("1272-128104-0000 MISTER QUILTER IS THE APOSTLE\n")
    (part / ".complete").write_text("")
    (root / "SPEAKERS.TXT").write_text(
        "; comment line\n;ID  |SEX| SUBSET           |MINUTES| NAME\n19   | F | train-clean-100  | 25.19 | Kara S\n"
        "103  | F | train-clean-100  | 25.20 | Karen S\n1034 | M | train-clean-100  | 25.01 | Kevin O\n"
        "1272 | M | dev-clean        |  8.08 | John R | with a pipe\n")
    return root


def test_librispeech_prep_gives_espnet_ids_and_lists_the_planted_corrupt_files(librispeech, tmp_path, repo_root):
    out = tmp_path / "data" / "train"
    result = prepare_librispeech(str(librispeech), ["train-clean-100"], str(out), nj=1)
    assert list(read_table(out / "wav.scp")) == ["103-1240-0000", "1034-121119-0000", "19-198-0000", "19-198-0001"]
    assert read_table(out / "utt2spk") == {"103-1240-0000": "103-1240", "1034-121119-0000": "1034-121119",
                                           "19-198-0000": "19-198", "19-198-0001": "19-198"}
    assert read_table(out / "text")["19-198-0001"] == "THIS LITTLE WORK WAS FINISHED"
    assert read_table(out / "utt2num_samples") == {"103-1240-0000": "12000", "1034-121119-0000": "20000",
                                                   "19-198-0000": "16000", "19-198-0001": "24000"}
    assert read_table(out / "spk2gender") == {"103-1240": "f", "1034-121119": "m", "19-198": "f"}
    assert read_table(out / "spk2utt")["19-198"] == "19-198-0000 19-198-0001"
    bad = read_table(out / "bad_utts")
    assert set(bad) == {"19-198-0002", "19-198-0003", "19-198-0004", "103-1240-0001", "103-1240-0002",
                        "1034-121119-0001"}
    assert "truncated" in bad["19-198-0002"] and "not found" in bad["19-198-0003"]
    assert "no transcript" in bad["19-198-0004"] and "empty" in bad["103-1240-0001"]
    assert "cannot read" in bad["103-1240-0002"] and "8000 Hz" in bad["1034-121119-0001"]
    assert (result.num_utts, result.num_bad) == (4, 6)
    validate(repo_root, out)


def test_librispeech_parts_merge_and_a_rerun_does_nothing_until_settings_change(librispeech, tmp_path):
    out = tmp_path / "data" / "train"
    prepare_librispeech(str(librispeech), ["train-clean-100", "dev-clean"], str(out), nj=1)
    assert "1272-128104-0000" in read_table(out / "wav.scp")
    assert read_table(out / "spk2gender")["1272-128104"] == "m"
    os.utime(out / "wav.scp", (1_000_000_000, 1_000_000_000))
    again = prepare_librispeech(str(librispeech), ["train-clean-100", "dev-clean"], str(out), nj=1)
    assert again.skipped and again.num_utts == 5 and os.path.getmtime(out / "wav.scp") == 1_000_000_000
    changed = prepare_librispeech(str(librispeech), ["dev-clean"], str(out), nj=1)
    assert not changed.skipped and list(read_table(out / "wav.scp")) == ["1272-128104-0000"]


def test_librispeech_missing_part_is_one_line_naming_it(librispeech, tmp_path):
    with pytest.raises(CorpusError, match="part 'train-other-500' not found .*present: dev-clean, train-clean-100"):
        prepare_librispeech(str(librispeech), ["train-other-500"], str(tmp_path / "x"))
    result = subprocess.run([sys.executable, "-m", "speechdistill.bin.prep_librispeech", "--corpus-dir",
                             str(librispeech), "--parts", "train-other-500", "--out", str(tmp_path / "x")],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("prep_librispeech: error: LibriSpeech part "
                                                             "'train-other-500' not found")


# ------------------------------------------------------------------------------------- VoxCeleb
@pytest.fixture
def voxceleb1(tmp_path):
    root = tmp_path / "vox1"
    tone(root / "dev/wav/id10001/1zcIwhmdeo4/00001.wav", 16000)
    tone(root / "dev/wav/id10001/1zcIwhmdeo4/00002.wav", 20000)
    tone(root / "dev/wav/id10001/7w0IBEWc9Qw/00001.wav", 18000)
    (root / "dev/wav/id10002/0_laIeN-Q44").mkdir(parents=True)
    (root / "dev/wav/id10002/0_laIeN-Q44/00001.wav").write_bytes(b"RIFF" + b"\0" * 40)  # planted: broken
    tone(root / "dev/wav/id10002/0_laIeN-Q44/00002.wav", 17000)
    tone(root / "test/wav/id10270/x6uYqmx31kE/00001.wav", 30000)
    tone(root / "test/wav/id10270/8jEAjG6SegY/00008.wav", 22000)
    tone(root / "test/wav/id10271/1gtz-CUIygI/00001.wav", 25000)
    (root / "veri_test2.txt").write_text(
        "1 id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00008.wav\n"
        "0 id10270/x6uYqmx31kE/00001.wav id10271/1gtz-CUIygI/00001.wav\n"
        "0 id10271/1gtz-CUIygI/00001.wav id10002/0_laIeN-Q44/00001.wav\n")
    return root


def test_voxceleb_ids_are_wespeaker_paths_and_broken_files_are_listed(voxceleb1, tmp_path, repo_root):
    out = tmp_path / "data" / "train"
    result = prepare_voxceleb(str(voxceleb1), ["dev"], str(out), nj=1)
    assert read_table(out / "utt2spk") == {"id10001/1zcIwhmdeo4/00001.wav": "id10001",
                                           "id10001/1zcIwhmdeo4/00002.wav": "id10001",
                                           "id10001/7w0IBEWc9Qw/00001.wav": "id10001",
                                           "id10002/0_laIeN-Q44/00002.wav": "id10002"}
    assert read_table(out / "wav.scp")["id10001/7w0IBEWc9Qw/00001.wav"] == \
        str(voxceleb1 / "dev/wav/id10001/7w0IBEWc9Qw/00001.wav")
    assert read_table(out / "utt2num_samples")["id10002/0_laIeN-Q44/00002.wav"] == "17000"
    assert list(read_table(out / "bad_utts")) == ["id10002/0_laIeN-Q44/00001.wav"]
    assert result.num_bad == 1
    validate(repo_root, out, "--no-text")


def test_voxceleb_trials_are_converted_and_trials_naming_bad_audio_are_dropped(voxceleb1, tmp_path, repo_root):
    out = tmp_path / "data" / "vox1_O"
    result = prepare_voxceleb(str(voxceleb1), ["dev", "test"], str(out), nj=1,
                              trials_file=str(voxceleb1 / "veri_test2.txt"), trial_utts_only=True)
    assert (out / "trials").read_text() == (
        "id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00008.wav target\n"
        "id10270/x6uYqmx31kE/00001.wav id10271/1gtz-CUIygI/00001.wav nontarget\n")
    dropped = (out / "bad_trials").read_text()
    assert dropped.startswith("id10271/1gtz-CUIygI/00001.wav id10002/0_laIeN-Q44/00001.wav nontarget #")
    assert "unreadable" in dropped
    # only the utterances the trials name are kept
    assert set(read_table(out / "wav.scp")) == {"id10270/x6uYqmx31kE/00001.wav", "id10270/8jEAjG6SegY/00008.wav",
                                                "id10271/1gtz-CUIygI/00001.wav"}
    assert result.extra == {"trials": 2, "target_trials": 1, "dropped_trials": 1}
    validate(repo_root, out, "--no-text")


def test_voxceleb_malformed_trial_line_names_file_and_line(voxceleb1, tmp_path):
    bad_list = tmp_path / "list.txt"
    bad_list.write_text("1 id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00008.wav\nyes a b\n")
    with pytest.raises(CorpusError, match=r"list.txt:2: expected '1\|0 enroll test'"):
        prepare_voxceleb(str(voxceleb1), ["test"], str(tmp_path / "out"), trials_file=str(bad_list))


def test_voxceleb2_m4a_can_still_be_read_through_an_ffmpeg_pipe(tmp_path, monkeypatch):
    root = tmp_path / "vox2"
    # stand-in for ffmpeg: the ".m4a" files hold WAV bytes, which it copies out
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ffmpeg").write_text('#!/usr/bin/env bash\nwhile [ $# -gt 0 ]; do [ "$1" = -i ] && src=$2; shift; done\n'
                                    'case "$src" in *broken*) echo "invalid data" >&2; exit 1;; esac\ncat "$src"\n')
    (bin_dir / "ffmpeg").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    good = tone(root / "dev/aac/id00012/21Uxsk56VDQ/00001.wav", 21000)
    good.rename(good.with_suffix(".m4a"))
    tone(root / "dev/aac/id00012/broken_vid1/00001.wav", 1000).rename(root / "dev/aac/id00012/broken_vid1/00001.m4a")
    out = tmp_path / "data" / "train"
    prepare_voxceleb(str(root), ["dev"], str(out), nj=1, m4a="pipe")
    wav = read_table(out / "wav.scp")
    assert wav == {"id00012/21Uxsk56VDQ/00001.wav":
                   f"ffmpeg -v 8 -i {root}/dev/aac/id00012/21Uxsk56VDQ/00001.m4a -f wav -acodec pcm_s16le - |"}
    assert read_table(out / "utt2num_samples") == {"id00012/21Uxsk56VDQ/00001.wav": "21000"}
    assert "invalid data" in read_table(out / "bad_utts")["id00012/broken_vid1/00001.wav"]
    assert not (tmp_path / "dump").exists()


def test_voxceleb_merged_layout_refuses_a_single_subset(tmp_path):
    tone(tmp_path / "vox1/wav/id10001/abc/00001.wav", 8000)
    with pytest.raises(CorpusError, match="dev and test speakers together"):
        prepare_voxceleb(str(tmp_path / "vox1"), ["test"], str(tmp_path / "out"))
    result = prepare_voxceleb(str(tmp_path / "vox1"), ["dev", "test"], str(tmp_path / "out"))
    assert result.num_utts == 1


# ------------------------------------------------------------------------------ MUSAN, RIRS_NOISES
def test_musan_dirs_with_durations_vocals_flag_and_bad_files(tmp_path, repo_root):
    root = tmp_path / "musan"
    tone(root / "noise/free-sound/noise-free-sound-0000.wav", 32000)
    (root / "noise/free-sound/noise-free-sound-0001.wav").write_bytes(b"\0" * 10)  # planted: corrupt
    tone(root / "music/fma/music-fma-0000.wav", 48000)
    tone(root / "music/fma/music-fma-0001.wav", 40000)
    tone(root / "music/fma/music-fma-0002.wav", 40000)
    (root / "music/fma/ANNOTATIONS").write_text("music-fma-0000 Rock N Artist Composer\n"
                                                "music-fma-0001 Pop Y Artist Composer\n")
    tone(root / "speech/librivox/speech-librivox-0000.wav", 24000)
    results = prepare_musan(str(root), str(tmp_path / "data"), nj=1)
    noise = tmp_path / "data" / "musan_noise"
    assert read_table(noise / "reco2dur") == {"noise-free-sound-0000": "2"}
    assert read_table(noise / "utt2spk") == {"noise-free-sound-0000": "noise-free-sound-0000"}
    assert list(read_table(noise / "bad_utts")) == ["noise-free-sound-0001"] and results["noise"].num_bad == 1
    music = tmp_path / "data" / "musan_music"
    assert read_table(music / "utt2vocals") == {"music-fma-0000": "N", "music-fma-0001": "Y",
                                                "music-fma-0002": "unknown"}
    assert read_table(music / "reco2dur")["music-fma-0000"] == "3"
    assert read_table(tmp_path / "data/musan_speech/utt2num_samples") == {"speech-librivox-0000": "24000"}
    for name in ("noise", "music", "speech"):
        validate(repo_root, tmp_path / "data" / f"musan_{name}", "--no-text")
    without = prepare_musan(str(root), str(tmp_path / "data2"), categories=["music"], use_vocals=False, nj=1)
    assert set(read_table(tmp_path / "data2/musan_music/wav.scp")) == {"music-fma-0000", "music-fma-0002"}
    assert without["music"].extra == {"dropped_with_vocals": 1}


def test_rirs_keep_room_type_room_id_and_listed_rt60(tmp_path, repo_root):
    top = tmp_path / "corpora"
    sim = top / "RIRS_NOISES/simulated_rirs"
    for size in ("smallroom", "mediumroom"):
        lines = []
        for i in (1, 2):
            tone(sim / f"{size}/Room001/Room001-0000{i}.wav", 4000 + i)
            lines.append(f"--rir-id {size[:-4]}-Room001-0000{i} --room-id {size[:-4]}-Room001 "
                         f"RIRS_NOISES/simulated_rirs/{size}/Room001/Room001-0000{i}.wav")
        (sim / size / "rir_list").write_text("\n".join(lines) + "\n")
    real = top / "RIRS_NOISES/real_rirs_isotropic_noises"
    tone(real / "air_type1_air_binaural_lecture_0_1.wav", 9000, channels=2)
    (real / "rir_list").write_text(
        "--rir-id air_lecture_0_1 --room-id air_lecture --receiver-position-id 1 --source-position-id 2 "
        "--rt-60 0.790 --drr 3.5 RIRS_NOISES/real_rirs_isotropic_noises/air_type1_air_binaural_lecture_0_1.wav\n"
        "--rir-id gone_1 --room-id gone RIRS_NOISES/real_rirs_isotropic_noises/gone.wav\n")
    out = tmp_path / "data" / "rirs"
    result = prepare_rirs(str(top / "RIRS_NOISES"), str(out), nj=1)  # all room types whose rir_list exists
    assert read_table(out / "utt2room") == {"air_lecture_0_1": "real", "medium-Room001-00001": "mediumroom",
                                            "medium-Room001-00002": "mediumroom", "small-Room001-00001": "smallroom",
                                            "small-Room001-00002": "smallroom"}
    assert read_table(out / "utt2room_id")["small-Room001-00002"] == "small-Room001"
    assert read_table(out / "utt2rt60") == {"air_lecture_0_1": "0.790"}
    assert read_table(out / "utt2num_samples")["small-Room001-00002"] == "4002"
    assert read_table(out / "wav.scp")["small-Room001-00001"] == str(sim / "smallroom/Room001/Room001-00001.wav")
    assert list(read_table(out / "bad_utts")) == ["gone_1"]
    assert result.extra == {"smallroom": 2, "mediumroom": 2, "real": 1}
    validate(repo_root, out, "--no-text")
    with pytest.raises(CorpusError, match="largeroom/rir_list not found"):
        prepare_rirs(str(top), str(tmp_path / "x"), rooms=["largeroom"])


# ------------------------------------------------------------------------------------- VoxCeleb2 m4a
def _m4a(path: Path, samples: int, freq: float) -> Path:
    """A real m4a (AAC) file written by ffmpeg from a tone."""
    wav = tone(path.with_suffix(".src.wav"), samples, freq=freq)
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(wav), "-c:a", "aac", "-b:a", "48k",
                    str(path)], check=True)
    wav.unlink()
    return path


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is installed by tools/install_system.sh")
def test_voxceleb2_m4a_is_converted_to_flac_once_and_a_rerun_converts_only_what_is_missing(tmp_path, repo_root):
    root = tmp_path / "vox2"
    for speaker, video, n, samples in (("id00012", "21Uxsk56VDQ", 1, 20000), ("id00012", "21Uxsk56VDQ", 2, 28000),
                                       ("id00015", "0fijmz4vTVU", 1, 24000)):
        _m4a(root / f"dev/aac/{speaker}/{video}/{n:05d}.m4a", samples, 150.0 + 40 * n)
    broken = root / "dev/aac/id00015/0fijmz4vTVU/00002.m4a"
    broken.write_bytes(b"\0\0\0\x20ftypM4A " + bytes(range(256)) * 8)  # a cut download
    out = tmp_path / "data" / "train"
    command = [sys.executable, "-m", "speechdistill.bin.prep_voxceleb", "--corpus-dir", str(root), "--subsets", "dev",
               "--out", str(out), "--nj", "2"]
    first = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "3 converted, 0 kept from an earlier run, 1 failed" in first.stderr
    wav = read_table(out / "wav.scp")
    flac_dir = tmp_path / "dump" / "flac" / "train"
    assert wav == {f"{k}.wav": str(flac_dir / f"{k}.flac") for k in
                   ("id00012/21Uxsk56VDQ/00001", "id00012/21Uxsk56VDQ/00002", "id00015/0fijmz4vTVU/00001")}
    counts = read_table(out / "utt2num_samples")
    for key, path in wav.items():
        info = soundfile.info(path)
        assert (info.format, info.samplerate, info.channels) == ("FLAC", 16000, 1)
        assert int(counts[key]) == info.frames  # from the FLAC header
    assert abs(int(counts["id00012/21Uxsk56VDQ/00002.wav"]) - 28000) < 3000  # AAC pads to whole frames
    reason = read_table(out / "bad_utts")["id00015/0fijmz4vTVU/00002.wav"]
    assert reason.startswith(f"ffmpeg could not convert {broken} (exit code 1:") and "Invalid data" in reason
    validate(repo_root, out, "--no-text")
    # an interrupted run: one FLAC missing and no marker; only that file is converted again
    (out / ".prep_done").unlink()
    Path(wav["id00012/21Uxsk56VDQ/00002.wav"]).unlink()
    again = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "1 converted, 2 kept from an earlier run, 1 failed" in again.stderr
    assert read_table(out / "utt2num_samples") == counts
