"""Command-line plumbing shared by every training entry point (``speechdistill.bin.*_train``).

A training entry point is three lines::

    from speechdistill.train.cli import run_main, train_main

    def main(argv=None) -> int:
        return train_main(DistillConfig, DistillTask, prog="python -m speechdistill.bin.distill_train",
                          description=__doc__, argv=argv)

    if __name__ == "__main__":
        run_main(main)

Its command line is ``--config CONF --output-dir DIR [--resume [CKPT]] [--device D] [--precision P]``
followed by any config key as ``--key value`` (dashes and underscores alike, dotted for nested
sections, e.g. ``--train-data data/train --max_steps 20``); an unknown key is an error naming the
closest valid key. ``--help`` lists every key with its default and meaning.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple, Type, TypeVar

from ..config import load_config, parse_overrides, to_dict
from .task import Task

C = TypeVar("C")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Literal:
        return "|".join(str(a) for a in args)
    if origin is typing.Union:
        names = [_type_name(a) for a in args if a is not type(None)]
        return "|".join(names) + ("|null" if type(None) in args else "")
    if origin in (list, tuple):
        return "LIST"
    return getattr(tp, "__name__", str(tp)).upper()


def config_keys_help(config_cls: type, prefix: str = "") -> str:
    """One line per config key: ``--key TYPE (default X): help``; keys of nested sections are dotted."""
    lines: List[str] = []
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        kind = hints[f.name]
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            lines.append(config_keys_help(kind, prefix=f"{prefix}{f.name}."))
            continue
        if f.default is not dataclasses.MISSING:
            default = to_dict(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = to_dict(f.default_factory())
        else:
            default = "required"
        text = f.metadata.get("help", "")
        lines.append(f"  --{prefix}{f.name} {_type_name(kind)} (default {default!r})" + (f": {text}" if text else ""))
    return "\n".join(lines)


def build_parser(config_cls: type, *, prog: Optional[str] = None, description: Optional[str] = None
                 ) -> argparse.ArgumentParser:
    """The parser of a training entry point: the flags every trainer has, then config keys as ``--key value``."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Every config key can be set as --key value (overrides the --config file):\n"
               + config_keys_help(config_cls))
    parser.add_argument("--config", type=Path, help="YAML file of config keys (the command line wins over it)")
    parser.add_argument("--output-dir", type=Path, required=True,
                        help="run directory: config.yaml, train.log, metrics.jsonl, checkpoints/, plots/, products")
    parser.add_argument("--resume", nargs="?", const="latest", default="auto", metavar="CKPT",
                        help="default: continue from the latest checkpoint in the output dir if there is one; "
                             "--resume alone requires one; --resume CKPT continues from that file")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="same as --device in the config")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"],
                        help="autocast of the trainable model (auto: bf16 where the hardware has it, else fp32)")
    return parser


def parse_args(parser: argparse.ArgumentParser, config_cls: Type[C], argv: Optional[Sequence[str]] = None
               ) -> Tuple[C, argparse.Namespace]:
    """Parse ``argv``: the parser's own flags, then every other ``--key value`` as a config override."""
    args, rest = parser.parse_known_args(argv)
    overrides = parse_overrides(rest)
    for name in ("device", "precision"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    config = load_config(config_cls, args.config, overrides)
    validate = getattr(config, "validate", None)
    if validate is not None:
        validate()
    return config, args


def train_main(config_cls: Type[C], make_task: Callable[[C], Task], *, prog: Optional[str] = None,
               description: Optional[str] = None, argv: Optional[Sequence[str]] = None) -> int:
    """Parse the command line, build the task from the config, train; returns the exit code
    (0 finished, ``REQUEUE_EXIT_CODE`` when a signal stopped the run after a checkpoint)."""
    from .trainer import Trainer

    parser = build_parser(config_cls, prog=prog, description=description)
    config, args = parse_args(parser, config_cls, argv)
    task = make_task(config)
    return Trainer(config, task, args.output_dir, resume=args.resume).run().exit_code


def run_main(main: Callable[[], int], prog: Optional[str] = None) -> None:
    """Run ``main`` and exit with its code; a user error (``ValueError``) is printed on one line, exit 1."""
    prog = prog or Path(sys.argv[0]).name
    try:
        code = main()
    except ValueError as exc:
        print(f"{prog}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)
