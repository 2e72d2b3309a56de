"""Learning-rate schedules, parameter groups, gradient ascent for negative-lr groups, resume of hyperparameters."""
import math

import numpy as np
import pytest
import torch

from speechdistill.config import ConfigError
from speechdistill.train import TrainerConfig, decay_param_groups, lr_multiplier
from speechdistill.train.optim import (build_optimizer, clip_multiplier, flip_ascent_gradients, gradient_norm,
                                       group_learning_rates, step_with_multiplier,
                                       load_optimizer_state)


def _config(**kw):
    base = dict(train_data="unused", max_steps=10, lr=0.1, lr_schedule="linear", warmup_steps=0, weight_decay=0.0,
                adam_betas=(0.9, 0.98), adam_eps=1e-6)
    base.update(kw)
    return TrainerConfig(**base)


def test_linear_warmup_then_decay_by_hand():
    got = [lr_multiplier(k, schedule="linear", warmup_steps=3, max_steps=10) for k in range(11)]
    expected = [1 / 3, 2 / 3, 1, 1, 6 / 7, 5 / 7, 4 / 7, 3 / 7, 2 / 7, 1 / 7, 0]
    assert got == pytest.approx(expected)


def test_cosine_to_a_floor_and_constant():
    cosine = [lr_multiplier(k, schedule="cosine", warmup_steps=2, max_steps=10, min_lr_ratio=0.1)
              for k in (0, 2, 6, 10)]
    assert cosine == pytest.approx([0.5, 1.0, 0.1 + 0.9 * 0.5, 0.1])
    assert lr_multiplier(4, schedule="cosine", warmup_steps=2, max_steps=10) == pytest.approx(
        0.5 * (1 + math.cos(math.pi * 2 / 8)))
    assert [lr_multiplier(k, schedule="constant", warmup_steps=2, max_steps=10) for k in range(4)] == [0.5, 1, 1, 1]


def test_scheduler_drives_every_group_including_a_custom_schedule():
    model = torch.nn.Linear(2, 2)
    groups = [{"name": "w", "params": [model.weight]},
              {"name": "b", "params": [model.bias], "lr": 0.5, "schedule": lambda k: 1.0 / (k + 1)}]
    optimizer, scheduler = build_optimizer(model, groups, _config(warmup_fraction=0.2))
    assert all(group["fused"] for group in optimizer.param_groups)  # one fused kernel, not a per-tensor loop
    seen = []
    for _ in range(4):
        seen.append(group_learning_rates(optimizer))
        model(torch.ones(1, 2)).sum().backward()
        optimizer.step()
        scheduler.step()
    assert [s["w"] for s in seen] == pytest.approx([0.05, 0.1, 0.1, 0.1 * 7 / 8])
    assert [s["b"] for s in seen] == pytest.approx([0.5, 0.25, 0.5 / 3, 0.125])


def _numpy_adam(params, grads_of, lrs, steps, betas=(0.9, 0.98), eps=1e-6):
    """Textbook Adam (bias-corrected), any sign of lr, no weight decay."""
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    for t in range(1, steps + 1):
        grads = grads_of(params)
        for i, (g, lr) in enumerate(zip(grads, lrs)):
            m[i] = betas[0] * m[i] + (1 - betas[0]) * g
            v[i] = betas[1] * v[i] + (1 - betas[1]) * g * g
            m_hat = m[i] / (1 - betas[0] ** t)
            v_hat = v[i] / (1 - betas[1] ** t)
            params[i] = params[i] - lr * m_hat / (np.sqrt(v_hat) + eps)
    return params


def test_negative_lr_group_does_gradient_ascent_like_adam_with_negative_lr():
    # Lagrangian min_x max_lam (x - 3)^2 + lam * (x - 1): x descends, lam ascends.
    x = torch.nn.Parameter(torch.tensor([0.5, -0.25], dtype=torch.float64))
    lam = torch.nn.Parameter(torch.tensor(0.2, dtype=torch.float64))
    holder = torch.nn.Module()
    holder.x, holder.lam = x, lam
    groups = [{"name": "x", "params": [x], "lr": 0.05}, {"name": "lam", "params": [lam], "lr": -0.05}]
    optimizer, scheduler = build_optimizer(holder, groups, _config(lr_schedule="constant"))
    assert group_learning_rates(optimizer) == {"x": 0.05, "lam": -0.05}
    for _ in range(6):
        optimizer.zero_grad()
        (((x - 3) ** 2).sum() + lam * (x.sum() - 1)).backward()
        flip_ascent_gradients(optimizer)
        optimizer.step()
        scheduler.step()

    def grads(params):
        xv, lv = params
        return [2 * (xv - 3) + lv, np.array(xv.sum() - 1)]

    ref_x, ref_lam = _numpy_adam([np.array([0.5, -0.25]), np.array(0.2)], grads, [0.05, -0.05], 6)
    np.testing.assert_allclose(x.detach().numpy(), ref_x, rtol=1e-10)
    np.testing.assert_allclose(lam.detach().numpy(), ref_lam, rtol=1e-10)
    assert lam.item() < 0.2  # the constraint gradient (sum x - 1 = -0.75 < 0) pushes lam down: ascent on L


def test_ascent_group_with_weight_decay_is_refused():
    model = torch.nn.Linear(1, 1)
    with pytest.raises(ConfigError) as err:
        build_optimizer(model, [{"name": "lagrange", "params": model.parameters(), "lr": -0.02,
                                 "weight_decay": 0.01}], _config())
    assert "lagrange" in str(err.value) and "weight_decay" in str(err.value)


