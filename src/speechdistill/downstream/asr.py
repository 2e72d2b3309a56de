"""BiLSTM-CTC ASR downstream over frozen upstream features (the SUPERB ASR probe).

features ``[B, N, D]`` → (SpecAugment, training only) → (optional Linear input projection)
→ dropout → ``num_layers`` bidirectional LSTM layers (``hidden_size`` per direction, dropout
between layers) → dropout → Linear to the token vocabulary → log-softmax ``[B, N, V]``.
Token 0 is the CTC blank (tokenizer convention: ``<blank>`` first in ``tokens.txt``).
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .specaugment import SpecAugment, SpecAugmentConfig


@dataclasses.dataclass
class BiLstmCtcConfig:
    """``projection_size``: None feeds the features straight into the LSTM; an int inserts a
    Linear(D → projection_size) first. ``spec_augment``: None disables masking."""

    hidden_size: int = 1024
    num_layers: int = 2
    projection_size: Optional[int] = None
    dropout: float = 0.2
    spec_augment: Optional[SpecAugmentConfig] = dataclasses.field(default_factory=SpecAugmentConfig)


class BiLstmCtc(nn.Module):
    blank_id = 0

    def __init__(self, input_size: int, vocab_size: int, config: Optional[BiLstmCtcConfig] = None) -> None:
        super().__init__()
        self.config = config or BiLstmCtcConfig()
        cfg = self.config
        if vocab_size < 2:
            raise ValueError(f"vocab_size must count the blank and at least one token, got {vocab_size}")
        self.input_size = input_size
        self.vocab_size = vocab_size
        self.spec_augment = SpecAugment(cfg.spec_augment) if cfg.spec_augment is not None else None
        self.projection = nn.Linear(input_size, cfg.projection_size) if cfg.projection_size else None
        lstm_input = cfg.projection_size or input_size
        self.dropout = nn.Dropout(cfg.dropout)
        self.lstm = nn.LSTM(lstm_input, cfg.hidden_size, num_layers=cfg.num_layers, batch_first=True,
                            bidirectional=True, dropout=cfg.dropout if cfg.num_layers > 1 else 0.0)
        self.output = nn.Linear(2 * cfg.hidden_size, vocab_size)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """features: ``[B, N, D]``; lengths: ``[B]`` valid frames. Returns log-probabilities
        ``[B, N, V]`` (frames past a length are padding) and the lengths ``[B]``."""
        if features.dim() != 3 or features.shape[-1] != self.input_size:
            raise ValueError(f"expected features [batch, frame, {self.input_size}], found shape "
                             f"{tuple(features.shape)}")
        if self.spec_augment is not None:
            features = self.spec_augment(features, lengths)
        if self.projection is not None:
            features = self.projection(features)
        features = self.dropout(features)
        frames = features.shape[1]
        lengths = lengths.clamp(min=1, max=frames)
        if features.device.type == "cuda":
            packed = pack_padded_sequence(features, lengths.cpu(), batch_first=True, enforce_sorted=False)
            hidden, _ = self.lstm(packed)
            hidden, _ = pad_packed_sequence(hidden, batch_first=True, total_length=frames)
        else:
            hidden = self._padded_bidirectional(features, lengths)
        logits = self.output(self.dropout(hidden))
        return F.log_softmax(logits.float(), dim=-1), lengths


    def _padded_bidirectional(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The packed bidirectional LSTM's exact result, computed on padded tensors.

        On CPU the backward pass of a packed LSTM is several times slower than on padded input
        (it grows with the squared length). The forward direction is causal, so trailing padding
        cannot reach valid frames; the backward direction runs on each utterance reversed within
        its own length (padding stays at the end) and is reversed back. Uses the weights of
        ``self.lstm`` unchanged, so checkpoints are the same either way.
        """
        frames = features.shape[1]
        steps = torch.arange(frames, device=features.device)[None, :]
        last = (lengths.to(features.device)[:, None] - 1)
        reverse_index = torch.where(steps <= last, last - steps, steps)  # [B, N], an involution

        def flip(x: torch.Tensor) -> torch.Tensor:
            return torch.gather(x, 1, reverse_index[:, :, None].expand(-1, -1, x.shape[-1]))

        lstm = self.lstm
        batch = features.shape[0]
        zeros = features.new_zeros(1, batch, lstm.hidden_size)
        x = features
        for layer in range(lstm.num_layers):
            outputs = []
            for suffix, inputs in (("", x), ("_reverse", flip(x))):
                weights = [getattr(lstm, f"{name}_l{layer}{suffix}")
                           for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
                out, _, _ = torch._VF.lstm(inputs, (zeros, zeros), weights, True, 1, 0.0, self.training,
                                           False, True)
                outputs.append(out if suffix == "" else flip(out))
            x = torch.cat(outputs, dim=-1)
            if layer + 1 < lstm.num_layers and lstm.dropout > 0:
                x = F.dropout(x, lstm.dropout, self.training)
        return x


def ctc_loss(log_probs: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor, target_lengths: torch.Tensor,
             blank: int = 0, reduction: str = "mean") -> torch.Tensor:
    """CTC loss of batch-first log-probabilities.

    log_probs: ``[B, N, V]``; lengths: ``[B]`` frames; targets: ``[B, S]`` padded token ids
    (padding ignored); target_lengths: ``[B]``. ``reduction``: ``mean`` (per-utterance loss
    divided by its target length, averaged: torch's convention), ``sum``, or
    ``mean_per_utterance`` (summed over the batch, divided by B). Impossible alignments (fewer
    frames than the target needs) give zero loss and zero gradient instead of infinity.
    """
    if reduction == "mean_per_utterance":
        per_utterance = F.ctc_loss(log_probs.transpose(0, 1), targets, lengths, target_lengths, blank=blank,
                                   reduction="none", zero_infinity=True)
        return per_utterance.sum() / log_probs.shape[0]
    return F.ctc_loss(log_probs.transpose(0, 1), targets, lengths, target_lengths, blank=blank, reduction=reduction,
                      zero_infinity=True)
