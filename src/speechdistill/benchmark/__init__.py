"""Throughput against peers and against the hardware limit: ``python -m speechdistill.bin.benchmark``.

Sections (:mod:`.run`): the device's dense matmul peak; the teacher forward (ours fp32 and
reduced precision, transformers' HubertModel on the same weights); every student's forward as a
ratio of the teacher's; one distillation update of every method preset in fp32 and the reduced
precision, with FLOP/s from counted MACs, fraction of peak and peak memory, against an
s3prl-style eager DistilHuBERT step (:mod:`.eager_baseline`); the data pipeline per CPU core.
"""
from .accuracy import BF16_MAX_RELATIVE_ERROR, BF16_MIN_FRAME_COSINE, DriftReport, hidden_state_drift
from .report import format_report
from .plan import BenchmarkError, BenchmarkOptions, Sizes
from .run import evaluate_targets, run_benchmark

__all__ = ["BF16_MAX_RELATIVE_ERROR", "BF16_MIN_FRAME_COSINE", "BenchmarkError", "BenchmarkOptions", "DriftReport",
           "Sizes", "evaluate_targets", "format_report", "hidden_state_drift", "run_benchmark"]
