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

An utterance longer than ``max_seconds`` (default 300 s) is decoded from its first
``max_seconds`` only, with a message naming it (in the log and ``decode_info.json``); the batch
budget is never raised beyond that. A batch that fails (e.g. out of memory) is decoded again one
utterance at a time, so a failing utterance costs only its own hypothesis; the others are
always written.
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
from typing import Dict, List, Optional, Sequence, Union

import torch
from tqdm import tqdm

from ..augment.conditions import TestCondition, corrupt_batch, parse_condition
from ..data.audio import SAMPLE_RATE
from ..data.inference import DEFAULT_MAX_SECONDS, inference_batches, run_each_on_failure
from ..data.tables import atomic_write_text, write_table
from ..downstream.ctc_decode import greedy_decode, prefix_beam_search
from ..train.logs import close_logger, setup_logger
from ..train.precision import autocast, resolve_device, resolve_precision
from .layout import INFO_FILE, LOG_FILE, SKIPPED_FILE, TEXT_FILE
from .model import WEIGHTS_FILE, load_asr_model
from .upstream import FrozenUpstream, UpstreamError, upstream_fingerprint

PathLike = Union[str, os.PathLike]
# seconds of audio done / total, elapsed < ETA, throughput in audio-seconds per second
AUDIO_BAR = "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} audio-s [{elapsed}<{remaining}, {rate_fmt}]"


@dataclass
class DecodeOptions:
    """How to decode. ``batch_seconds`` is raised to ``max_seconds`` when shorter; utterances longer than
    ``max_seconds`` are decoded from their first ``max_seconds`` (None: whole, however long)."""

    beam_size: int = 1
    batch_seconds: float = 200.0
    max_seconds: Optional[float] = DEFAULT_MAX_SECONDS
    pipe_timeout: Optional[float] = None
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
    cut: List[str] = field(default_factory=list)  # utterances decoded from their first max_seconds only


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


def whole_utterance_batches(data_dir: PathLike, min_samples: int, batch_seconds: float,
                            max_batch_size: Optional[int], num_workers: int):
    """Dataset and loader of ``data_dir``'s whole utterances in length order (no crop, no shuffle).

    Utterances shorter than ``min_samples`` are left out (``dataset.skipped``); the batch budget
    is raised to the longest utterance so that every utterance fits (feature dumps for training
    need every utterance whole).
    """
    data = inference_batches(data_dir, min_samples=min_samples, batch_seconds=batch_seconds, max_seconds=None,
                             max_batch_size=max_batch_size, num_workers=num_workers)
    return data.dataset, data.loader


def decode_data_dir(asr_model_dir: PathLike, data_dir: PathLike, out_dir: PathLike, *,
                    upstream: Optional[PathLike] = None, condition: str = "clean", seed: int = 0,
                    noise_dirs: Sequence[PathLike] = (), rir_dirs: Sequence[PathLike] = (),
                    babble_dirs: Sequence[PathLike] = (), options: Optional[DecodeOptions] = None,
                    force: bool = False) -> DecodeResult:
    """Decode ``data_dir`` into ``out_dir`` (see the module docstring); a finished identical decode is
    not redone unless ``force``."""
    options = options or DecodeOptions()
    asr_model_dir, data_dir, out_dir = Path(asr_model_dir), Path(data_dir), Path(out_dir)
    if options.beam_size < 1:
        raise ValueError(f"--beam-size must be at least 1 (1 = greedy), found {options.beam_size}")
    test_condition = parse_condition(condition, noise_dirs=noise_dirs, rir_dirs=rir_dirs, babble_dirs=babble_dirs)
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
                "beam_size": options.beam_size, "max_seconds": options.max_seconds}
    info_path = out_dir / INFO_FILE
    if not force and (out_dir / TEXT_FILE).is_file() and info_path.is_file():
        previous = json.loads(info_path.read_text(encoding="utf-8"))
        if previous.get("settings") == settings:
            return DecodeResult(out_dir, int(previous["num_decoded"]), list(previous["skipped"]),
                                float(previous["audio_seconds"]), float(previous["seconds"]), up_to_date=True,
                                cut=list(previous.get("cut", [])))
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

    data = inference_batches(data_dir, min_samples=frozen.min_samples, batch_seconds=options.batch_seconds,
                             max_seconds=options.max_seconds, max_batch_size=options.max_batch_size,
                             num_workers=options.num_workers, pipe_timeout=options.pipe_timeout)
    dataset = data.dataset
    logger.info("%d utterances in batches of at most %.1f s of padded audio", len(dataset), data.budget_seconds)
    skipped: Dict[str, str] = {key: reason for key, reason in dataset.skipped}
    cut = {key: data.cut_message(key, seconds) for key, seconds in data.cut}
    for message in cut.values():
        logger.warning("%s", message)
    total_seconds = float(dataset.cropped_num_samples.sum()) / SAMPLE_RATE
    hypotheses: Dict[str, str] = {}
    audio_seconds = 0.0
    progress = tqdm(total=total_seconds, unit="audio-s", bar_format=AUDIO_BAR,
                    desc=f"decode {data_dir.name} {condition.name}", dynamic_ncols=True, file=sys.stderr,
                    mininterval=0.5 if sys.stderr.isatty() else 30.0)

    def decode(wavs: torch.Tensor, lengths: torch.Tensor, keys: Sequence[str]) -> List[str]:
        wavs, lengths = wavs.to(device), lengths.to(device)
        wavs = corrupt_batch(condition, wavs, lengths, keys, seed)
        states, frame_lengths = frozen(wavs, lengths, layers, autocast(device, precision))
        with autocast(device, precision):
            log_probs, frame_lengths = model(states, frame_lengths)
        log_probs = log_probs.float()
        if options.beam_size == 1:
            token_ids = greedy_decode(log_probs, frame_lengths)
        else:
            token_ids = prefix_beam_search(log_probs, frame_lengths, beam_size=options.beam_size)
        return [tokenizer.decode(ids) for ids in token_ids]

    def failed(key: str, reason: str) -> None:
        skipped[key] = reason
        logger.warning("no hypothesis for utterance %s: %s", key, reason)

    with torch.no_grad():
        for batch in data.loader:
            for key, message in batch["failures"]:
                skipped[key] = f"unreadable: {' '.join(message.split())}"
                logger.warning("skipping unreadable utterance %s", " ".join(message.split()))
            if not batch["keys"]:
                continue
            for key, text in run_each_on_failure(batch, decode, failed):
                hypotheses[key] = text
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
              "skipped": sorted(skipped), "cut": sorted(cut), "audio_seconds": audio_seconds, "seconds": seconds}
    atomic_write_text(out_dir / INFO_FILE, json.dumps(record, indent=1, sort_keys=True) + "\n")
    return DecodeResult(out_dir, len(hypotheses), sorted(skipped), audio_seconds, seconds, cut=sorted(cut))


__all__: Sequence[str] = ["DecodeOptions", "DecodeResult", "decode_data_dir",
                          "whole_utterance_batches"]
