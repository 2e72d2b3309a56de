"""Speaker embeddings of a Kaldi data dir, written as kaldiio ``xvector.ark`` + ``xvector.scp``.

Every utterance is embedded whole (``[E]``, float32). With test-time augmentation (TTA,
specs/methods/06_os_kdft.md §4) each entry is instead the ``[1 + S, E]`` matrix that
``speechdistill.bin.score_trials`` understands: row 0 the full-utterance embedding, rows 1..S the
embeddings of S segments of ``segment_seconds`` whose first samples are equally spaced over the
utterance, ``floor(linspace(0, L - seg, S))``. An utterance no longer than one segment gives S
copies of itself as its segments.

Utterances are batched by seconds of audio in length order (the encoders and back-ends give an
utterance the same embedding alone or padded in a batch, in eval mode). Utterances too short for
one feature frame, unreadable audio, and an utterance whose embedding fails (out of memory, not
finite) are listed in ``skipped_utts.txt`` and reported; every other embedding is written, and
scoring later names any trial that needs a missing one. An utterance longer than
``max_seconds`` (default 300 s) is embedded from its first ``max_seconds``, named in the log;
the batch budget never grows beyond that.

Under a test condition (:mod:`speechdistill.augment.conditions`: noise at an SNR, reverberation,
babble) every utterance is corrupted before it is embedded (and before its TTA segments are cut),
with a generator seeded by (seed, condition, utterance id) alone: the enrolment and test
utterances of every trial are corrupted, and every system embedded with the same seed gets the
same audio.

Output files appear atomically: the ark under a temporary name is renamed first, then the scp
(which points at the final ark name), so a directory with ``xvector.scp`` is complete. A
``extract.done`` marker records the model, the data, the options and the test condition; a rerun
with the same inputs does nothing.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from tqdm import tqdm

from ..augment.conditions import TestCondition, corrupt_batch
from ..data.audio import SAMPLE_RATE
from ..data.inference import DEFAULT_MAX_SECONDS, inference_batches, run_each_on_failure
from ..data.tables import atomic_write_text, byte_key
from .model import SV_CONFIG_FILE, SV_WEIGHTS_FILE, SpeakerEmbedder

PathLike = Union[str, Path]
ARK_NAME, SCP_NAME, DONE_NAME, SKIPPED_NAME, LOG_NAME = ("xvector.ark", "xvector.scp", "extract.done",
                                                         "skipped_utts.txt", "extract.log")


@dataclass
class ExtractOptions:
    """``tta_segments`` 0 = full utterance only; ``batch_seconds``: padded audio per batch."""

    batch_seconds: float = 120.0
    tta_segments: int = 0
    segment_seconds: float = 3.0
    num_workers: int = 1
    max_seconds: Optional[float] = DEFAULT_MAX_SECONDS
    pipe_timeout: Optional[float] = None

    def validate(self) -> None:
        if self.batch_seconds <= 0:
            raise ValueError(f"--batch-seconds must be positive, got {self.batch_seconds}")
        if self.tta_segments < 0:
            raise ValueError(f"--tta-segments must be >= 0, got {self.tta_segments}")
        if self.tta_segments and self.segment_seconds <= 0:
            raise ValueError(f"--segment-seconds must be positive, got {self.segment_seconds}")
        if self.num_workers < 0:
            raise ValueError(f"--num-workers must be >= 0, got {self.num_workers}")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise ValueError(f"--max-seconds must be positive (or 0 on the command line: no limit), got "
                             f"{self.max_seconds}")


@dataclass
class ExtractResult:
    scp: Path
    num_utts: int
    skipped: List[Tuple[str, str]]
    audio_seconds: float
    seconds: float
    already_done: bool = False
    cut: List[str] = field(default_factory=list)  # utterances embedded from their first max_seconds only


def segment_starts(length: int, segment: int, count: int) -> np.ndarray:
    """First samples ``[count]`` of ``count`` equally spaced segments of ``segment`` samples in ``length``."""
    if length <= segment:
        return np.zeros(count, dtype=np.int64)
    return np.floor(np.linspace(0, length - segment, count)).astype(np.int64)


def tta_segments(wavs: torch.Tensor, lengths: torch.Tensor, segment: int, count: int
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Segments of a batch: wavs ``[B, T]``, lengths ``[B]`` -> ``[B * count, min(segment, T)]``
    and their lengths ``[B * count]`` (utterance b's segments are rows b*count .. b*count+count-1)."""
    width = min(segment, wavs.shape[1])
    rows, row_lengths = [], []
    for b, length in enumerate(lengths.tolist()):
        for start in segment_starts(length, segment, count).tolist():
            piece = wavs[b, start:start + min(segment, length)]
            rows.append(torch.nn.functional.pad(piece, (0, width - piece.shape[0])))
            row_lengths.append(piece.shape[0])
    return torch.stack(rows), torch.tensor(row_lengths, dtype=torch.int64, device=wavs.device)


