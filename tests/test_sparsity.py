"""DPHuBERT Lagrangian sparsity regulariser."""
import pytest
import torch

from speechdistill.config import ConfigError
from speechdistill.losses import LagrangianSparsity, lagrangian_sparsity_loss, target_sparsity


def test_target_ramp_by_hand():
    assert target_sparsity(0, 0.75, 5000) == 0.0
    assert target_sparsity(2500, 0.75, 5000) == pytest.approx(0.375)
    assert target_sparsity(5000, 0.75, 5000) == pytest.approx(0.75)
    assert target_sparsity(50000, 0.75, 5000) == pytest.approx(0.75)
    assert target_sparsity(3, 0.5, 0) == 0.5  # no warmup


def test_loss_value_and_gradients_by_hand():
    # ŝ = 0.5, t = 0.375 (step 2500 of 5000, target 0.75): gap = 0.125
    # L = λ1·gap + λ2·gap² = 0.5·0.125 + 2·0.015625 = 0.09375
    # dL/dλ1 = gap = 0.125 ; dL/dλ2 = gap² = 0.015625 ; dL/dŝ = λ1 + 2·λ2·gap = 0.5 + 0.5 = 1.0
    module = LagrangianSparsity(target=0.75, warmup_steps=5000)
    with torch.no_grad():
        module.lambda1.fill_(0.5)
        module.lambda2.fill_(2.0)
    expected_sparsity = torch.tensor(0.5, requires_grad=True)
    loss, values = module(expected_sparsity, step=2500)
    assert loss.item() == pytest.approx(0.09375)
    loss.backward()
    assert module.lambda1.grad.item() == pytest.approx(0.125)
    assert module.lambda2.grad.item() == pytest.approx(0.015625)
    assert expected_sparsity.grad.item() == pytest.approx(1.0)
    assert values["sparsity_target"].item() == pytest.approx(0.375)
    assert values["reg"].item() == pytest.approx(0.09375)
    assert values["lambda2"].item() == pytest.approx(2.0)
    assert lagrangian_sparsity_loss(torch.tensor(0.5), 0.375, torch.tensor(0.5), torch.tensor(2.0)).item() == \
        pytest.approx(0.09375)


def test_multipliers_start_at_zero_so_the_first_loss_is_zero():
    module = LagrangianSparsity()
    loss, _ = module(torch.tensor(0.3), step=100)
    assert loss.item() == 0.0
    assert [p.item() for p in module.multipliers()] == [0.0, 0.0]


def test_min_max_game_drives_expected_sparsity_to_target():
    # A one-parameter "model" whose expected sparsity is σ(θ). θ descends on L, the multipliers ascend
    # (DPHuBERT: AdamW with lr -0.02 on [λ1, λ2]); the expected sparsity ends near the target.
    theta = torch.nn.Parameter(torch.tensor(-3.0))  # σ(-3) ≈ 0.047
    module = LagrangianSparsity(target=0.6, warmup_steps=50)
    optimizer = torch.optim.AdamW([{"params": [theta], "lr": 0.05, "weight_decay": 0.0},
                                   {"params": module.multipliers(), "lr": -0.05, "weight_decay": 0.0}])
    for step in range(600):
        optimizer.zero_grad()
        loss, values = module(torch.sigmoid(theta), step)
        loss.backward()
        optimizer.step()
    assert values["sparsity_expected"].item() == pytest.approx(0.6, abs=0.005)


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="target"):
        LagrangianSparsity(target=1.0)
    with pytest.raises(ConfigError, match="warmup"):
        LagrangianSparsity(warmup_steps=-1)
    with pytest.raises(ValueError, match="scalar"):
        LagrangianSparsity()(torch.zeros(2), step=0)
