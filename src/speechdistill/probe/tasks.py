"""What each SUPERB-style probe task is: where its targets live in a data dir, its labels, its metric.

A task is a head, a loss, a metric and a data reader; everything else (frozen upstream,
featurizer, trainer, inference) is shared. The targets of an utterance are read from one
utt-keyed file of the data dir the task's prep wrote:

======  ==============  ===================================  ==========================  ========
task    file            value                                head / loss                 metric
======  ==============  ===================================  ==========================  ========
pr      ``phones``      phone sequence, e.g. ``HH AH L OW``  linear CTC / CTC             PER %
ks      ``utt2label``   one of the 12 Speech Commands labels utterance classifier / CE   accuracy %
ic      ``utt2intent``  ``<action> <object> <location>``     3-slot classifier / sum CE   accuracy % (all slots)
sid     ``utt2spk``     the speaker                          utterance classifier / CE   accuracy %
======  ==============  ===================================  ==========================  ========
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ..data.tables import DataDirError, format_error, read_table

PathLike = Union[str, Path]
BLANK = "<blank>"
# Speech Commands v1.0 as SUPERB's KS task uses it: 10 command words, every other word, background noise
KS_CLASSES = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "_unknown_", "_silence_")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """``kind``: ``ctc`` (a token sequence per utterance) or ``classify`` (one value per slot)."""

    name: str
    title: str
    kind: str
    target_file: str
    slots: Tuple[str, ...]
    metric: str
    higher_is_better: bool
    fixed_labels: Optional[Tuple[str, ...]] = None

    @property
    def metric_title(self) -> str:
        return f"{self.title} {'PER' if self.metric == 'per' else 'acc'} %"


TASKS: Dict[str, TaskSpec] = {
    "pr": TaskSpec("pr", "PR", "ctc", "phones", ("phones",), "per", False),
    "ks": TaskSpec("ks", "KS", "classify", "utt2label", ("label",), "accuracy", True, KS_CLASSES),
    "ic": TaskSpec("ic", "IC", "classify", "utt2intent", ("action", "object", "location"), "accuracy", True),
    "sid": TaskSpec("sid", "SID", "classify", "utt2spk", ("speaker",), "accuracy", True),
}


def task_spec(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"unknown probe task '{name}'; choose one of {', '.join(TASKS)}")
    return TASKS[name]


def read_targets(spec: TaskSpec, data_dir: PathLike) -> Dict[str, List[str]]:
    """utt -> targets: the phone list (``ctc``) or one value per slot (``classify``)."""
    path = Path(data_dir) / spec.target_file
    if not path.is_file():
        raise DataDirError(f"{path}: not found; the {spec.title} probe reads its targets from it. Fix: prepare the "
                           f"data dir with the {spec.title} prep of egs/superb/probe (local/data.sh)")
    table = read_table(path)
    targets: Dict[str, List[str]] = {}
    for number, (utt, value) in enumerate(table.items(), start=1):
        fields = value.split()
        if spec.kind == "classify" and len(fields) != len(spec.slots):
            raise DataDirError(format_error(path, f"utterance '{utt}' has {len(fields)} value(s), the {spec.title} "
                                            f"task expects {len(spec.slots)} ({' '.join(spec.slots)})",
                                            fix=f"rewrite {spec.target_file} with the task's prep"))
        if spec.fixed_labels is not None and fields[0] not in spec.fixed_labels:
            raise DataDirError(format_error(path, f"utterance '{utt}' has label '{fields[0]}', not one of "
                                            f"{', '.join(spec.fixed_labels)}",
                                            fix="prepare the data dir with prep_speech_commands"))
        targets[utt] = fields
    return targets


@dataclasses.dataclass
class LabelSet:
    """The labels of every slot (``classify``) or the token inventory with ``<blank>`` first (``ctc``)."""

    slots: List[List[str]]

    @classmethod
    def build(cls, spec: TaskSpec, targets: Mapping[str, Sequence[str]]) -> "LabelSet":
        """From the training targets: every value seen, sorted (KS: its 12 fixed classes in order)."""
        if spec.kind == "ctc":
            tokens = sorted({token for sequence in targets.values() for token in sequence})
            if not tokens:
                raise ValueError(f"the {spec.title} training targets hold no token")
            return cls([[BLANK] + tokens])
        if spec.fixed_labels is not None:
            return cls([list(spec.fixed_labels)])
        return cls([sorted({fields[slot] for fields in targets.values()}) for slot in range(len(spec.slots))])

    @property
    def sizes(self) -> List[int]:
        return [len(labels) for labels in self.slots]

    def index(self, slot: int) -> Dict[str, int]:
        return {label: i for i, label in enumerate(self.slots[slot])}

    def to_lines(self, spec: TaskSpec) -> str:
        """``labels.txt``: ``<slot name> <label>`` per line, slots and labels in index order."""
        return "".join(f"{name} {label}\n" for name, labels in zip(spec.slots, self.slots) for label in labels)

    @classmethod
    def from_lines(cls, spec: TaskSpec, text: str, where: str) -> "LabelSet":
        slots: Dict[str, List[str]] = {name: [] for name in spec.slots}
        for number, line in enumerate(text.splitlines(), start=1):
            fields = line.split()
            if len(fields) != 2 or fields[0] not in slots:
                raise ValueError(f"{where}:{number}: expected '<slot> <label>' with slot one of {', '.join(spec.slots)}")
            slots[fields[0]].append(fields[1])
        return cls([slots[name] for name in spec.slots])
