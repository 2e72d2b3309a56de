"""Prepare LibriSpeech parts as one Kaldi data dir (ESPnet-compatible ids, speaker = reader-chapter).

    python -m speechdistill.bin.prep_librispeech --corpus-dir /data/LibriSpeech \\
        --parts train-clean-100 --out data/train

Writes wav.scp (FLAC paths), text, utt2spk, spk2utt, utt2num_samples, utt2wav_hash,
spk2gender (from SPEAKERS.TXT) and bad_utts (unreadable audio, with the reason). A rerun with
the same arguments does nothing. Prints one summary line.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from speechdistill.corpora.common import add_prep_options, run_cli, setup_logging
from speechdistill.corpora.librispeech import PARTS, prepare_librispeech


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m speechdistill.bin.prep_librispeech", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus-dir", "--corpus_dir", dest="corpus_dir", required=True,
                        help="the LibriSpeech directory holding the parts")
    parser.add_argument("--parts", nargs="+", required=True,
                        help=f"parts merged into the data dir (e.g. {' '.join(PARTS)})")
    parser.add_argument("--out", required=True, help="output data dir")
    add_prep_options(parser)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        out = Path(args.out)
        setup_logging(args.log or out.parent / "log" / f"prep_librispeech.{out.name}.log")
        result = prepare_librispeech(args.corpus_dir, args.parts, str(out), nj=args.nj, verify=args.verify)
        print(result.summary())
        return 0

    return run_cli("prep_librispeech", body)


if __name__ == "__main__":
    sys.exit(main())
