"""Per-case, per-class Dice and HD95 (95th percentile Hausdorff distance, in mm via MONAI)."""
import math
import warnings
from typing import Dict, Sequence

import numpy as np
import torch


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice of two boolean masks; NaN when both are empty (nnU-Net's convention: the case does not count)."""
    p, r = prediction.sum(), reference.sum()
    if p + r == 0:
        return math.nan
    return float(2.0 * np.logical_and(prediction, reference).sum() / (p + r))


def hd95(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float]) -> float:
    """Symmetric 95th percentile Hausdorff distance between the mask surfaces, in the units of ``spacing``.

    NaN when either mask is empty (the distance is undefined; the Dice of that case already reports the miss).
    """
    if not prediction.any() or not reference.any():
        return math.nan
    from monai.metrics import compute_hausdorff_distance

    def one_hot(mask):
        t = torch.from_numpy(np.ascontiguousarray(mask))[None, None]
        return torch.cat([~t, t], dim=1)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # MONAI's own internal deprecation notice
        value = compute_hausdorff_distance(one_hot(prediction), one_hot(reference), include_background=False,
                                           percentile=95, spacing=list(spacing))
    return float(value.item())


def case_metrics(prediction: np.ndarray, reference: np.ndarray, labels: Sequence[int],
                 spacing: Sequence[float]) -> Dict[int, Dict[str, float]]:
    """Dice and HD95 of every foreground label of one case.

    Args:
        prediction: predicted label map.
        reference: reference label map of the same shape.
        labels: foreground label values to evaluate.
        spacing: voxel spacing along the array axes (mm).

    Returns:
        ``{label: {"dice": ..., "hd95": ...}}``.
    """
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from reference shape {reference.shape}")
    return {int(label): {"dice": dice(prediction == label, reference == label),
                         "hd95": hd95(prediction == label, reference == label, spacing)}
            for label in labels}
