"""The trainable part of a probe (featurizer + task head) and its model directory.

Model directory ``<exp>/probe_model/`` (written whole or not at all)::

    config.yaml         format, task, featurizer and head configs, sizes, upstream path and fingerprint
    model.safetensors   featurizer + head weights
    labels.txt          ``<slot> <label>`` per line in index order (PR: the phone inventory, blank first)
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import yaml
from torch import nn

from ..config import ConfigError, from_dict, to_dict
from ..data.tables import replace_dir_atomically
from ..downstream.featurizer import Featurizer, FeaturizerConfig
from ..downstream.probe_heads import LinearCtc, ProbeHeadConfig, UtteranceClassifier
from ..models.model_dir import read_format_config
from .tasks import LabelSet, TaskSpec, task_spec

PathLike = Union[str, os.PathLike]
PROBE_FORMAT, PROBE_FORMAT_VERSION = "speechdistill-probe", 1
CONFIG_FILE, WEIGHTS_FILE, LABELS_FILE = "config.yaml", "model.safetensors", "labels.txt"
MODEL_DIR = "probe_model"


class ProbeModelError(ValueError):
    """A probe model directory that is missing, incomplete or inconsistent."""


class ProbeModel(nn.Module):
    """Featurizer over ``num_hidden_states`` states of size ``hidden_size``, then the task's head."""

    def __init__(self, spec: TaskSpec, labels: LabelSet, num_hidden_states: int, hidden_size: int,
                 featurizer: Optional[FeaturizerConfig] = None, head: Optional[ProbeHeadConfig] = None) -> None:
        super().__init__()
        self.spec, self.labels = spec, labels
        self.num_hidden_states, self.hidden_size = num_hidden_states, hidden_size
        self.featurizer = Featurizer(num_hidden_states, featurizer)
        if spec.kind == "ctc":
            self.head: nn.Module = LinearCtc(hidden_size, labels.sizes[0], head)
        else:
            self.head = UtteranceClassifier(hidden_size, labels.sizes, head)

    @property
    def selected_layers(self) -> List[int]:
        return list(self.featurizer.selected_layers)

    def forward(self, hidden_states: Sequence[Optional[torch.Tensor]], lengths: torch.Tensor):
        """hidden_states: ``num_hidden_states`` entries ``[B, N, D]``; lengths ``[B]`` frames. Returns
        (log-probabilities ``[B, N, V]``, lengths ``[B]``) for ``ctc`` tasks, logits ``[B, C]`` otherwise."""
        features, lengths = self.featurizer(hidden_states, lengths)
        return self.head(features, lengths)

    def predict(self, output) -> List[str]:
        """Predictions as text, one per utterance: the space-joined labels of every slot, or the phones of
        the greedy CTC path."""
        if self.spec.kind == "ctc":
            from ..downstream.ctc_decode import greedy_decode

            log_probs, lengths = output
            inventory = self.labels.slots[0]
            return [" ".join(inventory[i] for i in ids) for ids in greedy_decode(log_probs, lengths)]
        best = [logits.argmax(dim=-1).tolist() for logits in self.head.split(output)]
        return [" ".join(self.labels.slots[s][best[s][row]] for s in range(len(best)))
                for row in range(output.shape[0])]


def save_probe_model(model: ProbeModel, out_dir: PathLike, *, upstream: str, upstream_fingerprint: str) -> Path:
    """Write the model dir (see the module docstring) atomically; returns its path."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    document: Dict[str, Any] = {
        "format": PROBE_FORMAT, "format_version": PROBE_FORMAT_VERSION, "task": model.spec.name,
        "num_hidden_states": model.num_hidden_states, "hidden_size": model.hidden_size,
        "featurizer": to_dict(model.featurizer.config), "head": to_dict(model.head.config),
        "upstream": str(Path(upstream).resolve()), "upstream_fingerprint": upstream_fingerprint,
    }

    def write(staging: Path) -> None:
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(staging / WEIGHTS_FILE), metadata={"format": PROBE_FORMAT})
        (staging / LABELS_FILE).write_text(model.labels.to_lines(model.spec), encoding="utf-8")
        (staging / CONFIG_FILE).write_text(yaml.safe_dump(document, sort_keys=False, default_flow_style=None),
                                           encoding="utf-8")

    replace_dir_atomically(out, write)
    return out


def load_probe_model(model_dir: PathLike) -> Tuple[ProbeModel, Dict[str, Any]]:
    """The model of a probe model dir (eval mode, CPU) and its recorded config."""
    from ..models.checkpoints import read_safetensors

    model_dir = Path(model_dir)
    path = model_dir / CONFIG_FILE
    if not path.is_file():
        raise ProbeModelError(f"{path}: not found; {model_dir} is not a probe model dir. Fix: point to "
                              f"<probe exp>/{MODEL_DIR}, written at the end of probe_train")
    info = read_format_config(path, PROBE_FORMAT, PROBE_FORMAT_VERSION, ProbeModelError)
    try:
        spec = task_spec(str(info["task"]))
        labels_path = model_dir / LABELS_FILE
        labels = LabelSet.from_lines(spec, labels_path.read_text(encoding="utf-8"), str(labels_path))
        model = ProbeModel(spec, labels, int(info["num_hidden_states"]), int(info["hidden_size"]),
                           from_dict(FeaturizerConfig, info["featurizer"], where=f"{path}: featurizer"),
                           from_dict(ProbeHeadConfig, info["head"], where=f"{path}: head"))
    except (KeyError, OSError) as exc:
        raise ProbeModelError(f"{model_dir}: {exc} is missing; the model dir is damaged. Fix: rerun probe_train "
                              "(a finished run only exports again)") from None
    except ConfigError as exc:
        raise ProbeModelError(str(exc)) from None
    try:
        model.load_state_dict(read_safetensors(model_dir / WEIGHTS_FILE), strict=True)
    except (RuntimeError, OSError, FileNotFoundError) as exc:
        raise ProbeModelError(f"{model_dir / WEIGHTS_FILE}: weights missing or not matching {CONFIG_FILE} "
                              f"({' '.join(str(exc).split())[:300]}). Fix: rerun probe_train") from None
    return model.eval(), info
