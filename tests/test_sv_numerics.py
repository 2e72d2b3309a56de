"""Every speaker-verification preset trains to the same numbers it trained to when these values were
recorded: three updates of each recipe preset (egs/voxceleb/oskdft/conf) on tiny data with a tiny
teacher, one CPU thread, fp32. Pinned per update: the loss, every logged term and learning rate;
after training: the validation metrics and sums over the exported weights. A change of the teacher
pass, the frame alignment, the loss composition, the parameter groups or the per-epoch learning-rate
schedules shows here as a changed number.

The values were recorded with ``pytest tests/test_sv_numerics.py`` (they are printed when they differ)
on an AMD EPYC CPU (AVX2), torch 2.13.0, 2026-12-06; the reference kernels and one thread keep them
reproducible to far below the tolerance.
"""
import json

import numpy as np
import pytest
import soundfile
import torch
from safetensors.numpy import load_file

from test_sv_fixtures import REPO, TINY_ECAPA, save_tiny_teacher, write_speaker_data

from speechdistill.config import load_config
from speechdistill.sv.config import SvConfig
from speechdistill.sv.task import SvTask
from speechdistill.train.trainer import Trainer

CONF = REPO / "egs" / "voxceleb" / "oskdft" / "conf"
TINY_RUN = {"max_steps": 3, "steps_per_epoch": 1, "max_seconds": 1.0, "min_seconds": 0.5, "batch_seconds": 4.0,
            "max_batch_size": None, "num_buckets": 1, "device": "cpu", "precision": "fp32",
            "teacher_precision": "fp32", "threads": 1, "num_workers": 0, "log_every": 1, "valid_every": 0,
            "valid_at_start": False, "checkpoint_every": 3, "kernels": "reference", "seed": 3}
PRESETS = {
    "oskdft_paper": {"ecapa": TINY_ECAPA},
    "oskdft_2024": {"heads_target_layers": [2, 3, 4], "mean_std": {"embedding_size": 12}, "kd_curriculum_epochs": 2},
    "ssl_frozen": {"ecapa": TINY_ECAPA},
    "ecapa_fbank": {"ecapa": TINY_ECAPA},
}


def make_files(root):
    write_speaker_data(root / "train", seed=7)
    write_speaker_data(root / "valid", speakers=(0, 2), utts_per_speaker=2, seed=8)
    write_speaker_data(root / "kd", speakers=(5, 6), utts_per_speaker=3, seed=9)
    noise = root / "noise"
    noise.mkdir()
    rng = np.random.default_rng(0)
    soundfile.write(str(noise / "n0.wav"), (0.1 * rng.standard_normal(24000)).astype(np.float32), 16000)
    (noise / "wav.scp").write_text(f"noise0 {noise / 'n0.wav'}\n")
    save_tiny_teacher(root / "teacher")
    return root


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return make_files(tmp_path_factory.mktemp("sv_numerics"))


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def train_preset(files, out, name):
    overrides = dict(TINY_RUN, train_data=str(files / "train"), valid_data=str(files / "valid"), **PRESETS[name])
    if name != "ecapa_fbank":
        overrides["teacher"] = str(files / "teacher")
    if name == "oskdft_2024":
        overrides["kd_data"] = str(files / "kd")
    else:  # the preset's augmentation, with one noise recording standing in for MUSAN
        overrides["augment_overrides"] = {"choices": {"noise": 1.0}, "apply_prob": 1.0,
                                          "noise": {"data_dir": str(files / "noise")}}
    config = load_config(SvConfig, CONF / f"{name}.yaml", overrides)
    config.validate()
    Trainer(config, SvTask(config), out).run()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [{k: v for k, v in r.items() if k == "loss" or k.startswith("lr/") or k.endswith(("_loss", "_weight"))
              or k.startswith("kd_") or k in ("accuracy", "l1", "cos")}
             for r in records if "grad_norm" in r]
    valid = {k: v for r in records for k, v in r.items() if k.startswith("valid/") and k != "valid/seconds"}
    weights = {}
    for path in sorted((out / "sv_model").rglob("*.safetensors")):
        tensors = load_file(str(path))
        weights[str(path.relative_to(out / "sv_model"))] = [
            float(sum(t.astype(np.float64).sum() for t in tensors.values())),
            float(sum(np.square(t.astype(np.float64)).sum() for t in tensors.values()))]
    flat = {f"update{n + 1}/{k}": v for n, step in enumerate(steps) for k, v in step.items()}
    flat.update(valid)
    flat.update({f"{path}/{what}": value for path, values in weights.items()
                 for what, value in zip(("sum", "sum_of_squares"), values)})
    return flat


