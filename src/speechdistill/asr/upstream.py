"""The frozen upstream of the ASR probe: hidden states computed on the fly, or read from a dump.

On the fly, any model :func:`speechdistill.models.checkpoints.load_model` loads (our model dirs,
Hugging Face dirs, fairseq / s3prl checkpoints) runs in eval mode, without gradients, under the
autocast the caller passes (the trainer's teacher precision), and computes only the layers the
featurizer reads (``output_layers``).

A dump (``python -m speechdistill.bin.dump_features``) stores, per utterance, the selected
hidden states side by side as one float32 matrix ``[N, L * D]`` in a kaldiio ark/scp pair, plus
``feats_info.yaml`` naming the upstream (path and fingerprint), the hidden-state indices stored
and their size. Reading a dump back gives the same ``[B, N, D]`` tensors the upstream would give.

An upstream is identified by a fingerprint: the SHA-256 of its files (names and contents), so
that an ASR model or a dump can refuse to be used with another upstream than the one it was
made from.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import ContextManager, Dict, List, Optional, Sequence, Tuple, Union

import torch
import yaml

from ..models.checkpoints import load_model

PathLike = Union[str, os.PathLike]
FEATS_SCP, FEATS_INFO = "feats.scp", "feats_info.yaml"
DUMP_FORMAT = "speechdistill-asr-features"


class UpstreamError(ValueError):
    """An upstream or a feature dump that cannot serve the ASR probe; the message names the path and the fix."""


_FINGERPRINTS: Dict[Tuple[str, float, int], str] = {}


def upstream_fingerprint(path: PathLike) -> str:
    """SHA-256 (hex) over the relative names and contents of the upstream's files (a dir or one file).

    Cached per process by path, modification time and size, since teachers can be gigabytes.
    """
    root = Path(path).resolve()
    if not root.exists():
        raise UpstreamError(f"{path}: upstream model not found. Fix: pass the student dir of the distillation "
                            "stage (exp/<distill exp>/student) or any model dir / checkpoint load_model reads")
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    files = [p for p in files if not any(part.startswith(".") for part in p.relative_to(root.parent).parts)]
    stamp = (str(root), max((p.stat().st_mtime for p in files), default=0.0), sum(p.stat().st_size for p in files))
    cached = _FINGERPRINTS.get(stamp)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(root) if root.is_dir() else file.name).encode("utf-8") + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    _FINGERPRINTS[stamp] = digest.hexdigest()
    return _FINGERPRINTS[stamp]


class FrozenUpstream:
    """A loaded upstream that never trains.

    Attributes:
        path: where it was loaded from.
        num_hidden_states: L + 1 (index 0 = transformer input, i = output of layer i).
        hidden_size: D of every hidden state.
        min_samples: shortest input (samples) that yields one frame.
    """

    def __init__(self, path: PathLike, device: Union[str, torch.device] = "cpu") -> None:
        self.path = str(path)
        try:
            encoder = load_model(path)
        except FileNotFoundError as exc:
            raise UpstreamError(f"{path}: cannot load the upstream ({exc})") from None
        self.encoder = encoder.eval().requires_grad_(False).to(device)
        config = self.encoder.config
        self.num_hidden_states = config.num_layers + 1
        self.hidden_size = config.hidden_size
        self.min_samples = config.receptive_field
        self.stride = config.stride

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Valid frames ``[B]`` of utterances of ``lengths`` ``[B]`` samples."""
        return self.encoder.frame_lengths(lengths)

    @torch.no_grad()
    def __call__(self, wavs: torch.Tensor, lengths: torch.Tensor, layers: Sequence[int],
                 autocast: ContextManager, host_lengths: Optional[Sequence[int]] = None
                 ) -> Tuple[List[Optional[torch.Tensor]], torch.Tensor]:
        """wavs ``[B, T]`` float32 16 kHz, lengths ``[B]`` samples (``host_lengths``: the same as Python ints,
        sparing a read from the device) -> (``num_hidden_states`` entries, ``[B, N, D]`` float32 for the
        indices in ``layers`` and None elsewhere; frame lengths ``[B]``)."""
        with autocast:
            out = self.encoder(wavs, lengths, host_lengths=host_lengths, output_layers=set(layers))
        states = [None if state is None else state.float() for state in out.hidden_states]
        return states, out.lengths


