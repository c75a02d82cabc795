"""Tests of nnunet_ext.masking against independent numpy / scipy computations."""
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from nnunet_ext.masking import (
    LearnableMaskValue,
    apply_mask,
    block_mask,
    check_mask_config,
    default_cell_size,
    mixed_organ_block_mask,
    organ_mask,
    tube_mask,
)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _cell_grid(mask, cell):
    """Cell-level view of a voxel mask (B, 1, *spatial): the value at each cell origin."""
    m = mask[:, 0].numpy()
    return m[(slice(None),) + tuple(slice(None, None, c) for c in cell)]


def _upsample_reference(grid, cell, spatial):
    """Voxel mask from a cell grid by integer division of voxel coordinates (independent of the module)."""
    index = np.ix_(*[np.arange(s) // c for s, c in zip(spatial, cell)])
    return np.stack([g[index] for g in grid])


def _expected_masked_cells(ratio, n_cells):
    return min(max(round(ratio * n_cells), 1), n_cells - 1)


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    "patch, expected",
    [
        ((128, 128, 128), (16, 16, 16)),
        ((20, 36, 30), (4, 4, 4)),
        ((40, 160, 192), (5, 20, 24)),
        ((3, 64, 64), (3, 8, 8)),
        ((512, 448), (64, 56)),
    ],
)
def test_default_cell_size(patch, expected):
    assert default_cell_size(patch) == expected


def test_default_cell_size_custom_divisor():
    assert default_cell_size((64, 64), divisor=4, min_edge=2) == (16, 16)
    assert default_cell_size((6, 64), divisor=4, min_edge=2) == (2, 16)


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5])
def test_check_mask_config_rejects_bad_ratio(ratio):
    with pytest.raises(ValueError, match="ratio"):
        check_mask_config((64, 64, 64), (8, 8, 8), ratio)


@pytest.mark.parametrize(
    "patch, cell",
    [((4, 4, 4), (4, 4, 4)), ((8, 4), (4, 4)), ((16, 16, 16), (16, 16, 8)), ((3, 3), (8, 8))],
)
def test_check_mask_config_rejects_small_grid(patch, cell):
    with pytest.raises(ValueError) as info:
        check_mask_config(patch, cell, 0.5)
    message = str(info.value)
    assert str(patch) in message and str(cell) in message
    assert "smaller cell size" in message and "plans configuration" in message


def test_check_mask_config_rejects_zero_cell_and_length_mismatch():
    with pytest.raises(ValueError, match="below 1"):
        check_mask_config((64, 64, 64), (8, 0, 8), 0.5)
    with pytest.raises(ValueError, match="one cell edge per patch axis"):
        check_mask_config((64, 64, 64), (8, 8), 0.5)


def test_check_mask_config_accepts_valid():
    check_mask_config((64, 64, 64), (8, 8, 8), 0.6)
    check_mask_config((8, 8), (4, 4), 0.5)  # exactly 4 cells
    check_mask_config((20, 36, 30), default_cell_size((20, 36, 30)), 0.3)


# ---------------------------------------------------------------- block mask


@pytest.mark.parametrize(
    "spatial, cell, ratio",
    [
        ((32, 32, 32), (8, 8, 8), 0.6),
        ((20, 36, 30), (8, 8, 8), 0.6),
        ((20, 36, 30), (4, 4, 4), 0.3),
        ((64, 48), (8, 8), 0.5),
        ((30, 22), (8, 8), 0.75),
    ],
)
def test_block_mask_structure(spatial, cell, ratio):
    batch = 6
    mask = block_mask(batch, spatial, cell, ratio, generator=_gen(0))
    assert mask.shape == (batch, 1, *spatial) and mask.dtype == torch.bool

    grid = _cell_grid(mask, cell)
    grid_shape = tuple(math.ceil(s / c) for s, c in zip(spatial, cell))
    assert grid.shape[1:] == grid_shape
    # exactly the requested number of cells per sample, and the mask is constant inside each cell
    n_cells = math.prod(grid_shape)
    counts = grid.reshape(batch, -1).sum(axis=1)
    assert (counts == _expected_masked_cells(ratio, n_cells)).all()
    np.testing.assert_array_equal(mask[:, 0].numpy(), _upsample_reference(grid, cell, spatial))
    # voxel fraction close to the ratio (partial edge cells shift it a little for non-divisible sizes)
    assert abs(mask.float().mean().item() - ratio) < 0.05


