"""The reference point of the benchmark: a DistilHuBERT step done the way the s3prl distiller does it.

s3prl's ``pretrain/distiller`` (anchors.md §2) trains DistilHuBERT with

* a fairseq HuBERT teacher run online every step, in fp32 (autocast explicitly off), under
  ``no_grad``, with fairseq's eager attention (separate q/k/v projections, scores materialised
  as ``[B * H, N, N]``, float32 softmax) on time-first ``[N, B, D]`` activations;
* a CNN that normalises over the padded waveform (fairseq's GroupNorm sees the zero padding);
* batches of a fixed number of utterances, taken in length-sorted order and zero-padded to the
  longest one;
* L1 and ``-log sigmoid(cos)`` averaged over every frame, padded frames included;
* ``loss.backward()``, gradient-norm clipping at 5, AdamW.

This module is an independent, deliberately plain eager re-implementation of that recipe (fp32
everywhere, no fused kernels, no SDPA). It takes its weights from one of our :class:`Encoder`
/ :class:`PredictionHeads` so that both sides run the same function; on an unpadded input its
teacher gives our teacher's hidden states (a test checks it), which also cross-checks our
encoder against code written separately.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..models.config import EncoderConfig
from ..models.encoder import Encoder
from ..models.grad import grad_multiply
from ..models.heads import PredictionHeads


class EagerConvFeatures(nn.Module):
    """Channels-first CNN: Conv1d -> (GroupNorm on layer 0) -> GELU; [B, T] -> [B, C, N]."""

    def __init__(self, conv_layers: Sequence[Sequence[int]]) -> None:
        super().__init__()
        self.convs = nn.ModuleList()
        in_channels = 1
        for channels, kernel, stride in conv_layers:
            self.convs.append(nn.Conv1d(in_channels, int(channels), int(kernel), stride=int(stride), bias=False))
            in_channels = int(channels)
        self.group_norm = nn.GroupNorm(in_channels, int(conv_layers[0][0]), affine=True)

    def forward(self, wavs: torch.Tensor) -> torch.Tensor:
        x = wavs.unsqueeze(1)
        for index, conv in enumerate(self.convs):
            x = conv(x)
            if index == 0:
                x = self.group_norm(x)
            x = F.gelu(x)
        return x


class EagerSelfAttention(nn.Module):
    """fairseq MultiheadAttention on time-first input [N, B, D], scores materialised per head."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.scaling = self.head_dim ** -0.5
        self.dropout = dropout
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
        frames, batch, dim = x.shape
        q = self.q_proj(x) * self.scaling
        k = self.k_proj(x)
        v = self.v_proj(x)
        # [N, B, D] -> [B * H, N, d]
        q = q.contiguous().view(frames, batch * self.heads, self.head_dim).transpose(0, 1)
        k = k.contiguous().view(frames, batch * self.heads, self.head_dim).transpose(0, 1)
        v = v.contiguous().view(frames, batch * self.heads, self.head_dim).transpose(0, 1)
        scores = torch.bmm(q, k.transpose(1, 2))
        if key_padding_mask is not None:
            scores = scores.view(batch, self.heads, frames, frames)
            scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
            scores = scores.view(batch * self.heads, frames, frames)
        probs = F.softmax(scores.float(), dim=-1).type_as(scores)
        probs = F.dropout(probs, p=self.dropout, training=self.training)
        out = torch.bmm(probs, v)
        out = out.transpose(0, 1).contiguous().view(frames, batch, dim)
        return self.out_proj(out)


