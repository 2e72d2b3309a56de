"""The OS-KDFT task: two-pass structure, zero-initialised adapters, distillation weight schedule,
parameter groups and learning rates, the 2024 heads loss, separate distillation inputs."""
import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from test_sv_fixtures import TINY_ECAPA, save_tiny_teacher, write_speaker_data

from speechdistill.config import ConfigError, from_dict
from speechdistill.data.collate import collate_batch
from speechdistill.data.dataset import AudioDataset, ItemRef
from speechdistill.sv.config import SvConfig
from speechdistill.sv.task import KdInputSource, SvTask, resolve_kd_terms
from speechdistill.train.optim import (build_optimizer, cosine_restart_factor, epoch_of_update, group_learning_rates,
                                       ramp_decay_factor)
from speechdistill.train.task import TrainContext


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("sv_task")
    return {"train": write_speaker_data(root / "train", seed=1),
            "teacher": save_tiny_teacher(root / "teacher"),
            "root": root}


def make_task(files, tmp_path, **overrides):
    settings = dict(system="oskdft", train_data=str(files["train"]), teacher=str(files["teacher"]), max_seconds=1.0,
                    batch_seconds=4.0, num_buckets=1, precision="fp32", teacher_precision="fp32", device="cpu",
                    ecapa=dict(TINY_ECAPA, input_instance_norm=True), steps_per_epoch=2)
    settings.update(overrides)
    config = from_dict(SvConfig, settings)
    config.validate()
    task = SvTask(config)
    context = TrainContext(device=torch.device("cpu"), precision="fp32", teacher_precision="fp32", rank=0,
                           world_size=1, local_rank=0, output_dir=tmp_path, seed=0, logger=logging.getLogger("test"))
    task.setup(context)
    torch.manual_seed(0)
    model = task.model()
    return task, model


def batch_of(files, indices=(0, 4, 8, 12), max_seconds=1.0):
    dataset = AudioDataset(files["train"], max_seconds=max_seconds)
    items = [dataset[i] for i in indices]
    batch = collate_batch(items)
    spk = {f"spk{k:02d}": k for k in range(4)}
    batch["speaker"] = torch.tensor([spk[key.split("-")[0]] for key in batch["keys"]])
    return batch


def randomize_adapters(model, scale=0.5):
    with torch.no_grad():
        for name, parameter in model.student.named_parameters():
            if ".adapter." in name:
                parameter.copy_(scale * torch.randn_like(parameter))


# the intended design, instead of the released code's init: the whole teacher copied, zero up projections,
# no adapter residual
WHOLE_COPY = dict(student_init={"feature_extractor": True, "feature_norm": True, "feature_projection": True,
                                "pos_conv": True, "encoder_norm": True, "layers": [0, 1, 2, 3]},
                  student_encoder={"adapter_residual": "none", "adapter_init": "zero_up"})


def test_zero_initialised_adapters_leave_the_copied_student_equal_to_the_teacher(files, tmp_path):
    task, model = make_task(files, tmp_path, **WHOLE_COPY)
    model.eval()
    batch = batch_of(files)
    wavs, lengths = batch["wavs"], batch["lengths"]
    with torch.no_grad():
        on = model.student(wavs, lengths, use_adapters=True)
        off = model.student(wavs, lengths, use_adapters=False)
        teacher = task.teacher(wavs, lengths)
    for index in range(5):
        assert torch.equal(on.hidden_states[index], off.hidden_states[index])
        # the 4-layer student is a full copy of the 4-layer teacher
        torch.testing.assert_close(on.hidden_states[index], teacher.hidden_states[index], atol=1e-5, rtol=1e-5)
    assert any(".adapter.up.weight" in n for n, _ in model.student.named_parameters())
    # so the distillation loss of the first step is zero
    model.train()
    out = task.train_step(model, batch, step=0)
    assert out.terms["kd_mse"].item() < 1e-9
    assert out.loss.item() == pytest.approx(out.terms["speaker_loss"].item(), rel=1e-6)


