"""k-means in torch for HuBERT-style discrete targets (MFCC frames, later encoder features).

* Initialisation: greedy k-means++ (each new centre is the best of ``2 + ln k`` candidates drawn
  with probability ∝ squared distance to the nearest chosen centre), optionally on a random
  subsample of ``init_sample_size`` points.
* Training: full-batch Lloyd iterations (``batch_size=None``: assignment, then every centre moves
  to the mean of its points; inertia never increases) or mini-batch k-means (Sculley 2010, as
  HuBERT used through scikit-learn's MiniBatchKMeans: each step draws ``batch_size`` points and
  moves each centre to the running mean of all points ever assigned to it).
* An empty cluster in a Lloyd step is re-seeded at the point farthest from its centre.
* Everything is seeded (``torch.Generator``); inertia = Σ squared distance of every point to its
  nearest centre, over the training data.
* Distances are computed in chunks of ``chunk_size`` points, so memory is ``chunk_size × k``.
* Centroids are saved as ``.npy`` or ``.safetensors`` (key ``centroids``), written to a temporary
  name and renamed.
"""
from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np
import torch
from tqdm import tqdm

ArrayLike = Union[np.ndarray, torch.Tensor]
PathLike = Union[str, os.PathLike]
CENTROIDS_KEY = "centroids"


class KMeansError(ValueError):
    """Bad k-means input or centroid file; the message names the value or file and the fix."""


@dataclasses.dataclass
class KMeansResult:
    """Outcome of :func:`fit_kmeans`.

    Attributes:
        centroids: ``[k, D]`` float32.
        inertia: Σ over the training points of the squared distance to the nearest centroid.
        inertia_history: Lloyd: full-data inertia at each assignment step, ending with the final
            inertia (non-increasing). Mini-batch: mean per-point inertia of each step's batch.
        iterations: Lloyd iterations or mini-batch steps run.
        converged: Lloyd only: assignments stopped changing or centres moved less than the tolerance.
    """

    centroids: torch.Tensor
    inertia: float
    inertia_history: List[float]
    iterations: int
    converged: bool


def _as_points(points: ArrayLike, device: Optional[Union[str, torch.device]], where: str) -> torch.Tensor:
    tensor = torch.as_tensor(points)
    if tensor.dim() != 2 or tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise KMeansError(f"{where}: points must be a non-empty [N, D] array, found shape {tuple(tensor.shape)}")
    if not torch.is_floating_point(tensor):
        tensor = tensor.float()
    tensor = tensor.to(device=device if device is not None else tensor.device, dtype=torch.float32)
    if not bool(torch.isfinite(tensor).all()):
        raise KMeansError(f"{where}: points contain NaN or inf; drop or fix those frames first")
    return tensor


