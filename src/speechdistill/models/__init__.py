"""One wav2vec2-family encoder for teachers and students, checkpoint import/export, student
presets, target-mapping heads, hard-concrete pruning and profiling.

Only torch, numpy, safetensors and pyyaml are needed here (transformers is never imported).
"""
from .checkpoints import (ImportReport, ModelFormatError, count_parameters, detect_format, import_model,
                          load_heads, load_model, save_model)
from .config import ARCHITECTURES, EncoderConfig, architecture
from .encoder import Encoder, EncoderOutput
from .grad import grad_multiply, layer_grad_split
from .heads import HeadsConfig, LayerProjections, PredictionHeads, build_heads
from .masking import compute_mask_indices, span_mask
from .pruning import expected_num_params, expected_sparsity, gate_parameters, prune
from .students import (InitReport, Student, StudentPreset, TeacherInit, build_student, init_from_teacher,
                       list_presets, load_preset)

__all__ = [
    "ARCHITECTURES", "Encoder", "EncoderConfig", "EncoderOutput", "HeadsConfig", "ImportReport", "InitReport",
    "LayerProjections", "ModelFormatError", "PredictionHeads", "Student", "StudentPreset", "TeacherInit",
    "architecture", "build_heads", "build_student", "compute_mask_indices", "count_parameters", "detect_format",
    "expected_num_params", "expected_sparsity", "gate_parameters", "grad_multiply", "import_model",
    "init_from_teacher", "layer_grad_split", "list_presets", "load_heads", "load_model", "load_preset", "prune",
    "save_model", "span_mask",
]
