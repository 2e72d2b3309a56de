"""RobustDistiller enhancement loss (specs/methods/02 §3).

The student sees a corrupted waveform; an enhancement head (a BiLSTM written with the models)
reads student features upsampled from 50 Hz to the STFT's 100 Hz and predicts a magnitude mask
``M`` (``[B, S, 257]``, sigmoid outputs). With ``X̃ = STFT(noisy)`` and ``X = STFT(clean)``
(n_fft 512, hop 160, window 400 Hann, ``center=True``: 257 bins, 100 frames/s):

* ``"l1"`` (default) / ``"l2"``: mean |M ⊙ |X̃| − |X||  (or squared) over bins and frames;
* ``"mrstft"``: ``ŷ = iSTFT(M ⊙ |X̃| · e^{i∠X̃})`` (noisy phase), then the multi-resolution STFT
  loss vs the clean waveform: FFT sizes (1024, 2048, 512), hops (120, 240, 50), Hann windows
  (600, 1200, 240); per resolution spectral convergence ``‖|Y|−|Ŷ|‖_F / ‖|Y|‖_F`` and log-magnitude
  ``mean |log|Y| − log|Ŷ||`` (magnitudes floored at √1e-7), averaged over resolutions, total
  ``0.5·SC + 0.5·logMag``;
* ``"si_snr"``: negative scale-invariant SDR (zero-mean, eps 1e-8) of ``ŷ`` vs the clean
  waveform, averaged over utterances.

Padding. By default each utterance is processed as if it were alone in the batch: its STFTs
are taken over its own ``lengths[b]`` samples (reflect padding at its own end, as ``center=True``
does), only its first ``1 + lengths[b] // 160`` mask frames are used, and its reconstruction
has its own length. Means are pooled over all valid bins/frames (SC: the Frobenius norms are
pooled over the batch). Whatever the padded region holds therefore never changes the loss.
``include_padding=True`` reproduces the released code: the whole padded batch goes through
the STFTs, the iSTFT and the means, noise in the padded region included.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .frames import LossInputError, check_choice, float32_math

ENHANCEMENT_N_FFT = 512
ENHANCEMENT_HOP = 160
ENHANCEMENT_WIN = 400
ENHANCEMENT_BINS = ENHANCEMENT_N_FFT // 2 + 1  # 257
ENHANCEMENT_LOSSES = ("l1", "l2", "mrstft", "si_snr")
# (n_fft, hop, window length) of the multi-resolution STFT loss.
MRSTFT_RESOLUTIONS: Tuple[Tuple[int, int, int], ...] = ((1024, 120, 600), (2048, 240, 1200), (512, 50, 240))
_MAGNITUDE_FLOOR = 1e-7  # on |STFT|², as in the MR-STFT loss of the released code
_SDR_EPS = 1e-8
_MAX_UPSAMPLE_MISMATCH = 5


def stft_num_frames(num_samples: int, hop: int = ENHANCEMENT_HOP) -> int:
    """Frames of a ``center=True`` STFT of ``num_samples`` samples: ``1 + num_samples // hop``."""
    return 1 + int(num_samples) // hop


def upsample_to_stft_frames(features: torch.Tensor, num_stft_frames: int) -> torch.Tensor:
    """Bring 50 Hz encoder features to the 100 Hz enhancement STFT frame rate.

    Each frame is repeated twice, then the sequence is truncated or zero-padded to
    ``num_stft_frames`` (the two rates differ by a few frames at the edges).

    Args:
        features: ``[B, N, C]`` at 50 Hz.
        num_stft_frames: ``S``, from :func:`stft_num_frames` of the padded waveform length.
    Returns:
        ``[B, S, C]``.
    """
    if features.dim() != 3:
        raise LossInputError(f"upsample_to_stft_frames: features must be [B, N, C], found {tuple(features.shape)}")
    upsampled = torch.repeat_interleave(features, 2, dim=1)
    mismatch = upsampled.shape[1] - num_stft_frames
    if abs(mismatch) >= _MAX_UPSAMPLE_MISMATCH:
        raise LossInputError(f"upsample_to_stft_frames: {features.shape[1]} feature frames (x2 = {upsampled.shape[1]}) "
                             f"do not fit {num_stft_frames} STFT frames; pass the 50 Hz features of the same "
                             "waveform batch the STFT is taken of")
    if mismatch > 0:
        return upsampled[:, :num_stft_frames]
    return F.pad(upsampled, (0, 0, 0, -mismatch))


def _window(length: int, device: torch.device) -> torch.Tensor:
    return torch.hann_window(length, device=device, dtype=torch.float32)


def _stft(wavs: torch.Tensor, n_fft: int, hop: int, win: int) -> torch.Tensor:
    """Complex STFT ``[..., n_fft//2+1, frames]`` with reflect padding (``center=True``)."""
    if wavs.shape[-1] <= n_fft // 2:
        raise LossInputError(f"enhancement loss: a waveform of {wavs.shape[-1]} samples is too short for a "
                             f"{n_fft}-point centred STFT (needs more than {n_fft // 2}); drop such utterances "
                             "or raise the minimum crop length")
    return torch.stft(wavs, n_fft=n_fft, hop_length=hop, win_length=win, window=_window(win, wavs.device),
                      center=True, pad_mode="reflect", return_complex=True)


