"""SimCVD contrastive pieces: slice projection head, symmetric InfoNCE and pair-wise distillation.

See methods.md section 3. Teacher tensors are always detached here: the teacher is an EMA copy and
must receive no gradient, whatever the caller passes in.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SliceProjectionHead", "symmetric_info_nce", "pairwise_distillation_loss"]


class SliceProjectionHead(nn.Module):
    """Maps each slice (last spatial axis) of a feature map to a vector.

    AlphaDropout (the "dropout view") → adaptive average pooling of every slice → 3-layer MLP.

    * 3-D input ``(B, C, D, H, W)``: slice ``w`` is ``(C, D, H)``, pooled to ``(C, pool, pool)``.
    * 2-D input ``(B, C, H, W)``: slice ``w`` is the column ``(C, H)``, pooled to ``(C, pool)``.

    A head built for one dimensionality only accepts that one (the first MLP layer's width differs).

    Args:
        in_channels: channels ``C`` of the input.
        hidden: width of the two hidden MLP layers.
        out_dim: size of each slice vector.
        pool_size: adaptive pooling output size per slice axis.
        dropout: AlphaDropout probability (active in train mode only).
        spatial_dims: 2 or 3.

    Returns (forward):
        ``(B, W, out_dim)``; flatten to ``(B * W, out_dim)`` for :func:`symmetric_info_nce`.
    """

    def __init__(
        self,
        in_channels: int,
        hidden: int = 256,
        out_dim: int = 128,
        pool_size: int = 4,
        dropout: float = 0.1,
        spatial_dims: int = 3,
    ):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.spatial_dims = spatial_dims
        self.pool_size = int(pool_size)
        self.dropout = nn.AlphaDropout(p=dropout)
        flat = in_channels * self.pool_size ** (spatial_dims - 1)
        self.mlp = nn.Sequential(
            nn.Linear(flat, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, out_dim),
        )

    def _pool_slices(self, x: Tensor) -> Tensor:
        """``(B, C, *spatial)`` → ``(B * W, C * pool^(dims-1))``, one row per slice, batch-major."""
        b, c, w = x.shape[0], x.shape[1], x.shape[-1]
        if x.ndim == 5:
            slices = x.permute(0, 4, 1, 2, 3).reshape(b * w, c, x.shape[2], x.shape[3])
            pooled = F.adaptive_avg_pool2d(slices, (self.pool_size, self.pool_size))
        else:
            slices = x.permute(0, 3, 1, 2).reshape(b * w, c, x.shape[2])
            pooled = F.adaptive_avg_pool1d(slices, self.pool_size)
        return pooled.flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(f"expected a {self.spatial_dims}-D input (B, C, ...), got shape {tuple(x.shape)}")
        b, w = x.shape[0], x.shape[-1]
        z = self.mlp(self._pool_slices(self.dropout(x)))
        return z.reshape(b, w, -1)


def symmetric_info_nce(student: Tensor, teacher: Tensor, temperature: float = 0.5) -> Tensor:
    """Symmetric InfoNCE between matching student and teacher vectors.

    Row ``i`` of ``student`` and of ``teacher`` is a positive pair; all other teacher (resp. student)
    rows are negatives. ``loss = (CE(S, arange) + CE(S^T, arange)) / 2`` with ``S = s t^T / τ`` on
    L2-normalised vectors.

    Args:
        student: ``(N, D)`` (or ``(..., D)``, flattened to ``(N, D)``).
        teacher: same shape; detached.
        temperature: τ.

    Returns:
        Scalar loss (float32).
    """
    if student.shape != teacher.shape:
        raise ValueError(f"shape mismatch: {tuple(student.shape)} vs {tuple(teacher.shape)}")
    # float32: under AMP, exp(1/τ)-scaled logits are fine but the normalisation is safer in fp32
    s = F.normalize(student.reshape(-1, student.shape[-1]).float(), dim=1)
    t = F.normalize(teacher.detach().reshape(-1, teacher.shape[-1]).float(), dim=1)
    logits = s @ t.T / temperature
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def pairwise_distillation_loss(student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
    """Pair-wise (location-wise) InfoNCE distillation over feature maps.

    Per volume ``b``: locations flattened to ``(L, C)`` and L2-normalised along ``C``;
    ``S = s t^T`` (cosine, no temperature); row ``i`` is a cross-entropy with target ``i`` — the
    teacher at the same location is the positive, the teacher's other locations of the same volume
    are the negatives. Mean over locations, then over volumes (equal ``L``, so one flat mean).

    Args:
        student_feat: ``(B, C, *spatial)``.
        teacher_feat: same shape; detached.

    Returns:
        Scalar loss (float32).
    """
    if student_feat.shape != teacher_feat.shape:
        raise ValueError(f"shape mismatch: {tuple(student_feat.shape)} vs {tuple(teacher_feat.shape)}")
    b, c = student_feat.shape[:2]
    s = F.normalize(student_feat.float().reshape(b, c, -1).transpose(1, 2), dim=2)  # (B, L, C)
    t = F.normalize(teacher_feat.detach().float().reshape(b, c, -1).transpose(1, 2), dim=2)
    sim = torch.bmm(s, t.transpose(1, 2))  # (B, L, L)
    n_loc = sim.shape[1]
    target = torch.arange(n_loc, device=sim.device).repeat(b)
    return F.cross_entropy(sim.reshape(b * n_loc, n_loc), target)