def _fingerprint(model_dir: Path, data_dir: Path, options: ExtractOptions, condition: Optional[TestCondition],
                 condition_seed: int) -> Dict[str, str]:
    digest = hashlib.sha256()
    for path in (model_dir / SV_CONFIG_FILE, model_dir / SV_WEIGHTS_FILE, data_dir / "wav.scp",
                 data_dir / "utt2num_samples", data_dir / "segments"):
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    upstream = model_dir / "upstream" / "model.safetensors"
    if upstream.is_file():
        digest.update(f"{upstream}:{upstream.stat().st_size}:{upstream.stat().st_mtime_ns}".encode())
    fingerprint = {"model_dir": str(model_dir.resolve()), "data_dir": str(data_dir.resolve()),
                   "options": json.dumps(asdict(options), sort_keys=True), "inputs": digest.hexdigest()}
    if condition is not None and not condition.is_clean:
        fingerprint["condition"] = json.dumps({**condition.describe(), "seed": condition_seed}, sort_keys=True)
    return fingerprint


def is_done(out_dir: Path, fingerprint: Dict[str, str]) -> bool:
    marker = out_dir / DONE_NAME
    if not (marker.is_file() and (out_dir / SCP_NAME).is_file() and (out_dir / ARK_NAME).is_file()):
        return False
    try:
        return json.loads(marker.read_text(encoding="utf-8")) == fingerprint
    except ValueError:
        return False


def _file_logger(path: Path) -> logging.Logger:
    log = logging.getLogger(f"speechdistill.sv.extract.{path}")
    log.setLevel(logging.INFO)
    log.propagate = False
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    return log


