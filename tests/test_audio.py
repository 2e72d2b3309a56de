"""speechdistill.data.audio on real files: every wav.scp form, headers, and every kind of bad audio."""
import os

import numpy as np
import pytest
import soundfile

from speechdistill.data.audio import (AudioError, probe_audio, read_audio, resampled_length, rxfilename_kind,
                                      segment_bounds)


def tone(num_samples, rate=16000, freq=440.0, channels=1):
    t = np.arange(num_samples) / rate
    x = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return x if channels == 1 else np.stack([x, -x], axis=1)


@pytest.fixture
def wav16k(tmp_path):
    path = tmp_path / "a.wav"
    soundfile.write(path, tone(8000), 16000, subtype="PCM_16")
    return path


def test_rxfilename_kinds():
    assert rxfilename_kind("flac -c -d -s x.flac |") == "pipe"
    assert rxfilename_kind("ffmpeg -i x.m4a -f wav -|  ") == "pipe"
    assert rxfilename_kind("/data/wav.ark:12345") == "ark"
    assert rxfilename_kind("/data/a.wav") == "path"
    assert rxfilename_kind("/data/dir:with:colons/a.wav") == "path"


def test_plain_file_is_read_as_float_mono_16k(wav16k):
    samples = read_audio(str(wav16k), key="u1")
    assert samples.dtype == np.float32 and samples.shape == (8000,)
    reference = np.round(tone(8000) * 32767) / 32768  # PCM_16 quantisation, as libsndfile stores it
    np.testing.assert_allclose(samples, reference, atol=1.5 / 32768)


def test_pipe_value_runs_bash_and_decodes_its_wav_stream(wav16k):
    samples = read_audio(f"cat {wav16k} |", key="u1")
    assert np.array_equal(samples, read_audio(str(wav16k)))


def test_archive_offset_value(tmp_path, wav16k):
    import kaldiio

    ark = tmp_path / "wav.ark"
    pcm = (tone(4000) * 32767).astype(np.int16)
    with kaldiio.WriteHelper(f"ark,scp:{ark},{tmp_path / 'wav_ark.scp'}") as writer:
        writer("u1", (16000, pcm))
    value = (tmp_path / "wav_ark.scp").read_text().split()[1]
    assert rxfilename_kind(value) == "ark" and int(value.rsplit(":", 1)[1]) > 0
    samples = read_audio(value, key="u1")
    np.testing.assert_allclose(samples, pcm.astype(np.float32) / 32768, atol=1e-7)
    assert probe_audio(value).num_samples == 4000


def test_missing_file_names_key_and_path(tmp_path):
    with pytest.raises(AudioError, match=r"utterance 'u9' .*nothere.wav.*not found"):
        read_audio(str(tmp_path / "nothere.wav"), key="u9")


def test_failing_pipe_reports_exit_code_and_stderr():
    with pytest.raises(AudioError, match=r"'u2'.*exited with code 3.*broken decoder"):
        read_audio("echo broken decoder >&2; exit 3 |", key="u2")


def test_8khz_is_an_error_unless_resampling_is_asked(tmp_path):
    path = tmp_path / "n.wav"
    soundfile.write(path, tone(4000, rate=8000), 8000, subtype="PCM_16")
    with pytest.raises(AudioError, match=r"'u3'.*n.wav.*8000 Hz, expected 16000 Hz"):
        read_audio(str(path), key="u3")
    resampled = read_audio(str(path), key="u3", resample=True)
    assert len(resampled) == 8000 == resampled_length(4000, 8000, 16000)


def test_resampled_length_matches_the_resampler():
    from speechdistill.data.resample import resample

    for length, orig in ((4001, 8000), (44100 + 7, 44100), (22050, 22050), (1234, 48000)):
        assert len(resample(np.zeros(length, np.float32), orig, 16000)) == resampled_length(length, orig, 16000)


def test_stereo_is_an_error_unless_mixing_is_asked(tmp_path):
    path = tmp_path / "s.wav"
    soundfile.write(path, tone(1600, channels=2), 16000, subtype="PCM_16")
    with pytest.raises(AudioError, match=r"'u4'.*2 channels, expected mono"):
        read_audio(str(path), key="u4")
    assert np.abs(read_audio(str(path), mix_channels=True)).max() < 1e-4  # x and -x cancel
    assert probe_audio(str(path)).channels == 2


def test_empty_file(tmp_path):
    path = tmp_path / "e.wav"
    path.write_bytes(b"")
    for reader in (read_audio, probe_audio):
        with pytest.raises(AudioError, match=r"'u5'.*empty \(0 bytes\)"):
            reader(str(path), key="u5")


