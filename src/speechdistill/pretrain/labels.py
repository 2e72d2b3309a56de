"""The k-means label stage of HuBERT's first iteration, and the labeller the training uses.

What :func:`prepare_labels` does with a training data dir (and a validation one):

1. draws a random sample of the training utterances (``kmeans_fraction`` of them, at most
   ``kmeans_max_hours`` of audio; seeded), computes their 39-dim MFCC + Δ + ΔΔ at 100 Hz in
   DataLoader workers (tqdm shows audio-seconds per second and the ETA);
2. fits ``num_clusters`` centroids on those frames (Lloyd or mini-batch k-means) and writes
   ``centroids.npy``;
3. labels the sample's 50 Hz frames (every other MFCC frame, one per encoder frame) and records
   the unit statistics in ``kmeans.json``: how many units are used, the perplexity of the unit
   distribution, and the share of the most frequent unit -- the accuracy of always guessing it,
   the chance level masked-unit accuracy must beat;
4. with ``labels.source: table``, writes ``train.km`` (and ``valid.km``): one line
   ``<utt> <unit> <unit> ...`` per utterance at 50 Hz, C-locale sorted, like fairseq's ``.km``.

Every file is written to a temporary name and renamed; ``kmeans.json`` is written last and holds
a fingerprint of the inputs (data-dir tables, k-means and MFCC options, seed), so a rerun with the
same inputs reuses the centroids and tables and any change recomputes them. A log goes to
``<dir>/prepare_labels.log``; utterances that cannot be read are listed in
``<dir>/unreadable_<set>.txt`` and counted in the log.

:class:`MfccLabeler` labels a padded batch on the fly: MFCCs of the (cropped) waveforms in float32,
then the nearest centroid of every 50 Hz frame. It gives the same units as the table for whole
utterances, and units aligned with whatever crop the data pipeline took.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from tqdm import tqdm

from ..config import to_dict
from ..data.audio import SAMPLE_RATE
from ..data.dataset import AudioDataset, ItemRef, LoadFailure
from ..data.features import MfccOptions, hubert_mfcc_features
from ..data.kmeans import fit_kmeans, load_centroids, save_centroids, squared_distances
from ..data.tables import DataDirError, atomic_write_text, format_error, read_table, write_list, write_table
from .config import HubertPretrainConfig, LabelConfig

CENTROIDS_FILE = "centroids.npy"
RECORD_FILE = "kmeans.json"
LOG_FILE = "prepare_labels.log"
TABLE_NAMES = ("train", "valid")
RECORD_VERSION = 1
# The shortest utterance that gives one 50 Hz label (one 25 ms MFCC window).
MIN_LABEL_SAMPLES = 400

PathLike = Union[str, Path]


class LabelStageError(ValueError):
    """The label stage cannot run or its files are unusable; the message says which file and the fix."""


def label_table_name(which: str) -> str:
    return f"{which}.km"


def labels_directory(config: HubertPretrainConfig, output_dir: PathLike) -> Path:
    """``labels.dir`` when set, else ``<output_dir>/labels``."""
    return Path(config.labels.dir) if config.labels.dir else Path(output_dir) / "labels"


def data_dir_fingerprint(data_dir: PathLike) -> Dict[str, str]:
    """Absolute path and SHA-1 of the tables that decide which audio a data dir holds."""
    data_dir = Path(data_dir)
    digest = hashlib.sha1()
    for name in ("wav.scp", "segments", "utt2num_samples"):
        path = data_dir / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return {"path": str(data_dir.resolve()), "sha1": digest.hexdigest()}


def kmeans_settings(config: HubertPretrainConfig) -> Dict[str, Any]:
    """Everything the centroids depend on (compared on a rerun)."""
    labels: LabelConfig = config.labels
    return {
        "version": RECORD_VERSION,
        "train_data": data_dir_fingerprint(config.train_data),
        "num_clusters": labels.num_clusters,
        "kmeans_fraction": labels.kmeans_fraction,
        "kmeans_max_hours": labels.kmeans_max_hours,
        "kmeans_batch_size": labels.kmeans_batch_size,
        "kmeans_iterations": labels.kmeans_iterations,
        "kmeans_init_sample": labels.kmeans_init_sample,
        "mfcc": to_dict(labels.mfcc),
        "seed": config.seed,
    }


# ---------------------------------------------------------------------------------------------
# MFCC over a data dir
# ---------------------------------------------------------------------------------------------

class _MfccItems(torch.utils.data.Dataset):
    """Utterances of a data dir as ``(index, key, mfcc [N_100, 39] float32 array)`` or a LoadFailure."""

    def __init__(self, dataset: AudioDataset, indices: Sequence[int], options: MfccOptions) -> None:
        self.dataset = dataset
        self.indices = list(indices)
        self.options = options

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int):
        index = self.indices[position]
        item = self.dataset[ItemRef(0, 0, index)]
        if isinstance(item, LoadFailure):
            return item
        wav = torch.from_numpy(np.asarray(item["wav"], dtype=np.float32))
        if len(wav) < MIN_LABEL_SAMPLES:
            return LoadFailure(item["key"], f"{len(wav)} samples decoded, fewer than one 25 ms MFCC window "
                                            f"({MIN_LABEL_SAMPLES})", item["ref"])
        with torch.no_grad():
            features, lengths = hubert_mfcc_features(wav[None], torch.tensor([len(wav)]), label_rate=100,
                                                     options=self.options)
        return index, item["key"], features[0, :int(lengths[0])].numpy()


def _single_item(item: Any) -> Any:
    return item


def _one_thread_worker(worker_id: int) -> None:
    # Workers share the cores with each other; one BLAS thread each avoids oversubscription.
    torch.set_num_threads(1)


def mfcc_stream(dataset: AudioDataset, indices: Sequence[int], options: MfccOptions, *, num_workers: int,
                description: str) -> Iterator[Any]:
    """MFCCs of ``dataset``'s utterances ``indices`` in order, computed by ``num_workers`` processes,
    with a progress bar in audio-seconds. Yields ``(index, key, [N_100, 39])`` or :class:`LoadFailure`."""
    items = _MfccItems(dataset, indices, options)
    loader = torch.utils.data.DataLoader(items, batch_size=None, shuffle=False, num_workers=num_workers,
                                         collate_fn=_single_item,
                                         worker_init_fn=_one_thread_worker if num_workers > 0 else None)
    total = float(sum(int(dataset.num_samples[i]) for i in indices)) / SAMPLE_RATE
    bar = tqdm(total=total, unit="audio-s", desc=description, dynamic_ncols=True,
               bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} audio-s [{elapsed}<{remaining}, {rate_fmt}]")
    try:
        for position, result in enumerate(loader):
            bar.update(int(dataset.num_samples[indices[position]]) / SAMPLE_RATE)
            yield result
    finally:
        bar.close()


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------

@dataclass
class LabelStageResult:
    """What :func:`prepare_labels` produced or found.

    Attributes:
        directory: the labels directory.
        centroids: ``[K, 39]`` float32.
        record: the contents of ``kmeans.json`` (settings, statistics, tables).
        reused: the centroids came from an earlier run with the same inputs.
        tables: ``{"train" | "valid": path}`` of the label tables written or reused.
    """

    directory: Path
    centroids: torch.Tensor
    record: Dict[str, Any]
    reused: bool
    tables: Dict[str, Path] = field(default_factory=dict)


class _TqdmHandler(logging.Handler):
    """Console messages through ``tqdm.write`` so that they do not break a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never take the stage down
            self.handleError(record)


