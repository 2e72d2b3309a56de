"""VoxCeleb1/2 -> Kaldi data dirs and trial lists (conventions §4.1, §4.2, §6.10).

Ids follow WeSpeaker: the utterance id is ``<spk>/<video>/<NNNNN>.wav`` (the last three path
components, always spelled ``.wav``) and the speaker is ``<spk>``. These are exactly the
names in the official trial lists, so trials need no rewriting, and VoxCeleb2 ids do not
change when the m4a files are converted to wav. Speaker ids all have the same length
(``id`` + 5 digits), so utt2spk sorts identically by utterance and by speaker.

Layouts read (the zips unpack to any of these):
``<root>/{dev,test}/wav/<spk>/<video>/<n>.wav`` (VoxCeleb1), ``<root>/{dev,test}/aac/<spk>/<video>/<n>.m4a``
(VoxCeleb2; converted ``.wav`` files there are used as they are), or the same without the
``dev``/``test`` level.

m4a audio is converted once to 16 kHz mono FLAC (``m4a="flac"``, the default) under
``flac_dir/<spk>/<video>/<n>.flac`` by ``nj`` ffmpeg processes (:mod:`.convert`: resumable, a
file ffmpeg cannot read is listed in ``bad_utts`` with the reason); ``wav.scp`` names the FLAC
files and ``utt2num_samples`` comes from their headers. ``m4a="pipe"`` instead reads every m4a
through ``ffmpeg -v 8 -i X -f wav -acodec pcm_s16le - |`` (no disk space, but every read decodes
the whole file).
"""
from __future__ import annotations

import logging
import re
import shlex
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple, Union

from speechdistill.data.tables import byte_key

from .common import (CorpusError, PrepResult, Probe, Utterance, check_key, finish_prep, probe_all, resolve_dir,
                     skip_if_done)
from .convert import ConversionJob, convert_to_flac

logger = logging.getLogger("speechdistill.corpora")

_SPEAKER = re.compile(r"^id[0-9]+$")
TRIAL_URL = "https://www.robots.ox.ac.uk/~vgg/data/voxceleb/meta/"
M4A_MODES = ("flac", "pipe")


def default_flac_dir(out_dir: Union[str, Path]) -> Path:
    """Where converted FLAC files go by default: ``dump/flac/<name>`` beside the data dir's parent
    (``data/train`` -> ``dump/flac/train``), outside the data dir, which a rerun replaces."""
    out = Path(out_dir)
    return out.parent.parent / "dump" / "flac" / out.name


def ffmpeg_pipe(path: str) -> str:
    """wav.scp value decoding an m4a file to 16-bit WAV on stdout."""
    return f"ffmpeg -v 8 -i {shlex.quote(path)} -f wav -acodec pcm_s16le - |"


def _audio_roots(root: Path, subsets: Sequence[str]) -> List[Path]:
    """Directories holding the speaker dirs of ``subsets``.

    Split layout: ``<root>/<subset>/{wav,aac}`` (or ``<root>/<subset>``). Merged layout (both zips
    unpacked into one ``<root>/{wav,aac}``): dev and test cannot be told apart, so it serves only a
    request for both.
    """
    def speaker_dir(candidates: Sequence[Path]) -> Optional[Path]:
        for candidate in candidates:
            if candidate.is_dir() and any(_SPEAKER.match(p.name) for p in candidate.iterdir()):
                return candidate
        return None

    found = [speaker_dir([root / s / "wav", root / s / "aac", root / s]) for s in subsets]
    if all(found):
        return [f for f in found if f is not None]
    merged = speaker_dir([root / "wav", root / "aac", root])
    if merged is not None and set(subsets) == {"dev", "test"}:
        return [merged]
    missing = [s for s, f in zip(subsets, found) if f is None]
    if merged is not None:
        raise CorpusError(f"{merged} holds dev and test speakers together, so subset(s) {', '.join(missing)} cannot "
                          "be picked out. Fix: unzip the dev and test archives into <root>/dev and <root>/test, or "
                          "ask for both subsets (with --trials and --trial-utts-only for an evaluation set)")
    raise CorpusError(f"VoxCeleb subset(s) {', '.join(missing)} not found under {root}: expected speaker directories "
                      f"(id00012/ ...) in {root}/<subset>/wav or {root}/<subset>/aac. Fix: unzip the VoxCeleb "
                      "archives there or point at the right root")


def scan_voxceleb(root: Path, subsets: Sequence[str]) -> List[Utterance]:
    """Utterances under ``root`` for ``subsets`` (``wav``: the audio file's path, .wav or .m4a); files
    named twice (wav and m4a) keep the wav."""
    chosen: Dict[str, Utterance] = {}
    for base in _audio_roots(root, subsets):
        for spk_dir in sorted(p for p in base.iterdir() if p.is_dir()):
            if not _SPEAKER.match(spk_dir.name):
                logger.warning("%s: not a VoxCeleb speaker directory (idNNNNN); ignored", spk_dir)
                continue
            for video_dir in sorted(p for p in spk_dir.iterdir() if p.is_dir()):
                for audio in sorted(video_dir.iterdir()):
                    if audio.suffix not in (".wav", ".m4a") or not audio.is_file():
                        continue
                    key = f"{spk_dir.name}/{video_dir.name}/{audio.stem}.wav"
                    check_key(key, str(audio))
                    if key in chosen and audio.suffix == ".m4a":
                        continue
                    chosen[key] = Utterance(key, str(audio), spk_dir.name)
    return [chosen[k] for k in sorted(chosen, key=byte_key)]


