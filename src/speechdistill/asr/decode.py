"""Batched decoding of a data dir with an ASR model dir, optionally under a corrupted test condition.

Utterances are read with the training input pipeline (no crop), batched by seconds of padded
audio in length order, corrupted one by one as the test condition says (seeded from the
utterance id, so the audio does not depend on the batching), passed through the frozen upstream
and the ASR model, and decoded greedily (``beam_size`` 1) or by CTC prefix beam search.

Output dir::

    text               hypotheses, Kaldi ``text`` form, C-locale sorted
    decode_info.json   what was decoded with what (the rerun check compares it)
    decode.log         the log
    skipped_utts.txt   utterances without a hypothesis (too short for the upstream, unreadable)

Utterances without a hypothesis are left out of ``text``: the scorer counts them as all
deletions and names them.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import torch
from tqdm import tqdm

from ..data.audio import SAMPLE_RATE
from ..data.collate import collate_batch
from ..data.dataset import AudioDataset
from ..data.sampler import BucketBatchSampler
from ..data.tables import atomic_write_text, write_table
from ..downstream.ctc_decode import greedy_decode, prefix_beam_search
from ..train.logs import close_logger, setup_logger
from ..train.precision import autocast, resolve_device, resolve_precision
from .conditions import TestCondition, parse_condition
from .layout import INFO_FILE, LOG_FILE, SKIPPED_FILE, TEXT_FILE
from .model import WEIGHTS_FILE, load_asr_model
from .upstream import FrozenUpstream, UpstreamError, upstream_fingerprint

PathLike = Union[str, os.PathLike]
# seconds of audio done / total, elapsed < ETA, throughput in audio-seconds per second
AUDIO_BAR = "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} audio-s [{elapsed}<{remaining}, {rate_fmt}]"


@dataclass
class DecodeOptions:
    """How to decode. ``batch_seconds`` is raised to the longest utterance when shorter."""

    beam_size: int = 1
    batch_seconds: float = 200.0
    max_batch_size: Optional[int] = None
    num_workers: int = 1
    device: str = "auto"
    precision: str = "fp32"
    threads: int = 0


@dataclass
class DecodeResult:
    out_dir: Path
    num_decoded: int
    skipped: List[str]
    audio_seconds: float
    seconds: float
    up_to_date: bool = False


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_fingerprint(data_dir: Path) -> str:
    """SHA-256 of the files that say which audio a data dir holds (wav.scp, segments, utt2num_samples)."""
    digest = hashlib.sha256()
    for name in ("wav.scp", "segments", "utt2num_samples"):
        path = data_dir / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def utterance_generator(seed: int, condition: str, key: str) -> torch.Generator:
    """A CPU generator seeded from (seed, condition, utterance id) alone: the same corrupted audio for
    an utterance in any batch, on any device, for every model decoded with the same seed."""
    digest = hashlib.sha256(f"{seed}\0{condition}\0{key}".encode("utf-8")).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def corrupt_batch(condition: TestCondition, wavs: torch.Tensor, lengths: torch.Tensor, keys: Sequence[str],
                  seed: int) -> torch.Tensor:
    """Apply ``condition`` to each utterance of ``wavs`` ``[B, T]`` (valid ``lengths`` ``[B]`` samples)
    with its own generator; padding stays zero. Returns ``[B, T]``."""
    if condition.is_clean:
        return wavs
    out = torch.zeros_like(wavs)
    for row, key in enumerate(keys):
        length = int(lengths[row])
        corrupted = condition.apply(wavs[row:row + 1, :length], lengths[row:row + 1],
                                    utterance_generator(seed, condition.name, key))
        out[row, :length] = corrupted[0, :length]
    return out


def whole_utterance_batches(data_dir: PathLike, min_samples: int, batch_seconds: float,
                            max_batch_size: Optional[int], num_workers: int):
    """Dataset and loader of ``data_dir``'s whole utterances in length order (no crop, no shuffle).

    Utterances shorter than ``min_samples`` are left out (``dataset.skipped``); the batch budget
    is raised to the longest utterance so that every utterance fits.
    """
    dataset = AudioDataset(data_dir, max_seconds=None, min_seconds=min_samples / SAMPLE_RATE)
    budget = max(int(batch_seconds * SAMPLE_RATE), int(dataset.num_samples.max()))
    sampler = BucketBatchSampler(dataset.num_samples.tolist(), batch_samples=budget, max_batch_size=max_batch_size,
                                 num_buckets=1, shuffle=False)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_batch,
                                         num_workers=num_workers, prefetch_factor=2 if num_workers > 0 else None)
    return dataset, loader


def decode_data_dir(asr_model_dir: PathLike, data_dir: PathLike, out_dir: PathLike, *,
                    upstream: Optional[PathLike] = None, condition: str = "clean", seed: int = 0,
                    noise_dirs: Sequence[PathLike] = (), rir_dirs: Sequence[PathLike] = (),
                    options: Optional[DecodeOptions] = None, force: bool = False) -> DecodeResult:
    """Decode ``data_dir`` into ``out_dir`` (see the module docstring); a finished identical decode is
    not redone unless ``force``."""
    options = options or DecodeOptions()
    asr_model_dir, data_dir, out_dir = Path(asr_model_dir), Path(data_dir), Path(out_dir)
    if options.beam_size < 1:
        raise ValueError(f"--beam-size must be at least 1 (1 = greedy), found {options.beam_size}")
    test_condition = parse_condition(condition, noise_dirs=noise_dirs, rir_dirs=rir_dirs)
    model, tokenizer, info = load_asr_model(asr_model_dir)
    upstream_path = str(upstream) if upstream is not None else info.upstream
    if upstream_fingerprint(upstream_path) != info.upstream_fingerprint:
        raise UpstreamError(f"{asr_model_dir}: the ASR model was trained on the upstream {info.upstream}, but the "
                            f"files of {upstream_path} differ from it. Fix: pass --upstream with the model the probe "
                            "was trained on (retrain the probe for another upstream)")
    settings = {"asr_model": str(asr_model_dir.resolve()),
                "asr_weights_sha256": _sha256_file(asr_model_dir / WEIGHTS_FILE),
                "upstream": str(Path(upstream_path).resolve()), "data": str(data_dir.resolve()),
                "data_sha256": data_fingerprint(data_dir), "condition": test_condition.describe(), "seed": seed,
                "beam_size": options.beam_size}
    info_path = out_dir / INFO_FILE
    if not force and (out_dir / TEXT_FILE).is_file() and info_path.is_file():
        previous = json.loads(info_path.read_text(encoding="utf-8"))
        if previous.get("settings") == settings:
            return DecodeResult(out_dir, int(previous["num_decoded"]), list(previous["skipped"]),
                                float(previous["audio_seconds"]), float(previous["seconds"]), up_to_date=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    if info_path.is_file():
        info_path.unlink()  # the old hypotheses no longer match; a crash below must not look finished
    logger = setup_logger(out_dir / LOG_FILE, 0)
    try:
        return _decode(model, tokenizer, upstream_path, data_dir, out_dir, test_condition, seed, options, settings,
                       logger)
    finally:
        close_logger(logger)


def _decode(model, tokenizer, upstream_path: str, data_dir: Path, out_dir: Path, condition: TestCondition, seed: int,
            options: DecodeOptions, settings: Dict, logger: logging.Logger) -> DecodeResult:
    started = time.perf_counter()
    if options.threads > 0:
        torch.set_num_threads(options.threads)
    device = resolve_device(options.device)
    precision = resolve_precision(options.precision, device)
    frozen = FrozenUpstream(upstream_path, device)
    model = model.to(device)
    condition.to(device)
    layers = model.selected_layers
    logger.info("decoding %s (%s) with %s on %s, %s; upstream %s; %s", data_dir, condition.description,
                settings["asr_model"], device, precision,
                upstream_path, "greedy" if options.beam_size == 1 else f"prefix beam search, beam {options.beam_size}")

    dataset, loader = whole_utterance_batches(data_dir, frozen.min_samples, options.batch_seconds,
                                              options.max_batch_size, options.num_workers)
    skipped: Dict[str, str] = {key: reason for key, reason in dataset.skipped}
    total_seconds = float(dataset.num_samples.sum()) / SAMPLE_RATE
    hypotheses: Dict[str, str] = {}
    audio_seconds = 0.0
    progress = tqdm(total=total_seconds, unit="audio-s", bar_format=AUDIO_BAR,
                    desc=f"decode {data_dir.name} {condition.name}", dynamic_ncols=True, file=sys.stderr,
                    mininterval=0.5 if sys.stderr.isatty() else 30.0)
    with torch.no_grad():
        for batch in loader:
            for key, message in batch["failures"]:
                skipped[key] = f"unreadable: {' '.join(message.split())}"
                logger.warning("skipping unreadable utterance %s", " ".join(message.split()))
            if not batch["keys"]:
                continue
            wavs, lengths = batch["wavs"].to(device), batch["lengths"].to(device)
            wavs = corrupt_batch(condition, wavs, lengths, batch["keys"], seed)
            states, frame_lengths = frozen(wavs, lengths, layers, autocast(device, precision))
            with autocast(device, precision):
                log_probs, frame_lengths = model(states, frame_lengths)
            log_probs = log_probs.float()
            if options.beam_size == 1:
                token_ids = greedy_decode(log_probs, frame_lengths)
            else:
                token_ids = prefix_beam_search(log_probs, frame_lengths, beam_size=options.beam_size)
            for key, ids in zip(batch["keys"], token_ids):
                hypotheses[key] = tokenizer.decode(ids)
            audio_seconds += batch["audio_seconds"]
            progress.update(batch["audio_seconds"])
    progress.close()
    seconds = time.perf_counter() - started

    write_table(out_dir / TEXT_FILE, hypotheses)
    atomic_write_text(out_dir / SKIPPED_FILE, "".join(f"{key} {reason}\n" for key, reason in sorted(skipped.items())))
    if skipped:
        logger.warning("%d utterance(s) have no hypothesis (listed in %s); scoring counts them as all deletions",
                       len(skipped), out_dir / SKIPPED_FILE)
    logger.info("decoded %d utterances (%.1f s of audio) in %.1f s: %.1f audio-s/s; hypotheses in %s",
                len(hypotheses), audio_seconds, seconds, audio_seconds / max(seconds, 1e-9), out_dir / TEXT_FILE)
    record = {"settings": settings, "options": asdict(options), "num_decoded": len(hypotheses),
              "skipped": sorted(skipped), "audio_seconds": audio_seconds, "seconds": seconds}
    atomic_write_text(out_dir / INFO_FILE, json.dumps(record, indent=1, sort_keys=True) + "\n")
    return DecodeResult(out_dir, len(hypotheses), sorted(skipped), audio_seconds, seconds)


__all__: Sequence[str] = ["DecodeOptions", "DecodeResult", "corrupt_batch", "decode_data_dir", "utterance_generator",
                          "whole_utterance_batches"]
