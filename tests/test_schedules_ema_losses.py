"""Tests of nnunet_ext.schedules, nnunet_ext.ema and nnunet_ext.losses against hand / numpy computations."""
import math

import numpy as np
import pytest
import torch
from scipy.special import log_softmax, softmax
from torch import nn

from nnunet_ext.ema import ema_update_, make_teacher, unwrap_module
from nnunet_ext.losses import softmax_kl, softmax_mse
from nnunet_ext.schedules import cosine_momentum, gaussian_rampup

# ---------------------------------------------------------------- schedules


def test_cosine_momentum_key_points():
    assert cosine_momentum(0, 100) == pytest.approx(0.996)
    assert cosine_momentum(50, 100) == pytest.approx(0.998)
    assert cosine_momentum(100, 100) == pytest.approx(1.0)
    assert cosine_momentum(250, 100) == pytest.approx(1.0)
    # quarter: cos(pi / 4) = sqrt(2) / 2, so 1 - 0.004 * (sqrt(2) / 2 + 1) / 2
    assert cosine_momentum(25, 100) == pytest.approx(1.0 - 0.004 * (math.sqrt(2) / 2 + 1) / 2)
    assert cosine_momentum(25, 100, base=0.9, final=0.99) == pytest.approx(0.99 - 0.09 * (math.sqrt(2) / 2 + 1) / 2)


def test_cosine_momentum_monotone_and_validation():
    values = [cosine_momentum(s, 40) for s in range(41)]
    assert all(a <= b for a, b in zip(values, values[1:]))
    with pytest.raises(ValueError):
        cosine_momentum(0, 0)
    with pytest.raises(ValueError):
        cosine_momentum(0, -5)


def test_gaussian_rampup():
    assert gaussian_rampup(0, 50) == pytest.approx(math.exp(-5))
    assert gaussian_rampup(25, 50) == pytest.approx(math.exp(-1.25))
    assert gaussian_rampup(50, 50) == 1.0
    assert gaussian_rampup(80, 50) == 1.0
    assert gaussian_rampup(-3, 50) == pytest.approx(math.exp(-5))
    assert gaussian_rampup(0, 0) == 1.0
    assert gaussian_rampup(7, -1) == 1.0


# ---------------------------------------------------------------- EMA


def _net(norm=nn.InstanceNorm3d, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), norm(4, affine=True), nn.LeakyReLU(), nn.Conv3d(4, 3, 1))


def _fake_ddp(module):
    """An object that passes isinstance(DistributedDataParallel) without a process group."""
    wrapper = nn.parallel.DistributedDataParallel.__new__(nn.parallel.DistributedDataParallel)
    nn.Module.__init__(wrapper)
    wrapper.module = module
    return wrapper


def test_ema_update_matches_hand_computation():
    teacher, student = make_teacher(_net(seed=0)), _net(seed=1)
    before = {n: p.detach().clone() for n, p in teacher.named_parameters()}
    m = 0.9
    ema_update_(teacher, student, m)
    student_params = dict(student.named_parameters())
    for name, p in teacher.named_parameters():
        expected = m * before[name] + (1 - m) * student_params[name].detach()
        torch.testing.assert_close(p, expected, rtol=1e-6, atol=1e-7)
        assert not p.requires_grad
    # student untouched and still trainable
    assert all(p.requires_grad for p in student.parameters())


def test_ema_update_momentum_extremes():
    teacher, student = make_teacher(_net(seed=0)), _net(seed=1)
    original = [p.clone() for p in teacher.parameters()]
    ema_update_(teacher, student, 1.0)
    for p, q in zip(teacher.parameters(), original):
        assert torch.equal(p, q)
    ema_update_(teacher, student, 0.0)
    for p, q in zip(teacher.parameters(), student.parameters()):
        assert torch.equal(p, q)
    with pytest.raises(ValueError):
        ema_update_(teacher, student, 1.5)


def test_ema_update_copies_buffers():
    student = _net(norm=nn.BatchNorm3d, seed=0)
    teacher = make_teacher(student)
    student.train()
    with torch.no_grad():
        student(torch.randn(2, 2, 4, 4, 4))  # changes running stats and num_batches_tracked
    student_buffers = dict(student.named_buffers())
    assert int(student_buffers["1.num_batches_tracked"]) == 1
    ema_update_(teacher, student, 0.99)
    for name, b in teacher.named_buffers():
        assert torch.equal(b, student_buffers[name]), name
        assert b.dtype == student_buffers[name].dtype


