"""Reading intermediate features of a segmentation network without changing its class.

SimCVD needs two feature maps of the plans network: the encoder's bottleneck (pair-wise distillation) and the
decoder's last, full-resolution stage (the signed-distance head sits on it). Forward hooks read them during the
network's normal forward pass, so ``self.network`` stays exactly the network the plans describe and a
checkpoint holds nothing but its weights.

Architecture families are located by a small adapter (:func:`locate_unet_features`); an architecture
without the needed structure gets an error saying what is missing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from nnunet_ext.ema import unwrap_module

# Dynamo caches compiled code per class ``forward`` and by default does not guard on module hooks: a network
# hooked after another network of its class was traced (several trainers in one process, a teacher beside
# its student) silently reuses that trace and its hooks never run. Guards only protect code traced after this
# is set, hence at import, before any trainer builds a network. The guards cost a few dictionary checks per call.
torch._dynamo.config.skip_nnmodule_hook_guards = False

__all__ = ["FeatureTap", "UNetFeatureModules", "locate_unet_features", "last_element", "output_layer"]


def last_element(output):
    """The last element of a list/tuple output (an encoder's skips end with the bottleneck), else the output."""
    return output[-1] if isinstance(output, (list, tuple)) else output


class FeatureTap:
    """Keeps the output (or input) of one submodule from its most recent forward call.

    Args:
        module: the submodule to read (hooked with ``register_forward_hook``).
        select: maps the module's output to the tensor to keep (default: the output itself).
        read_input: keep the module's (first) input instead of its output (``register_forward_pre_hook``), for
            architectures whose features exist only as the input of a layer.

    The tap holds a reference to the kept tensor (and so to its autograd graph) until :meth:`pop` takes it.
    Works through DDP and ``torch.compile`` wrappers, since the hook sits on the inner module (importing this
    module turns on Dynamo's hook guards, see above).
    """

    def __init__(self, module: nn.Module, select: Optional[Callable] = None, read_input: bool = False):
        self.select = select
        self.output: Optional[Tensor] = None
        if read_input:
            self._handle = module.register_forward_pre_hook(self._pre_hook)
        else:
            self._handle = module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self.output = self.select(output) if self.select is not None else output

    def _pre_hook(self, module, inputs):
        self._hook(module, inputs, inputs[0])

    def pop(self) -> Tensor:
        """Return the kept output and forget it; raises if the module did not run since the last pop."""
        output, self.output = self.output, None
        if output is None:
            raise RuntimeError("FeatureTap.pop: the tapped module did not run since the last pop")
        return output

    def clear(self) -> None:
        self.output = None

    def remove(self) -> None:
        """Remove the hook (the module behaves as if never tapped)."""
        self._handle.remove()
        self.output = None


@dataclass
class UNetFeatureModules:
    """Where a U-Net's features are read.

    Attributes:
        bottleneck: module whose output (after ``bottleneck_select``) is the deepest encoder feature map.
        bottleneck_select: picks the bottleneck from that module's output.
        bottleneck_channels: channels of the bottleneck.
        decoder_last: module whose output is the decoder feature map fed to the segmentation layer.
        decoder_channels: channels of that map.
        read_inputs: read the *inputs* of ``bottleneck`` and ``decoder_last`` instead of their outputs.
        decoder_upsample: stride of the segmentation layer (a transposed convolution in Primus); ``None`` when
            it is a 1x1(x1) convolution on full-resolution features (U-Nets).
    """
    bottleneck: nn.Module
    bottleneck_select: Optional[Callable]
    bottleneck_channels: int
    decoder_last: nn.Module
    decoder_channels: int
    read_inputs: bool = False
    decoder_upsample: Optional[tuple[int, ...]] = None

    def taps(self) -> tuple[FeatureTap, FeatureTap]:
        """Hook both modules; returns ``(bottleneck_tap, decoder_tap)``."""
        return (FeatureTap(self.bottleneck, self.bottleneck_select, self.read_inputs),
                FeatureTap(self.decoder_last, read_input=self.read_inputs))


def _swin_unetr_features(swin: nn.Module) -> UNetFeatureModules:
    """Adapter for MONAI's SwinUNETR (``nnunet_ext.architectures.SwinUNETR``): ``encoder10`` processes the deepest
    Swin stage (the bottleneck), ``decoder1`` the full-resolution features that ``out`` maps to logits."""
    out_conv = swin.out.conv.conv
    bottleneck_channels = swin.encoder10.layer.conv1.conv.out_channels
    return UNetFeatureModules(bottleneck=swin.encoder10, bottleneck_select=None,
                              bottleneck_channels=int(bottleneck_channels), decoder_last=swin.decoder1,
                              decoder_channels=int(out_conv.in_channels))


def _primus_features(primus: nn.Module) -> UNetFeatureModules:
    """Adapter for dynamic-network-architectures' Primus family (nnU-Net's Primus trainers): a ViT encoder on
    8x8x8 patch tokens and a patch decoder of transposed convolutions. The bottleneck is the token grid as the
    decoder receives it (input of ``up_projection``); the "last decoder stage" is the input of the decoder's final
    transposed convolution, which maps it to logits at twice its resolution. The SDM head therefore is a
    transposed convolution of the same stride beside it."""
    final = primus.up_projection.decode[-1]
    return UNetFeatureModules(bottleneck=primus.up_projection, bottleneck_select=None,
                              bottleneck_channels=int(primus.embed_dim), decoder_last=final,
                              decoder_channels=int(final.in_channels), read_inputs=True,
                              decoder_upsample=tuple(int(s) for s in final.stride))


def locate_unet_features(network: nn.Module) -> UNetFeatureModules:
    """Adapter for dynamic-network-architectures' U-Nets (PlainConvUNet, ResidualEncoderUNet, ...), for its
    Primus family and for :class:`nnunet_ext.architectures.SwinUNETR`.

    The U-Nets' layout: ``encoder`` returns the list of skips (last = bottleneck) and has ``output_channels``;
    ``decoder.stages[-1]`` computes the full-resolution features that ``decoder.seg_layers[-1]`` maps to logits.

    Args:
        network: the network, possibly wrapped in DDP or ``torch.compile``.

    Raises:
        ValueError: naming what the architecture lacks.
    """
    net = unwrap_module(network)
    name = type(net).__name__
    swin = getattr(net, "swin_unetr", None)
    if swin is not None:
        return _swin_unetr_features(swin)
    if hasattr(net, "up_projection") and hasattr(net, "eva"):
        return _primus_features(net)
    encoder, decoder = getattr(net, "encoder", None), getattr(net, "decoder", None)
    missing = [what for what, ok in (
        ("an 'encoder' module", encoder is not None),
        ("'encoder.output_channels'", encoder is not None and hasattr(encoder, "output_channels")),
        ("a 'decoder' with 'stages'", decoder is not None and hasattr(decoder, "stages")),
        ("'decoder.seg_layers'", decoder is not None and hasattr(decoder, "seg_layers")),
    ) if not ok]
    if missing:
        raise ValueError(
            f"{name} does not have the U-Net layout of dynamic-network-architectures: it lacks "
            f"{', '.join(missing)}. SimCVD reads the bottleneck (encoder output) and the last decoder stage "
            f"(input of the segmentation layer) there; use a plans file with PlainConvUNet or "
            f"ResidualEncoderUNet, a Primus variant of the trainer, or add an adapter for {name} in "
            f"nnunet_ext/feature_taps.py.")
    seg_layer = decoder.seg_layers[-1]
    decoder_channels = getattr(seg_layer, "in_channels", None)
    if decoder_channels is None:
        raise ValueError(f"{name}: decoder.seg_layers[-1] ({type(seg_layer).__name__}) has no 'in_channels'")
    return UNetFeatureModules(bottleneck=encoder, bottleneck_select=last_element,
                              bottleneck_channels=int(encoder.output_channels[-1]),
                              decoder_last=decoder.stages[-1], decoder_channels=int(decoder_channels))


def output_layer(network: nn.Module) -> Optional[nn.Module]:
    """The layer that maps features to full-resolution logits: ``decoder.seg_layers[-1]`` (dynamic-network-
    architectures' U-Nets), ``up_projection.decode[-1]`` (Primus), ``swin_unetr.out`` (SwinUNETR); ``None`` for
    other architectures."""
    net = unwrap_module(network)
    swin = getattr(net, "swin_unetr", None)
    if swin is not None:
        return swin.out
    if hasattr(net, "up_projection") and hasattr(net, "eva"):
        return net.up_projection.decode[-1]
    seg_layers = getattr(getattr(net, "decoder", None), "seg_layers", None)
    return seg_layers[-1] if seg_layers is not None else None
