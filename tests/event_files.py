"""A run's TensorBoard event files read back with tensorboard's own reader and compared with metrics.jsonl."""
import json
import math
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator


def scalar_events(log_dir: Path) -> Dict[str, List[Tuple[int, float]]]:
    """tag -> [(step, value)] of every scalar event in ``log_dir`` (all of them kept, purges applied)."""
    events = EventAccumulator(str(log_dir), size_guidance={SCALARS: 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def logged_scalars(metrics: Path) -> Dict[str, List[Tuple[int, float]]]:
    """The same from metrics.jsonl: every finite number but the step, at its record's step."""
    found: Dict[str, List[Tuple[int, float]]] = {}
    for line in Path(metrics).read_text().splitlines():
        record = json.loads(line)
        for name, value in record.items():
            if name != "step" and isinstance(value, (int, float)) and not isinstance(value, bool) \
                    and math.isfinite(value):
                found.setdefault(name, []).append((record["step"], value))
    return found


def assert_events_match_metrics(out_dir: Path) -> Dict[str, List[Tuple[int, float]]]:
    """Every scalar of ``out_dir``/metrics.jsonl is an event of ``out_dir``/tensorboard at the same step with
    the same value (as float32, what an event holds), and there is no other event. Returns the events."""
    events = scalar_events(Path(out_dir) / "tensorboard")
    expected = logged_scalars(Path(out_dir) / "metrics.jsonl")
    assert sorted(events) == sorted(expected)
    for tag, values in expected.items():
        assert [step for step, _ in events[tag]] == [step for step, _ in values], tag
        np.testing.assert_array_equal(np.float32([v for _, v in events[tag]]), np.float32([v for _, v in values]),
                                      err_msg=tag)
    return events
