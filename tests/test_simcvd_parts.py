"""SimCVD pieces beside the network: teacher decay, feature taps, heads, noise, SDM loss, SDM targets, pool."""
import numpy as np
import pytest
import torch
from torch import nn

from nnunet_ext.feature_taps import FeatureTap, locate_unet_features
from nnunet_ext.schedules import mean_teacher_decay
from nnunet_ext.sdm import AppendSignedDistanceMapTransform, multiclass_sdm
from nnunet_ext.simcvd import (SignedDistanceHead, SimCVDHeads, boundary_aware_input, clipped_gaussian_noise,
                               sdm_regression_loss)
from nnunet_ext.training.unlabeled_pool import UnlabeledPool, split_unlabeled_cases


# ---------------------------------------------------------------- EMA decay
def test_mean_teacher_decay_warm_up_then_constant():
    assert mean_teacher_decay(0, 0.99) == 0.0  # first update: the teacher becomes the student
    assert mean_teacher_decay(1, 0.99) == pytest.approx(0.5)
    assert mean_teacher_decay(9, 0.99) == pytest.approx(0.9)
    assert mean_teacher_decay(99, 0.99) == pytest.approx(0.99)
    assert mean_teacher_decay(10_000, 0.99) == 0.99
    assert mean_teacher_decay(10_000, 0.999) == 0.999
    values = [mean_teacher_decay(s, 0.999) for s in range(2000)]
    assert all(a <= b for a, b in zip(values, values[1:]))


@pytest.mark.parametrize("step, decay", [(-1, 0.99), (0, 1.0), (0, -0.1)])
def test_mean_teacher_decay_rejects_bad_arguments(step, decay):
    with pytest.raises(ValueError):
        mean_teacher_decay(step, decay)


# ---------------------------------------------------------------- feature taps
def _unet(spatial_dims=3, deep_supervision=False):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
    norm = nn.InstanceNorm3d if spatial_dims == 3 else nn.InstanceNorm2d
    torch.manual_seed(0)
    return PlainConvUNet(1, 3, (4, 8, 16), conv, 3, (1, 2, 2), (2, 2, 2), 4, (2, 2),
                         conv_bias=True, norm_op=norm, norm_op_kwargs={"eps": 1e-5, "affine": True},
                         nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=deep_supervision)


def _independent_features(net, x):
    """Bottleneck and last decoder features computed without hooks: encoder skips, decoder replayed by hand."""
    skips = net.encoder(x)
    decoder = net.decoder
    lres = skips[-1]
    for s in range(len(decoder.stages)):
        lres = decoder.stages[s](torch.cat((decoder.transpconvs[s](lres), skips[-(s + 2)]), 1))
    return skips[-1], lres


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_taps_read_bottleneck_and_last_decoder_stage(spatial_dims):
    net = _unet(spatial_dims).eval()
    modules = locate_unet_features(net)
    assert modules.bottleneck_channels == 16 and modules.decoder_channels == 4
    bottleneck_tap, decoder_tap = modules.taps()
    x = torch.randn(2, 1, *((8, 16, 16) if spatial_dims == 3 else (16, 16)))
    with torch.no_grad():
        output = net(x)
        bottleneck, decoder = bottleneck_tap.pop(), decoder_tap.pop()
        expected_bottleneck, expected_decoder = _independent_features(net, x)
    assert torch.allclose(bottleneck, expected_bottleneck) and torch.allclose(decoder, expected_decoder)
    # the decoder features are exactly what the segmentation layer maps to the output
    assert torch.allclose(net.decoder.seg_layers[-1](decoder), output, atol=1e-6)
    decoder_tap.pop()  # the replay above ran the tapped stage once more
    with pytest.raises(RuntimeError, match="did not run"):
        decoder_tap.pop()
    bottleneck_tap.remove(), decoder_tap.remove()
    with torch.no_grad():
        net(x)
    assert bottleneck_tap.output is None and decoder_tap.output is None


def test_taps_through_torch_compile_and_deep_supervision():
    net = _unet(3, deep_supervision=True).eval()
    bottleneck_tap, decoder_tap = locate_unet_features(net).taps()
    compiled = torch.compile(net, backend="aot_eager")
    # located through the compile wrapper as well
    assert locate_unet_features(compiled).decoder_last is net.decoder.stages[-1]
    x = torch.randn(1, 1, 8, 16, 16)
    with torch.no_grad():
        outputs = compiled(x)
        expected_bottleneck, expected_decoder = _independent_features(net, x)
    assert isinstance(outputs, list)
    assert torch.allclose(bottleneck_tap.pop(), expected_bottleneck, atol=1e-5)
    assert torch.allclose(decoder_tap.pop(), expected_decoder, atol=1e-5)


