"""transformers' HubertModel / WavLMModel holding our encoder's weights: the peer the teacher
forward is measured against. transformers is a test dependency, so everything here is optional:
:func:`transformers_version` says whether it can run at all.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from ..models.encoder import Encoder
from ..models.export_hf import hf_config, hf_state_dict


def transformers_version() -> Optional[str]:
    """The installed transformers version, or None when it cannot be imported."""
    try:
        import transformers
    except Exception:  # noqa: BLE001 - any import failure means "no peer to compare with"
        return None
    return str(transformers.__version__)


def build_peer(encoder: Encoder) -> torch.nn.Module:
    """An HF model with ``encoder``'s structure and weights, in eval mode on the encoder's device.

    Uses transformers' default attention implementation (what a user of the library gets).
    """
    from transformers import AutoConfig, AutoModel

    config_dict = hf_config(encoder.config)
    model_type = config_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **config_dict)
    model = AutoModel.from_config(config)
    missing, unexpected = model.load_state_dict(hf_state_dict(encoder), strict=False)
    # Only buffers transformers creates itself may be absent from our state dict.
    missing = [k for k in missing if not k.endswith(("num_batches_tracked", "masked_spec_embed"))]
    if missing or unexpected:
        raise RuntimeError(f"transformers model does not take our weights: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    device = next(encoder.parameters()).device
    return model.to(device).eval()


def attention_implementation(model: torch.nn.Module) -> str:
    return str(getattr(model.config, "_attn_implementation", "unknown"))


def peer_forward(model: torch.nn.Module, wavs: torch.Tensor) -> Callable[[], Any]:
    """No-argument callable: one inference forward returning every hidden state, like ours."""
    def run() -> Any:
        with torch.inference_mode():
            return model(wavs, output_hidden_states=True)
    return run
