"""Prepare MUSAN as data/musan_{noise,music,speech} (noise sources for augmentation).

    python -m speechdistill.bin.prep_musan --corpus-dir /data/musan --out-root data

Each dir gets wav.scp, utt2spk, spk2utt, utt2num_samples, reco2dur and bad_utts; the music dir
also utt2vocals (Y/N from MUSAN's ANNOTATIONS). --use-vocals false leaves out music with vocals.
A rerun with the same arguments does nothing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from speechdistill.corpora.common import add_prep_options, parse_bool, run_cli, setup_logging
from speechdistill.corpora.musan import CATEGORIES, prepare_musan


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m speechdistill.bin.prep_musan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus-dir", "--corpus_dir", dest="corpus_dir", required=True,
                        help="the musan directory (holding noise/ music/ speech/)")
    parser.add_argument("--out-root", "--out_root", dest="out_root", required=True,
                        help="where musan_<category> dirs are written (e.g. data)")
    parser.add_argument("--categories", nargs="+", choices=CATEGORIES, default=list(CATEGORIES))
    parser.add_argument("--use-vocals", "--use_vocals", dest="use_vocals", type=parse_bool, default=True,
                        help="keep music with vocals (true|false, default true)")
    add_prep_options(parser)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        setup_logging(args.log or Path(args.out_root) / "log" / "prep_musan.log")
        results = prepare_musan(args.corpus_dir, args.out_root, categories=args.categories,
                                use_vocals=args.use_vocals, nj=args.nj, verify=args.verify)
        for result in results.values():
            print(result.summary())
        return 0

    return run_cli("prep_musan", body)


if __name__ == "__main__":
    sys.exit(main())
