"""Exponential-moving-average (mean teacher) helpers."""
from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["unwrap_module", "ema_update_", "make_teacher"]


def _wrapper_types() -> tuple[type, ...]:
    """Module wrappers that hold the real network: DDP (``.module``) and torch.compile (``._orig_mod``)."""
    types: list[type] = [nn.parallel.DistributedDataParallel]
    try:
        # imported lazily: loading dynamo takes about a second and is only needed when compile was used
        from torch._dynamo.eval_frame import OptimizedModule

        types.append(OptimizedModule)
    except ImportError:  # builds without dynamo
        pass
    return tuple(types)


def unwrap_module(module: nn.Module) -> nn.Module:
    """Strip DistributedDataParallel and torch.compile wrappers, in any nesting order.

    Args:
        module: a network, possibly wrapped.

    Returns:
        The innermost module, whose parameter names carry no ``module.`` / ``_orig_mod.`` prefixes.
    """
    ddp = nn.parallel.DistributedDataParallel
    wrappers = _wrapper_types()
    while isinstance(module, wrappers):
        module = module.module if isinstance(module, ddp) else module._orig_mod
    return module


def _matched(teacher_items: dict, student_items: dict, kind: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Pair tensors by name, raising on the first name present in only one of the modules."""
    for name in student_items:
        if name not in teacher_items:
            raise ValueError(f"EMA update: student {kind} '{name}' has no counterpart in the teacher; "
                             f"the teacher must be a copy of the student network (see make_teacher)")
    for name in teacher_items:
        if name not in student_items:
            raise ValueError(f"EMA update: teacher {kind} '{name}' has no counterpart in the student; "
                             f"the teacher must be a copy of the student network (see make_teacher)")
    return [(teacher_items[name], student_items[name]) for name in student_items]


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """In-place EMA update ``t = momentum * t + (1 - momentum) * s`` of the teacher's parameters.

    Buffers (normalisation statistics, counters) are copied from the student, since averaging running
    statistics of different networks has no meaning. Wrappers (DDP, torch.compile) are removed first.

    Args:
        teacher: network updated in place; its ``requires_grad`` flags are left untouched.
        student: network being trained, with the same parameter and buffer names.
        momentum: weight of the old teacher value, in [0, 1].

    Raises:
        ValueError: when a parameter or buffer name exists in only one of the networks.
    """
    if not 0.0 <= float(momentum) <= 1.0:
        raise ValueError(f"momentum must lie in [0, 1], got {momentum}")
    teacher, student = unwrap_module(teacher), unwrap_module(student)
    params = _matched(dict(teacher.named_parameters()), dict(student.named_parameters()), "parameter")
    buffers = _matched(dict(teacher.named_buffers()), dict(student.named_buffers()), "buffer")

    weight = 1.0 - float(momentum)
    fusable = [t.is_floating_point() and t.dtype == s.dtype and t.device == s.device for t, s in params]
    fast = [pair for pair, ok in zip(params, fusable) if ok]
    slow = [pair for pair, ok in zip(params, fusable) if not ok]
    if fast:
        # one fused kernel launch per device/dtype group instead of one per parameter
        torch._foreach_lerp_([t for t, _ in fast], [s.detach() for _, s in fast], weight)
    for t, s in slow:
        if t.is_floating_point():
            t.lerp_(s.detach().to(device=t.device, dtype=t.dtype), weight)
        else:
            t.copy_(s.detach())
    for t, s in buffers:
        t.copy_(s.detach())


def make_teacher(student: nn.Module) -> nn.Module:
    """Create an EMA teacher: a frozen deep copy of the unwrapped student in eval mode.

    Args:
        student: network being trained, possibly wrapped in DDP or torch.compile.

    Returns:
        A new module with ``requires_grad=False`` on all parameters and no stored gradients.
    """
    teacher = copy.deepcopy(unwrap_module(student))
    for p in teacher.parameters():
        p.requires_grad_(False)
        p.grad = None
    return teacher.eval()
