"""Scalar schedules for teacher momentum and consistency-loss weights."""
from __future__ import annotations

import math

__all__ = ["cosine_momentum", "gaussian_rampup", "mean_teacher_decay"]


def cosine_momentum(step: int, total_steps: int, base: float = 0.996, final: float = 1.0) -> float:
    """Cosine schedule of the EMA teacher momentum, from ``base`` to ``final``.

    Args:
        step: current optimisation step; values outside ``[0, total_steps]`` are clipped.
        total_steps: number of steps over which the momentum rises, must be > 0.
        base: momentum at step 0.
        final: momentum at and after ``total_steps``.

    Returns:
        ``final - (final - base) * (cos(pi * t) + 1) / 2`` with ``t = clip(step / total_steps, 0, 1)``.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    t = min(max(step / total_steps, 0.0), 1.0)
    return final - (final - base) * (math.cos(math.pi * t) + 1.0) / 2.0


def gaussian_rampup(step: int, rampup_steps: int) -> float:
    """Sigmoid-shaped ramp-up ``exp(-5 (1 - t)^2)`` from about 0.0067 to 1.

    Args:
        step: current step (epoch or iteration, as long as ``rampup_steps`` uses the same unit).
        rampup_steps: length of the ramp; <= 0 disables it.

    Returns:
        The weight factor, with ``t = clip(step / rampup_steps, 0, 1)``; 1.0 when ``rampup_steps <= 0``.
    """
    if rampup_steps <= 0:
        return 1.0
    t = min(max(step / rampup_steps, 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)


def mean_teacher_decay(step: int, decay: float = 0.99) -> float:
    """EMA decay of a mean teacher with UA-MT's warm-up: ``min(1 - 1 / (step + 1), decay)``.

    Early on the teacher follows the student closely (decay 0 at step 0, 0.5 at step 1, ...), so it does not
    average in the random initialisation for hundreds of steps; from ``step = 1 / (1 - decay) - 1`` on the
    decay is constant.

    Args:
        step: number of optimiser steps taken before this update (0 for the first update).
        decay: the constant decay, in [0, 1).

    Returns:
        The decay (teacher weight) for this update.
    """
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"decay must lie in [0, 1), got {decay}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return min(1.0 - 1.0 / (step + 1.0), decay)