def write_dump_info(out_dir: Path, *, upstream: str, layers: Sequence[int], num_hidden_states: int,
                    hidden_size: int, data_dir: str, num_utterances: int, data_sha256: str) -> None:
    """Write ``feats_info.yaml`` (last: its presence marks a finished dump)."""
    from ..data.tables import atomic_write_text

    document = {"format": DUMP_FORMAT, "upstream": str(Path(upstream).resolve()),
                "upstream_fingerprint": upstream_fingerprint(upstream), "layers": [int(i) for i in layers],
                "num_hidden_states": int(num_hidden_states), "hidden_size": int(hidden_size),
                "data_dir": str(Path(data_dir).resolve()), "data_sha256": data_sha256,
                "num_utterances": int(num_utterances)}
    atomic_write_text(out_dir / FEATS_INFO, yaml.safe_dump(document, sort_keys=False, default_flow_style=None))


def read_dump_info(dump_dir: PathLike) -> Dict:
    path = Path(dump_dir) / FEATS_INFO
    if not path.is_file():
        raise UpstreamError(f"{path}: not found; {dump_dir} is not a feature dump. Fix: write it with "
                            "python -m speechdistill.bin.dump_features, or drop the *_features option to compute "
                            "features on the fly")
    info = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(info, dict) or info.get("format") != DUMP_FORMAT:
        raise UpstreamError(f"{path}: not a {DUMP_FORMAT} description (missing 'format: {DUMP_FORMAT}')")
    return info


class DumpedFeatures:
    """Hidden states of one data dir read back from a dump (lazily, per batch)."""

    def __init__(self, dump_dir: PathLike) -> None:
        import kaldiio

        self.dump_dir = Path(dump_dir)
        self.info = read_dump_info(dump_dir)
        self.layers: List[int] = [int(i) for i in self.info["layers"]]
        self.num_hidden_states = int(self.info["num_hidden_states"])
        self.hidden_size = int(self.info["hidden_size"])
        scp = self.dump_dir / FEATS_SCP
        if not scp.is_file():
            raise UpstreamError(f"{scp}: not found; the dump in {dump_dir} is incomplete. Fix: rerun dump_features")
        self.table = kaldiio.load_scp(str(scp))

    def check_upstream(self, upstream: PathLike) -> None:
        """Refuse a dump made from another upstream than ``upstream``."""
        if self.info.get("upstream_fingerprint") != upstream_fingerprint(upstream):
            raise UpstreamError(f"{self.dump_dir / FEATS_INFO}: these features were dumped from "
                                f"{self.info.get('upstream')}, whose files differ from the upstream {upstream}. "
                                "Fix: dump the features again from this upstream, or pass the upstream they came from")

    def check_layers(self, needed: Sequence[int]) -> None:
        missing = sorted(set(needed) - set(self.layers))
        if missing:
            raise UpstreamError(f"{self.dump_dir / FEATS_INFO}: the featurizer reads hidden states {list(needed)} but "
                                f"the dump holds only {self.layers}. Fix: dump again with --layers covering "
                                f"{missing}, or change the featurizer's layers")

    def __call__(self, keys: Sequence[str], device: torch.device) -> Tuple[List[Optional[torch.Tensor]], torch.Tensor]:
        """Hidden states of utterances ``keys``: (``num_hidden_states`` entries, ``[B, N, D]`` for the
        dumped indices and None elsewhere, zero-padded; frame lengths ``[B]``)."""
        matrices = []
        for key in keys:
            if key not in self.table:
                raise UpstreamError(f"{self.dump_dir / FEATS_SCP}: utterance '{key}' is not in the dump. Fix: dump "
                                    "the features of this data dir again")
            matrices.append(torch.from_numpy(self.table[key].copy()))  # kaldiio's arrays are read-only
        lengths = torch.tensor([m.shape[0] for m in matrices], dtype=torch.int64)
        width = len(self.layers) * self.hidden_size
        padded = torch.zeros(len(matrices), int(lengths.max()) if matrices else 0, width)
        for row, matrix in enumerate(matrices):
            if matrix.shape[1] != width:
                raise UpstreamError(f"{self.dump_dir / FEATS_SCP}: utterance '{keys[row]}' has {matrix.shape[1]} "
                                    f"feature columns, expected {width} ({len(self.layers)} layers x "
                                    f"{self.hidden_size}). Fix: dump the features again")
            padded[row, :matrix.shape[0]] = matrix
        padded = padded.to(device)
        states: List[Optional[torch.Tensor]] = [None] * self.num_hidden_states
        for slot, index in enumerate(self.layers):
            states[index] = padded[:, :, slot * self.hidden_size:(slot + 1) * self.hidden_size]
        return states, lengths.to(device)


