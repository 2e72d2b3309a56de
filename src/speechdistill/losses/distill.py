"""Feature-distillation loss terms and the evaluator that composes them from a preset.

A method preset lists :class:`LossTerm` entries; :func:`evaluate_terms` evaluates them on
student predictions (keyed by the names/indices the task gives them: prediction heads,
per-layer projections or raw student layers) and teacher hidden states (HF indexing: 0 =
transformer input, i = output of layer i), and returns the weighted total plus one unweighted
value per log name.

Per-frame distances (student ``s_t``, teacher ``h_t``, both ``D``-dimensional)
    ``l1``   mean_D |s − h|          ``mse``  mean_D (s − h)²
    ``neg_cos``             −cos(s, h)               (DPHuBERT, ``cos_type=raw``)
    ``neg_logsigmoid_cos``  −log σ(cos(s, h))        (DistilHuBERT, DistilALHuBERT, OS-KDFT 2024)

Frame reduction (per layer pair), over valid frames only unless ``include_padding``
    ``"mean"``: Σ over valid frames of the batch / number of valid frames (pooled: a long
    utterance weighs more than a short one, as in every released trainer, where the
    normalisation is over all B·N frames).
    ``"sum"``: Σ over the frames of each utterance, averaged over the B utterances
    (OS-KDFT 2024 sums log σ(cos) over frames; the default there stays ``"mean"`` because a
    frame sum makes the cosine term ≈N times larger than the L1 term).

Layer reduction over the term's pairs: ``"mean"`` (DistilHuBERT, DPHuBERT: one mean over the
stacked layers jointly, which equals the mean of per-layer means because every layer has the
same frames) or ``"sum"`` (DistilALHuBERT, ARMHuBERT hints, OS-KDFT 2024 heads).

Masking distillation (``mask_split_mse`` / ``mask_split_l1``, ARMHuBERT/MaskHuBERT/ARMwavLM)
    Needs ``mask_indices`` ``[B, N]`` and a second teacher pass with those frames masked. Frames
    in the mask are matched against the *unmasked* teacher; frames outside it against the
    *masked* teacher. Two values are logged, ``mask_<name>`` and ``unmask_<name>``, and the
    term contributes ``weight · (mask + unmask)``. The released code divides both sums by B·N
    (all padded frames) and counts padded frames as "unmasked"; here both sums are divided by
    the number of valid frames and padded frames belong to neither set, so ``mask + unmask``
    is still the mean per-frame distance over the valid frames. ``include_padding=True``
    restores the released normalisation exactly.

Gram terms (``gram_layer`` / ``gram_intra``): see :mod:`speechdistill.losses.gram`; the pairs
give the student and teacher representations in order (13 for STaRHuBERT).

Compositions of the published methods (``layers`` are (student key, teacher layer) pairs):

=================  ==========================================================================
DistilHuBERT       l1 [(h4,4),(h8,8),(h12,12)] mean w1; neg_logsigmoid_cos same pairs, mean w1
DPHuBERT           l1 [(0,0),(4,4),(8,8),(12,12)] mean w1; neg_cos same, mean w1
DistilALHuBERT     mse [(2,2),…,(12,12)] sum w1; neg_logsigmoid_cos same pairs, sum w1
ARMHuBERT          mask_split_mse name=hint [(1,1)…(11,11)] sum w0.1; name=rec [(12,12)] w1.0
OS-KDFT (paper)    mse [(last,last)] w100, linear_decay_epochs=E (w(e) = (E−e)/E, e = 1..E)
OS-KDFT (2024)     l1 heads→(4,8,12) sum w1; neg_logsigmoid_cos same, sum, frame_reduction
                   "sum" to reproduce (default "mean")
STaRHuBERT         gram_layer [(0,0)…(12,12)] mean w1; gram_intra same pairs, mean w1
=================  ==========================================================================
Every released trainer above includes padded frames (``include_padding=True`` reproduces it);
DPHuBERT crops batches to the shortest utterance, so it never has padding.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Literal, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from ..config import ConfigError
from .frames import LossInputError, check_same_shape, float32_math, resolve_valid
from .gram import GRAM_LOSSES, GRAM_NORMALIZATIONS, gram_loss

StudentKey = Union[int, str]
FRAME_KINDS = ("l1", "mse", "neg_cos", "neg_logsigmoid_cos")
MASK_SPLIT_KINDS = ("mask_split_mse", "mask_split_l1")
GRAM_KINDS = ("gram_layer", "gram_intra")
TERM_KINDS = FRAME_KINDS + MASK_SPLIT_KINDS + GRAM_KINDS
COSINE_EPS = 1e-8


@dataclasses.dataclass
class LossTerm:
    """One weighted loss term of a method preset (a YAML list entry maps onto it).

    Attributes:
        name: log name (``l1``, ``cos``, ``hint``, ...); mask-split terms log ``mask_<name>`` and
            ``unmask_<name>``.
        kind: one of ``TERM_KINDS`` (module docstring).
        layers: (student key, teacher layer index) pairs; the student key is whatever the task
            keys its predictions by (head name, student layer index).
        weight: multiplier in the total.
        layer_reduction: ``"mean"`` or ``"sum"`` over the pairs.
        frame_reduction: ``"mean"`` or ``"sum"`` over frames (not for Gram kinds).
        include_padding: count padded frames as the released code did.
        linear_decay_epochs: E for OS-KDFT's w(e) = max(0, (E − e)/E), e = 1-based epoch.
        gram_normalization, gram_loss, chunk_size: Gram kinds only (see ``losses.gram``);
            defaults "none", "mse", 8.
    """

    name: str
    kind: Literal["l1", "mse", "neg_cos", "neg_logsigmoid_cos", "mask_split_mse", "mask_split_l1",
                  "gram_layer", "gram_intra"]
    layers: List[Tuple[Union[int, str], int]]
    weight: float = 1.0
    layer_reduction: Literal["mean", "sum"] = "mean"
    frame_reduction: Literal["mean", "sum"] = "mean"
    include_padding: bool = False
    linear_decay_epochs: Optional[float] = None
    gram_normalization: Optional[Literal["none", "dim", "row"]] = None
    gram_loss: Optional[Literal["mse", "kl"]] = None
    chunk_size: Optional[int] = None

    def __post_init__(self) -> None:
        where = f"loss term '{self.name}'"
        if not isinstance(self.name, str) or not self.name or any(c.isspace() for c in self.name):
            raise ConfigError(f"loss term name {self.name!r}: give a non-empty name without spaces (used in logs)")
        if self.kind not in TERM_KINDS:
            raise ConfigError(f"{where}: kind {self.kind!r} is not one of {list(TERM_KINDS)}")
        if not self.layers:
            raise ConfigError(f"{where}: layers is empty; list (student key, teacher layer) pairs, e.g. [[4, 4]]")
        pairs = []
        for pair in self.layers:
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise ConfigError(f"{where}: layer pair {pair!r} must be [student_key, teacher_layer]")
            student_key, teacher_layer = pair
            if isinstance(teacher_layer, bool) or not isinstance(teacher_layer, int) or teacher_layer < 0:
                raise ConfigError(f"{where}: teacher layer {teacher_layer!r} in pair {list(pair)} must be an "
                                  "integer >= 0 (0 = transformer input, i = output of layer i)")
            if isinstance(student_key, bool) or not isinstance(student_key, (int, str)):
                raise ConfigError(f"{where}: student key {student_key!r} in pair {list(pair)} must be an "
                                  "integer or a string")
            pairs.append((student_key, teacher_layer))
        self.layers = pairs
        if not (isinstance(self.weight, (int, float)) and math.isfinite(self.weight)):
            raise ConfigError(f"{where}: weight {self.weight!r} must be a finite number")
        for key, value, choices in (("layer_reduction", self.layer_reduction, ("mean", "sum")),
                                    ("frame_reduction", self.frame_reduction, ("mean", "sum"))):
            if value not in choices:
                raise ConfigError(f"{where}: {key} {value!r} is not one of {list(choices)}")
        if self.linear_decay_epochs is not None and not self.linear_decay_epochs > 0:
            raise ConfigError(f"{where}: linear_decay_epochs must be > 0, found {self.linear_decay_epochs}")
        is_gram = self.kind in GRAM_KINDS
        for key in ("gram_normalization", "gram_loss", "chunk_size"):
            if not is_gram and getattr(self, key) is not None:
                raise ConfigError(f"{where}: {key} applies only to kinds {list(GRAM_KINDS)}, not {self.kind!r}; "
                                  "remove it")
        if is_gram:
            if self.frame_reduction != "mean":
                raise ConfigError(f"{where}: frame_reduction does not apply to Gram terms; remove it")
            self.gram_normalization = self.gram_normalization or "none"
            self.gram_loss = self.gram_loss or "mse"
            self.chunk_size = 8 if self.chunk_size is None else self.chunk_size
            if self.gram_normalization not in GRAM_NORMALIZATIONS:
                raise ConfigError(f"{where}: gram_normalization {self.gram_normalization!r} is not one of "
                                  f"{list(GRAM_NORMALIZATIONS)}")
            if self.gram_loss not in GRAM_LOSSES:
                raise ConfigError(f"{where}: gram_loss {self.gram_loss!r} is not one of {list(GRAM_LOSSES)}")
            if self.gram_loss == "kl" and self.gram_normalization != "none":
                raise ConfigError(f"{where}: gram_loss 'kl' scales by 1/sqrt(d) itself; "
                                  "set gram_normalization to 'none'")
            if self.chunk_size < 1:
                raise ConfigError(f"{where}: chunk_size must be >= 1, found {self.chunk_size}")
            if self.kind == "gram_intra" and len(self.layers) < 2:
                raise ConfigError(f"{where}: gram_intra needs at least 2 consecutive layer pairs")

    @property
    def log_names(self) -> List[str]:
        """Names under which this term's values appear in logs."""
        if self.kind in MASK_SPLIT_KINDS:
            return [f"mask_{self.name}", f"unmask_{self.name}"]
        return [self.name]

    def weight_at(self, epoch: Optional[float]) -> float:
        """Effective weight; with ``linear_decay_epochs`` E it is ``weight · max(0, (E − epoch)/E)``."""
        if self.linear_decay_epochs is None:
            return float(self.weight)
        if epoch is None:
            raise LossInputError(f"loss term '{self.name}': linear_decay_epochs is set, so evaluate_terms needs "
                                 "epoch= (1-based, as in OS-KDFT's training loop)")
        total = float(self.linear_decay_epochs)
        return float(self.weight) * max(0.0, (total - float(epoch)) / total)