def prepare_voxceleb(corpus_dir: str, subsets: Sequence[str], out_dir: str, *, nj: int = 1,
                     verify: str = "tail", trials_file: Optional[str] = None, trial_utts_only: bool = False,
                     m4a: str = "flac", flac_dir: Optional[str] = None) -> PrepResult:
    """Prepare the ``subsets`` (``dev``, ``test``) of a VoxCeleb1 or VoxCeleb2 root as one data dir.

    Writes ``wav.scp``, ``utt2spk``, ``spk2utt``, ``utt2num_samples`` and ``bad_utts``. m4a files
    are converted to FLAC under ``flac_dir`` (default :func:`default_flac_dir`), or read through
    ffmpeg pipes with ``m4a="pipe"`` (see the module docstring). With
    ``trials_file`` (official ``1 a b`` or Kaldi ``a b target`` lines) it also writes ``trials``
    (``enroll test target|nontarget``); a trial naming an utterance that is absent or
    unreadable is dropped and listed with the reason in ``bad_trials``. ``trial_utts_only`` keeps
    only the utterances the trials name (an evaluation set out of all of VoxCeleb1).
    """
    root = resolve_dir(corpus_dir, "VoxCeleb directory", "point at the directory holding dev/ and test/")
    if not subsets:
        raise CorpusError("no VoxCeleb subset given. Fix: name dev and/or test")
    if m4a not in M4A_MODES:
        raise CorpusError(f"m4a mode '{m4a}' is unknown. Fix: use flac (convert once) or pipe (decode on every read)")
    out = Path(out_dir)
    flac_root = Path(flac_dir) if flac_dir else default_flac_dir(out)
    settings = {"corpus": str(root), "subsets": list(subsets), "verify": verify, "kind": "voxceleb", "m4a": m4a}
    if m4a == "flac":
        settings["flac_dir"] = str(flac_root.resolve())
    trials = None
    if trials_file is not None:
        trials_path = Path(trials_file)
        if not trials_path.is_file():
            raise CorpusError(f"trial list '{trials_path}' not found. Fix: download {trials_path.name} from "
                              f"{TRIAL_URL}")
        trials = read_trials(trials_path)
        settings["trials"] = str(trials_path.resolve())
        settings["trials_size"] = trials_path.stat().st_size
        settings["trial_utts_only"] = trial_utts_only
    elif trial_utts_only:
        raise CorpusError("trial_utts_only needs a trial list. Fix: give --trials")
    done = skip_if_done(out, settings)
    if done is not None:
        return done
    utterances = scan_voxceleb(root, subsets)
    if trials is not None and trial_utts_only:
        named = {k for enroll, test, _ in trials for k in (enroll, test)}
        utterances = [u for u in utterances if u.key in named]
    logger.info("%s (%s): %d utterances of %d speakers", root, " ".join(subsets), len(utterances),
                len({u.speaker for u in utterances}))
    conversion_failures = _m4a_sources(utterances, m4a, flac_root, nj, out)
    probes = probe_all([(u.key, u.wav) for u in utterances if u.key not in conversion_failures], nj=nj, verify=verify,
                       desc=f"probe {out.name}")
    probes += [Probe(key, error=error) for key, error in conversion_failures.items()]
    reasons = {p.key: p.error for p in probes if p.error is not None}

    def trial_files(kept: Set[str]) -> Tuple[Dict[str, str], Dict[str, int]]:
        if trials is None:
            return {}, {}
        kept_trials, dropped = [], []
        for enroll, test, label in trials:
            missing = [k for k in (enroll, test) if k not in kept]
            if missing:
                why = "; ".join(f"{k} " + (f"unreadable: {reasons[k]}" if k in reasons else "not in the corpus")
                                for k in missing)
                dropped.append(f"{enroll} {test} {label} # {why}\n")
            else:
                kept_trials.append(f"{enroll} {test} {label}\n")
        if not kept_trials:
            raise CorpusError(f"none of the {len(trials)} trials of {trials_file} names an utterance of {root} "
                              f"({' '.join(subsets)}). Fix: prepare the subsets the list needs (test for Vox1-O, "
                              "dev and test for Vox1-E/H)")
        for line in dropped[:5]:
            logger.warning("%s: trial dropped: %s", out, line.strip())
        if dropped:
            logger.warning("%s: %d of %d trials dropped (listed in bad_trials)", out, len(dropped), len(trials))
        targets = sum(1 for line in kept_trials if line.endswith(" target\n"))
        return ({"trials": "".join(kept_trials), "bad_trials": "".join(dropped)},
                {"trials": len(kept_trials), "target_trials": targets, "dropped_trials": len(dropped)})

    return finish_prep(out, utterances, probes, settings=settings, extra_files=trial_files)


