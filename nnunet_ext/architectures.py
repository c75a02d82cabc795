"""Architectures from outside nnU-Net, named in plans by their import path.

nnU-Net builds the network of a configuration as ``cls(input_channels=..., num_classes=..., deep_supervision=...,
**arch_kwargs)`` with ``cls`` located by ``pydoc.locate(network_class_name)``. These thin wrappers give other
libraries' networks that constructor, so a plans file can name them::

    "architecture": {"network_class_name": "nnunet_ext.architectures.SwinUNETR",
                     "arch_kwargs": {"feature_size": 12}, "_kw_requires_import": []}

Architectures without deep supervision say so with ``supports_deep_supervision = False``; nnunet-ext's trainers
then train without it (plain nnU-Net: use ``nnUNetTrainerNoDeepSupervision``).
"""
from torch import Tensor, nn

__all__ = ["SwinUNETR"]


_NO_DEEP_SUPERVISION = ("SwinUNETR has no deep supervision. Train it with a trainer that disables it: any "
                        "nnunet-ext trainer does so for this architecture; for plain nnU-Net use "
                        "-tr nnUNetTrainerNoDeepSupervision.")


class _SingleOutput:
    """Stand-in for nnU-Net's ``network.decoder.deep_supervision`` switch on a network with one output.

    nnU-Net's trainers set that attribute on every network (``perform_actual_validation`` switches it back on at
    its end, whatever the trainer uses), so setting it does nothing; a trainer that really trains with deep
    supervision is refused when it builds the network.
    """

    @property
    def deep_supervision(self) -> bool:
        return False

    @deep_supervision.setter
    def deep_supervision(self, enabled: bool):
        pass


class SwinUNETR(nn.Module):
    """MONAI's ``SwinUNETR`` (Hatamizadeh et al. 2022) with nnU-Net's constructor.

    The patch edges must be multiples of 32 (five halvings), and not all three 32: instance normalisation in
    training needs more than one voxel at the bottleneck (the tests train on 32x64x64).

    Args:
        input_channels: image channels (nnU-Net passes it).
        num_classes: output channels (nnU-Net passes it).
        deep_supervision: must be False: SwinUNETR has a single output.
        **kwargs: ``monai.networks.nets.SwinUNETR`` arguments (``feature_size``, ``depths``, ``num_heads``, ...).
    """

    supports_deep_supervision = False

    def __init__(self, input_channels: int, num_classes: int, deep_supervision: bool = False, **kwargs):
        super().__init__()
        if deep_supervision:
            raise ValueError(_NO_DEEP_SUPERVISION)
        from monai.networks.nets import SwinUNETR as MonaiSwinUNETR

        self.swin_unetr = MonaiSwinUNETR(in_channels=input_channels, out_channels=num_classes, **kwargs)
        self.decoder = _SingleOutput()  # a plain attribute, not a module: no parameters, not in the state dict

    def forward(self, x: Tensor) -> Tensor:
        return self.swin_unetr(x)
