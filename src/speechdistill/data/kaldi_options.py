"""Kaldi-style command lines for the data-dir tools (the ``utils/*.sh`` wrappers).

The rules are those of ``parse_options.sh`` (conventions §2.1), so that a call written for a
Kaldi/ESPnet script works here unchanged:

* options come before positional arguments; ``--foo-bar`` and ``--foo_bar`` are the same;
* every option takes exactly one value, even one starting with ``--`` (``--validate-opts
  --non-print``), except declared switches such as ``--per-utt`` that take none;
* ``--name=value`` is refused; so are an option without its value, an undeclared option and a
  boolean given anything but ``true``/``false``;
* a repeated option keeps its last value, except list options (``--utt-extra-files``), which
  accumulate every whitespace-separated item;
* ``--`` ends the options; ``--help``/``-h`` prints the usage.
"""
from __future__ import annotations

import logging
import sys
import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple


class UsageError(ValueError):
    """A command line a user typed is wrong; the message says what and how to write it."""


class HelpRequested(Exception):
    """``--help`` was given; the caller prints the usage and exits 0."""


@dataclass
class Option:
    """One option: ``name`` in underscore form, its ``default`` (whose type gives the value type)."""
    name: str
    default: Any
    help: str
    switch: bool = False   # takes no value; present -> True
    is_list: bool = False  # values accumulate, split on whitespace

    @property
    def spelling(self) -> str:
        return "--" + self.name.replace("_", "-")


class KaldiArgs:
    """Parse ``argv`` into (values by option name, positional arguments)."""

    def __init__(self, prog: str, usage: str, options: Sequence[Option], *, min_positional: int,
                 max_positional: Optional[int] = None, description: str = ""):
        self.prog = prog
        self.usage = usage
        self.description = description
        self.options = {option.name: option for option in options}
        self.min_positional = min_positional
        self.max_positional = min_positional if max_positional is None else max_positional

    def help_text(self) -> str:
        lines = [f"Usage: {self.prog} {self.usage}"]
        if self.description:
            lines += ["", self.description.strip()]
        if self.options:
            lines += ["", "Options (--a-b and --a_b are the same; values follow as a separate argument):"]
            for option in self.options.values():
                value = "" if option.switch else f" <{_type_name(option.default, option.is_list)}>"
                default = "" if option.switch else f" (default: {_show(option.default)})"
                lines.append(f"  {option.spelling}{value}  {option.help}{default}")
        return "\n".join(lines) + "\n"

    def parse(self, argv: Sequence[str]) -> Tuple[Dict[str, Any], List[str]]:
        values = {name: (list(o.default) if o.is_list else o.default) for name, o in self.options.items()}
        args = list(argv)
        while args and (args[0].startswith("--") or args[0] == "-h"):
            arg = args.pop(0)
            if arg in ("--help", "-h"):
                raise HelpRequested()
            if arg == "--":
                break
            if "=" in arg:
                name_part, _, value_part = arg.partition("=")
                raise UsageError(f"options must be given as '--name value', not '{arg}'; write '{name_part} "
                                 f"{value_part}'")
            name = arg[2:].replace("-", "_")
            option = self.options.get(name)
            if option is None:
                close = difflib.get_close_matches(name, list(self.options), n=1)
                hint = f"; did you mean '{self.options[close[0]].spelling}'?" if close else ""
                raise UsageError(f"invalid option {arg}{hint} (see --help)")
            if option.switch:
                values[name] = True
                continue
            if not args:
                raise UsageError(f"option {arg} needs a value (options are '--name value')")
            values[name] = _convert(option, args.pop(0), values[name])
        if not self.min_positional <= len(args) <= self.max_positional:
            want = (str(self.min_positional) if self.min_positional == self.max_positional
                    else f"{self.min_positional} to {self.max_positional}")
            raise UsageError(f"expected {want} positional argument(s), got {len(args)}"
                             + (f" ({' '.join(args)})" if args else "") + f". Usage: {self.prog} {self.usage}")
        return values, args


def _convert(option: Option, raw: str, current: Any) -> Any:
    default = option.default
    if option.is_list:
        return list(current) + raw.split()
    if isinstance(default, bool):
        if raw not in ("true", "false"):
            raise UsageError(f'{option.spelling}: expected "true" or "false", got "{raw}"')
        return raw == "true"
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            raise UsageError(f"{option.spelling}: expected an integer, got '{raw}'") from None
    return raw


def _type_name(default: Any, is_list: bool) -> str:
    if is_list:
        return "list"
    if isinstance(default, bool):
        return "true|false"
    if isinstance(default, int):
        return "int"
    return "str"


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return '"' + " ".join(value) + '"'
    return repr(value) if value == "" else str(value)


class _PrefixFormatter(logging.Formatter):
    """Kaldi-style console lines: ``<prog>: <message>``, ``<prog>: WARNING: <message>``."""

    def __init__(self, prog: str):
        super().__init__()
        self.prog = prog

    def format(self, record: logging.LogRecord) -> str:
        level = "WARNING: " if record.levelno >= logging.WARNING else ""
        return f"{self.prog}: {level}{record.getMessage()}"


def kaldi_logging(prog: str, log_file: Optional[Path] = None) -> None:
    """speechdistill's log lines to stderr as the Kaldi scripts print them, and in full to ``log_file``."""
    root = logging.getLogger("speechdistill")
    root.handlers.clear()
    root.setLevel(logging.INFO)
    root.propagate = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_PrefixFormatter(prog))
    root.addHandler(handler)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file, mode="w", encoding="utf-8")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root.addHandler(file_handler)
