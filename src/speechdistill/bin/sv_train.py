"""Train a speaker-verification system: OS-KDFT student, fbank ECAPA-TDNN, or a back-end on the
frozen teacher's features (``upstream`` and the other axes of the config, or their shorthand
``system``; see speechdistill.sv.config).

    python -m speechdistill.bin.sv_train --config conf/oskdft_paper.yaml --train-data data/train \\
        --teacher exp/teacher --output-dir exp/sv_oskdft_paper [--valid-data DIR] [--max_steps 30 ...]

Writes the trainer's files (config.yaml, train.log, metrics.jsonl, checkpoints/, plots/) and the
speaker model ``<output-dir>/sv_model`` that ``speechdistill.bin.sv_extract`` reads. Rerunning a
finished run only re-exports; an interrupted one resumes from its last checkpoint.

``--print-key KEY`` prints the value a config key resolves to (the --config file plus the other
options) and exits without training, for scripts (run.sh asks for ``system``).
"""
from __future__ import annotations

import sys
from typing import List, Optional

from speechdistill.sv.config import SvConfig
from speechdistill.sv.task import SvTask
from speechdistill.train.cli import run_main, train_main


def print_key(argv: List[str]) -> int:
    """``--print-key KEY [--config FILE] [--key value ...]``: print the resolved value of KEY."""
    from speechdistill.config import ConfigError, load_config, parse_overrides, to_dict

    rest = list(argv)
    position = rest.index("--print-key")
    if position + 1 >= len(rest):
        raise ConfigError("--print-key needs a config key, e.g. --print-key system")
    key = rest[position + 1].replace("-", "_")
    del rest[position:position + 2]
    config_path = None
    if "--config" in rest:
        where = rest.index("--config")
        if where + 1 >= len(rest):
            raise ConfigError("--config needs a file")
        config_path = rest[where + 1]
        del rest[where:where + 2]
    values = to_dict(load_config(SvConfig, config_path, parse_overrides(rest)))
    if key not in values:
        raise ConfigError(f"--print-key: '{key}' is not a config key (keys: {', '.join(sorted(values))})")
    value = values[key]
    print("null" if value is None else value)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--print-key" in argv:
        return print_key(argv)
    return train_main(SvConfig, SvTask, prog="python -m speechdistill.bin.sv_train", description=__doc__, argv=argv)


if __name__ == "__main__":
    run_main(main, prog="sv_train")
