"""Tests of nnunet_ext.sdm and nnunet_ext.contrastive against independent SciPy / loop computations."""
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from nnunet_ext.contrastive import SliceProjectionHead, pairwise_distillation_loss, symmetric_info_nce
from nnunet_ext.sdm import SignedDistanceMapTransform, multiclass_sdm, signed_distance_map

# ---------------------------------------------------------------- references


def _face_boundary(mask: np.ndarray) -> np.ndarray:
    """Object voxels with a face neighbour outside the object (image edge replicated, not background)."""
    padded = np.pad(mask, 1, mode="edge")
    core = tuple(slice(1, -1) for _ in range(mask.ndim))
    out = np.zeros_like(mask)
    for axis in range(mask.ndim):
        for step in (-1, 1):
            out |= mask & ~np.roll(padded, step, axis=axis)[core]
    return out


def _reference_sdm(mask: np.ndarray, spacing) -> np.ndarray:
    mask = mask.astype(bool)
    if not mask.any() or mask.all():
        return np.zeros(mask.shape)
    dist_in = ndimage.distance_transform_edt(mask, sampling=spacing)
    dist_out = ndimage.distance_transform_edt(~mask, sampling=spacing)
    sdm = dist_out / dist_out.max() - dist_in / dist_in.max()
    sdm[_face_boundary(mask)] = 0.0
    return sdm


