"""Shared pieces of the distillation tests (tiny teachers, data, noise and RIR dirs, tasks built from
the recipe's presets with tiny students), and the tests of the config layer.

Every method preset (``conf/distill``, linked from ``egs/librispeech/distill/conf``) is used as written, except that the student is
shrunk (``student_encoder``) to fit a tiny 12-layer teacher of width 64.
"""
from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import pytest
import soundfile
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_toy import make_data_dir  # noqa: E402

from speechdistill.config import ConfigError, load_config, load_yaml, merge  # noqa: E402
from speechdistill.distill import DistillConfig, DistillTask, parse_layer_groups  # noqa: E402
from speechdistill.models.checkpoints import save_model  # noqa: E402
from speechdistill.models.config import EncoderConfig  # noqa: E402
from speechdistill.models.encoder import Encoder  # noqa: E402
from speechdistill.train.task import TrainContext  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PRESET_DIR = REPO / "conf" / "distill"
TINY_CONV = [[32, 10, 5]] + [[32, 3, 2]] * 4 + [[32, 2, 2]] * 2
SLIM_CONV = [[16, 10, 5], [24, 1, 1]] + [[24, 3, 2]] * 4 + [[48, 1, 1]] + [[48, 2, 2]] * 2
# Students shrunk to the tiny teacher (same CNN where the preset copies it from the teacher).
TINY_STUDENTS: Dict[str, Dict[str, Any]] = {
    "distilhubert": {"conv_layers": TINY_CONV, "hidden_size": 64, "num_heads": 4, "ffn_size": 128},
    "robustdistiller": {"conv_layers": TINY_CONV, "hidden_size": 64, "num_heads": 4, "ffn_size": 128},
    "distilalhubert": {"conv_layers": TINY_CONV, "hidden_size": 64, "num_heads": 4, "ffn_size": 128},
    "dphubert": {},
    "rd_dpwavlm": {},
    "armhubert": {"conv_layers": SLIM_CONV, "hidden_size": 48, "num_heads": 4, "ffn_size": 64},
    "armhubert_s": {"conv_layers": SLIM_CONV, "hidden_size": 48, "num_heads": 4, "ffn_size": 64},
    "armwavlm_s": {"conv_layers": SLIM_CONV, "hidden_size": 48, "num_heads": 4, "ffn_size": 64},
    "maskhubert": {"conv_layers": SLIM_CONV, "hidden_size": 48, "num_heads": 4, "ffn_size": 64},
    "starhubert": {"conv_layers": SLIM_CONV, "hidden_size": 48, "num_heads": 4, "ffn_size": 64},
    "armhubert_s_100": {"conv_layers": SLIM_CONV, "hidden_size": 48, "num_heads": 4, "ffn_size": 64},
    "armwavlm_s_100": {"conv_layers": SLIM_CONV, "hidden_size": 48, "num_heads": 4, "ffn_size": 64},
    "starhubert_960": {"conv_layers": SLIM_CONV, "hidden_size": 48, "num_heads": 4, "ffn_size": 64},
    "starhubert_l": {"conv_layers": SLIM_CONV, "hidden_size": 48, "num_heads": 4, "ffn_size": 64},
}
FIRST_STAGE_PRESETS = sorted(TINY_STUDENTS)
ALL_PRESETS = FIRST_STAGE_PRESETS + ["dphubert_final", "rd_dpwavlm_final"]


def tiny_teacher_config(wavlm: bool = False) -> EncoderConfig:
    return EncoderConfig(conv_layers=TINY_CONV, hidden_size=64, num_layers=12, num_heads=4, ffn_size=128,
                         relative_position_bias=wavlm, num_buckets=32, max_distance=64)


