"""Encoder forward pass against transformers (small shapes), padding invariance, masks, attention
maps, output selection, training path, bf16 autocast and input checks."""
import math
import re

import pytest
import torch
import torch.nn.functional as F

from speechdistill.models import Encoder, EncoderConfig, load_model
from speechdistill.models.checkpoints import HF_RULES, config_from_hf, encoder_with_weights, map_state_dict
from test_models_support import (SMALL, SMALL_LARGE_STYLE, SMALL_WAVLM, hf_model,
                                 max_diff_per_utterance)

torch.set_num_threads(2)
LENGTHS = [8000, 6100, 3333]


def ours_from_hf(model):
    """Our encoder with the transformers model's weights (in memory, same mapping as an HF dir)."""
    state = model.state_dict()
    config = config_from_hf(model.config.to_dict(), state, normalize=False, source="test")
    mapped, _ = map_state_dict(state, HF_RULES, re.compile("^$"), "test")
    return encoder_with_weights(config, mapped, "test").eval()


def batch(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    wavs = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        wavs[i, :n] = torch.randn(n, generator=g)
    return wavs, torch.tensor(lengths)


@pytest.mark.parametrize("kind,config", [("hubert", SMALL), ("wav2vec2", SMALL_LARGE_STYLE), ("wavlm", SMALL_WAVLM),
                                         ("wavlm", dict(SMALL_WAVLM, do_stable_layer_norm=True,
                                                        feat_extract_norm="layer", conv_bias=True)),
                                         ("hubert", dict(SMALL, feat_proj_layer_norm=False))])
def test_hidden_states_equal_transformers_alone_and_batched(tmp_path, kind, config):
    reference = hf_model(kind, **config)
    reference.save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf")
    wavs, lengths = batch(LENGTHS)
    with torch.no_grad():
        batched = ours(wavs, lengths)
        assert max(max_diff_per_utterance(batched, reference, wavs, lengths)) < 1e-4
        for b, n in enumerate(LENGTHS):
            alone = ours(wavs[b:b + 1, :n])
            assert max_diff_per_utterance(alone, reference, wavs[b:b + 1, :n], lengths[b:b + 1])[0] < 1e-4
    assert len(batched.hidden_states) == config["num_hidden_layers"] + 1


def test_pre_ln_last_hidden_state_is_after_the_final_layer_norm():
    reference = hf_model("wav2vec2", **SMALL_LARGE_STYLE)
    ours = ours_from_hf(reference)
    wav = batch([5000])[0]
    with torch.no_grad():
        out = ours(wav)
        hf = reference(wav, output_hidden_states=True)
    torch.testing.assert_close(out.hidden_states[-1], hf.last_hidden_state, atol=1e-5, rtol=0)
    # transformers >= 5 returns the last layer before the final LayerNorm at hidden_states[-1]
    before_ln = ours.encoder_norm  # applying it to HF's entry gives ours
    torch.testing.assert_close(before_ln(hf.hidden_states[-1]), out.hidden_states[-1], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.hidden_states[0], hf.hidden_states[0], atol=1e-5, rtol=0)


def test_batched_output_does_not_depend_on_batch_partners_or_padding_content():
    ours = ours_from_hf(hf_model("hubert", **SMALL))
    short = torch.randn(2500)
    with torch.no_grad():
        alone = ours(short[None]).hidden_states
        for partner_length, pad_value in ((16000, 0.0), (9000, 1e3)):
            wavs = torch.full((2, partner_length), pad_value)
            wavs[0] = torch.randn(partner_length) * 5  # loud partner changes batch statistics
            wavs[1, :2500] = short
            out = ours(wavs, torch.tensor([partner_length, 2500]))
            frames = alone[0].shape[1]
            assert int(out.lengths[1]) == frames
            for a, b in zip(alone, out.hidden_states):
                assert float((a[0] - b[1, :frames]).abs().max()) < 1e-5


def test_forward_reads_nothing_back_from_the_device_but_the_lengths_once():
    """Each bool(tensor) / .item() is a device-to-host synchronisation on a GPU; a padded batch's
    forward reads only the lengths, once (Tensor.tolist, outside the dispatcher)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class ScalarReads(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.reads = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket in (torch.ops.aten._local_scalar_dense, torch.ops.aten.nonzero,
                                       torch.ops.aten.is_nonzero):
                self.reads.append(str(func))
            return func(*args, **(kwargs or {}))

    ours = ours_from_hf(hf_model("hubert", **SMALL)).eval()
    wavs, lengths = torch.randn(2, 6000), torch.tensor([6000, 4100])
    with torch.no_grad():
        reference = ours(wavs, lengths).hidden_states[-1]
        with ScalarReads() as mode:
            out = ours(wavs, lengths)
    assert mode.reads == []
    assert torch.equal(out.hidden_states[-1], reference)
    assert out.lengths.tolist() == ours.frame_lengths(lengths).tolist()


def test_frame_lengths_follow_the_conv_formula():
    ours = Encoder(EncoderConfig())
    lengths = torch.tensor([400, 401, 719, 720, 16000, 160000])
    expected = lengths.clone()
    for _, kernel, stride in ours.config.conv_layers:
        expected = torch.div(expected - kernel, stride, rounding_mode="floor") + 1
    assert ours.frame_lengths(lengths).tolist() == expected.tolist() == [1, 1, 1, 2, 49, 499]


def test_attention_probabilities_match_transformers_eager_attention():
    reference = hf_model("hubert", **SMALL)
    reference.config._attn_implementation = "eager"
    ours = ours_from_hf(reference)
    wavs, lengths = batch([6000, 4000])
    with torch.no_grad():
        out = ours(wavs, lengths, attention_layers={1, 3})
        assert sorted(out.attentions) == [1, 3]
        for b in range(2):
            n = int(out.lengths[b])
            hf = reference(wavs[b:b + 1, :int(lengths[b])], output_attentions=True)
            for layer in (1, 3):
                probs = out.attentions[layer][b]  # [H, N, N]
                torch.testing.assert_close(probs[:, :n, :n], hf.attentions[layer - 1][0], atol=1e-5, rtol=0)
                if n < probs.shape[-1]:
                    assert float(probs[:, :, n:].abs().max()) == 0.0  # padded keys get no weight
    # asking for maps does not change the hidden states computed with fused attention
    with torch.no_grad():
        fused = ours(wavs, lengths)
    for a, b in zip(fused.hidden_states, out.hidden_states):
        assert float((a - b).abs().max()) < 1e-5


def test_mask_indices_match_transformers_mask_time_indices():
    reference = hf_model("hubert", **SMALL)
    ours = ours_from_hf(reference)
    wav = batch([6000])[0]
    frames = int(ours.frame_lengths(torch.tensor([6000]))[0])
    mask = torch.zeros(1, frames, dtype=torch.bool)
    mask[0, 10:20] = True
    mask[0, 50:57] = True
    with torch.no_grad():
        out = ours(wav, mask_indices=mask)
        hf = reference(wav, mask_time_indices=mask, output_hidden_states=True)
        plain = ours(wav)
    for a, b in zip(out.hidden_states, hf.hidden_states):
        assert float((a - b).abs().max()) < 1e-4
    assert float((out.hidden_states[0] - plain.hidden_states[0]).abs().max()) > 1e-2
    with pytest.raises(ValueError, match="mask_indices must be"):
        ours(wav, mask_indices=mask[:, :-1])


def test_output_layers_keep_only_what_is_asked_and_stop_early():
    ours = ours_from_hf(hf_model("hubert", **SMALL))
    wav = batch([6000])[0]
    with torch.no_grad():
        full = ours(wav)
        with torch.no_grad():  # poison layer 3: it must not run when only states up to 2 are asked
            for p in ours.layers[2].parameters():
                p.fill_(float("nan"))
        part = ours(wav, output_layers={0, 2})
    assert part.hidden_states[1] is None and part.hidden_states[3] is None
    for i in (0, 2):
        assert torch.equal(part.hidden_states[i], full.hidden_states[i])


def test_normalize_waveform_uses_valid_samples_only():
    config = config_from_hf(hf_model("hubert", **SMALL).config.to_dict(), {}, normalize=False, source="t")
    plain = Encoder(config).eval()
    normalizing = Encoder(config.replace(normalize_waveform=True)).eval()
    normalizing.load_state_dict(plain.state_dict())
    wavs, lengths = batch([7000, 3000])
    wavs = wavs * 3 + 0.5 * (torch.arange(7000) < torch.tensor([[7000], [3000]]))
    with torch.no_grad():
        out = normalizing(wavs, lengths)
        for b, n in enumerate([7000, 3000]):
            alone = plain(F.layer_norm(wavs[b, :n], (n,))[None])
            frames = int(out.lengths[b])
            assert float((alone.hidden_states[-1][0] - out.hidden_states[-1][b, :frames]).abs().max()) < 1e-4


def test_training_path_matches_inference_and_scales_cnn_gradients():
    reference = hf_model("hubert", **dict(SMALL, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                                          feat_proj_dropout=0.0))
    ours = ours_from_hf(reference)
    wavs, lengths = batch([6000, 4000])
    with torch.no_grad():
        expected = ours(wavs, lengths)
    ours.train()
    out = ours(wavs, lengths)
    for a, b in zip(expected.hidden_states, out.hidden_states):
        assert float((a - b.detach()).abs().max()) < 1e-5
    loss = sum(h[0, :int(out.lengths[0])].pow(2).mean() for h in out.hidden_states)
    loss.backward()
    assert [n for n, p in ours.named_parameters() if p.grad is None] == ["mask_embedding"]  # no masking here
    grads = {n: p.grad.clone() for n, p in ours.named_parameters() if p.grad is not None}
    assert all(torch.isfinite(g).all() for g in grads.values())
    # feature_grad_mult scales exactly the CNN gradients
    scaled = Encoder(ours.config.replace(feature_grad_mult=0.1)).train()
    scaled.load_state_dict(ours.state_dict())
    out = scaled(wavs, lengths)
    sum(h[0, :int(out.lengths[0])].pow(2).mean() for h in out.hidden_states).backward()
    for name, p in scaled.named_parameters():
        if name == "mask_embedding":
            continue
        factor = 0.1 if name.startswith("feature_extractor.") else 1.0
        torch.testing.assert_close(p.grad, grads[name] * factor, rtol=1e-4, atol=1e-7)
    frozen = Encoder(ours.config.replace(feature_grad_mult=0.0)).train()
    frozen.load_state_dict(ours.state_dict())
    out = frozen(wavs, lengths)
    out.hidden_states[-1].sum().backward()
    assert all(p.grad is None for n, p in frozen.named_parameters() if n.startswith("feature_extractor."))


def test_bf16_autocast_runs_everything_in_bf16_close_to_fp32():
    ours = ours_from_hf(hf_model("wavlm", **SMALL_WAVLM))
    wavs, lengths = batch([8000, 5000])
    with torch.no_grad():
        exact = ours(wavs, lengths)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = ours(wavs, lengths)
    assert all(h.dtype == torch.bfloat16 for h in low.hidden_states)
    for a, b in zip(exact.hidden_states, low.hidden_states):
        valid = ~exact.padding_mask
        cos = F.cosine_similarity(a[valid], b.float()[valid], dim=-1)
        assert float(cos.min()) > 0.99
        assert float((a - b.float())[valid].abs().max()) < 0.25


@pytest.mark.parametrize("wavs,lengths,message", [
    (torch.zeros(8000), None, "wavs must be"),
    (torch.zeros(2, 8000, dtype=torch.int16), None, "float tensor"),
    (torch.zeros(2, 8000), torch.tensor([8000]), "lengths must be"),
    (torch.zeros(2, 8000), torch.tensor([8000, 9000]), "exceeds"),
    (torch.zeros(2, 8000), torch.tensor([8000, 300]), r"utterance\(s\) \[1\] are shorter than 400 samples"),
])
def test_wrong_inputs_raise_value_errors_that_say_what_was_expected(wavs, lengths, message):
    ours = Encoder(EncoderConfig(num_layers=1, hidden_size=32, num_heads=2, ffn_size=32, pos_conv_groups=2,
                                 conv_layers=[[8, 10, 5], [8, 3, 2], [8, 3, 2], [8, 3, 2], [8, 3, 2], [8, 2, 2],
                                              [8, 2, 2]]))
    with pytest.raises(ValueError, match=message):
        ours(wavs, lengths)


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="'num_heads' \\(5\\) does not divide hidden_size"):
        EncoderConfig(num_heads=5)
    with pytest.raises(ValueError, match="'attention_reuse' has 3 entries"):
        EncoderConfig(attention_reuse=[False, True, False])
    with pytest.raises(ValueError, match="'feature_projection' is false"):
        EncoderConfig(feature_projection=False)
    with pytest.raises(ValueError, match="unknown key 'hiden_size'.*did you mean 'hidden_size'"):
        EncoderConfig.from_dict({"hiden_size": 10})


def test_relative_position_buckets_follow_the_t5_formula():
    from speechdistill.models.components import relative_position_buckets
    buckets = relative_position_buckets(1000, 320, 800)
    # hand-computed: exact below 80, log-spaced to 800, +160 for positive offsets, clipped at 159
    def bucket(offset):
        sign = 160 if offset > 0 else 0
        d = abs(offset)
        if d < 80:
            return sign + d
        return sign + min(159, 80 + int(math.log(d / 80) / math.log(800 / 80) * 80))
    for query, key in ((0, 0), (5, 0), (0, 5), (0, 79), (0, 80), (100, 0), (0, 500), (999, 0), (0, 999)):
        assert int(buckets[query, key]) == bucket(key - query), (query, key)


@pytest.mark.parametrize("kernel", [16, 15])
def test_positional_conv_fft_path_matches_conv1d_across_cached_sizes_and_weight_updates(kernel):
    """The CPU inference path (FFT, spectra kept per size) equals the conv1d training path, for batches
    of alternating lengths (cache hits and evictions) and after the weights change in place."""
    from speechdistill.models.components import SPECTRUM_CACHE_SIZES, PositionalConv
    torch.manual_seed(0)
    conv = PositionalConv(hidden_size=32, kernel=kernel, groups=4)
    with torch.no_grad():
        conv.bias.normal_()
        conv.weight_g.uniform_(0.5, 2.0)

    def reference(x):  # the direct grouped convolution, written out here ("same" padding, even k drops a frame)
        with torch.no_grad():
            y = F.conv1d(x.transpose(1, 2), conv.weight(), conv.bias, padding=kernel // 2, groups=4)
            return F.gelu(y[:, :, :x.shape[1]]).transpose(1, 2)

    frame_counts = [7, 40, 7, 23, 40, 61, 90, 118, 7]  # > SPECTRUM_CACHE_SIZES distinct FFT sizes
    assert len({n for n in frame_counts}) > SPECTRUM_CACHE_SIZES
    for frames in frame_counts:
        x = torch.randn(2, frames, 32)
        with torch.no_grad():
            fast = conv(x)
        torch.testing.assert_close(fast, reference(x), rtol=1e-4, atol=1e-5)
        assert len(conv._spectrum_cache[1]) <= SPECTRUM_CACHE_SIZES
    assert len(conv._spectrum_cache[1]) == SPECTRUM_CACHE_SIZES
    with torch.no_grad():
        conv.weight_v.mul_(-1.5)  # in-place update: the cached spectra are stale
        x = torch.randn(1, 7, 32)
        fast = conv(x)
    torch.testing.assert_close(fast, reference(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("onednn", [False, True])
def test_frozen_weight_casts_are_kept_and_give_what_autocast_gives(onednn, monkeypatch):
    """A frozen model keeps its projection weights ready for each precision: bf16 copies for F.linear, or
    (on CPUs with oneDNN) copies packed for oneDNN's matmul with the FFN's GELU fused. Each product equals
    autocast's own F.linear (exactly for F.linear; to bf16 / float32 rounding when packed), the kept
    operands are reused by the next forward, an fp32 pass keeps its own entry, and an in-place update or a
    replaced parameter is seen by the next forward."""
    from speechdistill.models import components
    from speechdistill.models.components import frozen_linear, frozen_operands
    monkeypatch.setitem(components._ONEDNN_LINEAR, "enabled", onednn and components._ONEDNN_LINEAR["enabled"])
    if onednn and not components._ONEDNN_LINEAR["enabled"]:
        pytest.skip("this torch build has no oneDNN")
    slot = "linear/onednn" if onednn else "linear"
    ours = ours_from_hf(hf_model("hubert", **SMALL))
    wavs, lengths = batch([8000, 5000])
    attention = ours.layers[0].attention
    fc1 = ours.layers[0].feed_forward.fc1
    x = torch.randn(2, 7, fc1.in_features)

    def close(got, want, dtype):
        if not onednn:
            assert torch.equal(got, want)
        else:
            assert got.dtype == want.dtype == dtype
            tolerance = 1e-2 if dtype == torch.bfloat16 else 1e-5
            torch.testing.assert_close(got.float(), want.float(), rtol=tolerance, atol=tolerance)

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        close(frozen_linear(fc1, x), F.linear(x, fc1.weight, fc1.bias), torch.bfloat16)
        close(frozen_linear(fc1, x, gelu=True), F.gelu(F.linear(x, fc1.weight, fc1.bias)), torch.bfloat16)
        weight, bias = frozen_operands(attention, "qkv", attention._qkv_parts(), components._concatenated_qkv)
        assert weight.dtype == torch.bfloat16 and bias.dtype == torch.bfloat16
        parts = (attention.q_proj, attention.k_proj, attention.v_proj)
        assert torch.equal(F.linear(x, weight, bias),
                           F.linear(x, torch.cat([m.weight for m in parts]), torch.cat([m.bias for m in parts])))
        cached = ours(wavs, lengths).hidden_states
        kept = fc1.__dict__["_frozen_operands"][(slot, torch.bfloat16)][1][0]
        assert kept.dtype == torch.bfloat16 and kept.is_mkldnn == onednn
        again = ours(wavs, lengths).hidden_states
        assert fc1.__dict__["_frozen_operands"][(slot, torch.bfloat16)][1][0] is kept  # reused, not re-cast
        with torch.autocast("cpu", enabled=False):  # an fp32 pass in between keeps its own entry
            close(frozen_linear(fc1, x), F.linear(x, fc1.weight, fc1.bias), torch.float32)
            assert ours(wavs, lengths).hidden_states[-1].dtype == torch.float32
        kept_fp32 = fc1.__dict__["_frozen_operands"][(slot, None)][1][0]
        assert kept_fp32 is fc1.weight if not onednn else kept_fp32.dtype == torch.float32 and kept_fp32.is_mkldnn
        assert fc1.__dict__["_frozen_operands"][(slot, torch.bfloat16)][1][0] is kept
        assert all(torch.equal(a, b) for a, b in zip(cached, again))
        fc1.weight.mul_(0.5)
        changed = ours(wavs, lengths).hidden_states
        assert fc1.__dict__["_frozen_operands"][(slot, torch.bfloat16)][1][0] is not kept
        assert not torch.equal(changed[-1], cached[-1])
    with torch.no_grad():  # autocast off: fp32 operands, not the bf16 copies
        assert frozen_operands(fc1, "linear", (fc1.weight, fc1.bias), tuple)[0].dtype == torch.float32
        # a replaced parameter (not an in-place update) is a different object: the cache is not reused
        fc1.weight = torch.nn.Parameter(torch.full_like(fc1.weight, 0.01), requires_grad=False)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            close(frozen_linear(fc1, x), F.linear(x, fc1.weight, fc1.bias), torch.bfloat16)


def _graph_nodes(tensor):
    """Names of every autograd node behind ``tensor``."""
    names, stack, seen = set(), [tensor.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return names


@pytest.mark.parametrize("kernel,stride,channels,bias,per_row", [
    (3, 2, 24, True, False), (2, 2, 24, False, False), (10, 5, 1, False, False), (10, 5, 1, True, True),
    (3, 2, 8, True, True)])
def test_window_conv_gradients_equal_conv1d(kernel, stride, channels, bias, per_row):
    """The CPU bf16 training path's convolution (window products with a hand-written backward), run in
    float32 here, gives conv1d's output and gradients: shared weights in the parameter layout, per-utterance
    weights (a folded GroupNorm), strided chunks and copied first-layer windows."""
    from speechdistill.models.components import _WindowConv
    torch.manual_seed(0)
    batch_size, frames, out_channels = 3, 41, 16
    x = torch.randn(batch_size, frames, channels, dtype=torch.float64)
    copied = kernel > stride and kernel * channels <= out_channels
    x.requires_grad_(not copied)  # copied windows are the waveform: no input gradient
    if per_row:
        weight = torch.randn(batch_size, out_channels, kernel * channels, dtype=torch.float64, requires_grad=True)
        b = torch.randn(batch_size, out_channels, dtype=torch.float64, requires_grad=True) if bias else None
    else:
        weight = torch.randn(out_channels, channels, kernel, dtype=torch.float64, requires_grad=True)
        b = torch.randn(out_channels, dtype=torch.float64, requires_grad=True) if bias else None
    y = _WindowConv.apply(x, weight, b, kernel, stride, per_row)
    if per_row:  # one conv1d per utterance with its own [C_out, C_in, k] weight
        rows = [F.conv1d(x[i:i + 1].transpose(1, 2), weight[i].view(out_channels, kernel, channels).permute(0, 2, 1),
                         None if b is None else b[i], stride=stride) for i in range(batch_size)]
        expected = torch.cat(rows).transpose(1, 2)
    else:
        expected = F.conv1d(x.transpose(1, 2), weight, b, stride=stride).transpose(1, 2)
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-10)
    upstream = torch.randn_like(y)
    inputs = [t for t in (x, weight, b) if t is not None and t.requires_grad]
    ours = torch.autograd.grad(y, inputs, upstream)
    reference = torch.autograd.grad(expected, inputs, upstream)
    for a, r in zip(ours, reference):
        assert a.shape == r.shape and a.dtype == r.dtype
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-10)


def test_cnn_and_positional_conv_train_in_bf16_through_the_fast_path_as_accurately_as_autograd():
    """Under bf16 autocast on CPU the CNN trains through window products and the positional conv through the
    fused weight norm; their gradients are as close to the float32 ones as autograd's own bf16 path
    (conv1d, autocast casts)."""
    ours = ours_from_hf(hf_model("hubert", **dict(SMALL, hidden_dropout=0.0, attention_dropout=0.0,
                                                  activation_dropout=0.0, feat_proj_dropout=0.0))).train()
    wavs, lengths = batch([8000, 6500])

    def gradients(precision, fast=True):
        ours.zero_grad()
        from speechdistill.models import components
        saved = (components.ConvBlock.forward, components.PositionalConv.forward)
        if not fast:  # autograd's own path: what these modules do on a GPU
            def block_forward(self, x, lengths=None, channel_mask=None):
                batch_size, frames, channels = x.shape
                weight, bias = self.product_weights(x, lengths)
                if weight.dim() == 3:
                    per_row = weight.view(batch_size, -1, self.kernel, channels).permute(0, 1, 3, 2).reshape(
                        -1, channels, self.kernel)
                    y = F.conv1d(x.transpose(1, 2).reshape(1, -1, frames), per_row, bias.reshape(-1),
                                 stride=self.stride, groups=batch_size).view(batch_size, -1, y_frames(self, frames))
                else:
                    y = F.conv1d(x.transpose(1, 2), weight.view(-1, self.kernel, channels).permute(0, 2, 1), bias,
                                 stride=self.stride)
                return self._normalize_activate(y.transpose(1, 2), lengths, channel_mask)

            def y_frames(block, frames):
                return (frames - block.kernel) // block.stride + 1

            def positional_forward(self, x):
                y = F.conv1d(x.transpose(1, 2), self.weight(), self.bias, padding=self.kernel // 2, groups=self.groups)
                return F.gelu(y[:, :, :x.shape[1]]).transpose(1, 2)
            components.ConvBlock.forward, components.PositionalConv.forward = block_forward, positional_forward
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                out = ours(wavs, lengths)
            nodes = _graph_nodes(out.hidden_states[-1])
            sum(h.float()[0, :int(out.lengths[0])].pow(2).mean() for h in out.hidden_states).backward()
        finally:
            components.ConvBlock.forward, components.PositionalConv.forward = saved
        return {n: p.grad.clone() for n, p in ours.named_parameters() if p.grad is not None}, nodes

    exact, _ = gradients("fp32", fast=False)
    fast, nodes = gradients("bf16")
    assert {"_WindowConvBackward", "_TapWeightNormBackward", "_GroupedConvByWindowsBackward"} <= nodes
    slow, slow_nodes = gradients("bf16", fast=False)
    assert "_WindowConvBackward" not in slow_nodes
    checked = [n for n in exact if n.startswith(("feature_extractor.", "encoder.pos_conv", "pos_conv"))]
    assert len(checked) >= 8, checked
    for name in checked:
        fast_error = float((fast[name] - exact[name]).norm() / exact[name].norm())
        slow_error = float((slow[name] - exact[name]).norm() / exact[name].norm())
        assert fast_error < 0.02 and fast_error <= 1.5 * slow_error + 1e-3, (name, fast_error, slow_error)


def test_tap_weight_norm_equals_autograd_over_several_row_blocks():
    """The positional conv's fused weight norm (reductions over ~1 MiB row blocks) gives the plain
    expression's weight and gradients in float64, for a kernel of 3 row blocks and a partial one, and
    its bf16 output is the float64 weight rounded once."""
    from speechdistill.models.components import _TapWeightNorm
    torch.manual_seed(0)
    v = torch.randn(50, 107, 128, dtype=torch.float64, requires_grad=True)  # 5350 rows of 128 taps: 2048 per block
    g = torch.rand(1, 1, 128, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(50, 107, 128, dtype=torch.float64)
    reference = v * (g / torch.linalg.vector_norm(v, dim=(0, 1), keepdim=True))
    ref_v, ref_g = torch.autograd.grad(reference, (v, g), upstream)
    fused = _TapWeightNorm.apply(v, g, torch.float64)
    fused_v, fused_g = torch.autograd.grad(fused, (v, g), upstream)
    torch.testing.assert_close(fused, reference, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fused_v, ref_v, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fused_g, ref_g, rtol=1e-10, atol=1e-12)
    in_bf16 = _TapWeightNorm.apply(v.detach().float(), g.detach().float(), torch.bfloat16)
    assert in_bf16.dtype == torch.bfloat16
    exact = reference.detach()
    assert bool(((in_bf16.double() - exact).abs() <= exact.abs() * 2 ** -8 + 1e-30).all())  # one bf16 rounding


def test_float32_cpu_cnn_channels_first_and_time_major_paths_agree(monkeypatch):
    """In float32 on a CPU the CNN trains time-major on window products through oneDNN's matmul; without
    oneDNN's matmul it runs channels-first through conv1d (MKL's float32 GEMM behind the window products
    is half as fast on AMD CPUs). Both give the same features, with padding (GroupNorm statistics over
    valid samples) and a pruned CNN's output scale, in inference and training."""
    from speechdistill.models import components
    from speechdistill.models.components import ConvFeatureExtractor
    torch.manual_seed(0)
    cnn = ConvFeatureExtractor([[32, 10, 5], [32, 3, 2], [32, 3, 2], [32, 2, 2]], norm="group", output_scale=True)
    with torch.no_grad():
        cnn.output_scale.uniform_(0.5, 1.5)
        cnn.blocks[0].norm.weight.uniform_(0.5, 1.5)
        cnn.blocks[0].norm.bias.normal_()
    wavs, lengths = batch([4000, 2500])
    has_onednn = components.onednn_linear_supports(torch.device("cpu"), torch.float32)
    assert cnn._channels_first_float32(wavs) == (not has_onednn)
    with monkeypatch.context() as patch:
        patch.setitem(components._ONEDNN_LINEAR, "enabled", False)
        assert cnn._channels_first_float32(wavs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not cnn._channels_first_float32(wavs)  # bf16 keeps the window products

    # this toy CNN's products are under the size oneDNN's matmul is used from: take it anyway, so that
    # the time-major side runs the float32 window products on oneDNN as a full-size CNN does
    monkeypatch.setattr(components, "ONEDNN_MIN_MACS", 0)

    def run(channels_first, grad):
        monkeypatch.setattr(ConvFeatureExtractor, "_channels_first_float32",
                            lambda self, w: channels_first)
        cnn.zero_grad()
        with torch.set_grad_enabled(grad):
            features, _ = cnn(wavs, lengths)
        if not grad:
            return features, None
        valid = int(cnn.output_lengths(lengths)[1])
        (features[1, :valid].pow(2).mean() + features[0].pow(2).mean()).backward()
        return features.detach(), {n: p.grad.clone() for n, p in cnn.named_parameters()}

    for grad in (False, True):
        fast, fast_grads = run(True, grad)
        slow, slow_grads = run(False, grad)
        assert fast.shape == slow.shape == (2, int(cnn.output_lengths(torch.tensor(4000))), 32)
        torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)
        if grad:
            for name in slow_grads:
                torch.testing.assert_close(fast_grads[name], slow_grads[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_cpu_dropout_keeps_each_element_with_probability_1_minus_p_and_scales_exactly(p):
    """The CPU dropout (four 16-bit draws per 64-bit random word) keeps 1 - p of the elements at every
    position of the word (a draw with a constant top bit, as from a 63-bit word, would keep 0.925 or
    1.0 at one of them for p = 0.1), scales the kept ones by the exact inverse of their keep probability,
    passes the gradient through the same mask, and repeats under the same seed."""
    from speechdistill.models.components import Dropout, dropout
    x = torch.rand(1000, 1000, dtype=torch.float64) + 0.5
    x.requires_grad_(True)
    torch.manual_seed(0)
    y = dropout(x, p)
    kept = y != 0
    for slot in range(4):  # positions 0..3 of each 64-bit word
        fraction = float(kept.flatten()[slot::4].double().mean())
        assert abs(fraction - (1 - p)) < 0.004, (slot, fraction)
    scale = 65536 / (65536 - round(p * 65536))
    torch.testing.assert_close(y[kept], x.detach()[kept] * scale, rtol=0, atol=0)
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad, kept.double() * scale, rtol=0, atol=0)
    torch.manual_seed(0)
    assert torch.equal(dropout(x.detach(), p), y.detach())
    layer = Dropout(p)
    assert torch.equal(layer.eval()(x), x) and repr(layer) == f"Dropout(p={p})"
    half = torch.randn(2, 129, 3072).to(torch.bfloat16)
    assert dropout(half, p).dtype == torch.bfloat16
    assert torch.equal(dropout(half, 1.0), torch.zeros_like(half)) and dropout(half, 0.0) is half


def test_window_conv_bias_gradient_sums_frames_blockwise_in_float32():
    """The window-conv bias gradient sums bf16 frames in float32 over blocks of frames (4 blocks and a
    partial one here) and equals the float64 sum to float32 accuracy."""
    from speechdistill.models.components import _sum_over_frames
    torch.manual_seed(0)
    x = torch.randn(2, 1100, 512).to(torch.bfloat16)
    total = _sum_over_frames(x, torch.float32)
    assert total.dtype == torch.float32 and total.shape == (2, 512)
    torch.testing.assert_close(total.double(), x.double().sum(1), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kernel,groups,block", [(8, 4, None), (7, 3, None), (8, 4, 64), (5, 3, 5)])
def test_grouped_conv_by_windows_equals_conv1d(kernel, groups, block, monkeypatch):
    """The positional conv's bf16 CPU training path (window products per group and block of frames) gives
    conv1d's "same"-length output and all three gradients in float64: even and odd kernels, one block or
    many (a block smaller than one frame of every utterance still takes one)."""
    from speechdistill.models.components import _GroupedConvByWindows
    if block is not None:
        monkeypatch.setattr(_GroupedConvByWindows, "BLOCK_ELEMENTS", block)
    torch.manual_seed(0)
    batch_size, frames, channels = 3, 41, 24
    x = torch.randn(batch_size, frames, channels, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(channels, channels // groups, kernel, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(channels, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(batch_size, frames, channels, dtype=torch.float64)
    ours = _GroupedConvByWindows.apply(x, weight, bias, groups)
    reference = F.conv1d(x.transpose(1, 2), weight, bias, padding=kernel // 2, groups=groups)[:, :, :frames]
    reference = reference.transpose(1, 2)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    for got, want in zip(torch.autograd.grad(ours, (x, weight, bias), upstream),
                         torch.autograd.grad(reference, (x, weight, bias), upstream)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_frozen_linear_handles_empty_inputs_and_fully_pruned_layers():
    """Zero rows, or a layer with every unit pruned ([0, D] weight), give F.linear's (empty) result; an input
    of the wrong width gets F.linear's shape error; none of them switches the oneDNN path off."""
    from speechdistill.models import components
    from speechdistill.models.components import frozen_linear, linear
    enabled = components._ONEDNN_LINEAR["enabled"]
    pruned, full = linear(8, 0).requires_grad_(False), linear(8, 4).requires_grad_(False)
    with torch.no_grad():
        assert frozen_linear(pruned, torch.randn(3, 8)).shape == (3, 0)
        assert frozen_linear(full, torch.randn(0, 8)).shape == (0, 4)
        x = torch.randn(3, 8)
        torch.testing.assert_close(frozen_linear(full, x, gelu=True), F.gelu(F.linear(x, full.weight, full.bias)))
    with torch.no_grad(), pytest.raises(RuntimeError, match="cannot be multiplied"):  # F.linear's own message
        frozen_linear(full, torch.randn(3, 7))
    assert components._ONEDNN_LINEAR["enabled"] == enabled


@pytest.mark.parametrize("kernel,stride,channels,per_row", [(3, 2, 24, False), (10, 5, 1, True), (3, 2, 8, True)])
def test_window_conv_computes_only_valid_frames_and_matches_conv1d_on_them(kernel, stride, channels, per_row):
    """With per-utterance valid output frames, the window products compute only those (the others are 0)
    and give conv1d's values on them and conv1d's gradients of a loss over them."""
    from speechdistill.models.components import _WindowConv
    torch.manual_seed(0)
    batch_size, frames, out_channels = 3, 41, 16
    x = torch.randn(batch_size, frames, channels, dtype=torch.float64)
    copied = kernel > stride and kernel * channels <= out_channels
    x.requires_grad_(not copied)
    shape = (batch_size, out_channels, kernel * channels) if per_row else (out_channels, channels, kernel)
    weight = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(*((batch_size, out_channels) if per_row else (out_channels,)), dtype=torch.float64,
                       requires_grad=True)
    out_frames = (frames - kernel) // stride + 1
    rows = [out_frames, out_frames - 5, 3]
    valid = (torch.arange(out_frames)[None, :] < torch.tensor(rows)[:, None])[..., None]
    ours = _WindowConv.apply(x, weight, bias, kernel, stride, per_row, rows)
    assert bool((ours[~valid.expand_as(ours)] == 0).all())
    if per_row:
        per_utt = weight.view(batch_size, out_channels, kernel, channels).permute(0, 1, 3, 2)
        reference = torch.stack([F.conv1d(x[b].t()[None], per_utt[b], bias[b], stride=stride)[0].t()
                                 for b in range(batch_size)])
    else:
        reference = F.conv1d(x.transpose(1, 2), weight, bias, stride=stride).transpose(1, 2)
    torch.testing.assert_close(ours * valid, reference * valid, rtol=1e-12, atol=1e-12)
    upstream = torch.randn_like(ours)
    inputs = [t for t in (x, weight, bias) if t.requires_grad]
    for got, want in zip(torch.autograd.grad((ours * upstream).sum(), inputs),
                         torch.autograd.grad((reference * valid * upstream).sum(), inputs)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_gradients_flow_through_frozen_projections_to_trainable_inputs():
    """A frozen layer between trainable ones (adapters, a frozen backbone under a trainable front) keeps
    autograd: its input gets F.linear's gradient, not the packed oneDNN op's missing one."""
    from speechdistill.models.components import frozen_linear
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 4).requires_grad_(False)
    x = torch.randn(3, 8, requires_grad=True)
    y = frozen_linear(layer, x, gelu=True)
    assert y.requires_grad
    (grad,) = torch.autograd.grad(y.sum(), x)
    reference = x.detach().requires_grad_(True)
    (expected,) = torch.autograd.grad(F.gelu(F.linear(reference, layer.weight, layer.bias)).sum(), reference)
    torch.testing.assert_close(grad, expected)


def test_models_with_kept_operands_can_be_copied_and_pickled():
    """After a frozen forward (packed oneDNN weights kept), deepcopy and torch.save of the module work and
    the copy starts without the kept operands, then gives the same output."""
    import copy
    import io
    from speechdistill.models.components import FeedForward
    torch.manual_seed(0)
    block = FeedForward(8, 16).eval()
    x = torch.randn(2, 3, 8)
    with torch.no_grad():
        expected = block(x)
        assert block.fc1.__dict__["_frozen_operands"]
        clone = copy.deepcopy(block)
        assert not clone.fc1.__dict__["_frozen_operands"]
        torch.testing.assert_close(clone(x), expected)
        buffer = io.BytesIO()
        torch.save(block, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
        torch.testing.assert_close(loaded(x), expected)


def test_frozen_float32_cnn_on_packed_onednn_products_equals_conv1d(monkeypatch):
    """Frozen float32 CPU inference runs the CNN's shared-weight layers as packed oneDNN products over
    windows (valid frames only); features equal the channels-first conv1d path's on a padded batch,
    padded frames 0 on both."""
    from speechdistill.models import components
    from speechdistill.models.components import ConvFeatureExtractor
    if not components.onednn_linear_supports(torch.device("cpu"), torch.float32):
        pytest.skip("this torch build has no oneDNN")
    torch.manual_seed(0)
    cnn = ConvFeatureExtractor([[32, 10, 5], [32, 3, 2], [32, 3, 2], [32, 2, 2]], norm="group").eval()
    wavs, lengths = batch([4000, 2500])
    with torch.no_grad():
        packed, _ = cnn(wavs, lengths)
        assert all(("conv/onednn", None) in block.__dict__["_frozen_operands"] for block in cnn.blocks[1:])
        monkeypatch.setattr(components.ConvBlock, "packs_for_onednn", lambda self, device, dtype: False)
        reference, _ = cnn(wavs, lengths)
    torch.testing.assert_close(packed, reference, rtol=1e-5, atol=1e-6)
    frames = int(cnn.output_lengths(torch.tensor(2500)))
    assert frames < packed.shape[1] and bool((packed[1, frames:] == 0).all())


@pytest.mark.parametrize("time_dim", [1, 2])
@pytest.mark.parametrize("per_utterance", [True, False])
def test_zero_padded_frames_zeroes_exactly_the_padded_frames(time_dim, per_utterance):
    """Padded CNN frames are zeroed per utterance (CPUs) or by one mask (GPUs, forced here on a CPU
    tensor); both zero exactly each utterance's frames from its length on, time-major or channels-first."""
    from speechdistill.models.components import _zero_padded_frames
    torch.manual_seed(0)
    y = torch.randn(3, 11, 4) if time_dim == 1 else torch.randn(3, 4, 11)
    lengths = [11, 6, 1]
    expected = y.clone()
    for row, count in enumerate(lengths):
        (expected[row, count:] if time_dim == 1 else expected[row, :, count:]).zero_()
    got = _zero_padded_frames(y.clone(), lengths, time_dim, per_utterance=per_utterance)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert _zero_padded_frames(y, None, time_dim) is y


def test_onednn_matmul_equals_mm_on_every_operand_layout_the_cnn_passes():
    """Window views (rows apart by the stride), overlapping windows, column slices and transposes, as
    window_products and _WindowConv pass them; a weight operand with gaps between its rows is copied
    first (oneDNN's reference kernel took seconds for it)."""
    import time

    from speechdistill.models.components import matmul, matmul_into, onednn_linear_supports, onednn_matmul
    if not onednn_linear_supports(torch.device("cpu"), torch.float32):
        pytest.skip("this torch has no oneDNN matmul")
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4000, 512, generator=generator)
    third_tap = torch.as_strided(x, (1999, 512), (1024, 1), 1024)  # rows 1024 apart, 512 wide
    overlapping = torch.randn(16000, generator=generator).unfold(0, 10, 5)  # [3199, 10], strides (5, 1)
    weight = torch.randn(512, 1536, generator=generator)
    grad = torch.randn(1999, 512, generator=generator)
    cases = [(third_tap, weight[:, 1024:].t()), (grad.t(), third_tap), (grad, weight[:, :512]),
             (torch.randn(512, 3199, generator=generator), overlapping), (x[0, :3998].reshape(1999, 1024), weight[:, :1024].t())]
    for a, b in cases:
        start = time.perf_counter()
        product = onednn_matmul(a, b)
        assert time.perf_counter() - start < 2.0  # not the reference kernel
        torch.testing.assert_close(product, torch.mm(a, b), rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(matmul(a, b), product, rtol=1e-4, atol=1e-3)
        out = torch.ones(a.shape[0], b.shape[1])
        matmul_into(out, a, b, accumulate=True)
        torch.testing.assert_close(out, product + 1, rtol=1e-4, atol=1e-3)
        matmul_into(out, a, b)
        torch.testing.assert_close(out, product, rtol=1e-4, atol=1e-3)


def test_float32_training_products_run_on_onednn_and_equal_f_linear():
    """Trainable float32 projections on a CPU (and the heads' split products) go through oneDNN's matmul
    in forward and backward; values and every gradient equal F.linear's / einsum's."""
    from speechdistill.models.components import dense_linear_applies, frozen_linear, onednn_linear_supports
    from speechdistill.models.heads import SplitLinear
    if not onednn_linear_supports(torch.device("cpu"), torch.float32):
        pytest.skip("this torch has no oneDNN matmul")
    torch.manual_seed(0)
    layer = torch.nn.Linear(256, 320)
    x = torch.randn(3, 300, 512)[..., ::2].requires_grad_()  # a non-contiguous input, 900 x 256 x 320 MACs
    y = frozen_linear(layer, x, gelu=True)
    assert "DenseOneDnnLinear" in type(y.grad_fn.next_functions[0][0]).__name__
    (y.square().sum() + y[0, 0, 0]).backward()
    ours = [t.grad.clone() for t in (x, layer.weight, layer.bias)]
    for t in (x, layer.weight, layer.bias):
        t.grad = None
    reference = F.gelu(F.linear(x, layer.weight, layer.bias))
    (reference.square().sum() + reference[0, 0, 0]).backward()
    torch.testing.assert_close(y, reference, rtol=1e-5, atol=1e-5)
    for mine, theirs in zip(ours, (x.grad, layer.weight.grad, layer.bias.grad)):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4)
    # a frozen layer between trainable ones: only the input gets a gradient
    layer.requires_grad_(False)
    x.grad = None
    frozen_linear(layer, x).sum().backward()
    torch.testing.assert_close(x.grad, layer.weight.sum(0).expand_as(x), rtol=1e-5, atol=1e-5)
    # bf16 autocast, empty inputs and fully pruned layers keep F.linear
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not dense_linear_applies(x, layer.weight, layer.bias)
    assert not dense_linear_applies(x[:0], layer.weight, layer.bias)
    assert not dense_linear_applies(x, layer.weight[:0], layer.bias[:0])
    assert not dense_linear_applies(x[:, :10], layer.weight, layer.bias)  # too small to repay a new kernel

    split = SplitLinear(3, 256, 320)
    h = torch.randn(4, 300, 768, requires_grad=True)
    assert dense_linear_applies(h[..., :256], split.weight[0].t(), split.bias[0])
    out = split(h)
    assert out.shape == (4, 300, 3, 320)
    out.square().sum().backward()
    ours = [t.grad.clone() for t in (h, split.weight, split.bias)]
    for t in (h, split.weight, split.bias):
        t.grad = None
    chunks = h.unflatten(-1, (3, 256))
    reference = torch.einsum("...ki,kio->...ko", chunks, split.weight) + split.bias
    reference.square().sum().backward()
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    for mine, theirs in zip(ours, (h.grad, split.weight.grad, split.bias.grad)):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4)


def test_inference_softmax_reuses_the_scores_buffer_and_training_keeps_autograd():
    from speechdistill.models.components import _softmax_last_dim
    scores = torch.randn(2, 3, 5, 5)
    expected = torch.softmax(scores, dim=-1)
    with torch.no_grad():
        probs = _softmax_last_dim(scores)
    assert probs.data_ptr() == scores.data_ptr()  # no fresh [B, H, N, N] buffer
    torch.testing.assert_close(probs, expected, rtol=0, atol=0)
    trained = torch.randn(2, 3, 5, 5, requires_grad=True)
    out = _softmax_last_dim(trained)
    assert out.data_ptr() != trained.data_ptr()
    (out * torch.arange(5.0)).sum().backward()
    reference = trained.detach().clone().requires_grad_()
    (torch.softmax(reference, -1) * torch.arange(5.0)).sum().backward()
    torch.testing.assert_close(trained.grad, reference.grad)
