"""A speaker-verification system is a composition of axes (upstream, distillation terms, adapters,
per-group epoch schedules); ``system`` and ``lr_mode`` are shorthands that expand to them in the
config, and a contradiction between a shorthand and an axis is an error naming both."""
import pytest
import torch

from test_sv_fixtures import save_tiny_teacher, write_speaker_data
from test_sv_task import batch_of, make_task

from speechdistill.config import ConfigError, from_dict, to_dict
from speechdistill.sv.config import SvConfig
from speechdistill.train.optim import build_optimizer, epoch_schedule, group_learning_rates

PAPER_TERMS = [{"name": "kd_mse", "kind": "mse", "layers": [[-1, -1]], "weight": 100.0, "linear_decay_epochs": 100}]
PAPER_LR = {"student": "ramp_decay", "adapters": "cosine_restarts", "backend": "cosine_restarts"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("sv_composition")
    return {"train": write_speaker_data(root / "train", seed=1), "teacher": save_tiny_teacher(root / "teacher")}


def resolved(**settings):
    return to_dict(from_dict(SvConfig, {"train_data": "x", **settings}))


def test_system_and_lr_mode_expand_to_the_axes():
    shorthand = resolved(system="oskdft", lr_mode="oskdft_paper")
    axes = resolved(upstream="student", adapters=True, kd_terms=PAPER_TERMS, group_lr_schedules=PAPER_LR)
    assert shorthand.pop("lr_mode") == "oskdft_paper" and axes.pop("lr_mode") is None
    assert shorthand == axes and axes["system"] == "oskdft"
    assert resolved() == resolved(system="oskdft")  # the default composition
    fbank = resolved(system="fbank", lr_mode="oskdft_paper")
    assert fbank == dict(resolved(upstream="fbank", group_lr_schedules={"backend": "cosine_restarts"}),
                         lr_mode="oskdft_paper")
    assert (fbank["upstream"], fbank["kd_terms"], fbank["adapters"]) == ("fbank", [], False)
    frozen = resolved(upstream="frozen_teacher")
    assert (frozen["system"], frozen["kd_terms"], frozen["adapters"]) == ("ssl_frozen", [], False)
    # a student composition no shorthand names has no system name
    assert resolved(upstream="student", kd_terms=[])["system"] is None
    assert resolved(upstream="student", adapters=False)["system"] is None
    # a resolved config (what config.yaml holds) resolves to itself
    for settings in ({"system": "oskdft", "lr_mode": "oskdft_paper"}, {"upstream": "student", "kd_terms": []},
                     {"system": "ssl_frozen"}):
        once = resolved(**settings)
        assert to_dict(from_dict(SvConfig, once)) == once


@pytest.mark.parametrize("settings, message", [
    ({"system": "oskdft", "upstream": "fbank"}, "system 'oskdft' is upstream student, but upstream is 'fbank'"),
    ({"system": "fbank", "kd_terms": PAPER_TERMS}, "config.kd_terms: distillation trains a student, and upstream is "
                                                   "'fbank'"),
    ({"upstream": "frozen_teacher", "adapters": True}, "config.adapters: only a student has adapters"),
    ({"system": "oskdft", "kd_terms": []}, "system oskdft needs at least one distillation loss term"),
    ({"system": "oskdft", "adapters": False}, "config.adapters: system oskdft trains adapters"),
    ({"lr_mode": "oskdft_paper", "group_lr_schedules": {"backend": "ramp_decay"}},
     "lr_mode 'oskdft_paper' is group_lr_schedules .* drop one of them"),
    ({"lr_mode": "trainer", "group_lr_schedules": {"backend": "cosine_restarts"}}, "lr_mode 'trainer'"),
    ({"system": "fbank", "group_lr_schedules": {"student": "ramp_decay"}},
     "no parameter group 'student' in this system \\(groups: backend\\)"),
    ({"upstream": "student", "adapters": False, "group_lr_schedules": {"adapters": "ramp_decay"}},
     "no parameter group 'adapters'"),
    ({"group_lr_schedules": {"backend": "cosine"}}, "group_lr_schedules.backend: 'cosine' is not one of "
                                                    "cosine_restarts, ramp_decay"),
])
def test_a_shorthand_and_an_axis_that_disagree_are_refused(settings, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(SvConfig, {"train_data": "x", "teacher": "t", **settings})


@pytest.mark.parametrize("settings, message", [
    ({"upstream": "student", "kd_terms": [], "kd_input": "separate"},
     "kd_input: 'separate' needs distillation terms .* upstream 'student' has none"),
    ({"upstream": "student", "adapters": False, "student_encoder": {"adapter_dim": 32}},
     "adapters is false but student_encoder sets adapter_dim 32"),
    ({"upstream": "frozen_teacher", "teacher": None}, "config.teacher: system 'ssl_frozen' needs a teacher"),
    ({"upstream": "student", "kd_terms": [], "teacher": None}, "config.teacher: upstream 'student' needs a teacher"),
    ({"system": "fbank", "student_init": {}}, "student_init only applies to upstream student, not 'fbank'"),
])
def test_validation_names_the_axes(settings, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(SvConfig, {"train_data": "x", "teacher": "t", **settings}).validate()


def test_epoch_schedule_names_are_checked():
    assert epoch_schedule("cosine_restarts", 2, period=4, floor_ratio=0.0)(2) == pytest.approx(0.5 + 0.5 * 2 ** -0.5)
    with pytest.raises(ConfigError, match="epoch schedule 'cosine' is not one of cosine_restarts, ramp_decay"):
        epoch_schedule("cosine", 2, period=4, floor_ratio=0.0)


def test_a_student_without_distillation_or_adapters_is_fine_tuned_on_the_speaker_loss(files, tmp_path):
    task, model = make_task(files, tmp_path, system=None, upstream="student", kd_terms=[], adapters=False,
                            lr_schedule="constant", group_lr_schedules={"student": "ramp_decay"}, lr=1e-3,
                            steps_per_epoch=2)
    assert task.config.system is None and task.kd_terms == [] and task.kd_source is None
    assert model.student.config.adapter_dim == 0 and model.kd_heads is None
    assert not any(".adapter." in name for name, _ in model.named_parameters())
    groups = task.param_groups(model)
    assert [g["name"] for g in groups] == ["student", "backend"]
    optimizer, _ = build_optimizer(model, groups, task.config)
    # epoch 1 of ramp_decay (R = 10) for the student; the trainer's constant lr for the back-end
    assert group_learning_rates(optimizer) == pytest.approx({"student": 1e-4, "backend": 1e-3})
    batch = batch_of(files)
    out = task.train_step(model, batch, 0)
    assert set(out.terms) == {"speaker_loss", "accuracy"}
    assert out.loss.item() == out.terms["speaker_loss"].item()
    out.loss.backward()
    assert all(p.grad is not None for p in model.student.layers[-1].parameters())


def test_a_student_without_distillation_keeps_its_adapters_in_the_speaker_pass(files, tmp_path):
    task, model = make_task(files, tmp_path, system=None, upstream="student", kd_terms=[])
    assert [g["name"] for g in task.param_groups(model)] == ["student", "adapters", "backend"]
    model.eval()
    with torch.no_grad():
        for name, parameter in model.student.named_parameters():
            if ".adapter." in name:
                parameter.copy_(0.5 * torch.randn_like(parameter))
        batch = batch_of(files)
        out = model(batch["wavs"], batch["lengths"], batch["speaker"])
        on = model.student(batch["wavs"], batch["lengths"], use_adapters=True)
        features, frames = model.featurizer(on.hidden_states, on.lengths)
        expected = model.speaker_head(model.backend(features, frames), batch["speaker"]).loss
    torch.testing.assert_close(out.speaker.loss, expected, atol=1e-5, rtol=1e-5)


def test_a_student_without_adapters_runs_once_for_both_branches_of_one_input(files, tmp_path):
    """Without adapters the distillation and speaker branches are one network: on the same crop
    (kd_input same_crop) one student pass of B rows serves both, with the numbers of two."""
    task, model = make_task(files, tmp_path, system=None, upstream="student", adapters=False)
    assert task.kd_terms and model.student.config.adapter_dim == 0
    rows = []
    model.student.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    batch = batch_of(files)
    model.eval()
    with torch.no_grad():
        out = task.train_step(model, batch, 0)
        assert rows == [4]
        two = model(batch["wavs"], batch["lengths"], batch["speaker"], kd_wavs=batch["wavs"].clone(),
                    kd_lengths=batch["lengths"].clone())
        assert rows == [4, 8]
        targets = task._teacher(batch["wavs"], batch["lengths"], task.teacher_layers)
        kd_two, terms_two = task._kd_loss(two.kd_predictions, targets, epoch=1)
    torch.testing.assert_close(out.terms["speaker_loss"], two.speaker.loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.terms["kd_mse"], terms_two["kd_mse"], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.loss, kd_two + two.speaker.loss, atol=1e-4, rtol=1e-5)
