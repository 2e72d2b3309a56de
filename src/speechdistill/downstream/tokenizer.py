"""Token inventories for CTC ASR: characters (SUPERB style) and SentencePiece (ESPnet style).

Both write ``<dir>/tokens.txt``, one token per line, line number = token id, in ESPnet order:
``<blank>`` (id 0, the CTC blank), ``<unk>`` (id 1), the inventory, ``<sos/eos>`` last
(unused by CTC; kept so the list reads like ESPnet's).

* ``char``: the inventory is ``|`` (word separator, as in SUPERB/fairseq letter dictionaries)
  followed by every non-space character of the training text, most frequent first (ties by
  code point). Case is kept as written. ``encode("AB C")`` gives the ids of ``A B | C``;
  separators go only between words. A literal ``|`` in a transcript is refused.
* ``bpe``: a SentencePiece model trained on the training text (``<dir>/bpe.model``; model type
  ``unigram`` by default, character coverage 1.0 as in ESPnet's ``asr.sh`` stage 5); the
  inventory is the SentencePiece vocabulary minus its ``<unk>``, ``<s>``, ``</s>``.

Decoding drops ``<blank>`` and ``<sos/eos>`` and writes ``<unk>`` as ``⁇``.
"""
from __future__ import annotations

import abc
import collections
import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Iterable, List, Literal, Sequence, Union

from ..data.tables import DataDirError, atomic_write_text, read_table

PathLike = Union[str, os.PathLike]
BLANK, UNK, SOS_EOS, WORD_SEPARATOR = "<blank>", "<unk>", "<sos/eos>", "|"
UNK_TEXT = "⁇"
TOKENS_FILE, BPE_MODEL_FILE = "tokens.txt", "bpe.model"


class TokenizerError(ValueError):
    """A token list or model that is missing, malformed, or cannot be built from the text."""


class Tokenizer(abc.ABC):
    """Common part: the token list, id lookups and the special ids."""

    token_type = ""
    blank_id = 0
    unk_id = 1

    def __init__(self, tokens: Sequence[str]) -> None:
        self.tokens: List[str] = list(tokens)
        self.index: Dict[str, int] = {token: i for i, token in enumerate(self.tokens)}
        self.sos_eos_id = len(self.tokens) - 1

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @abc.abstractmethod
    def encode(self, text: str) -> List[int]:
        """Token ids ``[S]`` of a transcript."""

    @abc.abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """Transcript of token ids (blank and ``<sos/eos>`` dropped, words single-spaced)."""

    def _content_ids(self, ids: Iterable[int]) -> List[int]:
        out = []
        for token_id in ids:
            token_id = int(token_id)
            if not 0 <= token_id < len(self.tokens):
                raise ValueError(f"token id {token_id} is outside the vocabulary of {len(self.tokens)} tokens")
            if token_id not in (self.blank_id, self.sos_eos_id):
                out.append(token_id)
        return out


class CharTokenizer(Tokenizer):
    token_type = "char"

    def __init__(self, tokens: Sequence[str]) -> None:
        super().__init__(tokens)
        self.separator_id = self.index[WORD_SEPARATOR]

    @classmethod
    def build(cls, texts: Iterable[str]) -> "CharTokenizer":
        counts: collections.Counter = collections.Counter()
        for line_number, text in enumerate(texts, start=1):
            if WORD_SEPARATOR in text:
                raise TokenizerError(f"transcript {line_number} contains '{WORD_SEPARATOR}', the word separator of the "
                                     "char tokenizer. Fix: remove or replace it in the text")
            counts.update(char for char in text if not char.isspace())
        if not counts:
            raise TokenizerError("the training text has no characters; cannot build a char token list")
        inventory = sorted(counts, key=lambda char: (-counts[char], ord(char)))
        return cls([BLANK, UNK, WORD_SEPARATOR] + inventory + [SOS_EOS])

    def encode(self, text: str) -> List[int]:
        ids: List[int] = []
        for position, word in enumerate(text.split()):
            if position:
                ids.append(self.separator_id)
            ids.extend(self.index.get(char, self.unk_id) for char in word)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        pieces = []
        for token_id in self._content_ids(ids):
            if token_id == self.separator_id:
                pieces.append(" ")
            elif token_id == self.unk_id:
                pieces.append(UNK_TEXT)
            else:
                pieces.append(self.tokens[token_id])
        return " ".join("".join(pieces).split())


class BpeTokenizer(Tokenizer):
    token_type = "bpe"

    def __init__(self, tokens: Sequence[str], model_path: PathLike) -> None:
        import sentencepiece

        super().__init__(tokens)
        self.model_path = Path(model_path)
        self.processor = sentencepiece.SentencePieceProcessor()
        try:
            self.processor.load(str(self.model_path))
        except (OSError, RuntimeError) as exc:
            raise TokenizerError(f"{self.model_path}: cannot load the SentencePiece model ({exc})") from None
        self._unk_piece = self.processor.id_to_piece(self.processor.unk_id())

    def encode(self, text: str) -> List[int]:
        return [self.index.get(piece, self.unk_id) for piece in self.processor.encode(text, out_type=str)]

    def decode(self, ids: Iterable[int]) -> str:
        pieces = [self._unk_piece if i == self.unk_id else self.tokens[i] for i in self._content_ids(ids)]
        return " ".join(self.processor.decode_pieces(pieces).split())


