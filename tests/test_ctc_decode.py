"""CTC decoding: greedy by hand, prefix beam search against brute-force enumeration of alignments."""
import itertools
import math

import numpy as np
import pytest
import torch

from speechdistill.downstream.ctc_decode import decode, greedy_decode, prefix_beam_search, prefix_beam_search_one


def collapse(path, blank=0):
    out, previous = [], None
    for token in path:
        if token != previous and token != blank:
            out.append(token)
        previous = token
    return tuple(out)


def brute_force_labelling_probs(log_probs, blank=0):
    """Sum the probability of every alignment (V^T of them) into its labelling."""
    num_frames, vocab = log_probs.shape
    totals = {}
    for path in itertools.product(range(vocab), repeat=num_frames):
        p = math.exp(sum(log_probs[t, v] for t, v in enumerate(path)))
        label = collapse(path, blank)
        totals[label] = totals.get(label, 0.0) + p
    return totals


def random_log_probs(rng, num_frames, vocab, sharpness=1.0):
    logits = sharpness * rng.standard_normal((num_frames, vocab))
    return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))


@pytest.mark.parametrize("num_frames,vocab,seed", [(3, 3, 0), (4, 3, 1), (5, 3, 2), (4, 4, 3), (6, 3, 4), (5, 4, 5)])
def test_exact_beam_equals_brute_force(num_frames, vocab, seed):
    rng = np.random.default_rng(seed)
    log_probs = random_log_probs(rng, num_frames, vocab, sharpness=1.5)
    truth = brute_force_labelling_probs(log_probs)
    assert sum(truth.values()) == pytest.approx(1.0)
    nbest = prefix_beam_search_one(log_probs, beam_size=10_000, candidates_per_frame=vocab)
    # every labelling comes back with its exact total probability
    assert len(nbest) == len(truth)
    for labels, log_p in nbest:
        assert math.exp(log_p) == pytest.approx(truth[tuple(labels)], rel=1e-9, abs=1e-15)
    best_label = max(truth, key=truth.get)
    assert tuple(nbest[0][0]) == best_label


def test_repeated_tokens_need_a_blank_between():
    # frames favour 1,1 then blank then 1: "1 1" (one token) vs "1 _ 1" (two tokens)
    probs = np.array([[0.05, 0.9, 0.05], [0.05, 0.9, 0.05], [0.9, 0.05, 0.05], [0.05, 0.9, 0.05]])
    log_probs = np.log(probs)
    truth = brute_force_labelling_probs(log_probs)
    nbest = prefix_beam_search_one(log_probs, beam_size=50, candidates_per_frame=3)
    assert nbest[0][0] == [1, 1] == list(max(truth, key=truth.get))
    assert math.exp(nbest[0][1]) == pytest.approx(truth[(1, 1)])
    assert math.exp(dict((tuple(k), v) for k, v in nbest)[(1,)]) == pytest.approx(truth[(1,)])


def test_beam_search_can_beat_greedy():
    # Best path is blank,blank (p .36) but the labelling "1" collects .64 over its alignments.
    probs = np.array([[0.6, 0.4, 0.0001], [0.6, 0.4, 0.0001]])
    probs /= probs.sum(axis=1, keepdims=True)
    log_probs = torch.from_numpy(np.log(probs))[None]
    lengths = torch.tensor([2])
    assert greedy_decode(log_probs, lengths) == [[]]
    assert prefix_beam_search(log_probs, lengths, beam_size=4) == [[1]]


def test_greedy_by_hand_with_lengths():
    best = torch.tensor([[1, 1, 0, 1, 2, 2, 0, 3], [2, 0, 2, 2, 1, 1, 1, 1]])
    log_probs = torch.nn.functional.one_hot(best, 4).float().log_softmax(-1) * 5
    lengths = torch.tensor([8, 5])
    assert greedy_decode(log_probs, lengths) == [[1, 1, 2, 3], [2, 2, 1]]
    assert greedy_decode(log_probs, torch.tensor([0, 1])) == [[], [2]]


def test_beam_one_equals_greedy_on_peaked_batches():
    rng = np.random.default_rng(9)
    batch, frames, vocab = 6, 40, 12
    best = rng.integers(0, vocab, size=(batch, frames))
    best[:, ::3] = 0  # plenty of blanks, and repeats elsewhere
    logits = rng.standard_normal((batch, frames, vocab)) * 0.5
    logits[np.arange(batch)[:, None], np.arange(frames)[None, :], best] += 6.0
    log_probs = torch.from_numpy(logits).log_softmax(-1).float()
    lengths = torch.tensor([40, 33, 1, 17, 40, 25])
    greedy = greedy_decode(log_probs, lengths)
    assert prefix_beam_search(log_probs, lengths, beam_size=1) == greedy
    assert decode(log_probs, lengths, beam_size=1) == greedy
    # on peaked inputs a wider (pruned) beam agrees too
    assert prefix_beam_search(log_probs, lengths, beam_size=5) == greedy


def test_pruned_beam_finds_exact_best_on_small_random_inputs():
    rng = np.random.default_rng(4)
    for _ in range(5):
        log_probs = random_log_probs(rng, 6, 4, sharpness=2.0)
        truth = brute_force_labelling_probs(log_probs)
        result = prefix_beam_search(torch.from_numpy(log_probs)[None], torch.tensor([6]), beam_size=16)
        assert tuple(result[0]) == max(truth, key=truth.get)


def test_shape_errors():
    with pytest.raises(ValueError, match=r"\[batch, frame, vocab\]"):
        greedy_decode(torch.zeros(3, 4), torch.tensor([3]))
    with pytest.raises(ValueError, match="lengths must lie"):
        prefix_beam_search(torch.zeros(1, 3, 4), torch.tensor([5]))
    with pytest.raises(ValueError, match="beam_size"):
        prefix_beam_search_one(np.zeros((2, 3)), beam_size=0)
