"""Dump an upstream's hidden states of a data dir to a kaldiio ark/scp pair, for reuse by the ASR probe.

Output dir::

    feats.ark, feats.scp   one float32 matrix [N, L * D] per utterance: the L selected hidden states
                           side by side (valid frames only)
    feats_info.yaml        upstream path and fingerprint, layers, sizes, data dir (written last:
                           a dump without it is unfinished)
    skipped_utts.txt       utterances too short for the upstream, or unreadable

A rerun with the same upstream, layers and data does nothing.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
from tqdm import tqdm

from ..data.tables import atomic_write_text
from ..train.precision import autocast, resolve_device, resolve_precision
from .decode import AUDIO_BAR, data_fingerprint, whole_utterance_batches
from .upstream import FEATS_INFO, FEATS_SCP, FrozenUpstream, read_dump_info, upstream_fingerprint, write_dump_info

PathLike = Union[str, os.PathLike]
FEATS_ARK = "feats.ark"


@dataclass
class DumpResult:
    out_dir: Path
    num_dumped: int
    skipped: List[str]
    up_to_date: bool = False


def dump_features(upstream: PathLike, data_dir: PathLike, out_dir: PathLike, *, layers: Optional[Sequence[int]] = None,
                  batch_seconds: float = 200.0, num_workers: int = 1, device: str = "auto",
                  precision: str = "fp32") -> DumpResult:
    """Write the hidden states ``layers`` (None: all) of ``upstream`` for every utterance of ``data_dir``."""
    import kaldiio

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    resolved_device = resolve_device(device)
    frozen = FrozenUpstream(upstream, resolved_device)
    count = frozen.num_hidden_states
    chosen = list(range(count)) if layers is None else [int(i) for i in layers]
    bad = [i for i in chosen if not -count <= i < count]
    if bad or not chosen:
        raise ValueError(f"--layers {chosen}: the upstream {upstream} has hidden states 0..{count - 1}; choose among "
                         "them (negative counts from the end)")
    chosen = sorted({i % count for i in chosen})
    info_path = out_dir / FEATS_INFO
    if info_path.is_file():
        info = read_dump_info(out_dir)
        if (info.get("upstream_fingerprint") == upstream_fingerprint(upstream) and info.get("layers") == chosen
                and info.get("data_sha256") == data_fingerprint(data_dir)):
            return DumpResult(out_dir, int(info["num_utterances"]), [], up_to_date=True)
        info_path.unlink()  # stale: the ark below is rewritten
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset, loader = whole_utterance_batches(data_dir, frozen.min_samples, batch_seconds, None, num_workers)
    skipped = {key: reason for key, reason in dataset.skipped}
    resolved_precision = resolve_precision(precision, resolved_device)
    ark, scp_tmp = (out_dir / FEATS_ARK).resolve(), out_dir / f".{FEATS_SCP}.tmp"  # absolute: scp used from anywhere
    total = float(dataset.num_samples.sum()) / 16000
    progress = tqdm(total=total, unit="audio-s", bar_format=AUDIO_BAR, desc=f"dump {data_dir.name}", dynamic_ncols=True,
                    file=sys.stderr, mininterval=0.5 if sys.stderr.isatty() else 30.0)
    started = time.perf_counter()
    dumped = 0
    with kaldiio.WriteHelper(f"ark,scp:{ark},{scp_tmp}") as writer, torch.no_grad():
        for batch in loader:
            for key, message in batch["failures"]:
                skipped[key] = f"unreadable: {' '.join(message.split())}"
            if not batch["keys"]:
                continue
            states, frames = frozen(batch["wavs"].to(resolved_device), batch["lengths"].to(resolved_device), chosen,
                                    autocast(resolved_device, resolved_precision))
            stacked = torch.cat([states[i] for i in chosen], dim=-1).cpu().numpy()
            for row, key in enumerate(batch["keys"]):
                writer(key, np.ascontiguousarray(stacked[row, :int(frames[row])], dtype=np.float32))
                dumped += 1
            progress.update(batch["audio_seconds"])
    progress.close()
    # kaldiio writes the scp in the order utterances came (length order); Kaldi tables are key-sorted.
    lines = sorted(scp_tmp.read_text(encoding="utf-8").splitlines(keepends=True),
                   key=lambda line: line.split(" ", 1)[0].encode("utf-8"))
    atomic_write_text(out_dir / FEATS_SCP, "".join(lines))
    scp_tmp.unlink()
    atomic_write_text(out_dir / "skipped_utts.txt", "".join(f"{k} {r}\n" for k, r in sorted(skipped.items())))
    write_dump_info(out_dir, upstream=str(upstream), layers=chosen, num_hidden_states=count,
                    hidden_size=frozen.hidden_size, data_dir=str(data_dir), num_utterances=dumped,
                    data_sha256=data_fingerprint(data_dir))
    seconds = time.perf_counter() - started
    print(f"dump_features: {dumped} utterances ({total:.1f} s of audio) in {seconds:.1f} s "
          f"({total / max(seconds, 1e-9):.1f} audio-s/s)", file=sys.stderr)
    return DumpResult(out_dir, dumped, sorted(skipped))
