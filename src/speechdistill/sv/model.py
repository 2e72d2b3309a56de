"""Speaker-verification modules: the trainable model, the embedding extractor, and its model directory.

``SpeakerEmbedder`` turns waveforms into speaker embeddings::

    wavs [B, T] (16 kHz samples) --upstream encoder (adapters on)--> hidden states [B, N, D] (50 Hz)
                                 --featurizer (one layer or a weighted sum)--> features [B, N, D]
    or                           --log-mel fbank--> features [B, N', 80] (100 Hz)
    features --back-end (ECAPA-TDNN or mean+std linear)--> embeddings [B, E]

``SvTrainModel`` is what the trainer optimises (and wraps in DDP): the same pieces plus the
speaker classification head and, for a student with distillation terms (OS-KDFT), the
distillation heads. Its forward runs the student once on ``[kd inputs; sv inputs]`` stacked along
the batch with the adapters switched off for the first rows and on for the others -- the released
code's "batch passed twice" -- and returns the distillation branch's hidden states together with
the speaker loss. A student without adapters whose branches see the same input runs it once.

A trained system is saved as a directory (written under a temporary name, then renamed)::

    sv_model.yaml           format, system, featurizer/back-end configs, embedding size
    backend.safetensors     featurizer and back-end weights
    upstream/               the encoder as our model dir (speechdistill.load_model reads it)
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import yaml
from torch import nn

from ..config import ConfigError, from_dict, to_dict
from ..downstream.ecapa import EcapaConfig, EcapaTdnn, MeanStdBackendConfig, MeanStdLinearBackend
from ..downstream.featurizer import Featurizer, FeaturizerConfig
from ..downstream.frontend import Fbank, FbankConfig
from ..data.tables import replace_dir_atomically
from ..losses.aam import AamSoftmax, SoftmaxSpeakerHead, SpeakerLossOutput
from ..models.model_dir import read_format_config

SV_FORMAT = "speechdistill-sv"
SV_FORMAT_VERSION = 1
SV_CONFIG_FILE = "sv_model.yaml"
SV_WEIGHTS_FILE = "backend.safetensors"
UPSTREAM_DIR = "upstream"

PathLike = Union[str, Path]
StudentKey = Union[int, str]


class SvModelError(ValueError):
    """A speaker-verification model directory that cannot be read; the message names the file."""


def build_backend(kind: str, input_size: int, ecapa: Optional[EcapaConfig] = None,
                  mean_std: Optional[MeanStdBackendConfig] = None) -> nn.Module:
    """ECAPA-TDNN or the mean+std linear back-end over ``input_size``-dimensional features."""
    if kind == "ecapa":
        return EcapaTdnn(input_size, ecapa or EcapaConfig())
    if kind == "mean_std":
        return MeanStdLinearBackend(input_size, mean_std or MeanStdBackendConfig())
    raise ConfigError(f"back-end '{kind}' is not one of ecapa, mean_std")


def build_speaker_head(kind: str, embedding_size: int, num_speakers: int, *, margin: float = 0.2,
                       scale: float = 30.0, class_weights: Optional[torch.Tensor] = None) -> nn.Module:
    if kind == "aam":
        return AamSoftmax(embedding_size, num_speakers, margin=margin, scale=scale, class_weights=class_weights)
    if kind == "softmax":
        return SoftmaxSpeakerHead(embedding_size, num_speakers, class_weights=class_weights)
    raise ConfigError(f"speaker_loss '{kind}' is not one of aam, softmax")


def pad_to(wavs: torch.Tensor, samples: int) -> torch.Tensor:
    """Zero-pad ``[B, T]`` on the right to ``[B, samples]``."""
    return wavs if wavs.shape[1] == samples else nn.functional.pad(wavs, (0, samples - wavs.shape[1]))


class SpeakerEmbedder(nn.Module):
    """Waveforms to speaker embeddings (see the module docstring). Exactly one of ``upstream``
    (with ``featurizer``) and ``fbank`` is given."""

    def __init__(self, backend: nn.Module, *, upstream: Optional[nn.Module] = None,
                 featurizer: Optional[Featurizer] = None, fbank: Optional[Fbank] = None) -> None:
        super().__init__()
        if (upstream is None) == (fbank is None):
            raise ValueError("SpeakerEmbedder needs either an upstream encoder (with a featurizer) or an fbank")
        if upstream is not None and featurizer is None:
            raise ValueError("SpeakerEmbedder: an upstream encoder needs a featurizer")
        self.upstream = upstream
        self.featurizer = featurizer
        self.fbank = fbank
        self.backend = backend

    @property
    def embedding_size(self) -> int:
        return int(self.backend.embedding_size)

    @property
    def min_samples(self) -> int:
        """Shortest input (samples) that gives at least one feature frame."""
        if self.upstream is not None:
            return int(self.upstream.config.receptive_field)
        return int(self.fbank.frame_length)

    def features(self, wavs: torch.Tensor, lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """wavs ``[B, T]`` float32 16 kHz, lengths ``[B]`` samples -> features ``[B, N, D]``, lengths ``[B]`` frames."""
        if self.fbank is not None:
            return self.fbank(wavs, lengths)
        out = self.upstream(wavs, lengths, output_layers=self.featurizer.selected_layers)
        return self.featurizer(out.hidden_states, out.lengths)

    def forward(self, wavs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """wavs ``[B, T]``, lengths ``[B]`` samples -> embeddings ``[B, E]`` (call in eval mode)."""
        features, frames = self.features(wavs, lengths)
        return self.backend(features, frames)


@dataclasses.dataclass
class SvForward:
    """What :meth:`SvTrainModel.forward` returns.

    speaker: loss, logits ``[B, C]`` and accuracy of the speaker branch.
    kd_predictions: student key -> ``[B_kd, N, D]`` of the distillation branch (raw hidden states
        keyed by index, prediction heads keyed ``h<teacher layer>``); empty without one.
    kd_frames: ``[B_kd]`` valid frames of the distillation branch (None without one).
    """

    speaker: Optional[SpeakerLossOutput]
    kd_predictions: Dict[StudentKey, torch.Tensor]
    kd_frames: Optional[torch.Tensor]


class SvTrainModel(nn.Module):
    """The trainable part of a speaker-verification system.

    ``student`` (upstream student, adapters included), ``fbank`` (upstream fbank) or neither
    (upstream frozen_teacher: the task passes the frozen teacher's hidden states in).
    ``kd_student_layers`` are the student hidden-state indices the distillation terms read;
    ``kd_heads`` map the student onto teacher layers (2024 preset).
    """

    def __init__(self, backend: nn.Module, speaker_head: nn.Module, *, student: Optional[nn.Module] = None,
                 featurizer: Optional[Featurizer] = None, fbank: Optional[Fbank] = None,
                 kd_heads: Optional[nn.Module] = None, kd_student_layers: Sequence[int] = ()) -> None:
        super().__init__()
        self.student = student
        self.fbank = fbank
        self.featurizer = featurizer
        self.backend = backend
        self.speaker_head = speaker_head
        self.kd_heads = kd_heads
        self.kd_student_layers = [int(i) for i in kd_student_layers]

    def _head_targets(self) -> List[int]:
        return list(self.kd_heads.config.target_layers) if self.kd_heads is not None else []

    def _student_pass(self, wavs: torch.Tensor, lengths: torch.Tensor, adapter_rows: Union[bool, torch.Tensor]
                      ) -> Tuple[List[Optional[torch.Tensor]], torch.Tensor]:
        needed = set(self.kd_student_layers) | set(self.featurizer.selected_layers)
        if self.kd_heads is not None:
            needed |= set(self.kd_heads.config.source_layers)
        out = self.student(wavs, lengths, output_layers=needed, use_adapters=adapter_rows)
        return out.hidden_states, out.lengths

    def forward(self, sv_wavs: Optional[torch.Tensor], sv_lengths: Optional[torch.Tensor],
                labels: Optional[torch.Tensor], *, kd_wavs: Optional[torch.Tensor] = None,
                kd_lengths: Optional[torch.Tensor] = None,
                upstream_states: Optional[Sequence[Optional[torch.Tensor]]] = None,
                upstream_frames: Optional[torch.Tensor] = None) -> SvForward:
        """One training (or validation) pass.

        Args:
            sv_wavs, sv_lengths: speaker branch input ``[B, T]`` (samples) and ``[B]``; None skips
                the speaker branch (a distillation-only pass).
            labels: ``[B]`` speaker indices (None: embeddings are computed but no loss).
            kd_wavs, kd_lengths: distillation branch input ``[B_kd, T_kd]`` and ``[B_kd]`` (a student
                only); run through the student with the adapters off. Passing the very tensors
                ``sv_wavs`` and ``sv_lengths`` says both branches see one input: a student without
                adapters then runs once for both.
            upstream_states, upstream_frames: upstream frozen_teacher only -- the frozen teacher's
                hidden states (``[B, N, D]`` each) and valid frames ``[B]`` for the speaker branch.
        """
        kd_predictions: Dict[StudentKey, torch.Tensor] = {}
        kd_frames = None
        features = frames = None
        if self.student is not None:
            kd_rows = 0 if kd_wavs is None else kd_wavs.shape[0]
            if kd_wavs is not None and kd_wavs is sv_wavs and kd_lengths is sv_lengths \
                    and not self.student.config.adapter_dim:
                # without adapters both branches are one network: on one input, one pass serves both
                states, sv_frames = self._student_pass(sv_wavs, sv_lengths, False)
                kd_states, sv_states, kd_frames = states, states, sv_frames
            else:
                if kd_wavs is not None and sv_wavs is not None:
                    samples = max(kd_wavs.shape[1], sv_wavs.shape[1])
                    wavs = torch.cat([pad_to(kd_wavs, samples), pad_to(sv_wavs, samples)])
                    lengths = torch.cat([kd_lengths, sv_lengths])
                    adapter_rows: Union[bool, torch.Tensor] = \
                        torch.arange(wavs.shape[0], device=wavs.device) >= kd_rows
                elif kd_wavs is not None:
                    wavs, lengths, adapter_rows = kd_wavs, kd_lengths, False
                else:
                    wavs, lengths, adapter_rows = sv_wavs, sv_lengths, True
                states, all_frames = self._student_pass(wavs, lengths, adapter_rows)
                kd_states = [None if h is None else h[:kd_rows] for h in states]
                sv_states = [None if h is None else h[kd_rows:] for h in states]
                kd_frames, sv_frames = (all_frames[:kd_rows] if kd_rows else None), all_frames[kd_rows:]
            if kd_rows:
                for index in self.kd_student_layers:
                    kd_predictions[index] = kd_states[index]
                if self.kd_heads is not None:
                    predicted = self.kd_heads.from_hidden_states(kd_states)  # [B, K, N, D]
                    for k, target in enumerate(self._head_targets()):
                        kd_predictions[f"h{target}"] = predicted[:, k]
            if sv_wavs is not None:
                features, frames = self.featurizer(sv_states, sv_frames)
        elif self.fbank is not None:
            if sv_wavs is not None:
                features, frames = self.fbank(sv_wavs, sv_lengths)
        else:
            if upstream_states is not None:
                features, frames = self.featurizer(upstream_states, upstream_frames)
        speaker = None
        if features is not None:
            embeddings = self.backend(features, frames)
            speaker = self.speaker_head(embeddings, labels) if labels is not None else None
        return SvForward(speaker=speaker, kd_predictions=kd_predictions, kd_frames=kd_frames)


# ---------------------------------------------------------------------------------------------
# Model directory
# ---------------------------------------------------------------------------------------------

def save_sv_model(embedder: SpeakerEmbedder, out_dir: PathLike, *, system: str,
                  info: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``embedder`` as a speaker-verification model directory (atomically).

    ``info`` is free-form provenance kept in ``sv_model.yaml`` (number of training speakers,
    the training config, the teacher path).
    """
    from safetensors.torch import save_file

    from ..models.checkpoints import save_model

    out = Path(out_dir)
    backend = embedder.backend
    if isinstance(backend, EcapaTdnn):
        backend_doc = {"kind": "ecapa", "input_size": backend.input_size, "config": to_dict(backend.config)}
    elif isinstance(backend, MeanStdLinearBackend):
        backend_doc = {"kind": "mean_std", "input_size": backend.input_size, "config": to_dict(backend.config)}
    else:
        raise TypeError(f"cannot save a back-end of type {type(backend).__name__}")
    document: Dict[str, Any] = {"format": SV_FORMAT, "format_version": SV_FORMAT_VERSION, "system": system,
                                "frontend": "fbank" if embedder.fbank is not None else "upstream",
                                "embedding_size": embedder.embedding_size, "backend": backend_doc}
    if embedder.fbank is not None:
        document["fbank"] = to_dict(embedder.fbank.config)
    else:
        document["featurizer"] = {"num_hidden_states": embedder.featurizer.num_hidden_states,
                                  "config": to_dict(embedder.featurizer.config)}
    if info:
        document["info"] = dict(info)
    state = {}
    if embedder.featurizer is not None:
        state.update({f"featurizer.{k}": v for k, v in embedder.featurizer.state_dict().items()})
    state.update({f"backend.{k}": v for k, v in backend.state_dict().items()})
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}

    def write(tmp: Path) -> None:
        save_file(state, str(tmp / SV_WEIGHTS_FILE), metadata={"format": SV_FORMAT})
        if embedder.upstream is not None:
            save_model(embedder.upstream, tmp / UPSTREAM_DIR)
        (tmp / SV_CONFIG_FILE).write_text(yaml.safe_dump(document, sort_keys=False, default_flow_style=None),
                                          encoding="utf-8")

    replace_dir_atomically(out, write)
    return out


