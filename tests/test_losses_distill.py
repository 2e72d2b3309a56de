"""Feature-distillation terms: hand-computed values, padding invariance, released-code reductions."""
import math

import pytest
import torch
import torch.nn.functional as F

from speechdistill.config import ConfigError, from_dict
from speechdistill.losses import (LossInputError, LossTerm, cosine_per_layer, evaluate_terms, frame_mask,
                                  student_keys_needed, teacher_layers_needed)


def t(rows):
    """[N, D] nested list -> [1, N, D] float tensor."""
    return torch.tensor([rows], dtype=torch.float32)


def teacher_list(**layers):
    """Hidden-state list with the given layer indices filled (key 'L4' -> index 4), others None."""
    top = max(int(key[1:]) for key in layers)
    hidden = [None] * (top + 1)
    for key, value in layers.items():
        hidden[int(key[1:])] = value
    return hidden


def all_valid(tensor):
    return torch.ones(tensor.shape[:2], dtype=torch.bool)


def with_garbage(tensor, frames=3, value=None, seed=0):
    """Append padded frames full of garbage (large values, or NaN) to a [B, N, D] tensor."""
    generator = torch.Generator().manual_seed(seed)
    junk = 1e3 * torch.randn(tensor.shape[0], frames, tensor.shape[2], generator=generator)
    if value is not None:
        junk.fill_(value)
    return torch.cat([tensor, junk], dim=1)


def padded_valid(batch, frames, extra):
    return torch.cat([torch.ones(batch, frames, dtype=torch.bool), torch.zeros(batch, extra, dtype=torch.bool)], 1)


# Shared tiny example (B=1, N=2, D=2).
S1 = [[1.0, 2.0], [3.0, 4.0]]
H1 = [[0.0, 2.0], [1.0, 1.0]]
S2 = [[0.0, 0.0], [0.0, 0.0]]
H2 = [[1.0, 1.0], [1.0, -1.0]]


def test_l1_single_pair_by_hand():
    # |s - h| = [[1, 0], [2, 3]]; frame means 0.5 and 2.5; mean over frames = 1.5
    term = LossTerm(name="l1", kind="l1", layers=[("a", 4)])
    total, values = evaluate_terms([term], {"a": t(S1)}, teacher_list(L4=t(H1)), all_valid(t(S1)))
    assert values["l1"].item() == pytest.approx(1.5)
    assert total.item() == pytest.approx(1.5)


def test_l1_distilhubert_mean_over_heads_jointly_and_sum_variant():
    # head a: element sum 1+0+2+3 = 6; head b: |0-1|,|0-1|,|0-1|,|0+1| = 4; joint mean = 10/8 = 1.25
    pairs = [("a", 4), ("b", 8)]
    student = {"a": t(S1), "b": t(S2)}
    teacher = teacher_list(L4=t(H1), L8=t(H2))
    valid = all_valid(t(S1))
    _, mean_values = evaluate_terms([LossTerm("l1", "l1", pairs)], student, teacher, valid)
    _, sum_values = evaluate_terms([LossTerm("l1", "l1", pairs, layer_reduction="sum")], student, teacher, valid)
    assert mean_values["l1"].item() == pytest.approx(1.25)
    assert sum_values["l1"].item() == pytest.approx(1.5 + 1.0)


def test_mse_by_hand():
    # (s - h)^2 = [[1, 0], [4, 9]]; frame means 0.5, 6.5; mean 3.5
    _, values = evaluate_terms([LossTerm("mse", "mse", [("a", 4)])], {"a": t(S1)}, teacher_list(L4=t(H1)),
                               all_valid(t(S1)))
    assert values["mse"].item() == pytest.approx(3.5)


COS_S = [[1.0, 0.0], [1.0, 0.0], [3.0, 4.0]]
COS_H = [[1.0, 0.0], [0.0, 2.0], [4.0, 3.0]]
COS_VALUES = [1.0, 0.0, (12.0 + 12.0) / 25.0]  # cos of each frame pair: parallel, orthogonal, 24/25


def test_raw_negative_cosine_by_hand():
    _, values = evaluate_terms([LossTerm("cos", "neg_cos", [(0, 0)])], {0: t(COS_S)}, [t(COS_H)],
                               all_valid(t(COS_S)))
    assert values["cos"].item() == pytest.approx(-(1.0 + 0.0 + 0.96) / 3)


