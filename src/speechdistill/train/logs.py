"""Run logs: ``train.log`` (plain text), ``metrics.jsonl`` (one JSON object per line), PNG curves.

Only rank 0 writes files; other ranks log warnings to stderr with their rank. Messages to stderr
go through ``tqdm.write`` so they do not break the progress bar.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional

from tqdm import tqdm

from ..data.tables import atomic_write_text

LOGGER_NAME = "speechdistill.train"
_FORMAT = "%(asctime)s %(levelname)s %(message)s"


class _TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never take the run down
            self.handleError(record)


def setup_logger(log_file: Path, rank: int) -> logging.Logger:
    """The run's logger: rank 0 -> ``log_file`` (appending) and stderr; other ranks -> stderr, warnings only."""
    logger = logging.getLogger(f"{LOGGER_NAME}.rank{rank}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    close_logger(logger)
    console = _TqdmHandler()
    if rank == 0:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter(_FORMAT))
        logger.addHandler(file_handler)
        console.setFormatter(logging.Formatter(_FORMAT))
    else:
        console.setLevel(logging.WARNING)
        console.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s [rank {rank}] %(message)s"))
    logger.addHandler(console)
    return logger


def command_log_handlers(log_file: Optional[Path]) -> List[logging.Handler]:
    """Handlers of a command's log: stderr, and ``log_file`` (appending; its folder made) when given. A log
    that cannot be opened is a ValueError naming the path and the fix."""
    handlers: List[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        try:
            Path(log_file).parent.mkdir(parents=True, exist_ok=True)
            handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(log_file) else ""
            raise ValueError(f"--log {log_file}: cannot write it: {exc.strerror or exc}{where}. Fix: choose a "
                             "writable path") from None
    return handlers


def close_logger(logger: logging.Logger) -> None:
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/Infinity; null marks it
    return value


class MetricsWriter:
    """Appends one JSON object per line to ``metrics.jsonl`` (rank 0 only; other ranks pass ``enabled=False``),
    and hands each record to ``events`` too (TensorBoard: :class:`.tensorboard.TensorBoardEvents`)."""

    def __init__(self, path: Path, enabled: bool = True, events: Optional[Any] = None) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self.events = events if enabled else None

    def truncate_after(self, step: int) -> None:
        """Drop lines logged after ``step`` (a resumed run logs those steps again) and any line cut short
        by a crash."""
        if not self.enabled or not self.path.is_file():
            return
        kept = [json.dumps(record) for record in read_metrics(self.path) if record.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(f"{line}\n" for line in kept))

    def write(self, record: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        line = json.dumps({k: _finite_or_none(v) for k, v in record.items()}, sort_keys=False)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
        if self.events is not None:
            self.events.write(record)

    def close(self) -> None:
        if self.events is not None:
            self.events.close()
            self.events = None


def read_metrics(path: Path) -> List[Dict[str, Any]]:
    """The records of a metrics.jsonl file, skipping a last line cut short by a crash."""
    if not Path(path).is_file():
        return []
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "metric"


def _series(records: Iterable[Mapping[str, Any]], key: str):
    xs, ys = [], []
    for record in records:
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            xs.append(record["step"])
            ys.append(value)
    return xs, ys


def _save_figure(figure, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    os.close(fd)
    try:
        figure.savefig(tmp, format="png", dpi=100)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# Keys of a training record that are not loss terms.
NOT_TERMS = {"step", "epoch", "grad_norm", "audio_sec_per_sec", "padding_fraction", "skipped_nonfinite",
             "skipped_unreadable", "skipped_short", "elapsed_s", "loss_scale"}


def write_plots(metrics_path: Path, plot_dir: Path) -> List[Path]:
    """PNG curves from ``metrics.jsonl``: one figure per loss term (``loss`` and every task term,
    with its ``valid/`` counterpart when validated), one for the learning rates of all groups, one
    per remaining validation metric and one for the gradient norm. Returns the files written."""
    # The object-oriented API renders with Agg and needs no display (no pyplot, no global state).
    from matplotlib.figure import Figure

    records = read_metrics(metrics_path)
    train = [r for r in records if not any(k.startswith("valid/") for k in r)]
    valid = [r for r in records if any(k.startswith("valid/") for k in r)]
    plot_dir.mkdir(parents=True, exist_ok=True)
    written: List[Path] = []
    found = {k for r in train for k in r if k not in NOT_TERMS and not k.startswith("lr/")}
    terms = ["loss"] + sorted(found - {"loss"})

    def figure(name: str, curves: List[tuple], ylabel: str, log_y: bool = False) -> None:
        curves = [c for c in curves if c[1]]
        if not curves:
            return
        fig = Figure(figsize=(6.4, 4.0))
        ax = fig.add_subplot()
        for label, xs, ys, style in curves:
            ax.plot(xs, ys, style, label=label)
        ax.set_xlabel("update")
        ax.set_ylabel(ylabel)
        if log_y and all(y > 0 for c in curves for y in c[2]):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.subplots_adjust(left=0.15, right=0.97, bottom=0.12, top=0.96)  # fixed: tight_layout is slow
        path = plot_dir / f"{_safe_name(name)}.png"
        _save_figure(fig, path)
        written.append(path)

    plotted_valid = set()
    for term in terms:
        curves = [("train", *_series(train, term), "-")]
        if any(f"valid/{term}" in r for r in valid):
            curves.append(("valid", *_series(valid, f"valid/{term}"), "o-"))
            plotted_valid.add(f"valid/{term}")
        figure(term, curves, term)
    lr_keys = sorted({k for r in train for k in r if k.startswith("lr/")})
    figure("lr", [(k[3:], *_series(train, k), "-") for k in lr_keys], "learning rate")
    for key in sorted({k for r in valid for k in r if k.startswith("valid/")} - plotted_valid - {"valid/num_utts"}):
        figure(key.replace("/", "_"), [("valid", *_series(valid, key), "o-")], key)
    figure("grad_norm", [("grad norm", *_series(train, "grad_norm"), "-")], "gradient norm", log_y=True)
    return written
