"""Reading audio named by a Kaldi rxfilename, as float32 mono at 16 kHz.

The three ``wav.scp`` value forms (conventions §1.3) are supported:

* ``some command args |`` -- run with ``bash -c``; its stdout must be a WAV (or FLAC) stream;
* ``/path/file.ark:12345`` -- a Kaldi archive opened at byte offset 12345 (kaldiio);
* ``/path/file`` -- a plain file in any format libsndfile reads (WAV, FLAC, OGG, ...).

Integer PCM is scaled to [-1, 1). A sample rate other than the expected one is an error
naming the key and file, unless ``resample=True`` was asked for. Multi-channel audio is an
error unless ``mix_channels=True`` (then channels are averaged).
"""
from __future__ import annotations

import io
import re
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


def _run_pipe(command: str, key: Optional[str], timeout: Optional[float]) -> bytes:
    cmd = command.rstrip()[:-1].strip()
    try:
        proc = subprocess.run(["bash", "-c", cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise AudioError(f"{_describe(key, command)}: pipe command timed out after {timeout} s") from None
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        tail = "; ".join(err[-3:]) if err else "no stderr"
        raise AudioError(f"{_describe(key, command)}: pipe command exited with code {proc.returncode} ({tail}). "
                         "Fix: run the command by hand; check that the program is installed and the file exists")
    if not proc.stdout:
        raise AudioError(f"{_describe(key, command)}: pipe command produced no output")
    return proc.stdout


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


def read_audio(value: str, *, key: Optional[str] = None, sample_rate: int = SAMPLE_RATE,
               resample: bool = False, mix_channels: bool = False,
               segment: Optional[Tuple[float, float]] = None, pipe_timeout: Optional[float] = None) -> np.ndarray:
    """Read one wav.scp value as float32 mono ``[T]`` samples at ``sample_rate`` Hz.

    ``segment`` is (start, end) in seconds (a ``segments`` line); ``end`` <= 0 means "to the end".
    """
    samples, rate = load_rxfilename(value, key=key, pipe_timeout=pipe_timeout)
    if samples.shape[1] > 1:
        if not mix_channels:
            raise AudioError(f"{_describe(key, value)}: audio has {samples.shape[1]} channels, expected mono. "
                             "Fix: make wav.scp a pipe that selects a channel ('sox FILE -t wav -c 1 - remix 1 |') "
                             "or ask for mix_channels")
        mono = samples.mean(axis=1)
    else:
        mono = samples[:, 0]
    if segment is not None:
        first, last = segment_bounds(len(mono), rate, segment, key=key, value=value)
        mono = mono[first:last]
    if rate != sample_rate:
        if not resample:
            raise AudioError(f"{_describe(key, value)}: sample rate is {rate} Hz, expected {sample_rate} Hz. "
                             f"Fix: resample the corpus (e.g. a 'sox FILE -r {sample_rate} -t wav - |' pipe in "
                             "wav.scp) or ask for resampling (resample=True / --resample true)")
        from .resample import resample as _resample

        mono = _resample(mono, rate, sample_rate)
    return np.ascontiguousarray(mono, dtype=np.float32)
