"""Speaker-verification scoring back-ends: cosine scoring, mean subtraction, S-norm/AS-norm.

Embeddings are read from kaldiio ``xvector.scp`` files. An entry is either a vector ``[D]``
(the full-utterance embedding) or a matrix ``[1 + S, D]`` for test-time augmentation (TTA):
row 0 is the full-utterance embedding, rows 1..S the embeddings of S fixed-length segments.

Scores (specs/methods/06_os_kdft.md §4, conventions §4.3-4.4):

* plain: cosine between the two full-utterance embeddings;
* TTA (both sides have segments): the mean of the full-utterance cosine and the mean cosine
  over all S_e x S_t segment pairs. The latter equals the dot product of the two mean
  L2-normalised segment embeddings, which is how it is computed.

Mean subtraction removes the training-set mean embedding from every row (enrollment, test
and cohort) before any cosine, as WeSpeaker does with ``mean_vec.npy``.

Adaptive S-norm: the cohort is the per-speaker mean of the training embeddings. For an
enrollment and a test utterance the cosines of its full-utterance embedding with every
cohort vector are computed, the ``top_n`` highest kept, and their mean and *population*
standard deviation taken; the normalised score is ½ [(s − μ_e)/σ_e + (s − μ_t)/σ_t].
S-norm is the same with the whole cohort.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

PathLike = Union[str, Path]


class EmbeddingError(ValueError):
    """Embeddings that are missing or do not fit together; the message names the file and key."""


def _key_examples(keys: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (", ..." if len(keys) > limit else "")


def open_embedding_scp(path: PathLike) -> Mapping[str, np.ndarray]:
    """A lazy ``key -> array`` mapping over a kaldiio scp (nothing is read yet)."""
    import kaldiio

    path = Path(path)
    if not path.is_file():
        raise EmbeddingError(f"{path}: embedding scp not found. Fix: run the embedding extraction stage first")
    try:
        return kaldiio.load_scp(str(path))
    except Exception as exc:  # kaldiio raises bare Exceptions on malformed lines
        raise EmbeddingError(f"{path}: cannot parse as a Kaldi scp ({exc})") from None


def check_keys(needed: Iterable[str], available: Mapping, source: PathLike, what: str) -> None:
    """Raise one error counting every key of ``needed`` that ``available`` lacks."""
    needed = list(dict.fromkeys(needed))
    missing = [key for key in needed if key not in available]
    if missing:
        raise EmbeddingError(f"{source}: {len(missing)} of {len(needed)} {what} have no embedding "
                             f"(e.g. {_key_examples(missing)}). Fix: extract embeddings for every utterance of the "
                             "data set the list was made from (check that the utterance ids use the same form)")


def load_embeddings(path: PathLike, keys: Optional[Iterable[str]] = None, progress: bool = False
                    ) -> Dict[str, np.ndarray]:
    """Read embeddings as float64 ``[1 + S, D]`` matrices (a vector becomes one row).

    With ``keys``, every key must be present (one error counts all missing ones) and only
    those are read; otherwise the whole scp is read.
    """
    table = open_embedding_scp(path)
    if keys is None:
        keys = list(table.keys())
    else:
        keys = list(dict.fromkeys(keys))
        check_keys(keys, table, path, "utterances")
    iterator: Iterable[str] = keys
    if progress:
        from tqdm import tqdm

        iterator = tqdm(keys, desc=f"reading {Path(path).name}", unit="utt", mininterval=1.0)
    out: Dict[str, np.ndarray] = {}
    dim: Optional[int] = None
    for key in iterator:
        value = np.asarray(table[key], dtype=np.float64)
        if value.ndim == 1:
            value = value[None, :]
        if value.ndim != 2 or value.shape[0] == 0:
            raise EmbeddingError(f"{path}: key '{key}': expected a vector [D] or a matrix [1+S, D], found shape "
                                 f"{tuple(value.shape)}")
        if dim is None:
            dim = value.shape[1]
        elif value.shape[1] != dim:
            raise EmbeddingError(f"{path}: key '{key}': dimension {value.shape[1]} differs from {dim} of the other "
                                 "embeddings. Fix: extract all embeddings with the same model")
        if not np.all(np.isfinite(value)):
            raise EmbeddingError(f"{path}: key '{key}': the embedding contains NaN or infinite values")
        out[key] = value
    return out


def mean_embedding(embeddings: Mapping[str, np.ndarray]) -> np.ndarray:
    """Mean of the full-utterance rows: ``[D]``."""
    if not embeddings:
        raise EmbeddingError("cannot take the mean of an empty embedding set")
    return np.mean(np.stack([value[0] for value in embeddings.values()]), axis=0)


def speaker_mean_embeddings(embeddings: Mapping[str, np.ndarray], utt2spk: Mapping[str, str]
                            ) -> Tuple[List[str], np.ndarray, List[str]]:
    """Per-speaker means of full-utterance rows, for the utterances in both inputs.

    Returns (speakers in sorted order, ``[num_speakers, D]``, utt2spk keys without an
    embedding -- reported by the caller, never silently dropped).
    """
    sums: Dict[str, np.ndarray] = {}
    counts: Dict[str, int] = {}
    without_embedding = []
    for utt, spk in utt2spk.items():
        if utt not in embeddings:
            without_embedding.append(utt)
            continue
        row = embeddings[utt][0]
        sums[spk] = sums[spk] + row if spk in sums else row.copy()
        counts[spk] = counts.get(spk, 0) + 1
    speakers = sorted(sums, key=lambda s: s.encode("utf-8"))
    if not speakers:
        raise EmbeddingError("no utterance of utt2spk has a training embedding, so the cohort is empty. Fix: pass the "
                             "xvector.scp and utt2spk of the same training set")
    matrix = np.stack([sums[s] / counts[s] for s in speakers])
    return speakers, matrix, without_embedding


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)


@dataclasses.dataclass
class PreparedEmbeddings:
    """Per utterance: unit full-utterance row ``full [N, D]``, the mean of its unit segment rows
    ``segments [N, D]`` (zeros without segments), ``has_segments [N]`` and the norm of the
    (mean-subtracted) full row ``magnitude [N]``."""

    index: Dict[str, int]
    full: np.ndarray
    segments: np.ndarray
    has_segments: np.ndarray
    magnitude: np.ndarray


def prepare(embeddings: Mapping[str, np.ndarray], mean: Optional[np.ndarray] = None) -> PreparedEmbeddings:
    keys = list(embeddings)
    dim = next(iter(embeddings.values())).shape[1]
    full = np.empty((len(keys), dim))
    segments = np.zeros((len(keys), dim))
    has_segments = np.zeros(len(keys), dtype=bool)
    for row, key in enumerate(keys):
        value = embeddings[key] - mean if mean is not None else embeddings[key]
        full[row] = value[0]
        if value.shape[0] > 1:
            segments[row] = _unit_rows(value[1:]).mean(axis=0)
            has_segments[row] = True
    magnitude = np.linalg.norm(full, axis=1)
    return PreparedEmbeddings({k: i for i, k in enumerate(keys)}, _unit_rows(full), segments, has_segments, magnitude)


def cosine_scores(pairs: Sequence[Tuple[str, str]], prepared: PreparedEmbeddings) -> np.ndarray:
    """Scores ``[M]`` of (enroll, test) pairs: cosine, or the TTA mean when both have segments.

    A pair where one side has segments and the other not is an error: the two halves of the
    TTA score would be on different footings.
    """
    enroll = np.array([prepared.index[e] for e, _ in pairs], dtype=np.int64)
    test = np.array([prepared.index[t] for _, t in pairs], dtype=np.int64)
    full = np.sum(prepared.full[enroll] * prepared.full[test], axis=1)
    both = prepared.has_segments[enroll] & prepared.has_segments[test]
    mixed = prepared.has_segments[enroll] != prepared.has_segments[test]
    if np.any(mixed):
        first = int(np.flatnonzero(mixed)[0])
        raise EmbeddingError(f"trial '{pairs[first][0]} {pairs[first][1]}': one side has TTA segment embeddings and "
                             "the other has not. Fix: extract all embeddings with the same TTA setting")
    segment = np.sum(prepared.segments[enroll] * prepared.segments[test], axis=1)
    return np.where(both, 0.5 * (full + segment), full)


def cohort_statistics(queries: np.ndarray, cohort: np.ndarray, top_n: int, chunk: int = 1024
                      ) -> Tuple[np.ndarray, np.ndarray]:
    """Mean and population std of the ``top_n`` highest cosines of each query with the cohort.

    queries: ``[K, D]``; cohort: ``[S, D]`` (neither needs to be normalised). Returns two ``[K]``.
    """
    if not 1 <= top_n <= cohort.shape[0]:
        raise ValueError(f"top_n must lie in 1..{cohort.shape[0]} (the cohort size), got {top_n}")
    queries, cohort = _unit_rows(queries), _unit_rows(cohort)
    means, stds = np.empty(queries.shape[0]), np.empty(queries.shape[0])
    for start in range(0, queries.shape[0], chunk):
        similarity = queries[start:start + chunk] @ cohort.T
        top = -np.partition(-similarity, top_n - 1, axis=1)[:, :top_n]
        means[start:start + chunk] = top.mean(axis=1)
        stds[start:start + chunk] = top.std(axis=1)
    return means, stds


@dataclasses.dataclass
class NormalisedScores:
    """AS-norm output per trial: normalised score, embedding magnitudes, cohort means ``[M]``."""

    scores: np.ndarray
    enroll_magnitude: np.ndarray
    test_magnitude: np.ndarray
    enroll_cohort_mean: np.ndarray
    test_cohort_mean: np.ndarray


def adaptive_snorm(pairs: Sequence[Tuple[str, str]], raw_scores: np.ndarray, prepared: PreparedEmbeddings,
                   cohort: np.ndarray, top_n: int) -> NormalisedScores:
    """Two-sided adaptive S-norm of ``raw_scores`` (``cohort`` already mean-subtracted)."""
    means, stds = cohort_statistics(prepared.full, cohort, top_n)
    enroll = np.array([prepared.index[e] for e, _ in pairs], dtype=np.int64)
    test = np.array([prepared.index[t] for _, t in pairs], dtype=np.int64)
    floor = 1e-12  # a cohort of identical vectors has zero spread
    normalised = 0.5 * ((raw_scores - means[enroll]) / np.maximum(stds[enroll], floor)
                        + (raw_scores - means[test]) / np.maximum(stds[test], floor))
    return NormalisedScores(normalised, prepared.magnitude[enroll], prepared.magnitude[test], means[enroll],
                            means[test])