def read_sv_config(directory: PathLike) -> Dict[str, Any]:
    path = Path(directory) / SV_CONFIG_FILE
    if not path.is_file():
        hint = (" (this is an encoder model dir; the speaker model is the 'sv_model' dir that sv_train writes)"
                if (Path(directory) / "config.yaml").is_file() else "")
        raise SvModelError(f"{path}: not found; {directory} is not a speaker-verification model directory{hint}. "
                           "Fix: pass the <exp>/sv_model directory written by speechdistill.bin.sv_train")
    return read_format_config(path, SV_FORMAT, SV_FORMAT_VERSION, SvModelError)


def load_sv_model(directory: PathLike) -> SpeakerEmbedder:
    """The :class:`SpeakerEmbedder` saved by :func:`save_sv_model`, in eval mode."""
    from ..models.checkpoints import load_model, read_safetensors

    directory = Path(directory)
    data = read_sv_config(directory)
    where = str(directory / SV_CONFIG_FILE)
    try:
        backend_doc = data["backend"]
        kind = backend_doc["kind"]
        if kind == "ecapa":
            backend = EcapaTdnn(int(backend_doc["input_size"]),
                                from_dict(EcapaConfig, backend_doc.get("config") or {}, where=f"{where}: backend"))
        elif kind == "mean_std":
            backend = MeanStdLinearBackend(int(backend_doc["input_size"]),
                                           from_dict(MeanStdBackendConfig, backend_doc.get("config") or {},
                                                     where=f"{where}: backend"))
        else:
            raise SvModelError(f"{where}: back-end kind '{kind}' is not one of ecapa, mean_std")
        upstream = featurizer = fbank = None
        if data.get("frontend") == "fbank":
            fbank = Fbank(from_dict(FbankConfig, data.get("fbank") or {}, where=f"{where}: fbank"))
        elif data.get("frontend") == "upstream":
            upstream = load_model(directory / UPSTREAM_DIR)
            featurizer_doc = data["featurizer"]
            featurizer = Featurizer(int(featurizer_doc["num_hidden_states"]),
                                    from_dict(FeaturizerConfig, featurizer_doc.get("config") or {},
                                              where=f"{where}: featurizer"))
            if featurizer.num_hidden_states != upstream.num_layers + 1:
                raise SvModelError(f"{where}: the featurizer expects {featurizer.num_hidden_states} hidden states but "
                                   f"{directory / UPSTREAM_DIR} has {upstream.num_layers} layers")
        else:
            raise SvModelError(f"{where}: frontend '{data.get('frontend')}' is not one of upstream, fbank")
    except KeyError as exc:
        raise SvModelError(f"{where}: missing key {exc}") from None
    except ConfigError as exc:
        raise SvModelError(str(exc)) from None
    embedder = SpeakerEmbedder(backend, upstream=upstream, featurizer=featurizer, fbank=fbank)
    weights_path = directory / SV_WEIGHTS_FILE
    if not weights_path.is_file():
        raise SvModelError(f"{weights_path}: not found; the model directory is incomplete (re-run training)")
    weights = read_safetensors(weights_path)
    expected = {f"backend.{k}" for k in backend.state_dict()}
    if featurizer is not None:
        expected |= {f"featurizer.{k}" for k in featurizer.state_dict()}
    if set(weights) != expected:
        raise SvModelError(f"{weights_path}: weights do not match {SV_CONFIG_FILE} (missing "
                           f"{sorted(expected - set(weights))[:5]}, unexpected {sorted(set(weights) - expected)[:5]})")
    try:
        backend.load_state_dict({k[len("backend."):]: v for k, v in weights.items() if k.startswith("backend.")})
        if featurizer is not None:
            featurizer.load_state_dict({k[len("featurizer."):]: v for k, v in weights.items()
                                        if k.startswith("featurizer.")})
    except RuntimeError as exc:  # a tensor of another shape than the config implies
        raise SvModelError(f"{weights_path}: weights do not fit {SV_CONFIG_FILE}: {' '.join(str(exc).split())[:300]}") \
            from None
    return embedder.eval()
