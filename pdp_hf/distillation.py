"""Knowledge distillation loss for pruning with a dense teacher (the PDP paper's BERT runs: alpha = 0.95)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    task_loss: torch.Tensor | None,
    alpha: float,
    temperature: float,
) -> torch.Tensor:
    """alpha * KD + (1 - alpha) * task_loss, every term a mean over the examples of the batch.

    KD for classification: T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over examples
    (Hinton et al. 2015; the T^2 keeps gradient magnitudes comparable across temperatures).
    KD for regression (one output): mean squared error between student and teacher outputs.
    Without labels (`task_loss=None`) the loss is the KD term alone.
    """
    teacher_logits = teacher_logits.detach().to(student_logits.dtype)
    if student_logits.shape[-1] == 1:
        kd = F.mse_loss(student_logits.float(), teacher_logits.float())
    else:
        log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
        log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
        kd = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean") * temperature**2
    if task_loss is None:
        return kd
    return alpha * kd + (1.0 - alpha) * task_loss
