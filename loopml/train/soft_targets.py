"""Soft targets: a training target that carries a teacher's scores beside the hard label (distillation).

Layout: a float tensor [rows, 1 + k]. Column 0 is the hard label as the head's loss reads it (class
index, 0/1, or the standardised number), NaN for a row without one (an unlabelled row); the other
columns are the teacher's scores in the student's output space:

- category: the teacher's class log-probabilities (k = classes),
- binary: the teacher's logit of the positive class (k = 1),
- number: the teacher's standardised prediction (k = 1).

The loss (``training.distill`` in the config) is ``alpha * hard + (1 - alpha) * soft``: ``hard`` is the
head's own loss (class weights included) over the labelled rows; ``soft`` over every row is
``T^2 * KL(softmax(teacher / T) || softmax(student / T))`` for a classifier (binary: the two-class
softmax of ``[0, logit]``) and the mean squared error to the teacher's prediction for a number. A
1-D target is ordinary training, so a distilled model's config retrains on plain labels.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

from loopml.errors import LoopmlError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def head_kind(model: torch.nn.Module) -> str:
    """binary, category or number: the kind of the network's head."""
    from loopml.models.heads import BinaryHead, CategoryHead

    head = getattr(model, "head", None)
    return "binary" if isinstance(head, BinaryHead) else "category" if isinstance(head, CategoryHead) else "number"


def combine(hard: torch.Tensor, labelled: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """The soft-target tensor: hard labels (NaN where ``labelled`` is False) beside the teacher's scores."""
    hard = torch.where(labelled, hard.to(torch.float32), torch.full_like(hard, float("nan"), dtype=torch.float32))
    teacher = teacher.to(torch.float32).reshape(len(hard), -1)
    return torch.cat([hard.unsqueeze(1), teacher], dim=1)


def labelled_part(outputs: torch.Tensor, target: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(outputs, hard labels) of the rows with a hard label: what the training metrics are computed on."""
    if target.ndim == 1:
        return outputs, target
    keep = ~torch.isnan(target[:, 0])
    hard = target[keep, 0]
    return outputs[keep], hard.long() if kind == "category" else hard


def _log_softmax_2(logit: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax of the two-class logits [0, logit] / T (a binary head's single logit)."""
    return F.log_softmax(torch.stack([torch.zeros_like(logit), logit], dim=-1) / temperature, dim=-1)


def soft_term(outputs: torch.Tensor, teacher: torch.Tensor, kind: str, temperature: float) -> torch.Tensor:
    """Mean over rows of the soft part: T^2 * KL(teacher_T || student_T), or the MSE for a number."""
    if kind == "number":
        return F.mse_loss(outputs, teacher.reshape(-1))
    if kind == "binary":
        teacher_log = _log_softmax_2(teacher.reshape(-1), temperature)
        student_log = _log_softmax_2(outputs, temperature)
    else:
        teacher_log = F.log_softmax(teacher / temperature, dim=-1)
        student_log = F.log_softmax(outputs / temperature, dim=-1)
    kl = F.kl_div(student_log, teacher_log, log_target=True, reduction="batchmean")
    return temperature**2 * kl


def hard_loss(model: torch.nn.Module, label_smoothing: float = 0.0) -> LossFn:
    """The head's loss, with ``training.label_smoothing`` for a binary or category head (a one-line error for a
    number head; a network without a classification head, e.g. a pretraining one, has no labels to smooth)."""
    def plain(outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return model.loss(outputs, target)  # looked up when called: a network without one fails only then

    if not label_smoothing:
        return plain
    from loopml.config import LABEL_SMOOTHING_NUMBER
    from loopml.models.heads import RegressionHead

    head = getattr(model, "head", None)
    if isinstance(head, RegressionHead):
        raise LoopmlError(LABEL_SMOOTHING_NUMBER)
    if head_kind(model) == "number":
        return plain
    return lambda outputs, target: head.loss(outputs, target, label_smoothing=label_smoothing)


def training_loss(model: torch.nn.Module, distill: object | None, label_smoothing: float = 0.0) -> LossFn:
    """The trainer's loss: the head's own, or with ``distill`` (a DistillConfig) the mix above for 2-D targets;
    ``label_smoothing`` applies to the hard labels (the soft term already is a distribution)."""
    kind = head_kind(model)
    hard_fn = hard_loss(model, label_smoothing)

    def loss(outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.ndim == 1:
            return hard_fn(outputs, target)
        if distill is None:
            raise LoopmlError("the training target carries soft targets but training.distill is not set")
        alpha, temperature = float(distill.alpha), float(distill.temperature)
        soft = soft_term(outputs, target[:, 1:], kind, temperature)
        labelled_outputs, hard = labelled_part(outputs, target, kind)
        if alpha == 0 or not len(hard):
            return (1 - alpha) * soft
        return alpha * hard_fn(labelled_outputs, hard) + (1 - alpha) * soft

    return loss
