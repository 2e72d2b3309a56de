"""RobustDistiller's enhancement head (specs/methods/02 §2-§3): student features -> magnitude mask.

The head reads student features of the *corrupted* input at 50 Hz, repeats every frame twice to
reach the 100 Hz frame rate of the enhancement STFT (n_fft 512, hop 160, window 400), and a
BiLSTM predicts a sigmoid mask over the 257 bins of the noisy magnitude; the loss
(:func:`speechdistill.losses.enhancement_loss`) compares the masked noisy magnitude (or its
noisy-phase waveform) with the clean signal.

Padding never reaches a valid output: features of padded frames are zeroed before upsampling,
and the BiLSTM runs on packed sequences of each utterance's own STFT frame count (its backward
direction would otherwise start in the padding of shorter utterances).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..losses.enhancement import ENHANCEMENT_BINS, ENHANCEMENT_HOP, stft_num_frames, upsample_to_stft_frames


class EnhancementHead(nn.Module):
    """BiLSTM mask estimator: ``lstm_layers`` bidirectional layers of ``lstm_hidden`` units per direction,
    dropout between them and before ``Linear(2 * lstm_hidden, 257)`` and a sigmoid.

    Args:
        in_dim: width C of the features it reads (student width, or CNN channels).
        packed: run the LSTM on each utterance's own frames (False reproduces the released code,
            which runs it over the padded batch).
    """

    def __init__(self, in_dim: int, *, lstm_layers: int = 3, lstm_hidden: int = 256, dropout: float = 0.1,
                 packed: bool = True) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.packed = packed
        self.lstm = nn.LSTM(in_dim, lstm_hidden, num_layers=lstm_layers, batch_first=True, bidirectional=True,
                            dropout=dropout if lstm_layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(2 * lstm_hidden, ENHANCEMENT_BINS)

    def forward(self, features: torch.Tensor, frame_lengths: torch.Tensor, sample_lengths: torch.Tensor,
                num_samples: int) -> torch.Tensor:
        """Mask of the noisy STFT magnitude.

        Args:
            features: ``[B, N, C]`` student features at 50 Hz.
            frame_lengths: ``[B]`` valid frames of ``features``.
            sample_lengths: ``[B]`` valid samples of the waveforms (for the STFT frame counts).
            num_samples: ``T``, padded samples of the waveform batch.
        Returns:
            ``[B, S, 257]`` mask in (0, 1), ``S = 1 + T // 160`` STFT frames (rows past an utterance's
            own ``1 + length // 160`` frames are zero).
        """
        if features.dim() != 3 or features.shape[-1] != self.in_dim:
            raise ValueError(f"enhancement head expects [batch, frame, {self.in_dim}], got {list(features.shape)}")
        frames = features.shape[1]
        padded = torch.arange(frames, device=features.device)[None, :] >= frame_lengths[:, None]
        features = features.masked_fill(padded[..., None], 0.0)
        stft_frames = stft_num_frames(num_samples)
        upsampled = upsample_to_stft_frames(features, stft_frames)
        if not self.packed:
            hidden, _ = self.lstm(upsampled)
            return torch.sigmoid(self.output(self.dropout(hidden)))
        # pack_padded_sequence needs the lengths on the CPU (one small copy per step).
        stft_lengths = (1 + sample_lengths.div(ENHANCEMENT_HOP, rounding_mode="floor")).clamp(max=stft_frames).cpu()
        packed = pack_padded_sequence(upsampled, stft_lengths, batch_first=True, enforce_sorted=False)
        hidden, _ = self.lstm(packed)
        hidden, _ = pad_packed_sequence(hidden, batch_first=True, total_length=stft_frames)
        mask = torch.sigmoid(self.output(self.dropout(hidden)))
        valid = torch.arange(stft_frames)[None, :] < stft_lengths[:, None]
        return mask * valid.to(mask.device)[..., None]

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, packed={self.packed}"