def _random_mask(rng, shape, fill=0.3, smooth=1.0):
    """Blobby random mask: thresholded smoothed noise."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), smooth)
    return noise > np.quantile(noise, 1.0 - fill)


def _loop_info_nce(logits: np.ndarray) -> float:
    """Mean over rows i of -log(exp(l_ii) / sum_j exp(l_ij))."""
    n = logits.shape[0]
    total = 0.0
    for i in range(n):
        total += -math.log(math.exp(logits[i, i]) / sum(math.exp(logits[i, j]) for j in range(n)))
    return total / n


def _normalise_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ---------------------------------------------------------------- signed distance maps

CASES = [
    ((24, 31), None),
    ((24, 31), (0.7, 2.5)),
    ((12, 16, 14), None),
    ((12, 16, 14), (3.0, 0.8, 0.8)),
    ((10, 9, 15), (1.0, 2.0, 0.5)),
]


@pytest.mark.parametrize("shape,spacing", CASES)
def test_sdm_matches_scipy(shape, spacing):
    rng = np.random.default_rng(len(shape) * 100 + (0 if spacing is None else int(10 * spacing[0])))
    for fill in (0.05, 0.3, 0.7):
        mask = _random_mask(rng, shape, fill=fill)
        got = signed_distance_map(mask, spacing)
        assert got.dtype == np.float32 and got.shape == mask.shape
        np.testing.assert_allclose(got, _reference_sdm(mask, spacing), atol=1e-5, rtol=0)
        # boundary exactly 0, negative inside, positive outside, within [-1, 1]
        boundary = _face_boundary(mask)
        assert np.all(got[boundary] == 0.0)
        assert np.all(got[mask & ~boundary] < 0)
        assert np.all(got[~mask] > 0)
        assert got.min() >= -1.0 and got.max() <= 1.0
        assert got.max() == pytest.approx(1.0)
        if (mask & ~boundary).any():
            assert got.min() == pytest.approx(-1.0)


@pytest.mark.parametrize("shape", [(8, 9), (5, 6, 7)])
def test_sdm_empty_and_full(shape):
    for mask in (np.zeros(shape, bool), np.ones(shape, bool)):
        got = signed_distance_map(mask, (1.5,) * len(shape))
        assert got.dtype == np.float32 and np.all(got == 0)


def test_sdm_single_voxel_and_edge_not_background():
    mask = np.zeros((7, 7), bool)
    mask[3, 3] = True
    got = signed_distance_map(mask)
    assert got[3, 3] == 0.0 and got[0, 0] == pytest.approx(1.0)
    # object touching the image edge: the edge is not a boundary
    mask = np.zeros((6, 6), bool)
    mask[:, :3] = True
    got = signed_distance_map(mask)
    assert np.all(got[:, 2] == 0) and np.all(got[:, 0] < 0)


def test_sdm_rejects_bad_input():
    with pytest.raises(ValueError):
        signed_distance_map(np.zeros(5, bool))
    with pytest.raises(ValueError):
        signed_distance_map(np.zeros((4, 4), bool), spacing=(1.0, 1.0, 1.0))


def test_multiclass_stacking_order():
    rng = np.random.default_rng(3)
    labels = np.zeros((10, 12, 11), np.int64)
    labels[_random_mask(rng, labels.shape, 0.3)] = 1
    labels[_random_mask(rng, labels.shape, 0.2)] = 2
    # class 3 absent → zero map
    out = multiclass_sdm(labels, 4, spacing=(2.0, 1.0, 1.0))
    assert out.shape == (3, *labels.shape) and out.dtype == np.float32
    for c in (1, 2):
        np.testing.assert_allclose(out[c - 1], _reference_sdm(labels == c, (2.0, 1.0, 1.0)), atol=1e-5, rtol=0)
    assert np.all(out[2] == 0)


@pytest.mark.parametrize("as_list", [False, True])
def test_transform_on_dict(as_list):
    rng = np.random.default_rng(5)
    labels = np.zeros((9, 10, 11), np.int64)
    labels[_random_mask(rng, labels.shape, 0.4)] = 1
    labels[_random_mask(rng, labels.shape, 0.2)] = 2
    seg = torch.from_numpy(labels[None]).to(torch.int16)
    image = torch.randn(1, *labels.shape)
    full = seg.float() if as_list else seg  # float segmentations are rounded
    segmentation = [full, seg[:, ::2, ::2, ::2]] if as_list else full
    transform = SignedDistanceMapTransform(num_classes=3, spacing=(1.0, 0.5, 0.5))
    out = transform(image=image, segmentation=segmentation)
    assert out["image"] is image and out["segmentation"] is segmentation
    sdm = out["sdm"]
    assert isinstance(sdm, torch.Tensor) and sdm.dtype == torch.float32 and sdm.shape == (2, *labels.shape)
    np.testing.assert_allclose(sdm.numpy(), multiclass_sdm(labels, 3, (1.0, 0.5, 0.5)), atol=0, rtol=0)
    assert "SignedDistanceMapTransform" in repr(transform)


# ---------------------------------------------------------------- InfoNCE losses


def test_symmetric_info_nce_matches_loop():
    torch.manual_seed(0)
    s = torch.randn(7, 5, dtype=torch.float64)
    t = torch.randn(7, 5, dtype=torch.float64)
    tau = 0.5
    logits = _normalise_rows(s.numpy()) @ _normalise_rows(t.numpy()).T / tau
    expected = 0.5 * (_loop_info_nce(logits) + _loop_info_nce(logits.T))
    assert symmetric_info_nce(s, t, tau).item() == pytest.approx(expected, abs=1e-5)
    # other temperature, and (B, W, D) inputs flatten to (B*W, D)
    logits = _normalise_rows(s.numpy()) @ _normalise_rows(t.numpy()).T / 0.1
    expected = 0.5 * (_loop_info_nce(logits) + _loop_info_nce(logits.T))
    got = symmetric_info_nce(s[:6].reshape(2, 3, 5), t[:6].reshape(2, 3, 5), 0.1)
    logits6 = logits[:6, :6]
    assert got.item() == pytest.approx(0.5 * (_loop_info_nce(logits6) + _loop_info_nce(logits6.T)), abs=1e-5)


def test_pairwise_distillation_matches_loop():
    torch.manual_seed(1)
    s = torch.randn(3, 4, 2, 3, 2, dtype=torch.float64)
    t = torch.randn(3, 4, 2, 3, 2, dtype=torch.float64)
    per_volume = []
    for b in range(3):
        sb = _normalise_rows(s[b].reshape(4, -1).T.numpy())  # (L, C)
        tb = _normalise_rows(t[b].reshape(4, -1).T.numpy())
        per_volume.append(_loop_info_nce(sb @ tb.T))
    expected = sum(per_volume) / len(per_volume)
    assert pairwise_distillation_loss(s, t).item() == pytest.approx(expected, abs=1e-5)
    # 2-D feature maps too
    s2, t2 = s[..., 0], t[..., 0]
    expected2 = np.mean([
        _loop_info_nce(_normalise_rows(s2[b].reshape(4, -1).T.numpy()) @ _normalise_rows(t2[b].reshape(4, -1).T.numpy()).T)
        for b in range(3)
    ])
    assert pairwise_distillation_loss(s2, t2).item() == pytest.approx(expected2, abs=1e-5)


def test_losses_reject_shape_mismatch():
    with pytest.raises(ValueError):
        symmetric_info_nce(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError):
        pairwise_distillation_loss(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 5))


def test_gradients_reach_student_and_head_not_teacher():
    torch.manual_seed(2)
    head = SliceProjectionHead(3, hidden=16, out_dim=8, pool_size=2, spatial_dims=3)
    x = torch.randn(2, 3, 6, 5, 4, requires_grad=True)
    teacher_vec = torch.randn(2 * 4, 8, requires_grad=True)
    student_feat = torch.randn(2, 6, 3, 3, 2, requires_grad=True)
    teacher_feat = torch.randn(2, 6, 3, 3, 2, requires_grad=True)
    loss = symmetric_info_nce(head(x).reshape(-1, 8), teacher_vec) + pairwise_distillation_loss(student_feat, teacher_feat)
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert student_feat.grad is not None and student_feat.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    assert teacher_vec.grad is None and teacher_feat.grad is None


# ---------------------------------------------------------------- projection head


def test_head_shapes_2d_and_3d():
    head3 = SliceProjectionHead(4, hidden=32, out_dim=16, pool_size=3, spatial_dims=3)
    assert head3(torch.randn(2, 4, 7, 9, 5)).shape == (2, 5, 16)
    head2 = SliceProjectionHead(4, hidden=32, out_dim=16, pool_size=3, spatial_dims=2)
    assert head2(torch.randn(3, 4, 10, 6)).shape == (3, 6, 16)
    with pytest.raises(ValueError):
        head3(torch.randn(2, 4, 7, 9))


def test_head_pools_each_slice_independently():
    """Changing one slice changes only that slice's vector (eval mode, no dropout)."""
    head = SliceProjectionHead(2, hidden=8, out_dim=4, pool_size=2, spatial_dims=3).eval()
    x = torch.randn(1, 2, 4, 4, 3)
    y = x.clone()
    y[..., 1] += 1.0
    a, b = head(x), head(y)
    assert torch.equal(a[:, 0], b[:, 0]) and torch.equal(a[:, 2], b[:, 2])
    assert not torch.allclose(a[:, 1], b[:, 1])


def test_head_alpha_dropout_train_vs_eval():
    torch.manual_seed(4)
    head = SliceProjectionHead(4, hidden=32, out_dim=16, pool_size=2, spatial_dims=3)
    assert isinstance(head.dropout, torch.nn.AlphaDropout) and head.dropout.p == pytest.approx(0.1)
    x = torch.randn(2, 4, 6, 6, 3)
    head.train()
    assert not torch.allclose(head(x), head(x))
    head.eval()
    assert torch.equal(head(x), head(x))
