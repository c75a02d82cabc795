"""Volume Fusion (MIS-FM): the self-supervised pretext task that pretrains a whole segmentation network.

A foreground patch is fused into a background patch with a voxel-wise discrete coefficient
``alpha in {0, 1/K, ..., 1}`` painted as random boxes; the network predicts the class ``k = K * alpha`` of every
voxel (methods.md section 2). The paper-era algorithm (PyMIC ``volume_fusion``): 10-40 boxes per patch, each
edge drawn between 1/8 and 5/8 of the patch edge, centres uniform, clipped at the border, later boxes painted
over earlier ones, each box a class in 1..K; ``fused = alpha * fg + (1 - alpha) * bg``.

Everything here is pure PyTorch and seeded through an explicit ``torch.Generator``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["FusionBox", "fusion_box_bounds", "draw_fusion_boxes", "paint_fusion_labels", "fuse_volumes",
           "fuse_batch"]


@dataclass(frozen=True)
class FusionBox:
    """One painted box: ``start``/``stop`` per spatial axis (already clipped to the patch) and its class."""
    start: Tuple[int, ...]
    stop: Tuple[int, ...]
    size: Tuple[int, ...]        # drawn size before clipping
    label: int


def fusion_box_bounds(patch_shape: Sequence[int], edge_fraction: Tuple[float, float] = (1 / 8, 5 / 8)
                      ) -> List[Tuple[int, int]]:
    """Smallest and largest box edge per axis: ``round(f * edge)`` for both fractions, at least 1 voxel."""
    low, high = edge_fraction
    if not 0 < low <= high <= 1:
        raise ValueError(f"edge fractions must satisfy 0 < low <= high <= 1, got {edge_fraction}")
    bounds = []
    for edge in patch_shape:
        lo = max(1, int(round(low * edge)))
        hi = max(lo, int(round(high * edge)))
        bounds.append((lo, min(hi, int(edge))))
    return bounds


def _randint(low: int, high: int, generator: Optional[torch.Generator]) -> int:
    """Uniform integer in ``[low, high]`` (both inclusive)."""
    return int(torch.randint(low, high + 1, (1,), generator=generator).item())


def draw_fusion_boxes(patch_shape: Sequence[int], num_classes: int, num_boxes: Tuple[int, int] = (10, 40),
                      edge_fraction: Tuple[float, float] = (1 / 8, 5 / 8),
                      generator: Optional[torch.Generator] = None) -> List[FusionBox]:
    """Draw the boxes of one patch.

    Args:
        patch_shape: spatial shape of the patch (2-D or 3-D).
        num_classes: K, the number of fusion classes besides 0 (alpha = label / K).
        num_boxes: inclusive range of the number of boxes.
        edge_fraction: inclusive range of each box edge as a fraction of the patch edge.
        generator: random generator (CPU).

    Returns:
        The boxes in painting order; each box's centre is uniform over the patch, its extent is clipped to it.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes (K) must be >= 1, got {num_classes}")
    if not 1 <= num_boxes[0] <= num_boxes[1]:
        raise ValueError(f"num_boxes must be a range 1 <= low <= high, got {num_boxes}")
    bounds = fusion_box_bounds(patch_shape, edge_fraction)
    boxes = []
    for _ in range(_randint(num_boxes[0], num_boxes[1], generator)):
        size = tuple(_randint(lo, hi, generator) for lo, hi in bounds)
        centre = tuple(_randint(0, edge - 1, generator) for edge in patch_shape)
        start = tuple(max(0, c - s // 2) for c, s in zip(centre, size))
        stop = tuple(min(edge, c - s // 2 + s) for c, s, edge in zip(centre, size, patch_shape))
        boxes.append(FusionBox(start, stop, size, _randint(1, num_classes, generator)))
    return boxes


def paint_fusion_labels(patch_shape: Sequence[int], boxes: Sequence[FusionBox],
                        device: Optional[torch.device] = None) -> Tensor:
    """Label map (int64, ``patch_shape``, on ``device``): 0 outside every box, later boxes over earlier ones."""
    labels = torch.zeros(tuple(patch_shape), dtype=torch.int64, device=device)
    for box in boxes:
        labels[tuple(slice(a, b) for a, b in zip(box.start, box.stop))] = box.label
    return labels


def fuse_volumes(foreground: Tensor, background: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """``alpha * foreground + (1 - alpha) * background`` with ``alpha = labels / K``, broadcast over channels.

    Args:
        foreground, background: ``(B, C, *spatial)``.
        labels: ``(B, 1, *spatial)`` integer labels in ``0..K``.
        num_classes: K.
    """
    alpha = labels.to(foreground.dtype) / num_classes
    return alpha * foreground + (1 - alpha) * background


def fuse_batch(data: Tensor, num_classes: int, foreground: Optional[Tensor] = None,
               num_boxes: Tuple[int, int] = (10, 40), edge_fraction: Tuple[float, float] = (1 / 8, 5 / 8),
               generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
    """Volume Fusion of a batch: every sample is a background with its own boxes.

    Args:
        data: ``(B, C, *spatial)`` augmented batch (the backgrounds).
        num_classes: K.
        foreground: ``(B, C, *spatial)`` foregrounds; default: the batch rolled by one sample (cross-scan), which
            needs ``B >= 2``.
        num_boxes, edge_fraction: see :func:`draw_fusion_boxes`.
        generator: CPU random generator for the boxes.

    Returns:
        ``(fused, labels)``: fused images like ``data`` and int64 labels ``(B, 1, *spatial)`` on ``data``'s device.
    """
    if foreground is None:
        if data.shape[0] < 2:
            raise ValueError("cross-scan fusion by batch roll needs a batch of at least 2; pass a foreground")
        foreground = torch.roll(data, shifts=1, dims=0)
    if foreground.shape != data.shape:
        raise ValueError(f"foreground {tuple(foreground.shape)} and background {tuple(data.shape)} differ")
    spatial = tuple(data.shape[2:])
    # boxes are drawn on the CPU (a few scalars), painted where the batch is: no full-size host-to-device copy
    labels = torch.stack([paint_fusion_labels(spatial, draw_fusion_boxes(spatial, num_classes, num_boxes,
                                                                          edge_fraction, generator), data.device)
                          for _ in range(data.shape[0])])[:, None]
    return fuse_volumes(foreground, data, labels, num_classes), labels
