"""Mini RIRS_NOISES: image-source room impulse responses (pyroomacoustics) in the real layout.

``<out>/RIRS_NOISES/simulated_rirs/{smallroom,mediumroom,largeroom}/RoomNNN/RoomNNN-NNNNN.wav``
and one ``rir_list`` per room size with lines of the real format,
``--rir-id small-Room001-00001 --room-id small-Room001 --rt-60 0.412 RIRS_NOISES/simulated_rirs/...``.
Each room is a shoebox of random size (small: 2.5-10 m, medium: 10-30 m, large: 30-50 m
across) whose wall absorption is set (Sabine) for a random target RT60; one source and
several receivers give one RIR each. The RT60 written is the one *measured* on each RIR
(T30 of its Schroeder decay), which is what the RIR really has.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

from .build import build_once, shard_seeds
from .engine import TaskResult, run_tasks, write_audio
from .voices import SAMPLE_RATE

SIZES = {
    # name: (length/width range m, height range m, target RT60 range s)
    "small": ((2.5, 10.0), (2.2, 3.5), (0.2, 0.6)),
    "medium": ((10.0, 30.0), (2.5, 5.0), (0.4, 0.9)),
    "large": ((30.0, 50.0), (3.0, 8.0), (0.6, 1.2)),
}


@dataclasses.dataclass
class MiniRirsConfig:
    rooms_per_size: int = 4
    rirs_per_room: int = 4
    max_order: int = 24   # image-source reflection order cap (the Sabine order of big rooms is costly)


def trim_tail(rir: np.ndarray, floor_db: float = -60.0) -> np.ndarray:
    """Cut the RIR where the energy still to come falls below ``floor_db`` of the total."""
    energy = np.cumsum(rir[::-1] ** 2)[::-1]
    below = np.nonzero(energy < energy[0] * 10 ** (floor_db / 10))[0]
    return rir[:below[0]] if len(below) else rir


def schroeder_rt60(rir: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    """RT60 from the -5..-35 dB part of the Schroeder decay (T30), extrapolated to 60 dB."""
    energy = np.cumsum(rir[::-1].astype(np.float64) ** 2)[::-1]
    decay = 10 * np.log10(energy / energy[0] + 1e-30)
    start = int(np.argmax(decay <= -5.0))
    stop = int(np.argmax(decay <= -35.0))
    if stop <= start:
        stop = int(np.argmax(decay <= -20.0))
    slope = np.polyfit(np.arange(start, stop) / sample_rate, decay[start:stop], 1)[0]
    return float(-60.0 / slope)


def _positions(rng: np.random.Generator, dims: np.ndarray, count: int) -> np.ndarray:
    """``count`` points >= 0.5 m from the walls and >= 1 m from each other (best effort)."""
    points: List[np.ndarray] = []
    for _ in range(200 * count):
        point = rng.uniform(0.5, dims - 0.5)
        if all(np.linalg.norm(point - p) >= 1.0 for p in points):
            points.append(point)
        if len(points) == count:
            break
    while len(points) < count:
        points.append(rng.uniform(0.5, dims - 0.5))
    return np.stack(points)


def run_room(size: str, room_number: int, count: int, max_order: int, root: str, seed: int) -> TaskResult:
    """Simulate one room into ``root`` (the RIRS_NOISES dir); value: list of (rir_id, room_id, rt60, list path)."""
    import pyroomacoustics as pra

    rng = np.random.default_rng(seed)
    (lo, hi), (h_lo, h_hi), (rt_lo, rt_hi) = SIZES[size]
    dims = np.array([rng.uniform(lo, hi), rng.uniform(lo, hi), rng.uniform(h_lo, h_hi)])
    target_rt60 = rng.uniform(rt_lo, rt_hi)
    try:
        absorption, sabine_order = pra.inverse_sabine(target_rt60, dims)
    except ValueError:  # the room is too large for so short a reverberation: make the walls absorb
        absorption, sabine_order = 0.95, 8
    room = pra.ShoeBox(dims, fs=SAMPLE_RATE, materials=pra.Material(float(absorption)),
                       max_order=int(min(sabine_order, max_order)), air_absorption=True)
    points = _positions(rng, dims, count + 1)
    room.add_source(points[0])
    room.add_microphone_array(points[1:].T)
    room.compute_rir()
    room_name = f"Room{room_number:03d}"
    rows = []
    seconds = 0.0
    for index in range(count):
        rir = trim_tail(np.asarray(room.rir[index][0], dtype=np.float64))
        rir = (0.9 * rir / np.max(np.abs(rir))).astype(np.float32)
        relative = f"simulated_rirs/{size}room/{room_name}/{room_name}-{index + 1:05d}.wav"
        write_audio(str(Path(root) / relative), rir)
        # rir_list paths are relative to the directory that holds RIRS_NOISES
        rows.append((f"{size}-{room_name}-{index + 1:05d}", f"{size}-{room_name}", schroeder_rt60(rir),
                     f"RIRS_NOISES/{relative}"))
        seconds += len(rir) / SAMPLE_RATE
    return TaskResult(seconds, rows)


def make_mini_rirs(out_root: Path, config: MiniRirsConfig, *, seed: int = 0, nj: int = 2) -> Dict[str, Any]:
    """Build (or keep) ``out_root/RIRS_NOISES``; returns its marker (settings, produced, skipped)."""
    settings = {"seed": seed, **dataclasses.asdict(config)}
    return build_once(Path(out_root), "RIRS_NOISES", settings, lambda tmp: _build(tmp, config, seed, nj))


def _build(root: Path, config: MiniRirsConfig, seed: int, nj: int) -> Dict[str, Any]:
    rng = np.random.default_rng([seed, 4])
    tasks: List[Tuple[str, tuple]] = []
    names = []
    for size in SIZES:
        for room_number, room_seed in enumerate(shard_seeds(rng, config.rooms_per_size), start=1):
            tasks.append((run_room, (size, room_number, config.rirs_per_room, config.max_order, str(root), room_seed)))
            names.append(size)
    results = run_tasks(tasks, nj=nj, desc="mini RIRS_NOISES")
    lists: Dict[str, List[str]] = {size: [] for size in SIZES}
    rt60s: Dict[str, List[float]] = {size: [] for size in SIZES}
    for size, result in zip(names, results):
        for rir_id, room_id, rt60, relative in result.value:
            lists[size].append(f"--rir-id {rir_id} --room-id {room_id} --rt-60 {rt60:.3f} {relative}\n")
            rt60s[size].append(rt60)
    for size in SIZES:
        (root / "simulated_rirs" / f"{size}room" / "rir_list").write_text("".join(lists[size]), encoding="utf-8")
    (root / "README").write_text("Mini RIRS_NOISES: room impulse responses simulated by speechdistill with\n"
                                 "pyroomacoustics (image source) in the layout of openslr.org/28.\n", encoding="utf-8")
    return {"rirs": {size: len(v) for size, v in lists.items()},
            "mean_rt60": {size: round(float(np.mean(v)), 3) for size, v in rt60s.items()}}
