"""Student presets: published parameter counts, teacher initialisation, attention-map reuse (paper and
released-code variants), cyclic layer sharing, layer gradient scaling, adapters and heads."""
import pytest
import torch
import torch.nn.functional as F

from speechdistill.config import ConfigError
from speechdistill.models import (Encoder, EncoderConfig, HeadsConfig, LayerProjections, PredictionHeads,
                                  architecture, build_student, count_parameters, init_from_teacher, list_presets)
from speechdistill.models.students import TeacherInit, TeacherInitError
from test_models_encoder import batch

torch.set_num_threads(2)

TINY_CNN = [[16, 10, 5], [16, 3, 2], [16, 3, 2], [16, 3, 2], [16, 3, 2], [16, 2, 2], [16, 2, 2]]


def tiny(**changes) -> EncoderConfig:
    base = dict(conv_layers=TINY_CNN, hidden_size=32, num_layers=2, num_heads=4, ffn_size=48, pos_conv_kernel=8,
                pos_conv_groups=4)
    base.update(changes)
    return EncoderConfig(**base)


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("bias") or "norm" in name or "gate_scale" in name or "up.weight" in name:
            p.add_(0.2 * torch.randn(p.shape, generator=generator))
    return model


# published counts (specs/methods/01, 04, 05, 07): encoder, heads, total as the paper counts it
EXPECTED = {
    "distilhubert": (23_491_200, 3_543_552, 23_491_200),
    "armhubert": (22_015_552, 4_432_896, 26_448_448),
    "armhubert_s": (18_403_552, 3_990_528, 22_394_080),
    "armwavlm_s": (18_403_552, 3_990_528, 22_394_080),
    "maskhubert": (22_202_944, 4_432_896, 26_635_840),
    "distilalhubert": (23_492_992, 0, 23_492_992),
    "starhubert": (22_308_592, 0, 22_308_592),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_presets_reproduce_published_parameter_counts(name):
    student = build_student(name)
    encoder, heads, total = EXPECTED[name]
    assert count_parameters(student.encoder) == encoder
    assert (sum(p.numel() for p in student.heads.parameters()) if student.heads else 0) == heads
    assert student.num_params() == total == student.preset.published_params


def test_every_issue_preset_is_available():
    assert {"distilhubert", "armhubert", "armhubert_s", "armwavlm_s", "maskhubert", "distilalhubert",
            "starhubert", "dphubert", "oskdft", "oskdft_2024"} <= set(list_presets())


def test_unknown_preset_and_unknown_key_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="unknown student preset 'distilbert'.*distilhubert"):
        build_student("distilbert")
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\nencoder:\n  hidden_sise: 32\n")
    with pytest.raises(ConfigError, match=f"{path}: encoder: unknown key 'hidden_sise'.*did you mean 'hidden_size'"):
        build_student(path)
    path.write_text("name: mine\ninit_from_teacher:\n  layer: [0]\n")
    with pytest.raises(ConfigError, match="unknown key 'layer'.*did you mean 'layers'"):
        build_student(path)


def test_distilhubert_copies_what_the_released_code_copies():
    torch.manual_seed(0)
    teacher = randomize_(Encoder(architecture("hubert_base"))).eval()
    student = build_student("distilhubert", teacher)
    s, t = student.encoder.state_dict(), teacher.state_dict()
    for key in ("feature_extractor.blocks.0.conv.weight", "feature_extractor.blocks.0.norm.bias",
                "feature_extractor.blocks.6.conv.weight", "feature_projection.weight", "pos_conv.weight_v",
                "pos_conv.weight_g"):
        assert torch.equal(s[key], t[key]), key
    for layer in (0, 1):
        for part in ("attention.q_proj.weight", "attention.out_proj.bias", "feed_forward.fc1.weight",
                     "final_norm.weight"):
            assert torch.equal(s[f"layers.{layer}.{part}"], t[f"layers.{layer}.{part}"])
    assert not torch.equal(s["encoder_norm.bias"], t["encoder_norm.bias"])  # stays at init
    report = student.init_report
    assert len(report.copied) == 9 + 2 + 3 + 2 * 16
    assert report.left_at_init == ["encoder_norm.weight", "encoder_norm.bias"]
    assert "feature_projection" in report.summary() and "encoder_norm" not in report.summary()
    assert student.heads.config.target_layers == [4, 8, 12] and student.heads.config.out_dim == 768


