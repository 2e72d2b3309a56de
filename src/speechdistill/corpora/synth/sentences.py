"""A small grammar that writes plain English sentences from our own word list (``words.txt``).

Sentences are built from clauses (subject, verb, object, optional adjectives, adverbs and
prepositional phrases) joined by conjunctions until a target length in words is reached.
The output is upper case without punctuation, as LibriSpeech transcripts are.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

WORDS_FILE = Path(__file__).with_name("words.txt")


@lru_cache(maxsize=1)
def load_words(path: str = str(WORDS_FILE)) -> Dict[str, Tuple[str, ...]]:
    """Part of speech -> words, from the ``[section]`` file."""
    sections: Dict[str, List[str]] = {}
    current = None
    for number, raw in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        header = re.fullmatch(r"\[(\w+)\]", line)
        if header:
            current = sections.setdefault(header.group(1), [])
        elif current is None:
            raise ValueError(f"{path}:{number}: words before the first [section] header")
        else:
            current.extend(line.split())
    return {name: tuple(words) for name, words in sections.items()}


def vocabulary() -> set:
    return {w for words in load_words().values() for w in words}


class SentenceGenerator:
    """Seeded sentences: ``generator.sentence(min_words, max_words)`` -> ``'THE OLD MAN ...'``."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.words = load_words()

    def _pick(self, section: str) -> str:
        words = self.words[section]
        return words[int(self.rng.integers(len(words)))]

    def _noun_phrase(self) -> List[str]:
        if self.rng.random() < 0.2:
            return [self._pick("name")]
        phrase = [self._pick("determiner")]
        for _ in range(int(self.rng.choice([0, 1, 1, 2]))):
            phrase.append(self._pick("adjective"))
        phrase.append(self._pick("noun"))
        return phrase

    def _clause(self) -> List[str]:
        words = self._noun_phrase()
        if self.rng.random() < 0.25:
            words.append(self._pick("adverb"))
        if self.rng.random() < 0.6:
            words.append(self._pick("verb_transitive"))
            words += self._noun_phrase()
        else:
            words.append(self._pick("verb_intransitive"))
        if self.rng.random() < 0.5:
            words.append(self._pick("preposition"))
            words += self._noun_phrase()
        if self.rng.random() < 0.2:
            words.append(self._pick("adverb"))
        return words

    def sentence(self, min_words: int = 6, max_words: int = 24) -> str:
        target = int(self.rng.integers(min_words, max_words + 1))
        words = self._clause()
        while len(words) < target:
            words.append(self._pick("conjunction"))
            words += self._clause()
        return " ".join(words).upper()