def test_tap_runs_when_hooked_after_a_network_of_its_class_ran_compiled(monkeypatch):
    """Found on a GPU: the cost benchmark builds several trainers in one process; SimCVD's teacher reused the code
    Dynamo had traced for an unhooked network of the same class, and its taps stayed empty. Dynamo's hook guards
    protect only code traced after they are on, so importing the taps module must turn them on."""
    import importlib

    import nnunet_ext.feature_taps as feature_taps

    monkeypatch.setattr(torch._dynamo.config, "skip_nnmodule_hook_guards", True)  # torch's default
    importlib.reload(feature_taps)
    assert torch._dynamo.config.skip_nnmodule_hook_guards is False
    torch._dynamo.reset()
    first, hooked = _unet(3).eval(), _unet(3).eval()
    x = torch.randn(1, 1, 8, 16, 16)
    try:
        with torch.no_grad():
            torch.compile(first, backend="eager")(x)
            bottleneck_tap, decoder_tap = locate_unet_features(hooked).taps()
            torch.compile(hooked, backend="eager")(x)
            expected_bottleneck, expected_decoder = _independent_features(hooked, x)
        assert bottleneck_tap.output is not None and decoder_tap.output is not None, "a hook did not run"
        assert torch.allclose(bottleneck_tap.pop(), expected_bottleneck, atol=1e-5)
        assert torch.allclose(decoder_tap.pop(), expected_decoder, atol=1e-5)
    finally:
        torch._dynamo.reset()


def test_tap_keeps_the_graph_for_gradients():
    net = _unet(3).train()
    _, decoder_tap = locate_unet_features(net).taps()
    net(torch.randn(2, 1, 8, 16, 16))
    decoder_tap.pop().sum().backward()
    assert net.decoder.stages[-1].convs[0].conv.weight.grad is not None
    assert net.decoder.seg_layers[-1].weight.grad is None  # the output layer is not on this path


def test_architecture_without_unet_layout_is_named():
    with pytest.raises(ValueError, match=r"Sequential does not have the U-Net layout.*an 'encoder' module"):
        locate_unet_features(nn.Sequential(nn.Conv3d(1, 2, 3)))


def test_plain_feature_tap_on_any_module():
    layer = nn.Linear(3, 2)
    tap = FeatureTap(layer, select=lambda out: out * 2)
    out = layer(torch.ones(1, 3))
    assert torch.equal(tap.pop(), out * 2)


# ---------------------------------------------------------------- heads, noise, boundary-aware input, SDM loss
@pytest.mark.parametrize("spatial_dims, shape", [(3, (2, 4, 6, 8, 10)), (2, (2, 4, 8, 10))])
def test_signed_distance_head(spatial_dims, shape):
    head = SignedDistanceHead(4, 3, spatial_dims)
    out = head(torch.randn(*shape) * 100)
    assert out.shape == (shape[0], 3, *shape[2:])
    assert out.abs().max() <= 1.0
    features = torch.randn(*shape, requires_grad=True)
    out = head(features)
    expected = torch.tanh(head.conv(features))  # the convolution it stands for
    assert torch.allclose(out, expected, atol=1e-6)
    grad = torch.randn_like(out)
    ours = torch.autograd.grad(out, [features, head.conv.weight, head.conv.bias], grad)
    reference = torch.autograd.grad(expected, [features, head.conv.weight, head.conv.bias], grad)
    for a, b in zip(ours, reference):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_simcvd_heads_shapes():
    heads = SimCVDHeads(decoder_channels=4, num_maps=3, input_channels=2, spatial_dims=3, projection_dim=16)
    sdm = heads.sdm(torch.randn(2, 4, 8, 8, 6))
    slices = heads.projection(boundary_aware_input(torch.randn(2, 2, 8, 8, 6), sdm))
    assert sdm.shape == (2, 3, 8, 8, 6) and slices.shape == (2, 6, 16)


