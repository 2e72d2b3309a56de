"""Hard-concrete gates, the expected-size model and pruning into a dense model (DPHuBERT)."""
import math

import pytest
import torch

from speechdistill.models import (Encoder, EncoderConfig, architecture, build_student, count_parameters,
                                  expected_num_params, expected_sparsity, gate_parameters, load_model, prune,
                                  save_model)
from speechdistill.models.hardconcrete import HardConcreteGate
from speechdistill.models.pruning import set_uniform_sparsity
from test_models_encoder import batch
from test_students import randomize_, tiny

torch.set_num_threads(2)


def gated(config: EncoderConfig) -> Encoder:
    return Encoder(config.replace(prune_conv=True, prune_heads=True, prune_ffn=True))


@pytest.mark.parametrize("config", [architecture("hubert_base"), architecture("wavlm_base").replace(num_layers=2),
                                    tiny(conv_norm="layer", conv_bias=True, layer_norm_first=True, adapter_dim=4),
                                    tiny(num_layers=4, unique_layers=2)])
def test_expected_size_is_the_exact_parameter_count(config):
    plain = Encoder(config)
    assert float(expected_num_params(plain)) == count_parameters(plain)
    model = gated(config)
    with torch.no_grad():
        for p in gate_parameters(model):
            p.fill_(30.0)  # every unit surely kept
    gates = sum(p.numel() for p in gate_parameters(model))
    assert float(expected_num_params(model).detach()) == pytest.approx(count_parameters(model) - gates, rel=1e-6)


def test_hard_concrete_gate_expectation_samples_and_deterministic_mask():
    gate = HardConcreteGate(6)
    with torch.no_grad():
        gate.log_alpha.copy_(torch.tensor([-8.0, -1.0, 0.0, 0.5, 2.0, 8.0]))
    # E[L0] = sum sigmoid(log_alpha - beta * log(-l / r)), beta = 2/3, l = -0.1, r = 1.1
    shift = (2 / 3) * math.log(0.1 / 1.1)
    expected = sum(1 / (1 + math.exp(-(a - shift))) for a in [-8.0, -1.0, 0.0, 0.5, 2.0, 8.0])
    assert float(gate.expected_l0().detach()) == pytest.approx(expected, rel=1e-6)
    gate.train()
    with torch.no_grad():
        samples = torch.stack([gate() for _ in range(2000)])
    assert float(samples.min()) == 0.0 and float(samples.max()) == 1.0
    assert float((samples[:, 0] == 0).float().mean()) > 0.95 and float((samples[:, 5] == 1).float().mean()) > 0.95
    gate.eval()
    mask = gate()
    zeros = round(6 - expected)
    assert int((mask == 0).sum()) == zeros and torch.equal(mask[:zeros], torch.zeros(zeros))
    soft = torch.sigmoid(gate.log_alpha.detach()[zeros:] / (2 / 3) * 0.8)
    torch.testing.assert_close(mask[zeros:].detach(), soft)  # kept units keep soft values


def test_dphubert_pruned_at_sparsity_075_lands_within_one_percent_of_published_size():
    student = build_student("dphubert").encoder.eval()
    original = count_parameters(Encoder(architecture("hubert_base").replace(mask_embedding=False)))
    assert original == 94_370_944
    reached = set_uniform_sparsity(student, 0.75, original)
    assert abs(reached - 0.75) < 1e-3
    pruned = prune(student)
    assert count_parameters(pruned) == int(expected_num_params(student).detach())  # size model is exact
    assert abs(count_parameters(pruned) / 23.59e6 - 1) < 0.01
    assert not any(True for _ in gate_parameters(pruned))
    assert pruned.config.prune_heads is False and len(pruned.config.layer_heads) == 12


@pytest.mark.parametrize("config", [tiny(num_layers=3), tiny(conv_norm="layer", conv_bias=True, layer_norm_first=True),
                                    tiny(relative_position_bias=True, num_buckets=16, max_distance=20)])
def test_pruned_dense_model_computes_the_masked_model_output(config, tmp_path):
    model = randomize_(gated(config)).eval()
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in gate_parameters(model):  # a mix of pruned, soft and fully kept units
            p.copy_(torch.randn(p.shape, generator=generator) * 3)
    pruned = prune(model)
    assert count_parameters(pruned) < count_parameters(model) - sum(p.numel() for p in gate_parameters(model))
    # soft gates: the kept counts are round(E[L0]) per group, so the size is close to the expectation
    assert count_parameters(pruned) == pytest.approx(float(expected_num_params(model).detach()), rel=0.05)
    wavs, lengths = batch([6000, 4000])
    with torch.no_grad():
        masked, dense = model(wavs, lengths), pruned(wavs, lengths)
    for a, b in zip(masked.hidden_states, dense.hidden_states):
        assert float((a - b).abs().max()) < 1e-4
    save_model(pruned, tmp_path / "pruned")
    with torch.no_grad():
        reloaded = load_model(tmp_path / "pruned")(wavs, lengths)
    assert all(torch.equal(a, b) for a, b in zip(dense.hidden_states, reloaded.hidden_states))


def test_heads_and_ffn_can_be_pruned_away_entirely():
    model = randomize_(gated(tiny(num_layers=2))).eval()
    with torch.no_grad():
        model.layers[0].attention.head_gate.log_alpha.fill_(-30.0)
        model.layers[1].feed_forward.unit_gate.log_alpha.fill_(-30.0)
    pruned = prune(model)
    assert pruned.config.layer_heads[0] == 0 and pruned.config.layer_ffn_sizes[1] == 0
    wavs, lengths = batch([5000])
    with torch.no_grad():
        for a, b in zip(model(wavs, lengths).hidden_states, pruned(wavs, lengths).hidden_states):
            assert float((a - b).abs().max()) < 1e-4


def test_expected_sparsity_is_differentiable_in_the_gates():
    model = gated(tiny())
    sparsity = expected_sparsity(model, count_parameters(Encoder(tiny())))
    sparsity.backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in gate_parameters(model))
    with pytest.raises(ValueError, match="needs a model with hard-concrete gates"):
        prune(Encoder(tiny()))
