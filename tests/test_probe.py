"""The SUPERB-style probes' library: heads, task targets and label sets (training and scoring run end to end in
tests/test_recipe_superb.py)."""
from __future__ import annotations


import pytest
import torch

from speechdistill.downstream.probe_heads import LinearCtc, ProbeHeadConfig, UtteranceClassifier, masked_mean
from speechdistill.probe.tasks import KS_CLASSES, LabelSet, read_targets, task_spec


def test_mean_pooling_ignores_padding_and_classifier_splits_slots():
    features = torch.randn(2, 5, 3)
    lengths = torch.tensor([5, 2])
    pooled = masked_mean(features, lengths)
    assert torch.allclose(pooled[0], features[0].mean(0)) and torch.allclose(pooled[1], features[1, :2].mean(0))
    head = UtteranceClassifier(3, [4, 2, 3], ProbeHeadConfig(projector_dim=8))
    changed = features.clone()
    changed[1, 2:] = 100.0  # padding must not matter
    assert torch.allclose(head(features, lengths)[1], head(changed, lengths)[1])
    assert [t.shape[-1] for t in head.split(head(features, lengths))] == [4, 2, 3]
    log_probs, out_lengths = LinearCtc(3, 6)(features, lengths)
    assert log_probs.shape == (2, 5, 6) and torch.allclose(log_probs.exp().sum(-1), torch.ones(2, 5))
    with pytest.raises(ValueError, match="expected features"):
        head(torch.randn(2, 5, 4), lengths)


def test_targets_and_labels(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    (data / "utt2intent").write_text("a activate lights kitchen\nb deactivate music none\n")
    spec = task_spec("ic")
    targets = read_targets(spec, data)
    labels = LabelSet.build(spec, targets)
    assert labels.slots == [["activate", "deactivate"], ["lights", "music"], ["kitchen", "none"]]
    assert LabelSet.from_lines(spec, labels.to_lines(spec), "x").slots == labels.slots
    (data / "utt2intent").write_text("a activate lights\n")
    with pytest.raises(ValueError, match="expects 3"):
        read_targets(spec, data)
    (data / "utt2label").write_text("a yes\nb maybe\n")
    with pytest.raises(ValueError, match="not one of"):
        read_targets(task_spec("ks"), data)
    assert LabelSet.build(task_spec("ks"), {"a": ["no"]}).slots == [list(KS_CLASSES)]


@pytest.mark.parametrize("task", ["pr", "ic"])
def test_class_balance_is_refused_where_it_would_weigh_nothing_or_one_slot(task):
    from speechdistill.config import ConfigError
    from speechdistill.probe.task import ProbeConfig

    ProbeConfig(task="ks", class_balance=True, upstream="u", train_data="d").validate()
    with pytest.raises(ConfigError, match="class_balance"):
        ProbeConfig(task=task, class_balance=True, upstream="u", train_data="d", max_seconds=None).validate()


@pytest.mark.parametrize("kind", ["probe", "asr"])
def test_a_foreign_newer_or_broken_model_config_is_named_with_its_file(kind, tmp_path):
    from speechdistill.asr.model import ASR_FORMAT, AsrModelError, read_asr_model_info
    from speechdistill.probe.model import PROBE_FORMAT, ProbeModelError, load_probe_model

    read, error, name = {"probe": (load_probe_model, ProbeModelError, PROBE_FORMAT),
                         "asr": (read_asr_model_info, AsrModelError, ASR_FORMAT)}[kind]
    config = tmp_path / "config.yaml"
    with pytest.raises(error, match="is not an? .*model dir"):
        read(tmp_path)
    for text, message in [("format: speechdistill\nformat_version: 1\n", f"not a {name} config"),
                          (f"format: {name}\nformat_version: 7\n", "format_version 7 is newer than this speechdistill"),
                          ("format: [unclosed\n", "not valid YAML")]:
        config.write_text(text)
        with pytest.raises(error) as caught:
            read(tmp_path)
        assert str(caught.value).startswith(f"{config}: {message}"), str(caught.value)