def test_block_mask_divisible_per_sample_ratio():
    mask = block_mask(4, (32, 32, 32), (8, 8, 8), 0.6)
    per_sample = mask.float().mean(dim=(1, 2, 3, 4))
    assert torch.all((per_sample - 0.6).abs() < 0.05)


def test_block_mask_differs_per_sample():
    mask = block_mask(4, (32, 32, 32), (8, 8, 8), 0.5, generator=_gen(1))
    flat = mask.view(4, -1)
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.equal(flat[i], flat[j])


def test_block_mask_seeding():
    args = (3, (24, 24, 24), (8, 8, 8), 0.5)
    assert torch.equal(block_mask(*args, generator=_gen(7)), block_mask(*args, generator=_gen(7)))
    assert not torch.equal(block_mask(*args, generator=_gen(7)), block_mask(*args, generator=_gen(8)))


def test_block_mask_device_argument():
    mask = block_mask(2, (16, 16), (4, 4), 0.5, generator=_gen(0), device="cpu")
    assert mask.device.type == "cpu"


def test_block_mask_extreme_ratio_keeps_one_cell_each():
    # round(0.01 * 8) = 0 and round(0.99 * 8) = 8 are clipped to 1 and 7 cells
    low = block_mask(2, (16, 8), (4, 4), 0.01, generator=_gen(0))
    high = block_mask(2, (16, 8), (4, 4), 0.99, generator=_gen(0))
    assert (_cell_grid(low, (4, 4)).reshape(2, -1).sum(1) == 1).all()
    assert (_cell_grid(high, (4, 4)).reshape(2, -1).sum(1) == 7).all()


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5])
def test_block_mask_rejects_bad_ratio(ratio):
    with pytest.raises(ValueError):
        block_mask(2, (32, 32, 32), (8, 8, 8), ratio)


def test_block_mask_rejects_too_small_patch():
    with pytest.raises(ValueError):
        block_mask(2, (4, 4, 4), (4, 4, 4), 0.5)
    with pytest.raises(ValueError):
        block_mask(2, (16, 16, 16), (8, 8), 0.5)


# ---------------------------------------------------------------- tube mask


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_tube_mask_3d(axis):
    spatial, cell, ratio, batch = (16, 20, 24), (4, 4, 4), 0.5, 3
    mask = tube_mask(batch, spatial, cell, ratio, axis=axis, generator=_gen(3))
    assert mask.shape == (batch, 1, *spatial) and mask.dtype == torch.bool
    m = mask[:, 0].numpy()
    tube_axis = axis % 3 + 1
    first = np.take(m, [0], axis=tube_axis)
    assert (m == first).all()  # constant along the tube
    pattern = np.squeeze(first, axis=tube_axis)
    other_cell = [c for i, c in enumerate(cell) if i != axis % 3]
    other_spatial = [s for i, s in enumerate(spatial) if i != axis % 3]
    grid = pattern[(slice(None),) + tuple(slice(None, None, c) for c in other_cell)]
    n_cells = grid[0].size
    assert (grid.reshape(batch, -1).sum(1) == _expected_masked_cells(ratio, n_cells)).all()
    np.testing.assert_array_equal(pattern, _upsample_reference(grid, other_cell, other_spatial))
    # varies across the other axes, and between samples
    assert 0 < pattern.mean() < 1
    assert not (pattern[0] == pattern[1]).all()


def test_tube_mask_2d_stripes():
    mask = tube_mask(2, (32, 24), (4, 4), 0.5, axis=1, generator=_gen(0))
    m = mask[:, 0].numpy()
    assert (m == m[:, :, :1]).all()  # each row is all-True or all-False
    rows = m[:, :, 0]
    assert (rows[:, ::4].sum(1) == 4).all()  # 8 row cells, half hidden
    assert abs(m.mean() - 0.5) < 1e-6


def test_tube_mask_seeding_and_errors():
    args = (2, (16, 16, 16), (4, 4, 4), 0.4)
    assert torch.equal(tube_mask(*args, generator=_gen(5)), tube_mask(*args, generator=_gen(5)))
    assert not torch.equal(tube_mask(*args, generator=_gen(5)), tube_mask(*args, generator=_gen(6)))
    with pytest.raises(ValueError):
        tube_mask(*args, axis=3)
    with pytest.raises(ValueError):
        tube_mask(2, (16, 16, 16), (4, 4, 4), 1.0)
    with pytest.raises(ValueError):
        tube_mask(2, (16, 4), (4, 4), 0.5, axis=0)  # one cell across the tube