def test_negative_log_sigmoid_cosine_by_hand():
    # -log σ(c) = log(1 + e^{-c}): 0.313262, 0.693147, 0.324177
    expected = sum(math.log(1 + math.exp(-c)) for c in COS_VALUES) / 3
    _, values = evaluate_terms([LossTerm("cos", "neg_logsigmoid_cos", [(0, 0)])], {0: t(COS_S)}, [t(COS_H)],
                               all_valid(t(COS_S)))
    assert values["cos"].item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx((0.3132617 + 0.6931472 + 0.3241770) / 3, rel=1e-6)


def test_frame_sum_reduction_os_kdft_2024_by_hand():
    # Two utterances (B=2) of 3 frames; per utterance Σ_t -logσ(cos), then mean over B, then sum over heads.
    student = torch.tensor([COS_S, COS_S])
    teacher = torch.tensor([COS_H, [[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]])
    per_frame_1 = [math.log(1 + math.exp(-c)) for c in COS_VALUES]
    cos_2 = [1.0, 1.0, 3.0 / 5.0]  # (3,4)·(1,0) / 5
    per_frame_2 = [math.log(1 + math.exp(-c)) for c in cos_2]
    head_value = (sum(per_frame_1) + sum(per_frame_2)) / 2
    term = LossTerm("cos", "neg_logsigmoid_cos", [("h4", 4), ("h8", 8)], layer_reduction="sum",
                    frame_reduction="sum")
    valid = torch.ones(2, 3, dtype=torch.bool)
    _, values = evaluate_terms([term], {"h4": student, "h8": student}, teacher_list(L4=teacher, L8=teacher), valid)
    assert values["cos"].item() == pytest.approx(2 * head_value, rel=1e-6)
    # The released OS-KDFT 2024 computation (cos summed over frames, batch mean, heads summed):
    released = -F.logsigmoid(F.cosine_similarity(student, teacher, dim=-1)).sum(1).mean() * 2
    assert values["cos"].item() == pytest.approx(released.item(), rel=1e-6)


def test_distilalhubert_sum_over_pairs_of_mse_and_logsigmoid_cos():
    # pair (2,2): mse 3.5 (S1 vs H1); pair (4,4): mse of zeros vs H2 = 1.0 -> Σ = 4.5
    # cos: pair (2,2): frame cos (1,2)·(0,2)=4/(√5·2)=0.894427, (3,4)·(1,1)=7/(5√2)=0.989949
    #      pair (4,4): student all zeros -> cos = 0 (eps-guarded) -> -logσ(0) = log 2 on both frames
    cos_a = [4 / (math.sqrt(5) * 2), 7 / (5 * math.sqrt(2))]
    expected_cos = sum(math.log(1 + math.exp(-c)) for c in cos_a) / 2 + math.log(2)
    terms = [LossTerm("rec", "mse", [(2, 2), (4, 4)], layer_reduction="sum"),
             LossTerm("cos", "neg_logsigmoid_cos", [(2, 2), (4, 4)], layer_reduction="sum")]
    total, values = evaluate_terms(terms, {2: t(S1), 4: t(S2)}, teacher_list(L2=t(H1), L4=t(H2)),
                                   all_valid(t(S1)))
    assert values["rec"].item() == pytest.approx(4.5)
    assert values["cos"].item() == pytest.approx(expected_cos, rel=1e-6)
    assert total.item() == pytest.approx(4.5 + expected_cos, rel=1e-6)


def test_dphubert_l1_plus_raw_cos_over_stacked_layers():
    # layers (0,0),(4,4): L1 = (6 + 4)/8 = 1.25 ; raw cos of pair 0 = -(cos_a mean), pair 4 = 0
    cos_a = [4 / (math.sqrt(5) * 2), 7 / (5 * math.sqrt(2))]
    terms = [LossTerm("l1", "l1", [(0, 0), (4, 4)]), LossTerm("cos", "neg_cos", [(0, 0), (4, 4)])]
    total, values = evaluate_terms(terms, {0: t(S1), 4: t(S2)}, teacher_list(L0=t(H1), L4=t(H2)),
                                   all_valid(t(S1)))
    expected_cos = -(sum(cos_a) + 0.0) / 4
    assert values["l1"].item() == pytest.approx(1.25)
    assert values["cos"].item() == pytest.approx(expected_cos, rel=1e-6)
    assert total.item() == pytest.approx(1.25 + expected_cos, rel=1e-6)


def test_weights_and_os_kdft_linear_decay():
    # mse 3.5, weight 100, E = 100: epoch 1 -> w = 0.99 -> 346.5 ; epoch 100 -> 0 ; epoch 25 -> 0.75 -> 262.5
    term = LossTerm("kd", "mse", [("last", 4)], weight=100.0, linear_decay_epochs=100)
    args = ({"last": t(S1)}, teacher_list(L4=t(H1)), all_valid(t(S1)))
    assert evaluate_terms([term], *args, epoch=1)[0].item() == pytest.approx(346.5)
    assert evaluate_terms([term], *args, epoch=25)[0].item() == pytest.approx(262.5)
    assert evaluate_terms([term], *args, epoch=100)[0].item() == pytest.approx(0.0)
    assert evaluate_terms([term], *args, epoch=1)[1]["kd"].item() == pytest.approx(3.5)  # logged unweighted
    with pytest.raises(LossInputError, match="epoch"):
        evaluate_terms([term], *args)


# ---------------------------------------------------------------- masking distillation (ARMHuBERT)
MASK = torch.tensor([[True, False, True, False]])
PRED = torch.tensor([[[1.0], [2.0], [3.0], [4.0]]])
UNMASKED_TEACHER = torch.zeros(1, 4, 1)
MASKED_TEACHER = torch.ones(1, 4, 1)


def test_mask_split_by_hand():
    # masked frames 0, 2 vs unmasked teacher (0): (1-0)^2 + (3-0)^2 = 10 ; unmasked frames 1, 3 vs masked
    # teacher (1): (2-1)^2 + (4-1)^2 = 10 ; both divided by B·N = 4 -> 2.5 each
    # hint over 2 identical layers, summed: 5.0 each; weight 0.1 -> 1.0 ; rec (1 layer) weight 1.0 -> 5.0
    terms = [LossTerm("hint", "mask_split_mse", [(1, 1), (2, 2)], weight=0.1, layer_reduction="sum"),
             LossTerm("rec", "mask_split_mse", [(3, 3)], weight=1.0)]
    student = {1: PRED, 2: PRED, 3: PRED}
    teacher = [None, UNMASKED_TEACHER, UNMASKED_TEACHER, UNMASKED_TEACHER]
    masked = [None, MASKED_TEACHER, MASKED_TEACHER, MASKED_TEACHER]
    total, values = evaluate_terms(terms, student, teacher, all_valid(PRED), masked_teacher=masked,
                                   mask_indices=MASK)
    assert values["mask_hint"].item() == pytest.approx(5.0)
    assert values["unmask_hint"].item() == pytest.approx(5.0)
    assert values["mask_rec"].item() == pytest.approx(2.5)
    assert values["unmask_rec"].item() == pytest.approx(2.5)
    assert total.item() == pytest.approx(0.1 * 10.0 + 1.0 * 5.0)


def test_mask_split_l1_by_hand():
    # |1-0| + |3-0| = 4 -> /4 = 1.0 ; |2-1| + |4-1| = 4 -> 1.0
    term = LossTerm("rec", "mask_split_l1", [(3, 3)])
    _, values = evaluate_terms([term], {3: PRED}, [None, None, None, UNMASKED_TEACHER], all_valid(PRED),
                               masked_teacher=[None, None, None, MASKED_TEACHER], mask_indices=MASK)
    assert values["mask_rec"].item() == pytest.approx(1.0)
    assert values["unmask_rec"].item() == pytest.approx(1.0)


def released_arm_losses(pred, target, m_target, mask_indices):
    """ARMHuBERT's calculate_loss for one layer: sums over masked/unmasked frames divided by B·T."""
    batch, frames = mask_indices.shape
    masked = F.mse_loss(pred[mask_indices], target[mask_indices], reduction="none").mean(-1).sum() / batch / frames
    unmasked = F.mse_loss(pred[~mask_indices], m_target[~mask_indices], reduction="none").mean(-1).sum()
    return masked.item(), (unmasked / batch / frames).item()


def test_mask_split_padding_excluded_and_released_normalisation_reproduced():
    pred = with_garbage(PRED, frames=2)
    teacher = with_garbage(UNMASKED_TEACHER, frames=2, seed=1)
    masked_teacher = with_garbage(MASKED_TEACHER, frames=2, seed=2)
    mask = torch.cat([MASK, torch.zeros(1, 2, dtype=torch.bool)], 1)  # padding is never masked
    valid = padded_valid(1, 4, 2)
    term = LossTerm("rec", "mask_split_mse", [(3, 3)])
    _, values = evaluate_terms([term], {3: pred}, [None] * 3 + [teacher], valid,
                               masked_teacher=[None] * 3 + [masked_teacher], mask_indices=mask)
    assert values["mask_rec"].item() == pytest.approx(2.5)  # unchanged by the garbage frames
    assert values["unmask_rec"].item() == pytest.approx(2.5)
    released = released_arm_losses(pred, teacher, masked_teacher, mask)
    reproduce = LossTerm("rec", "mask_split_mse", [(3, 3)], include_padding=True)
    _, values = evaluate_terms([reproduce], {3: pred}, [None] * 3 + [teacher], valid,
                               masked_teacher=[None] * 3 + [masked_teacher], mask_indices=mask)
    assert values["mask_rec"].item() == pytest.approx(released[0], rel=1e-6)
    assert values["unmask_rec"].item() == pytest.approx(released[1], rel=1e-6)
    assert values["unmask_rec"].item() > 100  # the garbage frames really were counted


def test_mask_split_needs_masked_teacher():
    with pytest.raises(LossInputError, match="masked_teacher"):
        evaluate_terms([LossTerm("rec", "mask_split_mse", [(3, 3)])], {3: PRED}, [None] * 3 + [UNMASKED_TEACHER],
                       all_valid(PRED))


# ---------------------------------------------------------------- padding invariance + released code
FRAME_KINDS = ["l1", "mse", "neg_cos", "neg_logsigmoid_cos"]


def random_batch(seed, batch=2, frames=5, dim=4):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, frames, dim, generator=generator),
            torch.randn(batch, frames, dim, generator=generator))


