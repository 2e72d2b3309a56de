"""BiLSTM-CTC downstream, CTC loss with lengths, and SpecAugment masking."""
import itertools
import math

import pytest
import torch

from speechdistill.downstream.asr import BiLstmCtc, BiLstmCtcConfig, ctc_loss
from speechdistill.downstream.ctc_decode import greedy_decode
from speechdistill.downstream.specaugment import SpecAugment, SpecAugmentConfig



def collapse(path, blank=0):
    out, previous = [], None
    for token in path:
        if token != previous and token != blank:
            out.append(token)
        previous = token
    return tuple(out)


def test_default_sizes_and_output_shape():
    with torch.device("meta"):  # shapes only: skip initialising 40 M parameters
        model = BiLstmCtc(768, 32)
    assert model.lstm.hidden_size == 1024 and model.lstm.num_layers == 2 and model.lstm.bidirectional
    assert model.output.weight.shape == (32, 2048)
    assert model.projection is None and model.spec_augment is not None
    small = BiLstmCtc(10, 7, BiLstmCtcConfig(hidden_size=8, num_layers=1, projection_size=5, spec_augment=None))
    assert small.projection.weight.shape == (5, 10) and small.lstm.input_size == 5
    log_probs, lengths = small(torch.randn(3, 12, 10), torch.tensor([12, 4, 9]))
    assert log_probs.shape == (3, 12, 7) and lengths.tolist() == [12, 4, 9]
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(3, 12))


def test_padding_does_not_change_valid_outputs_in_eval():
    torch.manual_seed(0)
    model = BiLstmCtc(6, 5, BiLstmCtcConfig(hidden_size=8, num_layers=2)).eval()
    features = torch.randn(2, 15, 6)
    padded = features.clone()
    padded[1, 9:] = 50.0
    with torch.no_grad():
        batch, _ = model(padded, torch.tensor([15, 9]))
        alone, _ = model(features[1:, :9], torch.tensor([9]))
    torch.testing.assert_close(batch[1, :9], alone[0], atol=1e-5, rtol=1e-5)


def test_ctc_loss_equals_brute_force_sum_over_alignments():
    torch.manual_seed(1)
    log_probs = torch.randn(2, 4, 3).log_softmax(-1).double()
    lengths = torch.tensor([4, 3])
    targets = torch.tensor([[1, 1], [2, 0]])  # second utterance: one token (padding ignored)
    target_lengths = torch.tensor([2, 1])

    def negative_log_likelihood(b):
        total = 0.0
        frames = int(lengths[b])
        target = tuple(targets[b, : int(target_lengths[b])].tolist())
        for path in itertools.product(range(3), repeat=frames):
            if collapse(path) == target:
                total += math.exp(sum(log_probs[b, t, v].item() for t, v in enumerate(path)))
        return -math.log(total)

    nll = [negative_log_likelihood(0), negative_log_likelihood(1)]
    assert ctc_loss(log_probs, lengths, targets, target_lengths, reduction="sum").item() == pytest.approx(sum(nll))
    assert ctc_loss(log_probs, lengths, targets, target_lengths).item() == pytest.approx((nll[0] / 2 + nll[1] / 1) / 2)
    assert ctc_loss(log_probs, lengths, targets, target_lengths, reduction="mean_per_utterance").item() == \
        pytest.approx(sum(nll) / 2)
    # a target longer than the frames allow: zero loss, not infinity
    impossible = ctc_loss(log_probs[:1, :1], torch.tensor([1]), targets[:1], torch.tensor([2]), reduction="sum")
    assert impossible.item() == 0.0


def test_tiny_model_learns_to_transcribe_and_greedy_decodes_it():
    # Two "words" of features; each frame pattern marks a token. The model must learn the mapping.
    generator = torch.Generator().manual_seed(0)
    prototypes = torch.randn(5, 8, generator=generator) * 2  # index 0 = silence
    sequences = [[1, 2, 3], [3, 1], [4, 4, 2], [2]]

    def render(tokens):
        frames = []
        for token in tokens:
            frames += [prototypes[token]] * 3 + [prototypes[0]]
        return torch.stack(frames)

    feats = [render(s) for s in sequences]
    lengths = torch.tensor([f.shape[0] for f in feats])
    features = torch.zeros(len(feats), int(lengths.max()), 8)
    for i, f in enumerate(feats):
        features[i, : f.shape[0]] = f
    targets = torch.zeros(len(sequences), 3, dtype=torch.long)
    for i, s in enumerate(sequences):
        targets[i, : len(s)] = torch.tensor(s)
    target_lengths = torch.tensor([len(s) for s in sequences])

    torch.manual_seed(0)
    model = BiLstmCtc(8, 5, BiLstmCtcConfig(hidden_size=16, num_layers=1, dropout=0.0, spec_augment=None))
    optimiser = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(120):
        log_probs, out_lengths = model(features + 0.1 * torch.randn(features.shape, generator=generator), lengths)
        loss = ctc_loss(log_probs, out_lengths, targets, target_lengths)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    with torch.no_grad():
        log_probs, out_lengths = model(features, lengths)
    assert greedy_decode(log_probs, out_lengths) == sequences


def test_specaugment_masks_stay_inside_valid_frames_and_are_reproducible():
    augment = SpecAugment(SpecAugmentConfig(num_time_masks=2, max_time_mask_frames=4, num_feature_masks=1,
                                            max_feature_mask_dims=3))
    features = torch.ones(8, 20, 10)
    lengths = torch.tensor([20, 5, 12, 1, 20, 8, 16, 3])
    a = augment(features, lengths, generator=torch.Generator().manual_seed(1))
    b = augment(features, lengths, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    for i, n in enumerate(lengths.tolist()):
        zero_rows = (a[i] == 0).all(dim=1)
        zero_cols = (a[i] == 0).all(dim=0)
        assert not zero_rows[n:].any()  # padding frames are not time-masked
        assert int(zero_rows.sum()) <= 2 * 4
        assert int(zero_cols.sum()) <= 3
    assert (a == 0).any()
    augment.eval()
    assert augment(features, lengths) is features


def test_cpu_padded_bidirectional_lstm_equals_the_packed_one():
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    from speechdistill.downstream.asr import BiLstmCtc, BiLstmCtcConfig

    torch.manual_seed(0)
    model = BiLstmCtc(12, 7, BiLstmCtcConfig(hidden_size=16, num_layers=2, dropout=0.0, spec_augment=None)).eval()
    x = torch.randn(4, 23, 12)
    lengths = torch.tensor([23, 17, 5, 1])
    with torch.no_grad():
        ours = model._padded_bidirectional(x, lengths)
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        reference, _ = pad_packed_sequence(model.lstm(packed)[0], batch_first=True, total_length=23)
    valid = torch.arange(23)[None, :] < lengths[:, None]
    assert torch.allclose(ours[valid], reference[valid], atol=1e-6)
