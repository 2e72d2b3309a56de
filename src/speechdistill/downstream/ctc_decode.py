"""CTC decoding: batched greedy (best path) and prefix beam search.

Both take log-probabilities ``[B, N, V]`` with lengths ``[B]`` (frames) and return, per
utterance, the list of token ids (blank removed, repeats merged as CTC defines: a token
repeated without a blank between is one token).

Prefix beam search keeps, for each labelling prefix, the log-probability of all alignments
that produce it and end in a blank (``p_b``) or in its last token (``p_nb``). Per frame, with
token log-probability ``y``:

* a blank keeps the prefix: ``p_b'(l) += p_b(l) + y_blank`` and ``p_nb(l) + y_blank``;
* the prefix's own last token ``c`` repeated keeps it: ``p_nb'(l) += p_nb(l) + y_c``;
* a token ``c`` extends it: ``p_nb'(l+c) += p_b(l) + y_c`` if ``c`` is the last token of
  ``l`` (a repeat needs a blank between), else ``(p_b(l) ⊕ p_nb(l)) + y_c``;

then the ``beam_size`` prefixes with the highest ``p_b ⊕ p_nb`` survive (⊕ = log-add).
Without pruning (beam at least the number of prefixes, every token a candidate) the result
is the exact most probable labelling.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

NEG_INF = -math.inf


def _check(log_probs: torch.Tensor, lengths: torch.Tensor) -> None:
    if log_probs.dim() != 3:
        raise ValueError(f"expected log-probabilities [batch, frame, vocab], found shape {tuple(log_probs.shape)}")
    if lengths.dim() != 1 or lengths.shape[0] != log_probs.shape[0]:
        raise ValueError(f"expected lengths [{log_probs.shape[0]}], found shape {tuple(lengths.shape)}")
    if int(lengths.max()) > log_probs.shape[1] or int(lengths.min()) < 0:
        raise ValueError(f"lengths must lie in 0..{log_probs.shape[1]} frames, found {lengths.tolist()}")


def greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor, blank: int = 0) -> List[List[int]]:
    """Best-path decoding: argmax per frame, merge repeats, drop blanks.

    log_probs: ``[B, N, V]`` (any monotone scores work); lengths: ``[B]`` frames.
    """
    _check(log_probs, lengths)
    best = log_probs.argmax(dim=-1)  # [B, N]
    previous = torch.nn.functional.pad(best, (1, 0), value=-1)[:, :-1]
    frames = torch.arange(best.shape[1], device=best.device)[None, :]
    keep = (best != blank) & (best != previous) & (frames < lengths.to(best.device)[:, None])
    best, keep = best.cpu(), keep.cpu()
    return [best[b][keep[b]].tolist() for b in range(best.shape[0])]


def _log_add(a: float, b: float) -> float:
    if a == NEG_INF:
        return b
    if b == NEG_INF:
        return a
    if a > b:
        return a + math.log1p(math.exp(b - a))
    return b + math.log1p(math.exp(a - b))


def prefix_beam_search_one(log_probs: np.ndarray, beam_size: int = 10, blank: int = 0,
                           candidates_per_frame: Optional[int] = None) -> List[Tuple[List[int], float]]:
    """Prefix beam search over one utterance.

    log_probs: ``[T, V]`` frame log-probabilities. ``candidates_per_frame``: extend prefixes
    only with that many most probable non-blank tokens of each frame (None: ``beam_size``;
    the vocabulary size or more: every token, no pruning); blank and each prefix's own last
    token are always considered. Returns up to ``beam_size`` ``(token ids, log-probability)``
    pairs, best first.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be at least 1, got {beam_size}")
    if candidates_per_frame is None:
        candidates_per_frame = beam_size
    if candidates_per_frame < 1:
        raise ValueError(f"candidates_per_frame must be at least 1, got {candidates_per_frame}")
    log_probs = np.asarray(log_probs, dtype=np.float64)
    num_frames, vocab = log_probs.shape
    beams: Dict[Tuple[int, ...], Tuple[float, float]] = {(): (0.0, NEG_INF)}
    non_blank = np.array([v for v in range(vocab) if v != blank], dtype=np.int64)
    for t in range(num_frames):
        frame = log_probs[t]
        if candidates_per_frame >= non_blank.size:
            candidates = non_blank
        else:
            scores = frame[non_blank]
            top = np.argpartition(-scores, candidates_per_frame - 1)[:candidates_per_frame]
            candidates = non_blank[top]
        candidate_scores = frame[candidates].tolist()
        candidates = candidates.tolist()
        blank_score = float(frame[blank])
        grown: Dict[Tuple[int, ...], List[float]] = {}

        def entry(prefix: Tuple[int, ...]) -> List[float]:
            slot = grown.get(prefix)
            if slot is None:
                slot = grown[prefix] = [NEG_INF, NEG_INF]
            return slot

        for prefix, (p_blank, p_token) in beams.items():
            total = _log_add(p_blank, p_token)
            same = entry(prefix)
            same[0] = _log_add(same[0], total + blank_score)
            last = prefix[-1] if prefix else None
            if last is not None:
                same[1] = _log_add(same[1], p_token + float(frame[last]))
            for token, score in zip(candidates, candidate_scores):
                extended = entry(prefix + (token,))
                source = p_blank if token == last else total
                extended[1] = _log_add(extended[1], source + score)
        # A repeat straight after a non-blank creates an extension with no probability yet.
        alive = [(prefix, scores) for prefix, scores in grown.items() if _log_add(*scores) > NEG_INF]
        if not alive:
            raise ValueError(f"frame {t}: every token has probability zero (log-probability -inf or NaN)")
        alive.sort(key=lambda item: (-_log_add(*item[1]), item[0]))
        beams = {prefix: (scores[0], scores[1]) for prefix, scores in alive[:beam_size]}
    results = [(list(prefix), _log_add(*scores)) for prefix, scores in beams.items()]
    results.sort(key=lambda item: -item[1])
    return results


def prefix_beam_search(log_probs: torch.Tensor, lengths: torch.Tensor, beam_size: int = 10, blank: int = 0,
                       candidates_per_frame: Optional[int] = None) -> List[List[int]]:
    """Best labelling per utterance by prefix beam search.

    log_probs: ``[B, N, V]`` log-probabilities; lengths: ``[B]`` frames.
    ``candidates_per_frame``: as in :func:`prefix_beam_search_one` (None: ``beam_size``).
    """
    _check(log_probs, lengths)
    array = log_probs.detach().float().cpu().numpy()
    out = []
    for b, length in enumerate(lengths.tolist()):
        nbest = prefix_beam_search_one(array[b, :length], beam_size, blank, candidates_per_frame)
        out.append(nbest[0][0])
    return out


def decode(log_probs: torch.Tensor, lengths: torch.Tensor, beam_size: int = 1, blank: int = 0) -> List[List[int]]:
    """Greedy for ``beam_size`` 1, prefix beam search otherwise."""
    if beam_size <= 1:
        return greedy_decode(log_probs, lengths, blank)
    return prefix_beam_search(log_probs, lengths, beam_size, blank)


__all__: Sequence[str] = ["decode", "greedy_decode", "prefix_beam_search", "prefix_beam_search_one"]
