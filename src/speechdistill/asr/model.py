"""The trainable part of the ASR probe and its model directory.

``AsrModel`` = SUPERB featurizer (softmax-weighted sum of the upstream's hidden states, or one of
them) followed by the BiLSTM-CTC downstream of :mod:`speechdistill.downstream.asr`.

Model directory ``<exp>/asr_model/`` (written whole or not at all)::

    config.yaml         format, featurizer and downstream configs, sizes, token type,
                        upstream path and fingerprint (the upstream is not copied)
    model.safetensors   featurizer + downstream weights
    tokens.txt          the token list (and bpe.model for token type bpe)
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import yaml
from torch import nn

from ..config import ConfigError, from_dict, to_dict
from ..data.tables import replace_dir_atomically
from ..downstream.asr import BiLstmCtc, BiLstmCtcConfig
from ..downstream.featurizer import Featurizer, FeaturizerConfig
from ..downstream.tokenizer import BPE_MODEL_FILE, TOKENS_FILE, Tokenizer, load_tokenizer
from ..models.model_dir import read_format_config

PathLike = Union[str, os.PathLike]
ASR_FORMAT = "speechdistill-asr"
ASR_FORMAT_VERSION = 1
CONFIG_FILE, WEIGHTS_FILE = "config.yaml", "model.safetensors"


class AsrModelError(ValueError):
    """An ASR model directory that is missing, incomplete or inconsistent."""


class AsrModel(nn.Module):
    """Featurizer + BiLSTM-CTC over ``num_hidden_states`` upstream states of size ``hidden_size``."""

    def __init__(self, num_hidden_states: int, hidden_size: int, vocab_size: int,
                 featurizer: Optional[FeaturizerConfig] = None, downstream: Optional[BiLstmCtcConfig] = None) -> None:
        super().__init__()
        self.featurizer = Featurizer(num_hidden_states, featurizer)
        self.downstream = BiLstmCtc(hidden_size, vocab_size, downstream)
        self.num_hidden_states = num_hidden_states
        self.hidden_size = hidden_size
        self.vocab_size = vocab_size

    @property
    def selected_layers(self) -> List[int]:
        """Hidden-state indices the featurizer reads (what the upstream must compute)."""
        return list(self.featurizer.selected_layers)

    def forward(self, hidden_states: Sequence[Optional[torch.Tensor]], lengths: torch.Tensor
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        """hidden_states: ``num_hidden_states`` entries ``[B, N, D]`` (unselected may be None);
        lengths: ``[B]`` frames. Returns CTC log-probabilities ``[B, N, V]`` and lengths ``[B]``."""
        features, lengths = self.featurizer(hidden_states, lengths)
        return self.downstream(features, lengths)


@dataclass
class AsrModelInfo:
    """What ``config.yaml`` of an ASR model dir records besides the weights."""

    num_hidden_states: int
    hidden_size: int
    vocab_size: int
    token_type: str
    featurizer: FeaturizerConfig
    downstream: BiLstmCtcConfig
    upstream: str
    upstream_fingerprint: str


def save_asr_model(model: AsrModel, tokenizer_dir: PathLike, out_dir: PathLike, *, token_type: str,
                   upstream: str, upstream_fingerprint: str) -> Path:
    """Write the model dir (see the module docstring) atomically; returns its path."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    tokenizer_dir = Path(tokenizer_dir)
    document: Dict[str, Any] = {
        "format": ASR_FORMAT, "format_version": ASR_FORMAT_VERSION,
        "num_hidden_states": model.num_hidden_states, "hidden_size": model.hidden_size,
        "vocab_size": model.vocab_size, "token_type": token_type,
        "featurizer": to_dict(model.featurizer.config), "downstream": to_dict(model.downstream.config),
        "upstream": str(Path(upstream).resolve()), "upstream_fingerprint": upstream_fingerprint,
    }

    def write(staging: Path) -> None:
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(staging / WEIGHTS_FILE), metadata={"format": ASR_FORMAT})
        shutil.copyfile(tokenizer_dir / TOKENS_FILE, staging / TOKENS_FILE)
        if (tokenizer_dir / BPE_MODEL_FILE).is_file():
            shutil.copyfile(tokenizer_dir / BPE_MODEL_FILE, staging / BPE_MODEL_FILE)
        (staging / CONFIG_FILE).write_text(yaml.safe_dump(document, sort_keys=False, default_flow_style=None),
                                           encoding="utf-8")

    replace_dir_atomically(out, write)
    return out


def read_asr_model_info(model_dir: PathLike) -> AsrModelInfo:
    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise AsrModelError(f"{path}: not found; {model_dir} is not an ASR model dir. Fix: point to "
                            "<asr exp>/asr_model, written at the end of asr_train")
    data = read_format_config(path, ASR_FORMAT, ASR_FORMAT_VERSION, AsrModelError)
    try:
        return AsrModelInfo(
            num_hidden_states=int(data["num_hidden_states"]), hidden_size=int(data["hidden_size"]),
            vocab_size=int(data["vocab_size"]), token_type=str(data["token_type"]),
            featurizer=from_dict(FeaturizerConfig, data["featurizer"], where=f"{path}: featurizer"),
            downstream=from_dict(BiLstmCtcConfig, data["downstream"], where=f"{path}: downstream"),
            upstream=str(data["upstream"]), upstream_fingerprint=str(data["upstream_fingerprint"]))
    except KeyError as exc:
        raise AsrModelError(f"{path}: key {exc} is missing; the model dir is damaged. Fix: rerun asr_train "
                            "(a finished run only exports again)") from None
    except ConfigError as exc:
        raise AsrModelError(str(exc)) from None


def load_asr_model(model_dir: PathLike) -> Tuple[AsrModel, Tokenizer, AsrModelInfo]:
    """Load an ASR model dir: the model (eval mode, CPU), its tokenizer and the recorded info."""
    from ..models.checkpoints import read_safetensors

    model_dir = Path(model_dir)
    info = read_asr_model_info(model_dir)
    tokenizer = load_tokenizer(model_dir)
    if tokenizer.vocab_size != info.vocab_size:
        raise AsrModelError(f"{model_dir / TOKENS_FILE}: {tokenizer.vocab_size} tokens, but the model was trained "
                            f"with {info.vocab_size}; the model dir is damaged. Fix: rerun asr_train to export it "
                            "again")
    model = AsrModel(info.num_hidden_states, info.hidden_size, info.vocab_size, info.featurizer, info.downstream)
    weights_path = model_dir / WEIGHTS_FILE
    if not weights_path.is_file():
        raise AsrModelError(f"{weights_path}: not found; the model dir is incomplete. Fix: rerun asr_train")
    try:
        model.load_state_dict(read_safetensors(weights_path), strict=True)
    except RuntimeError as exc:
        raise AsrModelError(f"{weights_path}: weights do not match {CONFIG_FILE} "
                            f"({' '.join(str(exc).split())[:300]})") from None
    return model.eval(), tokenizer, info
