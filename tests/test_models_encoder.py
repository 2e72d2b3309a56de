"""Encoder forward pass against transformers (small shapes), padding invariance, masks, attention
maps, output selection, training path, bf16 autocast and input checks."""
import math
import re

import pytest
import torch
import torch.nn.functional as F

from speechdistill.models import Encoder, EncoderConfig, load_model
from speechdistill.models.checkpoints import HF_RULES, config_from_hf, encoder_with_weights, map_state_dict
from host_reads import HostReads
from test_models_support import (SMALL, batch, SMALL_LARGE_STYLE, SMALL_WAVLM, hf_model,
                                 max_diff_per_utterance)

torch.set_num_threads(2)
LENGTHS = [8000, 6100, 3333]


def ours_from_hf(model):
    """Our encoder with the transformers model's weights (in memory, same mapping as an HF dir)."""
    state = model.state_dict()
    config = config_from_hf(model.config.to_dict(), state, normalize=False, source="test")
    mapped, _ = map_state_dict(state, HF_RULES, re.compile("^$"), "test")
    return encoder_with_weights(config, mapped, "test").eval()


@pytest.mark.parametrize("kind,config", [("hubert", SMALL), ("wav2vec2", SMALL_LARGE_STYLE), ("wavlm", SMALL_WAVLM),
                                         ("wavlm", dict(SMALL_WAVLM, do_stable_layer_norm=True,
                                                        feat_extract_norm="layer", conv_bias=True)),
                                         ("hubert", dict(SMALL, feat_proj_layer_norm=False))])
def test_hidden_states_equal_transformers_alone_and_batched(tmp_path, kind, config, kernel_policy):
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


@pytest.mark.parametrize("change", ["fused AdamW", "AdamW", "load_state_dict"])
@pytest.mark.parametrize("frozen", [False, True])
def test_an_eval_forward_after_a_weight_change_equals_a_fresh_model_with_those_weights(tmp_path, change, frozen,
                                                                                      kernel_policy):
    """No derived tensor outlives a change of the weights: after an eval forward, a training step (fused or
    plain AdamW) or a load_state_dict, the next eval forward equals a freshly loaded model given the same
    state dict. ``frozen``: the model is frozen (requires_grad False) for its eval forwards, as a teacher
    is, and unfrozen for the step."""
    hf_model("hubert", **SMALL).save_pretrained(tmp_path / "hf")
    model = load_model(tmp_path / "hf")
    wavs, lengths = batch([8000, 5000])
    model.requires_grad_(not frozen)
    with torch.no_grad():
        before = model(wavs, lengths).hidden_states
    if change == "load_state_dict":
        state = {name: value + 0.01 * torch.randn_like(value) if value.is_floating_point() else value
                 for name, value in model.state_dict().items()}
        model.load_state_dict(state)
    else:
        model.requires_grad_(True).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=change.startswith("fused"))
        out = model(wavs, lengths)
        sum(h.pow(2).mean() for h in out.hidden_states).backward()
        optimizer.step()
        model.eval().requires_grad_(not frozen)
    with torch.no_grad():
        after = model(wavs, lengths).hidden_states
    fresh = load_model(tmp_path / "hf")
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        expected = fresh(wavs, lengths).hidden_states
    assert max(float((a - b).abs().max()) for a, b in zip(before, after)) > 1e-2  # the weights did change
    assert max(float((a - b).abs().max()) for a, b in zip(after, expected)) < 1e-5


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


def test_batched_output_does_not_depend_on_batch_partners_or_padding_content(kernel_policy):
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


@pytest.mark.parametrize("policy", ["reference", "auto"])
def test_forward_reads_nothing_back_from_the_device_given_host_lengths(policy, monkeypatch):
    """Each bool(tensor) / .item() / .tolist() is a device-to-host synchronisation on a GPU: a padded batch's
    forward with the lengths also given as host ints (as a collated batch carries them) reads nothing back
    under the reference path (the GPU's), and without them it reads the lengths once."""
    monkeypatch.setenv("SPEECHDISTILL_KERNELS", policy)
    ours = ours_from_hf(hf_model("hubert", **SMALL)).eval()
    wavs, lengths = torch.randn(2, 6000), torch.tensor([6000, 4100])
    with torch.no_grad():
        expected = ours(wavs, lengths).hidden_states[-1]
        with HostReads() as given:
            out = ours(wavs, lengths, host_lengths=[6000, 4100])
        with HostReads() as read:
            again = ours(wavs, lengths)
    if policy == "reference":
        assert given.events == []
    assert [kind for kind, _ in read.events] == [kind for kind, _ in given.events] + ["tolist"]
    assert torch.equal(out.hidden_states[-1], expected) and torch.equal(again.hidden_states[-1], expected)
    assert out.lengths.tolist() == ours.frame_lengths(lengths).tolist()


def test_frame_lengths_follow_the_conv_formula():
    ours = Encoder(EncoderConfig())
    lengths = torch.tensor([400, 401, 719, 720, 16000, 160000])
    expected = lengths.clone()
    for _, kernel, stride in ours.config.conv_layers:
        expected = torch.div(expected - kernel, stride, rounding_mode="floor") + 1
    assert ours.frame_lengths(lengths).tolist() == expected.tolist() == [1, 1, 1, 2, 49, 499]


def test_attention_probabilities_match_transformers_eager_attention(kernel_policy):
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


def test_training_path_matches_inference_and_scales_cnn_gradients(kernel_policy):
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


def test_inference_softmax_reuses_the_scores_buffer_and_training_keeps_autograd():
    from speechdistill.models.components import softmax_last_dim
    scores = torch.randn(2, 3, 5, 5)
    expected = torch.softmax(scores, dim=-1)
    with torch.no_grad():
        probs = softmax_last_dim(scores)
    assert probs.data_ptr() == scores.data_ptr()  # no fresh [B, H, N, N] buffer
    torch.testing.assert_close(probs, expected, rtol=0, atol=0)
    trained = torch.randn(2, 3, 5, 5, requires_grad=True)
    out = softmax_last_dim(trained)
    assert out.data_ptr() != trained.data_ptr()
    (out * torch.arange(5.0)).sum().backward()
    reference = trained.detach().clone().requires_grad_()
    (torch.softmax(reference, -1) * torch.arange(5.0)).sum().backward()
    torch.testing.assert_close(trained.grad, reference.grad)