def _stage_logger(directory: Path) -> logging.Logger:
    logger = logging.getLogger(f"speechdistill.pretrain.labels.{directory.resolve()}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    file_handler = logging.FileHandler(directory / LOG_FILE, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(file_handler)
    console = _TqdmHandler()
    console.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(console)
    return logger


def _close_logger(logger: logging.Logger) -> None:
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


def read_record(directory: PathLike) -> Optional[Dict[str, Any]]:
    """``kmeans.json`` of a labels directory (None when absent or unreadable, i.e. not finished)."""
    path = Path(directory) / RECORD_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _labelling_dataset(data_dir: str) -> AudioDataset:
    return AudioDataset(data_dir, max_seconds=None, min_seconds=MIN_LABEL_SAMPLES / SAMPLE_RATE)


def _choose_sample(dataset: AudioDataset, labels: LabelConfig, seed: int) -> List[int]:
    """Utterance indices of the k-means sample: a seeded random fraction, capped in hours, in data-dir order."""
    generator = np.random.default_rng([seed, 1170])
    order = generator.permutation(len(dataset))
    wanted = max(1, int(math.ceil(labels.kmeans_fraction * len(dataset))))
    cap = None if labels.kmeans_max_hours is None else labels.kmeans_max_hours * 3600 * SAMPLE_RATE
    chosen, total = [], 0
    for index in order[:wanted].tolist():
        count = int(dataset.num_samples[index])
        if cap is not None and chosen and total + count > cap:
            continue
        chosen.append(index)
        total += count
    return sorted(chosen)


def unit_statistics(counts: np.ndarray) -> Dict[str, Any]:
    """Usage of the K units from their frame counts ``[K]``: used units, perplexity, most frequent share."""
    total = float(counts.sum())
    share = counts / max(total, 1.0)
    nonzero = share[share > 0]
    entropy = float(-(nonzero * np.log(nonzero)).sum())
    return {"frames": int(total), "used_units": int((counts > 0).sum()), "perplexity": math.exp(entropy),
            "majority_unit": int(np.argmax(counts)), "majority_share": float(share.max()) if total else 0.0}


def assign_units(features: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Nearest centroid of every row: ``[M, D]`` x ``[K, D]`` -> ``[M]`` int64."""
    return squared_distances(features.float(), centroids.float()).argmin(dim=1)


def _write_failures(directory: Path, which: str, failures: List[Tuple[str, str]], log: logging.Logger) -> None:
    path = directory / f"unreadable_{which}.txt"
    if failures:
        write_list(path, [f"{key} {' '.join(message.split())}" for key, message in failures])
        log.warning("%d utterance(s) of the %s data could not be read and got no labels; listed in %s",
                    len(failures), which, path)
    elif path.exists():
        path.unlink()


def prepare_labels(config: HubertPretrainConfig, output_dir: PathLike, *, device: Optional[torch.device] = None,
                   num_workers: Optional[int] = None) -> LabelStageResult:
    """Run (or reuse) the k-means label stage for ``config`` (see the module docstring).

    Args:
        config: validated :class:`HubertPretrainConfig` (``train_data``, ``valid_data``, ``labels``).
        output_dir: run directory (the labels go to ``labels.dir`` or ``<output_dir>/labels``).
        device: where k-means runs (default CPU).
        num_workers: MFCC worker processes (default ``config.num_workers``).
    Returns:
        :class:`LabelStageResult`.
    """
    directory = labels_directory(config, output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    workers = config.num_workers if num_workers is None else num_workers
    device = device if device is not None else torch.device("cpu")
    log = _stage_logger(directory)
    try:
        settings = kmeans_settings(config)
        record = read_record(directory)
        reused = (record is not None and record.get("settings") == settings
                  and (directory / CENTROIDS_FILE).is_file())
        sample_labels: Dict[str, np.ndarray] = {}
        if reused:
            centroids = load_centroids(directory / CENTROIDS_FILE)
            log.info("k-means labels: reusing %s (same data and settings; %d units)", directory, centroids.shape[0])
        else:
            record, centroids, sample_labels = _fit(config, directory, settings, device, workers, log)
        tables: Dict[str, Path] = {}
        if config.labels.source == "table":
            for which, data_dir in (("train", config.train_data), ("valid", config.valid_data)):
                if data_dir:
                    tables[which] = _ensure_table(directory, which, data_dir, centroids, config.labels.mfcc,
                                                  record, sample_labels if which == "train" else {}, workers, log)
        return LabelStageResult(directory=directory, centroids=centroids, record=record, reused=reused,
                                tables=tables)
    finally:
        _close_logger(log)


def _fit(config: HubertPretrainConfig, directory: Path, settings: Dict[str, Any], device: torch.device,
         workers: int, log: logging.Logger) -> Tuple[Dict[str, Any], torch.Tensor, Dict[str, np.ndarray]]:
    labels = config.labels
    started = time.perf_counter()
    stale = directory / RECORD_FILE
    if stale.exists():
        stale.unlink()  # the centroids are about to change: nothing here is valid until the new record
    dataset = _labelling_dataset(config.train_data)
    chosen = _choose_sample(dataset, labels, config.seed)
    seconds = sum(int(dataset.num_samples[i]) for i in chosen) / SAMPLE_RATE
    log.info("k-means labels for %s: MFCC of %d of %d utterances (%.2f h; kmeans_fraction %g, kmeans_max_hours %s); "
             "%d skipped as shorter than one MFCC window", config.train_data, len(chosen), len(dataset), seconds / 3600,
             labels.kmeans_fraction, labels.kmeans_max_hours, len(dataset.skipped))
    keys: List[str] = []
    blocks: List[np.ndarray] = []
    failures: List[Tuple[str, str]] = []
    for result in mfcc_stream(dataset, chosen, labels.mfcc, num_workers=workers, description="MFCC (k-means sample)"):
        if isinstance(result, LoadFailure):
            failures.append((result.key, result.message))
            continue
        _, key, features = result
        keys.append(key)
        blocks.append(features)
    _write_failures(directory, "kmeans_sample", failures, log)
    if not blocks:
        raise LabelStageError(format_error(config.train_data, "no utterance of the k-means sample could be read",
                                           fix=f"check the audio (see {directory / 'unreadable_kmeans_sample.txt'})"))
    points = torch.from_numpy(np.concatenate(blocks))
    if points.shape[0] < labels.num_clusters:
        raise LabelStageError(f"config.labels.num_clusters: {labels.num_clusters} units need at least as many MFCC "
                              f"frames, but the k-means sample of {config.train_data} has {points.shape[0]}; "
                              "lower num_clusters or raise kmeans_fraction")
    mfcc_seconds = time.perf_counter() - started
    log.info("fitting %d-means on %d MFCC frames of %d dims (%s) on %s", labels.num_clusters, points.shape[0],
             points.shape[1], "Lloyd" if labels.kmeans_batch_size is None else
             f"mini-batches of {labels.kmeans_batch_size}", device)
    fit_started = time.perf_counter()
    result = fit_kmeans(points, labels.num_clusters, max_iterations=labels.kmeans_iterations,
                        batch_size=labels.kmeans_batch_size, seed=config.seed,
                        init_sample_size=labels.kmeans_init_sample, device=device, progress=True)
    centroids = result.centroids.cpu()
    save_centroids(directory / CENTROIDS_FILE, centroids)
    fit_seconds = time.perf_counter() - fit_started

    # Units of the sample at 50 Hz: what the model will predict.
    sample_labels: Dict[str, np.ndarray] = {}
    counts = np.zeros(labels.num_clusters, dtype=np.int64)
    for key, features in zip(keys, blocks):
        units = assign_units(torch.from_numpy(features[::2]), centroids).numpy()
        sample_labels[key] = units
        counts += np.bincount(units, minlength=labels.num_clusters)
    statistics = unit_statistics(counts)
    record = {
        "settings": settings,
        "sample": {"utterances": len(keys), "unreadable": len(failures), "hours": seconds / 3600,
                   "frames_100hz": int(points.shape[0])},
        "kmeans": {"inertia_per_frame": result.inertia / points.shape[0], "iterations": result.iterations,
                   "converged": result.converged},
        "units_50hz": statistics,
        "seconds": {"mfcc": round(mfcc_seconds, 2), "kmeans": round(fit_seconds, 2)},
        "tables": {},
    }
    atomic_write_text(directory / RECORD_FILE, json.dumps(record, indent=1) + "\n")
    for which in TABLE_NAMES:  # tables of older centroids are meaningless now
        stale_table = directory / label_table_name(which)
        if stale_table.exists():
            stale_table.unlink()
    log.info("k-means done in %.1f s (MFCC %.1f s, fit %.1f s, %d iterations%s): inertia %.4g per frame; 50 Hz units "
             "of the sample: %d of %d used, perplexity %.1f, most frequent unit %d on %.1f%% of frames (the accuracy "
             "of always guessing it)", mfcc_seconds + fit_seconds, mfcc_seconds, fit_seconds, result.iterations,
             ", converged" if result.converged else "", result.inertia / points.shape[0], statistics["used_units"],
             labels.num_clusters, statistics["perplexity"], statistics["majority_unit"],
             100 * statistics["majority_share"])
    return record, centroids, sample_labels


def _ensure_table(directory: Path, which: str, data_dir: str, centroids: torch.Tensor, options: MfccOptions,
                  record: Dict[str, Any], known: Mapping[str, np.ndarray], workers: int,
                  log: logging.Logger) -> Path:
    """Write ``<which>.km`` for ``data_dir`` unless the record says it is there for the same data."""
    path = directory / label_table_name(which)
    fingerprint = data_dir_fingerprint(data_dir)
    if record.get("tables", {}).get(which) == fingerprint and path.is_file():
        log.info("label table %s: reusing (same data)", path)
        return path
    dataset = _labelling_dataset(data_dir)
    missing = [i for i, key in enumerate(dataset.keys) if key not in known]
    wanted = set(dataset.keys)
    lines: Dict[str, str] = {key: " ".join(map(str, units.tolist())) for key, units in known.items() if key in wanted}
    failures: List[Tuple[str, str]] = []
    log.info("label table %s: %d utterances (%d labelled from the k-means sample, %d to compute)", path,
             len(dataset), len(lines), len(missing))
    for result in mfcc_stream(dataset, missing, options, num_workers=workers, description=f"labels ({which})"):
        if isinstance(result, LoadFailure):
            failures.append((result.key, result.message))
            continue
        _, key, features = result
        lines[key] = " ".join(map(str, assign_units(torch.from_numpy(features[::2]), centroids).tolist()))
    _write_failures(directory, which, failures, log)
    if not lines:
        raise LabelStageError(format_error(data_dir, "no utterance could be read to label",
                                           fix=f"check the audio (see {directory / f'unreadable_{which}.txt'})"))
    write_table(path, lines)
    record.setdefault("tables", {})[which] = fingerprint
    atomic_write_text(directory / RECORD_FILE, json.dumps(record, indent=1) + "\n")
    log.info("label table %s: %d utterances written", path, len(lines))
    return path


def read_label_table(path: PathLike, num_classes: int) -> Dict[str, np.ndarray]:
    """``<utt> <unit> ...`` lines -> ``{utt: int64 [N]}``; units outside ``[0, num_classes)`` are an error."""
    path = Path(path)
    table = read_table(path)
    out: Dict[str, np.ndarray] = {}
    for key, value in table.items():
        try:
            units = np.array(value.split(), dtype=np.int64)
        except ValueError:
            raise DataDirError(format_error(path, "labels must be integers", key=key,
                                            fix="rerun the label stage (delete the labels directory)")) from None
        if units.size and (units.min() < 0 or units.max() >= num_classes):
            raise DataDirError(format_error(path, f"a label lies outside [0, {num_classes})", key=key,
                                            fix="the table belongs to another k; rerun the label stage"))
        out[key] = units
    return out


class MfccLabeler:
    """Units of a padded batch, computed on the fly.

    Args:
        centroids: ``[K, 39]`` k-means centroids of 100 Hz MFCC frames.
        options: the MFCC options the centroids were fitted with.
    """

    def __init__(self, centroids: torch.Tensor, options: MfccOptions) -> None:
        self.centroids = centroids.float()
        self.options = options

    def to(self, device: torch.device) -> "MfccLabeler":
        self.centroids = self.centroids.to(device)
        return self

    @torch.no_grad()
    def __call__(self, wavs: torch.Tensor, lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``wavs`` ``[B, T]`` (16 kHz), ``lengths`` ``[B]`` samples -> ``(units [B, N] int64, frames [B])``
        at 50 Hz; units past an utterance's frame count are meaningless."""
        # Autocast would run the mel and DCT products in bf16 and move frames to other clusters.
        with torch.autocast(wavs.device.type, enabled=False):
            features, frame_lengths = hubert_mfcc_features(wavs.float(), lengths, label_rate=50, options=self.options)
            batch, frames, dims = features.shape
            units = assign_units(features.reshape(-1, dims), self.centroids).view(batch, frames)
        return units, frame_lengths
