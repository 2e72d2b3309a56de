r"""Score every decode dir of an ASR experiment (WER and CER) and write its RESULTS.md.

    python -m speechdistill.bin.asr_score --exp-dir exp/asr_distilhubert

Each decode dir under the experiment (written by asr_decode: ``text`` + ``decode_info.json``) is
scored against the ``text`` of the data dir it decoded: ``score_wer/result.txt`` and
``score_cer/result.txt`` get the summary, the table row and the per-utterance alignments.
``<exp-dir>/RESULTS.md`` gets one row per test set x condition in ESPnet's table format.
Prints one ``%WER`` / ``%CER`` line per decode dir. Utterances without a hypothesis count as all
deletions and are named.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m speechdistill.bin.asr_score", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp-dir", required=True, help="ASR experiment dir holding decode dirs (exp/asr_<tag>)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from speechdistill.asr.results import score_experiment

    try:
        path, scored = score_experiment(args.exp_dir)
    except (ValueError, OSError) as exc:
        print(f"asr_score: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    width = max(len(s.name) for s in scored)
    for s in scored:
        print(f"{s.name:<{width}}  {s.reports['word'].summary_line()}  {s.reports['char'].summary_line()}")
        for line in s.reports["word"].notice_lines():
            print(f"{s.name:<{width}}  {line}")
    print(f"asr_score: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
