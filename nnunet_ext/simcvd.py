"""SimCVD building blocks beside the segmentation network: heads, teacher noise, boundary-aware input, SDM loss.

Specification: methods.md section 3. The contrastive and distillation losses are in
:mod:`nnunet_ext.contrastive`, the signed distance maps in :mod:`nnunet_ext.sdm`.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from nnunet_ext.contrastive import SliceProjectionHead

__all__ = ["SignedDistanceHead", "SimCVDHeads", "clipped_gaussian_noise", "boundary_aware_input",
           "sdm_regression_loss"]


class SignedDistanceHead(nn.Module):
    """1x1(x1) convolution from decoder features to one signed distance map per foreground class, then tanh.

    The parameters are those of an ``nn.Conv2d``/``nn.Conv3d`` (``conv.weight``, ``conv.bias``).

    Args:
        in_channels: channels of the decoder's full-resolution features.
        num_maps: number of foreground classes.
        spatial_dims: 2 or 3.
        upsample: for architectures whose segmentation layer is a transposed convolution (Primus): its stride.
            The head is then a transposed convolution of that kernel and stride beside it.
    """

    def __init__(self, in_channels: int, num_maps: int, spatial_dims: int = 3,
                 upsample: Optional[Sequence[int]] = None):
        super().__init__()
        conv = {2: nn.Conv2d, 3: nn.Conv3d}.get(spatial_dims)
        if conv is None:
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.upsample = tuple(upsample) if upsample is not None and any(s != 1 for s in upsample) else None
        if self.upsample is not None:
            transposed = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[spatial_dims]
            self.conv = transposed(in_channels, num_maps, kernel_size=self.upsample, stride=self.upsample)
        else:
            self.conv = conv(in_channels, num_maps, kernel_size=1)

    def forward(self, features: Tensor) -> Tensor:
        if self.upsample is not None:
            return torch.tanh(self.conv(features))
        # the 1x1(x1) convolution as a channel contraction: the same numbers, but on the CPU oneDNN's backward of
        # a 1x1x1 convolution with few channels costs about 3x the einsum's (docs/cost.md)
        weight = self.conv.weight.flatten(1)
        bias = self.conv.bias.view(1, -1, *([1] * (features.ndim - 2)))
        return torch.tanh(torch.einsum("bc...,kc->bk...", features, weight.to(features.dtype)) + bias)


class SimCVDHeads(nn.Module):
    """The two heads SimCVD adds beside the network: signed distance head and slice projection head.

    Args:
        decoder_channels: channels of the decoder's last stage (input of the SDM head).
        num_maps: foreground classes (SDM channels).
        input_channels: image channels; the projection head reads the boundary-aware input, which has as many.
        spatial_dims: 2 or 3.
        projection_hidden, projection_dim, projection_pool, projection_dropout: see
            :class:`nnunet_ext.contrastive.SliceProjectionHead`.
        sdm_upsample: see :class:`SignedDistanceHead` (``upsample``).
    """

    def __init__(self, decoder_channels: int, num_maps: int, input_channels: int, spatial_dims: int = 3,
                 projection_hidden: int = 256, projection_dim: int = 128, projection_pool: int = 4,
                 projection_dropout: float = 0.1, sdm_upsample: Optional[Sequence[int]] = None):
        super().__init__()
        self.sdm = SignedDistanceHead(decoder_channels, num_maps, spatial_dims, sdm_upsample)
        self.projection = SliceProjectionHead(input_channels, hidden=projection_hidden, out_dim=projection_dim,
                                              pool_size=projection_pool, dropout=projection_dropout,
                                              spatial_dims=spatial_dims)


def clipped_gaussian_noise(x: Tensor, std: float = 0.1, clip: float = 0.2,
                           generator: Optional[torch.Generator] = None) -> Tensor:
    """``x + clamp(N(0, std^2), -clip, clip)``: the mean teacher's input perturbation (UA-MT, SimCVD).

    Args:
        x: input batch.
        std: noise standard deviation (in the units of the normalised image).
        clip: noise is clipped to ``[-clip, clip]``.
        generator: optional generator for reproducible noise (on ``x``'s device).
    """
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) * std
    return x + noise.clamp_(-clip, clip)


def boundary_aware_input(image: Tensor, sdm: Tensor) -> Tensor:
    """SimCVD's boundary-aware feature: the input plus the predicted signed distance, per voxel.

    With several foreground classes the maps are averaged over classes (methods.md section 3, Decision 1) and
    added to every image channel, so the result has the image's shape.

    Args:
        image: ``(B, C, *spatial)``.
        sdm: ``(B, K, *spatial)`` predicted maps, K foreground classes.
    """
    if image.shape[0] != sdm.shape[0] or image.shape[2:] != sdm.shape[2:]:
        raise ValueError(f"image {tuple(image.shape)} and sdm {tuple(sdm.shape)} differ in batch or spatial size")
    return image + sdm.mean(dim=1, keepdim=True).to(image.dtype)


def sdm_regression_loss(prediction: Tensor, target: Tensor, valid: Optional[Tensor] = None) -> Tensor:
    """Mean squared error between predicted and ground-truth signed distance maps, in float32.

    Args:
        prediction: ``(B, K, *spatial)``.
        target: same shape.
        valid: optional boolean ``(B, 1, *spatial)``; voxels where it is False (an ignore label) do not count.

    Returns:
        Scalar: mean over valid voxels and all K maps (0 when no voxel is valid).
    """
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape")
    squared = (prediction.float() - target.float()).pow(2)
    if valid is None:
        return squared.mean()
    weight = valid.to(squared.dtype).expand_as(squared)
    return (squared * weight).sum() / weight.sum().clamp_min(1.0)