def test_clipped_gaussian_noise():
    x = torch.zeros(200_000)
    noisy = clipped_gaussian_noise(x, std=0.1, clip=0.2, generator=torch.Generator().manual_seed(0))
    assert noisy.abs().max() <= 0.2 + 1e-7
    # clipping at 2 sigma: ~4.6 % of the values sit on the bounds, the std shrinks a little below 0.1
    assert (noisy.abs() >= 0.2 - 1e-7).float().mean().item() == pytest.approx(0.0455, abs=0.003)
    assert 0.085 < noisy.std().item() < 0.1
    again = clipped_gaussian_noise(x, std=0.1, clip=0.2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(noisy, again)


def test_boundary_aware_input_adds_class_mean_to_every_channel():
    image, sdm = torch.randn(2, 3, 4, 5, 6), torch.randn(2, 7, 4, 5, 6)
    out = boundary_aware_input(image, sdm)
    for c in range(3):
        assert torch.allclose(out[:, c], image[:, c] + sum(sdm[:, k] for k in range(7)) / 7, atol=1e-6)
    with pytest.raises(ValueError, match="differ"):
        boundary_aware_input(image, torch.randn(2, 7, 4, 5, 5))


def test_sdm_regression_loss_with_and_without_ignored_voxels():
    generator = torch.Generator().manual_seed(0)
    prediction, target = torch.rand(2, 3, 4, 5, 6, generator=generator), torch.rand(2, 3, 4, 5, 6, generator=generator)
    p, t = prediction.numpy(), target.numpy()
    assert sdm_regression_loss(prediction, target).item() == pytest.approx(((p - t) ** 2).mean(), rel=1e-6)
    valid = torch.rand(2, 1, 4, 5, 6, generator=generator) > 0.3
    selected = np.broadcast_to(valid.numpy(), p.shape)
    expected = ((p - t) ** 2)[selected].mean()
    assert sdm_regression_loss(prediction, target, valid).item() == pytest.approx(expected, rel=1e-6)
    assert sdm_regression_loss(prediction, target, torch.zeros_like(valid)).item() == 0.0


# ---------------------------------------------------------------- SDM targets travel inside the segmentation
def test_append_sdm_transform_after_deep_supervision():
    rng = np.random.default_rng(0)
    labels = torch.from_numpy(rng.integers(0, 3, (1, 8, 12, 12))).to(torch.int16)
    low = labels[:, ::2, ::2, ::2]
    transform = AppendSignedDistanceMapTransform(num_classes=3, spacing=(2.0, 1.0, 1.0))
    out = transform(image=torch.zeros(1, 8, 12, 12), segmentation=[labels, low])["segmentation"]
    assert len(out) == 3 and out[0] is labels and out[1] is low
    expected = multiclass_sdm(labels[0].numpy(), 3, (2.0, 1.0, 1.0))
    assert out[2].dtype == torch.float32 and np.allclose(out[2].numpy(), expected)
    # without deep supervision the segmentation tensor becomes [segmentation, sdm]
    out = transform(image=torch.zeros(1, 8, 12, 12), segmentation=labels)["segmentation"]
    assert len(out) == 2 and np.allclose(out[1].numpy(), expected)


# ---------------------------------------------------------------- the unlabeled pool
class _FakeDataset:
    def __init__(self, cases):
        self.cases = cases
        self.identifiers = sorted(cases)

    def load_case(self, identifier):
        data = self.cases[identifier]
        seg = np.full((1, *data.shape[1:]), 3, dtype=np.int8)  # a real label that must not come out ...
        seg[0, 0] = -1  # ... and nnU-Net's marker of the region outside the image's nonzero mask
        return data, seg, None, {"class_locations": {1: [[0, 0, 0, 0]]}, "spacing": [1, 1, 1]}


def test_unlabeled_pool_hides_labels_and_keeps_equal_names_apart():
    first = _FakeDataset({"a": np.zeros((1, 2, 3, 4)), "b": np.ones((2, 2, 3, 4))})
    second = _FakeDataset({"a": np.full((1, 5, 5, 5), 7.0)})
    pool = UnlabeledPool([("imagesUnlabeled/", first), ("imagesTr/", second)])
    assert pool.identifiers == ["imagesTr/a", "imagesUnlabeled/a", "imagesUnlabeled/b"] and len(pool) == 3
    data, seg, seg_prev, properties = pool.load_case("imagesTr/a")
    assert np.all(data == 7.0) and seg_prev is None
    # only the nonzero-region marker survives: -1 outside, 0 (not the label 3) inside
    assert seg.shape == (1, 5, 5, 5) and seg.dtype == np.int8
    assert np.all(seg[0, 0] == -1) and np.all(seg[0, 1:] == 0)
    assert properties["class_locations"] == {} and properties["spacing"] == [1, 1, 1]
    _, seg, _, _ = pool["imagesUnlabeled/b"]
    assert seg.shape == (1, 2, 3, 4) and set(np.unique(seg)) == {-1, 0}


def test_split_unlabeled_cases(tmp_path):
    import json

    splits = tmp_path / "splits_final.json"
    splits.write_text(json.dumps([{"train": ["a"], "val": ["b"], "unlabeled": ["c", "d"]},
                                  {"train": ["a", "c"], "val": ["d"]}]))
    assert split_unlabeled_cases(str(splits), 0) == ["c", "d"]
    assert split_unlabeled_cases(str(splits), 1) == []
    assert split_unlabeled_cases(str(splits), "all") == []
    assert split_unlabeled_cases(str(tmp_path / "missing.json"), 0) == []
