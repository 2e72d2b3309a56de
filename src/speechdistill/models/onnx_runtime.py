"""Run an exported graph in onnxruntime (CPU) and check it against our PyTorch model.

:class:`OnnxModel` is a session over a graph of :mod:`.export_onnx` (inputs ``wavs`` [B, T] float32 and
``lengths`` [B] int64); :class:`OnnxFrontend` is the same graph as a frozen ``torch.nn.Module`` front-end for
toolkits that take one (SpeechBrain's hyperparameter files, an ESPnet front-end class). :func:`check_export`
runs the graph and our model on each utterance alone and in padded batches and compares every output on the
valid frames (:class:`Comparison`: largest difference, cosine similarity per frame).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from .. import kernels
from ..data.collate import pad_waveforms
from .encoder import Encoder
from .export_onnx import SAMPLE_RATE, PathLike, model_outputs, output_names, require



class OnnxModel:
    """An exported graph in an onnxruntime CPU session.

    ``threads``: intra-op threads (None: onnxruntime's default). Idle threads do not spin, so that timing
    it in turn with other models (our PyTorch forward) does not slow those down.
    """

    def __init__(self, path: PathLike, *, threads: Optional[int] = None) -> None:
        ort = require("onnxruntime")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        options.log_severity_level = 3
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.outputs = [o.name for o in self.session.get_outputs()]

    def __call__(self, wavs: Union[torch.Tensor, np.ndarray],
                 lengths: Union[torch.Tensor, np.ndarray, None] = None) -> Dict[str, np.ndarray]:
        """wavs [B, T] float32, lengths [B] samples (None: all T) -> output name -> array."""
        wavs = wavs.detach().cpu().numpy() if isinstance(wavs, torch.Tensor) else np.asarray(wavs)
        if lengths is None:
            lengths = np.full((wavs.shape[0],), wavs.shape[1], dtype=np.int64)
        lengths = lengths.detach().cpu().numpy() if isinstance(lengths, torch.Tensor) else np.asarray(lengths)
        values = self.session.run(None, {"wavs": wavs.astype(np.float32, copy=False),
                                         "lengths": lengths.astype(np.int64, copy=False)})
        return dict(zip(self.outputs, values))


class OnnxFrontend(nn.Module):
    """An exported graph as a frozen front-end module (no parameters; onnxruntime computes it on the CPU).

    ``forward(wavs [B, T], wav_lens [B] or None)`` follows SpeechBrain's SSL modules: ``wav_lens`` are relative
    lengths (fractions of T) and the result is the graph's hidden states stacked ``[L, B, N, D]`` (its
    ``hidden_<i>`` outputs in order; ``all_hidden_states=False``: the last of them, ``[B, N, D]``).
    ``encode(wavs, lengths [B] samples)`` returns ``(that, frame lengths [B])``, ESPnet's front-end contract.
    Results are float32 tensors on the device of ``wavs``.
    """

    def __init__(self, path: PathLike, *, all_hidden_states: bool = True, threads: Optional[int] = None) -> None:
        super().__init__()
        self.model = OnnxModel(path, threads=threads)
        self.hidden = [name for name in self.model.outputs if name.startswith("hidden_")]
        if not self.hidden:
            raise ValueError(f"{path}: the graph has no hidden_<i> output (outputs: {self.model.outputs})")
        self.all_hidden_states = all_hidden_states

    def encode(self, wavs: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        values = self.model(wavs, lengths)
        hidden = [torch.from_numpy(values[name]) for name in self.hidden]
        features = torch.stack(hidden) if self.all_hidden_states else hidden[-1]
        return features.to(wavs.device), torch.from_numpy(values["frame_lengths"]).to(wavs.device)

    def forward(self, wavs: torch.Tensor, wav_lens: Optional[torch.Tensor] = None) -> torch.Tensor:
        lengths = None if wav_lens is None else torch.round(wav_lens.float() * wavs.shape[1]).long()
        return self.encode(wavs, lengths)[0]


def torch_outputs(encoder: Encoder, wavs: torch.Tensor, lengths: torch.Tensor, names: Sequence[str],
                  heads: Optional[nn.Module] = None) -> Dict[str, np.ndarray]:
    """Our PyTorch model's values of the graph outputs ``names`` (reference kernels: the exported path)."""
    layers = [int(n.split("_")[1]) for n in names if n.startswith("hidden_")]
    graph_heads = heads if any(n.startswith("head_") for n in names) else None
    was_training = encoder.training
    with kernels.use("reference"), torch.no_grad():
        try:
            values = model_outputs(encoder.eval(), graph_heads, layers, wavs, lengths)
        finally:
            encoder.train(was_training)
    by_name = dict(zip(output_names(layers, graph_heads), values))
    return {name: by_name[name].detach().cpu().numpy() for name in names}


