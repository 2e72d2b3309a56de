"""A toy regression task and tiny data dirs for the trainer tests; runnable as an entry point.

The model maps 16-sample frames of the waveform to one value per frame; the target is a frozen
random "teacher" of the same frames. The loss is a mean over valid frames, with ``count`` = number
of valid frames, so one process with a global batch and several DDP ranks sharing it compute the
same gradient. Optional randomness (input noise from the task's own generator, dropout from torch's
global RNG, a gain from Python's ``random``, a jitter from numpy's global RNG) lets the resume tests
check that every generator is restored.

Run as ``python tests/_train_toy.py --output-dir DIR --train-data DIR [--key value ...]``; after
training every rank saves its final parameters to ``DIR/params-rank<r>.pt``.
"""
from __future__ import annotations

import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import soundfile
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

from speechdistill.train import StepOutput, TrainContext, TrainerConfig  # noqa: E402
from speechdistill.train.cli import build_parser, parse_args, run_main  # noqa: E402

FRAME = 16
SAMPLE_RATE = 16000


def make_data_dir(directory: Path, lengths: List[int], *, seed: int = 0, prefix: str = "utt",
                  broken: Optional[List[int]] = None) -> Path:
    """Write ``len(lengths)`` random 16 kHz WAVs and wav.scp + utt2num_samples; ``broken`` indices
    point wav.scp at a missing file (unreadable audio)."""
    directory = Path(directory)
    (directory / "wav").mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(seed)
    wav_lines, count_lines = [], []
    for index, length in enumerate(lengths):
        key = f"{prefix}{index:04d}"
        path = directory / "wav" / f"{key}.wav"
        samples = (0.3 * generator.standard_normal(length)).clip(-0.99, 0.99).astype(np.float32)
        soundfile.write(str(path), samples, SAMPLE_RATE, subtype="FLOAT")
        target = directory / "wav" / "missing.wav" if broken and index in broken else path
        wav_lines.append(f"{key} {target}\n")
        count_lines.append(f"{key} {length}\n")
    (directory / "wav.scp").write_text("".join(wav_lines))
    (directory / "utt2num_samples").write_text("".join(count_lines))
    return directory


@dataclass
class ToyConfig(TrainerConfig):
    hidden: int = 8
    dropout: float = 0.0
    noise_std: float = 0.0
    random_gain: bool = False
    numpy_jitter: bool = False
    lagrangian: bool = False
    nan_calls: List[int] = field(default_factory=list)
    nan_from_call: int = -1
    pause_at_step: int = -1
    pause_seconds: float = 0.0