# ---------------------------------------------------------------- organ mask


def _organ_target():
    """Three samples: two separated organs; background only; an organ at the border plus ignore label 4."""
    t = np.zeros((3, 1, 24, 24, 24), dtype=np.float32)
    t[0, 0, 2:6, 3:9, 4:7] = 1
    zz, yy, xx = np.mgrid[:24, :24, :24]
    ball = (zz - 17) ** 2 + (yy - 18) ** 2 + (xx - 12) ** 2 <= 9
    t[0, 0][ball] = 2
    t[2, 0, 0:3, 20:24, 5:10] = 3
    t[2, 0, 12:14, 12:14, 12:14] = 4
    return t


def _dilated_bbox_mask(labels, label, dilation):
    """Reference mask from scipy.ndimage.find_objects, dilated and clipped."""
    box = ndimage.find_objects((labels == label).astype(np.int32))[0]
    out = np.zeros(labels.shape, dtype=bool)
    out[tuple(slice(max(s.start - dilation, 0), min(s.stop + dilation, n)) for s, n in zip(box, labels.shape))] = True
    return out


def test_organ_mask_matches_dilated_bbox():
    target = _organ_target()
    labels = target[:, 0].astype(np.int64)
    chosen_labels = set()
    for seed in range(12):
        mask, found = organ_mask(torch.from_numpy(target), dilation=2, generator=_gen(seed), ignore_label=4)
        assert mask.shape == target.shape and mask.dtype == torch.bool
        assert found.tolist() == [True, False, True]
        m = mask[:, 0].numpy()
        # sample 0: the chosen organ is the one whose voxels are all hidden; the mask is its dilated bbox
        covered = [lab for lab in (1, 2) if m[0][labels[0] == lab].all()]
        assert len(covered) == 1
        chosen_labels.add(covered[0])
        np.testing.assert_array_equal(m[0], _dilated_bbox_mask(labels[0], covered[0], 2))
        assert not m[1].any()
        # sample 2: label 4 is ignored, label 3 touches the border so its box is clipped
        np.testing.assert_array_equal(m[2], _dilated_bbox_mask(labels[2], 3, 2))
        assert not m[2][12:14, 12:14, 12:14].any()
    assert chosen_labels == {1, 2}  # uniform choice reaches both organs


def test_organ_mask_clipping_explicit():
    target = torch.zeros(1, 1, 10, 12)
    target[0, 0, 0:2, 9:12] = 5
    mask, found = organ_mask(target, dilation=3)
    expected = torch.zeros(10, 12, dtype=torch.bool)
    expected[0:5, 6:12] = True
    assert found.tolist() == [True]
    assert torch.equal(mask[0, 0], expected)


def test_organ_mask_integer_target_and_zero_dilation():
    target = torch.zeros(2, 1, 8, 8, 8, dtype=torch.int64)
    target[0, 0, 1, 2, 3] = 1
    mask, found = organ_mask(target, dilation=0)
    assert found.tolist() == [True, False]
    assert mask[0, 0].sum() == 1 and mask[0, 0, 1, 2, 3]
    assert not mask[1].any()


def test_organ_mask_only_ignore_label_counts_as_background():
    target = torch.full((1, 1, 6, 6), 2.0)
    mask, found = organ_mask(target, ignore_label=2)
    assert found.tolist() == [False] and not mask.any()


def test_organ_mask_seeding():
    target = torch.from_numpy(_organ_target())
    a, _ = organ_mask(target, generator=_gen(11))
    b, _ = organ_mask(target, generator=_gen(11))
    assert torch.equal(a, b)


# ---------------------------------------------------------------- mixed


def test_mixed_probability_zero_is_block_mask():
    target = torch.from_numpy(_organ_target())
    cell, ratio = (4, 4, 4), 0.5
    mask = mixed_organ_block_mask(target, cell, ratio, organ_probability=0.0, generator=_gen(2))
    assert mask.shape == target.shape and mask.dtype == torch.bool
    grid = _cell_grid(mask, cell)
    assert (grid.reshape(3, -1).sum(1) == _expected_masked_cells(ratio, 216)).all()
    np.testing.assert_array_equal(mask[:, 0].numpy(), _upsample_reference(grid, cell, (24, 24, 24)))
    assert abs(mask.float().mean().item() - ratio) < 0.05


