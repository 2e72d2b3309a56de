"""Reading audio named by a Kaldi rxfilename, as float32 mono at 16 kHz.

The three ``wav.scp`` value forms (conventions §1.3) are supported:

* ``some command args |`` -- run with ``bash -c``; its stdout must be a WAV (or FLAC) stream;
* ``/path/file.ark:12345`` -- a Kaldi archive opened at byte offset 12345 (kaldiio);
* ``/path/file`` -- a plain file in any format libsndfile reads (WAV, FLAC, OGG, ...).

Integer PCM is scaled to [-1, 1). A sample rate other than the expected one is an error
naming the key and file, unless ``resample=True`` was asked for. Multi-channel audio is an
error unless ``mix_channels=True`` (then channels are averaged). The trainers and decoders
read 16 kHz mono only: their messages tell how to convert a corpus, not these switches.

A plain file can be read in part (``offset``/``num_samples``): only that window is decoded,
after a seek, so a 1-s training crop of a 5-hour FLAC costs one second of decoding. A file
holding fewer samples than its header declares (cut while copying) is an error saying both
numbers, never a silently short read.

A pipe command that has not finished after the pipe timeout (``pipe_timeout`` seconds, else
``$SPEECHDISTILL_PIPE_TIMEOUT``, else 120 s; 0 = no limit) is killed with everything it
started, and the read fails with the key, the command and the reason.
"""
from __future__ import annotations

import io
import os
import re
import signal
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import soundfile

from .tables import DataDirError

SAMPLE_RATE = 16000
_ARK_OFFSET = re.compile(r":[0-9]+$")
DEFAULT_PIPE_TIMEOUT = 120.0
PIPE_TIMEOUT_ENV = "SPEECHDISTILL_PIPE_TIMEOUT"
CONVERT_HINT = ("convert the corpus to 16 kHz mono (e.g. wav.scp entries 'sox FILE -r 16000 -c 1 -t wav - |' or "
                "'ffmpeg -v 8 -i FILE -ar 16000 -ac 1 -f wav - |'); training and decoding read 16 kHz mono audio")


class AudioError(DataDirError):
    """Audio that cannot be read as asked; the message names the key, the source and the fix."""


def rxfilename_kind(value: str) -> str:
    """Classify a wav.scp value: ``"pipe"``, ``"ark"`` or ``"path"`` (conventions §1.3 rules 2-4)."""
    stripped = value.rstrip()
    if stripped.endswith("|"):
        return "pipe"
    if _ARK_OFFSET.search(stripped):
        return "ark"
    return "path"


def _describe(key: Optional[str], value: str) -> str:
    return (f"utterance '{key}' " if key else "") + f"({value})"


def pipe_timeout_seconds(timeout: Optional[float] = None) -> Optional[float]:
    """Seconds a wav.scp command may run: ``timeout`` when given, else ``$SPEECHDISTILL_PIPE_TIMEOUT``,
    else 120; a value <= 0 means no limit (returns None)."""
    if timeout is None:
        raw = os.environ.get(PIPE_TIMEOUT_ENV, "").strip()
        if not raw:
            return DEFAULT_PIPE_TIMEOUT
        try:
            timeout = float(raw)
        except ValueError:
            raise AudioError(f"{PIPE_TIMEOUT_ENV}='{raw}' is not a number of seconds. Fix: set it to e.g. 300, "
                             "or 0 for no limit") from None
    return float(timeout) if timeout > 0 else None


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the command's process group and reap it; a descendant that left the group and still holds
    the pipes is not waited for."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        for stream in (proc.stdout, proc.stderr):
            stream.close()
        proc.wait()