def test_the_released_init_keeps_the_speaker_branch_apart_from_the_start(files, tmp_path):
    """The preset's defaults (the released code): positional conv and encoder LayerNorm not copied, adapters
    N(0, 0.02^2) with a residual, so the branches differ at the first step and so does the student from the
    teacher (the distillation loss starts above zero)."""
    task, model = make_task(files, tmp_path)
    model.eval()
    batch = batch_of(files)
    with torch.no_grad():
        on = model.student(batch["wavs"], batch["lengths"], use_adapters=True)
        off = model.student(batch["wavs"], batch["lengths"], use_adapters=False)
        teacher = task.teacher(batch["wavs"], batch["lengths"])
    assert torch.equal(on.hidden_states[0], off.hidden_states[0])
    assert (on.hidden_states[4] - off.hidden_states[4]).abs().max() > 0.1
    assert (off.hidden_states[0] - teacher.hidden_states[0]).abs().max() > 0.1  # another positional conv
    model.train()
    assert task.train_step(model, batch, step=0).terms["kd_mse"].item() > 1e-4


def test_two_pass_structure_adapters_only_in_the_speaker_branch(files, tmp_path):
    task, model = make_task(files, tmp_path)
    randomize_adapters(model)
    model.eval()
    kd_batch = batch_of(files, (1, 5, 9), max_seconds=0.8)
    sv_batch = batch_of(files, (2, 6, 10, 14))
    with torch.no_grad():
        out = model(sv_batch["wavs"], sv_batch["lengths"], sv_batch["speaker"],
                    kd_wavs=kd_batch["wavs"], kd_lengths=kd_batch["lengths"])
        kd_alone = model.student(kd_batch["wavs"], kd_batch["lengths"], use_adapters=False)
        sv_on = model.student(sv_batch["wavs"], sv_batch["lengths"], use_adapters=True)
        sv_off = model.student(sv_batch["wavs"], sv_batch["lengths"], use_adapters=False)
        features, frames = model.featurizer(sv_on.hidden_states, sv_on.lengths)
        expected = model.speaker_head(model.backend(features, frames), sv_batch["speaker"]).loss
    # KD branch = the student without adapters (on its own, shorter padding)
    kd = out.kd_predictions[4]
    assert kd.shape[0] == 3
    n = kd_alone.hidden_states[4].shape[1]
    torch.testing.assert_close(kd[:, :n], kd_alone.hidden_states[4], atol=1e-5, rtol=1e-5)
    assert torch.equal(out.kd_frames, kd_alone.lengths)
    # speaker branch = the student with adapters, and the adapters do change it
    torch.testing.assert_close(out.speaker.loss, expected, atol=1e-5, rtol=1e-5)
    assert (sv_on.hidden_states[4] - sv_off.hidden_states[4]).abs().max() > 1e-2


def test_distillation_gradient_never_reaches_the_adapters(files, tmp_path):
    task, model = make_task(files, tmp_path)
    randomize_adapters(model)
    batch = batch_of(files)
    out = model(batch["wavs"], batch["lengths"], batch["speaker"], kd_wavs=batch["wavs"], kd_lengths=batch["lengths"])
    out.kd_predictions[4].square().mean().backward(retain_graph=True)
    adapter_grads = [p.grad for n, p in model.student.named_parameters() if ".adapter." in n]
    assert all(g is None or torch.count_nonzero(g) == 0 for g in adapter_grads)
    student_grads = [p.grad for n, p in model.student.named_parameters() if ".adapter." not in n and "layers." in n]
    assert any(g is not None and torch.count_nonzero(g) > 0 for g in student_grads)
    model.zero_grad()
    out.speaker.loss.backward()
    assert all(p.grad is not None and torch.count_nonzero(p.grad) > 0
               for n, p in model.student.named_parameters() if n.endswith("adapter.up.weight"))


