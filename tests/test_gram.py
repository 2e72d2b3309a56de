"""STaR temporal Gram-matrix losses: hand-computed values, padding, reimplementation reproduction, chunking."""
import math

import pytest
import torch
import torch.nn.functional as F

from speechdistill.losses import LossInputError, LossTerm, evaluate_terms, frame_mask, gram_loss, gram_matrix


def one(rows):
    return torch.tensor([rows], dtype=torch.float32)  # [1, N, d]


# Student layers (d=2) and teacher layers (d=2), N=2 frames:
S0 = one([[1.0, 0.0], [0.0, 1.0]])   # G = I
S1 = one([[2.0, 0.0], [0.0, 0.0]])   # G = [[4, 0], [0, 0]]
T0 = one([[1.0, 1.0], [0.0, 1.0]])   # G = [[2, 1], [1, 1]]
T1 = one([[1.0, 0.0], [1.0, 0.0]])   # G = [[1, 1], [1, 1]]
ALL = torch.ones(1, 2, dtype=torch.bool)


def test_gram_matrix_by_hand():
    torch.testing.assert_close(gram_matrix(T0), one([[2.0, 1.0], [1.0, 1.0]]))
    # intra-layer: T0 T1ᵀ: row0 (1,1)·(1,0)=1, (1,1)·(1,0)=1 ; row1 (0,1)·(1,0)=0, 0
    torch.testing.assert_close(gram_matrix(T0, T1), one([[1.0, 1.0], [0.0, 0.0]]))


def test_layerwise_mse_by_hand():
    # layer 0: G_T - G_S = [[1, 1], [1, 0]] -> Σ² = 3 -> / N² = 0.75
    # layer 1: [[1, 1], [1, 1]] - [[4, 0], [0, 0]] = [[-3, 1], [1, 1]] -> Σ² = 12 -> 3.0
    assert gram_loss([S0], [T0], ALL).item() == pytest.approx(0.75)
    assert gram_loss([S0, S1], [T0, T1], ALL).item() == pytest.approx((0.75 + 3.0) / 2)
    assert gram_loss([S0, S1], [T0, T1], ALL, layer_reduction="sum").item() == pytest.approx(3.75)


def test_intra_layer_mse_by_hand():
    # Ǧ_S = S0 S1ᵀ = [[2, 0], [0, 0]] ; Ǧ_T = T0 T1ᵀ = [[1, 1], [0, 0]] ; diff [[-1, 1], [0, 0]] -> 2/4
    assert gram_loss([S0, S1], [T0, T1], ALL, intra=True).item() == pytest.approx(0.5)


def test_normalisations_by_hand():
    # dim: student G/2 = 0.5·I ; teacher (d=1) F=[[2],[1]] -> G = [[4, 2], [2, 1]] / 1
    # diff [[3.5, 2], [2, 0.5]] -> 12.25 + 4 + 4 + 0.25 = 20.5 -> /4 = 5.125
    teacher_1d = one([[2.0], [1.0]])
    assert gram_loss([S0], [teacher_1d], ALL, normalization="dim").item() == pytest.approx(5.125)
    # row: teacher rows -> (1/√2, 1/√2), (0, 1): G = [[1, 1/√2], [1/√2, 1]] ; diff off-diagonal 1/√2 -> Σ² = 1
    assert gram_loss([S0], [T0], ALL, normalization="row").item() == pytest.approx(0.25)
    # row normalisation makes the loss blind to per-frame scale
    assert gram_loss([3 * S0], [T0], ALL, normalization="row").item() == pytest.approx(0.25)


def test_kl_mode_by_hand():
    # student d=1, F=[[1],[0]]: G/√1 = [[1, 0], [0, 0]] -> rows softmax (e/(e+1), 1/(e+1)) and (½, ½)
    # teacher F = 0: rows (½, ½). KL(teacher‖student): row0 = ½ ln(½(e+1)/e) + ½ ln(½(e+1)), row1 = 0.
    # batchmean over B = 1.
    e = math.e
    expected = 0.5 * math.log(0.5 * (e + 1) / e) + 0.5 * math.log(0.5 * (e + 1))
    value = gram_loss([one([[1.0], [0.0]])], [one([[0.0], [0.0]])], ALL, loss="kl")
    assert value.item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.120115, rel=1e-4)


def ragged_batch(seed, lengths, frames, dims, layers):
    generator = torch.Generator().manual_seed(seed)
    valid = frame_mask(torch.tensor(lengths), frames)
    batch = []
    for _ in range(layers):
        tensor = torch.randn(len(lengths), frames, dims, generator=generator)
        tensor[~valid] = 1e3  # garbage padding
        batch.append(tensor)
    return batch, valid


@pytest.mark.parametrize("intra", [False, True])
def test_mse_with_padding_matches_per_utterance_reference(intra):
    lengths = [6, 3, 5]
    student, valid = ragged_batch(1, lengths, 6, 3, 3)
    teacher, _ = ragged_batch(2, lengths, 6, 5, 3)
    # independent reference: per utterance and Gram pair, trimmed features, Σ squared diff / Σ n²
    pairs = [(0, 1), (1, 2)] if intra else [(0, 0), (1, 1), (2, 2)]
    per_pair = []
    for a, b in pairs:
        total = 0.0
        for index, n in enumerate(lengths):
            gram_s = student[a][index, :n] @ student[b][index, :n].T
            gram_t = teacher[a][index, :n] @ teacher[b][index, :n].T
            total += ((gram_t - gram_s) ** 2).sum().item()
        per_pair.append(total / sum(n * n for n in lengths))
    expected = sum(per_pair) / len(per_pair)
    for chunk_size in (1, 2, 8):
        value = gram_loss(student, teacher, valid, intra=intra, chunk_size=chunk_size)
        assert value.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("loss", ["mse", "kl"])
