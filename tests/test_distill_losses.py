"""Per method: the composed loss of one batch equals a direct computation from the same models.

The "by hand" side runs the teacher and the student again on their own (no batching of masked and
unmasked passes, no loss library), reads head/projection weights directly, and reduces over valid
frames with plain tensor arithmetic. Models are in eval mode (no dropout, deterministic gates).
Also: padded frames change no loss, and teacher targets do not depend on the batch around them.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_distill_common import (SLIM_CONV, TINY_STUDENTS, batch, build_task, frames_of,  # noqa: E402
                                 make_noise_and_rirs, preset_config, save_tiny_teacher)

LENGTHS = [16000, 11000, 7200]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    return save_tiny_teacher(tmp_path_factory.mktemp("teacher") / "teacher")


@pytest.fixture(scope="module")
def noise_rirs(tmp_path_factory):
    return make_noise_and_rirs(tmp_path_factory.mktemp("noise"))


def valid_mask(lengths, num_frames, conv=None):
    counts = [frames_of(int(n)) if conv is None else frames_of(int(n), conv) for n in lengths]
    return torch.arange(num_frames)[None, :] < torch.tensor(counts)[:, None]


def neg_logsigmoid_cos(a, b):
    return -F.logsigmoid(F.cosine_similarity(a, b, dim=-1))


def test_distilhubert_total_is_l1_plus_logsigmoid_cos_over_heads(teacher_dir, tmp_path):
    task, model = build_task(preset_config("distilhubert", teacher_dir), tmp_path)
    model.eval()
    wavs, lengths = batch(LENGTHS)
    total, terms, out, teacher_hidden = task.losses(model, wavs, lengths, step=0)

    with torch.no_grad():
        teacher = task.teacher(wavs, lengths)
        student = model.student(wavs, lengths)
    valid = valid_mask(lengths, student.hidden_states[2].shape[1])
    heads = model.heads
    inner = torch.nn.functional.gelu(student.hidden_states[2] @ heads.expand.weight.T + heads.expand.bias)
    width = heads.split.in_dim
    l1, cos = [], []
    for index, layer in enumerate((4, 8, 12)):
        prediction = inner[..., index * width:(index + 1) * width] @ heads.split.weight[index] + heads.split.bias[index]
        target = teacher.hidden_states[layer]
        assert torch.allclose(teacher_hidden[layer][valid], target[valid], atol=1e-6)
        l1.append((prediction - target).abs()[valid].mean())
        cos.append(neg_logsigmoid_cos(prediction, target)[valid].mean())
    expected_l1, expected_cos = torch.stack(l1).mean(), torch.stack(cos).mean()
    assert torch.allclose(terms["l1"], expected_l1, rtol=1e-5)
    assert torch.allclose(terms["cos"], expected_cos, rtol=1e-5)
    assert torch.allclose(total, expected_l1 + expected_cos, rtol=1e-5)
    assert int(out["valid"].sum()) == sum(frames_of(n) for n in LENGTHS)


def test_dphubert_total_is_l1_minus_cos_through_shared_projections_plus_lagrangian(teacher_dir, tmp_path):
    task, model = build_task(preset_config("dphubert", teacher_dir), tmp_path)
    model.eval()
    projections = model.heads.projections
    assert len(projections) == 2  # "0.4,8,12": layer 0 alone, 4/8/12 share one Linear
    assert all(torch.equal(p.weight, torch.eye(64)) and not p.bias.any() for p in projections)
    with torch.no_grad():  # leave identity so that the wiring of layers to Linears shows in the values
        for projection in projections:
            projection.weight.add_(0.05 * torch.randn_like(projection.weight))
            projection.bias.normal_(0.0, 0.1)
        model.lagrangian.lambda1.fill_(0.3)
        model.lagrangian.lambda2.fill_(-0.2)
    step = 1200
    wavs, lengths = batch(LENGTHS)
    total, terms, out, _ = task.losses(model, wavs, lengths, step=step)

    with torch.no_grad():
        teacher = task.teacher(wavs, lengths)
        student = model.student(wavs, lengths)
    valid = valid_mask(lengths, student.projected_features.shape[1])
    student_states = [student.projected_features] + student.hidden_states[1:]
    teacher_states = [teacher.projected_features] + teacher.hidden_states[1:]
    l1, cos = [], []
    for layer in (0, 4, 8, 12):
        linear = projections[0] if layer == 0 else projections[1]
        prediction = student_states[layer] @ linear.weight.T + linear.bias
        difference = (prediction - teacher_states[layer])[valid]
        l1.append(difference.abs().mean())
        cos.append(-F.cosine_similarity(prediction, teacher_states[layer], dim=-1)[valid].mean())
    from speechdistill.models.pruning import expected_num_params
    teacher_size = sum(p.numel() for p in task.teacher.parameters())
    gap = (1.0 - expected_num_params(model.student) / teacher_size) - 0.75 * step / 5000
    regularizer = 0.3 * gap - 0.2 * gap ** 2
    expected = torch.stack(l1).mean() + torch.stack(cos).mean() + regularizer
    assert torch.allclose(total, expected, rtol=1e-5, atol=1e-6)
    assert terms["sparsity_target"] == pytest.approx(0.75 * step / 5000)


def test_armhubert_masked_frames_learn_unmasked_teacher_and_the_rest_the_masked_teacher(teacher_dir, tmp_path):
    task, model = build_task(preset_config("armhubert", teacher_dir), tmp_path)
    model.eval()
    wavs, lengths = batch(LENGTHS)
    total, terms, out, _ = task.losses(model, wavs, lengths, step=0)
    mask = out["mask_indices"]
    valid = valid_mask(lengths, mask.shape[1])
    assert mask.dtype == torch.bool and bool(mask.any()) and not bool((mask & ~valid).any())

    with torch.no_grad():  # two separate teacher passes, not the task's batched one
        clean = task.teacher(wavs, lengths).hidden_states
        masked = task.teacher(wavs, lengths, mask_indices=mask).hidden_states
        student = model.student(wavs, lengths, mask_indices=mask).hidden_states
    count = valid.sum()

    def split(layer):
        prediction = model.heads.projections[layer - 1](student[layer])
        error_clean = (prediction - clean[layer]).pow(2).mean(-1)
        error_masked = (prediction - masked[layer]).pow(2).mean(-1)
        return error_clean[mask & valid].sum() / count, error_masked[~mask & valid].sum() / count

    hint = [split(layer) for layer in range(1, 12)]
    mask_hint, unmask_hint = sum(h[0] for h in hint), sum(h[1] for h in hint)
    mask_rec, unmask_rec = split(12)
    assert torch.allclose(terms["mask_hint"], mask_hint, rtol=1e-5)
    assert torch.allclose(terms["unmask_hint"], unmask_hint, rtol=1e-5)
    assert torch.allclose(terms["mask_rec"], mask_rec, rtol=1e-5)
    assert torch.allclose(total, 0.1 * (mask_hint + unmask_hint) + 1.0 * (mask_rec + unmask_rec), rtol=1e-5)


def test_distilalhubert_total_sums_mse_and_logsigmoid_cos_over_six_pairs(teacher_dir, tmp_path):
    task, model = build_task(preset_config("distilalhubert", teacher_dir), tmp_path)
    model.eval()
    wavs, lengths = batch(LENGTHS)
    total, _, _, _ = task.losses(model, wavs, lengths, step=0)
    with torch.no_grad():
        teacher = task.teacher(wavs, lengths).hidden_states
        student = model.student(wavs, lengths).hidden_states
    valid = valid_mask(lengths, student[0].shape[1])
    layers = (2, 4, 6, 8, 10, 12)
    mse = sum((student[k] - teacher[k]).pow(2).mean(-1)[valid].mean() for k in layers)
    cos = sum(neg_logsigmoid_cos(student[k], teacher[k])[valid].mean() for k in layers)
    assert torch.allclose(total, mse + cos, rtol=1e-5)
    # layer sharing: virtual layers 1 and 3 run the same parameters
    assert len(model.student.layers) == 2


def test_starhubert_total_is_layer_and_intra_layer_gram_mse(teacher_dir, tmp_path):
    task, model = build_task(preset_config("starhubert", teacher_dir), tmp_path)
    model.eval()
    wavs, lengths = batch(LENGTHS)
    total, terms, _, _ = task.losses(model, wavs, lengths, step=0)
    with torch.no_grad():
        teacher = task.teacher(wavs, lengths)
        student = model.student(wavs, lengths)
    teacher_states = [teacher.projected_features] + teacher.hidden_states[1:]
    student_states = [student.projected_features] + student.hidden_states[1:]
    counts = [frames_of(n, SLIM_CONV) for n in LENGTHS]
    norm = sum(n * n for n in counts)

    def gram_error(a, b):
        total_error = 0.0
        for row, n in enumerate(counts):
            s = student_states[a][row, :n] @ student_states[b][row, :n].T
            t = teacher_states[a][row, :n] @ teacher_states[b][row, :n].T
            total_error = total_error + (t - s).pow(2).sum()
        return total_error / norm

    layer = torch.stack([gram_error(k, k) for k in range(13)]).mean()
    intra = torch.stack([gram_error(k, k + 1) for k in range(12)]).mean()
    assert torch.allclose(terms["gram_layer"], layer, rtol=1e-4)
    assert torch.allclose(total, layer + intra, rtol=1e-4)


def test_layer0_before_dropout_is_the_students_projection_without_dropout_input():
    """STaR's representation 0 (fairseq's post_cnn) is taken before the student's dropout_input; DPHuBERT's
    (torchaudio's feature projection) after it. In training the two differ by the dropout; in eval they agree."""
    from speechdistill.distill.model import hidden_states_with_layer0
    from speechdistill.models import Encoder, EncoderConfig
    torch.manual_seed(0)
    student = Encoder(EncoderConfig(conv_layers=SLIM_CONV, feature_projection=False, hidden_size=48, num_layers=1,
                                    num_heads=4, ffn_size=64, pos_conv_kernel=8, pos_conv_groups=4,
                                    dropout_input=0.5, mask_embedding=False))
    wavs, lengths = batch(LENGTHS)
    student.eval()
    with torch.no_grad():
        reference = student(wavs, lengths).projected_features
    student.train()
    with torch.no_grad():
        out = student(wavs, lengths)
    before = hidden_states_with_layer0(out, "feature_projection_before_dropout")[0]
    after = hidden_states_with_layer0(out, "feature_projection")[0]
    torch.testing.assert_close(before, reference)
    zeroed = (after == 0) & (reference != 0)
    assert 0.4 < float(zeroed.sum() / (reference != 0).sum()) < 0.6  # dropout p=0.5 ...
    torch.testing.assert_close(after[~zeroed], 2.0 * reference[~zeroed])  # ... with inverted scaling
    assert hidden_states_with_layer0(out, "transformer_input")[0] is out.hidden_states[0]


def test_robustdistiller_student_hears_noise_teacher_clean_plus_2x_enhancement(teacher_dir, noise_rirs, tmp_path):
    task, model = build_task(preset_config("robustdistiller", teacher_dir, noise_rirs, seed=1), tmp_path)
    model.eval()
    wavs, lengths = batch(LENGTHS)
    total, terms, out, teacher_hidden = task.losses(model, wavs, lengths, step=0)
    noisy = out["input"]
    assert not torch.equal(noisy, wavs)

    with torch.no_grad():
        teacher = task.teacher(wavs, lengths).hidden_states      # clean input
        student = model.student(noisy, lengths)                  # corrupted input
    valid = valid_mask(lengths, student.hidden_states[2].shape[1])
    predictions = model.heads(student.hidden_states[2])
    l1 = torch.stack([(predictions[:, i] - teacher[t]).abs()[valid].mean() for i, t in enumerate((4, 8, 12))]).mean()
    cos = torch.stack([neg_logsigmoid_cos(predictions[:, i], teacher[t])[valid].mean()
                       for i, t in enumerate((4, 8, 12))]).mean()
    # the head reads the last hidden state (paper), upsampled to the 100 Hz STFT frames
    with torch.no_grad():
        mask = model.enhancement(student.hidden_states[-1], student.lengths, lengths, wavs.shape[1])
    assert torch.allclose(mask, out["enhancement_mask"], atol=1e-6)
    window = torch.hann_window(400)
    error, count = 0.0, 0
    for row, length in enumerate(LENGTHS):
        def magnitude(x):
            return torch.stft(x[row, :length], 512, 160, 400, window, center=True, pad_mode="reflect",
                              return_complex=True).abs()
        estimate = mask[row, :1 + length // 160].T * magnitude(noisy)
        difference = estimate - magnitude(wavs)
        error, count = error + difference.abs().sum(), count + difference.numel()
    enhancement = error / count
    assert torch.allclose(terms["enhancement"], enhancement, rtol=1e-5)
    assert torch.allclose(total, l1 + cos + 2.0 * enhancement, rtol=1e-5)


@pytest.mark.parametrize("name", ["distilhubert", "dphubert", "armhubert", "starhubert"])
def test_padded_frames_do_not_change_the_loss(name, teacher_dir, tmp_path):
    task, model = build_task(preset_config(name, teacher_dir), tmp_path)
    model.eval()
    wavs, lengths = batch([16000, 9000])
    longer, _ = batch([16000, 9000], num_samples=20800)
    longer[0, 16000:] = torch.randn(4800)  # garbage in the padding of both rows
    longer[1, 9000:] = torch.randn(11800)
    state = task.mask_rng.bit_generator.state
    total, _, _, _ = task.losses(model, wavs, lengths, step=0)
    task.mask_rng.bit_generator.state = state
    padded_total, _, _, _ = task.losses(model, longer, lengths, step=0)
    assert torch.allclose(total, padded_total, rtol=2e-5)
    if name == "distilhubert":  # the released code's normalisation does see the padding
        released = preset_config(name, teacher_dir, loss_terms=[
            dict(t, include_padding=True) for t in (
                {"name": "l1", "kind": "l1", "layers": [["head4", 4], ["head8", 8], ["head12", 12]]},
                {"name": "cos", "kind": "neg_logsigmoid_cos", "layers": [["head4", 4], ["head8", 8], ["head12", 12]]})])
        task.terms = released.loss_terms
        short, _, _, _ = task.losses(model, wavs, lengths, step=0)
        long, _, _, _ = task.losses(model, longer, lengths, step=0)
        assert not torch.allclose(short, long, rtol=1e-3)


@pytest.mark.parametrize("name", ["distilhubert", "armhubert"])
def test_teacher_targets_do_not_depend_on_the_batch(name, teacher_dir, tmp_path):
    task, _ = build_task(preset_config(name, teacher_dir), tmp_path)
    alone, alone_lengths = batch([9000], seed=11)
    other, _ = batch([16000], seed=12)
    together = torch.zeros(2, 16000)
    together[0] = other[0]
    together[1, :9000] = alone[0]
    together_lengths = torch.tensor([16000, 9000])
    frames = frames_of(9000)
    mask_alone = mask_together = None
    if task.masked_teacher_pass:
        mask_together = torch.zeros(2, frames_of(16000), dtype=torch.bool)
        mask_together[:, 5:15] = True
        mask_together[0, 30:40] = True
        mask_alone = mask_together[1:, :frames]
    hidden_alone, masked_alone = task.teacher_targets(alone, alone_lengths, mask_alone)
    hidden_together, masked_together = task.teacher_targets(together, together_lengths, mask_together)
    for layer in task.teacher_layers:
        assert torch.allclose(hidden_alone[layer][0], hidden_together[layer][1, :frames], atol=2e-5)
        if masked_alone is not None:
            assert torch.allclose(masked_alone[layer][0], masked_together[layer][1, :frames], atol=2e-5)
            assert not torch.allclose(masked_alone[layer][0], hidden_alone[layer][0], atol=1e-3)


def test_validation_cosines_by_hand():
    from speechdistill.distill.task import gram_row_cosine, per_utterance_cosine
    target = torch.randn(2, 5, 4)
    valid = torch.tensor([[True] * 5, [True, True, True, False, False]])
    prediction = target.clone()
    prediction[0, :2] *= -1            # utterance 0: 2 of 5 frames opposite -> mean (3 - 2) / 5
    prediction[1, 3:] = torch.randn(2, 4)  # padding of utterance 1 holds garbage
    assert torch.allclose(per_utterance_cosine(prediction, target, valid), torch.tensor([0.2, 1.0]), atol=1e-6)
    # Gram rows are scale-free: a student that is the teacher times 3 (another width is fine too) scores 1
    wide = torch.cat([3 * target, torch.zeros(2, 5, 2)], dim=-1)
    assert torch.allclose(gram_row_cosine(wide, target, valid), torch.ones(2), atol=1e-6)


def test_teacher_computes_only_the_layers_the_loss_reads(teacher_dir, tmp_path):
    config = preset_config("distilhubert", teacher_dir, target_mapping={"kind": "prediction", "source_layers": [2],
                                                                        "target_layers": [3, 5]},
                           loss_terms=[{"name": "l1", "kind": "l1", "layers": [["head3", 3], ["head5", 5]]}])
    task, model = build_task(config, tmp_path)
    wavs, lengths = batch([8000])
    hidden, masked = task.teacher_targets(wavs, lengths)
    assert masked is None and len(hidden) == 13
    assert [i for i, h in enumerate(hidden) if h is not None] == [3, 5]


def test_enhancement_head_output_does_not_depend_on_padding(tmp_path):
    from speechdistill.distill.enhancement import EnhancementHead
    torch.manual_seed(0)
    head = EnhancementHead(8, lstm_layers=2, lstm_hidden=6).eval()
    alone = torch.randn(1, 24, 8)
    batch_features = torch.randn(2, 49, 8)
    batch_features[1, :24] = alone[0]
    with torch.no_grad():
        mask_alone = head(alone, torch.tensor([24]), torch.tensor([7800]), 7800)
        mask_batch = head(batch_features, torch.tensor([49, 24]), torch.tensor([16000, 7800]), 16000)
    frames = 1 + 7800 // 160
    assert mask_alone.shape == (1, frames, 257) and mask_batch.shape == (2, 1 + 16000 // 160, 257)
    assert torch.allclose(mask_alone[0], mask_batch[1, :frames], atol=1e-6)
    assert not mask_batch[1, frames:].any()


def test_parameter_groups(teacher_dir, tmp_path):
    task, model = build_task(preset_config("dphubert", teacher_dir), tmp_path)
    groups = {g["name"]: g for g in task.param_groups(model)}
    assert (groups["gates"]["lr"], groups["lagrange"]["lr"]) == (0.02, -0.02)
    assert all(p.shape == () for p in groups["lagrange"]["params"])
    seen = [id(p) for g in groups.values() for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(seen) == sorted(trainable) and len(set(seen)) == len(seen)
    task, model = build_task(preset_config("distilhubert", teacher_dir), tmp_path)
    groups = {g["name"]: g for g in task.param_groups(model)}
    names = {id(p): n for n, p in model.named_parameters()}
    assert groups["decay"]["weight_decay"] == 0.01 and groups["no_decay"]["weight_decay"] == 0.0
    assert all(names[id(p)].endswith("bias") for p in groups["no_decay"]["params"])
    # s3prl's quirk kept: LayerNorm weights are decayed (their names do not contain "LayerNorm")
    assert any(names[id(p)].endswith("encoder_norm.weight") for p in groups["decay"]["params"])


@pytest.mark.parametrize("kind", ["mrstft", "si_snr"])
def test_robustdistiller_waveform_variants_and_cnn_input(kind, teacher_dir, noise_rirs, tmp_path):
    """The released code's head input (CNN output) and the waveform losses compose the same way."""
    from speechdistill.losses import enhancement_loss
    config = preset_config("robustdistiller", teacher_dir, noise_rirs, seed=2,
                           enhancement={"loss": kind, "input": "cnn"})
    task, model = build_task(config, tmp_path)
    model.eval()
    assert model.enhancement.in_dim == model.student.config.conv_channels
    wavs, lengths = batch(LENGTHS)
    total, terms, out, _ = task.losses(model, wavs, lengths, step=0)
    with torch.no_grad():
        student = model.student(out["input"], lengths)
        mask = model.enhancement(student.conv_features, student.lengths, lengths, wavs.shape[1])
    expected = enhancement_loss(mask, out["input"], wavs, lengths, kind=kind)
    assert torch.allclose(terms["enhancement"], expected, rtol=1e-5)
    assert torch.allclose(total, terms["l1"] + terms["cos"] + 2.0 * expected, rtol=1e-5)


def test_a_student_cnn_without_gradient_is_frozen(teacher_dir, tmp_path):
    changes = dict(TINY_STUDENTS["distilhubert"], feature_grad_mult=0.0)
    task, model = build_task(preset_config("distilhubert", teacher_dir, student_encoder=changes), tmp_path)
    grouped = {id(p) for g in task.param_groups(model) for p in g["params"]}
    cnn = list(model.student.feature_extractor.parameters())
    assert cnn and not any(p.requires_grad or id(p) in grouped for p in cnn)
    wavs, lengths = batch([8000, 6000])
    total, _, _, _ = task.losses(model, wavs, lengths, step=0)
    total.backward()
    assert all(p.grad is None for p in cnn) and model.student.feature_projection.weight.grad is not None