def check_terms(terms: Sequence[LossTerm]) -> None:
    """Refuse a preset whose log names collide (the logs and non-finite reports need unique names)."""
    seen: Dict[str, str] = {}
    for term in terms:
        for log_name in term.log_names:
            if log_name in seen:
                raise ConfigError(f"loss terms: log name '{log_name}' is produced by both term '{seen[log_name]}' "
                                  f"and term '{term.name}'; rename one")
            seen[log_name] = term.name


def teacher_layers_needed(terms: Sequence[LossTerm]) -> List[int]:
    """Sorted teacher hidden-state indices the terms read (for the teacher's ``output_layers``)."""
    return sorted({teacher for term in terms for _, teacher in term.layers})


def student_keys_needed(terms: Sequence[LossTerm]) -> List[StudentKey]:
    """Student prediction keys the terms read, in first-use order."""
    keys: List[StudentKey] = []
    for term in terms:
        for key, _ in term.layers:
            if key not in keys:
                keys.append(key)
    return keys


def _frame_distance(kind: str, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Per-frame distance: ``[..., D]`` × 2 -> ``[...]`` (float32 inputs)."""
    if kind in ("l1", "mask_split_l1"):
        return (student - teacher).abs().mean(dim=-1)
    if kind in ("mse", "mask_split_mse"):
        return (student - teacher).pow(2).mean(dim=-1)
    cosine = F.cosine_similarity(student, teacher, dim=-1, eps=COSINE_EPS)
    if kind == "neg_cos":
        return -cosine
    return -F.logsigmoid(cosine)


def _pick_student(student: Mapping[StudentKey, torch.Tensor], key: StudentKey, term: LossTerm) -> torch.Tensor:
    if key not in student:
        raise LossInputError(f"loss term '{term.name}': no student prediction for key {key!r}; "
                             f"the task provided {sorted(map(str, student))}")
    return student[key]


def _pick_teacher(teacher: Sequence[Optional[torch.Tensor]], index: int, term: LossTerm,
                  label: str = "teacher") -> torch.Tensor:
    if index >= len(teacher) or teacher[index] is None:
        raise LossInputError(f"loss term '{term.name}': {label} hidden state {index} was not computed "
                             f"({len(teacher)} available); add {index} to the teacher's output_layers")
    return teacher[index]


def _reduce_layers(values: List[torch.Tensor], reduction: str) -> torch.Tensor:
    stacked = torch.stack(values)
    return stacked.mean() if reduction == "mean" else stacked.sum()


def _frame_denominator(term: LossTerm, used: torch.Tensor) -> Union[float, torch.Tensor]:
    """Number of utterances (frame sum) or of used frames (frame mean, a tensor: no host sync).

    A batch without a used frame makes the mean 0/0 = NaN, which the trainer reports as a
    non-finite term by name (the encoders refuse utterances shorter than one frame, so a real
    batch always has frames)."""
    if term.frame_reduction == "sum":
        return float(used.shape[0])
    return used.sum(dtype=torch.float32)


def _used_rows(features: torch.Tensor, used: torch.Tensor) -> torch.Tensor:
    """``[B, N, D]`` in float32 with the frames outside ``used`` ([B, N] bool) set to 0.

    Selecting by value instead of boolean indexing keeps shapes static (no host sync), and zeroing
    (rather than multiplying) keeps NaN/inf garbage in padding out of values and gradients."""
    return torch.where(used[..., None], features.float(), 0.0)


def _used_sum(distance: torch.Tensor, used: torch.Tensor) -> torch.Tensor:
    """Sum of a ``[B, N]`` per-frame distance over the ``used`` frames."""
    return torch.where(used, distance, 0.0).sum()


def _frame_term(term: LossTerm, student: Mapping[StudentKey, torch.Tensor],
                teacher: Sequence[Optional[torch.Tensor]], valid: Optional[torch.Tensor]) -> torch.Tensor:
    values = []
    for key, layer in term.layers:
        prediction = _pick_student(student, key, term)
        target = _pick_teacher(teacher, layer, term)
        check_same_shape(prediction, target, f"loss term '{term.name}' pair ({key!r}, {layer})")
        used = resolve_valid(valid, prediction.shape[0], prediction.shape[1],
                             include_padding=term.include_padding, where=f"loss term '{term.name}'")
        distance = _frame_distance(term.kind, _used_rows(prediction, used), _used_rows(target, used))
        values.append(_used_sum(distance, used) / _frame_denominator(term, used))
    return _reduce_layers(values, term.layer_reduction)


def _mask_split_term(term: LossTerm, student: Mapping[StudentKey, torch.Tensor],
                     teacher: Sequence[Optional[torch.Tensor]], masked_teacher: Optional[Sequence[Optional[torch.Tensor]]],
                     mask_indices: Optional[torch.Tensor], valid: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    if masked_teacher is None or mask_indices is None:
        raise LossInputError(f"loss term '{term.name}' ({term.kind}) needs masked_teacher= (hidden states of the "
                             "teacher pass with masked input) and mask_indices= [B, N] bool")
    masked_values, unmasked_values = [], []
    for key, layer in term.layers:
        prediction = _pick_student(student, key, term)
        target = _pick_teacher(teacher, layer, term)
        masked_target = _pick_teacher(masked_teacher, layer, term, label="masked-teacher")
        check_same_shape(prediction, target, f"loss term '{term.name}' pair ({key!r}, {layer})")
        check_same_shape(prediction, masked_target, f"loss term '{term.name}' pair ({key!r}, {layer}) masked")
        if mask_indices.dtype != torch.bool or tuple(mask_indices.shape) != tuple(prediction.shape[:2]):
            raise LossInputError(f"loss term '{term.name}': mask_indices must be bool [B, N] = "
                                 f"{list(prediction.shape[:2])}, found {mask_indices.dtype} {tuple(mask_indices.shape)}")
        used = resolve_valid(valid, prediction.shape[0], prediction.shape[1],
                             include_padding=term.include_padding, where=f"loss term '{term.name}'")
        denominator = _frame_denominator(term, used)
        in_mask = mask_indices & used
        out_of_mask = ~mask_indices & used
        student_rows = _used_rows(prediction, used)
        # Masked frames learn what the teacher sees with full context; unmasked frames learn what
        # the teacher infers when the same frames are hidden from it.
        masked_values.append(_used_sum(_frame_distance(term.kind, student_rows, _used_rows(target, used)),
                                       in_mask) / denominator)
        unmasked_values.append(_used_sum(_frame_distance(term.kind, student_rows, _used_rows(masked_target, used)),
                                         out_of_mask) / denominator)
    return (_reduce_layers(masked_values, term.layer_reduction),
            _reduce_layers(unmasked_values, term.layer_reduction))


def _gram_term(term: LossTerm, student: Mapping[StudentKey, torch.Tensor],
               teacher: Sequence[Optional[torch.Tensor]], valid: Optional[torch.Tensor]) -> torch.Tensor:
    students = [_pick_student(student, key, term) for key, _ in term.layers]
    teachers = [_pick_teacher(teacher, layer, term) for _, layer in term.layers]
    try:
        return gram_loss(students, teachers, valid, intra=term.kind == "gram_intra", loss=term.gram_loss,
                         normalization=term.gram_normalization, include_padding=term.include_padding,
                         layer_reduction=term.layer_reduction, chunk_size=term.chunk_size)
    except LossInputError as error:
        raise LossInputError(f"loss term '{term.name}': {error}") from None


def evaluate_terms(terms: Sequence[LossTerm], student: Mapping[StudentKey, torch.Tensor],
                   teacher: Sequence[Optional[torch.Tensor]], valid: Optional[torch.Tensor], *,
                   masked_teacher: Optional[Sequence[Optional[torch.Tensor]]] = None,
                   mask_indices: Optional[torch.Tensor] = None,
                   epoch: Optional[float] = None) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Evaluate a preset's loss terms.

    Args:
        terms: the preset's terms (log names must be unique, see :func:`check_terms`).
        student: key -> ``[B, N, D]`` student predictions (heads/projections/raw layers).
        teacher: teacher hidden states by layer index, each ``[B, N, D]`` (``None`` = not kept).
        valid: ``[B, N]`` bool valid frames (``None`` only if every term includes padding).
        masked_teacher: hidden states of the teacher pass on masked input (mask-split kinds).
        mask_indices: ``[B, N]`` bool frames replaced by the mask embedding (mask-split kinds).
        epoch: 1-based (possibly fractional) epoch, for terms with ``linear_decay_epochs``.
    Returns:
        ``(total, values)``: ``total`` the float32 scalar ``Σ weight·value`` (with gradient);
        ``values`` log name -> unweighted detached float32 scalar.
    """
    check_terms(terms)
    if not terms:
        raise ConfigError("loss terms: the preset lists no loss term")
    device = next(iter(student.values())).device if student else torch.device("cpu")
    total = torch.zeros((), dtype=torch.float32, device=device)
    values: Dict[str, torch.Tensor] = {}
    with float32_math(device):
        for term in terms:
            weight = term.weight_at(epoch)
            if term.kind in MASK_SPLIT_KINDS:
                masked, unmasked = _mask_split_term(term, student, teacher, masked_teacher, mask_indices, valid)
                values[f"mask_{term.name}"] = masked.detach()
                values[f"unmask_{term.name}"] = unmasked.detach()
                total = total + weight * (masked + unmasked)
                continue
            if term.kind in GRAM_KINDS:
                value = _gram_term(term, student, teacher, valid)
            else:
                value = _frame_term(term, student, teacher, valid)
            values[term.name] = value.detach()
            total = total + weight * value
    return total, values


@torch.no_grad()
def cosine_per_layer(student: Mapping[StudentKey, torch.Tensor], teacher: Sequence[Optional[torch.Tensor]],
                     valid: torch.Tensor, pairs: Sequence[Tuple[StudentKey, int]]) -> Dict[int, torch.Tensor]:
    """Mean teacher–student cosine similarity per target layer, over valid frames (validation).

    Args:
        student: key -> ``[B, N, D]`` predictions; teacher: hidden states by layer index.
        valid: ``[B, N]`` bool; pairs: (student key, teacher layer) pairs.
    Returns:
        teacher layer index -> float32 scalar mean cosine. To average over several batches,
        weight each batch by ``valid.sum()`` (the number of frames the mean is over).
    """
    probe = LossTerm(name="cosine_per_layer", kind="neg_cos", layers=list(pairs))
    result: Dict[int, torch.Tensor] = {}
    for key, layer in probe.layers:
        if layer in result:
            raise LossInputError(f"cosine_per_layer: teacher layer {layer} appears in more than one pair")
        prediction = _pick_student(student, key, probe)
        target = _pick_teacher(teacher, layer, probe)
        check_same_shape(prediction, target, f"cosine_per_layer pair ({key!r}, {layer})")
        used = resolve_valid(valid, prediction.shape[0], prediction.shape[1], include_padding=False,
                             where="cosine_per_layer")
        with float32_math(prediction.device):
            cosine = F.cosine_similarity(prediction[used].float(), target[used].float(), dim=-1, eps=COSINE_EPS)
        if cosine.numel() == 0:
            raise LossInputError("cosine_per_layer: the batch has no valid frame")
        result[layer] = cosine.mean()
    return result