class ToyModel(torch.nn.Module):
    def __init__(self, hidden: int, dropout: float) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(FRAME, hidden)
        self.LayerNorm = torch.nn.LayerNorm(hidden)
        self.drop = torch.nn.Dropout(dropout)
        self.out = torch.nn.Linear(hidden, 1)
        self.multiplier = torch.nn.Parameter(torch.zeros(()))

    def forward(self, wavs: torch.Tensor, lengths: torch.Tensor):
        """wavs [B, T] -> predictions [B, N] for N = T // 16 frames, frame lengths [B]."""
        frames = wavs[:, : wavs.shape[1] // FRAME * FRAME].reshape(wavs.shape[0], -1, FRAME)
        hidden = self.drop(torch.tanh(self.LayerNorm(self.proj(frames))))
        return self.out(hidden).squeeze(-1), lengths // FRAME


class ToyTask:
    def __init__(self, config: ToyConfig) -> None:
        self.config = config
        self.calls = 0
        self.paused = False

    def setup(self, context: TrainContext) -> None:
        self.context = context
        teacher_rng = torch.Generator().manual_seed(1234)
        self.teacher = torch.nn.Linear(FRAME, 1).to(context.device)
        with torch.no_grad():
            self.teacher.weight.copy_(torch.randn(1, FRAME, generator=teacher_rng))
            self.teacher.bias.zero_()
        self.teacher.requires_grad_(False).eval()
        self.generator = torch.Generator().manual_seed(context.seed + 17 * context.rank)

    def model(self) -> torch.nn.Module:
        return ToyModel(self.config.hidden, self.config.dropout)

    def param_groups(self, model: ToyModel) -> List[Dict[str, Any]]:
        main = [p for n, p in model.named_parameters() if n != "multiplier"]
        groups: List[Dict[str, Any]] = [{"name": "main", "params": main}]
        if self.config.lagrangian:
            groups.append({"name": "multiplier", "params": [model.multiplier], "lr": -10 * self.config.lr,
                           "weight_decay": 0.0})
        else:
            model.multiplier.requires_grad_(False)
        return groups

    def _losses(self, model: torch.nn.Module, wavs: torch.Tensor, clean: torch.Tensor, lengths: torch.Tensor):
        prediction, frame_lengths = model(wavs, lengths)
        frames = clean[:, : prediction.shape[1] * FRAME].reshape(clean.shape[0], -1, FRAME)
        with self.context.teacher_autocast():
            target = torch.tanh(self.teacher(frames)).squeeze(-1)
        valid = torch.arange(prediction.shape[1], device=wavs.device)[None, :] < frame_lengths[:, None]
        count = valid.sum()
        error = (prediction.float() - target.float())[valid]
        return error, count, prediction[valid]

    def train_step(self, model: torch.nn.Module, batch: Dict[str, Any], step: int) -> StepOutput:
        config = self.config
        if step == config.pause_at_step and not self.paused:
            self.paused = True  # once, even when several micro-batches make up this update
            (self.context.output_dir / f"paused-rank{self.context.rank}").write_text(str(step))
            time.sleep(config.pause_seconds)
        clean = batch["wavs"]
        wavs = clean
        if config.noise_std > 0:
            noise = torch.randn(wavs.shape, generator=self.generator).to(wavs.device)
            wavs = wavs + config.noise_std * noise
        if config.random_gain:
            wavs = wavs * (0.9 + 0.2 * random.random())
        if config.numpy_jitter:
            wavs = wavs * float(1.0 + 0.05 * np.random.standard_normal())
        error, count, predicted = self._losses(model, wavs, clean, batch["lengths"])
        mse = (error ** 2).mean()
        l1 = error.abs().mean()
        loss = mse + 0.1 * l1
        terms = {"mse": mse, "l1": l1}
        if config.lagrangian:
            multiplier = model.module.multiplier if hasattr(model, "module") else model.multiplier
            constraint = (predicted.float() ** 2).mean() - 0.05
            loss = loss + multiplier * constraint
            terms["constraint"] = constraint
        if self.calls in config.nan_calls or (0 <= config.nan_from_call <= self.calls):
            terms["mse"] = mse * float("nan")
            loss = loss * float("nan")
        self.calls += 1
        return StepOutput(loss=loss, terms=terms, count=count)

    def valid_step(self, model: torch.nn.Module, batch: Dict[str, Any]) -> Dict[str, Any]:
        error, _, _ = self._losses(model, batch["wavs"], batch["wavs"], batch["lengths"])
        return {"mse": (error ** 2).mean(), "seconds": batch["lengths"].double().mean() / SAMPLE_RATE}

    def state_dict(self) -> Dict[str, Any]:
        return {"generator": self.generator.get_state(), "calls": self.calls}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.calls = state["calls"]

    def export(self, model: torch.nn.Module, output_dir: Path) -> None:
        tmp = output_dir / ".toy_model.pt.tmp"
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, output_dir / "toy_model.pt")


def main(argv: Optional[List[str]] = None) -> int:
    from speechdistill.train import Trainer

    parser = build_parser(ToyConfig, prog="_train_toy.py", description=__doc__)
    config, args = parse_args(parser, ToyConfig, argv)
    trainer = Trainer(config, ToyTask(config), args.output_dir, resume=args.resume)
    result = trainer.run()
    rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))
    torch.save({k: v.clone() for k, v in trainer.module.state_dict().items()},
               Path(args.output_dir) / f"params-rank{rank}.pt")
    return result.exit_code


if __name__ == "__main__":
    run_main(main)