def squared_distances(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """``[n, D]`` × ``[k, D]`` -> ``[n, k]`` squared Euclidean distances (clamped at 0)."""
    cross = torch.matmul(points, centroids.T)
    distances = points.pow(2).sum(1, keepdim=True) - 2.0 * cross + centroids.pow(2).sum(1)[None, :]
    return distances.clamp_min(0.0)


def assign_labels(points: ArrayLike, centroids: ArrayLike, *, chunk_size: int = 65536,
                  device: Optional[Union[str, torch.device]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of every point, in chunks.

    Args:
        points: ``[N, D]``; centroids: ``[k, D]``.
    Returns:
        ``(labels [N] int64, squared_distance [N] float32)``.
    """
    points = _as_points(points, device, "assign_labels")
    centroids = torch.as_tensor(centroids).to(device=points.device, dtype=torch.float32)
    if centroids.dim() != 2 or centroids.shape[1] != points.shape[1]:
        raise KMeansError(f"assign_labels: centroids {tuple(centroids.shape)} do not match points of dimension "
                          f"{points.shape[1]}")
    labels = torch.empty(points.shape[0], dtype=torch.int64, device=points.device)
    nearest = torch.empty(points.shape[0], dtype=torch.float32, device=points.device)
    for start in range(0, points.shape[0], chunk_size):
        chunk = points[start:start + chunk_size]
        chunk_labels = squared_distances(chunk, centroids).argmin(dim=1)
        labels[start:start + chunk_size] = chunk_labels
        # The expanded form ‖x‖² − 2x·c + ‖c‖² cancels badly far from the origin; the reported
        # distance is recomputed directly from the difference.
        nearest[start:start + chunk_size] = (chunk - centroids[chunk_labels]).pow(2).sum(1)
    return labels, nearest


def compute_inertia(points: ArrayLike, centroids: ArrayLike, *, chunk_size: int = 65536) -> float:
    """Σ squared distance of each point to its nearest centroid (accumulated in float64)."""
    _, nearest = assign_labels(points, centroids, chunk_size=chunk_size)
    return float(nearest.double().sum())


def _sample_proportional(weights: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` indices drawn with probability ∝ ``weights`` (works beyond multinomial's 2^24 limit)."""
    cumulative = weights.double().cumsum(0)
    total = float(cumulative[-1])
    if total <= 0.0:  # every point already coincides with a centre: any choice is as good
        return torch.randint(weights.shape[0], (count,), generator=generator).to(weights.device)
    uniform = torch.rand(count, generator=generator, dtype=torch.float64).to(weights.device) * total
    return torch.searchsorted(cumulative, uniform, right=True).clamp_max(weights.shape[0] - 1)


def kmeans_plus_plus(points: ArrayLike, k: int, *, seed: int = 0, local_trials: Optional[int] = None,
                     chunk_size: int = 65536) -> torch.Tensor:
    """Greedy k-means++ seeding: ``[N, D]`` -> ``[k, D]`` initial centroids."""
    points = _as_points(points, None, "kmeans_plus_plus")
    if not 1 <= k <= points.shape[0]:
        raise KMeansError(f"kmeans_plus_plus: k={k} must be in [1, number of points = {points.shape[0]}]")
    generator = torch.Generator().manual_seed(seed)
    trials = local_trials if local_trials is not None else 2 + int(math.log(k))
    first = int(torch.randint(points.shape[0], (1,), generator=generator))
    chosen = [first]
    closest = _min_distance_to(points, points[first:first + 1], chunk_size)
    for _ in range(1, k):
        candidates = _sample_proportional(closest, trials, generator)
        best_potential, best_candidate, best_closest = None, None, None
        for candidate in candidates.tolist():
            updated = torch.minimum(closest, _min_distance_to(points, points[candidate:candidate + 1], chunk_size))
            potential = float(updated.double().sum())
            if best_potential is None or potential < best_potential:
                best_potential, best_candidate, best_closest = potential, candidate, updated
        chosen.append(best_candidate)
        closest = best_closest
    return points[chosen].clone()


def _min_distance_to(points: torch.Tensor, centroids: torch.Tensor, chunk_size: int) -> torch.Tensor:
    out = torch.empty(points.shape[0], dtype=torch.float32, device=points.device)
    for start in range(0, points.shape[0], chunk_size):
        out[start:start + chunk_size] = squared_distances(points[start:start + chunk_size], centroids).min(dim=1).values
    return out


def fit_kmeans(points: ArrayLike, k: int, *, max_iterations: int = 100, batch_size: Optional[int] = None,
               seed: int = 0, tolerance: float = 1e-4, init_sample_size: Optional[int] = None,
               chunk_size: int = 65536, device: Optional[Union[str, torch.device]] = None,
               progress: bool = False) -> KMeansResult:
    """Cluster ``points`` (``[N, D]``) into ``k`` clusters.

    Args:
        k: number of clusters (HuBERT: 100 on MFCCs, 500 on layer-6 features).
        max_iterations: Lloyd iterations, or mini-batch steps when ``batch_size`` is given.
        batch_size: ``None`` = full-batch Lloyd; an integer = mini-batch k-means with that batch.
        seed: seeds initialisation and mini-batch sampling.
        tolerance: Lloyd stops when the summed squared centre shift ≤ tolerance × mean per-dimension
            variance of the data (scikit-learn's rule), or when no assignment changes.
        init_sample_size: run k-means++ on this many random points (``None`` = all).
        progress: show a tqdm bar with points/s and the current inertia.
    Returns:
        :class:`KMeansResult`.
    """
    points = _as_points(points, device, "fit_kmeans")
    count = points.shape[0]
    if not 1 <= k <= count:
        raise KMeansError(f"fit_kmeans: k={k} must be in [1, number of points = {count}]")
    if max_iterations < 1:
        raise KMeansError(f"fit_kmeans: max_iterations must be >= 1, found {max_iterations}")
    if batch_size is not None and batch_size < 1:
        raise KMeansError(f"fit_kmeans: batch_size must be >= 1 or None, found {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    init_points = points
    if init_sample_size is not None and init_sample_size < count:
        if init_sample_size < k:
            raise KMeansError(f"fit_kmeans: init_sample_size={init_sample_size} must be >= k={k}")
        subset = torch.randperm(count, generator=generator)[:init_sample_size].to(points.device)
        init_points = points[subset]
    centroids = kmeans_plus_plus(init_points, k, seed=seed, chunk_size=chunk_size).to(points.device)
    if batch_size is None:
        return _lloyd(points, centroids, max_iterations, tolerance, chunk_size, progress)
    return _mini_batch(points, centroids, max_iterations, batch_size, generator, chunk_size, progress)


def _lloyd(points: torch.Tensor, centroids: torch.Tensor, max_iterations: int, tolerance: float,
           chunk_size: int, progress: bool) -> KMeansResult:
    k = centroids.shape[0]
    threshold = tolerance * float(points.double().var(dim=0, unbiased=False).mean())
    history: List[float] = []
    previous_labels: Optional[torch.Tensor] = None
    converged = False
    moved_since_assignment = False
    iterations = 0
    bar = tqdm(total=max_iterations * points.shape[0], unit="pt", unit_scale=True, desc="k-means (Lloyd)",
               disable=not progress)
    for iterations in range(1, max_iterations + 1):
        labels, nearest = assign_labels(points, centroids, chunk_size=chunk_size)
        history.append(float(nearest.double().sum()))
        moved_since_assignment = False
        bar.update(points.shape[0])
        bar.set_postfix(inertia=f"{history[-1]:.5g}")
        if previous_labels is not None and bool((labels == previous_labels).all()):
            converged = True
            break
        previous_labels = labels
        sums = torch.zeros(k, points.shape[1], dtype=torch.float64, device=points.device)
        sums.index_add_(0, labels, points.double())
        sizes = torch.bincount(labels, minlength=k)
        updated = (sums / sizes.clamp_min(1)[:, None]).float()
        empty = torch.nonzero(sizes == 0).flatten().tolist()
        if empty:
            # Re-seed each empty cluster at the point currently worst served; it then costs 0.
            farthest = torch.argsort(nearest, descending=True)[:len(empty)]
            updated[empty] = points[farthest]
        shift = float((updated - centroids).double().pow(2).sum())
        centroids = updated
        moved_since_assignment = True
        if shift <= threshold and not empty:
            converged = True
            break
    bar.close()
    final = compute_inertia(points, centroids, chunk_size=chunk_size)
    if moved_since_assignment:
        history.append(final)
    return KMeansResult(centroids=centroids, inertia=final, inertia_history=history, iterations=iterations,
                        converged=converged)


def _mini_batch(points: torch.Tensor, centroids: torch.Tensor, steps: int, batch_size: int,
                generator: torch.Generator, chunk_size: int, progress: bool) -> KMeansResult:
    k = centroids.shape[0]
    counts = torch.zeros(k, dtype=torch.float64, device=points.device)
    centroids = centroids.double()
    history: List[float] = []
    bar = tqdm(total=steps * batch_size, unit="pt", unit_scale=True, desc="k-means (mini-batch)",
               disable=not progress)
    for _ in range(steps):
        batch = points[torch.randint(points.shape[0], (batch_size,), generator=generator).to(points.device)]
        labels, nearest = assign_labels(batch, centroids.float(), chunk_size=chunk_size)
        history.append(float(nearest.double().mean()))
        sums = torch.zeros_like(centroids).index_add_(0, labels, batch.double())
        batch_counts = torch.bincount(labels, minlength=k).double()
        new_counts = counts + batch_counts
        touched = batch_counts > 0
        # Running mean of every point ever assigned to the centre: learning rate 1 / count.
        centroids[touched] = (centroids[touched] * counts[touched, None] + sums[touched]) / new_counts[touched, None]
        counts = new_counts
        bar.update(batch_size)
        bar.set_postfix(batch_inertia=f"{history[-1]:.4g}")
    bar.close()
    centroids = centroids.float()
    return KMeansResult(centroids=centroids, inertia=compute_inertia(points, centroids, chunk_size=chunk_size),
                        inertia_history=history, iterations=steps, converged=False)


def save_centroids(path: PathLike, centroids: ArrayLike) -> None:
    """Write ``[k, D]`` centroids to ``.npy`` or ``.safetensors`` (temporary name, then rename)."""
    path = Path(path)
    array = torch.as_tensor(centroids).detach().to("cpu", torch.float32).contiguous()
    if array.dim() != 2:
        raise KMeansError(f"{path}: centroids must be [k, D], found shape {tuple(array.shape)}")
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".safetensors"):
        raise KMeansError(f"{path}: unsupported centroid file type '{suffix}'; name it *.npy or *.safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            if suffix == ".npy":
                np.save(stream, array.numpy())
            else:
                from safetensors.torch import save as safetensors_bytes
                stream.write(safetensors_bytes({CENTROIDS_KEY: array}))
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def load_centroids(path: PathLike) -> torch.Tensor:
    """Read centroids written by :func:`save_centroids` (or any ``[k, D]`` float array): ``[k, D]`` float32."""
    path = Path(path)
    if not path.is_file():
        raise KMeansError(f"{path}: centroid file not found; run the k-means stage first")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            array = torch.from_numpy(np.load(path, allow_pickle=False))
        elif suffix == ".safetensors":
            from safetensors.torch import load_file
            tensors = load_file(str(path))
            if CENTROIDS_KEY not in tensors:
                raise KMeansError(f"{path}: no '{CENTROIDS_KEY}' tensor (found {sorted(tensors)}); "
                                  "write the file with save_centroids")
            array = tensors[CENTROIDS_KEY]
        else:
            raise KMeansError(f"{path}: unsupported centroid file type '{suffix}'; use *.npy or *.safetensors")
    except KMeansError:
        raise
    except Exception as error:  # corrupt or truncated file
        raise KMeansError(f"{path}: cannot read centroids ({error}); re-run the k-means stage") from None
    if array.dim() != 2 or not torch.is_floating_point(array):
        raise KMeansError(f"{path}: centroids must be a float [k, D] array, found {array.dtype} {tuple(array.shape)}")
    if not bool(torch.isfinite(array).all()):
        raise KMeansError(f"{path}: centroids contain NaN or inf; re-run the k-means stage")
    return array.float()
