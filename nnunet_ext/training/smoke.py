"""Short-budget variants of every trainer, for smoke runs and end-to-end tests (2 epochs of 4 iterations).

nnU-Net's own ``nnUNetTrainer_1epoch`` still runs 250 iterations; these finish in seconds on a CPU with a
small configuration, while going through every stage of nnU-Net's pipeline (checkpoints, validation, export).
"""
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ext.training.medcontext import nnUNetTrainerMedContext, nnUNetTrainerMedContext_halfBatch
from nnunet_ext.training.primus import (nnUNetTrainerMedContext_Primus_S, nnUNetTrainerSimCVD_Primus_S,
                                        nnUNetTrainerVolumeFusion_Primus_S)
from nnunet_ext.training.simcvd import nnUNetTrainerSimCVD
from nnunet_ext.training.volume_fusion import nnUNetTrainerVolumeFusion

__all__ = ["nnUNetTrainer_smoke", "nnUNetTrainerMedContext_smoke", "nnUNetTrainerMedContext_halfBatch_smoke",
           "nnUNetTrainerSimCVD_smoke", "nnUNetTrainerVolumeFusion_smoke", "nnUNetTrainerMedContext_Primus_S_smoke",
           "nnUNetTrainerSimCVD_Primus_S_smoke", "nnUNetTrainerVolumeFusion_Primus_S_smoke"]


class SmokeBudget:
    """Mixin: 2 epochs x 4 training iterations, 2 validation iterations, a checkpoint every epoch."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 2
        self.num_iterations_per_epoch = 4
        self.num_val_iterations_per_epoch = 2
        self.save_every = 1


class nnUNetTrainer_smoke(SmokeBudget, nnUNetTrainer):
    pass


class nnUNetTrainerMedContext_smoke(SmokeBudget, nnUNetTrainerMedContext):
    pass


class nnUNetTrainerMedContext_halfBatch_smoke(SmokeBudget, nnUNetTrainerMedContext_halfBatch):
    pass


class nnUNetTrainerSimCVD_smoke(SmokeBudget, nnUNetTrainerSimCVD):
    pass


class nnUNetTrainerVolumeFusion_smoke(SmokeBudget, nnUNetTrainerVolumeFusion):
    pass


class nnUNetTrainerMedContext_Primus_S_smoke(SmokeBudget, nnUNetTrainerMedContext_Primus_S):
    pass


class nnUNetTrainerSimCVD_Primus_S_smoke(SmokeBudget, nnUNetTrainerSimCVD_Primus_S):
    pass


class nnUNetTrainerVolumeFusion_Primus_S_smoke(SmokeBudget, nnUNetTrainerVolumeFusion_Primus_S):
    pass
