"""Student presets: published parameter counts, teacher initialisation, attention-map reuse (paper and
released-code variants), cyclic layer sharing, layer gradient scaling, adapters and heads."""
import math

import pytest
import torch
import torch.nn.functional as F

from speechdistill.config import ConfigError
from speechdistill.models import (Encoder, EncoderConfig, HeadsConfig, LayerProjections, PredictionHeads,
                                  architecture, build_student, count_parameters, init_from_teacher, list_presets,
                                  load_model, load_preset, save_model)
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
    "starhubert_l": (26_626_672, 0, 26_626_672),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_presets_reproduce_published_parameter_counts(name):
    student = build_student(name)
    encoder, heads, total = EXPECTED[name]
    assert count_parameters(student.encoder) == encoder
    assert (sum(p.numel() for p in student.heads.parameters()) if student.heads else 0) == heads
    assert student.num_params() == total == student.preset.published_params


def test_starhubert_l_reproduces_the_published_size_and_macs_ratio():
    """STaRHuBERT-L's architecture is not published; the preset's (STaRHuBERT with FFN 1392) gives the published
    26.63 M and 511.9 / 463.5 G MACs relative to STaRHuBERT, at the input length where HuBERT Base / STaRHuBERT
    gives the published 1669 / 463.5."""
    from speechdistill.models.profiling import count_macs
    large, base = build_student("starhubert_l"), build_student("starhubert")
    assert round(large.num_params() / 1e6, 2) == 26.63 and round(base.num_params() / 1e6, 2) == 22.31
    samples = int(9.7 * 16000)
    macs = {name: count_macs(config, samples)["total"]
            for name, config in (("hubert", architecture("hubert_base")), ("star", base.encoder.config),
                                 ("large", large.encoder.config))}
    assert macs["hubert"] / macs["star"] == pytest.approx(1669 / 463.5, rel=2e-3)
    assert macs["large"] / macs["star"] == pytest.approx(511.9 / 463.5, rel=2e-3)
    wider = base.encoder.config.replace(conv_layers=[[128, 10, 5], [256, 1, 1]] + [[256, 3, 2]] * 4
                                        + [[480, 1, 1], [480, 2, 2], [480, 2, 2]], hidden_size=480, ffn_size=1024)
    assert count_parameters(Encoder(wider)) == 26_630_752  # the same size at ARMHuBERT's width ...
    assert count_macs(wider, samples)["total"] / macs["star"] > 1.12  # ... does not give the published MACs


def test_every_issue_preset_is_available():
    assert {"distilhubert", "armhubert", "armhubert_s", "armwavlm_s", "maskhubert", "distilalhubert",
            "starhubert", "starhubert_l", "dphubert", "oskdft", "oskdft_2024"} <= set(list_presets())


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


@pytest.mark.parametrize("name,teacher_config,layers", [
    ("oskdft_2024", architecture("hubert_base").replace(num_layers=3), [0, 1]),
    ("oskdft", tiny(num_layers=5, conv_norm="layer", conv_bias=True, layer_norm_first=True), [0, 1, 2, 3])])
def test_oskdft_students_copy_what_the_released_code_copies(name, teacher_config, layers):
    """Both released generations load feature_extractor, feature_projection (whose LayerNorm is our
    feature_norm) and encoder.layers[i] from the teacher; the positional conv, the encoder LayerNorm and the
    adapters keep their init, and the adapters' Linears are N(0, 0.02^2) with zero biases (the models'
    _init_weights runs after the adapters are built)."""
    torch.manual_seed(0)
    teacher = randomize_(Encoder(teacher_config)).eval()
    student = build_student(name, teacher)
    s, t = student.encoder.state_dict(), teacher.state_dict()
    copied = {k for k in s if k.startswith(("feature_extractor.", "feature_norm.", "feature_projection."))
              or (k.startswith("layers.") and ".adapter." not in k)}
    for key in copied:
        assert torch.equal(s[key], t[key]), key
    kept = sorted(set(s) - copied)
    assert kept == sorted(k for k in s if k.startswith(("pos_conv.", "encoder_norm.")) or ".adapter." in k)
    for key in kept:
        if not key.endswith(("adapter.norm.weight", "adapter.norm.bias")):
            assert key not in t or not torch.equal(s[key], t[key]), key
    assert sorted(student.init_report.left_at_init) == kept
    assert {k for k, _, _ in student.init_report.copied} == copied
    assert sorted({int(k.split(".")[1]) for k in copied if k.startswith("layers.")}) == list(range(len(layers)))
    for i in range(len(layers)):
        adapter = student.encoder.layers[i].adapter
        for linear in (adapter.down, adapter.up):
            assert float(linear.weight.detach().std()) == pytest.approx(0.02, rel=0.1)
            assert abs(float(linear.weight.detach().mean())) < 0.002 and torch.count_nonzero(linear.bias) == 0
    assert student.encoder.config.adapter_residual == ("released" if name == "oskdft" else "none")