def test_appended_garbage_frames_do_not_change_gram_loss(loss):
    student, valid = ragged_batch(3, [4, 2], 4, 3, 2)
    teacher, _ = ragged_batch(4, [4, 2], 4, 6, 2)
    extended_valid = torch.cat([valid, torch.zeros(2, 3, dtype=torch.bool)], 1)
    extend = lambda x: torch.cat([x, torch.full((2, 3, x.shape[2]), float("nan"))], 1)  # noqa: E731
    base = gram_loss(student, teacher, valid, loss=loss)
    padded = gram_loss([extend(x) for x in student], [extend(x) for x in teacher], extended_valid, loss=loss)
    assert padded.item() == pytest.approx(base.item(), rel=1e-6)


def test_kl_padding_excludes_padded_rows_and_columns():
    # Utterance 2 has 2 valid frames: its KL must equal that of the 2-frame utterance alone.
    student, valid = ragged_batch(5, [3, 2], 3, 4, 1)
    teacher, _ = ragged_batch(6, [3, 2], 3, 4, 1)
    batch_value = gram_loss(student, teacher, valid, loss="kl")
    alone = [gram_loss([s[i:i + 1, :n]], [t[i:i + 1, :n]], torch.ones(1, n, dtype=torch.bool), loss="kl")
             for i, n, s, t in ((0, 3, student[0], teacher[0]), (1, 2, student[0], teacher[0]))]
    assert batch_value.item() == pytest.approx((alone[0].item() + alone[1].item()) / 2, rel=1e-6)


def test_include_padding_reproduces_reimplementation_mse_and_kl():
    # train_starhubert.py: stacks [B, L, T, D], G = einsum('bltd,blfd->bltf'), F.mse_loss(G_T, G_S)
    # for layer-wise and F.mse_loss over the L-1 intra Grams; KL: KLDivLoss(batchmean)(log_softmax(G_S/√d_S),
    # softmax(G_T/√d_T)) over the stacked [B, L, T, T].
    student, valid = ragged_batch(7, [5, 3], 5, 3, 3)
    teacher, _ = ragged_batch(8, [5, 3], 5, 6, 3)
    stack_s, stack_t = torch.stack(student, 1), torch.stack(teacher, 1)
    gram_s = torch.einsum("bltd,blfd->bltf", stack_s, stack_s)
    gram_t = torch.einsum("bltd,blfd->bltf", stack_t, stack_t)
    intra_s = torch.einsum("bltd,blfd->bltf", stack_s[:, :-1], stack_s[:, 1:])
    intra_t = torch.einsum("bltd,blfd->bltf", stack_t[:, :-1], stack_t[:, 1:])
    released_layer = F.mse_loss(gram_t, gram_s)
    released_intra = F.mse_loss(intra_t, intra_s)
    released_kl = torch.nn.KLDivLoss(reduction="batchmean")(F.log_softmax(gram_s / math.sqrt(3), -1),
                                                            F.softmax(gram_t / math.sqrt(6), -1))
    pairs = [(0, 0), (1, 1), (2, 2)]
    terms = [LossTerm("layer", "gram_layer", pairs, include_padding=True),
             LossTerm("intra", "gram_intra", pairs, include_padding=True),
             LossTerm("kl", "gram_layer", pairs, include_padding=True, gram_loss="kl", layer_reduction="sum")]
    _, values = evaluate_terms(terms, dict(enumerate(student)), teacher, valid)
    assert values["layer"].item() == pytest.approx(released_layer.item(), rel=1e-5)
    assert values["intra"].item() == pytest.approx(released_intra.item(), rel=1e-5)
    assert values["kl"].item() == pytest.approx(released_kl.item(), rel=1e-5)


def test_checkpointed_chunks_give_the_same_gradient():
    student, valid = ragged_batch(9, [5, 2, 4], 5, 3, 3)
    teacher, _ = ragged_batch(10, [5, 2, 4], 5, 4, 3)
    gradients = []
    for chunk_size, checkpoint in ((8, False), (1, True), (2, True)):
        leaves = [x.clone().requires_grad_(True) for x in student]
        value = gram_loss(leaves, teacher, valid, intra=True, chunk_size=chunk_size, checkpoint=checkpoint)
        value.backward()
        gradients.append([leaf.grad for leaf in leaves])
        for leaf in leaves:
            assert torch.isfinite(leaf.grad).all() and torch.all(leaf.grad[~valid] == 0)
    for other in gradients[1:]:
        for reference, grad in zip(gradients[0], other):
            torch.testing.assert_close(grad, reference)


def test_gram_input_errors():
    with pytest.raises(LossInputError, match="equally many"):
        gram_loss([S0, S1], [T0], ALL)
    with pytest.raises(LossInputError, match="kl"):
        gram_loss([S0], [T0], ALL, loss="kl", normalization="dim")
    with pytest.raises(LossInputError, match="teacher layer 0 has shape"):
        gram_loss([S0], [torch.zeros(1, 3, 2)], ALL)
    with pytest.raises(LossInputError, match="prefix"):
        gram_loss([S0], [T0], torch.tensor([[False, True]]))
