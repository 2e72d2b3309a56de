"""Throughput of the training input path: read FLAC + random crop + noise + reverb, on one CPU thread.

    python -m speechdistill.bin.bench_augment                    # self-contained: makes its own data
    python -m speechdistill.bin.bench_augment --data-dir data/train --noise-dir data/musan_noise \\
        --rir-dir data/rirs --batch-size 16 --crop-seconds 4

Batches come from the project's own pipeline (AudioDataset: read + crop, collate_batch: pad),
then every utterance gets noise at 0-15 dB and a RIR (choice ``noise+reverb``) from banks
loaded once. Without data dirs it writes a temporary corpus (FLAC utterances of 6-16 s,
10-s noise recordings, 0.3-1 s RIRs). Prints real-time factors (audio seconds processed per
wall-clock second) for reading, for augmenting and for both, and for both per CPU-second the
process used (the per-core figure, which other jobs sharing the machine do not distort);
the target is >= 300x per core.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import soundfile
import torch

from speechdistill.augment import Augmenter, load_augment_config
from speechdistill.corpora.common import run_cli
from speechdistill.data.collate import collate_batch
from speechdistill.data.dataset import AudioDataset, ItemRef
from speechdistill.data.tables import write_table

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m speechdistill.bin.bench_augment", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", "--data_dir", dest="data_dir", default=None,
                        help="data dir with wav.scp + utt2num_samples (default: a generated one)")
    parser.add_argument("--noise-dir", "--noise_dir", dest="noise_dir", default=None)
    parser.add_argument("--rir-dir", "--rir_dir", dest="rir_dir", default=None)
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=16)
    parser.add_argument("--crop-seconds", "--crop_seconds", dest="crop_seconds", type=float, default=4.0)
    parser.add_argument("--batches", type=int, default=20, help="timed batches (after one warm-up batch)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: per-core figure)")
    parser.add_argument("--device", default="cpu")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        torch.set_num_threads(args.threads)
        with tempfile.TemporaryDirectory(prefix="bench_augment.") as tmp:
            generated = make_bench_data(Path(tmp)) if not (args.data_dir and args.noise_dir and args.rir_dir) else {}
            data = Path(args.data_dir) if args.data_dir else generated["data"]
            noise = Path(args.noise_dir) if args.noise_dir else generated["noise"]
            rirs = Path(args.rir_dir) if args.rir_dir else generated["rirs"]
            run_bench(data, noise, rirs, batch_size=args.batch_size, crop_seconds=args.crop_seconds, batches=1,
                      device=args.device)  # warm-up: allocator, FFT plans
            result = run_bench(data, noise, rirs, batch_size=args.batch_size, crop_seconds=args.crop_seconds,
                               batches=args.batches, device=args.device)
        audio = result["audio"]
        total = result["read"] + result["augment"]
        print(f"bench_augment: {args.batches} batches x {args.batch_size} utterances, crops of "
              f"{args.crop_seconds:g} s, {audio:.0f} s of audio, {args.threads} thread(s), device {args.device}")
        print(f"  read FLAC + crop + pad : {audio / result['read']:8.0f}x real time")
        print(f"  noise + reverb         : {audio / result['augment']:8.0f}x real time")
        print(f"  all                    : {audio / total:8.0f}x real time")
        print(f"  all, per CPU core      : {audio / result['cpu']:8.0f}x real time "
              f"({result['cpu']:.2f} CPU-s for {total:.2f} s wall)")
        return 0

    return run_cli("bench_augment", body)


if __name__ == "__main__":
    sys.exit(main())
