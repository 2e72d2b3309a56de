"""Prepare VoxCeleb1/2 subsets as one Kaldi data dir, optionally with a trial list.

    python -m speechdistill.bin.prep_voxceleb --corpus-dir /data/voxceleb2 --subsets dev --out data/train
    python -m speechdistill.bin.prep_voxceleb --corpus-dir /data/voxceleb1 --subsets test \\
        --trials /data/voxceleb1/veri_test2.txt --out data/vox1_O

Utterance ids are WeSpeaker's: ``<spk>/<video>/<NNNNN>.wav``, the names of the official trial
lists. VoxCeleb2's m4a files are converted once to 16 kHz FLAC under --flac-dir (default
dump/flac/<out name> beside the data dir's parent) by --nj ffmpeg processes, with a progress
bar; an interrupted conversion resumes, and a file ffmpeg cannot read is listed in bad_utts with
the reason. --m4a pipe reads them through ffmpeg pipes instead (no disk, slow reads). With --trials the data dir also
gets ``trials`` (``enroll test target|nontarget``) and ``bad_trials`` (trials naming an
unreadable or absent utterance, with the reason). A rerun with the same arguments does nothing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from speechdistill.corpora.common import add_prep_options, parse_bool, run_cli, setup_logging
from speechdistill.corpora.voxceleb import prepare_voxceleb


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m speechdistill.bin.prep_voxceleb", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus-dir", "--corpus_dir", dest="corpus_dir", required=True,
                        help="VoxCeleb1 or VoxCeleb2 root (holding dev/ and test/)")
    parser.add_argument("--subsets", nargs="+", required=True, choices=("dev", "test"), help="subsets to merge")
    parser.add_argument("--trials", default=None,
                        help="trial list (official '1|0 enroll test' or Kaldi 'enroll test target|nontarget')")
    parser.add_argument("--trial-utts-only", "--trial_utts_only", dest="trial_utts_only", type=parse_bool,
                        default=False, help="keep only utterances the trials name (true|false, default false)")
    parser.add_argument("--out", required=True, help="output data dir")
    parser.add_argument("--m4a", choices=("flac", "pipe"), default="flac",
                        help="VoxCeleb2 m4a audio: convert once to FLAC (default) or read through ffmpeg pipes")
    parser.add_argument("--flac-dir", "--flac_dir", dest="flac_dir", default=None,
                        help="where converted FLAC files go (default: dump/flac/<out name> beside the data dir's "
                             "parent, e.g. data/train -> dump/flac/train)")
    add_prep_options(parser)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        out = Path(args.out)
        setup_logging(args.log or out.parent / "log" / f"prep_voxceleb.{out.name}.log")
        result = prepare_voxceleb(args.corpus_dir, args.subsets, str(out), nj=args.nj, verify=args.verify,
                                  trials_file=args.trials, trial_utts_only=args.trial_utts_only, m4a=args.m4a,
                                  flac_dir=args.flac_dir)
        print(result.summary())
        return 0

    return run_cli("prep_voxceleb", body)


if __name__ == "__main__":
    sys.exit(main())