def test_kd_weight_decays_linearly_over_epochs_of_updates(files, tmp_path):
    terms = [{"name": "kd_mse", "kind": "mse", "layers": [[-1, -1]], "weight": 100.0, "linear_decay_epochs": 4}]
    task, model = make_task(files, tmp_path, kd_terms=terms, steps_per_epoch=2)
    randomize_adapters(model, 0.1)
    with torch.no_grad():  # make the student differ from the teacher so the KD term is not zero
        for parameter in model.student.layers[3].feed_forward.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    model.eval()  # deterministic forward: the loss must be weight * kd + speaker exactly
    batch = batch_of(files)
    weights = []
    for step in range(8):
        out = task.train_step(model, batch, step)
        weight = out.terms["kd_mse_weight"].item()
        weights.append(weight)
        expected = weight * out.terms["kd_mse"].item() + out.terms["speaker_loss"].item()
        assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    # updates 0-1 are epoch 1: (4 - 1) / 4; 2-3 epoch 2; ... 6-7 epoch 4: 0
    assert weights == pytest.approx([75, 75, 50, 50, 25, 25, 0, 0])
    assert out.terms["kd_mse"].item() > 1e-6


def test_updates_per_epoch_come_from_the_batch_sampler(files, tmp_path):
    # 16 utterances of >= 1 s cropped to 1 s, 4 s batches -> 4 per batch -> 4 batches; 2 micro-batches per update
    task, _ = make_task(files, tmp_path, steps_per_epoch=None, accum_steps=2)
    assert task.steps_per_epoch == 2
    assert [epoch_of_update(u, 2) for u in range(5)] == [1, 1, 2, 2, 3]


