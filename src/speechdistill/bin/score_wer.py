"""Score a hypothesis ``text`` file against a reference ``text`` file (WER, or CER with --cer).

Prints Kaldi ``compute-wer``-style lines, the first being the summary
``%WER x.xx [ errors / words, ins, del, sub ]``; utterances missing from the hypothesis are
scored as all deletions and listed, hypotheses without a reference are listed and not scored.
``--result-txt`` writes every per-utterance alignment (sclite ``result.txt`` manner).
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from speechdistill.data.tables import atomic_write_text
from speechdistill.metrics.wer import score_files


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m speechdistill.bin.score_wer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", required=True, help="reference Kaldi text file: '<utt-id> <transcript>' lines")
    parser.add_argument("--hyp", required=True, help="hypothesis Kaldi text file, same form")
    parser.add_argument("--cer", action="store_true",
                        help="score characters (the space between words counts as one) instead of words")
    parser.add_argument("--result-txt", default=None, metavar="OUT",
                        help="write the summary and every per-utterance alignment to this file")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = score_files(args.ref, args.hyp, unit="char" if args.cer else "word")
        if args.result_txt:
            atomic_write_text(args.result_txt, report.result_txt(args.ref, args.hyp))
    except (ValueError, OSError) as exc:
        print(f"score_wer: error: {exc}", file=sys.stderr)
        return 1
    print(report.summary_line())
    print(report.sentence_line())
    print(report.scored_line())
    for line in report.notice_lines():
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
