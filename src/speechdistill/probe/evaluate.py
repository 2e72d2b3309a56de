"""Run a probe over a test data dir and score it: ``predictions`` and ``score.json`` in an output dir.

Output dir::

    predictions        Kaldi table: utt -> prediction (labels of every slot, or the phone string)
    score.json         task, metric, value (%), counts, the model and data it came from (written last)
    result.txt         PR: the sclite-style summary and per-utterance alignments of the phone strings
    skipped_utts.txt   utterances without a prediction (too short for the upstream, unreadable)

Accuracy is the share of the data dir's utterances whose every slot is predicted right; PER is
phone edits (substitutions, deletions, insertions) over reference phones, scored by
:mod:`speechdistill.metrics.wer` on the space-separated phone strings. An utterance without a
prediction counts as wrong (all phones deleted), never as absent.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Union

import torch
from tqdm import tqdm

from ..asr.upstream import FrozenUpstream, UpstreamError, upstream_fingerprint
from ..data.audio import SAMPLE_RATE
from ..data.inference import DEFAULT_MAX_SECONDS, inference_batches, run_each_on_failure
from ..data.tables import atomic_write_text, read_table, write_table
from ..metrics.wer import score as score_texts
from ..train.precision import autocast, resolve_device, resolve_precision
from .model import load_probe_model
from .tasks import TaskSpec, read_targets

PathLike = Union[str, os.PathLike]
PREDICTIONS, SCORE, RESULT, SKIPPED = "predictions", "score.json", "result.txt", "skipped_utts.txt"


@dataclass
class EvalOptions:
    batch_seconds: float = 200.0
    max_seconds: Optional[float] = DEFAULT_MAX_SECONDS
    num_workers: int = 1
    device: str = "auto"
    precision: str = "fp32"


def score_predictions(spec: TaskSpec, references: Dict[str, list], predictions: Dict[str, str], out_dir: Path
                      ) -> Dict:
    """The metric of ``predictions`` against ``references`` (every reference utterance counts)."""
    if spec.kind == "ctc":
        refs = {utt: " ".join(phones) for utt, phones in references.items()}
        report = score_texts(refs, {utt: predictions.get(utt, "") for utt in refs}, "word")
        atomic_write_text(out_dir / RESULT, report.result_txt(str(out_dir / "reference"), str(out_dir / PREDICTIONS)))
        return {"value": 100.0 * report.errors / max(report.num_ref, 1), "errors": report.errors,
                "count": report.num_ref, "utterances": len(refs)}
    right = sum(1 for utt, truth in references.items() if predictions.get(utt, "").split() == list(truth))
    return {"value": 100.0 * right / max(len(references), 1), "errors": len(references) - right,
            "count": len(references), "utterances": len(references)}


def evaluate_probe(model_dir: PathLike, data_dir: PathLike, out_dir: PathLike, *, upstream: Optional[PathLike] = None,
                   options: Optional[EvalOptions] = None) -> Dict:
    """Predict every utterance of ``data_dir`` with the probe in ``model_dir``; write and return the score."""
    options = options or EvalOptions()
    model_dir, data_dir, out_dir = Path(model_dir), Path(data_dir), Path(out_dir)
    model, info = load_probe_model(model_dir)
    spec = model.spec
    references = read_targets(spec, data_dir)
    upstream_path = str(upstream) if upstream is not None else info["upstream"]
    if upstream_fingerprint(upstream_path) != info["upstream_fingerprint"]:
        raise UpstreamError(f"{model_dir}: the probe was trained on the upstream {info['upstream']}, but the files of "
                            f"{upstream_path} differ from it. Fix: pass --upstream with the model the probe was "
                            "trained on")
    started = time.perf_counter()
    device = resolve_device(options.device)
    precision = resolve_precision(options.precision, device)
    frozen = FrozenUpstream(upstream_path, device)
    model = model.to(device)
    data = inference_batches(data_dir, min_samples=frozen.min_samples, batch_seconds=options.batch_seconds,
                             max_seconds=options.max_seconds, num_workers=options.num_workers)
    skipped = {key: reason for key, reason in data.dataset.skipped}
    predictions: Dict[str, str] = {}
    total = float(data.dataset.cropped_num_samples.sum()) / SAMPLE_RATE
    progress = tqdm(total=total, unit="audio-s", desc=f"{spec.name} {data_dir.name}", file=sys.stderr,
                    dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 30.0)

    def predict(wavs: torch.Tensor, lengths: torch.Tensor, keys):
        wavs, lengths = wavs.to(device), lengths.to(device)
        states, frames = frozen(wavs, lengths, model.selected_layers, autocast(device, precision))
        with autocast(device, precision):
            return model.predict(model(states, frames))

    def failed(key: str, reason: str) -> None:
        skipped[key] = reason

    with torch.no_grad():
        for batch in data.loader:
            for key, message in batch["failures"]:
                skipped[key] = f"unreadable: {' '.join(message.split())}"
            if batch["keys"]:
                predictions.update(run_each_on_failure(batch, predict, failed))
                progress.update(batch["audio_seconds"])
    progress.close()
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / SCORE).is_file():
        (out_dir / SCORE).unlink()  # the old score no longer matches; a crash below must not look finished
    write_table(out_dir / PREDICTIONS, predictions)
    atomic_write_text(out_dir / SKIPPED, "".join(f"{k} {v}\n" for k, v in sorted(skipped.items())))
    scored = score_predictions(spec, references, predictions, out_dir)
    record = {"task": spec.name, "metric": spec.metric, **scored, "skipped": len(skipped),
              "probe_model": str(model_dir.resolve()), "upstream": str(Path(upstream_path).resolve()),
              "data": str(data_dir.resolve()), "seconds": round(time.perf_counter() - started, 2)}
    atomic_write_text(out_dir / SCORE, json.dumps(record, indent=1, sort_keys=True) + "\n")
    return record


def read_score(out_dir: PathLike) -> Dict:
    path = Path(out_dir) / SCORE
    if not path.is_file():
        raise ValueError(f"{path}: not found; no finished evaluation there. Fix: run probe_eval for it")
    return json.loads(path.read_text(encoding="utf-8"))


def read_predictions(out_dir: PathLike) -> Dict[str, str]:
    return dict(read_table(Path(out_dir) / PREDICTIONS, allow_empty_value=True))
