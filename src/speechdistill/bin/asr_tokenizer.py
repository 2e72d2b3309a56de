r"""Build the token list of the ASR probe from a data dir's transcripts.

    python -m speechdistill.bin.asr_tokenizer --token-type char --data data/train --out data/token_list/char
    python -m speechdistill.bin.asr_tokenizer --token-type bpe --vocab-size 300 --data data/train \
        --out data/token_list/bpe_unigram300

Writes ``<out>/tokens.txt`` in ESPnet order (``<blank>``, ``<unk>``, inventory, ``<sos/eos>``) and,
for bpe, ``<out>/bpe.model`` (SentencePiece, character coverage 1.0). A rerun with the same
settings and the same training text does nothing; other settings or text rebuild it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import List, Optional

from speechdistill.data.tables import atomic_write_text

MARKER = "tokenizer_settings.json"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m speechdistill.bin.asr_tokenizer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--token-type", choices=["char", "bpe"], required=True,
                        help="char (SUPERB's default: letters plus '|' between words) or bpe (SentencePiece)")
    parser.add_argument("--data", required=True, help="data dir whose 'text' trains the tokenizer (data/train)")
    parser.add_argument("--out", required=True, help="output dir for tokens.txt (and bpe.model)")
    parser.add_argument("--vocab-size", type=int, default=5000,
                        help="bpe only: SentencePiece vocabulary size (ESPnet LibriSpeech: 5000; tiny corpora "
                             "need a few hundred at most)")
    parser.add_argument("--model-type", choices=["unigram", "bpe"], default="unigram",
                        help="bpe only: SentencePiece model type (ESPnet's default: unigram)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from speechdistill.downstream.tokenizer import BPE_MODEL_FILE, TOKENS_FILE, build_tokenizer

    text_path = Path(args.data) / "text"
    out = Path(args.out)
    try:
        if not text_path.is_file():
            raise ValueError(f"{text_path}: not found. Fix: point --data at a data dir with transcripts "
                             "(the training set of stage 0)")
        settings = {"token_type": args.token_type, "text_sha256": hashlib.sha256(text_path.read_bytes()).hexdigest()}
        if args.token_type == "bpe":
            settings.update(vocab_size=args.vocab_size, model_type=args.model_type)
        marker = out / MARKER
        if (out / TOKENS_FILE).is_file() and marker.is_file() and json.loads(marker.read_text()) == settings:
            print(f"asr_tokenizer: {out / TOKENS_FILE} is up to date ({args.token_type} from {text_path}); "
                  "nothing to do")
            return 0
        if marker.is_file():
            marker.unlink()  # the old token list no longer matches; a crash below must not look finished
        if args.token_type == "char" and (out / BPE_MODEL_FILE).is_file():
            (out / BPE_MODEL_FILE).unlink()  # a bpe.model beside tokens.txt would make it load as bpe
        tokenizer = build_tokenizer(args.token_type, args.data, out, vocab_size=args.vocab_size,
                                    model_type=args.model_type)
        atomic_write_text(marker, json.dumps(settings, indent=1, sort_keys=True) + "\n")
    except ValueError as exc:
        print(f"asr_tokenizer: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    print(f"asr_tokenizer: wrote {out / TOKENS_FILE}: {tokenizer.vocab_size} {args.token_type} tokens from "
          f"{text_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
