"""The batched augmenter: clean batch in, (clean, corrupted) pair out, on any device, seeded.

    augmenter = Augmenter.from_config(load_augment_config("oskdft"), device="cuda")
    generator = torch.Generator().manual_seed(step)            # CPU generator: same draws on any device
    out = augmenter(wavs, lengths, generator)                   # wavs [B, T] float32, lengths [B] samples
    teacher_input, student_input = out.clean, out.noisy

All random draws come from ``generator`` in a fixed order, so the same generator state gives
the same output (on CPU, bit for bit). Draws are made on the generator's device and moved to
the batch's device, so a CPU generator also gives the same choices on a GPU.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Dict, List, Optional, Union

import torch

from .banks import NoiseBank, RirBank
from .config import ADDITIVE, AugmentConfig, SourceConfig
from .ops import (EASING_CURVES, check_batch, clip_peaks, ease_gain, fft_convolve_aligned, scale_to_snr, uniform,
                  valid_mask)


@dataclasses.dataclass
class AugmentOutput:
    """``noisy`` ``[B, T]`` (zero in the padding), the untouched ``clean`` ``[B, T]``, ``lengths`` ``[B]``.

    ``choices``: the choice applied to each row (``"clean"`` for untouched rows);
    ``snr_db``: per additive effect, the SNR drawn for each row (NaN where not applied).
    """

    clean: torch.Tensor
    noisy: torch.Tensor
    lengths: torch.Tensor
    choices: List[str]
    snr_db: Dict[str, torch.Tensor]


class Augmenter:
    """Applies an :class:`AugmentConfig` to padded batches; banks are loaded once (:meth:`from_config`)."""

    def __init__(self, config: AugmentConfig, banks: Dict[str, NoiseBank], rirs: Optional[RirBank]) -> None:
        config.validate()
        self.config = config
        self.banks = dict(banks)
        self.rirs = rirs
        self.choice_names = [c for c, w in config.choices.items() if w > 0]
        self.choice_weights = torch.tensor([config.choices[c] for c in self.choice_names], dtype=torch.float64)
        used = config.used_effects()
        for name in ADDITIVE:
            source: SourceConfig = getattr(config, name)
            if name in used and source.white_prob < 1.0 and name not in self.banks:
                raise ValueError(f"augment: effect '{name}' is used but no {name} bank was given")
        if "reverb" in used and rirs is None:
            raise ValueError("augment: effect 'reverb' is used but no RIR bank was given")

    @classmethod
    def from_config(cls, config: AugmentConfig, *, base_dir: Union[str, Path] = ".",
                    device: Union[str, torch.device, None] = None) -> "Augmenter":
        """Load the banks the config's choices use (data dirs relative to ``base_dir``), onto ``device``."""
        config.validate()
        used = config.used_effects()
        banks = {}
        # babble from the same dir as another category shares its bank
        loaded: Dict[str, NoiseBank] = {}
        for name in ADDITIVE:
            source: SourceConfig = getattr(config, name)
            if name in used and source.white_prob < 1.0:
                path = Path(base_dir) / str(source.data_dir)
                key = f"{path.resolve()}:{source.max_seconds}"
                if key not in loaded:
                    loaded[key] = NoiseBank.from_data_dir(path, max_seconds=source.max_seconds, name=name,
                                                          device=device)
                banks[name] = loaded[key]
        rirs = None
        if "reverb" in used:
            rirs = RirBank.from_data_dir(Path(base_dir) / str(config.reverb.data_dir), rooms=config.reverb.rooms,
                                         normalize=config.reverb.normalize, max_seconds=config.reverb.max_seconds,
                                         device=device)
        return cls(config, banks, rirs)

    def to(self, device: Union[str, torch.device]) -> "Augmenter":
        return Augmenter(self.config, {k: b.to(device) for k, b in self.banks.items()},
                         self.rirs.to(device) if self.rirs is not None else None)

    # ------------------------------------------------------------------------------------------
    def __call__(self, wavs: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator) -> AugmentOutput:
        """Corrupt a padded batch ``wavs`` ``[B, T]`` (float32, 16 kHz) with valid ``lengths`` ``[B]``."""
        check_batch(wavs, lengths)
        lengths = lengths.to(wavs.device)
        batch, num_samples = wavs.shape
        cfg = self.config
        device = wavs.device
        applied = torch.rand(batch, generator=generator, device=generator.device) < cfg.apply_prob
        picked = torch.multinomial(self.choice_weights.to(generator.device), batch, replacement=True,
                                   generator=generator)
        names = [self.choice_names[i] if a else "clean" for i, a in zip(picked.tolist(), applied.tolist())]
        noisy = wavs * valid_mask(lengths, num_samples)
        snr_db = {name: torch.full((batch,), math.nan, device=device) for name in ADDITIVE}
        steps = [cfg.effects_of(name) for name in names]
        used = cfg.used_effects()
        for position in range(max((len(s) for s in steps), default=0)):
            for effect in [e for e in ("noise", "music", "babble", "reverb") if e in used]:
                rows = [b for b, s in enumerate(steps) if len(s) > position and s[position] == effect]
                rows_t = torch.tensor(rows, dtype=torch.long, device=device)
                if effect == "reverb":
                    noisy = self._reverb(noisy, lengths, rows_t, generator)
                else:
                    noisy = self._additive(effect, noisy, lengths, rows_t, generator, snr_db)
        applied_rows = applied.to(device)
        if cfg.clip_prob > 0:
            clip = applied_rows & (torch.rand(batch, generator=generator, device=generator.device) < cfg.clip_prob
                                   ).to(device)
            ratio = uniform(cfg.clip_ratio[0], cfg.clip_ratio[1], batch, generator).to(device)
            noisy = torch.where(clip[:, None], clip_peaks(noisy, lengths, ratio), noisy)
        if cfg.ease_prob > 0:
            ease = applied_rows & (torch.rand(batch, generator=generator, device=generator.device) < cfg.ease_prob
                                   ).to(device)
            kinds = torch.randint(0, len(EASING_CURVES), (batch,), generator=generator,
                                  device=generator.device).to(device)
            reverse = (torch.rand(batch, generator=generator, device=generator.device) < 0.5).to(device)
            floor = uniform(cfg.ease_floor[0], cfg.ease_floor[1], batch, generator).to(device)
            noisy = torch.where(ease[:, None], ease_gain(noisy, lengths, kinds, reverse, floor), noisy)
        return AugmentOutput(clean=wavs, noisy=noisy, lengths=lengths, choices=names, snr_db=snr_db)

    def _additive(self, effect: str, noisy: torch.Tensor, lengths: torch.Tensor, rows: torch.Tensor,
                  generator: torch.Generator, snr_db: Dict[str, torch.Tensor]) -> torch.Tensor:
        source: SourceConfig = getattr(self.config, effect)
        count = int(rows.numel())
        num_samples = noisy.shape[1]
        low, most = source.num_sources
        snr = uniform(source.snr_db[0], source.snr_db[1], count, generator, integer=source.integer_snr)
        white = torch.rand(count, generator=generator, device=generator.device) < source.white_prob
        talkers = torch.randint(low, most + 1, (count,), generator=generator, device=generator.device)
        bank = self.banks.get(effect)
        if bank is not None:
            picks = torch.randint(0, len(bank), (count, most), generator=generator, device=generator.device)
            offsets = torch.rand(count, most, generator=generator, device=generator.device)
        if count == 0:
            return noisy
        white_rows = torch.nonzero(white).flatten()
        white_noise = torch.randn(int(white_rows.numel()), num_samples, generator=generator, device=generator.device)
        device = noisy.device
        sub_lengths = lengths[rows]
        mask = valid_mask(sub_lengths, num_samples)
        if bank is not None:
            segments = bank.segments(picks.flatten(), num_samples, offsets.flatten()).to(device)
            segments = segments.view(count, most, num_samples) * mask[:, None, :]
            # equal power per talker before summing, so that no single recording dominates babble
            power = segments.square().sum(dim=2) / sub_lengths.clamp(min=1)[:, None]
            segments = segments / power.clamp(min=1e-12).sqrt()[:, :, None]
            active = torch.arange(most)[None, :] < talkers[:, None]
            mixture = (segments * active.to(device)[:, :, None]).sum(dim=1)
        else:
            mixture = torch.zeros(count, num_samples, device=device)
        if white_rows.numel():
            mixture[white_rows.to(device)] = white_noise.to(device)
        clean_rows = noisy[rows]
        noisy = noisy.clone()
        noisy[rows] = clean_rows + scale_to_snr(clean_rows, mixture, sub_lengths, snr.to(device))
        snr_db[effect][rows] = snr.to(device)
        return noisy

    def _reverb(self, noisy: torch.Tensor, lengths: torch.Tensor, rows: torch.Tensor, generator: torch.Generator
                ) -> torch.Tensor:
        count = int(rows.numel())
        picks = torch.randint(0, len(self.rirs), (count,), generator=generator, device=generator.device)
        if count == 0:
            return noisy
        rirs, peaks = self.rirs.select(picks)
        rirs = rirs.to(noisy.device)
        delays = peaks.to(noisy.device)
        if self.config.reverb.align == "none":  # causal convolution: output delayed by the propagation time
            delays = torch.zeros_like(delays)
        noisy = noisy.clone()
        noisy[rows] = fft_convolve_aligned(noisy[rows], lengths[rows], rirs, delays)
        return noisy
