"""Prepare RIRS_NOISES room impulse responses as data/rirs, keeping the room type.

    python -m speechdistill.bin.prep_rirs --corpus-dir /data/RIRS_NOISES --out data/rirs

Reads the rir_list files; writes wav.scp, utt2spk, spk2utt, utt2num_samples, reco2dur,
utt2room (smallroom|mediumroom|largeroom|real), utt2room_id, utt2rt60 (when listed) and
bad_utts. --rooms picks room types (default: every type whose rir_list exists). A rerun
with the same arguments does nothing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from speechdistill.corpora.common import add_prep_options, run_cli, setup_logging
from speechdistill.corpora.rirs import ROOM_LISTS, prepare_rirs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m speechdistill.bin.prep_rirs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus-dir", "--corpus_dir", dest="corpus_dir", required=True,
                        help="RIRS_NOISES, or the directory that contains it")
    parser.add_argument("--out", required=True, help="output data dir (e.g. data/rirs)")
    parser.add_argument("--rooms", nargs="+", choices=tuple(ROOM_LISTS), default=None,
                        help="room types (default: all whose rir_list exists)")
    add_prep_options(parser)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        out = Path(args.out)
        setup_logging(args.log or out.parent / "log" / f"prep_rirs.{out.name}.log")
        result = prepare_rirs(args.corpus_dir, str(out), rooms=args.rooms, nj=args.nj, verify=args.verify)
        print(result.summary())
        return 0

    return run_cli("prep_rirs", body)


if __name__ == "__main__":
    sys.exit(main())
