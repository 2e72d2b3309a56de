"""Kaldi data-directory tools: ``python -m speechdistill.bin.datadir <command> [options] <args>``.

Commands (each is what the ``egs/TEMPLATE/utils`` script of the same role runs):

  validate     validate_data_dir.sh    check a data dir; --check-audio reads every utterance
  fix          fix_data_dir.sh         sort, dedupe, keep utterances present in every file
  subset       subset_data_dir.sh      select utterances (evenly spaced, first, shortest, lists...)
  combine      combine_data.sh         concatenate data dirs
  copy         copy_data_dir.sh        copy with utterance/speaker id prefixes and suffixes
  split        split_data.sh           split into N parts for parallel jobs
  get-lengths  get_utt2num_samples.sh  utt2num_samples + utt2dur from the audio
  spk2utt      utt2spk_to_spk2utt.pl
  utt2spk      spk2utt_to_utt2spk.pl
  filter-scp   filter_scp.pl

``<command> --help`` describes each. Errors print one line and exit 1.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

from speechdistill.data.kaldi_options import HelpRequested, KaldiArgs, Option, UsageError, kaldi_logging
from speechdistill.data.filters import filter_by_ids, read_lines, spk2utt_from_utt2spk, utt2spk_from_spk2utt
from speechdistill.data.tables import DataDirError

logger = logging.getLogger("speechdistill.data")


# ==================================================================================== validate
VALIDATE = KaldiArgs(
    "validate_data_dir.sh", "[options] <data-dir>",
    [Option("no_feats", False, "do not check feats.scp (it is checked when present)", switch=True),
     Option("no_text", False, "the data has no transcripts (text not required)", switch=True),
     Option("non_print", False, "allow non-printable characters in text", switch=True),
     Option("no_wav", False, "wav.scp is not required", switch=True),
     Option("no_spk_sort", False, "do not require utt2spk to be sorted by speaker too", switch=True),
     Option("check_audio", False, "read every utterance's audio; list each unreadable one with its reason",
            switch=True),
     Option("resample", False, "with --check-audio: audio at another rate is resampled, not an error"),
     Option("nj", 1, "with --check-audio: parallel reader processes")],
    min_positional=1,
    description="Checks a Kaldi data directory (conventions §1.4) and reports every problem with file, line, key "
                "and fix. Exit status 0: valid; 1: problems found.")


def cmd_validate(argv: Sequence[str]) -> int:
    from speechdistill.data.validate import ValidateOptions, validate_data_dir

    opts, (directory,) = VALIDATE.parse(argv)
    report = validate_data_dir(directory, ValidateOptions(
        no_feats=opts["no_feats"], no_text=opts["no_text"], non_print=opts["non_print"], no_wav=opts["no_wav"],
        no_spk_sort=opts["no_spk_sort"], check_audio=opts["check_audio"], resample=opts["resample"],
        nj=max(1, opts["nj"])))
    for warning in report.warnings:
        logger.warning("%s", warning)
    for utt, reason in report.unreadable.items():
        print(f"validate_data_dir.sh: unreadable: {utt}: {reason}", file=sys.stderr)
    for problem in report.problems:
        print(f"validate_data_dir.sh: ERROR: {problem}", file=sys.stderr)
    if report.problems:
        print(f"validate_data_dir.sh: {directory} failed validation: {len(report.problems)} problem(s)",
              file=sys.stderr)
        return 1
    print(f"Successfully validated data-directory {directory}")
    return 0


# ========================================================================================= fix
FIX = KaldiArgs(
    "fix_data_dir.sh", "[options] <data-dir>",
    [Option("utt_extra_files", [], "more utterance-keyed files to filter (repeats accumulate)", is_list=True),
     Option("spk_extra_files", [], "more speaker-keyed files to filter (repeats accumulate)", is_list=True)],
    min_positional=1,
    description="Sorts and de-duplicates every file, keeps only utterances present in every file, regenerates "
                "spk2utt, and says how many utterances each file removed. Old files go to <data-dir>/.backup.")


def cmd_fix(argv: Sequence[str]) -> int:
    from speechdistill.data.fix import fix_data_dir

    opts, (directory,) = FIX.parse(argv)
    fix_data_dir(directory, utt_extra_files=opts["utt_extra_files"], spk_extra_files=opts["spk_extra_files"])
    return 0


# ====================================================================================== subset
SUBSET_SWITCHES = ("first", "last", "shortest", "per_spk", "speakers")
SUBSET = KaldiArgs(
    "subset_data_dir.sh", "[--first|--last|--shortest|--per-spk|--speakers] <src> <N> <dst>\n"
    "   or: subset_data_dir.sh --utt-list <file> <src> <dst>\n"
    "   or: subset_data_dir.sh --spk-list <file> <src> <dst>",
    [Option("first", False, "the first N utterances", switch=True),
     Option("last", False, "the last N utterances", switch=True),
     Option("shortest", False, "the N shortest (needs utt2num_samples, utt2dur or utt2num_frames)", switch=True),
     Option("per_spk", False, "up to N utterances per speaker, evenly spaced", switch=True),
     Option("speakers", False, "whole speakers (seeded shuffle) until N utterances", switch=True),
     Option("utt_list", "", "keep the utterances listed in the first column of this file"),
     Option("spk_list", "", "keep the speakers listed in the first column of this file")],
    min_positional=2, max_positional=3,
    description="Without a mode option: N evenly spaced utterances (deterministic). Filters every file; does not "
                "run fix_data_dir.")


def cmd_subset(argv: Sequence[str]) -> int:
    from speechdistill.data.datadir import DataDir
    from speechdistill.data.operations import read_id_list, subset_data_dir

    opts, positional = SUBSET.parse(argv)
    modes = [m for m in SUBSET_SWITCHES if opts[m]] + [m for m in ("utt_list", "spk_list") if opts[m]]
    if len(modes) > 1:
        raise UsageError(f"give at most one mode option, got {', '.join('--' + m.replace('_', '-') for m in modes)}")
    mode = modes[0].replace("_", "-") if modes else "spaced"
    if mode in ("utt-list", "spk-list"):
        if len(positional) != 2:
            raise UsageError(f"--{mode} takes <src> <dst>, got {len(positional)} argument(s)")
        src, dst = positional
        subset = subset_data_dir(DataDir.load(src), mode, ids=read_id_list(opts[mode.replace("-", "_")]))
    else:
        if len(positional) != 3:
            raise UsageError(f"expected <src> <N> <dst>, got {len(positional)} argument(s)")
        src, num, dst = positional
        try:
            count = int(num)
        except ValueError:
            raise UsageError(f"<N> must be an integer, got '{num}'") from None
        subset = subset_data_dir(DataDir.load(src), mode, count)
    _refuse_same_dir(src, dst)
    subset.save(dst)
    return 0


# ===================================================================================== combine
COMBINE = KaldiArgs(
    "combine_data.sh", "[options] <dest-data-dir> <src-data-dir1> [<src-data-dir2> ...]",
    [Option("extra_files", [], "more utterance-keyed files to combine (repeats accumulate)", is_list=True),
     Option("skip_fix", False, "do not run fix_data_dir on the result")],
    min_positional=2, max_positional=10 ** 6,
    description="Concatenates data dirs. A file is combined only if every source has it (segments and utt2uniq "
                "are synthesised where missing). A duplicate utterance id is an error. The destination is "
                "replaced.")


def cmd_combine(argv: Sequence[str]) -> int:
    from speechdistill.data.datadir import DataDir
    from speechdistill.data.operations import combine_data_dirs
    from speechdistill.data.fix import fix_data_dir

    opts, (dest, *sources) = COMBINE.parse(argv)
    loaded = [DataDir.load(s, utt_extra_files=opts["extra_files"]) for s in sources]
    combine_data_dirs(loaded, extra_files=opts["extra_files"]).save(dest)
    if not opts["skip_fix"]:
        fix_data_dir(dest, utt_extra_files=opts["extra_files"])
    return 0


# ======================================================================================== copy
COPY = KaldiArgs(
    "copy_data_dir.sh", "[options] <src-data-dir> <dest-data-dir>",
    [Option("utt_prefix", "", "prefix for utterance ids"), Option("utt_suffix", "", "suffix for utterance ids"),
     Option("spk_prefix", "", "prefix for speaker ids"), Option("spk_suffix", "", "suffix for speaker ids"),
     Option("validate_opts", "", "options for the validation of the copy, e.g. \"--non-print\"")],
    min_positional=2,
    description="Copies a data dir, mapping utt -> <utt-prefix>utt<utt-suffix> and spk likewise (recording ids "
                "stay when there is a segments file), then validates the copy.")


def cmd_copy(argv: Sequence[str]) -> int:
    from speechdistill.data.datadir import DataDir
    from speechdistill.data.operations import copy_data_dir

    opts, (src, dst) = COPY.parse(argv)
    _refuse_same_dir(src, dst)
    source = DataDir.load(src)
    copy_data_dir(source, utt_prefix=opts["utt_prefix"], utt_suffix=opts["utt_suffix"],
                  spk_prefix=opts["spk_prefix"], spk_suffix=opts["spk_suffix"]).save(dst)
    validate_args = opts["validate_opts"].split()
    if not source.has("feats.scp") and "--no-feats" not in validate_args:
        validate_args.append("--no-feats")
    if not source.has("text") and "--no-text" not in validate_args:
        validate_args.append("--no-text")
    return cmd_validate(validate_args + [dst])


# ======================================================================================= split
SPLIT = KaldiArgs(
    "split_data.sh", "[--per-utt] [--print-nj] <data-dir> <num-parts>",
    [Option("per_utt", False, "split by utterances (default: whole speakers per part)", switch=True),
     Option("print_nj", False, "print the number of parts actually written on stdout", switch=True)],
    min_positional=2,
    description="Writes <data-dir>/split<N>/<1..N>/ (split<N>utt with --per-utt). More parts than speakers (or "
                "utterances) gives fewer parts, with a warning naming the number to use. Skipped when the parts "
                "are newer than the data dir's files.")


def cmd_split(argv: Sequence[str]) -> int:
    from speechdistill.data.datadir import DataDir
    from speechdistill.data.operations import (effective_num_parts, split_data_dir, split_dir_name,
                                               split_is_up_to_date, write_split)

    opts, (directory, num) = SPLIT.parse(argv)
    try:
        wanted = int(num)
    except ValueError:
        raise UsageError(f"<num-parts> must be an integer, got '{num}'") from None
    data = DataDir.load(directory)
    parts = effective_num_parts(data, wanted, per_utt=opts["per_utt"])
    if split_is_up_to_date(Path(directory), parts, opts["per_utt"]):
        logger.info("%s/%s is up to date; nothing to do", directory, split_dir_name(parts, opts["per_utt"]))
    else:
        written = write_split(data, split_data_dir(data, wanted, per_utt=opts["per_utt"]), per_utt=opts["per_utt"])
        logger.info("wrote %d parts to %s", parts, written)
    if opts["print_nj"]:
        print(parts)
    return 0


# ================================================================================= get-lengths
LENGTHS = KaldiArgs(
    "get_utt2num_samples.sh", "[options] <data-dir>",
    [Option("nj", 4, "parallel reader processes"),
     Option("read_entire_file", False, "decode every file instead of reading headers (catches truncated files)"),
     Option("resample", False, "count samples after resampling audio at another rate to 16 kHz "
                               "(otherwise such audio is an error)"),
     Option("allow_failures", False, "exit 0 even if some utterances could not be measured")],
    min_positional=1,
    description="Writes utt2num_samples (samples at 16 kHz), utt2dur (seconds), utt2wav_hash and, with segments, "
                "reco2dur. Plain files are measured from their headers; pipes and archives are decoded. A rerun "
                "measures only utterances whose wav.scp/segments entry changed. Unreadable utterances are left "
                "out, listed, and make the command exit 1 (fix_data_dir.sh then removes them).")


def cmd_get_lengths(argv: Sequence[str]) -> int:
    from speechdistill.data.datadir import DataDir
    from speechdistill.data.lengths import compute_lengths

    opts, (directory,) = LENGTHS.parse(argv)
    log_file = Path(directory) / "log" / "get_utt2num_samples.log"
    kaldi_logging("get_utt2num_samples.sh", log_file)
    data = DataDir.load(directory)
    data.table("wav.scp")
    report = compute_lengths(data, nj=max(1, opts["nj"]), read_entire_file=opts["read_entire_file"],
                             resample=opts["resample"])
    data.save(only=["utt2num_samples", "utt2dur", "utt2wav_hash"] + (["reco2dur"] if "reco2dur" in data.tables else []))
    logger.info("%s: measured %d utterance(s), kept %d unchanged from before, %d failed", directory,
                report.measured, report.reused, len(report.failures))
    for utt, reason in report.failures.items():
        logger.warning("cannot measure %s: %s", utt, reason)
    if report.failures:
        message = (f"{len(report.failures)} utterance(s) could not be measured and are missing from utt2num_samples "
                   f"(list in {log_file}); run utils/fix_data_dir.sh {directory} to drop them, or repair the audio")
        if opts["allow_failures"]:
            logger.warning("%s", message)
            return 0
        raise DataDirError(message)
    return 0


# ================================================================================ byte filters
SPK2UTT = KaldiArgs("utt2spk_to_spk2utt.pl", "[<utt2spk>] > spk2utt", [], min_positional=0, max_positional=1,
                    description="Speakers in order of first appearance, utterances in input order.")
UTT2SPK = KaldiArgs("spk2utt_to_utt2spk.pl", "[<spk2utt>] > utt2spk", [], min_positional=0, max_positional=1,
                    description="One '<utt> <spk>' line per utterance, in spk2utt order.")


def cmd_spk2utt(argv: Sequence[str]) -> int:
    _, paths = SPK2UTT.parse(argv)
    sys.stdout.buffer.write(spk2utt_from_utt2spk(read_lines(paths), paths[0] if paths else "<stdin>"))
    return 0


def cmd_utt2spk(argv: Sequence[str]) -> int:
    _, paths = UTT2SPK.parse(argv)
    sys.stdout.buffer.write(utt2spk_from_spk2utt(read_lines(paths), paths[0] if paths else "<stdin>"))
    return 0


FILTER_USAGE = "[--exclude] [-f <field>] <id-list> [<input> ...] > output"


def cmd_filter_scp(argv: Sequence[str]) -> int:
    """Keep (or with --exclude drop) lines whose field f (1-based) is in the first column of id-list."""
    args = list(argv)
    exclude, field_index = False, 1
    while args and args[0].startswith("-") and args[0] != "-":
        arg = args.pop(0)
        if arg in ("--help", "-h"):
            print(f"Usage: filter_scp.pl {FILTER_USAGE}\nKeeps input lines whose field <field> (1-based, default 1) "
                  "appears in the first column of <id-list>; input order is kept.")
            return 0
        if arg == "--exclude":
            exclude = True
        elif arg == "-f":
            if not args:
                raise UsageError("-f needs a field number")
            try:
                field_index = int(args.pop(0))
            except ValueError:
                raise UsageError("-f needs a positive integer field number") from None
            if field_index < 1:
                raise UsageError("-f: fields are counted from 1")
        else:
            raise UsageError(f"invalid option {arg}. Usage: filter_scp.pl {FILTER_USAGE}")
    if not args:
        raise UsageError(f"missing <id-list>. Usage: filter_scp.pl {FILTER_USAGE}")
    id_path, inputs = args[0], args[1:]
    ids = {line.split()[0] for line in read_lines([id_path]) if line.split()}
    sys.stdout.buffer.write(filter_by_ids(read_lines(inputs), ids, field_index, exclude,
                                          inputs[0] if inputs else "<stdin>"))
    return 0


# ======================================================================================== main
def _refuse_same_dir(src: str, dst: str) -> None:
    if Path(dst).exists() and Path(src).exists() and Path(src).resolve() == Path(dst).resolve():
        raise UsageError(f"source and destination are the same directory ({src})")


COMMANDS: Dict[str, Callable[[Sequence[str]], int]] = {
    "validate": cmd_validate, "fix": cmd_fix, "subset": cmd_subset, "combine": cmd_combine, "copy": cmd_copy,
    "split": cmd_split, "get-lengths": cmd_get_lengths, "spk2utt": cmd_spk2utt, "utt2spk": cmd_utt2spk,
    "filter-scp": cmd_filter_scp,
}
PARSERS = {"validate": VALIDATE, "fix": FIX, "subset": SUBSET, "combine": COMBINE, "copy": COPY, "split": SPLIT,
           "get-lengths": LENGTHS, "spk2utt": SPK2UTT, "utt2spk": UTT2SPK}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 1
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"speechdistill.bin.datadir: unknown command '{command}'; choose one of {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 1
    prog = PARSERS[command].prog if command in PARSERS else "filter_scp.pl"
    kaldi_logging(prog)
    try:
        return COMMANDS[command](rest)
    except HelpRequested:
        print(PARSERS[command].help_text(), end="")
        return 0
    except (DataDirError, UsageError, OSError) as exc:
        print(f"{prog}: ERROR: {' '.join(str(exc).split(chr(10)))}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. '| head'; nothing left to say
        return 0


if __name__ == "__main__":
    sys.exit(main())
