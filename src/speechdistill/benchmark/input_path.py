"""Throughput of the training input path (read FLAC + random crop + pad, then noise + reverb), measured as
``python -m speechdistill.bin.bench_augment`` and section 4 of the benchmark report it."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict

import numpy as np
import soundfile
import torch

from ..augment import Augmenter, load_augment_config
from ..data.collate import collate_batch
from ..data.dataset import AudioDataset, ItemRef
from ..data.tables import write_table

RATE = 16000


def make_bench_data(root: Path, num_utts: int = 64, seed: int = 0) -> Dict[str, Path]:
    """A small corpus for the benchmark: speech-like FLAC utterances, noise recordings and RIRs."""
    rng = np.random.default_rng(seed)
    dirs = {"data": root / "train", "noise": root / "noise", "rirs": root / "rirs"}
    tables: Dict[str, Dict[str, Dict[str, str]]] = {name: {"wav.scp": {}, "utt2spk": {}, "utt2num_samples": {}}
                                                    for name in dirs}
    for i in range(num_utts):
        n = int(rng.uniform(6, 16) * RATE)
        t = np.arange(n) / RATE
        syllables = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2  # 4 Hz envelope, like syllables
        audio = 0.1 * syllables * np.sin(2 * np.pi * rng.uniform(100, 250) * t * (1 + 0.05 * np.sin(t)))
        audio += 0.01 * rng.standard_normal(n)
        _add(tables["data"], dirs["data"], f"spk{i % 8:02d}-utt{i:04d}", f"spk{i % 8:02d}", audio, "flac")
    for i in range(8):
        _add(tables["noise"], dirs["noise"], f"noise{i:02d}", f"noise{i:02d}", rng.standard_normal(10 * RATE) * 0.1,
             "wav")
    rooms = {}
    for i in range(8):
        length = int(rng.uniform(0.3, 1.0) * RATE)
        rir = rng.standard_normal(length) * np.exp(-np.arange(length) / (length / 6.9))
        rir[:20] = 0.0
        rir[20] = 1.0
        _add(tables["rirs"], dirs["rirs"], f"rir{i:02d}", f"rir{i:02d}", 0.5 * rir / np.abs(rir).max(), "wav")
        rooms[f"rir{i:02d}"] = "smallroom"
    for name, directory in dirs.items():
        for file_name, table in tables[name].items():
            write_table(directory / file_name, table)
    write_table(dirs["rirs"] / "utt2room", rooms)
    return dirs


def _add(tables: Dict[str, Dict[str, str]], directory: Path, key: str, speaker: str, audio: np.ndarray,
         ext: str) -> None:
    path = directory / "audio" / f"{key}.{ext}"
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), audio.astype(np.float32), RATE, subtype="PCM_16")
    tables["wav.scp"][key] = str(path)
    tables["utt2spk"][key] = speaker
    tables["utt2num_samples"][key] = str(len(audio))


def run_bench(data_dir: Path, noise_dir: Path, rir_dir: Path, *, batch_size: int, crop_seconds: float,
              batches: int, device: str) -> Dict[str, float]:
    """Wall seconds spent reading and augmenting ``batches`` batches (``read``, ``augment``), the process's
    CPU seconds for each (``read_cpu``, ``augment_cpu``) and in all (``cpu``), audio seconds held."""
    config = load_augment_config({"apply_prob": 1.0, "choices": {"noise+reverb": 1.0},
                                  "noise": {"data_dir": str(noise_dir), "snr_db": [0.0, 15.0]},
                                  "reverb": {"data_dir": str(rir_dir)}})
    augmenter = Augmenter.from_config(config, device=device)
    dataset = AudioDataset(data_dir, max_seconds=crop_seconds, seed=0)
    generator = torch.Generator().manual_seed(0)
    order = np.random.default_rng(0).permutation(np.resize(np.arange(len(dataset)), batch_size * batches))
    read_time = augment_time = read_cpu = augment_cpu = audio = 0.0
    cpu_start = time.process_time()
    for b in range(batches):
        start, start_cpu = time.perf_counter(), time.process_time()
        items = [dataset[ItemRef(0, b, int(i))] for i in order[b * batch_size:(b + 1) * batch_size]]
        batch = collate_batch(items)
        middle, middle_cpu = time.perf_counter(), time.process_time()
        wavs, lengths = batch["wavs"].to(device), batch["lengths"].to(device)
        out = augmenter(wavs, lengths, generator)
        if out.noisy.is_cuda:
            torch.cuda.synchronize()
        end, end_cpu = time.perf_counter(), time.process_time()
        read_time += middle - start
        augment_time += end - middle
        read_cpu += middle_cpu - start_cpu
        augment_cpu += end_cpu - middle_cpu
        audio += batch["audio_seconds"]
    return {"read": read_time, "augment": augment_time, "read_cpu": read_cpu, "augment_cpu": augment_cpu,
            "audio": audio, "cpu": time.process_time() - cpu_start}