@pytest.mark.parametrize("kind", FRAME_KINDS)
@pytest.mark.parametrize("garbage", [None, float("nan"), float("inf")])
def test_padded_frames_do_not_change_loss_or_gradient(kind, garbage):
    student, teacher = random_batch(3)
    lengths = torch.tensor([5, 3])
    valid = frame_mask(lengths, 5)
    # Build the same batch with 4 extra garbage frames and ragged garbage inside utterance 2's padding.
    student_padded = with_garbage(student, 4, garbage).clone()
    teacher_padded = with_garbage(teacher, 4, garbage, seed=5).clone()
    student_padded[1, 3:5] = 1e4 if garbage is None else garbage
    teacher_padded[1, 3:5] = -1e4 if garbage is None else garbage
    valid_padded = frame_mask(lengths, 9)
    term = LossTerm("x", kind, [("a", 1)])
    plain = student.clone().requires_grad_(True)
    padded = student_padded.clone().requires_grad_(True)
    total, _ = evaluate_terms([term], {"a": plain}, [None, teacher], valid)
    total_padded, _ = evaluate_terms([term], {"a": padded}, [None, teacher_padded], valid_padded)
    assert total_padded.item() == pytest.approx(total.item(), rel=1e-6)
    total.backward()
    total_padded.backward()
    assert torch.isfinite(padded.grad).all()
    assert torch.all(padded.grad[:, 5:] == 0) and torch.all(padded.grad[1, 3:] == 0)
    torch.testing.assert_close(padded.grad[0, :5], plain.grad[0])
    torch.testing.assert_close(padded.grad[1, :3], plain.grad[1, :3])


