r"""Decode a data dir with an ASR model dir: batched greedy or CTC prefix beam search.

    python -m speechdistill.bin.asr_decode --asr-model exp/asr_x/asr_model --data data/test \
        --output-dir exp/asr_x/decode_greedy/test/snr10 --condition snr10 --noise-data data/musan_noise

Writes ``<output-dir>/text`` (Kaldi text of hypotheses), ``decode_info.json``, ``decode.log`` and
``skipped_utts.txt``; progress shows audio-seconds per second. An utterance longer than
``--max-seconds`` is decoded from its first part, named in the log; one that fails (e.g. out of
memory) is listed in ``skipped_utts.txt`` and every other hypothesis is still written. A rerun with the same model,
data, condition, seed and beam does nothing (``--force`` decodes again).

Test conditions (``--condition``): ``clean``; ``snr<N>`` adds noise at N dB SNR over each
utterance's real length, drawn from the Kaldi noise dir ``--noise-data`` (MUSAN noise of
stage 1), or white noise when none is given; ``reverb`` convolves with a room impulse response
from ``--rir-data`` (RIRS_NOISES of stage 1); ``babble`` (13-20 dB) and ``babble<N>`` add 3-7 talkers
of ``--babble-data`` (MUSAN speech of stage 1). The random choices of each utterance are seeded from
``--seed``, the condition and the utterance id alone, so every model decoded with the same seed
hears the same corrupted audio, whatever the batching.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from speechdistill.augment.conditions import add_condition_arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m speechdistill.bin.asr_decode", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--asr-model", required=True, help="ASR model dir (<asr exp>/asr_model)")
    parser.add_argument("--data", required=True, help="data dir to decode (wav.scp, utt2num_samples)")
    parser.add_argument("--output-dir", required=True, help="where text, decode_info.json and decode.log go")
    parser.add_argument("--upstream", default=None,
                        help="upstream model (default: the one recorded in the ASR model; it must be the same files)")
    add_condition_arguments(parser)
    parser.add_argument("--beam-size", type=int, default=1, help="1 = greedy; more = CTC prefix beam search")
    parser.add_argument("--batch-seconds", type=float, default=200.0,
                        help="seconds of padded audio per batch (raised to --max-seconds when smaller)")
    parser.add_argument("--max-seconds", type=float, default=300.0,
                        help="an utterance longer than this is decoded from its first MAX seconds, with a message "
                             "naming it (default 300; 0 = whole utterances, however long)")
    parser.add_argument("--pipe-timeout", type=float, default=None, metavar="SECONDS",
                        help="a wav.scp command running longer is killed and its utterance skipped (default: "
                             "$SPEECHDISTILL_PIPE_TIMEOUT or 120; 0 = no limit)")
    parser.add_argument("--max-batch-size", type=int, default=None, help="cap on utterances per batch")
    parser.add_argument("--num-workers", type=int, default=1, help="audio loading processes (0 = in this process)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="fp32",
                        help="autocast of upstream and probe (fp32 keeps scores independent of the hardware)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch's default)")
    parser.add_argument("--force", action="store_true", help="decode again even when up to date")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from speechdistill.asr.decode import DecodeOptions, decode_data_dir

    options = DecodeOptions(beam_size=args.beam_size, batch_seconds=args.batch_seconds,
                            max_seconds=args.max_seconds if args.max_seconds and args.max_seconds > 0 else None,
                            pipe_timeout=args.pipe_timeout,
                            max_batch_size=args.max_batch_size, num_workers=args.num_workers, device=args.device,
                            precision=args.precision, threads=args.threads)
    try:
        result = decode_data_dir(args.asr_model, args.data, args.output_dir, upstream=args.upstream,
                                 condition=args.condition, seed=args.seed,
                                 noise_dirs=[args.noise_data] if args.noise_data else [],
                                 rir_dirs=[args.rir_data] if args.rir_data else [],
                                 babble_dirs=[args.babble_data] if args.babble_data else [], options=options,
                                 force=args.force)
    except (ValueError, OSError) as exc:
        print(f"asr_decode: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    if result.up_to_date:
        print(f"asr_decode: {result.out_dir}/text is up to date ({result.num_decoded} utterances); nothing to do")
    else:
        print(f"asr_decode: decoded {result.num_decoded} utterances of {args.data} ({args.condition}) in "
              f"{result.seconds:.1f} s ({result.audio_seconds / max(result.seconds, 1e-9):.1f} audio-s/s) -> "
              f"{result.out_dir}/text" + (f"; {len(result.skipped)} without hypothesis" if result.skipped else "")
              + (f"; {len(result.cut)} longer than --max-seconds decoded from their start (see decode.log)"
                 if result.cut else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
