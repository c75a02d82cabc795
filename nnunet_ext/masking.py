"""Input masking for MedContext (masked-input contextual reconstruction).

Spatial tensors are laid out as ``(B, C, *spatial)`` with two or three spatial axes. Masks are boolean
``(B, 1, *spatial)`` tensors in which ``True`` marks a hidden voxel. All functions create their tensors on
the device of their inputs (or the ``device`` argument) so they run unchanged on CUDA. Random numbers come
from an optional ``torch.Generator``; they are drawn on the generator's device and moved afterwards, so a
CPU generator gives the same masks whatever the target device is.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from nnunet_ext.errors import UserInputError

__all__ = [
    "MaskConfigError",
    "default_cell_size",
    "check_mask_config",
    "block_mask",
    "tube_mask",
    "organ_mask",
    "mixed_organ_block_mask",
    "apply_mask",
    "LearnableMaskValue",
]


class MaskConfigError(UserInputError, ValueError):
    """Unusable masking configuration.

    A ``ValueError`` for library callers and a :class:`~nnunet_ext.errors.UserInputError` so that trainers
    stop with the message instead of a traceback.
    """


def default_cell_size(patch_size: Sequence[int], divisor: int = 8, min_edge: int = 4) -> tuple[int, ...]:
    """Masking cell size derived from the patch size.

    Args:
        patch_size: spatial patch size, one entry per axis.
        divisor: number of cells wanted along each axis.
        min_edge: smallest cell edge; cells below this size hide too little context to be useful.

    Returns:
        Per axis ``max(min_edge, patch // divisor)``, capped at the patch edge itself.
    """
    if divisor < 1 or min_edge < 1:
        raise ValueError(f"divisor and min_edge must be >= 1, got divisor={divisor}, min_edge={min_edge}")
    return tuple(min(int(p), max(int(min_edge), int(p) // int(divisor))) for p in patch_size)


def _grid_shape(spatial_shape: Sequence[int], cell_size: Sequence[int]) -> tuple[int, ...]:
    """Number of cells per axis; a partial last cell counts as a cell."""
    return tuple(math.ceil(int(s) / int(c)) for s, c in zip(spatial_shape, cell_size))


def _suggest_cell_size(patch_size: tuple[int, ...], cell_size: tuple[int, ...]) -> str:
    """Text proposing a cell size that gives a valid grid for this patch, or nothing if none differs."""
    for candidate in (default_cell_size(patch_size), tuple(max(1, p // 2) for p in patch_size)):
        if candidate != cell_size and math.prod(_grid_shape(patch_size, candidate)) >= 4:
            return f" (e.g. {candidate})"
    return ""


def _check_ratio(ratio: float) -> None:
    if not 0.0 < float(ratio) < 1.0:
        raise MaskConfigError(
            f"mask ratio must lie strictly between 0 and 1, got {ratio}. A ratio of 0 hides nothing and a "
            f"ratio of 1 hides the whole input; typical values are 0.3 to 0.75."
        )


def check_mask_config(patch_size: Sequence[int], cell_size: Sequence[int], ratio: float) -> None:
    """Validate a block-masking configuration; meant to be called once when a trainer starts.

    Args:
        patch_size: spatial patch size, 2 or 3 entries.
        cell_size: masking cell size, one entry per patch axis.
        ratio: fraction of cells to hide, strictly between 0 and 1.

    Raises:
        MaskConfigError: (a ``ValueError``) with the offending values and a suggested fix.
    """
    patch_size = tuple(int(p) for p in patch_size)
    cell_size = tuple(int(c) for c in cell_size)
    _check_ratio(ratio)
    if len(patch_size) not in (2, 3):
        raise MaskConfigError(f"masking supports 2-D and 3-D patches, got patch size {patch_size}.")
    if len(cell_size) != len(patch_size):
        raise MaskConfigError(
            f"cell size {cell_size} has {len(cell_size)} entries but patch size {patch_size} has "
            f"{len(patch_size)}; give one cell edge per patch axis."
        )
    if any(p < 1 for p in patch_size):
        raise MaskConfigError(f"patch size {patch_size} has an edge below 1 voxel.")
    if any(c < 1 for c in cell_size):
        raise MaskConfigError(
            f"cell size {cell_size} has an edge below 1 voxel (patch size {patch_size}); every cell edge "
            f"must be at least 1{_suggest_cell_size(patch_size, cell_size)}."
        )
    grid = _grid_shape(patch_size, cell_size)
    if math.prod(grid) < 4:
        raise MaskConfigError(
            f"patch size {patch_size} with cell size {cell_size} gives a masking grid of {grid} = "
            f"{math.prod(grid)} cell(s), but at least 4 are needed so that part of the patch stays visible. "
            f"Use a smaller cell size{_suggest_cell_size(patch_size, cell_size)}, a larger patch size, or another "
            f"plans configuration with larger patches."
        )


def _check_cells(spatial_shape: Sequence[int], cell_size: Sequence[int]) -> None:
    if len(spatial_shape) not in (2, 3):
        raise MaskConfigError(f"masking supports 2 or 3 spatial axes, got spatial shape {tuple(spatial_shape)}.")
    if len(cell_size) != len(spatial_shape):
        raise MaskConfigError(
            f"cell size {tuple(cell_size)} does not match spatial shape {tuple(spatial_shape)}; give one cell "
            f"edge per spatial axis."
        )
    if any(int(c) < 1 for c in cell_size):
        raise MaskConfigError(f"cell size {tuple(cell_size)} has an edge below 1 voxel.")


def _target_device(generator: torch.Generator | None, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    if generator is not None:
        return generator.device
    return torch.empty(0).device  # honours torch.set_default_device


def _random_cells(batch_size: int, grid: Sequence[int], ratio: float, generator, device) -> torch.Tensor:
    """Boolean ``(B, *grid)`` with exactly ``clip(round(ratio * n), 1, n - 1)`` True cells per sample."""
    n_cells = math.prod(grid)
    if n_cells < 2:
        raise MaskConfigError(
            f"masking grid {tuple(grid)} has {n_cells} cell; at least 2 are needed to hide part of the input. "
            f"Use a smaller cell size or a larger patch."
        )
    n_masked = min(max(round(float(ratio) * n_cells), 1), n_cells - 1)
    noise_device = generator.device if generator is not None else device
    noise = torch.rand((batch_size, n_cells), generator=generator, device=noise_device)
    # the n_masked cells with the smallest noise form a uniformly random subset, drawn per sample
    chosen = noise.argsort(dim=1)[:, :n_masked].to(device)
    cells = torch.zeros((batch_size, n_cells), dtype=torch.bool, device=device)
    cells.scatter_(1, chosen, True)
    return cells.view(batch_size, *grid)


def _cells_to_voxels(cells: torch.Tensor, cell_size: Sequence[int], spatial_shape: Sequence[int]) -> torch.Tensor:
    """Nearest upsampling of a ``(B, *grid)`` cell map to ``(B, *spatial)``, cropping partial edge cells."""
    for axis, (c, s) in enumerate(zip(cell_size, spatial_shape), start=1):
        cells = cells.repeat_interleave(int(c), dim=axis).narrow(axis, 0, int(s))
    return cells.contiguous()


def block_mask(
    batch_size: int,
    spatial_shape: Sequence[int],
    cell_size: Sequence[int],
    ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Random block mask: a grid of cells of which a fixed fraction is hidden, independently per sample.

    Args:
        batch_size: number of samples B.
        spatial_shape: spatial size of the input, 2 or 3 entries.
        cell_size: cell edge per axis; the grid has ``ceil(spatial / cell)`` cells per axis and the last cell
            along an axis is cropped when the size is not divisible.
        ratio: fraction of cells to hide, strictly between 0 and 1. Exactly ``round(ratio * n_cells)`` cells
            are hidden (Python rounding), but at least 1 and at most ``n_cells - 1``.
        generator: optional source of randomness, used on its own device.
        device: device of the result; defaults to the generator's device, else torch's default device.

    Returns:
        Boolean tensor ``(B, 1, *spatial_shape)``, True where the input is hidden.
    """
    _check_ratio(ratio)
    _check_cells(spatial_shape, cell_size)
    device = _target_device(generator, device)
    cells = _random_cells(batch_size, _grid_shape(spatial_shape, cell_size), ratio, generator, device)
    return _cells_to_voxels(cells, cell_size, spatial_shape).unsqueeze(1)


def tube_mask(
    batch_size: int,
    spatial_shape: Sequence[int],
    cell_size: Sequence[int],
    ratio: float,
    axis: int = 0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Tube mask: a block pattern over the other axes, repeated along ``axis``.

    In 3-D every slice perpendicular to ``axis`` carries the same 2-D pattern; in 2-D the result is stripes.

    Args:
        batch_size: number of samples B.
        spatial_shape: spatial size of the input, 2 or 3 entries.
        cell_size: cell edge per axis (the entry for ``axis`` is ignored).
        ratio: fraction of cells of the pattern grid to hide, strictly between 0 and 1.
        axis: spatial axis along which the pattern is repeated (0-based, negative counts from the end).
        generator: optional source of randomness, used on its own device.
        device: device of the result; defaults to the generator's device, else torch's default device.

    Returns:
        Boolean tensor ``(B, 1, *spatial_shape)``, True where the input is hidden.
    """
    _check_ratio(ratio)
    _check_cells(spatial_shape, cell_size)
    n_dims = len(spatial_shape)
    if not -n_dims <= axis < n_dims:
        raise ValueError(f"tube axis {axis} out of range for {n_dims} spatial axes")
    axis = axis % n_dims
    device = _target_device(generator, device)
    other_shape = [s for i, s in enumerate(spatial_shape) if i != axis]
    other_cells = [c for i, c in enumerate(cell_size) if i != axis]
    cells = _random_cells(batch_size, _grid_shape(other_shape, other_cells), ratio, generator, device)
    pattern = _cells_to_voxels(cells, other_cells, other_shape).unsqueeze(axis + 1)
    out_shape = (batch_size, *spatial_shape)
    return pattern.expand(out_shape).contiguous().unsqueeze(1)


def _label_bbox(labels: torch.Tensor, label: int) -> list[tuple[int, int]]:
    """Inclusive-exclusive bounding box ``[(start, stop), ...]`` of ``labels == label`` (label must be present)."""
    region = labels == label
    bbox = []
    for axis in range(region.ndim):
        others = tuple(d for d in range(region.ndim) if d != axis)
        hits = region.any(dim=others).nonzero().flatten()
        bbox.append((int(hits[0]), int(hits[-1]) + 1))
    return bbox


def organ_mask(
    target: torch.Tensor,
    dilation: int = 3,
    generator: torch.Generator | None = None,
    ignore_label: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask the dilated bounding box of one randomly chosen foreground structure per sample.

    Args:
        target: integer label map ``(B, 1, *spatial)``; float dtypes holding integers are accepted.
        dilation: voxels added to the bounding box on every side, clipped to the patch.
        generator: optional source of randomness, used on its own device.
        ignore_label: label never chosen (nnU-Net's ignore label), or None.

    Returns:
        ``(mask, found)``: boolean mask ``(B, 1, *spatial)`` and boolean ``(B,)`` telling for which samples a
        foreground label (> 0, not ``ignore_label``) was present. Samples without one get an all-False mask.
    """
    if target.ndim not in (4, 5) or target.shape[1] != 1:
        raise ValueError(f"target must have shape (B, 1, *spatial) with 2 or 3 spatial axes, got {tuple(target.shape)}")
    if dilation < 0:
        raise ValueError(f"dilation must be >= 0, got {dilation}")
    batch_size, spatial = target.shape[0], target.shape[2:]
    device = target.device
    labels = target[:, 0].round().long() if target.is_floating_point() else target[:, 0].long()
    # one uniform draw per sample regardless of content, so the generator advances predictably
    noise_device = generator.device if generator is not None else device
    draws = torch.rand(batch_size, generator=generator, device=noise_device).tolist()
    mask = torch.zeros((batch_size, 1, *spatial), dtype=torch.bool, device=device)
    found = torch.zeros(batch_size, dtype=torch.bool, device=device)
    for b in range(batch_size):
        present = [int(v) for v in torch.unique(labels[b]).tolist() if v > 0 and v != ignore_label]
        if not present:
            continue
        label = present[min(int(draws[b] * len(present)), len(present) - 1)]
        box = _label_bbox(labels[b], label)
        slices = tuple(slice(max(lo - dilation, 0), min(hi + dilation, size)) for (lo, hi), size in zip(box, spatial))
        mask[(b, 0) + slices] = True
        found[b] = True
    return mask, found


def mixed_organ_block_mask(
    target: torch.Tensor,
    cell_size: Sequence[int],
    ratio: float,
    organ_probability: float,
    dilation: int = 3,
    generator: torch.Generator | None = None,
    ignore_label: int | None = None,
) -> torch.Tensor:
    """Per sample an organ mask with probability ``organ_probability``, otherwise a block mask.

    Samples without foreground always get a block mask, so every sample hides something.

    Args:
        target: label map ``(B, 1, *spatial)``, see :func:`organ_mask`.
        cell_size: cell edge per spatial axis for the block mask.
        ratio: fraction of cells hidden by the block mask.
        organ_probability: chance per sample of using the organ mask, in [0, 1].
        dilation: bounding-box dilation of the organ mask in voxels.
        generator: optional source of randomness, used on its own device.
        ignore_label: label never chosen as organ, see :func:`organ_mask`.

    Returns:
        Boolean tensor ``(B, 1, *spatial)`` on ``target``'s device.
    """
    if not 0.0 <= float(organ_probability) <= 1.0:
        raise ValueError(f"organ_probability must lie in [0, 1], got {organ_probability}")
    batch_size, spatial = target.shape[0], tuple(target.shape[2:])
    blocks = block_mask(batch_size, spatial, cell_size, ratio, generator=generator, device=target.device)
    noise_device = generator.device if generator is not None else target.device
    use_organ = torch.rand(batch_size, generator=generator, device=noise_device).to(target.device) < organ_probability
    if not bool(use_organ.any()):
        return blocks
    organs, found = organ_mask(target, dilation=dilation, generator=generator, ignore_label=ignore_label)
    choose = (use_organ & found).view(batch_size, *([1] * (blocks.ndim - 1)))
    return torch.where(choose, organs, blocks)


def apply_mask(x: torch.Tensor, mask: torch.Tensor, mask_value: torch.Tensor) -> torch.Tensor:
    """Replace hidden voxels by a per-channel value.

    Args:
        x: input ``(B, C, *spatial)``.
        mask: boolean ``(B, 1, *spatial)``, True where hidden.
        mask_value: ``(C,)`` values for hidden voxels; gradients flow back to it.

    Returns:
        Tensor like ``x`` (same dtype) with ``mask_value[c]`` at hidden voxels of channel c.
    """
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {mask.dtype}")
    if mask.ndim != x.ndim or mask.shape[0] != x.shape[0] or mask.shape[1] != 1 or mask.shape[2:] != x.shape[2:]:
        raise ValueError(
            f"mask shape {tuple(mask.shape)} does not fit input shape {tuple(x.shape)}; expected (B, 1, *spatial)"
        )
    if mask_value.numel() != x.shape[1]:
        raise ValueError(f"mask_value has {mask_value.numel()} entries but the input has {x.shape[1]} channels")
    value = mask_value.to(device=x.device, dtype=x.dtype).view(1, -1, *([1] * (x.ndim - 2)))
    return torch.where(mask.to(x.device), value, x)


class LearnableMaskValue(nn.Module):
    """Learnable per-channel fill value for hidden voxels.

    Starts at 0, the mean of nnU-Net's z-score normalised intensities.

    Args:
        num_channels: number of input channels C.
    """

    def __init__(self, num_channels: int):
        super().__init__()
        if num_channels < 1:
            raise ValueError(f"num_channels must be >= 1, got {num_channels}")
        self.value = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Return ``x`` with hidden voxels replaced by ``self.value``, see :func:`apply_mask`."""
        return apply_mask(x, mask, self.value)

    def extra_repr(self) -> str:
        return f"num_channels={self.value.numel()}"