def extract_embeddings(embedder: SpeakerEmbedder, model_dir: PathLike, data_dir: PathLike, out_dir: PathLike, *,
                       options: Optional[ExtractOptions] = None, device: Union[str, torch.device] = "cpu",
                       autocast_dtype: Optional[torch.dtype] = None, force: bool = False,
                       progress: bool = True, condition: Optional[TestCondition] = None,
                       condition_seed: int = 0) -> ExtractResult:
    """Embed every utterance of ``data_dir`` with ``embedder`` into ``out_dir/xvector.{ark,scp}``.

    ``model_dir`` is where ``embedder`` was loaded from (it goes into the done marker).
    ``autocast_dtype``: run the model under autocast in that dtype (None = float32).
    ``condition``: corrupt every utterance first (None or clean: as it is), seeded by ``condition_seed``.
    """
    options = options or ExtractOptions()
    options.validate()
    model_dir, data_dir, out_dir = Path(model_dir), Path(data_dir), Path(out_dir)
    fingerprint = _fingerprint(model_dir, data_dir, options, condition, condition_seed)
    if not force and is_done(out_dir, fingerprint):
        count = sum(1 for _ in (out_dir / SCP_NAME).open(encoding="utf-8"))
        return ExtractResult(out_dir / SCP_NAME, count, [], 0.0, 0.0, already_done=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / DONE_NAME).unlink(missing_ok=True)
    log = _file_logger(out_dir / LOG_NAME)
    device = torch.device(device)
    min_seconds = embedder.min_samples / SAMPLE_RATE
    data = inference_batches(data_dir, min_samples=embedder.min_samples, batch_seconds=options.batch_seconds,
                             max_seconds=options.max_seconds, num_workers=options.num_workers,
                             pipe_timeout=options.pipe_timeout)
    dataset = data.dataset
    total_seconds = float(dataset.cropped_num_samples.sum()) / SAMPLE_RATE
    log.info("embedding %d utterances (%.1f s) of %s with %s on %s%s; %d too short (< %.3f s); batches of at most "
             "%.1f s", len(dataset), total_seconds, data_dir, model_dir, device,
             f", TTA {options.tta_segments} x {options.segment_seconds:g} s" if options.tta_segments else "",
             len(dataset.skipped), min_seconds, data.budget_seconds)
    for key, seconds in data.cut:
        log.warning("%s", data.cut_message(key, seconds))
    skipped: List[Tuple[str, str]] = list(dataset.skipped)
    segment = int(round(options.segment_seconds * SAMPLE_RATE))
    embedder = embedder.to(device).eval()
    corrupted = condition is not None and not condition.is_clean
    if corrupted:
        condition.to(device)
        log.info("test condition %s: %s (seed %d)", condition.name, condition.description, condition_seed)
    ark_final = (out_dir / ARK_NAME).resolve()
    ark_tmp = out_dir / f".{ARK_NAME}.tmp"
    scp_lines: Dict[str, str] = {}
    started = time.perf_counter()
    bar = tqdm(total=round(total_seconds, 1), unit="audio-s", desc=f"embed {data_dir.name}", disable=not progress,
               dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 30.0, file=sys.stderr)
    import kaldiio

    def embed(wavs: torch.Tensor, lengths: torch.Tensor, keys) -> List[np.ndarray]:
        wavs, lengths = wavs.to(device), lengths.to(device)
        if corrupted:
            wavs = corrupt_batch(condition, wavs, lengths, keys, condition_seed)
        full = embedder(wavs, lengths).float().cpu().numpy()
        if options.tta_segments:
            seg_wavs, seg_lengths = tta_segments(wavs, lengths, segment, options.tta_segments)
            parts = embedder(seg_wavs, seg_lengths).float().cpu().numpy()
            parts = parts.reshape(len(keys), options.tta_segments, -1)
        values = []
        for row, key in enumerate(keys):
            value = full[row] if not options.tta_segments else np.concatenate([full[row:row + 1], parts[row]])
            if not np.all(np.isfinite(value)):
                raise ValueError(f"utterance '{key}' of {data_dir}: the embedding is not finite; the model in "
                                 f"{model_dir} produced NaN/inf")
            values.append(value)
        return values

    def failed(key: str, reason: str) -> None:
        skipped.append((key, reason))
        log.warning("no embedding for utterance %s: %s", key, reason)

    try:
        with open(ark_tmp, "wb") as ark, torch.no_grad(), torch.autocast(
                device_type=device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            for batch in data.loader:
                for key, message in batch["failures"]:
                    skipped.append((key, "unreadable: " + " ".join(message.split())))
                    log.warning("skipping unreadable utterance %s: %s", key, " ".join(message.split()))
                if not batch["keys"]:
                    continue
                for key, value in run_each_on_failure(batch, embed, failed):
                    position = ark.tell()
                    kaldiio.save_ark(ark, {key: np.ascontiguousarray(value, dtype=np.float32)})
                    scp_lines[key] = f"{key} {ark_final}:{position + len(key.encode('utf-8')) + 1}\n"
                bar.update(round(batch["audio_seconds"], 1))
        bar.close()
        if not scp_lines:
            raise ValueError(f"{data_dir}: no utterance could be embedded ({len(skipped)} skipped, see "
                             f"{out_dir / SKIPPED_NAME})")
        atomic_write_text(out_dir / SKIPPED_NAME, "".join(f"{k} {why}\n" for k, why in skipped))
        os.replace(ark_tmp, ark_final)
        atomic_write_text(out_dir / SCP_NAME, "".join(scp_lines[k] for k in sorted(scp_lines, key=byte_key)))
    except BaseException:
        bar.close()
        ark_tmp.unlink(missing_ok=True)
        raise
    elapsed = time.perf_counter() - started
    log.info("wrote %d embeddings (dimension %d%s) to %s in %.1f s (%.1f audio-s/s); %d skipped%s", len(scp_lines),
             embedder.embedding_size, f", {1 + options.tta_segments} rows each" if options.tta_segments else "",
             out_dir / SCP_NAME, elapsed, total_seconds / max(elapsed, 1e-9), len(skipped),
             f" (listed in {out_dir / SKIPPED_NAME})" if skipped else "")
    atomic_write_text(out_dir / DONE_NAME, json.dumps(fingerprint, sort_keys=True) + "\n")
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    return ExtractResult(out_dir / SCP_NAME, len(scp_lines), skipped, total_seconds, elapsed,
                         cut=[key for key, _ in data.cut])