def _m4a_sources(utterances: List[Utterance], mode: str, flac_root: Path, nj: int, out: Path) -> Dict[str, str]:
    """Point the m4a utterances at their FLAC conversion (or an ffmpeg pipe); returns key -> why it failed."""
    m4a = [u for u in utterances if u.wav.endswith(".m4a")]
    if not m4a:
        return {}
    if mode == "pipe":
        for utterance in m4a:
            utterance.wav = ffmpeg_pipe(utterance.wav)
        return {}
    root = flac_root.resolve()
    logger.info("%s: converting %d m4a files to 16 kHz FLAC under %s (%d ffmpeg processes; a rerun converts only "
                "what is missing)", out, len(m4a), root, nj)
    jobs = [ConversionJob(u.key, u.wav, str(root / (u.key[:-len(".wav")] + ".flac"))) for u in m4a]
    failures = {}
    for utterance, result in zip(m4a, convert_to_flac(jobs, nj=nj, desc=f"m4a -> flac {out.name}")):
        if result.error is not None:
            failures[utterance.key] = result.error
        else:
            utterance.wav = result.target
    return failures


def read_trials(path: Path) -> List[Tuple[str, str, str]]:
    """(enroll, test, target|nontarget) from an official list (``1 a b``) or a Kaldi one (``a b target``)."""
    trials = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) == 3 and fields[0] in ("0", "1"):
            trials.append((fields[1], fields[2], "target" if fields[0] == "1" else "nontarget"))
        elif len(fields) == 3 and fields[2] in ("target", "nontarget"):
            trials.append((fields[0], fields[1], fields[2]))
        else:
            raise CorpusError(f"{path}:{number}: expected '1|0 enroll test' (official) or 'enroll test "
                              f"target|nontarget' (Kaldi), found '{line.strip()}'. Fix: use the list as downloaded "
                              f"from {TRIAL_URL}")
    if not trials:
        raise CorpusError(f"{path}: the trial list is empty. Fix: download it again from {TRIAL_URL}")
    return trials


__all__ = ["prepare_voxceleb", "read_trials", "ffmpeg_pipe"]


SID_SPLITS = {"train": "1", "dev": "2", "test": "3"}


def read_iden_split(path: Path) -> Dict[str, str]:
    """utterance id (``<spk>/<video>/<n>.wav``) -> split set (``1`` train, ``2`` dev, ``3`` test) of
    VoxCeleb1's ``iden_split.txt``."""
    table: Dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[0] not in ("1", "2", "3"):
            raise CorpusError(f"{path}:{number}: expected '1|2|3 <spk>/<video>/<n>.wav', found '{line.strip()}'. "
                              f"Fix: use iden_split.txt as downloaded from {TRIAL_URL}")
        table[fields[1]] = fields[0]
    if not table:
        raise CorpusError(f"{path}: the identification split is empty. Fix: download it again from {TRIAL_URL}")
    return table


def prepare_voxceleb_sid(corpus_dir: str, iden_split: str, split: str, out_dir: str, *, nj: int = 1,
                         verify: str = "tail") -> PrepResult:
    """The ``split`` (train, dev, test) of VoxCeleb1's identification split as a data dir (speaker = label).

    The 1,251 speakers of VoxCeleb1 dev and test are all in every split; ``iden_split.txt`` names
    each utterance's split (1/2/3). An utterance the list names but the corpus lacks is listed in
    ``bad_utts``.
    """
    if split not in SID_SPLITS:
        raise CorpusError(f"split '{split}' is unknown; use one of {', '.join(SID_SPLITS)}")
    root = resolve_dir(corpus_dir, "VoxCeleb1 directory", "point at the directory holding dev/ and test/")
    split_path = Path(iden_split)
    if not split_path.is_file():
        raise CorpusError(f"identification split '{split_path}' not found. Fix: download iden_split.txt from "
                          f"{TRIAL_URL}")
    out = Path(out_dir)
    settings = {"corpus": str(root), "iden_split": str(split_path.resolve()), "size": split_path.stat().st_size,
                "split": split, "verify": verify, "kind": "voxceleb_sid"}
    done = skip_if_done(out, settings)
    if done is not None:
        return done
    wanted = {utt for utt, number in read_iden_split(split_path).items() if number == SID_SPLITS[split]}
    found = {u.key: u for u in scan_voxceleb(root, ["dev", "test"])}
    utterances = [found[k] for k in sorted(wanted, key=byte_key) if k in found]
    rejected = {k: f"named by {split_path} but not found under {root}" for k in wanted if k not in found}
    logger.info("%s (%s split): %d utterances of %d speakers, %d missing", root, split, len(utterances),
                len({u.speaker for u in utterances}), len(rejected))
    probes = probe_all([(u.key, u.wav) for u in utterances], nj=nj, verify=verify, desc=f"probe {out.name}")
    return finish_prep(out, utterances, probes, extra_bad=rejected, settings=settings)