@dataclass
class Comparison:
    """Per output, over the valid frames of every run compared: the largest absolute difference, the largest
    absolute reference value, and the mean and lowest per-frame cosine similarity."""

    max_abs: Dict[str, float]
    reference_max: Dict[str, float]
    mean_cosine: Dict[str, float]
    min_cosine: Dict[str, float]
    lengths_equal: bool

    def relative(self) -> Dict[str, float]:
        """Largest difference relative to the output's scale: max |a - b| / max(1, max |a|)."""
        return {k: v / max(1.0, self.reference_max[k]) for k, v in self.max_abs.items()}

    def worst_abs(self) -> float:
        return max(self.max_abs.values())


def compare_outputs(runs: Sequence[Tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]]]) -> Comparison:
    """Compare (reference, other) output dicts of one or more runs on the valid frames of each utterance (the
    reference's ``frame_lengths``; padded frames are part of no result)."""
    rows: Dict[str, Tuple[List[np.ndarray], List[np.ndarray]]] = {}
    equal = True
    for reference, other in runs:
        frames = [int(n) for n in reference["frame_lengths"]]
        equal = equal and bool(np.array_equal(reference["frame_lengths"], other["frame_lengths"]))
        for name, ref in reference.items():
            if name == "frame_lengths":
                continue
            if other[name].shape != ref.shape:
                raise AssertionError(f"output {name}: shape {list(other[name].shape)}, expected {list(ref.shape)}")
            pair = rows.setdefault(name, ([], []))
            pair[0].extend(ref[b, :n] for b, n in enumerate(frames))
            pair[1].extend(other[name][b, :n] for b, n in enumerate(frames))
    result = Comparison({}, {}, {}, {}, equal)
    for name, (ref_rows, other_rows) in rows.items():
        a = np.concatenate(ref_rows).astype(np.float64)  # [frames, D]
        b = np.concatenate(other_rows).astype(np.float64)
        cosine = (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)
        result.max_abs[name] = float(np.abs(a - b).max())
        result.reference_max[name] = float(np.abs(a).max())
        result.mean_cosine[name] = float(cosine.mean())
        result.min_cosine[name] = float(cosine.min())
    return result


def synthetic_utterances(seconds: Sequence[float] = (1.3, 0.7, 2.1), seed: int = 0) -> List[torch.Tensor]:
    """Deterministic speech-like test signals (harmonics of a gliding pitch in noise, with pauses)."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for index, duration in enumerate(seconds):
        n = int(round(duration * SAMPLE_RATE))
        t = torch.arange(n) / SAMPLE_RATE
        pitch = 110.0 + 40.0 * index + 30.0 * torch.sin(2 * math.pi * 0.7 * t)
        phase = 2 * math.pi * torch.cumsum(pitch, 0) / SAMPLE_RATE
        voiced = sum(torch.sin(k * phase) / k for k in range(1, 8))
        envelope = (torch.sin(2 * math.pi * 2.5 * t) > -0.3).float()
        out.append(0.05 * voiced * envelope + 0.01 * torch.randn(n, generator=generator))
    return out


def read_check_audio(data_dir: PathLike, count: int, seconds: float) -> List[torch.Tensor]:
    """The first ``count`` utterances (in key order) of a Kaldi data dir, at most ``seconds`` each, as 1-D
    float32 waveforms (held-out audio to check an export on)."""
    from ..data.dataset import AudioDataset, LoadFailure

    dataset = AudioDataset(data_dir, max_seconds=seconds, min_seconds=0.05, random_crop=False)
    if len(dataset) == 0:
        raise ValueError(f"{data_dir}: no utterance of at least 0.05 s to check with")
    items = [dataset[index] for index in range(min(count, len(dataset)))]
    failed = [item.message for item in items if isinstance(item, LoadFailure)]
    if failed:
        raise ValueError(f"{data_dir}: a check utterance could not be read: {failed[0]}")
    return [torch.from_numpy(item["wav"]).float() for item in items]


def check_export(encoder: Encoder, model: OnnxModel, utterances: Sequence[torch.Tensor], *,
                 heads: Optional[nn.Module] = None, batch_size: int = 4) -> Comparison:
    """Run ``model`` and our PyTorch ``encoder`` on each utterance alone and on padded batches of
    ``batch_size``; compare every output on the valid frames of all runs together."""
    if not utterances:
        raise ValueError("check_export: no utterances to check with")
    groups = [[w] for w in utterances]
    groups += [list(utterances[i:i + batch_size]) for i in range(0, len(utterances), batch_size)
               if len(utterances[i:i + batch_size]) > 1]
    runs = []
    for group in groups:
        wavs, lengths = pad_waveforms(group)
        runs.append((torch_outputs(encoder, wavs, lengths, model.outputs, heads), model(wavs, lengths)))
    return compare_outputs(runs)
