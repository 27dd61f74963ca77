"""Knowledge-distillation loss (Hinton et al.): soft teacher targets plus label-smoothed cross-entropy."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["kd_loss"]


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, targets: torch.Tensor,
            T: float = 4.0, alpha: float = 0.5, label_smoothing: float = 0.1) -> torch.Tensor:
    """``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y, label_smoothing)``.

    The KL term is averaged over the batch (``batchmean``), as is the CE term;
    ``T^2`` keeps the soft-target gradients on the scale of the hard ones.
    Computed in float32 whatever the logits' dtype (AMP). With ``alpha == 0``
    or no teacher logits this is plain label-smoothed cross-entropy.
    """
    s = student_logits.float()
    ce = F.cross_entropy(s, targets, label_smoothing=label_smoothing)
    if teacher_logits is None or alpha == 0:
        return ce
    t = teacher_logits.detach().float()
    kl = F.kl_div(F.log_softmax(s / T, dim=1), F.log_softmax(t / T, dim=1), reduction="batchmean", log_target=True)
    return alpha * T * T * kl + (1.0 - alpha) * ce
