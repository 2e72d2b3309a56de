"""The one wav2vec2-family encoder (HuBERT, wav2vec 2.0, WavLM teachers and every student).

Data flow of ``Encoder.forward`` (shapes for B utterances of at most T samples, N frames):

    wavs [B, T] --(optional per-utterance normalisation over valid samples)
      -> CNN (time-major)               conv_features [B, N, C]
      -> feature LayerNorm, projection  projected_features [B, N, D]   (dropout_input)
      -> mask embedding on mask_indices, padded frames set to 0
      -> + positional conv; post-LN models: encoder LayerNorm          hidden_states[0]
      -> layer i (i = 1..L)                                            hidden_states[i]
      -> pre-LN models: final LayerNorm applied to hidden_states[L]

Hidden-state indexing is transformers' ``output_hidden_states`` convention: index 0 is the
transformer input, index i the output of layer i. For pre-LN ("stable layer norm") models
index 0 is before any LayerNorm and the last entry is *after* the final LayerNorm (what
transformers < 5 returned there, and ``last_hidden_state`` in every version; transformers 5
puts the un-normalised last layer output in ``hidden_states[-1]`` instead).

Padding never changes valid frames: the GroupNorm statistics of the CNN use valid samples
only, padded frames are zeroed before the positional convolution and excluded as attention
keys, so an utterance gives the same hidden states alone or in any batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Collection, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .components import (Dropout, FeedForward, ParallelAdapter, PositionalConv, SelfAttention, TransformerLayer,
                         project_layer, relative_position_buckets)
from .config import EncoderConfig
from .feature_extractor import ConvFeatureExtractor, masked_layer_norm
from .grad import grad_multiply, layer_grad_split


@dataclass
class EncoderOutput:
    """What ``Encoder.forward`` returns.

    Attributes:
        hidden_states: L + 1 tensors [B, N, D] (entries not in ``output_layers`` are None).
        lengths: [B] valid frames per utterance.
        attentions: layer index (1-based, like hidden states) -> probabilities [B, H, N, N].
        conv_features: CNN output [B, N, C], before the feature LayerNorm.
        projected_features: after feature LayerNorm, projection and ``dropout_input`` [B, N, D],
            before masking and the positional convolution (DPHuBERT's "layer 0": torchaudio's feature
            projection ends in its dropout).
        projection_output: the same before ``dropout_input`` (fairseq's ``post_cnn``, STaR's "layer 0");
            the same tensor as ``projected_features`` in eval mode.
    """

    hidden_states: List[Optional[torch.Tensor]]
    lengths: torch.Tensor
    attentions: Dict[int, torch.Tensor] = field(default_factory=dict)
    conv_features: Optional[torch.Tensor] = None
    projected_features: Optional[torch.Tensor] = None
    projection_output: Optional[torch.Tensor] = None

    @property
    def padding_mask(self) -> torch.Tensor:
        """[B, N] bool, True on padded frames."""
        frames = next(h for h in self.hidden_states if h is not None).shape[1]
        return torch.arange(frames, device=self.lengths.device)[None, :] >= self.lengths[:, None]

    @property
    def last_hidden_state(self) -> torch.Tensor:
        return self.hidden_states[-1]


class Encoder(nn.Module):
    """Encoder built from an ``EncoderConfig``; see the module docstring for the data flow."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        c = config
        self.feature_extractor = ConvFeatureExtractor(c.conv_layers, norm=c.conv_norm, bias=c.conv_bias,
                                                      prunable=c.prune_conv, output_scale=c.conv_output_scale)
        channels = c.conv_channels
        self.feature_norm = nn.LayerNorm(channels, eps=c.layer_norm_eps) if c.feature_layer_norm else None
        self.feature_projection = nn.Linear(channels, c.hidden_size) if c.feature_projection else None
        self.dropout_input = Dropout(c.dropout_input)
        self.mask_embedding = nn.Parameter(torch.empty(c.hidden_size).uniform_()) if c.mask_embedding else None
        self.pos_conv = PositionalConv(c.hidden_size, c.pos_conv_kernel, c.pos_conv_groups)
        self.encoder_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = Dropout(c.dropout)
        if c.relative_position_bias:
            self.relative_position_embedding: Optional[nn.Embedding] = nn.Embedding(c.num_buckets, c.num_heads)
        else:
            self.relative_position_embedding = None
        self.layers = nn.ModuleList([self._make_layer(i) for i in range(c.num_unique_layers)])

    def _make_layer(self, unique: int) -> TransformerLayer:
        c = self.config
        attention = SelfAttention(
            c.hidden_size, c.heads_of(unique), c.attention_head_dim,
            dropout=0.0 if c.reuses_attention(unique) else c.attention_dropout,
            reuse=c.reuses_attention(unique), reuse_mode=c.reuse_mode,
            relative_bias=c.relative_position_bias, total_heads=c.num_heads,
            head_indices=c.head_indices_of(unique), prunable=c.prune_heads)
        feed_forward = FeedForward(c.hidden_size, c.ffn_of(unique), activation_dropout=c.activation_dropout,
                                   dropout=c.dropout, prunable=c.prune_ffn)
        adapter = None
        if c.adapter_dim:
            adapter = ParallelAdapter(c.hidden_size, c.adapter_dim, scale=c.adapter_scale,
                                      layer_norm=c.adapter_layer_norm, noise=c.adapter_noise,
                                      residual=c.adapter_residual == "released", init=c.adapter_init,
                                      eps=c.layer_norm_eps)
        return TransformerLayer(attention, feed_forward, c.hidden_size, layer_norm_first=c.layer_norm_first,
                                eps=c.layer_norm_eps, dropout=c.dropout, adapter=adapter)

    # ------------------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return self.config.num_layers

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Valid frames [B] for ``lengths`` [B] samples: floor((L - k) / s) + 1 layer by layer."""
        return self.feature_extractor.output_lengths(lengths)

    def _check_inputs(self, wavs: torch.Tensor, lengths: Optional[torch.Tensor],
                      host_lengths: Optional[Sequence[int]]) -> Tuple[torch.Tensor, Optional[List[int]]]:
        """(lengths [B] on the device, the same as Python ints). Without ``host_lengths`` the lengths are
        read back once here (on a GPU a synchronisation): the checks, the padding test and CPU kernels
        all use that host copy. While a graph is captured (``torch.compile``, ``torch.export``, the ONNX
        exporter) the lengths are graph inputs, not numbers: nothing is read back, the checks on them are
        skipped and padding is always masked (a mask with nothing to mask changes no valid frame)."""
        if wavs.dim() != 2:
            raise ValueError(f"wavs must be [batch, samples], got shape {list(wavs.shape)}")
        if not wavs.is_floating_point():
            raise ValueError(f"wavs must be a float tensor (16 kHz waveform), got {wavs.dtype}")
        batch, samples = wavs.shape
        if lengths is None:
            lengths = torch.full((batch,), samples, dtype=torch.long, device=wavs.device)
        lengths = torch.as_tensor(lengths, device=wavs.device).long()
        if lengths.shape != (batch,):
            raise ValueError(f"lengths must be [batch] = [{batch}], got shape {list(lengths.shape)}")
        if host_lengths is None and torch.compiler.is_compiling():
            return lengths, None
        host = list(host_lengths) if host_lengths is not None else lengths.tolist()
        if len(host) != batch:
            raise ValueError(f"host_lengths must hold {batch} lengths, got {len(host)}")
        if max(host, default=0) > samples:
            raise ValueError(f"a length ({max(host)}) exceeds the padded size of wavs ({samples})")
        shortest = self.config.receptive_field
        too_short = [index for index, length in enumerate(host) if length < shortest]
        if too_short:
            raise ValueError(f"utterance(s) {too_short} are shorter than {shortest} samples, the smallest input "
                             "that yields one frame; drop or pad them before the encoder")
        return lengths, host

    def _normalize(self, wavs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Zero mean, unit variance per utterance over its valid samples (fairseq ``normalize``)."""
        valid = torch.arange(wavs.shape[1], device=wavs.device)[None, :] < lengths[:, None]
        count = lengths.to(torch.float32)[:, None]
        x = wavs.float() * valid
        mean = x.sum(1, keepdim=True) / count
        var = ((x - mean) * valid).pow(2).sum(1, keepdim=True) / count
        return ((x - mean) * torch.rsqrt(var + 1e-5) * valid).to(wavs.dtype)

    def _feature_norm(self, features: torch.Tensor, last_mask: Optional[torch.Tensor]) -> torch.Tensor:
        norm = self.feature_norm
        if last_mask is not None:
            return masked_layer_norm(features, last_mask != 0, norm.weight, norm.bias, norm.eps)
        return F.layer_norm(features, (features.shape[-1],), norm.weight, norm.bias, norm.eps)

    def position_bias(self, frames: int, device: torch.device) -> Optional[torch.Tensor]:
        """WavLM relative position bias [H, N, N] (None for models without it)."""
        if self.relative_position_embedding is None:
            return None
        buckets = relative_position_buckets(frames, self.config.num_buckets, self.config.max_distance, device)
        return self.relative_position_embedding(buckets).permute(2, 0, 1)

    def forward(self, wavs: torch.Tensor, lengths: Optional[torch.Tensor] = None, *,
                host_lengths: Optional[Sequence[int]] = None, attention_layers: Optional[Collection[int]] = None, mask_indices: Optional[torch.Tensor] = None,
                output_layers: Optional[Collection[int]] = None,
                use_adapters: Union[bool, torch.Tensor, None] = None) -> EncoderOutput:
        """Run the encoder.

        Args:
            wavs: [B, T] float32 waveform at 16 kHz, zero-padded on the right.
            lengths: [B] valid samples per utterance (None: all T).
            host_lengths: the same lengths as Python ints, when the caller has them (a batch from
                :func:`speechdistill.data.collate.collate_batch` carries them as ``host_lengths``): the
                forward then reads nothing back from the device.
            attention_layers: layer indices (1-based, as hidden states) whose attention
                probabilities [B, H, N, N] to return; other layers use fused attention.
            mask_indices: [B, N] bool; these frames are replaced by the mask embedding after the
                feature projection (span masking as in HuBERT pretraining).
            output_layers: hidden-state indices to keep (others are None); layers after the
                largest requested index are not computed.
            use_adapters: OS-KDFT adapters on (True), off (False), or per row ([B] bool);
                None = on when the model has adapters.
        Returns:
            EncoderOutput (hidden_states, lengths in frames, attentions, conv/projected features).
        """
        c = self.config
        lengths, host_lengths = self._check_inputs(wavs, lengths, host_lengths)
        if c.normalize_waveform:
            wavs = self._normalize(wavs, lengths)
        frame_lengths = self.frame_lengths(lengths)

        if c.feature_grad_mult > 0:
            features, last_mask = self.feature_extractor(wavs, lengths, host_lengths=host_lengths)
            features = grad_multiply(features, c.feature_grad_mult)
        else:
            with torch.no_grad():
                features, last_mask = self.feature_extractor(wavs, lengths, host_lengths=host_lengths)
        batch, frames, _ = features.shape
        padding = None
        if host_lengths is None or self.frame_lengths(min(host_lengths)) < frames:  # (frames grow with samples)
            padding = torch.arange(frames, device=wavs.device)[None, :] >= frame_lengths[:, None]

        x = self._feature_norm(features, last_mask) if self.feature_norm is not None else features
        if self.feature_projection is not None:
            x = project_layer(self.feature_projection, x)
        projection_output = x
        x = self.dropout_input(x)
        projected = x
        if mask_indices is not None:
            if mask_indices.shape != (batch, frames):
                raise ValueError(f"mask_indices must be [batch, frames] = [{batch}, {frames}], "
                                 f"got {list(mask_indices.shape)}")
            if self.mask_embedding is None:
                raise ValueError("mask_indices given but this model has no mask embedding "
                                 "(set mask_embedding: true in its config)")
            x = torch.where(mask_indices[..., None], self.mask_embedding.to(x.dtype), x)
        if padding is not None:
            x = x.masked_fill(padding[..., None], 0.0)
        x = x + self.pos_conv(x)
        if not c.layer_norm_first:
            x = self.encoder_norm(x)
        x = self.dropout(x)

        keep = None if output_layers is None else {int(i) for i in output_layers}
        wanted = {int(i) for i in attention_layers} if attention_layers else set()
        last = c.num_layers if keep is None else min(max(keep, default=0), c.num_layers)
        position_bias = self.position_bias(frames, wavs.device)
        if use_adapters is None:
            use_adapters = bool(c.adapter_dim)
        split_grad = c.layer_grad_scale != "none" and torch.is_grad_enabled()

        hidden: List[Optional[torch.Tensor]] = [x if keep is None or 0 in keep else None]
        attentions: Dict[int, torch.Tensor] = {}
        previous_probs: Optional[torch.Tensor] = None
        for i in range(last):
            layer = self.layers[c.unique_index(i)]
            reuse_next = i + 1 < c.num_layers and c.reuses_attention(i + 1)
            skip = self.training and c.layerdrop > 0 and bool(torch.rand(()) < c.layerdrop)
            if not skip:
                x, probs = layer(x, padding, position_bias,
                                 previous_probs if c.reuses_attention(i) else None,
                                 need_probs=(i + 1) in wanted or reuse_next, adapter_rows=use_adapters)
                if probs is not None:
                    previous_probs = probs
                    if (i + 1) in wanted:
                        attentions[i + 1] = probs
            target = x
            if split_grad:
                x, target = layer_grad_split(x, i, c.num_layers, c.layer_grad_scale)
            if c.layer_norm_first and i + 1 == c.num_layers:
                target = self.encoder_norm(target)
            hidden.append(target if keep is None or (i + 1) in keep else None)
        hidden.extend([None] * (c.num_layers - last))
        return EncoderOutput(hidden_states=hidden, lengths=frame_lengths, attentions=attentions,
                             conv_features=features, projected_features=projected,
                             projection_output=projection_output)