def test_mixed_probability_one_is_organ_mask():
    target_np = _organ_target()
    labels = target_np[:, 0].astype(np.int64)
    target = torch.from_numpy(target_np)
    cell, ratio = (4, 4, 4), 0.5
    for seed in range(4):
        mask = mixed_organ_block_mask(target, cell, ratio, 1.0, dilation=1, generator=_gen(seed), ignore_label=4)
        m = mask[:, 0].numpy()
        options = [_dilated_bbox_mask(labels[0], lab, 1) for lab in (1, 2)]
        assert any((m[0] == o).all() for o in options)
        np.testing.assert_array_equal(m[2], _dilated_bbox_mask(labels[2], 3, 1))
        # background-only sample falls back to a block mask
        grid = _cell_grid(mask[1:2], cell)
        assert grid.sum() == _expected_masked_cells(ratio, 216)


def test_mixed_rejects_bad_probability():
    with pytest.raises(ValueError):
        mixed_organ_block_mask(torch.zeros(1, 1, 8, 8), (4, 4), 0.5, 1.5)


def test_mixed_half_probability_uses_both():
    target = torch.zeros(64, 1, 16, 16)
    target[:, 0, 5:7, 5:7] = 1
    mask = mixed_organ_block_mask(target, (4, 4), 0.5, 0.5, dilation=0, generator=_gen(0))
    is_organ = (mask[:, 0].sum(dim=(1, 2)) == 4) & mask[:, 0, 5:7, 5:7].all(dim=(1, 2))
    assert 16 < int(is_organ.sum()) < 48


# ---------------------------------------------------------------- apply_mask / learnable value


def test_apply_mask_values():
    x = torch.randn(2, 3, 6, 5, 4, generator=_gen(0), dtype=torch.float64)
    mask = block_mask(2, (6, 5, 4), (2, 2, 2), 0.5, generator=_gen(1))
    value = torch.tensor([1.5, -2.0, 7.0])
    out = apply_mask(x, mask, value)
    assert out.dtype == x.dtype and out.shape == x.shape
    m = mask.expand_as(x).numpy()
    expected = np.where(m, value.numpy().astype(np.float64)[None, :, None, None, None], x.numpy())
    np.testing.assert_array_equal(out.numpy(), expected)


def test_apply_mask_2d_and_errors():
    x = torch.randn(1, 2, 8, 8)
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    mask[..., :4, :] = True
    out = apply_mask(x, mask, torch.tensor([3.0, 4.0]))
    assert torch.all(out[0, 0, :4] == 3.0) and torch.all(out[0, 1, :4] == 4.0)
    assert torch.equal(out[..., 4:, :], x[..., 4:, :])
    with pytest.raises(ValueError):
        apply_mask(x, mask, torch.zeros(3))
    with pytest.raises(TypeError):
        apply_mask(x, mask.float(), torch.zeros(2))
    with pytest.raises(ValueError):
        apply_mask(x, mask.expand(1, 2, 8, 8), torch.zeros(2))


def test_learnable_mask_value_gradient():
    module = LearnableMaskValue(3)
    assert module.value.shape == (3,) and torch.all(module.value == 0)
    x = torch.randn(2, 3, 8, 8, 8, generator=_gen(0))
    mask = block_mask(2, (8, 8, 8), (4, 4, 4), 0.5, generator=_gen(1))
    weights = torch.tensor([1.0, 2.0, -3.0])
    out = module(x, mask)
    (out * weights.view(1, 3, 1, 1, 1)).sum().backward()
    n_masked = mask.sum().item()
    assert torch.all(module.value.grad != 0)
    torch.testing.assert_close(module.value.grad, weights * n_masked)
    # unmasked voxels keep the input
    keep = ~mask.expand_as(x)
    assert torch.equal(out.detach()[keep], x[keep])


def test_learnable_mask_value_keeps_input_dtype():
    module = LearnableMaskValue(1)
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    mask = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    out = module(x, mask)
    assert out.dtype == torch.float64
    out.sum().backward()
    assert module.value.grad.dtype == torch.float32 and module.value.grad.item() == 16.0