def _floored_magnitude(spectrum: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(torch.clamp(spectrum.real.pow(2) + spectrum.imag.pow(2), min=_MAGNITUDE_FLOOR))


def _reconstruct(estimate_magnitude: torch.Tensor, noisy_spectrum: torch.Tensor, length: int) -> torch.Tensor:
    """Waveform from a magnitude estimate and the noisy phase: ``[..., 257, S]`` -> ``[..., length]``."""
    complex_estimate = torch.polar(estimate_magnitude, torch.angle(noisy_spectrum))
    return torch.istft(complex_estimate, n_fft=ENHANCEMENT_N_FFT, hop_length=ENHANCEMENT_HOP,
                       win_length=ENHANCEMENT_WIN, window=_window(ENHANCEMENT_WIN, estimate_magnitude.device),
                       center=True, length=length)


class _MrstftSums:
    """Pooled sums of the MR-STFT loss over utterances, one slot per resolution."""

    def __init__(self, resolutions: Sequence[Tuple[int, int, int]]):
        self.resolutions = resolutions
        self.difference_energy = [0.0] * len(resolutions)
        self.reference_energy = [0.0] * len(resolutions)
        self.log_difference = [0.0] * len(resolutions)
        self.log_count = [0] * len(resolutions)

    def add(self, estimate: torch.Tensor, reference: torch.Tensor) -> None:
        for slot, (n_fft, hop, win) in enumerate(self.resolutions):
            estimate_magnitude = _floored_magnitude(_stft(estimate, n_fft, hop, win))
            reference_magnitude = _floored_magnitude(_stft(reference, n_fft, hop, win))
            self.difference_energy[slot] = self.difference_energy[slot] + \
                (reference_magnitude - estimate_magnitude).pow(2).sum()
            self.reference_energy[slot] = self.reference_energy[slot] + reference_magnitude.pow(2).sum()
            self.log_difference[slot] = self.log_difference[slot] + \
                (torch.log(reference_magnitude) - torch.log(estimate_magnitude)).abs().sum()
            self.log_count[slot] += reference_magnitude.numel()

    def value(self) -> torch.Tensor:
        spectral_convergence = sum(torch.sqrt(d) / torch.sqrt(r)
                                   for d, r in zip(self.difference_energy, self.reference_energy))
        log_magnitude = sum(d / c for d, c in zip(self.log_difference, self.log_count))
        count = len(self.resolutions)
        return 0.5 * spectral_convergence / count + 0.5 * log_magnitude / count


def multi_resolution_stft_loss(estimate: torch.Tensor, reference: torch.Tensor, lengths: Optional[torch.Tensor], *,
                               include_padding: bool = False,
                               resolutions: Sequence[Tuple[int, int, int]] = MRSTFT_RESOLUTIONS) -> torch.Tensor:
    """``0.5·SC + 0.5·logMag`` averaged over STFT resolutions.

    Args:
        estimate, reference: ``[B, T]`` waveforms (samples).
        lengths: ``[B]`` valid samples (``None`` only with ``include_padding=True``).
        resolutions: (n_fft, hop, window length) triples.
    Returns:
        scalar float32.
    """
    _check_waveforms(estimate, reference, lengths, include_padding, "multi_resolution_stft_loss")
    sums = _MrstftSums(resolutions)
    with float32_math(estimate.device):
        if include_padding:
            sums.add(estimate.float(), reference.float())
        else:
            for index, length in enumerate(lengths.tolist()):
                sums.add(estimate[index, :length].float(), reference[index, :length].float())
        return sums.value()


def _negative_si_sdr_rows(estimate: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """−SI-SDR in dB of each row ``[..., T]`` -> ``[...]``."""
    estimate = estimate - estimate.mean(dim=-1, keepdim=True)
    reference = reference - reference.mean(dim=-1, keepdim=True)
    scale = (estimate * reference).sum(-1, keepdim=True) / (reference.pow(2).sum(-1, keepdim=True) + _SDR_EPS)
    target = scale * reference
    residual = estimate - target
    ratio = target.pow(2).sum(-1) / (residual.pow(2).sum(-1) + _SDR_EPS)
    return -10.0 * torch.log10(ratio + _SDR_EPS)


def negative_si_sdr(estimate: torch.Tensor, reference: torch.Tensor, lengths: Optional[torch.Tensor], *,
                    include_padding: bool = False) -> torch.Tensor:
    """Mean over utterances of −SI-SDR (dB) of ``estimate`` vs ``reference``, both ``[B, T]``.

    Each utterance uses its first ``lengths[b]`` samples (mean removal included), unless
    ``include_padding``.
    """
    _check_waveforms(estimate, reference, lengths, include_padding, "negative_si_sdr")
    with float32_math(estimate.device):
        if include_padding:
            return _negative_si_sdr_rows(estimate.float(), reference.float()).mean()
        rows = [_negative_si_sdr_rows(estimate[index, :length].float(), reference[index, :length].float())
                for index, length in enumerate(lengths.tolist())]
        return torch.stack(rows).mean()


def _check_waveforms(estimate: torch.Tensor, reference: torch.Tensor, lengths: Optional[torch.Tensor],
                     include_padding: bool, where: str) -> None:
    if estimate.dim() != 2 or estimate.shape != reference.shape:
        raise LossInputError(f"{where}: waveforms must both be [B, T] samples, found {tuple(estimate.shape)} and "
                             f"{tuple(reference.shape)}")
    if include_padding:
        return
    if lengths is None:
        raise LossInputError(f"{where}: lengths [B] (samples) is required unless include_padding=True")
    if tuple(lengths.shape) != (estimate.shape[0],):
        raise LossInputError(f"{where}: lengths must be [B] = [{estimate.shape[0]}], found {tuple(lengths.shape)}")
    if bool((lengths < 1).any()) or bool((lengths > estimate.shape[1]).any()):
        raise LossInputError(f"{where}: lengths {lengths.tolist()} outside [1, {estimate.shape[1]}] samples")


def enhancement_loss(mask: torch.Tensor, noisy: torch.Tensor, clean: torch.Tensor, lengths: Optional[torch.Tensor], *,
                     kind: str = "l1", include_padding: bool = False) -> torch.Tensor:
    """RobustDistiller enhancement loss of a predicted magnitude mask.

    Args:
        mask: ``[B, S, 257]`` mask on the noisy magnitude, ``S = 1 + T // 160`` (time-major, as the
            head outputs it; see :func:`upsample_to_stft_frames` for the head's input).
        noisy: ``[B, T]`` the student's (corrupted) input waveform, samples.
        clean: ``[B, T]`` the clean waveform the teacher saw.
        lengths: ``[B]`` valid samples per utterance (``None`` only with ``include_padding``).
        kind: ``"l1"`` (default), ``"l2"``, ``"mrstft"`` or ``"si_snr"``.
        include_padding: reproduce the released code (module docstring).
    Returns:
        scalar float32 loss (multiply by λ = 2 in the RobustDistiller preset).
    """
    where = "enhancement_loss"
    check_choice(kind, ENHANCEMENT_LOSSES, "kind", where)
    _check_waveforms(noisy, clean, lengths, include_padding, where)
    num_frames = stft_num_frames(noisy.shape[1])
    if mask.dim() != 3 or tuple(mask.shape) != (noisy.shape[0], num_frames, ENHANCEMENT_BINS):
        raise LossInputError(f"{where}: mask must be [B, S, {ENHANCEMENT_BINS}] = [{noisy.shape[0]}, {num_frames}, "
                             f"{ENHANCEMENT_BINS}] for waveforms of {noisy.shape[1]} samples, found "
                             f"{tuple(mask.shape)}; feed the head upsample_to_stft_frames(features, {num_frames})")
    with float32_math(mask.device):
        if include_padding:
            items = [(mask.float().transpose(1, 2), noisy.float(), clean.float())]
        else:
            items = [(mask[index, :stft_num_frames(length)].float().transpose(0, 1),
                      noisy[index, :length].float(), clean[index, :length].float())
                     for index, length in enumerate(lengths.tolist())]
        if kind in ("l1", "l2"):
            total, count = 0.0, 0
            for item_mask, item_noisy, item_clean in items:
                estimate = item_mask * _stft(item_noisy, ENHANCEMENT_N_FFT, ENHANCEMENT_HOP, ENHANCEMENT_WIN).abs()
                target = _stft(item_clean, ENHANCEMENT_N_FFT, ENHANCEMENT_HOP, ENHANCEMENT_WIN).abs()
                difference = estimate - target
                total = total + (difference.abs() if kind == "l1" else difference.pow(2)).sum()
                count += difference.numel()
            return total / count
        reconstructions = []
        for item_mask, item_noisy, _ in items:
            noisy_spectrum = _stft(item_noisy, ENHANCEMENT_N_FFT, ENHANCEMENT_HOP, ENHANCEMENT_WIN)
            reconstructions.append(_reconstruct(item_mask * noisy_spectrum.abs(), noisy_spectrum,
                                                item_noisy.shape[-1]))
        if kind == "mrstft":
            sums = _MrstftSums(MRSTFT_RESOLUTIONS)
            for reconstruction, (_, _, item_clean) in zip(reconstructions, items):
                sums.add(reconstruction, item_clean)
            return sums.value()
        rows = [_negative_si_sdr_rows(reconstruction, item_clean).reshape(-1)
                for reconstruction, (_, _, item_clean) in zip(reconstructions, items)]
        return torch.cat(rows).mean()