def released_schedule(epochs, lr, eta_min, period):
    """The released per-epoch rule, re-run step by step with torch's own cosine scheduler."""
    parameter = torch.nn.Parameter(torch.zeros(1))
    guide = torch.optim.Adam([parameter], lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(guide, T_0=period, T_mult=1, eta_min=eta_min)
    sv, kd = [], []
    kd_lr = None
    for epoch in range(1, epochs + 1):
        sv_lr = guide.param_groups[0]["lr"]
        kd_lr = sv_lr * epoch / 10 if epoch < 10 else kd_lr * 0.93
        sv.append(sv_lr)
        kd.append(kd_lr)
        scheduler.step()
    return sv, kd


def test_paper_learning_rates_per_group_follow_the_released_rule(files, tmp_path):
    task, model = make_task(files, tmp_path, lr=1e-4, min_lr_ratio=0.01, lr_mode="oskdft_paper", steps_per_epoch=3,
                            cosine_restart_epochs=8, adapter_lr_scale=10.0)
    groups = task.param_groups(model)
    names = {n for n, _ in model.named_parameters()}
    by_group = {g["name"]: {id(p) for p in g["params"]} for g in groups}
    adapter_ids = {id(p) for n, p in model.named_parameters() if ".adapter." in n}
    student_ids = {id(p) for n, p in model.named_parameters() if n.startswith("student.") and ".adapter." not in n}
    assert by_group["adapters"] == adapter_ids and by_group["student"] == student_ids
    assert len(by_group["backend"]) == len(names) - len(adapter_ids) - len(student_ids)
    optimizer, scheduler = build_optimizer(model, groups, task.config)
    sv, kd = released_schedule(14, 1e-4, 1e-6, 8)
    for update in range(14 * 3):
        lrs = group_learning_rates(optimizer)
        epoch = update // 3
        assert lrs["backend"] == pytest.approx(sv[epoch], rel=1e-9)
        assert lrs["adapters"] == pytest.approx(10 * sv[epoch], rel=1e-9)
        assert lrs["student"] == pytest.approx(kd[epoch], rel=1e-9)
        optimizer.step()
        scheduler.step()
    assert ramp_decay_factor(12, 8, 0.01, 10, 0.93) * 1e-4 == pytest.approx(kd[11])
    assert cosine_restart_factor(9, 8, 0.01) == pytest.approx(1.0)  # a restart


def test_trainer_mode_groups_scale_the_peak_lr(files, tmp_path):
    task, model = make_task(files, tmp_path, lr=2e-3, student_lr_scale=0.5, adapter_lr_scale=4.0, max_steps=10,
                            lr_schedule="constant")
    optimizer, _ = build_optimizer(model, task.param_groups(model), task.config)
    assert group_learning_rates(optimizer) == pytest.approx({"student": 1e-3, "adapters": 8e-3, "backend": 2e-3})


def test_fbank_system_has_one_group_and_no_teacher(files, tmp_path):
    task, model = make_task(files, tmp_path, system="fbank", teacher=None)
    assert task.teacher is None and model.student is None
    assert [g["name"] for g in task.param_groups(model)] == ["backend"]
    out = task.train_step(model, batch_of(files), 0)
    assert set(out.terms) == {"speaker_loss", "accuracy"}
    assert math.isfinite(out.loss.item())


def test_kd_layer_indices_resolve_from_the_end_and_heads_expand():
    terms = resolve_kd_terms([{"name": "a", "kind": "mse", "layers": [[-1, -1], [1, -3]]},
                              {"name": "b", "kind": "l1", "layers": "heads", "layer_reduction": "sum"}],
                             student_states=3, teacher_states=13, head_targets=[4, 8, 12])
    assert terms[0].layers == [(2, 12), (1, 10)]
    assert terms[1].layers == [("h4", 4), ("h8", 8), ("h12", 12)]
    with pytest.raises(ConfigError, match=r"kd_terms\[0\].*teacher hidden state 13 does not exist"):
        resolve_kd_terms([{"name": "a", "kind": "mse", "layers": [[-1, 13]]}], 3, 13, [])
    with pytest.raises(ConfigError, match="no prediction heads"):
        resolve_kd_terms([{"name": "a", "kind": "mse", "layers": "heads"}], 3, 13, [])


def test_2024_preset_loss_equals_a_direct_computation(files, tmp_path):
    terms = [{"name": "l1", "kind": "l1", "layers": "heads", "layer_reduction": "sum"},
             {"name": "cos", "kind": "neg_logsigmoid_cos", "layers": "heads", "layer_reduction": "sum"}]
    task, model = make_task(files, tmp_path, student="oskdft_2024", heads_target_layers=[2, 3, 4], kd_terms=terms,
                            backend="mean_std", mean_std={"embedding_size": 12}, speaker_loss="softmax",
                            featurizer={"mode": "weighted_sum"})
    assert model.student.num_layers == 2 and model.kd_heads is not None
    model.eval()
    batch = batch_of(files)
    out = task.train_step(model, batch, 0)
    wavs, lengths = batch["wavs"], batch["lengths"]
    with torch.no_grad():
        student = model.student(wavs, lengths, use_adapters=False)
        teacher = task.teacher(wavs, lengths)
        predictions = model.kd_heads(student.hidden_states[2])  # [B, 3, N, D]
    valid = torch.arange(predictions.shape[2])[None, :] < student.lengths[:, None]
    l1 = cos = 0.0
    for k, layer in enumerate([2, 3, 4]):
        p, t = predictions[:, k][valid], teacher.hidden_states[layer][valid]
        l1 += (p - t).abs().mean().item()
        cos += -F.logsigmoid(F.cosine_similarity(p, t, dim=-1)).mean().item()
    assert out.terms["l1"].item() == pytest.approx(l1, rel=1e-5)
    assert out.terms["cos"].item() == pytest.approx(cos, rel=1e-5)
    assert out.loss.item() == pytest.approx(l1 + cos + out.terms["speaker_loss"].item(), rel=1e-5)


def test_separate_kd_inputs_come_from_kd_data_or_the_training_set(files, tmp_path):
    kd_dir = write_speaker_data(tmp_path / "kd", speakers=(9,), utts_per_speaker=4, lengths=[5000, 5100, 5200, 5300])
    train = AudioDataset(files["train"], max_seconds=1.0)
    kd = AudioDataset(kd_dir, max_seconds=1.0)
    kd_lengths = {5000, 5100, 5200, 5300}

    def lengths_drawn(source, epoch, count=40):  # epoch: 1-based pass over the data
        return {len(source(ItemRef(epoch - 1, b, i))["kd_wav"]) for b in range(count // 4) for i in range(4)}

    assert lengths_drawn(KdInputSource(train, kd, None), 1) <= kd_lengths
    assert not lengths_drawn(KdInputSource(train, None, None), 1) & kd_lengths
    assert not lengths_drawn(KdInputSource(train, kd, 1.0), 1) & kd_lengths  # p = epoch / 1 = 1
    mixed = lengths_drawn(KdInputSource(train, kd, 4.0), 2, count=60)  # p = 0.5
    assert mixed & kd_lengths and mixed - kd_lengths
    # a function of the item's address alone: the same input on any worker and after a resume
    source = KdInputSource(train, kd, 4.0, seed=3)
    again = KdInputSource(AudioDataset(files["train"], max_seconds=1.0), AudioDataset(kd_dir, max_seconds=1.0), 4.0,
                          seed=3)
    assert np.array_equal(source(ItemRef(1, 5, 2))["kd_wav"], again(ItemRef(1, 5, 2))["kd_wav"])
    # an unreadable input is replaced by another draw and reported
    (kd_dir / "wav" / "spk09-u00.wav").unlink()
    notes = [KdInputSource(train, AudioDataset(kd_dir, max_seconds=1.0), None)(ItemRef(0, b, 0))["kd_note"]
             for b in range(12)]
    assert any("spk09-u00" in note and "not found" in note for note in notes)


def test_separate_kd_inputs_are_read_with_the_training_items_by_the_dataloader(files, tmp_path):
    kd_dir = write_speaker_data(tmp_path / "kd", speakers=(9,), utts_per_speaker=3, seed=5)
    task, model = make_task(files, tmp_path, kd_input="separate", kd_data=str(kd_dir))
    randomize_adapters(model, 0.1)
    model.eval()
    extras = task.item_extras(files["train"])
    assert extras is task.kd_source and task.item_extras(kd_dir) is None
    dataset = AudioDataset(files["train"], max_seconds=1.0, extras=extras)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=[[ItemRef(0, 0, i) for i in (0, 4, 8, 12)]],
                                         collate_fn=collate_batch, num_workers=1)
    batch = next(iter(loader))
    spk = {f"spk{k:02d}": k for k in range(4)}
    batch["speaker"] = torch.tensor([spk[key.split("-")[0]] for key in batch["keys"]])
    kd_wavs, kd_lengths = batch["kd_wav"], batch["kd_wav_lengths"]
    assert kd_wavs.shape[0] == 4 and kd_wavs.dtype == torch.float32
    expected_first = extras(ItemRef(0, 0, 0))["kd_wav"]  # what the worker read, read again here
    assert torch.equal(kd_wavs[0, :len(expected_first)], torch.from_numpy(expected_first))
    assert not torch.equal(kd_wavs[:, :batch["wavs"].shape[1]], batch["wavs"][:, :kd_wavs.shape[1]])
    out = task.train_step(model, batch, 0)
    with torch.no_grad():
        student = model.student(kd_wavs, kd_lengths, use_adapters=False).hidden_states[4]
        teacher = task.teacher(kd_wavs, kd_lengths)
    valid = torch.arange(student.shape[1])[None, :] < teacher.lengths[:, None]
    expected = (student - teacher.hidden_states[4])[valid].square().mean().item()
    assert out.terms["kd_mse"].item() == pytest.approx(expected, rel=1e-4, abs=1e-12)


def test_config_errors_name_the_key(files):
    with pytest.raises(ConfigError, match="config.teacher: system 'oskdft' needs a teacher"):
        from_dict(SvConfig, {"train_data": "x", "system": "oskdft"}).validate()
    with pytest.raises(ConfigError, match="kd_data is set but kd_input is 'same_crop'"):
        from_dict(SvConfig, {"train_data": "x", "system": "oskdft", "teacher": "t", "kd_data": "d"}).validate()
    with pytest.raises(ConfigError, match="kd_lr_ramp_epochs"):
        from_dict(SvConfig, {"train_data": "x", "system": "fbank", "kd_lr_ramp_epochs": 1}).validate()


def test_a_batch_of_one_utterance_trains_on_running_batchnorm_statistics(files, tmp_path):
    task, model = make_task(files, tmp_path, system="fbank", teacher=None)
    model.train()
    norm = model.backend.embedding_norm
    before = norm.running_mean.clone()
    out = task.train_step(model, batch_of(files, (3,)), 0)
    out.loss.backward()
    assert math.isfinite(out.loss.item())
    assert torch.equal(norm.running_mean, before)  # eval-mode BatchNorm: statistics untouched
    assert norm.training and model.backend.embedding.weight.grad is not None