class ProbeFeatures:
    """Hidden states for a probe's training: the frozen upstream on the fly, or dumps of the train and
    valid data (then the upstream is loaded only if a set has no dump). Shared by every probe task.

    Attributes: ``num_hidden_states``, ``hidden_size``; ``upstream`` (None when every set has a dump).
    """

    def __init__(self, upstream: str, device: torch.device, *, train_features: Optional[str] = None,
                 valid_features: Optional[str] = None, has_valid: bool = False,
                 min_seconds: Optional[float] = None) -> None:
        self.path = upstream
        self.device = device
        self.train_dump = DumpedFeatures(train_features) if train_features else None
        self.valid_dump = DumpedFeatures(valid_features) if valid_features else None
        for dump in (self.train_dump, self.valid_dump):
            if dump is not None:
                dump.check_upstream(upstream)
        self.upstream: Optional[FrozenUpstream] = None
        if self.train_dump is None or (has_valid and self.valid_dump is None):
            self.upstream = FrozenUpstream(upstream, device)
            self.num_hidden_states, self.hidden_size = self.upstream.num_hidden_states, self.upstream.hidden_size
            if min_seconds is not None and min_seconds * 16000 < self.upstream.min_samples:
                from ..config import ConfigError

                raise ConfigError(f"config.min_seconds: {min_seconds} s is shorter than the upstream's receptive "
                                  f"field ({self.upstream.min_samples} samples); raise it to at least "
                                  f"{self.upstream.min_samples / 16000:.3f}")
        else:
            self.num_hidden_states, self.hidden_size = self.train_dump.num_hidden_states, self.train_dump.hidden_size

    @property
    def description(self) -> str:
        return "features on the fly" if self.train_dump is None else f"train features from {self.train_dump.dump_dir}"

    def check_layers(self, layers: Sequence[int]) -> None:
        self.layers = list(layers)
        for dump in (self.train_dump, self.valid_dump):
            if dump is not None:
                dump.check_layers(self.layers)

    def __call__(self, batch, training: bool, autocast: ContextManager
                 ) -> Tuple[List[Optional[torch.Tensor]], torch.Tensor]:
        """Hidden states (``num_hidden_states`` entries, ``[B, N, D]`` or None) and frame lengths ``[B]`` of a
        collated batch, from the dump of its set when there is one."""
        dump = self.train_dump if training else self.valid_dump
        if dump is not None:
            return dump(batch["keys"], self.device)
        return self.upstream(batch["wavs"], batch["lengths"], self.layers, autocast,
                             host_lengths=batch.get("host_lengths"))