def read_data_dir_text(data_dir: PathLike) -> List[str]:
    """Transcripts of ``<data_dir>/text`` without their utterance ids (empty ones skipped)."""
    try:
        table = read_table(Path(data_dir) / "text", allow_empty_value=True)
    except DataDirError as exc:
        raise TokenizerError(str(exc)) from None
    return [text for text in table.values() if text.strip()]


def _write_tokens(out_dir: Path, tokens: Sequence[str]) -> None:
    atomic_write_text(out_dir / TOKENS_FILE, "".join(f"{token}\n" for token in tokens))


def train_char(texts: Iterable[str], out_dir: PathLike) -> CharTokenizer:
    """Build a char token list from ``texts`` and write ``<out_dir>/tokens.txt``."""
    tokenizer = CharTokenizer.build(texts)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_tokens(out_dir, tokenizer.tokens)
    return tokenizer


def train_bpe(texts: Iterable[str], out_dir: PathLike, vocab_size: int = 5000,
              model_type: Literal["unigram", "bpe", "char", "word"] = "unigram") -> BpeTokenizer:
    """Train SentencePiece on ``texts``; write ``<out_dir>/bpe.model`` and ``tokens.txt``.

    ``vocab_size`` is SentencePiece's (it includes ``<unk>``, ``<s>``, ``</s>``), so
    ``tokens.txt`` has ``vocab_size`` lines: minus 3, plus ``<blank>``, ``<unk>``, ``<sos/eos>``.
    """
    import sentencepiece

    texts = [text for text in texts if text.strip()]
    if not texts:
        raise TokenizerError("the training text is empty; cannot train a SentencePiece model")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".bpe_train.", dir=str(out_dir)))
    try:
        corpus = work / "train_text.txt"
        corpus.write_text("".join(f"{text}\n" for text in texts), encoding="utf-8")
        try:
            sentencepiece.SentencePieceTrainer.train(
                input=str(corpus), model_prefix=str(work / "bpe"), vocab_size=vocab_size, model_type=model_type,
                character_coverage=1.0, input_sentence_size=100000000, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                minloglevel=2, num_threads=1)
        except RuntimeError as exc:
            reason = str(exc).rstrip(".")
            raise TokenizerError(f"SentencePiece training with vocab_size={vocab_size}, model_type={model_type} "
                                 f"failed: {reason}. Fix: lower the vocabulary size (the training text is too small "
                                 "for it) or use token type 'char'") from None
        processor = sentencepiece.SentencePieceProcessor()
        processor.load(str(work / "bpe.model"))
        pieces = [processor.id_to_piece(i) for i in range(3, processor.get_piece_size())]
        os.replace(work / "bpe.model", out_dir / BPE_MODEL_FILE)
        _write_tokens(out_dir, [BLANK, UNK] + pieces + [SOS_EOS])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return load_tokenizer(out_dir)


def load_tokenizer(token_dir: PathLike) -> Tokenizer:
    """Load ``<token_dir>/tokens.txt`` (and ``bpe.model`` when present: then it is a BPE tokenizer)."""
    token_dir = Path(token_dir)
    path = token_dir / TOKENS_FILE
    if not path.is_file():
        raise TokenizerError(f"{path}: token list not found. Fix: run the tokenizer stage (token type char or bpe) "
                             "for this directory first")
    tokens = path.read_text(encoding="utf-8").split("\n")
    if tokens and tokens[-1] == "":
        tokens.pop()
    for number, token in enumerate(tokens, start=1):
        if not token or any(char.isspace() for char in token):
            raise TokenizerError(f"{path}:{number}: a token must be non-empty and contain no whitespace, found "
                                 f"{token!r}")
    if len(tokens) < 4 or tokens[0] != BLANK or tokens[1] != UNK or tokens[-1] != SOS_EOS:
        raise TokenizerError(f"{path}: expected '{BLANK}' first, '{UNK}' second and '{SOS_EOS}' last with the "
                             "inventory between. Fix: rebuild it with the tokenizer stage")
    duplicates = [token for token, count in collections.Counter(tokens).items() if count > 1]
    if duplicates:
        raise TokenizerError(f"{path}: token '{duplicates[0]}' appears more than once")
    model = token_dir / BPE_MODEL_FILE
    if model.is_file():
        return BpeTokenizer(tokens, model)
    if WORD_SEPARATOR not in tokens:
        raise TokenizerError(f"{path}: a char token list must contain the word separator '{WORD_SEPARATOR}', and a "
                             f"BPE one needs {model} beside it")
    return CharTokenizer(tokens)


def build_tokenizer(token_type: Literal["char", "bpe"], data_dir: PathLike, out_dir: PathLike,
                    vocab_size: int = 5000, model_type: str = "unigram") -> Tokenizer:
    """Train a tokenizer of ``token_type`` on ``<data_dir>/text`` into ``out_dir``."""
    texts = read_data_dir_text(data_dir)
    if token_type == "char":
        return train_char(texts, out_dir)
    if token_type == "bpe":
        return train_bpe(texts, out_dir, vocab_size=vocab_size, model_type=model_type)  # type: ignore[arg-type]
    raise TokenizerError(f"unknown token type '{token_type}'; expected 'char' or 'bpe'")