def test_include_padding_reproduces_distilhubert_released_value():
    # s3prl: rec = l1_loss(pred, target, reduction='none').mean() over B×N×T×D (padding included);
    #        sim = -logsigmoid(cosine_similarity(pred, target, dim=-1)).mean()
    heads = [random_batch(seed) for seed in (10, 11, 12)]
    pred = torch.stack([h[0] for h in heads], 1)  # [B, 3, T, D]
    target = torch.stack([h[1] for h in heads], 1)
    released_l1 = F.l1_loss(pred, target, reduction="none").mean().item()
    released_cos = (-F.logsigmoid(F.cosine_similarity(pred, target, dim=-1))).mean().item()
    student = {f"h{4 * (i + 1)}": heads[i][0] for i in range(3)}
    teacher = teacher_list(L4=heads[0][1], L8=heads[1][1], L12=heads[2][1])
    pairs = [("h4", 4), ("h8", 8), ("h12", 12)]
    terms = [LossTerm("l1", "l1", pairs, include_padding=True),
             LossTerm("cos", "neg_logsigmoid_cos", pairs, include_padding=True)]
    valid = frame_mask(torch.tensor([5, 2]), 5)  # utterance 2 is padded, but the released code ignores it
    total, values = evaluate_terms(terms, student, teacher, valid)
    assert values["l1"].item() == pytest.approx(released_l1, rel=1e-6)
    assert values["cos"].item() == pytest.approx(released_cos, rel=1e-6)
    assert total.item() == pytest.approx(released_l1 + released_cos, rel=1e-6)
    # without include_padding the padded frames of utterance 2 are left out, which changes the value
    _, excluded = evaluate_terms([LossTerm("l1", "l1", pairs)], student, teacher, valid)
    manual = sum(F.l1_loss(student[k][valid], teacher[layer][valid]).item() for k, layer in pairs) / 3
    assert excluded["l1"].item() == pytest.approx(manual, rel=1e-6)
    assert excluded["l1"].item() != pytest.approx(released_l1, rel=1e-3)