def test_oskdft_students_with_the_whole_copy_reproduce_the_teacher_layers():
    """The alternative to the released init: copy the positional conv and the encoder LayerNorm too, zero up
    projections and no residual; the student then computes the teacher's first layers, adapters on or off."""
    full = {"pos_conv": True, "encoder_norm": True}
    intended = {"adapter_residual": "none", "adapter_init": "zero_up"}
    teacher = randomize_(Encoder(architecture("hubert_base").replace(num_layers=3))).eval()
    preset = load_preset("oskdft_2024")
    preset.init_from_teacher = TeacherInit(**{**vars(preset.init_from_teacher), **full})
    student = build_student(preset, teacher, overrides=intended)
    assert student.encoder.config.num_layers == 2 and student.encoder.config.adapter_dim == 64
    wavs, lengths = batch([6000, 4000])
    with torch.no_grad():
        expected = teacher(wavs, lengths).hidden_states
        got = student.encoder.eval()(wavs, lengths).hidden_states  # zero-init adapters change nothing
    for i in range(3):
        torch.testing.assert_close(got[i], expected[i], atol=1e-5, rtol=0)
    # paper-era OS-KDFT: first 4 layers of a pre-LN teacher; the last state is after the final LayerNorm
    teacher = randomize_(Encoder(tiny(num_layers=5, conv_norm="layer", conv_bias=True, layer_norm_first=True))).eval()
    preset = load_preset("oskdft")
    preset.init_from_teacher = TeacherInit(**{**vars(preset.init_from_teacher), **full})
    student = build_student(preset, teacher, overrides=intended)
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


def _layer_gradients(model, target_index):
    """Gradients of every parameter for a loss on hidden state ``target_index`` (a layer's target)."""
    model.zero_grad()
    wavs, lengths = batch([5000])
    model(wavs, lengths).hidden_states[target_index].pow(2).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("mode", ["released", "independent"])
def test_layer_gradient_scaling_matches_the_hand_computed_armhubert_split(mode):
    """Layer i's output x_i continues with gradient scale m_i = (L - i) / (L - i + 1); the distillation target
    of layer k carries m_k (1 - m_k) in the released code (GradMultiply(x, 1 - m) of the already scaled x)
    and 1 - m_k when taken from the unscaled output. A loss on the target of layer k reaches the parameters of
    layer j <= k scaled by m_j ... m_{k-1} times that."""
    plain = randomize_(Encoder(tiny(num_layers=3, dropout=0.0))).train()
    scaled = Encoder(plain.config.replace(layer_grad_scale=mode)).train()
    scaled.load_state_dict(plain.state_dict())
    wavs, lengths = batch([5000])
    assert all(torch.equal(a, b) for a, b in zip(scaled(wavs, lengths).hidden_states, plain(wavs, lengths).hidden_states))
    m = [3 / 4, 2 / 3, 1 / 2]
    target = [m_k * (1 - m_k) if mode == "released" else 1 - m_k for m_k in m]
    for k in (1, 2):  # targets of layers 1 and 2 (hidden states 2 and 3)
        expected_scale = {f"layers.{j}.": target[k] * math.prod(m[j:k]) for j in range(k + 1)}
        expected_scale["feature_extractor."] = expected_scale["layers.0."]
        reference, got = _layer_gradients(plain, k + 1), _layer_gradients(scaled, k + 1)
        assert not any(n.startswith(f"layers.{k + 1}.") for n in got)
        checked = 0
        for prefix, factor in expected_scale.items():
            for n, g in got.items():
                # the key bias has zero gradient in exact arithmetic (softmax ignores a per-row shift)
                if n.startswith(prefix) and not n.endswith("k_proj.bias"):
                    want = reference[n] * factor
                    torch.testing.assert_close(g, want, rtol=1e-3, atol=1e-5 * float(want.abs().max()))
                    checked += 1
        assert checked > 20
    # the numbers of the two variants at the last layer: 1/4 (released) and 1/2 (independent)
    assert target[2] == (0.25 if mode == "released" else 0.5)


def test_layer_gradient_scaling_keeps_old_boolean_configs_loading(tmp_path):
    assert EncoderConfig.from_dict({"layer_grad_scale": True}).layer_grad_scale == "independent"
    assert EncoderConfig.from_dict({"layer_grad_scale": False}).layer_grad_scale == "none"
    assert EncoderConfig(layer_grad_scale=True).to_dict()["layer_grad_scale"] == "independent"
    with pytest.raises(ConfigError, match=r"layer_grad_scale.*'paper' is not one of \['none', 'released', "
                                          r"'independent'\]"):
        EncoderConfig.from_dict({"layer_grad_scale": "paper"})
    # a model directory written with the boolean still loads (and trains on with the split it was trained with)
    model = Encoder(tiny(num_layers=2))
    save_model(model, tmp_path / "old")
    text = (tmp_path / "old" / "config.yaml").read_text()
    assert "layer_grad_scale: none" in text
    (tmp_path / "old" / "config.yaml").write_text(text.replace("layer_grad_scale: none", "layer_grad_scale: true"))
    assert load_model(tmp_path / "old").config.layer_grad_scale == "independent"


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


