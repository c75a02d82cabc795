"""Consistency losses between student and (detached) teacher logits of shape ``(B, K, *spatial)``.

Both losses compute in float32, also under autocast, because softmax differences of half-precision logits
lose most of their significant digits.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["softmax_mse", "softmax_kl", "sigmoid_mse"]


def _check_shapes(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits differ in shape: {tuple(student_logits.shape)} vs "
            f"{tuple(teacher_logits.shape)}"
        )
    if student_logits.ndim < 2:
        raise ValueError(f"logits need a class axis at dim 1, got shape {tuple(student_logits.shape)}")


def softmax_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the class probabilities.

    Args:
        student_logits: ``(B, K, *spatial)`` logits that receive gradients.
        teacher_logits: logits of the same shape; detached, no gradient reaches them.

    Returns:
        Scalar float32 tensor: mean over all elements of ``(softmax(s) - softmax(t))**2``.
    """
    _check_shapes(student_logits, teacher_logits)
    p_student = torch.softmax(student_logits.float(), dim=1)
    p_teacher = torch.softmax(teacher_logits.detach().float(), dim=1)
    return (p_student - p_teacher).pow(2).mean()


def softmax_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL divergence ``KL(teacher || student)`` between the class distributions, per voxel.

    Args:
        student_logits: ``(B, K, *spatial)`` logits that receive gradients.
        teacher_logits: logits of the same shape; detached, no gradient reaches them.

    Returns:
        Scalar float32 tensor: ``sum_k p_t (log p_t - log p_s)`` averaged over batch and voxels.
    """
    _check_shapes(student_logits, teacher_logits)
    log_p_student = F.log_softmax(student_logits.float(), dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.detach().float(), dim=1)
    # log-space difference avoids log(0) where the teacher is certain
    return (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=1).mean()


def sigmoid_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of per-channel sigmoid probabilities (region-based training, overlapping labels).

    Args:
        student_logits: ``(B, R, *spatial)`` logits that receive gradients.
        teacher_logits: logits of the same shape; detached, no gradient reaches them.

    Returns:
        Scalar float32 tensor: mean over all elements of ``(sigmoid(s) - sigmoid(t))**2``.
    """
    _check_shapes(student_logits, teacher_logits)
    return (torch.sigmoid(student_logits.float()) - torch.sigmoid(teacher_logits.detach().float())).pow(2).mean()