def test_full_copy_students_reproduce_the_teacher_layers_they_copy():
    teacher = randomize_(Encoder(architecture("hubert_base").replace(num_layers=3))).eval()
    student = build_student("oskdft_2024", teacher)
    assert student.encoder.config.num_layers == 2 and student.encoder.config.adapter_dim == 64
    wavs, lengths = batch([6000, 4000])
    with torch.no_grad():
        expected = teacher(wavs, lengths).hidden_states
        got = student.encoder.eval()(wavs, lengths).hidden_states  # zero-init adapters change nothing
    for i in range(3):
        torch.testing.assert_close(got[i], expected[i], atol=1e-5, rtol=0)
    # paper-era OS-KDFT: first 4 layers of a pre-LN teacher; the last state is after the final LayerNorm
    large_style = tiny(num_layers=5, conv_norm="layer", conv_bias=True, layer_norm_first=True)
    teacher = randomize_(Encoder(large_style)).eval()
    student = build_student("oskdft", teacher)
    with torch.no_grad():
        expected = teacher(wavs, lengths).hidden_states
        got = student.encoder.eval()(wavs, lengths).hidden_states
        for i in range(4):
            torch.testing.assert_close(got[i], expected[i], atol=1e-5, rtol=0)
        torch.testing.assert_close(got[4], teacher.encoder_norm(teacher(wavs, lengths, output_layers={4})
                                                                .hidden_states[4]), atol=1e-5, rtol=0)


def test_dphubert_is_a_gated_copy_of_the_whole_teacher():
    teacher = randomize_(Encoder(tiny(num_layers=2))).eval()
    student = build_student("dphubert", teacher)
    gates = [n for n, _ in student.encoder.named_parameters() if n.endswith("log_alpha")]
    assert len(gates) == 7 + 2 * 2  # CNN layers, heads and FFN of each layer
    t = teacher.state_dict()
    for key, value in student.encoder.state_dict().items():
        if not key.endswith("log_alpha"):
            assert torch.equal(value, t[key]), key
    assert student.heads.config.share_groups == [0, 1, 1, 1] and len(student.heads.projections) == 2


def test_teacher_init_is_strict_about_shapes_and_presence():
    teacher = Encoder(architecture("hubert_base").replace(num_layers=2))
    student = Encoder(tiny(hidden_size=32))
    with pytest.raises(TeacherInitError, match=r"teacher 'layers.1.attention.q_proj.weight' \[768, 768\] does not "
                                               r"fit student 'layers.0.attention.q_proj.weight' \[32, 32\]"):
        init_from_teacher(student, teacher, TeacherInit(layers=[1]))
    with pytest.raises(TeacherInitError, match="teacher layer 5 does not exist"):
        init_from_teacher(student, teacher, {"layers": [5]})
    no_norm = Encoder(tiny(feature_layer_norm=False))
    with pytest.raises(TeacherInitError, match="student has no feature norm"):
        init_from_teacher(no_norm, Encoder(tiny()), {"feature_norm": True})


def _manual_post_ln_layer(layer, x, probs):
    """Reference for a post-LN layer that uses given attention probabilities [B, H, N, N]."""
    b, n, _ = x.shape
    heads = probs.shape[1]
    v = layer.attention.v_proj(x).view(b, n, heads, -1).transpose(1, 2)
    attended = layer.attention.out_proj((probs @ v).transpose(1, 2).reshape(b, n, -1))
    h = F.layer_norm(x + attended, (x.shape[-1],), layer.attention_norm.weight, layer.attention_norm.bias, 1e-5)
    ffn = layer.feed_forward.fc2(F.gelu(layer.feed_forward.fc1(h)))
    return F.layer_norm(h + ffn, (x.shape[-1],), layer.final_norm.weight, layer.final_norm.bias, 1e-5)