@pytest.mark.parametrize("residual", ["released", "none"])
def test_adapter_residual_matches_the_hand_computed_released_layer(residual):
    """Paper-era OS-KDFT layer (pre-LN): h = x + Attn(LN x); the speaker branch is h + FFN(LN h) + A(h) with
    A(h) = 0.1 up(ReLU(down(LN_a h))) + h in the released code (Adapter(add_residual=True)), so 2h + FFN + 0.1 up;
    without the residual h + FFN + 0.1 up. The distillation branch (adapter rows off) is h + FFN either way."""
    config = tiny(num_layers=2, layer_norm_first=True, conv_norm="layer", adapter_dim=8, adapter_scale=0.1,
                  adapter_layer_norm=True, adapter_residual=residual, adapter_init="normal")
    model = randomize_(Encoder(config)).eval()
    layer = model.layers[0]
    wavs, lengths = batch([5000, 5000])
    with torch.no_grad():
        out = model(wavs, lengths, use_adapters=torch.tensor([False, True]))
        x = out.hidden_states[0]
        attended, _ = layer.attention(layer.attention_norm(x))
        h = x + attended
        ffn = layer.feed_forward.fc2(F.gelu(layer.feed_forward.fc1(
            F.layer_norm(h, (32,), layer.final_norm.weight, layer.final_norm.bias, 1e-5))))
        a = layer.adapter
        normed = F.layer_norm(h, (32,), a.norm.weight, a.norm.bias, 1e-5)
        up = F.relu(normed @ a.down.weight.t() + a.down.bias) @ a.up.weight.t() + a.up.bias
        speaker = (2 * h if residual == "released" else h) + ffn + 0.1 * up
        torch.testing.assert_close(out.hidden_states[1][1], speaker[1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.hidden_states[1][0], (h + ffn)[0], atol=1e-5, rtol=1e-5)
        assert float((speaker - (h + ffn)).abs().max()) > (0.5 if residual == "released" else 1e-4)
        # at test time (adapters on for every row) the same formula
        torch.testing.assert_close(model(wavs, lengths).hidden_states[1], speaker, atol=1e-5, rtol=1e-5)
        # even with a zero up projection, the released residual keeps the branches apart
        for each in model.layers:
            each.adapter.up.weight.zero_()
            each.adapter.up.bias.zero_()
        on, off = model(wavs, lengths, use_adapters=True), model(wavs, lengths, use_adapters=False)
        torch.testing.assert_close(on.hidden_states[1], 2 * h + ffn if residual == "released" else h + ffn,
                                   atol=1e-5, rtol=1e-5)
        assert torch.equal(on.hidden_states[2], off.hidden_states[2]) == (residual == "none")


def test_adapter_options_are_checked():
    with pytest.raises(ConfigError, match=r"adapter_residual.*'add' is not one of \['none', 'released'\]"):
        EncoderConfig.from_dict({"adapter_residual": "add"})
    with pytest.raises(ConfigError, match=r"adapter_init.*'lora' is not one of \['zero_up', 'normal'\]"):
        EncoderConfig.from_dict({"adapter_init": "lora"})
    fresh = Encoder(tiny(adapter_dim=8)).layers[0].adapter  # the defaults: zero up projection, no residual
    assert torch.count_nonzero(fresh.up.weight) == 0 and not fresh.residual


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
    main, target = layer_grad_split(x, 0, 12)  # released: the target is taken from the scaled main path
    (main.sum() + 2 * target.sum()).backward()
    torch.testing.assert_close(x.grad, torch.full((3,), 12 / 13 + 2 * (12 / 13) * (1 / 13)))
    x.grad = None
    main, target = layer_grad_split(x, 0, 12, "independent")
    (main.sum() + 2 * target.sum()).backward()
    torch.testing.assert_close(x.grad, torch.full((3,), 12 / 13 + 2 * (1 / 13)))
    # the independent split gives the target 1 / m_i times the released gradient: 1.08x at layer 1, 1.14x at
    # layer 6, 2x at layer 12 (0.5 vs 0.25)
    for layer, ratio in ((0, 13 / 12), (5, 8 / 7), (11, 2.0)):
        y = torch.ones(1, requires_grad=True)
        layer_grad_split(y, layer, 12)[1].sum().backward()
        released = float(y.grad)
        y.grad = None
        layer_grad_split(y, layer, 12, "independent")[1].sum().backward()
        assert float(y.grad) / released == pytest.approx(ratio)
    with pytest.raises(ValueError, match="mode must be 'released' or 'independent'"):
        layer_grad_split(x, 0, 12, "paper")