def save_tiny_teacher(path: Path, *, wavlm: bool = False, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    save_model(Encoder(tiny_teacher_config(wavlm)), path)
    return path


def make_noise_and_rirs(root: Path) -> Dict[str, Path]:
    """A noise dir of 3 white-ish recordings and a RIR dir of 2 decaying impulse responses."""
    generator = np.random.default_rng(5)
    dirs = {"noise": root / "noise", "rirs": root / "rirs"}
    for directory in dirs.values():
        directory.mkdir(parents=True, exist_ok=True)
    lines = []
    for index in range(3):
        path = dirs["noise"] / f"noise{index}.wav"
        soundfile.write(str(path), (0.1 * generator.standard_normal(12000)).astype(np.float32), 16000)
        lines.append(f"noise{index} {path}\n")
    (dirs["noise"] / "wav.scp").write_text("".join(lines))
    lines = []
    for index in range(2):
        time = np.arange(3200) / 16000
        rir = (generator.standard_normal(3200) * np.exp(-time / 0.04)).astype(np.float32)
        rir[0] = 1.0
        path = dirs["rirs"] / f"rir{index}.wav"
        soundfile.write(str(path), rir, 16000)
        lines.append(f"rir{index} {path}\n")
    (dirs["rirs"] / "wav.scp").write_text("".join(lines))
    return dirs


def context(output_dir: Path, seed: int = 0) -> TrainContext:
    return TrainContext(device=torch.device("cpu"), precision="fp32", teacher_precision="fp32", rank=0, world_size=1,
                        local_rank=0, output_dir=Path(output_dir), seed=seed, logger=logging.getLogger("test"))


def preset_config(name: str, teacher: Path, noise_rirs: Optional[Dict[str, Path]] = None,
                  **changes: Any) -> DistillConfig:
    """The recipe preset ``name`` with a tiny student, the given teacher and ``changes`` merged in."""
    data = load_yaml(PRESET_DIR / f"{name}.yaml")
    data = merge(data, {"teacher": str(teacher), "train_data": "unused", "student_encoder": TINY_STUDENTS.get(name, {}),
                        "precision": "fp32", "teacher_precision": "fp32"})
    if "corruption" in data and noise_rirs is not None:
        data = merge(data, {"corruption": {"noise_data": str(noise_rirs["noise"]),
                                           "rir_data": str(noise_rirs["rirs"])}})
    data = merge(data, changes)
    config = load_config(DistillConfig, None, data)
    config.validate()
    return config


def build_task(config: DistillConfig, output_dir: Path, seed: int = 0):
    """(task, model) exactly as the trainer builds them (setup, then the seeded model)."""
    task = DistillTask(config)
    task.setup(context(output_dir, seed))
    torch.manual_seed(seed)
    return task, task.model()


def batch(lengths, seed: int = 3, num_samples: Optional[int] = None):
    """Random speech-like batch: ``wavs`` [B, T] (zero-padded), ``lengths`` [B] samples."""
    generator = torch.Generator().manual_seed(seed)
    num_samples = num_samples or max(lengths)
    wavs = torch.zeros(len(lengths), num_samples)
    for row, length in enumerate(lengths):
        wavs[row, :length] = 0.3 * torch.randn(length, generator=generator)
    return wavs, torch.tensor(lengths, dtype=torch.long)


def frames_of(length: int, conv=TINY_CONV) -> int:
    for _, kernel, stride in conv:
        length = (length - kernel) // stride + 1
    return length


def golden_row(config: DistillConfig) -> str:
    """A preset's loss terms (name, kind, student:teacher layers, weight, reduction over layers) and schedule
    (lr, updates, warmup steps / fraction, accumulation, batch and crop seconds, gradient clip) in one line."""
    def layers(pairs) -> str:
        return ",".join(f"{s}:{t}" for s, t in pairs)
    terms = "; ".join(f"{t.name} {t.kind} {layers(t.layers)} x{t.weight:g} {t.layer_reduction}" for t in config.loss_terms)
    return (f"{terms} | lr {config.lr:g}, {config.max_steps} updates, warmup {config.warmup_steps}/"
            f"{config.warmup_fraction}, accum {config.accum_steps}, batch {config.batch_seconds:g} s, crop "
            f"{config.max_seconds} s, clip {config.grad_clip:g}")


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    return save_tiny_teacher(tmp_path_factory.mktemp("tiny-teacher") / "teacher")


# ------------------------------------------------------------------------------ config tests
def test_layer_groups_parse_dphubert_notation():
    assert parse_layer_groups("0.4,8,12") == ([0, 4, 8, 12], [0, 1, 1, 1])
    assert parse_layer_groups("4.8.12") == ([4, 8, 12], [0, 1, 2])
    for bad in ("0..4", "a.4", "4,4", ""):
        with pytest.raises(ConfigError):
            parse_layer_groups(bad)


@pytest.mark.parametrize("name", ALL_PRESETS)
def test_every_preset_loads_and_validates(name, teacher_dir):
    extra = {"student_from": "exp/x/prune/student"} if name.endswith("_final") else {}
    config = preset_config(name, teacher_dir, **extra)
    assert config.loss_terms and config.max_steps > 0
    if config.next_stage:
        assert (PRESET_DIR / config.next_stage).is_file()


def test_published_hyperparameters_reach_the_config(teacher_dir):
    distil = preset_config("distilhubert", teacher_dir)
    assert (distil.max_steps, distil.lr, distil.warmup_fraction, distil.grad_clip) == (200000, 2e-4, 0.07, 5.0)
    assert (distil.max_seconds, distil.max_batch_size, distil.adam_betas) == (15.625, 24, (0.9, 0.98))
    assert [t.kind for t in distil.loss_terms] == ["l1", "neg_logsigmoid_cos"]
    dp = preset_config("dphubert", teacher_dir)
    assert (dp.max_steps, dp.warmup_steps, dp.pruning.target_sparsity, dp.pruning.reg_lr) == (50000, 15000, 0.75, 0.02)
    assert dp.target_mapping.layer_groups == "0.4,8,12" and dp.next_stage == "dphubert_final.yaml"
    final = preset_config("dphubert_final", teacher_dir, student_from="x")
    assert (final.max_steps, final.lr, final.warmup_steps, final.pruning.enabled) == (25000, 1e-4, 5000, False)
    arm = preset_config("armhubert", teacher_dir)
    assert (arm.masking.mask_prob, arm.masking.selection, arm.lr) == (0.8, "uniform", 5e-3)
    assert [(t.name, t.weight, t.layer_reduction) for t in arm.loss_terms] == [("hint", 0.1, "sum"),
                                                                              ("rec", 1.0, "mean")]
    rd = preset_config("robustdistiller", teacher_dir)
    assert (rd.enhancement.weight, rd.enhancement.input, rd.grad_clip) == (2.0, "last_hidden", 15.0)
    assert preset_config("maskhubert", teacher_dir).lr == 5e-4
    # the 100 h ARM presets: released conf/arm*/arm*-s-100.yaml (mask prob 0.4, 6 utts x 2 GPUs x accum 3, 200 epochs)
    for name, student in (("armhubert_s_100", "armhubert_s"), ("armwavlm_s_100", "armwavlm_s")):
        arm100 = preset_config(name, teacher_dir)
        assert (arm100.student, arm100.masking.mask_prob, arm100.max_batch_size, arm100.accum_steps) == \
            (student, 0.4, 6, 6)
        assert (arm100.max_steps, arm100.lr, arm100.max_seconds) == (200 * ((28539 + 5) // 6 // 2 // 3), 5e-3, None)
    for name, student in (("starhubert_960", "starhubert"), ("starhubert_l", "starhubert_l")):
        star = preset_config(name, teacher_dir)
        assert (star.student, star.max_steps, star.accum_steps, star.lr) == (student, 100 * 140621 // 12, 12, 1e-3)
        assert star.layer0_source == "feature_projection_before_dropout"
    assert preset_config("distilalhubert", teacher_dir).precision == "fp32"


# Every preset's loss terms and schedule as the specs give them (shared/specs/methods/): a change to a preset that
# changes what it trains shows here. Each row: golden_row() of the preset with the recipe's defaults.
GOLDEN_PRESETS = {
    'armhubert': 'hint mask_split_mse 1:1,2:2,3:3,4:4,5:5,6:6,7:7,8:8,9:9,10:10,11:11 x0.1 sum; rec mask_split_mse 12:12 x1 mean | lr 0.005, 390600 updates, warmup 0/0.05, accum 8, batch 630 s, crop None s, clip 0',
    'armhubert_s': 'hint mask_split_mse 1:1,2:2,3:3,4:4,5:5,6:6,7:7,8:8,9:9,10:10,11:11 x0.1 sum; rec mask_split_mse 12:12 x1 mean | lr 0.005, 195300 updates, warmup 0/0.05, accum 8, batch 630 s, crop None s, clip 0',
    'armhubert_s_100': 'hint mask_split_mse 1:1,2:2,3:3,4:4,5:5,6:6,7:7,8:8,9:9,10:10,11:11 x0.1 sum; rec mask_split_mse 12:12 x1 mean | lr 0.005, 158400 updates, warmup 0/0.05, accum 6, batch 210 s, crop None s, clip 0',
    'armwavlm_s': 'hint mask_split_mse 1:1,2:2,3:3,4:4,5:5,6:6,7:7,8:8,9:9,10:10,11:11 x0.1 sum; rec mask_split_mse 12:12 x1 mean | lr 0.005, 195300 updates, warmup 0/0.05, accum 8, batch 630 s, crop None s, clip 0',
    'armwavlm_s_100': 'hint mask_split_mse 1:1,2:2,3:3,4:4,5:5,6:6,7:7,8:8,9:9,10:10,11:11 x0.1 sum; rec mask_split_mse 12:12 x1 mean | lr 0.005, 158400 updates, warmup 0/0.05, accum 6, batch 210 s, crop None s, clip 0',
    'distilalhubert': 'mse mse 2:2,4:4,6:6,8:8,10:10,12:12 x1 sum; cos neg_logsigmoid_cos 2:2,4:4,6:6,8:8,10:10,12:12 x1 sum | lr 0.0002, 200000 updates, warmup 0/0.07, accum 1, batch 125 s, crop 15.625 s, clip 5',
    'distilhubert': 'l1 l1 head4:4,head8:8,head12:12 x1 mean; cos neg_logsigmoid_cos head4:4,head8:8,head12:12 x1 mean | lr 0.0002, 200000 updates, warmup 0/0.07, accum 1, batch 375 s, crop 15.625 s, clip 5',
    'dphubert': 'l1 l1 0:0,4:4,8:8,12:12 x1 mean; cos neg_cos 0:0,4:4,8:8,12:12 x1 mean | lr 0.0002, 50000 updates, warmup 15000/None, accum 4, batch 160 s, crop 15.625 s, clip 10',
    'maskhubert': 'hint mask_split_mse 1:1,2:2,3:3,4:4,5:5,6:6,7:7,8:8,9:9,10:10,11:11 x0.1 sum; rec mask_split_mse 12:12 x1 mean | lr 0.0005, 390600 updates, warmup 0/0.05, accum 8, batch 630 s, crop None s, clip 0',
    'rd_dpwavlm': 'l1 l1 0:0,4:4,8:8,12:12 x1 mean; cos neg_cos 0:0,4:4,8:8,12:12 x1 mean | lr 0.0002, 50000 updates, warmup 15000/None, accum 4, batch 160 s, crop 15.625 s, clip 10',
    'robustdistiller': 'l1 l1 head4:4,head8:8,head12:12 x1 mean; cos neg_logsigmoid_cos head4:4,head8:8,head12:12 x1 mean | lr 0.0002, 200000 updates, warmup 0/0.07, accum 1, batch 375 s, crop 15.625 s, clip 15',
    'starhubert': 'gram_layer gram_layer 0:0,1:1,2:2,3:3,4:4,5:5,6:6,7:7,8:8,9:9,10:10,11:11,12:12 x1 mean; gram_intra gram_intra 0:0,1:1,2:2,3:3,4:4,5:5,6:6,7:7,8:8,9:9,10:10,11:11,12:12 x1 mean | lr 0.001, 237833 updates, warmup 0/0.05, accum 12, batch 70 s, crop None s, clip 0',
    'starhubert_960': 'gram_layer gram_layer 0:0,1:1,2:2,3:3,4:4,5:5,6:6,7:7,8:8,9:9,10:10,11:11,12:12 x1 mean; gram_intra gram_intra 0:0,1:1,2:2,3:3,4:4,5:5,6:6,7:7,8:8,9:9,10:10,11:11,12:12 x1 mean | lr 0.001, 1171841 updates, warmup 0/0.05, accum 12, batch 70 s, crop None s, clip 0',
    'starhubert_l': 'gram_layer gram_layer 0:0,1:1,2:2,3:3,4:4,5:5,6:6,7:7,8:8,9:9,10:10,11:11,12:12 x1 mean; gram_intra gram_intra 0:0,1:1,2:2,3:3,4:4,5:5,6:6,7:7,8:8,9:9,10:10,11:11,12:12 x1 mean | lr 0.001, 1171841 updates, warmup 0/0.05, accum 12, batch 70 s, crop None s, clip 0',
    'dphubert_final': 'l1 l1 0:0,4:4,8:8,12:12 x1 mean; cos neg_cos 0:0,4:4,8:8,12:12 x1 mean | lr 0.0001, 25000 updates, warmup 5000/None, accum 4, batch 160 s, crop 15.625 s, clip 10',
    'rd_dpwavlm_final': 'l1 l1 0:0,4:4,8:8,12:12 x1 mean; cos neg_cos 0:0,4:4,8:8,12:12 x1 mean | lr 0.0001, 25000 updates, warmup 5000/None, accum 4, batch 160 s, crop 15.625 s, clip 10',
}


@pytest.mark.parametrize("name", ALL_PRESETS)
def test_golden_table_of_every_preset(name, teacher_dir):
    extra = {"student_from": "exp/x/prune/student"} if name.endswith("_final") else {}
    assert set(GOLDEN_PRESETS) == set(ALL_PRESETS)
    assert golden_row(preset_config(name, teacher_dir, **extra)) == GOLDEN_PRESETS[name]


def test_inconsistent_compositions_are_refused(teacher_dir):
    with pytest.raises(ConfigError, match="masking.mask_prob"):
        preset_config("armhubert", teacher_dir, masking={"mask_prob": 0.0})
    with pytest.raises(ConfigError, match="--teacher"):
        preset_config("distilhubert", "")
    with pytest.raises(ConfigError, match="layer_groups"):
        preset_config("dphubert", teacher_dir, target_mapping={"layer_groups": "0..4"})


def test_a_loss_reading_a_missing_head_is_refused_at_model_build(teacher_dir, tmp_path):
    config = preset_config("distilhubert", teacher_dir, loss_terms=[{"name": "l1", "kind": "l1",
                                                                      "layers": [["head6", 6]]}])
    task = DistillTask(config)
    task.setup(context(tmp_path))
    with pytest.raises(ConfigError, match="head6"):
        task.model()


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "speechdistill.bin.distill_train", *args], cwd=cwd,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120,
                          env={"PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})


def test_cli_help_and_unknown_key(tmp_path):
    shown = _cli("--help", cwd=tmp_path)
    assert shown.returncode == 0 and "--max_steps" in shown.stdout and "student_from" in shown.stdout
    assert not any(tmp_path.iterdir())
    wrong = _cli("--config", str(PRESET_DIR / "distilhubert.yaml"), "--output-dir", str(tmp_path / "out"),
                 "--train-data", "d", "--teacher", "t", "--max_stpes", "20", cwd=tmp_path)
    assert wrong.returncode == 1
    lines = wrong.stderr.strip().splitlines()
    assert len(lines) == 1 and "max_stpes" in lines[0] and "max_steps" in lines[0] and "Traceback" not in wrong.stderr