def test_attention_reuse_paper_and_released_variants():
    config = tiny(feature_projection=False, conv_layers=[row[:] for row in TINY_CNN[:-1]] + [[32, 2, 2]],
                  attention_reuse=[False, True])
    paper = randomize_(Encoder(config)).eval()
    released = Encoder(config.replace(reuse_mode="released")).eval()
    released.load_state_dict(paper.state_dict())
    assert paper.layers[1].attention.q_proj is None and paper.layers[1].attention.k_proj is None
    wavs, lengths = batch([5000, 3500])
    with torch.no_grad():
        out = paper(wavs, lengths, attention_layers={1, 2})
        first = out.attentions[1]
        assert torch.equal(out.attentions[2], first)  # the map itself is reused
        expected = _manual_post_ln_layer(paper.layers[1], out.hidden_states[1], first)
        valid = ~out.padding_mask
        assert float((expected - out.hidden_states[2])[valid].abs().max()) < 1e-5

        rel = released(wavs, lengths, attention_layers={1, 2})
        b, h, n, _ = first.shape
        # released code: [H, B, N, N] storage read as [B, H, N, N], padded keys masked, softmax again
        scores = first.transpose(0, 1).contiguous().view(b, h, n, n)
        scores = scores.masked_fill(rel.padding_mask[:, None, None, :], float("-inf"))
        used = torch.softmax(scores, dim=-1)
        torch.testing.assert_close(rel.attentions[2], used)
        expected = _manual_post_ln_layer(released.layers[1], rel.hidden_states[1], used)
        assert float((expected - rel.hidden_states[2])[valid].abs().max()) < 1e-5
        assert float((rel.hidden_states[2] - out.hidden_states[2])[valid].abs().max()) > 1e-3
        # one utterance: no permutation, only the second softmax (values squeezed into [1, e] / sum)
        single = released(wavs[:1], attention_layers={1, 2})
        assert torch.allclose(single.attentions[2], torch.softmax(single.attentions[1], dim=-1))


def test_cyclic_layer_sharing_runs_unique_layers_in_turn():
    model = randomize_(Encoder(tiny(num_layers=6, unique_layers=2))).eval()
    assert len(model.layers) == 2
    assert count_parameters(model) == count_parameters(Encoder(tiny(num_layers=2)))
    wavs, lengths = batch([5000, 3000])
    with torch.no_grad():
        out = model(wavs, lengths)
        padding = out.padding_mask
        x = out.hidden_states[0]
        for i in range(6):  # L0, L1, L0, L1, L0, L1
            x = model.layers[i % 2](x, padding)[0]
            torch.testing.assert_close(x, out.hidden_states[i + 1])


def test_layer_gradient_scaling_splits_gradients_as_armhubert():
    plain = randomize_(Encoder(tiny(num_layers=3, dropout=0.0))).train()
    scaled = Encoder(plain.config.replace(layer_grad_scale=True)).train()
    scaled.load_state_dict(plain.state_dict())
    wavs, lengths = batch([5000])
    grads = {}
    for name, model in (("plain", plain), ("scaled", scaled)):
        model.zero_grad()
        out = model(wavs, lengths)
        assert all(torch.equal(a, b) for a, b in zip(out.hidden_states, plain(wavs, lengths).hidden_states))
        out.hidden_states[3].pow(2).sum().backward()  # loss on the last layer's target
        grads[name] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    # m_i = (L - i) / (L - i + 1): target of layer 2 gets 1 - m_2 = 1/2; layer 1 path m_1 = 2/3; layer 0 m_0 = 3/4
    for prefix, factor in (("layers.2.", 1 / 2), ("layers.1.", 1 / 3), ("layers.0.", 1 / 4),
                           ("feature_extractor.", 1 / 4)):
        for n, g in grads["scaled"].items():
            # the key bias has zero gradient in exact arithmetic (softmax ignores a per-row shift)
            if n.startswith(prefix) and not n.endswith("k_proj.bias"):
                reference = grads["plain"][n] * factor
                torch.testing.assert_close(g, reference, rtol=1e-3, atol=1e-5 * float(reference.abs().max()))