def test_truncated_flac_passes_a_header_read_but_not_a_decode(tmp_path):
    path = tmp_path / "t.flac"
    soundfile.write(path, tone(32000), 16000, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert probe_audio(str(path)).num_samples == 32000  # the header still claims the full length
    with pytest.raises(AudioError, match=r"'u6'.*cannot decode"):
        probe_audio(str(path), key="u6", read_entire_file=True)
    with pytest.raises(AudioError, match=r"'u6'.*truncated or damaged: the header says 32000 samples"):
        read_audio(str(path), key="u6")


def test_probe_reads_headers_without_decoding(tmp_path):
    path = tmp_path / "h.flac"
    soundfile.write(path, tone(12345), 16000, subtype="PCM_16")
    info = probe_audio(str(path))
    assert (info.num_samples, info.sample_rate, info.channels) == (12345, 16000, 1)
    assert info.duration == pytest.approx(12345 / 16000)
    # A pipe has no trustworthy header length: it is decoded.
    assert probe_audio(f"cat {path} |").num_samples == 12345


def test_streamed_wav_with_unknown_length_from_a_pipe(tmp_path, wav16k):
    # A WAV written to a pipe carries 0xFFFFFFFF size fields; the reader must still decode it.
    data = bytearray(wav16k.read_bytes())
    data[4:8] = b"\xff\xff\xff\xff"
    data[40:44] = b"\xff\xff\xff\xff"
    streamed = tmp_path / "streamed.bin"
    streamed.write_bytes(bytes(data))
    samples = read_audio(f"cat {streamed} |", key="u7")
    assert np.array_equal(samples, read_audio(str(wav16k)))


def test_segments_cut_with_rounding_and_clip(wav16k):
    full = read_audio(str(wav16k))
    part = read_audio(str(wav16k), segment=(0.1, 0.30003))
    assert np.array_equal(part, full[1600:4800])
    assert segment_bounds(8000, 16000, (0.25, 9.0)) == (4000, 8000)  # end past the recording: clipped
    assert segment_bounds(8000, 16000, (0.25, -1)) == (4000, 8000)   # end <= 0: to the end
    with pytest.raises(AudioError, match="segment starts at 0.60 s but the recording lasts 0.50 s"):
        read_audio(str(wav16k), key="u8", segment=(0.6, 0.7))


def test_pipe_reads_relative_paths_from_the_working_directory(tmp_path, wav16k, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert len(read_audio(f"cat {os.path.basename(wav16k)} |")) == 8000


def test_truncated_wav_names_the_declared_and_the_present_samples(tmp_path):
    path = tmp_path / "cut.wav"
    soundfile.write(path, tone(131072), 16000, subtype="PCM_16")
    path.write_bytes(path.read_bytes()[:44 + 2 * 22594])
    message = r"'u1'.*truncated: the header says 131072 samples, the file holds 22594"
    for reader in (read_audio, probe_audio):
        with pytest.raises(AudioError, match=message):
            reader(str(path), key="u1")
    with pytest.raises(AudioError, match=message):
        read_audio(str(path), key="u1", offset=100, num_samples=1600)  # a crop inside the part still there


def test_a_window_of_a_file_is_the_same_samples_as_a_slice_of_the_whole(tmp_path):
    for suffix, subtype in ((".wav", "PCM_16"), (".flac", "PCM_16"), (".wav", "FLOAT")):
        path = tmp_path / f"w{suffix}"
        soundfile.write(path, tone(40000, freq=123.0), 16000, subtype=subtype)
        whole = read_audio(str(path))
        assert np.array_equal(read_audio(str(path), offset=12345, num_samples=16000), whole[12345:28345])
        assert np.array_equal(read_audio(str(path), offset=39000, num_samples=16000), whole[39000:])  # clipped
        assert np.array_equal(read_audio(str(path), segment=(0.5, 2.0), offset=100, num_samples=50),
                              whole[8100:8150])
        assert np.array_equal(read_audio(f"cat {path} |", offset=12345, num_samples=16000), whole[12345:28345])


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie is dead, waiting for its reaper


def test_a_hung_pipe_is_killed_with_everything_it_started_after_the_timeout(tmp_path, wav16k, monkeypatch):
    import time

    pid_file = tmp_path / "sleeper.pid"
    start = time.monotonic()
    with pytest.raises(AudioError, match=r"utterance 'u1' \(sleep 30 & echo .*; wait; cat .*a.wav \|\): the wav.scp "
                                         r"command did not finish within 0.5 s \(pipe timeout\); killed it"):
        read_audio(f"sleep 30 & echo $! > {pid_file}; wait; cat {wav16k} |", key="u1", pipe_timeout=0.5)
    assert time.monotonic() - start < 10
    sleeper = int(pid_file.read_text())
    for _ in range(50):
        if not _alive(sleeper):
            break
        time.sleep(0.1)
    assert not _alive(sleeper)  # the command's children were killed too, not left holding the pipe
    monkeypatch.setenv("SPEECHDISTILL_PIPE_TIMEOUT", "0.5")
    with pytest.raises(AudioError, match="within 0.5 s"):
        read_audio(f"sleep 30 | cat {wav16k} |", key="u2")
    monkeypatch.setenv("SPEECHDISTILL_PIPE_TIMEOUT", "soon")
    with pytest.raises(AudioError, match="SPEECHDISTILL_PIPE_TIMEOUT='soon' is not a number"):
        read_audio(f"cat {wav16k} |")
