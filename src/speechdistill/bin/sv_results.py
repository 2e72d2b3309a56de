"""Collect the EER and minDCF of every scored trial list of an experiment into RESULTS.md.

    python -m speechdistill.bin.sv_results --output exp/sv_oskdft_paper/RESULTS.md \\
        --list vox1_O exp/sv_oskdft_paper/scores/vox1_O.score data/test/trials \\
        [--list NAME SCORES TRIALS ...] [--model-dir exp/sv_oskdft_paper/sv_model] \\
        [--stage-times exp/sv_oskdft_paper/stage_times.txt] [--note "scoring: cosine"]

For each list: EER (%) and minDCF at p_target 0.01 and 0.05 (C_miss = C_fa = 1), the same numbers
compute_eer prints, and a DET curve PNG (--det-dir, default det/ beside RESULTS.md). Every trial
must have a score; a missing one is an error naming the pair. The table is printed too.

The same trial lists scored under test conditions (the recipe's --test_conditions: enrolment and test
audio corrupted) are given with --condition-list NAME CONDITION SCORES TRIALS (NAME as in its --list):

    ... --list vox1_O exp/x/scores/vox1_O.score data/vox1_O/trials \
        --condition-list vox1_O snr5 exp/x/scores/vox1_O_snr5.score data/vox1_O/trials

RESULTS.md then also has a table with a row per trial list and one EER / minDCF (first --p-target) column
pair per condition.

Several systems on one trial list (make demo-sv) instead of several lists of one system:

    python -m speechdistill.bin.sv_results --output exp/demo/RESULTS.md --det exp/demo/det.png \\
        --system oskdft exp/demo/oskdft/scores/test.score data/test/trials exp/demo/oskdft/sv_model \\
        --system fbank exp/demo/fbank/scores/test.score data/test/trials exp/demo/fbank/sv_model

gives one row per system (encoder, parameters, EER, minDCF) and one DET figure with every system;
--system-condition NAME CONDITION SCORES adds the system's scores on the same trials under a test
condition (one EER / minDCF column pair per condition).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m speechdistill.bin.sv_results", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="RESULTS.md to write")
    parser.add_argument("--list", dest="lists", nargs=3, action="append", default=[],
                        metavar=("NAME", "SCORES", "TRIALS"), help="a trial list: its name, score file and trials")
    parser.add_argument("--condition-list", "--condition_list", dest="condition_lists", nargs=4, action="append",
                        default=[], metavar=("NAME", "CONDITION", "SCORES", "TRIALS"),
                        help="a trial list (NAME as in its --list) scored under a test condition (e.g. snr5)")
    parser.add_argument("--system", dest="systems", nargs=4, action="append", default=[],
                        metavar=("NAME", "SCORES", "TRIALS", "MODEL_DIR"),
                        help="compare systems instead (not with --list): a system's name, its score file on the "
                             "shared trial list, the trials and its sv_model dir")
    parser.add_argument("--system-condition", "--system_condition", dest="system_conditions", nargs=3,
                        action="append", default=[], metavar=("NAME", "CONDITION", "SCORES"),
                        help="with --system: that system's score file on the same trials under a test condition")
    parser.add_argument("--det", dest="det_png", default=None,
                        help="with --system: the DET figure of all systems (default: det.png next to the output)")
    parser.add_argument("--title", default=None, help="heading (default: the output's directory name)")
    parser.add_argument("--det-dir", "--det_dir", dest="det_dir", default=None,
                        help="where the DET PNGs go (default: det/ next to the output)")
    parser.add_argument("--model-dir", "--model_dir", dest="model_dir", default=None,
                        help="speaker model directory, to describe the system")
    parser.add_argument("--stage-times", "--stage_times", dest="stage_times", default=None,
                        help="file of '<stage> <seconds> [what]' lines written by the recipe")
    parser.add_argument("--note", dest="notes", action="append", default=[], help="a line to add (repeatable)")
    parser.add_argument("--p-target", "--p_target", dest="p_target", type=float, nargs="+", default=[0.01, 0.05],
                        help="target priors of the minDCF columns (default: 0.01 0.05)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from speechdistill.metrics.verification import sv_results_table
    from speechdistill.sv.results import ScoredList, write_results

    output = Path(args.output)
    if bool(args.lists or args.condition_lists) == bool(args.systems):
        print("sv_results: error: give either --list (trial lists of one system) or --system (systems on one "
              "trial list), not both and not neither", file=sys.stderr)
        return 2
    if args.system_conditions and not args.systems:
        print("sv_results: error: --system-condition adds to a --system; give the system too", file=sys.stderr)
        return 2
    try:
        if args.systems:
            from speechdistill.sv.results import ScoredSystem, write_comparison

            systems = {name: ScoredSystem(name, Path(s), Path(t), Path(m)) for name, s, t, m in args.systems}
            if len(systems) != len(args.systems):
                raise ValueError(f"system names must be unique, got {[name for name, *_ in args.systems]}")
            for name, condition, scores in args.system_conditions:
                if name not in systems:
                    raise ValueError(f"--system-condition {name} {condition}: no --system named {name} (systems: "
                                     f"{', '.join(systems)})")
                systems[name].conditions[condition] = Path(scores)
            table = write_comparison(list(systems.values()),
                                     output, title=args.title or f"Speaker verification: {output.parent.resolve().name}",
                                     det_png=args.det_png or output.parent / "det.png", notes=args.notes,
                                     p_targets=args.p_target)
        else:
            lists = [ScoredList(name, Path(scores), Path(trials)) for name, scores, trials in args.lists]
            lists += [ScoredList(name, Path(scores), Path(trials), condition)
                      for name, condition, scores, trials in args.condition_lists]
            rows = write_results(lists,
                                 output, title=args.title or f"Speaker verification: {output.parent.resolve().name}",
                                 det_dir=args.det_dir, model_dir=args.model_dir, notes=args.notes,
                                 stage_times=args.stage_times, p_targets=args.p_target)
            table = sv_results_table(rows)
    except (ValueError, OSError) as exc:
        print(f"sv_results: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    print(table, end="")
    print(f"sv_results: wrote {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