def test_adapters_are_zero_at_init_switchable_per_row_and_added_beside_the_ffn():
    config = tiny(num_layers=2, layer_norm_first=True, conv_norm="layer", adapter_dim=8, adapter_scale=0.1,
                  adapter_layer_norm=True)
    model = Encoder(config).eval()
    assert count_parameters(model.layers[0].adapter) == 2 * 32 + 32 * 8 + 8 + 8 * 32 + 32
    wavs, lengths = batch([5000, 4000])
    with torch.no_grad():
        on, off = model(wavs, lengths, use_adapters=True), model(wavs, lengths, use_adapters=False)
        assert all(torch.equal(a, b) for a, b in zip(on.hidden_states, off.hidden_states))
        for layer in model.layers:  # adapter output = 0.1 * up-bias whatever the input
            layer.adapter.up.bias.copy_(torch.arange(32.0))
        first_layer_only = Encoder(config).eval()
        first_layer_only.load_state_dict(model.state_dict())
        first_layer_only.layers[1].adapter.up.bias.zero_()
        shifted = first_layer_only(wavs, lengths, use_adapters=True)
        plain = first_layer_only(wavs, lengths, use_adapters=False)
        torch.testing.assert_close(shifted.hidden_states[1] - plain.hidden_states[1],
                                   (0.1 * torch.arange(32.0)).expand_as(plain.hidden_states[1]), atol=1e-5,
                                   rtol=0)
        rows = model(wavs, lengths, use_adapters=torch.tensor([False, True]))
        all_on = model(wavs, lengths)  # default: on when the model has adapters
        all_off = model(wavs, lengths, use_adapters=False)
        assert torch.equal(rows.hidden_states[2][0], all_off.hidden_states[2][0])
        assert torch.equal(rows.hidden_states[2][1], all_on.hidden_states[2][1])
    noisy = Encoder(tiny(adapter_dim=8, adapter_noise=True)).train()
    for layer in noisy.layers:
        torch.nn.init.normal_(layer.adapter.up.weight)
    a, b = noisy(wavs, lengths).hidden_states[-1], noisy(wavs, lengths).hidden_states[-1]
    assert float((a - b).detach().abs().max()) > 0  # noise only in training
    noisy.eval()
    with torch.no_grad():
        assert torch.equal(noisy(wavs, lengths).hidden_states[-1], noisy(wavs, lengths).hidden_states[-1])


def test_prediction_heads_compute_k_independent_mlps():
    heads = PredictionHeads(HeadsConfig(kind="prediction", in_dim=12, out_dim=10, source_layers=[2],
                                        target_layers=[4, 8, 12]))
    assert heads.split.weight.abs().max() <= 12 ** -0.5
    x = torch.randn(2, 7, 12)
    out = heads(x)
    assert out.shape == (2, 3, 7, 10)
    inner = F.gelu(x @ heads.expand.weight.t() + heads.expand.bias)
    for k in range(3):
        expected = inner[..., k * 12:(k + 1) * 12] @ heads.split.weight[k] + heads.split.bias[k]
        torch.testing.assert_close(out[:, k], expected)
    with pytest.raises(ValueError, match="prediction heads expect"):
        heads(torch.randn(2, 7, 11))


def test_layer_projections_share_groups_and_start_as_identity():
    heads = LayerProjections(HeadsConfig(kind="projection", in_dim=6, out_dim=6, source_layers=[0, 4, 8, 12],
                                         target_layers=[0, 4, 8, 12], share_groups=[0, 1, 1, 1], init="identity"))
    assert len(heads.projections) == 2 and count_parameters(heads) == 2 * (36 + 6)
    states = [torch.randn(1, 3, 6) for _ in range(13)]
    outputs = heads(states)
    for out, layer in zip(outputs, [0, 4, 8, 12]):
        assert torch.equal(out, states[layer])
    assert heads.projections[heads.group_of_head[1]] is heads.projections[heads.group_of_head[3]]
    with pytest.raises(ValueError, match="2 source_layers but 3 target_layers"):
        HeadsConfig(kind="projection", source_layers=[1, 2], target_layers=[1, 2, 3])


def test_grad_multiply_scales_only_the_gradient():
    from speechdistill.models import grad_multiply, layer_grad_split
    x = torch.randn(3, requires_grad=True)
    y = grad_multiply(x, 0.1)
    assert torch.equal(y, x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.full((3,), 0.1))
    x.grad = None
    main, target = layer_grad_split(x, 0, 12)
    (main.sum() + 2 * target.sum()).backward()
    torch.testing.assert_close(x.grad, torch.full((3,), 12 / 13 + 2 * (1 / 13)))