REFERENCE = {
    "ecapa_fbank": {
        "backend.safetensors/sum": 475.3241579129117, "backend.safetensors/sum_of_squares": 643.9859744376287,
        "update1/accuracy": 0.0, "update1/loss": 16.98284912109375, "update1/lr/backend": 0.001, "update1/speaker_loss":
        16.98284912109375, "update2/accuracy": 0.0, "update2/loss": 19.023332595825195, "update2/lr/backend":
        0.0009997557473810372, "update2/speaker_loss": 19.023332595825195, "update3/accuracy": 0.5, "update3/loss":
        12.928007125854492, "update3/lr/backend": 0.0009990232305719944, "update3/speaker_loss": 12.928007125854492,
        "valid/accuracy": 0.5, "valid/num_utts": 4, "valid/speaker_loss": 8.587011337280273,
    },
    "oskdft_2024": {
        "backend.safetensors/sum": 25.321078843611758, "backend.safetensors/sum_of_squares": 31.604847353472415,
        "update1/accuracy": 0.5, "update1/kd_cos": 2.139509439468384, "update1/kd_l1": 2.438288450241089,
        "update1/loss": 5.797881126403809, "update1/lr/adapters": 5e-05, "update1/lr/backend": 5e-05,
        "update1/lr/student": 5e-05, "update1/speaker_loss": 1.2200829982757568, "update2/accuracy": 0.5,
        "update2/kd_cos": 2.110098123550415, "update2/kd_l1": 2.4124960899353027, "update2/loss": 5.840750694274902,
        "update2/lr/adapters": 5e-05, "update2/lr/backend": 5e-05, "update2/lr/student": 5e-05, "update2/speaker_loss":
        1.3181562423706055, "update3/accuracy": 0.5, "update3/kd_cos": 2.1387619972229004, "update3/kd_l1":
        2.4356255531311035, "update3/loss": 5.809338569641113, "update3/lr/adapters": 5e-05, "update3/lr/backend":
        5e-05, "update3/lr/student": 5e-05, "update3/speaker_loss": 1.2349510192871094,
        "upstream/model.safetensors/sum": 229.84906625499343, "upstream/model.safetensors/sum_of_squares":
        990.6454753299362, "valid/accuracy": 0.0, "valid/kd_cos": 2.1489977836608887, "valid/kd_l1": 2.4141845703125,
        "valid/num_utts": 4, "valid/speaker_loss": 1.4909720420837402,
    },
    "oskdft_paper": {
        "backend.safetensors/sum": 484.68195327943795, "backend.safetensors/sum_of_squares": 641.4134762315875,
        "update1/accuracy": 0.0, "update1/kd_mse": 1.2549734115600586, "update1/kd_mse_weight": 99.0, "update1/loss":
        137.82179260253906, "update1/lr/adapters": 0.001, "update1/lr/backend": 0.0001, "update1/lr/student": 1e-05,
        "update1/speaker_loss": 13.579419136047363, "update2/accuracy": 0.25, "update2/kd_mse": 1.2910423278808594,
        "update2/kd_mse_weight": 98.0, "update2/loss": 143.5373077392578, "update2/lr/adapters": 0.0009997557473810372,
        "update2/lr/backend": 9.997557473810371e-05, "update2/lr/student": 1.9995114947620745e-05,
        "update2/speaker_loss": 17.015153884887695, "update3/accuracy": 0.25, "update3/kd_mse": 1.2857023477554321,
        "update3/kd_mse_weight": 97.0, "update3/loss": 137.05587768554688, "update3/lr/adapters": 0.0009990232305719944,
        "update3/lr/backend": 9.990232305719945e-05, "update3/lr/student": 2.9970696917159828e-05,
        "update3/speaker_loss": 12.342750549316406, "upstream/model.safetensors/sum": 478.63413883413364,
        "upstream/model.safetensors/sum_of_squares": 1403.575862670704, "valid/accuracy": 0.5, "valid/kd_mse":
        0.6377543210983276, "valid/num_utts": 4, "valid/speaker_loss": 8.577986717224121,
    },
    "ssl_frozen": {
        "backend.safetensors/sum": 455.21494456612345, "backend.safetensors/sum_of_squares": 641.6941401022939,
        "update1/accuracy": 0.0, "update1/loss": 16.3721866607666, "update1/lr/backend": 0.0005, "update1/speaker_loss":
        16.3721866607666, "update2/accuracy": 0.0, "update2/loss": 19.393753051757812, "update2/lr/backend":
        0.0004998778736905186, "update2/speaker_loss": 19.393753051757812, "update3/accuracy": 0.5, "update3/loss":
        9.149447441101074, "update3/lr/backend": 0.0004995116152859972, "update3/speaker_loss": 9.149447441101074,
        "upstream/model.safetensors/sum": 356.783169482866, "upstream/model.safetensors/sum_of_squares":
        1282.9729725274142, "valid/accuracy": 0.25, "valid/num_utts": 4, "valid/speaker_loss": 13.06066608428955,
    },
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_trains_to_the_recorded_numbers(files, tmp_path, one_thread, name):
    found = train_preset(files, tmp_path / name, name)
    assert found == pytest.approx(REFERENCE[name], rel=1e-6, abs=1e-9), json.dumps(found)