def test_include_padding_reproduces_dphubert_and_alhubert_released_values():
    (s0, t0), (s4, t4) = random_batch(20), random_batch(21)
    valid = frame_mask(torch.tensor([5, 4]), 5)
    stacked_s, stacked_t = torch.stack([s0, s4], 1), torch.stack([t0, t4], 1)
    # DPHuBERT DistillLoss: l1_loss over (B, L, T, D) + (-cos_sim(...).mean())
    dphubert = F.l1_loss(stacked_s, stacked_t) - F.cosine_similarity(stacked_s, stacked_t, dim=-1).mean()
    terms = [LossTerm("l1", "l1", [(0, 0), (4, 4)], include_padding=True),
             LossTerm("cos", "neg_cos", [(0, 0), (4, 4)], include_padding=True)]
    total, _ = evaluate_terms(terms, {0: s0, 4: s4}, teacher_list(L0=t0, L4=t4), valid)
    assert total.item() == pytest.approx(dphubert.item(), rel=1e-6)
    # DistilALHuBERT: Σ_pairs mse(...) + Σ_pairs mean(-logσ(cos))
    alhubert = sum(F.mse_loss(s, h) - F.logsigmoid(F.cosine_similarity(s, h, dim=-1)).mean()
                   for s, h in ((s0, t0), (s4, t4)))
    terms = [LossTerm("rec", "mse", [(0, 0), (4, 4)], layer_reduction="sum", include_padding=True),
             LossTerm("cos", "neg_logsigmoid_cos", [(0, 0), (4, 4)], layer_reduction="sum", include_padding=True)]
    total, _ = evaluate_terms(terms, {0: s0, 4: s4}, teacher_list(L0=t0, L4=t4), valid)
    assert total.item() == pytest.approx(alhubert.item(), rel=1e-6)


def test_include_padding_reproduces_os_kdft_losses():
    # paper code: nn.MSELoss()(x_s, x_t) * 100 * (E - epoch) / E
    student, teacher = random_batch(30)
    released = (F.mse_loss(student, teacher) * 100 * (100 - 7) / 100).item()
    term = LossTerm("kd", "mse", [("last", 12)], weight=100, linear_decay_epochs=100, include_padding=True)
    total, _ = evaluate_terms([term], {"last": student}, teacher_list(L12=teacher), None, epoch=7)
    assert total.item() == pytest.approx(released, rel=1e-6)
    # 2024 code: per head mean_{T·D}|.| - Σ_t logσ(cos), summed over heads, batch mean (2 heads)
    (s4, t4), (s8, t8) = random_batch(31), random_batch(32)
    per_head = [(s - h).abs().flatten(1).mean(1) - F.logsigmoid(F.cosine_similarity(s, h, dim=-1)).sum(1)
                for s, h in ((s4, t4), (s8, t8))]
    released_2024 = (per_head[0] + per_head[1]).mean().item()
    pairs = [("h4", 4), ("h8", 8)]
    terms = [LossTerm("l1", "l1", pairs, layer_reduction="sum", include_padding=True),
             LossTerm("cos", "neg_logsigmoid_cos", pairs, layer_reduction="sum", frame_reduction="sum",
                      include_padding=True)]
    total, _ = evaluate_terms(terms, {"h4": s4, "h8": s8}, teacher_list(L4=t4, L8=t8), None)
    assert total.item() == pytest.approx(released_2024, rel=1e-6)


# ---------------------------------------------------------------- API, config, errors
def test_terms_load_from_yaml_style_mapping_and_report_needs():
    term = from_dict(LossTerm, {"name": "l1", "kind": "l1", "layers": [["h4", 4], [8, 8]], "weight": "1e-1"})
    assert term.layers == [("h4", 4), (8, 8)]
    assert term.weight == pytest.approx(0.1)
    gram = LossTerm("layer", "gram_layer", [(0, 0), (1, 1)])
    assert (gram.gram_normalization, gram.gram_loss, gram.chunk_size) == ("none", "mse", 8)
    assert teacher_layers_needed([term, gram]) == [0, 1, 4, 8]
    assert student_keys_needed([term, gram]) == ["h4", 8, 0, 1]