def _run_pipe(command: str, key: Optional[str], timeout: Optional[float]) -> bytes:
    cmd = command.rstrip()[:-1].strip()
    limit = pipe_timeout_seconds(timeout)
    # its own process group: on a timeout everything the command started is killed, not only bash
    # (a 'sleep; cat' child would otherwise keep the pipe open and the read waiting)
    proc = subprocess.Popen(["bash", "-c", cmd], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise AudioError(f"{_describe(key, command)}: the wav.scp command did not finish within {limit:g} s (pipe "
                         f"timeout); killed it and skipped the utterance. Fix: run '{cmd}' by hand to see why it "
                         f"hangs (an unreachable mount, a prompt), or raise the limit (pipe_timeout, or "
                         f"{PIPE_TIMEOUT_ENV}=SECONDS; 0 = no limit)") from None
    except BaseException:
        _kill_group(proc)
        raise
    if proc.returncode != 0:
        err = stderr.decode("utf-8", "replace").strip().splitlines()
        tail = "; ".join(err[-3:]) if err else "no stderr"
        raise AudioError(f"{_describe(key, command)}: pipe command exited with code {proc.returncode} ({tail}). "
                         "Fix: run the command by hand; check that the program is installed and the file exists")
    if not stdout:
        raise AudioError(f"{_describe(key, command)}: pipe command produced no output")
    return stdout


def _decode_streamed_wav(data: bytes) -> Tuple[np.ndarray, int]:
    """Decode a RIFF/WAV byte stream whose size fields may be bogus (written to a pipe)."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE stream")
    pos = 12
    fmt = None
    while pos + 8 <= len(data):
        chunk_id, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        body = pos + 8
        if chunk_id == b"fmt ":
            fmt = struct.unpack("<HHIIHH", data[body:body + 16])
        elif chunk_id == b"data":
            if fmt is None:
                raise ValueError("data chunk before fmt chunk")
            tag, channels, rate, _, _, bits = fmt
            payload = data[body:]
            if size not in (0, 0xFFFFFFFF) and size <= len(payload):
                payload = payload[:size]
            if tag == 3 and bits == 32:
                samples = np.frombuffer(payload[: len(payload) // 4 * 4], dtype="<f4").astype(np.float32)
            elif tag in (1, 0xFFFE) and bits == 16:
                samples = np.frombuffer(payload[: len(payload) // 2 * 2], dtype="<i2").astype(np.float32) / 32768.0
            elif tag in (1, 0xFFFE) and bits == 32:
                samples = np.frombuffer(payload[: len(payload) // 4 * 4], dtype="<i4").astype(np.float32) / 2.0 ** 31
            else:
                raise ValueError(f"unsupported WAV encoding (format tag {tag}, {bits} bits)")
            usable = len(samples) // channels * channels
            return samples[:usable].reshape(-1, channels), rate
        pos = body + size + (size & 1)
    raise ValueError("no data chunk")


def _decode_bytes(data: bytes) -> Tuple[np.ndarray, int]:
    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
        return samples, rate
    except Exception:  # libsndfile rejects streamed WAV headers with unknown length
        return _decode_streamed_wav(data)


def _existing_audio_file(value: str, key: Optional[str]) -> Path:
    path = Path(value.strip())
    if not path.is_file():
        raise AudioError(f"{_describe(key, value)}: audio file not found. "
                         "Fix: check the path in wav.scp (relative paths are relative to the recipe dir)")
    if path.stat().st_size == 0:
        raise AudioError(f"{_describe(key, value)}: audio file is empty (0 bytes). "
                         "Fix: re-create the file or remove the utterance (utils/fix_data_dir.sh)")
    return path


def _declared_wav_frames(path: Path) -> Optional[int]:
    """Samples per channel the RIFF header of a WAV file declares (data chunk size / block size).

    None for other formats and for streamed WAVs whose size field is 0 or 0xFFFFFFFF. libsndfile
    clamps its count to the bytes present, so only this tells that a WAV was cut short.
    """
    with open(path, "rb") as handle:
        head = handle.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        block = 0
        for _ in range(64):  # the data chunk comes after fmt and a few metadata chunks
            chunk = handle.read(8)
            if len(chunk) < 8:
                return None
            chunk_id, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if chunk_id == b"fmt ":
                fmt = handle.read(16)
                if len(fmt) < 16:
                    return None
                block = struct.unpack("<H", fmt[12:14])[0]
                handle.seek(size - 16 + (size & 1), os.SEEK_CUR)
            elif chunk_id == b"data":
                return size // block if block and size not in (0, 0xFFFFFFFF) else None
            else:
                handle.seek(size + (size & 1), os.SEEK_CUR)
    return None


def _truncated(key: Optional[str], value: str, declared: int, holds: int, verb: str = "holds") -> AudioError:
    return AudioError(f"{_describe(key, value)}: truncated: the header says {declared} samples, the file {verb} "
                      f"{holds}. Fix: copy the file again from the corpus, or remove the utterance from wav.scp and "
                      "run utils/fix_data_dir.sh")


def _check_declared_length(path: Path, frames: int, key: Optional[str], value: str) -> None:
    declared = _declared_wav_frames(path)
    if declared is not None and declared > frames:
        raise _truncated(key, value, declared, frames)


@dataclass(frozen=True)
class AudioInfo:
    """What a recording holds: ``num_samples`` per channel at ``sample_rate`` Hz in ``channels``."""
    num_samples: int
    sample_rate: int
    channels: int

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.num_samples / self.sample_rate


def probe_audio(value: str, *, key: Optional[str] = None, read_entire_file: bool = False,
                pipe_timeout: Optional[float] = None) -> AudioInfo:
    """Length, rate and channel count of one wav.scp value.

    A plain file is measured from its header (``soundfile.info``) without decoding, unless
    ``read_entire_file`` is set; pipes and archive entries are always decoded, since a
    streamed WAV header carries no valid length. A header-only read does not notice a file
    truncated after its header was written (e.g. a cut FLAC): ``read_entire_file`` does.
    """
    if rxfilename_kind(value) == "path" and not read_entire_file:
        path = _existing_audio_file(value, key)
        try:
            info = soundfile.info(str(path))
        except Exception as exc:  # libsndfile raises several types for unreadable headers
            raise AudioError(f"{_describe(key, value)}: cannot read the audio header: {exc}. "
                             "Fix: check the file is intact (e.g. 'flac -t FILE' or 'soxi FILE')") from None
        _check_declared_length(path, int(info.frames), key, value)
        # Streamed files (e.g. a FLAC written to a pipe) may leave the length field at 0.
        if info.frames > 0:
            return AudioInfo(int(info.frames), int(info.samplerate), int(info.channels))
    samples, rate = load_rxfilename(value, key=key, pipe_timeout=pipe_timeout)
    return AudioInfo(int(samples.shape[0]), int(rate), int(samples.shape[1]))


def load_rxfilename(value: str, *, key: Optional[str] = None, pipe_timeout: Optional[float] = None
                    ) -> Tuple[np.ndarray, int]:
    """Load audio for one wav.scp value; returns (samples [T, C] float32, sample_rate)."""
    kind = rxfilename_kind(value)
    try:
        if kind == "pipe":
            data = _run_pipe(value, key, pipe_timeout)
            samples, rate = _decode_bytes(data)
        elif kind == "ark":
            import kaldiio  # imported lazily: only archives need it

            obj = kaldiio.load_mat(value.strip())
            if isinstance(obj, tuple):
                rate, array = obj
            else:
                raise AudioError(f"{_describe(key, value)}: the archive holds a matrix, not audio. "
                                 "Fix: wav.scp must point at audio; features belong in feats.scp")
            array = np.asarray(array)
            if array.dtype.kind == "i":
                scale = float(2 ** (8 * array.dtype.itemsize - 1))
                array = array.astype(np.float32) / scale
            samples = array.astype(np.float32).reshape(len(array), -1)
        else:
            path = _existing_audio_file(value, key)
            samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
            _check_declared_length(path, samples.shape[0], key, value)
    except AudioError:
        raise
    except Exception as exc:  # soundfile / kaldiio raise many types for corrupt input
        raise AudioError(f"{_describe(key, value)}: cannot decode audio: {exc}. "
                         "Fix: check the file is intact (e.g. 'flac -t FILE' or 'soxi FILE')") from None
    if samples.shape[0] == 0:
        raise AudioError(f"{_describe(key, value)}: audio has no samples")
    return samples, int(rate)


def segment_bounds(num_samples: int, rate: int, segment: Tuple[float, Optional[float]], *,
                   key: Optional[str] = None, value: str = "") -> Tuple[int, int]:
    """Sample range [first, last) of a (start, end) segment in seconds within a recording.

    ``end`` <= 0 or None means "to the end"; an end past the recording is clipped to it.
    """
    start, end = segment
    first = int(round(start * rate))
    last = num_samples if end is None or end <= 0 else min(int(round(end * rate)), num_samples)
    if first >= num_samples:
        raise AudioError(f"{_describe(key, value)}: segment starts at {start:.2f} s but the recording "
                         f"lasts {num_samples / rate:.2f} s. Fix: correct the segments file")
    return first, last


def resampled_length(num_samples: int, orig_rate: int, new_rate: int) -> int:
    """Number of samples :func:`speechdistill.data.resample.resample` returns: ceil(T * new / orig)."""
    return -(-num_samples * new_rate // orig_rate)


def _channel_error(key: Optional[str], value: str, channels: int) -> AudioError:
    return AudioError(f"{_describe(key, value)}: audio has {channels} channels, expected mono. Fix: {CONVERT_HINT} "
                      "(or select a channel: 'sox FILE -t wav - remix 1 |')")


def _rate_error(key: Optional[str], value: str, rate: int, sample_rate: int) -> AudioError:
    hint = CONVERT_HINT.replace("16000", str(sample_rate)).replace("16 kHz", f"{sample_rate / 1000:g} kHz")
    return AudioError(f"{_describe(key, value)}: sample rate is {rate} Hz, expected {sample_rate} Hz. Fix: {hint}")


def _read_file_window(value: str, key: Optional[str], sample_rate: int, segment: Optional[Tuple[float, float]],
                      offset: int, num_samples: Optional[int], mix_channels: bool, resample: bool
                      ) -> Optional[np.ndarray]:
    """Samples ``[offset, offset + num_samples)`` of a plain file's utterance, decoding only those.

    None when the file is at another rate and resampling was asked for (the caller decodes it whole).
    """
    path = _existing_audio_file(value, key)
    try:
        handle = soundfile.SoundFile(str(path))
    except Exception as exc:  # libsndfile: unreadable header
        raise AudioError(f"{_describe(key, value)}: cannot decode audio: {exc}. "
                         "Fix: check the file is intact (e.g. 'flac -t FILE' or 'soxi FILE')") from None
    with handle:
        rate, channels, frames = int(handle.samplerate), int(handle.channels), int(handle.frames)
        if rate != sample_rate:
            if resample:
                return None
            raise _rate_error(key, value, rate, sample_rate)
        if channels > 1 and not mix_channels:
            raise _channel_error(key, value, channels)
        _check_declared_length(path, frames, key, value)
        first, last = (0, frames) if segment is None else segment_bounds(frames, rate, segment, key=key, value=value)
        start = min(first + offset, last)
        stop = last if num_samples is None else min(last, start + num_samples)
        try:
            if start:
                handle.seek(start)
            samples = handle.read(stop - start, dtype="float32", always_2d=True)
        except Exception as exc:  # libsndfile: a seek or decode into missing or damaged data
            raise AudioError(f"{_describe(key, value)}: truncated or damaged: the header says {frames} samples; "
                             f"decoding from sample {start} failed ({' '.join(str(exc).split())}). Fix: copy the "
                             "file again from the corpus, or remove the utterance from wav.scp and run "
                             "utils/fix_data_dir.sh") from None
    if samples.shape[0] < stop - start:
        raise _truncated(key, value, frames, start + samples.shape[0], verb="decodes only")
    if frames == 0:
        raise AudioError(f"{_describe(key, value)}: audio has no samples")
    mono = samples.mean(axis=1) if channels > 1 else samples[:, 0]
    return np.ascontiguousarray(mono, dtype=np.float32)


def read_audio(value: str, *, key: Optional[str] = None, sample_rate: int = SAMPLE_RATE,
               resample: bool = False, mix_channels: bool = False,
               segment: Optional[Tuple[float, float]] = None, pipe_timeout: Optional[float] = None,
               offset: int = 0, num_samples: Optional[int] = None) -> np.ndarray:
    """Read one wav.scp value as float32 mono ``[T]`` samples at ``sample_rate`` Hz.

    ``segment`` is (start, end) in seconds (a ``segments`` line); ``end`` <= 0 means "to the end".
    ``offset`` and ``num_samples`` (samples at ``sample_rate``, counted from the start of the
    utterance) return only that window, shorter where the utterance ends first; None = to the end.
    A plain file at ``sample_rate`` is decoded only over the window (a seek); pipes, archive
    entries and resampled files are decoded whole and then cut.
    """
    if offset < 0 or (num_samples is not None and num_samples < 0):
        raise ValueError(f"read_audio: offset and num_samples must be >= 0, got {offset} and {num_samples}")
    if rxfilename_kind(value) == "path":
        window = _read_file_window(value, key, sample_rate, segment, offset, num_samples, mix_channels, resample)
        if window is not None:
            return window
    samples, rate = load_rxfilename(value, key=key, pipe_timeout=pipe_timeout)
    if samples.shape[1] > 1:
        if not mix_channels:
            raise _channel_error(key, value, samples.shape[1])
        mono = samples.mean(axis=1)
    else:
        mono = samples[:, 0]
    if segment is not None:
        first, last = segment_bounds(len(mono), rate, segment, key=key, value=value)
        mono = mono[first:last]
    if rate != sample_rate:
        if not resample:
            raise _rate_error(key, value, rate, sample_rate)
        from .resample import resample as _resample

        mono = _resample(mono, rate, sample_rate)
    if offset or num_samples is not None:
        mono = mono[offset:] if num_samples is None else mono[offset:offset + num_samples]
    return np.ascontiguousarray(mono, dtype=np.float32)
