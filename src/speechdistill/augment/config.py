"""Augmentation settings (YAML-loadable through :mod:`speechdistill.config`) and the named presets.

An utterance is augmented with probability ``apply_prob``; an augmented utterance then gets
one *choice*, drawn with the weights of ``choices``: ``clean`` (nothing), or effects joined by
``+`` and applied left to right, e.g. ``noise+reverb``. Effects: ``noise``, ``music``,
``babble`` (additive, at an SNR drawn from the category's range, measured over the
utterance's real length) and ``reverb`` (RIR convolution). After the choice, an augmented
utterance is clipped with probability ``clip_prob`` and given a gain ramp ("easing") with
probability ``ease_prob``.

Presets (``preset(name)``), each a documented reading of its source:

``default``
    conventions.md §3.4 ranges: with p=0.6 one of reverb / noise 0-15 dB / music 5-15 dB /
    babble of 3-7 talkers at 13-20 dB, uniformly (continuous SNRs, as ESPnet and WeSpeaker).
``robustdistiller``
    RobustDistiller (02_robustdistiller.md §4): every utterance gets one of clean / noise /
    reverb / noise then reverb (p=0.25 each); integer SNR uniform in 0..20 dB; the noise is
    white Gaussian with p=0.3, else a MUSAN-noise recording; all RIRs. The released code
    computes the SNR over the padded row, writes noise into the padding, and convolves
    without RIR normalisation or alignment; here SNRs use the real length and RIRs are
    energy-normalised and aligned on the direct path. ``reverb.normalize: none`` and
    ``reverb.align: none`` reproduce the released convolution.
``oskdft``
    OS-KDFT paper-era code (06_os_kdft.md §2): with p=0.6 one of none / reverb / babble of
    3-8 talkers at 13-20 dB / music 5-25 dB / noise 0-15 dB / babble then music (uniform);
    then clipping at 0.5-0.9 of the utterance's own peaks with p=0.3 and easing (a fade from
    a floor of 0.1-0.3 along one of six easing curves) with p=0.3. The code normalises RIRs
    to unit energy (kept) but does not align them (``reverb.align: none`` reproduces that).

Babble SNR is the SNR of the summed talkers (each talker first brought to the same power),
as in OS-KDFT; Kaldi instead gives each talker its own SNR, which makes the sum louder by
about 10·log10(k) dB.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Dict, List, Literal, Mapping, Optional, Union

from speechdistill.config import ConfigError, from_dict, load_yaml, merge, to_dict

ADDITIVE = ("noise", "music", "babble")
EFFECTS = ADDITIVE + ("reverb",)


@dataclasses.dataclass
class SourceConfig:
    """One additive category: where its recordings are and how loud they are mixed."""

    data_dir: Optional[str] = None          # Kaldi data dir of the recordings (e.g. data/musan_noise)
    snr_db: List[float] = dataclasses.field(default_factory=lambda: [0.0, 15.0])   # [low, high]
    integer_snr: bool = False               # draw whole dB values low..high inclusive
    num_sources: List[int] = dataclasses.field(default_factory=lambda: [1, 1])     # [min, max] recordings summed
    white_prob: float = 0.0                 # probability that the source is white Gaussian noise instead
    max_seconds: float = 30.0               # of each recording, kept in memory


@dataclasses.dataclass
class ReverbConfig:
    data_dir: Optional[str] = "data/rirs"
    rooms: Optional[List[str]] = None       # room types (utt2room values) to use; None: all
    normalize: Literal["energy", "none"] = "energy"
    align: Literal["peak", "none"] = "peak"  # peak: output aligned with the input on the direct path
    max_seconds: float = 2.0


@dataclasses.dataclass
class AugmentConfig:
    apply_prob: float = 0.6
    choices: Dict[str, float] = dataclasses.field(
        default_factory=lambda: {"reverb": 1.0, "noise": 1.0, "music": 1.0, "babble": 1.0})
    noise: SourceConfig = dataclasses.field(default_factory=lambda: SourceConfig("data/musan_noise", [0.0, 15.0]))
    music: SourceConfig = dataclasses.field(default_factory=lambda: SourceConfig("data/musan_music", [5.0, 15.0]))
    babble: SourceConfig = dataclasses.field(
        default_factory=lambda: SourceConfig("data/musan_speech", [13.0, 20.0], num_sources=[3, 7]))
    reverb: ReverbConfig = dataclasses.field(default_factory=ReverbConfig)
    clip_prob: float = 0.0
    clip_ratio: List[float] = dataclasses.field(default_factory=lambda: [0.5, 0.9])
    ease_prob: float = 0.0
    ease_floor: List[float] = dataclasses.field(default_factory=lambda: [0.1, 0.3])

    def effects_of(self, choice: str) -> List[str]:
        return [] if choice == "clean" else choice.split("+")

    def used_effects(self) -> List[str]:
        return sorted({e for choice, w in self.choices.items() if w > 0 for e in self.effects_of(choice)})

    def validate(self, where: str = "augment") -> None:
        """Raise ConfigError naming the key for anything out of range."""
        def need(ok: bool, key: str, problem: str) -> None:
            if not ok:
                raise ConfigError(f"{where}.{key}: {problem}")

        need(0.0 <= self.apply_prob <= 1.0, "apply_prob", f"{self.apply_prob} is not a probability")
        need(bool(self.choices) and all(w >= 0 for w in self.choices.values()) and sum(self.choices.values()) > 0,
             "choices", "needs at least one choice with a positive weight and no negative weight")
        for choice in self.choices:
            bad = [e for e in self.effects_of(choice) if e not in EFFECTS]
            need(not bad and choice.strip() != "", f"choices.{choice}",
                 f"unknown effect(s) {bad}; a choice is 'clean' or effects from {list(EFFECTS)} joined by '+'")
        for name in ADDITIVE:
            source: SourceConfig = getattr(self, name)
            need(len(source.snr_db) == 2 and source.snr_db[0] <= source.snr_db[1], f"{name}.snr_db",
                 f"expected [low, high] with low <= high, found {source.snr_db}")
            need(len(source.num_sources) == 2 and 1 <= source.num_sources[0] <= source.num_sources[1],
                 f"{name}.num_sources", f"expected [min, max] with 1 <= min <= max, found {source.num_sources}")
            need(0.0 <= source.white_prob <= 1.0, f"{name}.white_prob", "is not a probability")
            need(source.max_seconds > 0, f"{name}.max_seconds", "must be positive")
            if name in self.used_effects() and source.white_prob < 1.0:
                need(bool(source.data_dir), f"{name}.data_dir", "is needed: the choices use this effect")
        if "reverb" in self.used_effects():
            need(bool(self.reverb.data_dir), "reverb.data_dir", "is needed: the choices use reverb")
        for key, prob in (("clip_prob", self.clip_prob), ("ease_prob", self.ease_prob)):
            need(0.0 <= prob <= 1.0, key, f"{prob} is not a probability")
        need(len(self.clip_ratio) == 2 and 0 < self.clip_ratio[0] <= self.clip_ratio[1] <= 1, "clip_ratio",
             f"expected [low, high] within (0, 1], found {self.clip_ratio}")
        need(len(self.ease_floor) == 2 and 0 <= self.ease_floor[0] <= self.ease_floor[1] <= 1, "ease_floor",
             f"expected [low, high] within [0, 1], found {self.ease_floor}")


def _robustdistiller() -> AugmentConfig:
    return AugmentConfig(
        apply_prob=1.0,
        choices={"clean": 1.0, "noise": 1.0, "reverb": 1.0, "noise+reverb": 1.0},
        noise=SourceConfig("data/musan_noise", [0.0, 20.0], integer_snr=True, white_prob=0.3),
        music=SourceConfig(None), babble=SourceConfig(None), reverb=ReverbConfig("data/rirs"))


def _oskdft() -> AugmentConfig:
    return AugmentConfig(
        apply_prob=0.6,
        choices={"clean": 1.0, "reverb": 1.0, "babble": 1.0, "music": 1.0, "noise": 1.0, "babble+music": 1.0},
        noise=SourceConfig("data/musan_noise", [0.0, 15.0]),
        music=SourceConfig("data/musan_music", [5.0, 25.0]),
        babble=SourceConfig("data/musan_speech", [13.0, 20.0], num_sources=[3, 8]),
        reverb=ReverbConfig("data/rirs"),
        clip_prob=0.3, clip_ratio=[0.5, 0.9], ease_prob=0.3, ease_floor=[0.1, 0.3])


PRESETS = {"default": AugmentConfig, "robustdistiller": _robustdistiller, "oskdft": _oskdft}


def preset(name: str) -> AugmentConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown augmentation preset '{name}'. Fix: use one of {', '.join(PRESETS)} or a YAML file")
    return PRESETS[name]()


def _merge_replacing_choices(base: Mapping, update: Mapping) -> Dict:
    """Recursive merge, except that a given ``choices`` replaces the base's instead of adding to it."""
    merged = merge(dict(base), update)
    if "choices" in update:
        merged["choices"] = dict(update["choices"])
    return merged


def load_augment_config(source: Union[str, Path, Mapping, None] = "default",
                        overrides: Optional[Mapping] = None) -> AugmentConfig:
    """A preset name, a YAML file (which may start from a preset with ``preset: <name>``) or a mapping."""
    if isinstance(source, Mapping):
        data, where = dict(source), "augment"
    elif source is None or str(source) in PRESETS:
        data, where = to_dict(preset(str(source or "default"))), f"augment preset {source or 'default'}"
    else:
        data, where = load_yaml(source), str(source)
    if "preset" in data:
        data = _merge_replacing_choices(to_dict(preset(str(data.pop("preset")))), data)
    if overrides:
        data = _merge_replacing_choices(data, overrides)
    config = from_dict(AugmentConfig, data, where=where)
    config.validate(where)
    return config