class EagerLayer(nn.Module):
    """Post-LN transformer layer (Base models): x = LN(x + attn(x)); x = LN(x + FFN(x))."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float, attention_dropout: float,
                 activation_dropout: float, eps: float) -> None:
        super().__init__()
        self.attention = EagerSelfAttention(dim, heads, attention_dropout)
        self.attention_norm = nn.LayerNorm(dim, eps=eps)
        self.fc1 = nn.Linear(dim, ffn)
        self.fc2 = nn.Linear(ffn, dim)
        self.final_norm = nn.LayerNorm(dim, eps=eps)
        self.dropout = dropout
        self.activation_dropout = activation_dropout

    def forward(self, x: torch.Tensor, key_padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
        residual = x
        x = F.dropout(self.attention(x, key_padding_mask), self.dropout, self.training)
        x = self.attention_norm(residual + x)
        residual = x
        x = F.dropout(F.gelu(self.fc1(x)), self.activation_dropout, self.training)
        x = F.dropout(self.fc2(x), self.dropout, self.training)
        return self.final_norm(residual + x)


class EagerEncoder(nn.Module):
    """HuBERT-Base-family encoder (post-LN, GroupNorm CNN) in fairseq's eager style.

    ``forward(wavs [B, T], lengths [B] samples)`` returns the hidden states (list of L + 1
    tensors ``[B, N, D]``, index 0 = transformer input) and the padding mask ``[B, N]`` (True =
    padded frame).
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        if config.layer_norm_first or config.relative_position_bias or config.conv_norm != "group" \
                or config.conv_bias or config.unique_layers is not None or any(config.attention_reuse):
            raise ValueError("the eager baseline models the HuBERT Base / DistilHuBERT structure only "
                             "(post-LN, GroupNorm CNN without bias, no sharing or reuse)")
        self.config = config
        self.features = EagerConvFeatures(config.conv_layers)
        channels = config.conv_channels
        self.feature_norm = nn.LayerNorm(channels, eps=config.layer_norm_eps) if config.feature_layer_norm else None
        self.projection = nn.Linear(channels, config.hidden_size)
        self.pos_conv = nn.Conv1d(config.hidden_size, config.hidden_size, config.pos_conv_kernel,
                                  padding=config.pos_conv_kernel // 2, groups=config.pos_conv_groups)
        self.pos_conv = nn.utils.parametrizations.weight_norm(self.pos_conv, name="weight", dim=2)
        self.encoder_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(
            EagerLayer(config.hidden_size, config.num_heads, config.ffn_size, config.dropout,
                       config.attention_dropout, config.activation_dropout, config.layer_norm_eps)
            for _ in range(config.num_layers))

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        for _, kernel, stride in self.config.conv_layers:
            lengths = torch.div(lengths - int(kernel), int(stride), rounding_mode="floor") + 1
        return lengths

    def forward(self, wavs: torch.Tensor, lengths: torch.Tensor) -> Tuple[List[torch.Tensor], torch.Tensor]:
        features = self.features(wavs)  # [B, C, N]
        if self.config.feature_grad_mult != 1.0 and features.requires_grad:
            features = grad_multiply(features, self.config.feature_grad_mult)
        x = features.transpose(1, 2)  # [B, N, C]
        if self.feature_norm is not None:
            x = self.feature_norm(x)
        x = self.projection(x)
        frames = x.shape[1]
        padding = torch.arange(frames, device=x.device)[None, :] >= self.frame_lengths(lengths)[:, None]
        x = x.masked_fill(padding[..., None], 0.0)
        position = self.pos_conv(x.transpose(1, 2))
        if self.config.pos_conv_kernel % 2 == 0:
            position = position[:, :, :-1]
        x = x + F.gelu(position).transpose(1, 2)
        x = F.dropout(self.encoder_norm(x), self.config.dropout, self.training)
        x = x.transpose(0, 1)  # fairseq layers run time-first: [N, B, D]
        hidden = [x.transpose(0, 1)]
        for layer in self.layers:
            x = layer(x, padding)
            hidden.append(x.transpose(0, 1))
        return hidden, padding

    @classmethod
    def from_encoder(cls, encoder: Encoder) -> "EagerEncoder":
        """A copy of ``encoder``'s weights in this implementation (same function on unpadded input)."""
        eager = cls(encoder.config)
        source = {k: v.detach() for k, v in encoder.state_dict().items()}
        with torch.no_grad():
            for index, conv in enumerate(eager.features.convs):
                conv.weight.copy_(source[f"feature_extractor.blocks.{index}.conv.weight"])
            eager.features.group_norm.weight.copy_(source["feature_extractor.blocks.0.norm.weight"])
            eager.features.group_norm.bias.copy_(source["feature_extractor.blocks.0.norm.bias"])
            if eager.feature_norm is not None:
                eager.feature_norm.weight.copy_(source["feature_norm.weight"])
                eager.feature_norm.bias.copy_(source["feature_norm.bias"])
            eager.projection.weight.copy_(source["feature_projection.weight"])
            eager.projection.bias.copy_(source["feature_projection.bias"])
            # weight_norm over dim 2: g has shape [1, 1, k], the norm runs over dims 0 and 1.
            eager.pos_conv.parametrizations.weight.original0.copy_(source["pos_conv.weight_g"])
            eager.pos_conv.parametrizations.weight.original1.copy_(source["pos_conv.weight_v"])
            eager.pos_conv.bias.copy_(source["pos_conv.bias"])
            eager.encoder_norm.weight.copy_(source["encoder_norm.weight"])
            eager.encoder_norm.bias.copy_(source["encoder_norm.bias"])
            for index, layer in enumerate(eager.layers):
                prefix = f"layers.{index}."
                for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
                    getattr(layer.attention, name).weight.copy_(source[f"{prefix}attention.{name}.weight"])
                    getattr(layer.attention, name).bias.copy_(source[f"{prefix}attention.{name}.bias"])
                for ours, theirs in (("attention_norm", "attention_norm"), ("final_norm", "final_norm"),
                                     ("fc1", "feed_forward.fc1"), ("fc2", "feed_forward.fc2")):
                    getattr(layer, ours).weight.copy_(source[f"{prefix}{theirs}.weight"])
                    getattr(layer, ours).bias.copy_(source[f"{prefix}{theirs}.bias"])
        return eager


class EagerPredictionHeads(nn.Module):
    """DistilHuBERT heads: Linear(D, K * D) -> GELU -> K separate Linear(D, D_out); [B, N, D] -> [B, K, N, D_out]."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.expand = nn.Linear(in_dim, hidden_dim * num_heads)
        self.outputs = nn.ModuleList(nn.Linear(hidden_dim, out_dim) for _ in range(num_heads))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inner = F.gelu(self.expand(x)).split(self.hidden_dim, dim=-1)
        return torch.stack([head(part) for head, part in zip(self.outputs, inner)], dim=1)

    @classmethod
    def from_heads(cls, heads: PredictionHeads) -> "EagerPredictionHeads":
        c = heads.config
        hidden = c.hidden_dim or c.in_dim
        eager = cls(c.in_dim, hidden, c.out_dim, len(c.target_layers))
        with torch.no_grad():
            eager.expand.weight.copy_(heads.expand.weight)
            eager.expand.bias.copy_(heads.expand.bias)
            for index, head in enumerate(eager.outputs):
                head.weight.copy_(heads.split.weight[index].t())
                head.bias.copy_(heads.split.bias[index])
        return eager


def fixed_count_batches(lengths: Sequence[int], batch_size: int) -> List[List[int]]:
    """s3prl's buckets: indices sorted by length (longest first), cut into groups of ``batch_size``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, found {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i))
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


class EagerDistilHubertStep:
    """One s3prl-style DistilHuBERT update: fp32 teacher forward, student forward and backward,
    clipping, AdamW (lr 2e-4, betas (0.9, 0.98), eps 1e-6, as the distiller's runner config).

    Args:
        teacher: our teacher encoder (its weights are copied).
        student: our DistilHuBERT student encoder; heads: its prediction heads (copied too).
        target_layers: teacher hidden states the heads predict (4, 8, 12).
        student_fp16: the student under fp16 autocast with a GradScaler, as the distiller does on
            a GPU (``fp16: true``); on a CPU s3prl has no mixed precision, everything is fp32.
    """

    def __init__(self, teacher: Encoder, student: Encoder, heads: PredictionHeads,
                 target_layers: Sequence[int], grad_clip: float = 5.0, student_fp16: bool = False) -> None:
        self.teacher = EagerEncoder.from_encoder(teacher).eval().requires_grad_(False)
        self.student = EagerEncoder.from_encoder(student).train()
        self.heads = EagerPredictionHeads.from_heads(heads).train()
        self.target_layers = list(target_layers)
        self.grad_clip = grad_clip
        parameters = list(self.student.parameters()) + list(self.heads.parameters())
        self.parameters = parameters
        self.optimizer = torch.optim.AdamW(parameters, lr=2e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
        self.student_fp16 = student_fp16
        self.scaler = torch.amp.GradScaler("cuda", enabled=student_fp16)

    def to(self, device: torch.device) -> "EagerDistilHubertStep":
        self.teacher.to(device)
        self.student.to(device)
        self.heads.to(device)
        return self

    def __call__(self, wavs: torch.Tensor, lengths: torch.Tensor) -> Dict[str, float]:
        """One update on a padded batch (wavs [B, T], lengths [B] samples); returns the loss terms."""
        with torch.no_grad(), torch.autocast(wavs.device.type, enabled=False):
            teacher_hidden, _ = self.teacher(wavs, lengths)
            targets = torch.stack([teacher_hidden[i] for i in self.target_layers], dim=1)  # [B, K, N, D]
        with torch.autocast(wavs.device.type, dtype=torch.float16, enabled=self.student_fp16):
            student_hidden, _ = self.student(wavs, lengths)
            predictions = self.heads(student_hidden[-1])
            frames = min(predictions.shape[2], targets.shape[2])
            predictions, targets = predictions[:, :, :frames], targets[:, :, :frames]
            l1 = F.l1_loss(predictions, targets)
            cosine = -F.logsigmoid(F.cosine_similarity(predictions, targets, dim=-1)).mean()
            loss = l1 + cosine
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.grad_clip)
        if math.isnan(float(grad_norm)):  # the distiller skips the update on a NaN norm
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self.scaler.step(self.optimizer)
        self.scaler.update()
        return {"loss": float(loss.detach()), "l1": float(l1.detach()), "cos": float(cosine.detach())}