def test_ema_update_name_mismatch():
    teacher = make_teacher(_net())
    other = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1))
    with pytest.raises(ValueError, match=r"teacher parameter '1\.weight'"):
        ema_update_(teacher, other, 0.9)
    with pytest.raises(ValueError, match=r"student parameter '0\.weight'"):
        ema_update_(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2)), 0.9)


def test_ema_update_through_wrappers():
    student = _net(seed=1)
    teacher = make_teacher(_net(seed=0))
    before = {n: p.clone() for n, p in teacher.named_parameters()}
    ema_update_(teacher, torch.compile(_fake_ddp(student)), 0.5)
    for name, p in teacher.named_parameters():
        torch.testing.assert_close(p, 0.5 * before[name] + 0.5 * dict(student.named_parameters())[name].detach())


def test_unwrap_module():
    from torch._dynamo.eval_frame import OptimizedModule

    net = _net()
    compiled = torch.compile(net)
    assert isinstance(compiled, OptimizedModule)
    assert unwrap_module(compiled) is net
    assert unwrap_module(net) is net
    assert unwrap_module(_fake_ddp(net)) is net
    assert unwrap_module(_fake_ddp(torch.compile(net))) is net
    assert unwrap_module(torch.compile(_fake_ddp(net))) is net


def test_make_teacher():
    student = _net()
    student.train()
    student(torch.randn(1, 2, 4, 4, 4)).sum().backward()
    teacher = make_teacher(torch.compile(student))
    assert teacher is not student
    assert not teacher.training
    assert student.training
    for (n, p), (_, q) in zip(teacher.named_parameters(), student.named_parameters()):
        assert not p.requires_grad and p.grad is None
        assert torch.equal(p, q) and p.data_ptr() != q.data_ptr()
    assert all(p.requires_grad for p in student.parameters())


# ---------------------------------------------------------------- losses


def _logits(seed, shape=(2, 4, 3, 5, 2)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64) * 3


def test_softmax_mse_matches_numpy():
    s, t = _logits(0), _logits(1)
    expected = np.mean((softmax(s.numpy(), axis=1) - softmax(t.numpy(), axis=1)) ** 2)
    out = softmax_mse(s, t)
    assert out.dtype == torch.float32 and out.ndim == 0
    assert out.item() == pytest.approx(expected, rel=1e-5)


def test_softmax_kl_matches_scipy():
    s, t = _logits(2, (3, 5, 4, 4)), _logits(3, (3, 5, 4, 4))
    log_ps, log_pt = log_softmax(s.numpy(), axis=1), log_softmax(t.numpy(), axis=1)
    expected = np.mean(np.sum(np.exp(log_pt) * (log_pt - log_ps), axis=1))
    out = softmax_kl(s, t)
    assert out.dtype == torch.float32 and out.ndim == 0
    assert out.item() == pytest.approx(expected, rel=1e-5)
    assert out.item() > 0


@pytest.mark.parametrize("loss", [softmax_mse, softmax_kl])
def test_loss_zero_for_equal_inputs(loss):
    s = _logits(4).float()
    assert loss(s, s.clone()).item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("loss", [softmax_mse, softmax_kl])
def test_loss_gradient_only_to_student(loss):
    s = _logits(5).float().requires_grad_(True)
    t = _logits(6).float().requires_grad_(True)
    loss(s, t).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


@pytest.mark.parametrize("loss", [softmax_mse, softmax_kl])
def test_loss_half_inputs_and_shape_check(loss):
    s, t = _logits(7).half(), _logits(8).half()
    out = loss(s, t)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(loss(s.float(), t.float()).item(), rel=1e-6)
    with pytest.raises(ValueError):
        loss(s, t[:, :3])


def test_softmax_kl_gradient_matches_hand_computation():
    # d KL / d s = (p_s - p_t) / N for N = B * voxels
    s = _logits(9, (2, 3, 4)).float().requires_grad_(True)
    t = _logits(10, (2, 3, 4)).float()
    softmax_kl(s, t).backward()
    expected = (torch.softmax(s.detach(), 1) - torch.softmax(t, 1)) / 8
    torch.testing.assert_close(s.grad, expected)


def test_sigmoid_mse_matches_numpy_and_leaves_teacher_without_gradient():
    from scipy.special import expit

    from nnunet_ext.losses import sigmoid_mse

    g = torch.Generator().manual_seed(3)
    student = torch.randn(2, 3, 4, 5, generator=g, requires_grad=True)
    teacher = torch.randn(2, 3, 4, 5, generator=g, requires_grad=True)
    expected = np.mean((expit(student.detach().numpy()) - expit(teacher.detach().numpy())) ** 2)
    loss = sigmoid_mse(student, teacher)
    assert abs(loss.item() - expected) < 1e-6
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None
