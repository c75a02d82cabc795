"""Volume Fusion maths: boxes, painting, the fusion formula, batch roll (against independent computations)."""
import numpy as np
import pytest
import torch

from nnunet_ext.volume_fusion import (draw_fusion_boxes, fuse_batch, fuse_volumes, fusion_box_bounds,
                                      paint_fusion_labels)


def _generator(seed=0):
    return torch.Generator().manual_seed(seed)


def test_box_bounds_are_eighths_of_each_edge():
    assert fusion_box_bounds((64, 128, 128)) == [(8, 40), (16, 80), (16, 80)]
    assert fusion_box_bounds((16, 32, 32)) == [(2, 10), (4, 20), (4, 20)]
    assert fusion_box_bounds((4, 5)) == [(1, 2), (1, 3)]  # at least one voxel
    with pytest.raises(ValueError):
        fusion_box_bounds((8, 8), (0.5, 0.25))


@pytest.mark.parametrize("shape", [(32, 64, 64), (20, 48, 40), (64, 64)])
def test_boxes_stay_within_bounds(shape):
    bounds = fusion_box_bounds(shape)
    counts = []
    for seed in range(30):
        boxes = draw_fusion_boxes(shape, num_classes=4, generator=_generator(seed))
        counts.append(len(boxes))
        assert 10 <= len(boxes) <= 40
        for box in boxes:
            assert 1 <= box.label <= 4
            for (lo, hi), size, start, stop, edge in zip(bounds, box.size, box.start, box.stop, shape):
                assert lo <= size <= hi
                assert 0 <= start < stop <= edge and stop - start <= size
    assert min(counts) < 20 and max(counts) > 30  # the count is drawn, not fixed


def test_painting_matches_an_independent_numpy_painter_and_later_boxes_win():
    shape = (12, 20, 16)
    boxes = draw_fusion_boxes(shape, num_classes=8, generator=_generator(3))
    expected = np.zeros(shape, dtype=np.int64)
    for box in boxes:
        z0, y0, x0 = box.start
        z1, y1, x1 = box.stop
        expected[z0:z1, y0:y1, x0:x1] = box.label
    labels = paint_fusion_labels(shape, boxes)
    assert labels.dtype == torch.int64 and np.array_equal(labels.numpy(), expected)
    # the last box is fully visible
    last = boxes[-1]
    region = labels[tuple(slice(a, b) for a, b in zip(last.start, last.stop))]
    assert torch.all(region == last.label)


def test_classes_cover_zero_to_k():
    for k in (2, 4, 8):
        seen = set()
        for seed in range(20):
            seen |= set(paint_fusion_labels((16, 32, 32), draw_fusion_boxes((16, 32, 32), k,
                                                                            generator=_generator(seed))).unique().tolist())
        assert seen == set(range(k + 1)), k


def test_fused_image_follows_the_formula_and_labels_equal_k_alpha():
    k = 4
    generator = _generator(1)
    background = torch.rand(2, 2, 8, 12, 12, generator=generator, dtype=torch.float64)
    foreground = background + 1.0 + torch.rand(2, 2, 8, 12, 12, generator=generator, dtype=torch.float64)
    fused, labels = fuse_batch(background, k, foreground=foreground, generator=generator)
    assert labels.shape == (2, 1, 8, 12, 12) and labels.dtype == torch.int64
    bg, fg, out, lab = background.numpy(), foreground.numpy(), fused.numpy(), labels.numpy()
    alpha = lab / k
    assert np.allclose(out, alpha * fg + (1 - alpha) * bg, rtol=0, atol=1e-12)  # voxel by voxel, every channel
    # recover alpha from the images alone: K * alpha is the label exactly
    recovered = (out - bg) / (fg - bg) * k
    assert np.array_equal(np.rint(recovered), np.broadcast_to(lab, recovered.shape).astype(float))
    assert np.allclose(recovered, np.broadcast_to(lab, recovered.shape), atol=1e-9)


def test_batch_roll_fuses_the_previous_scan_into_each_sample():
    data = torch.arange(3, dtype=torch.float32).reshape(3, 1, 1, 1, 1).expand(3, 1, 6, 8, 8).contiguous()
    fused, labels = fuse_batch(data, 4, generator=_generator(0))
    alpha = labels.float() / 4
    for i in range(3):
        expected = alpha[i] * data[i - 1] + (1 - alpha[i]) * data[i]
        assert torch.allclose(fused[i], expected)
    assert not torch.equal(labels[0], labels[1])  # each sample draws its own boxes


def test_single_sample_needs_a_second_crop():
    with pytest.raises(ValueError, match="pass a foreground"):
        fuse_batch(torch.zeros(1, 1, 4, 8, 8), 4)
    fused, labels = fuse_batch(torch.zeros(1, 1, 4, 8, 8), 4, foreground=torch.ones(1, 1, 4, 8, 8),
                               generator=_generator(0))
    assert torch.allclose(fused, labels.float() / 4)


def test_fusion_is_reproducible_under_a_seed_and_2d_works():
    data = torch.randn(2, 1, 32, 32)
    first = fuse_batch(data, 4, generator=_generator(7))
    second = fuse_batch(data, 4, generator=_generator(7))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert first[1].shape == (2, 1, 32, 32)


def test_fuse_volumes_rejects_nothing_but_computes_in_input_dtype():
    fg, bg = torch.ones(1, 1, 2, 2, dtype=torch.float16), torch.zeros(1, 1, 2, 2, dtype=torch.float16)
    labels = torch.tensor([[[[0, 1], [2, 4]]]])
    out = fuse_volumes(fg, bg, labels, 4)
    assert out.dtype == torch.float16 and out.flatten().tolist() == [0.0, 0.25, 0.5, 1.0]
