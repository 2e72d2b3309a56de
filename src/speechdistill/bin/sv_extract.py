"""Speaker embeddings of a data dir with a trained speaker model, to kaldiio xvector.ark/scp.

    python -m speechdistill.bin.sv_extract --model-dir exp/sv_oskdft_paper/sv_model --data data/test \\
        --output-dir exp/sv_oskdft_paper/embeddings/test [--tta-segments 5 --segment-seconds 3]

Each utterance is embedded whole; with --tta-segments S each entry is a [1+S, E] matrix (row 0 the
full utterance, then S equally spaced segments), which score_trials scores as the mean of the
full-utterance cosine and the mean segment-pair cosine. A rerun with the same model, data,
options and condition does nothing (--force recomputes). Progress goes to stderr, a log to
OUTPUT_DIR/extract.log.

Under a test condition every utterance is corrupted before it is embedded:

    python -m speechdistill.bin.sv_extract --model-dir exp/sv_x/sv_model --data data/test \
        --output-dir exp/sv_x/embeddings/test_snr5 --condition snr5 --noise-data data/musan_noise --seed 0

``snr<N>`` (noise of --noise-data, white noise without it), ``reverb`` (--rir-data), ``babble`` (3-7 talkers
of --babble-data at 13-20 dB) or ``babble<N>``; each utterance's corruption is seeded from --seed, the
condition and the utterance id alone, so every system embedded with the same seed hears the same audio.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from speechdistill.augment.conditions import add_condition_arguments
from speechdistill.sv.extract import ExtractOptions


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m speechdistill.bin.sv_extract", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", "--model_dir", dest="model_dir", required=True,
                        help="speaker model directory written by sv_train (<exp>/sv_model)")
    parser.add_argument("--data", required=True, help="Kaldi data dir (wav.scp, utt2num_samples[, segments])")
    parser.add_argument("--output-dir", "--output_dir", dest="output_dir", required=True,
                        help="where xvector.ark, xvector.scp, extract.log and skipped_utts.txt go")
    parser.add_argument("--tta-segments", "--tta_segments", dest="tta_segments", type=int, default=0,
                        help="segments per utterance for test-time augmentation (OS-KDFT: 5); 0 = off (default)")
    parser.add_argument("--segment-seconds", "--segment_seconds", dest="segment_seconds", type=float, default=3.0,
                        help="length of a TTA segment in seconds (default 3)")
    parser.add_argument("--batch-seconds", "--batch_seconds", dest="batch_seconds", type=float, default=120.0,
                        help="padded audio per batch in seconds (default 120)")
    parser.add_argument("--max-seconds", "--max_seconds", dest="max_seconds", type=float, default=300.0,
                        help="an utterance longer than this is embedded from its first MAX seconds, with a message "
                             "naming it (default 300; 0 = whole utterances, however long)")
    parser.add_argument("--pipe-timeout", "--pipe_timeout", dest="pipe_timeout", type=float, default=None,
                        metavar="SECONDS", help="a wav.scp command running longer is killed and its utterance "
                                                "skipped (default: $SPEECHDISTILL_PIPE_TIMEOUT or 120; 0 = no limit)")
    parser.add_argument("--num-workers", "--num_workers", dest="num_workers", type=int, default=1,
                        help="audio loading processes (default 1; 0 = in this process)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: auto")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="fp32",
                        help="autocast precision (default fp32; auto: bf16 where the hardware has it)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch's default)")
    parser.add_argument("--force", action="store_true", help="recompute even when the outputs are up to date")
    add_condition_arguments(parser)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from speechdistill.augment.conditions import condition_from_arguments
    from speechdistill.sv.extract import extract_embeddings
    from speechdistill.sv.model import load_sv_model
    from speechdistill.train.precision import autocast_dtype, resolve_device, resolve_precision

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        options = ExtractOptions(batch_seconds=args.batch_seconds, tta_segments=args.tta_segments,
                                 segment_seconds=args.segment_seconds, num_workers=args.num_workers,
                                 max_seconds=args.max_seconds if args.max_seconds > 0 else None,
                                 pipe_timeout=args.pipe_timeout)
        options.validate()
        device = resolve_device(args.device)
        precision = resolve_precision(args.precision, device)
        condition = condition_from_arguments(args)
        embedder = load_sv_model(args.model_dir)
        result = extract_embeddings(embedder, args.model_dir, args.data, args.output_dir, options=options,
                                    device=device, autocast_dtype=autocast_dtype(precision), force=args.force,
                                    condition=condition, condition_seed=args.seed)
    except (ValueError, OSError) as exc:
        print(f"sv_extract: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    if result.already_done:
        print(f"sv_extract: {result.scp} is up to date ({result.num_utts} embeddings); nothing to do "
              "(--force recomputes)", file=sys.stderr)
        return 0
    print(f"sv_extract: wrote {result.num_utts} embeddings{'' if condition.is_clean else f' ({condition.name})'} to "
          f"{result.scp} in {result.seconds:.1f} s "
          f"({result.audio_seconds / max(result.seconds, 1e-9):.1f} audio-s/s, {precision})"
          + (f"; {len(result.skipped)} utterance(s) skipped, listed in {result.scp.parent / 'skipped_utts.txt'}"
             if result.skipped else "")
          + (f"; {len(result.cut)} longer than --max-seconds embedded from their start (see extract.log)"
             if result.cut else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
