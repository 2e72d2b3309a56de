"""Export an encoder (any student or teacher) to ONNX and quantize it to int8 (running it: :mod:`.onnx_runtime`).

The graph has two inputs, ``wavs`` ``[batch, samples]`` float32 (16 kHz, zero-padded on the right) and
``lengths`` ``[batch]`` int64 (valid samples), with batch and samples dynamic, and these outputs:
``hidden_<i>`` ``[batch, frames, D]`` for each requested hidden state i (HF indexing, as
``EncoderOutput.hidden_states``), ``frame_lengths`` ``[batch]`` valid frames (int64), and with heads
``head_<t>`` ``[batch, frames, D_out]`` for each target layer t of the model's heads.

The exported function is our model's plain PyTorch path (``kernels.use("reference")``: no CPU kernel
reaches the exporter), captured by ``torch.export`` with dynamic batch and time, so that padding is
masked inside the graph exactly as in our forward: an utterance gives the same hidden states alone
or in any padded batch. One part is written differently for the graph: the CNN runs time-major as
matrix products over strided windows (:class:`WindowedFeatureExtractor`, the same function), which
onnxruntime runs as GEMMs and its dynamic quantizer turns into integer GEMMs (a ``Conv`` would become
``ConvInteger``, which runs slower than float32 on CPUs).

int8: onnxruntime's dynamic quantization of every ``MatMul``/``Gemm`` (weights int8 per output channel in 7 bits,
activations uint8 with a scale computed per call). Full 8-bit weights lose accuracy on CPUs without VNNI (AVX2:
the uint8 x int8 pair sums saturate at 16 bits), most in deep students: ARMHuBERT-S's last layers fall to a cosine
of 0.987, against 0.991 with 7 bits at the same speed. Its cost in accuracy is measured as the cosine
similarity of each output to the float32 model's, per frame (:func:`.onnx_runtime.check_export`).
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels
from ..data.tables import atomic_output, writable_output_file
from ..kernels.conv import folds_group_norm
from .feature_extractor import ConvFeatureExtractor, conv_output_length, masked_group_norm, valid_frames
from .encoder import Encoder
from .heads import LayerProjections, PredictionHeads

PathLike = Union[str, os.PathLike]
SAMPLE_RATE = 16000
INSTALL_HINT = "install the ONNX extra: pip install 'speechdistill[onnx]' (onnx, onnxscript, onnxruntime)"


class OnnxExportError(ValueError):
    """A request the exporter cannot satisfy (a layer that does not exist, heads that are missing)."""


def require(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise OnnxExportError(f"the Python package '{module}' is missing; {INSTALL_HINT}") from None


# ---------------------------------------------------------------------------------------------
# The graph form of the model
# ---------------------------------------------------------------------------------------------

class WindowedFeatureExtractor(nn.Module):
    """The function of a :class:`ConvFeatureExtractor`, time-major, each convolution one matrix product.

    A layer with kernel k and stride s reads, for output frame n, input frames s*n ... s*n+k-1: its windows
    ``[B, N, k * C_in]`` (``unfold``) times the weight laid out ``[k * C_in, C_out]`` (kept in that layout,
    so the graph holds it as a constant a quantizer can convert). Norms, GELU, gates, the zeroed padding
    and the output scale are those of :class:`ConvBlock`, GroupNorm statistics over each utterance's valid
    frames in float32. A GroupNorm after a narrow first layer (``kernels.conv.folds_group_norm``: the
    waveform's 10 samples per window) is folded into per-utterance weights, as the CPU kernel does: the mean
    and variance of each output channel follow from the mean and covariance of the input windows, which
    spares three passes over the largest activation of the model.
    """

    def __init__(self, extractor: ConvFeatureExtractor) -> None:
        super().__init__()
        self.extractor = extractor
        self.matrices = nn.ParameterList(
            nn.Parameter(block.conv.weight.detach().permute(2, 1, 0).reshape(-1, block.out_channels).clone(),
                         requires_grad=False) for block in extractor.blocks)

    def output_lengths(self, lengths):
        return self.extractor.output_lengths(lengths)

    @staticmethod
    def _windows(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
        """[B, T, C] -> [B, N, kernel * C] with N = (T - kernel) // stride + 1, tap-major."""
        if kernel == 1 and stride == 1:
            return x
        return x.unfold(1, kernel, stride).transpose(2, 3).flatten(2)  # [B, N, C, k] -> [B, N, k * C]

    @staticmethod
    def _folded_group_norm(windows: torch.Tensor, matrix: torch.Tensor, bias: Optional[torch.Tensor],
                           norm: nn.GroupNorm, frames: torch.Tensor) -> torch.Tensor:
        """GroupNorm(windows @ matrix + bias) with per-utterance weights from window moments.

        With m the mean and S the (biased) covariance of an utterance's windows over its valid frames,
        channel c has mean w_c . m + b_c and variance w_c^T S w_c, so the normalised output is
        windows @ (w * a) + (b - mean) * a + beta, a = gamma / sqrt(var + eps). windows: [B, N, K].
        """
        x = windows.float()
        valid = valid_frames(frames, x.shape[1]).unsqueeze(-1)  # [B, N, 1]
        count = frames.clamp_min(1).to(torch.float32)[:, None, None]
        mean = (x * valid).sum(1, keepdim=True) / count  # [B, 1, K]
        centered = (x - mean) * valid
        covariance = torch.matmul(centered.transpose(1, 2), centered) / count  # [B, K, K]
        w = matrix.float()  # [K, C]
        channel_mean = torch.matmul(mean, w)  # [B, 1, C]
        if bias is not None:
            channel_mean = channel_mean + bias.float()
        variance = (torch.matmul(covariance, w) * w).sum(1, keepdim=True)  # [B, 1, C]
        scale = torch.rsqrt(variance + norm.eps) * norm.weight.float()
        shift = norm.bias.float() - channel_mean * scale
        if bias is not None:
            shift = shift + bias.float() * scale
        return torch.matmul(x, w.unsqueeze(0) * scale) + shift  # [B, N, K] @ [B, K, C]

    def _block(self, index: int, x: torch.Tensor, frames: torch.Tensor, mask: Optional[torch.Tensor]
               ) -> torch.Tensor:
        """Layer ``index`` on time-major x [B, T, C_in] -> [B, N, C_out]; ``frames`` [B]: its valid output frames."""
        block = self.extractor.blocks[index]
        matrix = self.matrices[index]
        windows = self._windows(x, block.kernel, block.stride)
        if folds_group_norm(block):
            y = self._folded_group_norm(windows, matrix, block.conv.bias, block.norm, frames)
        else:
            y = torch.matmul(windows, matrix)
            if block.conv.bias is not None:
                y = y + block.conv.bias
            if isinstance(block.norm, nn.GroupNorm):
                y = masked_group_norm(y.transpose(1, 2), frames, block.norm).transpose(1, 2)
            elif isinstance(block.norm, nn.LayerNorm):
                y = block.layer_norm(y, mask)
        y = F.gelu(y)
        if mask is not None:
            y = y * mask.to(y.dtype)
        return y

    def forward(self, wavs: torch.Tensor, lengths: torch.Tensor, *,
                host_lengths: Optional[Sequence[int]] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """wavs [B, T], lengths [B] samples -> (features [B, N, C] with padded frames 0, the last layer's gate
        mask or None), as :meth:`ConvFeatureExtractor.forward` (``host_lengths`` is not used)."""
        blocks = self.extractor.blocks
        masks = [block.gate() if block.gate is not None else None for block in blocks]
        x = wavs.unsqueeze(-1)
        frames = lengths
        for index, (block, mask) in enumerate(zip(blocks, masks)):
            frames = conv_output_length(frames, block.kernel, block.stride).clamp_min(1)
            x = self._block(index, x, frames, mask)
        x = x * valid_frames(frames, x.shape[1]).unsqueeze(-1).to(x.dtype)
        if self.extractor.output_scale is not None:
            x = x * self.extractor.output_scale.to(x.dtype)
        return x, masks[-1]


def _check_layers(encoder: Encoder, layers: Optional[Sequence[int]]) -> List[int]:
    count = encoder.config.num_layers + 1
    if layers is None:
        return list(range(count))
    chosen = [int(i) for i in layers]
    wrong = [i for i in chosen if not 0 <= i < count]
    if wrong:
        raise OnnxExportError(f"--layers {wrong}: this model has hidden states 0..{count - 1} "
                              f"(0 = transformer input, i = output of layer i)")
    if len(set(chosen)) != len(chosen):
        raise OnnxExportError(f"--layers {chosen}: a layer is listed twice")
    return chosen


def head_targets(heads: nn.Module) -> List[int]:
    """Teacher layers the heads predict, one output ``head_<t>`` each."""
    return [int(t) for t in heads.config.target_layers]


def output_names(layers: Sequence[int], heads: Optional[nn.Module]) -> List[str]:
    """Graph output names: ``hidden_<i>`` per layer, ``frame_lengths``, ``head_<t>`` per head target."""
    names = [f"hidden_{i}" for i in layers] + ["frame_lengths"]
    return names + ([f"head_{t}" for t in head_targets(heads)] if heads is not None else [])


def model_outputs(encoder: Encoder, heads: Optional[nn.Module], layers: Sequence[int], wavs: torch.Tensor,
                  lengths: torch.Tensor) -> List[torch.Tensor]:
    """The values of :func:`output_names`: hidden states [B, N, D] of ``layers``, frame lengths [B], and the
    heads' predictions [B, N, D_out] (one per target layer)."""
    needed = set(layers) | (set(heads.config.source_layers) if heads is not None else set())
    out = encoder(wavs, lengths, output_layers=needed)
    values = [out.hidden_states[i] for i in layers] + [out.lengths]
    if isinstance(heads, PredictionHeads):
        values += list(heads.from_hidden_states(out.hidden_states).unbind(1))  # [B, K, N, D] -> K x [B, N, D]
    elif isinstance(heads, LayerProjections):
        values += heads(out.hidden_states)
    return values


class GraphEncoder(nn.Module):
    """What is exported: ``(wavs [B, T], lengths [B]) -> (hidden_<i>..., frame_lengths [B], head_<t>...)``.

    A deep copy of the encoder (the caller's model is not changed) whose CNN is the
    :class:`WindowedFeatureExtractor` form, optionally followed by the heads.
    """

    def __init__(self, encoder: Encoder, layers: Sequence[int], heads: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.encoder = copy.deepcopy(encoder).eval().requires_grad_(False)
        self.encoder.feature_extractor = WindowedFeatureExtractor(self.encoder.feature_extractor)
        self.layers = list(layers)
        self.heads = copy.deepcopy(heads).eval().requires_grad_(False) if heads is not None else None

    def forward(self, wavs: torch.Tensor, lengths: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return tuple(model_outputs(self.encoder, self.heads, self.layers, wavs, lengths))


# ---------------------------------------------------------------------------------------------
# Export and quantization
# ---------------------------------------------------------------------------------------------

@dataclass
class OnnxExport:
    """Where an export went and what its graph computes."""

    path: Path
    outputs: List[str]
    layers: List[int]
    int8: bool = False
    heads: List[int] = field(default_factory=list)
    min_samples: int = 400


def example_inputs(encoder: Encoder) -> Tuple[torch.Tensor, torch.Tensor]:
    """A padded batch of two (1 s and 0.75 s) to trace with: padding exercised, sizes not 0 or 1."""
    generator = torch.Generator().manual_seed(0)
    wavs = 0.1 * torch.randn(2, SAMPLE_RATE, generator=generator)
    lengths = torch.tensor([SAMPLE_RATE, 3 * SAMPLE_RATE // 4])
    wavs[1, lengths[1]:] = 0.0
    return wavs, lengths


def _name_dynamic_axes(model, outputs: Sequence[str]) -> None:
    """Name the dynamic axes ``batch``, ``samples`` and ``frames`` (torch.export leaves symbol names)."""
    def dims(value):
        return value.type.tensor_type.shape.dim

    graph = model.graph
    inputs = {value.name: value for value in graph.input}
    renamed = {}
    for name, axes in (("wavs", ("batch", "samples")), ("lengths", ("batch",))):
        for dim, axis in zip(dims(inputs[name]), axes):
            if dim.dim_param:
                renamed[dim.dim_param] = axis
    for value in graph.output:
        shape = dims(value)
        if len(shape) == 3 and shape[1].dim_param and shape[1].dim_param not in renamed:
            renamed[shape[1].dim_param] = "frames"
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        for dim in dims(value):
            if dim.dim_param in renamed:
                dim.dim_param = renamed[dim.dim_param]


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter's and optimizer's step-by-step reports go to stderr (stdout belongs to the caller, who
    may print JSON there) and only their warnings and errors are logged."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")  # the exporter's own deprecation and naming notices
        for logger in loggers:  # (torch.onnx also names each optional torchvision operator it did not find)
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def export_onnx(encoder: Encoder, out: PathLike, *, layers: Optional[Sequence[int]] = None,
                heads: Optional[nn.Module] = None, int8: bool = False, opset: Optional[int] = None) -> OnnxExport:
    """Write ``out`` (an ONNX file): float32, or with ``int8`` the dynamically quantized graph.

    Args:
        encoder: any :class:`Encoder` (student or teacher); it is not changed.
        layers: hidden-state indices to output (None: all, 0..L).
        heads: the model's target-mapping heads, to output their predictions too (None: none).
        int8: quantize MatMul/Gemm weights to int8 (:func:`quantize_int8`).
        opset: ONNX opset (None: the exporter's default).
    """
    require("onnx")
    require("onnxscript")
    if int8:
        require("onnxruntime")  # (its quantizer: fail before the export, not after it)
    out = writable_output_file(out, "model.onnx")
    chosen = _check_layers(encoder, layers)
    graph = GraphEncoder(encoder, chosen, heads)
    names = output_names(chosen, heads)
    wavs, lengths = example_inputs(encoder)
    dynamic = torch.export.Dim.DYNAMIC
    with kernels.use("reference"), torch.no_grad(), _quiet_exporter():
        program = torch.onnx.export(graph, (wavs, lengths), dynamo=True, input_names=["wavs", "lengths"],
                                    output_names=names, dynamic_shapes=({0: dynamic, 1: dynamic}, {0: dynamic}),
                                    opset_version=opset, optimize=True, verbose=False)
    model = program.model_proto
    _name_dynamic_axes(model, names)
    heads_out = head_targets(heads) if heads is not None else []
    import onnx

    if not int8:
        with atomic_output(out) as staged:
            onnx.save_model(model, str(staged))
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=str(out.parent)) as tmp:
            fp32 = Path(tmp) / "fp32.onnx"  # (quantize_dynamic reads the graph from a file)
            onnx.save_model(model, str(fp32))
            quantize_int8(fp32, out)
    return OnnxExport(path=out, outputs=names, layers=chosen, int8=int8, heads=heads_out,
                      min_samples=encoder.config.receptive_field)


# Products with fewer inputs per output stay float32: quantizing them saves next to nothing, and their
# input (the waveform samples of the first CNN layer) would lose most of its dynamic range.
MIN_QUANTIZED_FEATURES = 64


def small_products(model) -> List[str]:
    """Names of MatMul/Gemm nodes whose constant weight has fewer than ``MIN_QUANTIZED_FEATURES`` rows."""
    from onnx import numpy_helper

    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    for node in model.graph.node:  # constants written as Constant nodes
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    shapes[node.output[0]] = tuple(numpy_helper.to_array(attribute.t).shape)
    names = []
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 and node.input[1] in shapes:
            shape = shapes[node.input[1]]
            rows = shape[-1] if node.op_type == "Gemm" and any(
                a.name == "transB" and a.i for a in node.attribute) else (shape[-2] if len(shape) >= 2 else 0)
            if rows < MIN_QUANTIZED_FEATURES:
                names.append(node.name)
    return names


def quantize_int8(fp32_path: PathLike, out: PathLike) -> Path:
    """Dynamic int8 quantization of ``fp32_path``'s MatMul/Gemm nodes with a constant weight (int8 per
    output channel, in 7 bits: ``reduce_range``, see the module docstring; activations uint8 with a range
    computed per call) into ``out`` (written atomically). Products with fewer than ``MIN_QUANTIZED_FEATURES``
    input features stay float32."""
    require("onnxruntime")
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quant_logger = logging.getLogger()  # (its advice to pre-process, on the root logger, concerns static quantization)
    level = quant_logger.level
    quant_logger.setLevel(logging.ERROR)
    try:
        excluded = small_products(onnx.load(str(fp32_path), load_external_data=False))
        with atomic_output(out) as staged:
            quantize_dynamic(str(fp32_path), str(staged), op_types_to_quantize=["MatMul", "Gemm"], per_channel=True,
                             weight_type=QuantType.QInt8, reduce_range=True, nodes_to_exclude=excluded,
                             extra_options={"MatMulConstBOnly": True})
    finally:
        quant_logger.setLevel(level)
    return out
