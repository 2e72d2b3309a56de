r"""Prepare the SUPERB-style probe corpora as Kaldi data dirs with each task's targets.

    python -m speechdistill.bin.prep_superb ks --corpus-dir /data/speech_commands_v0.01 --split train \
        --out data/ks_train [--test-dir /data/speech_commands_test_set_v0.01]
    python -m speechdistill.bin.prep_superb ic --corpus-dir /data/fluent_speech_commands_dataset --split test \
        --out data/ic_test
    python -m speechdistill.bin.prep_superb sid --corpus-dir /data/VoxCeleb1 --iden-split /data/iden_split.txt \
        --split dev --out data/sid_dev
    python -m speechdistill.bin.prep_superb pr --data data/train --out data/pr_train [--lexicon lexicon.txt] \
        [--stress remove|keep] [--oov spn|drop]

ks: Speech Commands v1.0 (12 classes in utt2label; speechdistill.corpora.speech_commands); ic: Fluent Speech
Commands (utt2intent); sid: VoxCeleb1's iden_split.txt (the speaker is the label); pr: a copy of a data dir
with a ``phones`` file made from its ``text`` with a pronunciation lexicon (speechdistill.corpora.lexicon).
A rerun with the same arguments does nothing. Prints one summary line.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from speechdistill.corpora.common import add_prep_options, run_cli, setup_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m speechdistill.bin.prep_superb", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    tasks = parser.add_subparsers(dest="task", required=True)
    for name, corpus in (("ks", "speech_commands_v0.01 root"), ("ic", "fluent_speech_commands_dataset"),
                         ("sid", "VoxCeleb1 root (dev/, test/)")):
        sub = tasks.add_parser(name)
        sub.add_argument("--corpus-dir", "--corpus_dir", dest="corpus_dir", required=True, help=corpus)
        sub.add_argument("--split", choices=("train", "dev", "test"), required=True)
        sub.add_argument("--out", required=True, help="output data dir")
        if name == "ks":
            sub.add_argument("--test-dir", default=None, help="speech_commands_test_set_v0.01 (SUPERB's test set); "
                                                              "default: testing_list.txt of the corpus")
            sub.add_argument("--clip-dir", default=None, help="where the 1-s silence clips go (default: "
                                                              "<out>/../../dump/speech_commands_silence/<split>)")
        if name == "sid":
            sub.add_argument("--iden-split", required=True, help="VoxCeleb1 iden_split.txt")
        add_prep_options(sub)
    sub = tasks.add_parser("pr")
    sub.add_argument("--data", required=True, help="data dir with word transcripts (text)")
    sub.add_argument("--out", required=True, help="output data dir (the same plus phones)")
    sub.add_argument("--lexicon", nargs="*", default=[], help="lexicon files (WORD PH1 PH2 ...) consulted before "
                                                              "CMUdict, e.g. OpenSLR 11 librispeech-lexicon.txt")
    sub.add_argument("--stress", choices=("remove", "keep"), default="remove",
                     help="remove: 39 ARPAbet phones (default); keep: stressed vowels, s3prl libriphone's set")
    sub.add_argument("--oov", choices=("spn", "drop"), default="spn",
                     help="a word no lexicon knows: one SPN phone (default) or drop the utterance")
    sub.add_argument("--log", default=None)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        out = Path(args.out)
        setup_logging(args.log or out.parent / "log" / f"prep_superb.{args.task}.{out.name}.log")
        if args.task == "ks":
            from speechdistill.corpora.speech_commands import prepare_speech_commands
            result = prepare_speech_commands(args.corpus_dir, args.split, str(out), test_dir=args.test_dir,
                                             clip_dir=args.clip_dir, nj=args.nj, verify=args.verify)
        elif args.task == "ic":
            from speechdistill.corpora.fluent_commands import prepare_fluent_commands
            result = prepare_fluent_commands(args.corpus_dir, args.split, str(out), nj=args.nj, verify=args.verify)
        elif args.task == "sid":
            from speechdistill.corpora.voxceleb import prepare_voxceleb_sid
            result = prepare_voxceleb_sid(args.corpus_dir, args.iden_split, args.split, str(out), nj=args.nj,
                                          verify=args.verify)
        else:
            from speechdistill.corpora.lexicon import prepare_phone_dir
            result = prepare_phone_dir(args.data, str(out), lexicons=args.lexicon, stress=args.stress, oov=args.oov)
        print(result.summary())
        return 0

    return run_cli("prep_superb", body)


if __name__ == "__main__":
    sys.exit(main())
