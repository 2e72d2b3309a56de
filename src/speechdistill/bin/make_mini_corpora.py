"""Build the embedded mini corpora (synthesized LibriSpeech, VoxCeleb, MUSAN, RIRS_NOISES look-alikes).

    python -m speechdistill.bin.make_mini_corpora --out-dir downloads/mini
    python -m speechdistill.bin.make_mini_corpora --out-dir /tmp/mini --corpora librispeech musan \\
        --size tiny --librispeech.train_minutes 2

Writes <out-dir>/{LibriSpeech,VoxCeleb1,musan,RIRS_NOISES} in the real layouts (read them with
prep_librispeech, prep_voxceleb, prep_musan, prep_rirs); --corpora voxceleb2 also writes the
VoxCeleb1 dev speakers as <out-dir>/VoxCeleb2/dev/aac/.../*.m4a (needs ffmpeg); --corpora speech_commands
and fluent_commands write <out-dir>/speech_commands (Speech Commands v1.0 layout, background noise from
musan) and <out-dir>/fluent_speech_commands (Fluent Speech Commands layout) for the SUPERB probes. Deterministic from --seed: the same
settings give the same files whatever --nj. A corpus that exists with the same settings is
kept; with other settings it is rebuilt. Sizes: --size default|tiny, then --config YAML
(keys as below), then dotted overrides, e.g. --voxceleb.train_speakers 50:

  librispeech: train_minutes dev_minutes test_minutes train_speakers dev_speakers test_speakers
               min_words max_words
  voxceleb:    train_minutes train_speakers test_speakers test_utterances_per_speaker
               videos_per_speaker trials min_words max_words
  musan:       noise_files music_files speech_files min_seconds max_seconds vocals_fraction
  rirs:        rooms_per_size rirs_per_room max_order
  speech_commands: train_speakers dev_speakers test_speakers repetitions background_files
  fluent_commands: train_speakers dev_speakers test_speakers utterances_per_speaker
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional

from speechdistill.config import from_dict, load_yaml, merge, parse_overrides, to_dict
from speechdistill.corpora.common import run_cli, setup_logging
from speechdistill.corpora.synth import CORPORA, OPTIONAL_CORPORA, MiniCorporaConfig, make_mini_corpora


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m speechdistill.bin.make_mini_corpora", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", "--out_dir", dest="out_dir", required=True, help="where the corpora are written")
    parser.add_argument("--corpora", nargs="+", choices=CORPORA + OPTIONAL_CORPORA, default=list(CORPORA),
                        help=f"which to build (default: {' '.join(CORPORA)})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", choices=("default", "tiny"), default="default",
                        help="default: ~30 min of training speech per speech corpus; tiny: seconds (tests)")
    parser.add_argument("--config", default=None, help="YAML file with sizes (see above)")
    parser.add_argument("--nj", type=int, default=2, help="parallel synthesis processes (default: 2)")
    parser.add_argument("--log", default=None, help="log file (default: <out-dir>/log/make_mini_corpora.log)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args, rest = build_parser().parse_known_args(argv)

    def body() -> int:
        setup_logging(args.log or Path(args.out_dir) / "log" / "make_mini_corpora.log")
        base = MiniCorporaConfig.tiny(args.seed) if args.size == "tiny" else MiniCorporaConfig(seed=args.seed)
        data = to_dict(base)
        if args.config:
            data = merge(data, load_yaml(args.config))
        data = merge(data, parse_overrides(rest))
        config = from_dict(MiniCorporaConfig, data, where=args.config or "make_mini_corpora")
        start = time.monotonic()
        results = make_mini_corpora(args.out_dir, args.corpora, config, nj=args.nj)
        for corpus, marker in results.items():
            state = "already built, kept" if marker["skipped"] else "built"
            print(f"mini {corpus}: {state}: {marker['produced']}")
        print(f"make_mini_corpora: done in {time.monotonic() - start:.1f} s")
        return 0

    return run_cli("make_mini_corpora", body)


if __name__ == "__main__":
    sys.exit(main())
