"""RIRS_NOISES -> ``data/rirs`` with the room type kept (conventions §3.3).

Read from the ``rir_list`` files, whose lines are
``--rir-id <id> --room-id <room> [--receiver-position-id ..] [--source-position-id ..] [--rt-60 x] [--drr y] <wav>``
with ``<wav>`` relative to the directory that holds ``RIRS_NOISES/``:

* ``RIRS_NOISES/simulated_rirs/{smallroom,mediumroom,largeroom}/rir_list`` -> room types
  ``smallroom``, ``mediumroom``, ``largeroom``;
* ``RIRS_NOISES/real_rirs_isotropic_noises/rir_list`` -> room type ``real``.

The data dir holds ``wav.scp``, ``utt2spk`` (each RIR its own speaker), ``spk2utt``,
``utt2num_samples``, ``reco2dur``, ``bad_utts`` and the RIR tables ``utt2room`` (room type),
``utt2room_id`` (the ``--room-id``) and ``utt2rt60`` (only RIRs whose line gives ``--rt-60``).
Some real RIRs have several channels; the RIR bank of ``speechdistill.augment`` uses channel 0.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .common import CorpusError, PrepResult, Utterance, check_key, finish_prep, probe_all, resolve_dir, skip_if_done

logger = logging.getLogger("speechdistill.corpora")

ROOM_LISTS = {
    "smallroom": "simulated_rirs/smallroom/rir_list",
    "mediumroom": "simulated_rirs/mediumroom/rir_list",
    "largeroom": "simulated_rirs/largeroom/rir_list",
    "real": "real_rirs_isotropic_noises/rir_list",
}
_VALUED_OPTIONS = ("--rir-id", "--room-id", "--receiver-position-id", "--source-position-id", "--rt-60", "--drr",
                   "--probability")


def parse_rir_line(line: str, where: str) -> Tuple[Dict[str, str], str]:
    """Options (without leading dashes) and the wav path of one ``rir_list`` line."""
    tokens = line.split()
    options: Dict[str, str] = {}
    i = 0
    while i < len(tokens) - 1 and tokens[i].startswith("--"):
        name = tokens[i]
        if name not in _VALUED_OPTIONS:
            raise CorpusError(f"{where}: unknown option '{name}' (known: {', '.join(_VALUED_OPTIONS)}). "
                              "Fix: restore the rir_list from the RIRS_NOISES archive")
        options[name[2:]] = tokens[i + 1]
        i += 2
    if i != len(tokens) - 1 or "rir-id" not in options or "room-id" not in options:
        raise CorpusError(f"{where}: expected '--rir-id <id> --room-id <room> [options] <wav>', found '{line.strip()}'."
                          " Fix: restore the rir_list from the RIRS_NOISES archive")
    if "rt-60" in options:
        try:
            float(options["rt-60"])
        except ValueError:
            raise CorpusError(f"{where}: --rt-60 '{options['rt-60']}' is not a number") from None
    return options, tokens[-1]


def _corpus_parent(root: Path) -> Path:
    if (root / "RIRS_NOISES").is_dir():
        return root
    if root.name == "RIRS_NOISES":
        return root.parent
    raise CorpusError(f"{root} holds no RIRS_NOISES directory. Fix: point at RIRS_NOISES or the directory "
                      "containing it (unzipped rirs_noises.zip)")


def prepare_rirs(corpus_dir: str, out_dir: str, *, rooms: Optional[Sequence[str]] = None, nj: int = 1,
                 verify: str = "tail") -> PrepResult:
    """Prepare the RIRs of the room types ``rooms`` (some of smallroom, mediumroom, largeroom, real).

    ``rooms=None`` takes every type whose ``rir_list`` exists; a type asked for explicitly must exist.
    """
    parent = _corpus_parent(resolve_dir(corpus_dir, "RIRS_NOISES directory",
                                        "point at RIRS_NOISES or the directory containing it"))
    if rooms is None:
        rooms = [room for room, listing in ROOM_LISTS.items() if (parent / "RIRS_NOISES" / listing).is_file()]
        if not rooms:
            raise CorpusError(f"{parent / 'RIRS_NOISES'} holds none of the rir_list files "
                              f"({', '.join(ROOM_LISTS.values())}). Fix: unzip the complete rirs_noises.zip there")
    unknown = [r for r in rooms if r not in ROOM_LISTS]
    if unknown or not rooms:
        raise CorpusError(f"room types {unknown or '(none)'} are not known. Fix: use some of {', '.join(ROOM_LISTS)}")
    out = Path(out_dir)
    settings = {"corpus": str(parent), "rooms": list(rooms), "verify": verify, "kind": "rirs"}
    done = skip_if_done(out, settings)
    if done is not None:
        return done
    utterances: List[Utterance] = []
    room_type: Dict[str, str] = {}
    room_id: Dict[str, str] = {}
    rt60: Dict[str, str] = {}
    for room in rooms:
        list_path = parent / "RIRS_NOISES" / ROOM_LISTS[room]
        if not list_path.is_file():
            raise CorpusError(f"{list_path} not found. Fix: unzip the complete rirs_noises.zip, or leave '{room}' out "
                              "of the room types")
        for number, line in enumerate(list_path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            options, wav = parse_rir_line(line, f"{list_path}:{number}")
            key = options["rir-id"]
            check_key(key, f"{list_path}:{number}")
            if key in room_type:
                raise CorpusError(f"{list_path}:{number}: rir-id '{key}' is listed twice. Fix: remove the duplicate")
            path = Path(wav) if Path(wav).is_absolute() else parent / wav
            room_type[key] = room
            room_id[key] = options["room-id"]
            if "rt-60" in options:
                rt60[key] = options["rt-60"]
            utterances.append(Utterance(key, str(path), key))
        logger.info("%s: %d RIRs", list_path, sum(1 for r in room_type.values() if r == room))
    probes = probe_all([(u.key, u.wav) for u in utterances], nj=nj, verify=verify, desc=f"probe {out.name}")
    multichannel = sum(1 for p in probes if p.error is None and p.channels > 1)
    if multichannel:
        logger.info("%s: %d RIRs have several channels; the RIR bank uses their first channel", out, multichannel)
    counts = {f"{room}": sum(1 for p in probes if p.error is None and room_type[p.key] == room) for room in rooms}
    return finish_prep(out, utterances, probes, settings=settings, reco2dur=True,
                       extra_tables={"utt2room": room_type, "utt2room_id": room_id, "utt2rt60": rt60},
                       extra_summary=counts)