@pytest.mark.parametrize("mapping,message", [
    ({"name": "x", "kind": "l2", "layers": [[1, 1]]}, "kind"),
    ({"name": "x", "kind": "l1", "layers": []}, "layers is empty"),
    ({"name": "x", "kind": "l1", "layers": [[1, -1]]}, "teacher layer"),
    ({"name": "x", "kind": "l1", "layers": [[1, 1]], "gram_loss": "kl"}, "gram_loss applies only"),
    ({"name": "x", "kind": "gram_layer", "layers": [[1, 1]], "frame_reduction": "sum"}, "frame_reduction"),
    ({"name": "x", "kind": "gram_intra", "layers": [[1, 1]]}, "at least 2"),
    ({"name": "x", "kind": "gram_layer", "layers": [[1, 1]], "gram_loss": "kl", "gram_normalization": "dim"},
     "normalization"),
    ({"name": "x", "kind": "l1", "layers": [[1, 1]], "layer_reduction": "max"}, "layer_reduction"),
    ({"name": "x", "kind": "l1", "layers": [[1, 1]], "wieght": 2}, "did you mean 'weight'"),
])
def test_bad_term_configs_raise_clear_errors(mapping, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(LossTerm, mapping, where="conf/x.yaml:loss_terms[0]")


def test_duplicate_log_names_are_refused():
    terms = [LossTerm("hint", "l1", [(1, 1)]), LossTerm("mask_x", "l1", [(1, 1)]),
             LossTerm("x", "mask_split_mse", [(1, 1)])]
    with pytest.raises(ConfigError, match="mask_x"):
        evaluate_terms(terms, {1: PRED}, [None, UNMASKED_TEACHER], all_valid(PRED))


def test_input_errors_name_the_term_and_the_fix():
    valid = all_valid(t(S1))
    with pytest.raises(LossInputError, match=r"term 'l1'.*no student prediction for key 'h8'"):
        evaluate_terms([LossTerm("l1", "l1", [("h8", 8)])], {"h4": t(S1)}, teacher_list(L8=t(H1)), valid)
    with pytest.raises(LossInputError, match="teacher hidden state 4 was not computed.*output_layers"):
        evaluate_terms([LossTerm("l1", "l1", [("h", 4)])], {"h": t(S1)}, teacher_list(L8=t(H1)), valid)
    with pytest.raises(LossInputError, match="projection head"):
        evaluate_terms([LossTerm("l1", "l1", [("h", 0)])], {"h": t(S1)}, [torch.zeros(1, 2, 3)], valid)
    with pytest.raises(LossInputError, match="valid has shape"):
        evaluate_terms([LossTerm("l1", "l1", [("h", 0)])], {"h": t(S1)}, [t(H1)], torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(LossInputError, match="required unless include_padding"):
        evaluate_terms([LossTerm("l1", "l1", [("h", 0)])], {"h": t(S1)}, [t(H1)], None)


def test_values_are_float32_under_bf16_autocast():
    student, teacher = random_batch(40)
    valid = all_valid(student)
    term = LossTerm("l1", "l1", [(1, 1)])
    reference, _ = evaluate_terms([term], {1: student}, [None, teacher], valid)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, values = evaluate_terms([term], {1: student}, [None, teacher], valid)
    assert total.dtype == torch.float32 and values["l1"].dtype == torch.float32
    assert total.item() == pytest.approx(reference.item(), rel=1e-6)


def test_cosine_per_layer_by_hand_and_ignores_padding():
    student = {"a": with_garbage(t(COS_S), 2), "b": with_garbage(t(S1), 2)}
    teacher = teacher_list(L4=with_garbage(t(COS_H), 2, seed=1), L8=with_garbage(t(H1), 2, seed=2))
    valid = padded_valid(1, 3, 2)
    valid_b = padded_valid(1, 2, 2)
    result = cosine_per_layer(student, teacher, valid, [("a", 4)])
    assert result[4].item() == pytest.approx((1.0 + 0.0 + 0.96) / 3, rel=1e-6)
    result = cosine_per_layer(student, teacher, valid_b, [("b", 8)])
    assert result[8].item() == pytest.approx((4 / (math.sqrt(5) * 2) + 7 / (5 * math.sqrt(2))) / 2, rel=1e-6)