def test_parameters_must_be_in_exactly_one_group():
    model = torch.nn.Sequential(torch.nn.Linear(1, 1), torch.nn.Linear(1, 1))
    with pytest.raises(ConfigError) as err:
        build_optimizer(model, [{"params": model[0].parameters()}], _config())
    assert "1.weight" in str(err.value)
    with pytest.raises(ConfigError) as err:
        build_optimizer(model, [{"params": model.parameters()}, {"name": "again", "params": [model[0].bias]}],
                        _config())
    assert "0.bias" in str(err.value) and "two groups" in str(err.value)


class _S3prlLike(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(2, 2)
        self.LayerNorm = torch.nn.LayerNorm(2)
        self.final_layer_norm = torch.nn.LayerNorm(2)


def test_s3prl_decay_grouping_by_name():
    model = _S3prlLike()
    groups = decay_param_groups(model, weight_decay=0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    by_group = {g["name"]: (sorted(names[id(p)] for p in g["params"]), g["weight_decay"]) for g in groups}
    # s3prl's quirk kept: a layer norm not literally named "LayerNorm" gets weight decay
    assert by_group["decay"] == (["final_layer_norm.weight", "proj.weight"], 0.01)
    assert by_group["no_decay"] == (["LayerNorm.bias", "LayerNorm.weight", "final_layer_norm.bias", "proj.bias"], 0.0)


def test_resume_keeps_moments_but_takes_current_hyperparameters():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    optimizer, scheduler = build_optimizer(model, [{"params": model.parameters()}], _config(lr=1e-3, max_steps=10))
    for _ in range(3):
        model(torch.randn(4, 3)).pow(2).mean().backward()
        optimizer.step()
        scheduler.step()
    saved_opt, saved_sched = optimizer.state_dict(), scheduler.state_dict()
    moments = optimizer.state[model.weight]["exp_avg"].clone()

    resumed_model = torch.nn.Linear(3, 1)
    config = _config(lr=2e-3, max_steps=20, weight_decay=0.05)
    optimizer2, scheduler2 = build_optimizer(resumed_model, [{"params": resumed_model.parameters()}], config)
    load_optimizer_state(optimizer2, scheduler2, saved_opt, saved_sched)
    assert torch.equal(optimizer2.state[resumed_model.weight]["exp_avg"], moments)
    assert scheduler2.last_epoch == 3
    group = optimizer2.param_groups[0]
    assert group["lr"] == pytest.approx(2e-3 * 17 / 20) and group["weight_decay"] == 0.05
    scheduler2.step()
    assert optimizer2.param_groups[0]["lr"] == pytest.approx(2e-3 * 16 / 20)


def test_gradient_norm_equals_torch_total_norm_and_keeps_non_finite():
    generator = torch.Generator().manual_seed(0)
    grads = [torch.randn(shape, generator=generator) for shape in ((300, 70), (70,), (5, 3, 9), ())]
    grads.append(torch.randn(40, 30, generator=generator).t())  # a non-contiguous one
    expected = torch.nn.utils.get_total_norm(grads, foreach=False)
    assert gradient_norm(grads).dtype == torch.float32
    torch.testing.assert_close(gradient_norm(grads), expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(gradient_norm([g.bfloat16() for g in grads]),
                               torch.nn.utils.get_total_norm([g.bfloat16().float() for g in grads]), rtol=1e-5, atol=0)
    assert math.isinf(float(gradient_norm(grads + [torch.tensor([1.0, float("inf")])])))
    assert math.isnan(float(gradient_norm(grads + [torch.tensor([float("nan")])])))
    with pytest.raises(ValueError):
        gradient_norm([])


def test_clip_multiplier_is_clip_grad_norms_factor_times_the_scale():
    norm = torch.tensor(4.0)
    assert clip_multiplier(norm, 0.0) is None
    assert float(clip_multiplier(norm, 1.0)) == pytest.approx(1.0 / (4.0 + 1e-6))
    assert float(clip_multiplier(norm, 10.0)) == 1.0  # under the bound: unchanged
    assert float(clip_multiplier(norm, 1.0, torch.tensor(0.5))) == pytest.approx(0.5 / (4.0 + 1e-6))
    assert float(clip_multiplier(norm, 0.0, torch.tensor(0.5))) == 0.5


@pytest.mark.parametrize("fused", [True, False])
def test_step_with_multiplier_equals_clip_grad_norm_then_step(fused):
    """The fused optimizer takes the multiplier as its grad_scale; the result is what clipping the
    gradients (torch's clip_grad_norm_) and stepping gives, gradients included."""
    generator = torch.Generator().manual_seed(1)
    shapes = ((64, 32), (32,), (7, 5))
    ours = [torch.nn.Parameter(torch.randn(s, generator=generator)) for s in shapes]
    reference = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    kwargs = dict(lr=0.01, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
    opt_ours = torch.optim.AdamW(ours, fused=fused or None, foreach=False if not fused else None, **kwargs)
    opt_reference = torch.optim.AdamW(reference, foreach=False, **kwargs)
    for step in range(3):
        grads = [torch.randn(s, generator=generator) * (step + 1) for s in shapes]
        for p, q, g in zip(ours, reference, grads):
            p.grad, q.grad = g.clone(), g.clone()
        norm = gradient_norm([p.grad for p in ours])
        step_with_multiplier(opt_ours, clip_multiplier(norm, 0.5))
        torch.nn.utils.clip_grad_norm_(reference, 0.5, foreach=False)
        opt_reference.step()
        assert not hasattr(opt_ours, "grad_scale")
        for p, q in zip(ours, reference):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=0)
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
