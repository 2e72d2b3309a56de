"""The training log between two log records: device-side sums of the updates since the last record, turned into
one ``metrics.jsonl`` record with one read from the device (one all-reduce under DDP)."""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Tuple

import torch

from . import distributed as dist_utils


class LogWindow:
    """Sums over the updates since the last log record.

    Device tensors (float64): the loss units ``count``, ``loss`` x count, each term x count, and the gradient
    norms; host floats: audio seconds, padded and real samples seen, and wall seconds."""

    def __init__(self, device: torch.device) -> None:
        zero = torch.zeros((), dtype=torch.float64, device=device)
        self.device = device
        self.count, self.loss, self.grad_norm = zero.clone(), zero.clone(), zero.clone()
        self.terms: Dict[str, Any] = {}
        self.updates = 0
        self.audio_seconds = self.padded_samples = self.real_samples = self.seconds = 0.0

    def add_data(self, audio_seconds: float, padded_samples: float, real_samples: float) -> None:
        self.audio_seconds += audio_seconds
        self.padded_samples += padded_samples
        self.real_samples += real_samples

    def add_update(self, micro_terms: List[Tuple[torch.Tensor, Dict[str, torch.Tensor], torch.Tensor]],
                   grad_norm: torch.Tensor) -> None:
        """One applied update: per micro-batch ``(mean loss, {term: mean}, unit count)``, and its gradient norm."""
        for loss_value, terms, count in micro_terms:
            self.count += count
            self.loss += loss_value * count
            for name, value in terms.items():
                self.terms[name] = self.terms.get(name, 0.0) + value * count
        self.grad_norm += grad_norm.detach().float()
        self.updates += 1

    def summarise(self, unreadable: int, world_size: int) -> Tuple[Dict[str, float], Dict[str, Any]]:
        """Means over the window and all ranks: ``({"loss", <terms>...}, {"grad_norm", "audio_sec_per_sec",
        "padding_fraction", "skipped_unreadable"})``; ``unreadable``: this rank's count, summed over ranks."""
        names = sorted(self.terms)
        host = [self.audio_seconds, self.padded_samples, self.real_samples, float(unreadable)]
        on_device = [self.count.double(), self.loss.double(), self.grad_norm.double()] + [
            torch.as_tensor(self.terms[n], dtype=torch.float64, device=self.device) for n in names]
        if world_size > 1:  # the host values join the one all-reduce (one copy to the device)
            vector = torch.cat([torch.stack(on_device), torch.tensor(host, dtype=torch.float64).to(self.device)])
            dist_utils.all_reduce_sum(vector)
            values = vector.tolist()
        else:  # one read from the device, nothing copied to it
            values = torch.stack(on_device).tolist() + host
        count, loss_sum, grad_norm_sum = values[:3]
        term_sums = values[3:3 + len(names)]
        audio, padded, real, unreadable_sum = values[3 + len(names):]
        losses = {"loss": loss_sum / count if count else float("nan")}
        losses.update({name: value / count if count else float("nan") for name, value in zip(names, term_sums)})
        return losses, {
            "grad_norm": grad_norm_sum / world_size / max(self.updates, 1),
            "audio_sec_per_sec": audio / max(self.seconds, 1e-9),
            "padding_fraction": 1.0 - real / padded if padded else 0.0,
            "skipped_unreadable": int(unreadable_sum),
        }


def update_line(record: Mapping[str, Any], term_names: List[str], max_steps: int) -> str:
    """The train.log line of a training record."""
    terms_text = " ".join(f"{n} {record[n]:.4g}" for n in term_names)
    lrs = " ".join(f"{k[3:]} {v:.3g}" for k, v in record.items() if k.startswith("lr/"))
    return (f"update {record['step']}/{max_steps} epoch {record['epoch']}: loss {record['loss']:.4g}"
            f"{f' ({terms_text})' if terms_text else ''} | lr {lrs} | grad norm {record['grad_norm']:.3g} | "
            f"{record['audio_sec_per_sec']:.1f} audio-s/s | padding {100 * record['padding_fraction']:.1f}% | "
            f"skipped: {record['skipped_nonfinite']} non-finite, {record['skipped_unreadable']} unreadable, "
            f"{record['skipped_short']} short")
