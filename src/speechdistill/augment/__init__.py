"""Data augmentation: noise at an SNR, reverb, clipping/easing on batched tensors; speed perturbation of data dirs.

* :class:`Augmenter` (``pipeline``) corrupts a padded batch ``[B, T]`` + ``lengths`` on any device,
  seeded by a ``torch.Generator``, and returns the clean batch alongside the corrupted one;
* :mod:`config` holds :class:`AugmentConfig` and the ``default``, ``robustdistiller`` and ``oskdft`` presets;
* :mod:`banks` loads noise and RIR data dirs into memory once;
* :mod:`ops` has the batched primitives (SNR scaling, aligned FFT convolution, clipping, easing);
* :mod:`speed` makes a speed-perturbed data dir (``sp0.9-`` ids, materialised FLAC audio).
"""
from .banks import AugmentError, NoiseBank, RirBank
from .config import AugmentConfig, ReverbConfig, SourceConfig, load_augment_config, preset
from .ops import add_noise, fft_convolve_aligned, measure_snr, scale_to_snr
from .pipeline import AugmentOutput, Augmenter

__all__ = ["Augmenter", "AugmentOutput", "AugmentConfig", "SourceConfig", "ReverbConfig", "load_augment_config",
           "preset", "NoiseBank", "RirBank", "AugmentError", "add_noise", "scale_to_snr", "measure_snr",
           "fft_convolve_aligned"]
