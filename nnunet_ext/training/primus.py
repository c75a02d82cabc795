"""The three methods on nnU-Net's Primus trainers (dynamic-network-architectures' Primus transformers).

nnU-Net selects Primus by trainer, not by plans: ``nnUNet_Primus_{S,B,M,L}_Trainer`` build the network and
set AdamW (lr 3e-4, weight decay 0.05), a 50-epoch linear warm-up, gradient clipping at norm 1 and no deep
supervision. Each class here puts one of our methods in front of one of those trainers in the method
resolution order, so nnU-Net's Primus settings and network apply unchanged and our step runs on them:

- the network, optimiser, warm-up stages and checkpoint loading are the Primus trainer's;
- our extra parameters (heads) join every optimiser the warm-up stages build
  (``nnUNetTrainerExtBase.configure_optimizers``);
- our steps clip at the Primus trainers' norm of 1;
- SimCVD reads Primus' features through the Primus adapter of :mod:`nnunet_ext.feature_taps`.

Checkpoints predict with stock ``nnUNetv2_predict -tr <this class>``: the network is built by the Primus
trainer's ``build_network_architecture``. The patch size must be divisible by 8 (Primus' patch embedding).
"""
from nnunetv2.training.nnUNetTrainer.primus.primus_trainers import (nnUNet_Primus_B_Trainer, nnUNet_Primus_L_Trainer,
                                                                    nnUNet_Primus_M_Trainer, nnUNet_Primus_S_Trainer)

from nnunet_ext.training.medcontext import nnUNetTrainerMedContext
from nnunet_ext.training.simcvd import nnUNetTrainerSimCVD
from nnunet_ext.training.volume_fusion import nnUNetTrainerVolumeFusion

__all__ = [f"nnUNetTrainer{method}_Primus_{size}" for method in ("MedContext", "SimCVD", "VolumeFusion")
           for size in "SBML"]

PRIMUS_GRADIENT_CLIP_NORM = 1.0  # AbstractPrimus.train_step


class nnUNetTrainerMedContext_Primus_S(nnUNetTrainerMedContext, nnUNet_Primus_S_Trainer):
    gradient_clip_norm = PRIMUS_GRADIENT_CLIP_NORM


class nnUNetTrainerMedContext_Primus_B(nnUNetTrainerMedContext, nnUNet_Primus_B_Trainer):
    gradient_clip_norm = PRIMUS_GRADIENT_CLIP_NORM


class nnUNetTrainerMedContext_Primus_M(nnUNetTrainerMedContext, nnUNet_Primus_M_Trainer):
    gradient_clip_norm = PRIMUS_GRADIENT_CLIP_NORM


class nnUNetTrainerMedContext_Primus_L(nnUNetTrainerMedContext, nnUNet_Primus_L_Trainer):
    gradient_clip_norm = PRIMUS_GRADIENT_CLIP_NORM


class nnUNetTrainerSimCVD_Primus_S(nnUNetTrainerSimCVD, nnUNet_Primus_S_Trainer):
    gradient_clip_norm = PRIMUS_GRADIENT_CLIP_NORM


class nnUNetTrainerSimCVD_Primus_B(nnUNetTrainerSimCVD, nnUNet_Primus_B_Trainer):
    gradient_clip_norm = PRIMUS_GRADIENT_CLIP_NORM


class nnUNetTrainerSimCVD_Primus_M(nnUNetTrainerSimCVD, nnUNet_Primus_M_Trainer):
    gradient_clip_norm = PRIMUS_GRADIENT_CLIP_NORM


class nnUNetTrainerSimCVD_Primus_L(nnUNetTrainerSimCVD, nnUNet_Primus_L_Trainer):
    gradient_clip_norm = PRIMUS_GRADIENT_CLIP_NORM


class _FusionOutputOnTargetDecoder:
    """Volume Fusion on Primus: Primus' patch decoder sets its channel widths from the number of outputs, so a
    network built for K + 1 outputs would share no decoder weight with the target's. The network is therefore
    built for the target dataset's classes, and only its final transposed convolution is swapped for one with
    K + 1 outputs. Fine-tuning then receives every weight but that layer (after ``nnUNetv2_ext_check_pretrained
    --reinit-output``, since nnU-Net's loader skips only U-Nets' ``.seg_layers.``).

    An instance method (nnU-Net calls it on the trainer): the target's classes come from the dataset.json. Such
    checkpoints are for ``-pretrained_weights`` only, like every Volume Fusion checkpoint.
    """

    def build_network_architecture(self, plans_manager, configuration_manager, num_input_channels,
                                   num_output_channels, enable_deep_supervision=True):
        target_classes = plans_manager.get_label_manager(self.dataset_json).num_segmentation_heads
        network = super().build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                     target_classes, enable_deep_supervision)
        final = network.up_projection.decode[-1]
        network.up_projection.decode[-1] = type(final)(final.in_channels, num_output_channels,
                                                       kernel_size=final.kernel_size, stride=final.stride)
        return network


# Volume Fusion reuses nnU-Net's train_step, i.e. AbstractPrimus.train_step (which clips at 1 itself)
class nnUNetTrainerVolumeFusion_Primus_S(_FusionOutputOnTargetDecoder, nnUNetTrainerVolumeFusion,
                                         nnUNet_Primus_S_Trainer):
    gradient_clip_norm = PRIMUS_GRADIENT_CLIP_NORM


class nnUNetTrainerVolumeFusion_Primus_B(_FusionOutputOnTargetDecoder, nnUNetTrainerVolumeFusion,
                                         nnUNet_Primus_B_Trainer):
    gradient_clip_norm = PRIMUS_GRADIENT_CLIP_NORM


class nnUNetTrainerVolumeFusion_Primus_M(_FusionOutputOnTargetDecoder, nnUNetTrainerVolumeFusion,
                                         nnUNet_Primus_M_Trainer):
    gradient_clip_norm = PRIMUS_GRADIENT_CLIP_NORM


class nnUNetTrainerVolumeFusion_Primus_L(_FusionOutputOnTargetDecoder, nnUNetTrainerVolumeFusion,
                                         nnUNet_Primus_L_Trainer):
    gradient_clip_norm = PRIMUS_GRADIENT_CLIP_NORM
