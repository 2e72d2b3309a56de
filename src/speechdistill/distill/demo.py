"""Demo versions of the method presets: the same method, sized to a small teacher and a short CPU run.

The presets (``egs/librispeech/distill/conf/<method>.yaml``) describe students for HuBERT Base
sized teachers (768 wide, 512-channel CNN). With the demo teacher (12 layers, so every preset's
teacher layers exist, but 128 wide with a 128-channel CNN) a preset keeps its composition
(targets, loss terms, corruption, masking, pruning, layer sharing, attention reuse) and changes:

* the student's widths, scaled to the teacher: where the preset copies weights from the teacher
  (CNN, projection, layers) the student takes the teacher's shapes; elsewhere hidden and FFN
  sizes are multiplied by teacher width / reference width (768), CNN channels by teacher CNN
  channels / 512, heads likewise (at least one, dividing the width), rounded to multiples of 8;
  the positional convolution takes the teacher's kernel (a 128-tap conv is most of a tiny
  student's cost);
* the schedule: every trainer key of the overlay (``conf/demo/distill.yaml``) replaces the
  preset's; warmups given in steps become fractions of the demo's ``max_steps``, including the
  pruning's sparsity warmup.

``write_demo_configs`` writes one derived YAML per config of the chain (``next_stage``), so that
``run.sh`` runs the derived chain exactly as it runs a preset.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..config import dump_yaml, from_dict, load_yaml, merge, to_dict
from ..data.tables import atomic_write_text
from ..models.config import EncoderConfig, architecture
from ..models.students import TeacherInit, load_preset
from .config import config_chain

REFERENCE_CONV_CHANNELS = 512  # HuBERT/wav2vec 2.0 Base CNN width, what the presets' CNNs are drawn for


def _round8(value: float) -> int:
    return max(8, int(round(value / 8.0)) * 8)


def _heads_for(width: int, wanted: int) -> int:
    """The largest head count <= ``wanted`` (at least 1) that divides ``width``."""
    for heads in range(max(1, wanted), 0, -1):
        if width % heads == 0:
            return heads
    return 1


def scaled_student_encoder(preset_name: str, overrides: Dict[str, Any], student_init: Optional[Dict[str, Any]],
                           teacher: EncoderConfig) -> Dict[str, Any]:
    """``student_encoder`` changes that size a preset's student to ``teacher`` (module docstring).

    Args:
        preset_name: student preset name or YAML path (``conf/students``).
        overrides: the method config's own ``student_encoder`` changes (kept, then scaled).
        student_init: the method config's ``student_init`` (None: the preset's).
        teacher: the demo teacher's encoder config.
    Returns:
        the new ``student_encoder`` mapping (the method's own keys plus the scaled sizes).
    """
    preset = load_preset(preset_name)
    if preset.encoder_from_teacher:  # the teacher's structure (DPHuBERT, OS-KDFT): nothing to scale
        return dict(overrides)
    init = from_dict(TeacherInit, student_init, where="student_init") if student_init is not None \
        else preset.init_from_teacher
    reference = architecture(preset.teacher_architecture)
    encoder = merge(copy.deepcopy(preset.encoder), overrides)
    width_ratio = teacher.hidden_size / reference.hidden_size
    channel_ratio = teacher.conv_channels / REFERENCE_CONV_CHANNELS
    copies_transformer = bool(init.all or init.layers or init.feature_projection or init.pos_conv)
    scaled = dict(overrides)
    if init.all or init.feature_extractor:
        conv_layers = [list(layer) for layer in teacher.conv_layers]
    else:
        conv_layers = [[_round8(channels * channel_ratio), kernel, stride]
                       for channels, kernel, stride in encoder.get("conv_layers", reference.conv_layers)]
    if copies_transformer:
        hidden, ffn, heads = teacher.hidden_size, teacher.ffn_size, teacher.num_heads
    else:
        hidden = _round8(encoder.get("hidden_size", reference.hidden_size) * width_ratio)
        ffn = _round8(encoder.get("ffn_size", reference.ffn_size) * width_ratio)
        heads = _heads_for(hidden, int(round(encoder.get("num_heads", reference.num_heads) * width_ratio)))
    if not encoder.get("feature_projection", True):  # the CNN output is the transformer input
        # the layers the preset draws at the model width (ARMHuBERT's last three) stay at it
        preset_hidden = encoder.get("hidden_size", reference.hidden_size)
        original = encoder.get("conv_layers", reference.conv_layers)
        for layer, (channels, _, _) in zip(conv_layers, original):
            if channels == preset_hidden:
                layer[0] = hidden
        conv_layers[-1][0] = hidden
    groups = math.gcd(teacher.pos_conv_groups, hidden)
    scaled.update(conv_layers=conv_layers, hidden_size=hidden, ffn_size=ffn, num_heads=heads, head_dim=None,
                  pos_conv_kernel=teacher.pos_conv_kernel, pos_conv_groups=groups)
    return scaled


def _schedule(method: Dict[str, Any], overlay: Dict[str, Any]) -> Dict[str, Any]:
    """The method config with the overlay's trainer keys; step warmups become fractions of max_steps."""
    data = copy.deepcopy(method)
    published_steps = data.get("max_steps")
    if any(k in overlay for k in ("warmup_steps", "warmup_fraction")):
        data.pop("warmup_steps", None)
        data.pop("warmup_fraction", None)
    data = merge(data, overlay)
    pruning = data.get("pruning") or {}
    if pruning.get("target_sparsity") is not None and published_steps:
        published_warmup = pruning.get("sparsity_warmup_steps", 5000)
        fraction = min(1.0, published_warmup / published_steps)
        pruning = dict(pruning, sparsity_warmup_steps=max(1, int(round(fraction * data["max_steps"]))))
        data["pruning"] = pruning
    return data


def demo_config(method_path: Path, teacher: EncoderConfig, overlay: Dict[str, Any]) -> Dict[str, Any]:
    """One method config (``conf/<method>.yaml``) as a demo config: scaled student, overlay schedule."""
    method = load_yaml(method_path)
    data = _schedule(method, overlay)
    if data.get("student") is not None and data.get("student_from") is None:
        data["student_encoder"] = scaled_student_encoder(data["student"], data.get("student_encoder") or {},
                                                         data.get("student_init"), teacher)
    return data


def write_demo_configs(method_path: Path, teacher: EncoderConfig, overlay_path: Path, out_dir: Path) -> List[Path]:
    """Write the demo config of ``method_path`` and of every ``next_stage`` after it into ``out_dir``
    (same file names); returns the paths, first the one to pass as ``--distill_config``."""
    method_path, out_dir = Path(method_path), Path(out_dir)
    chain = config_chain(method_path)
    overlay = load_yaml(overlay_path)
    written: List[Path] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for current in chain:
        data = demo_config(current, teacher, overlay)
        header = (f"# Demo version of {current} (written by speechdistill.distill.demo; edits are overwritten):\n"
                  f"# student sized to the demo teacher, schedule from {overlay_path}.\n")
        path = out_dir / current.name
        atomic_write_text(path, header + dump_yaml(to_dict(data)))
        written.append(path)
    return written
