"""Trainers for ``scripts/cuda_check.sh``: every method for 4 epochs x 25 iterations, killed after epoch 2.

Each run is SIGKILLed right after the checkpoint of its second epoch (unless it was resumed), so that the
script's ``--c`` call exercises resuming on CUDA: compiled network, EMA teacher, heads and GradScaler state.
"""
import os
import signal

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ext.training.combined import nnUNetTrainerSimCVDMedContext
from nnunet_ext.training.medcontext import (nnUNetTrainerMedContext, nnUNetTrainerMedContext_halfBatch,
                                           nnUNetTrainerMedContext_noTeacher, nnUNetTrainerMedContext_organ)
from nnunet_ext.training.simcvd import nnUNetTrainerSimCVD
from nnunet_ext.training.volume_fusion import nnUNetTrainerVolumeFusion


class CudaCheckBudget:
    """Mixin: 4 epochs x 25 iterations, 5 validation iterations, a checkpoint every epoch, SIGKILL after epoch 2."""

    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 4
        self.num_iterations_per_epoch = 25
        self.num_val_iterations_per_epoch = 5
        self.save_every = 1

    def on_epoch_end(self):
        super().on_epoch_end()
        killed_once = os.path.isfile(os.path.join(self.output_folder, "killed_once"))
        if not killed_once and self.current_epoch == 2:
            open(os.path.join(self.output_folder, "killed_once"), "w").close()
            os.kill(os.getpid(), signal.SIGKILL)


class nnUNetTrainer_cudaCheck(CudaCheckBudget, nnUNetTrainer):
    pass


class nnUNetTrainerMedContext_cudaCheck(CudaCheckBudget, nnUNetTrainerMedContext):
    pass


class nnUNetTrainerMedContext_halfBatch_cudaCheck(CudaCheckBudget, nnUNetTrainerMedContext_halfBatch):
    pass


class nnUNetTrainerMedContext_noTeacher_cudaCheck(CudaCheckBudget, nnUNetTrainerMedContext_noTeacher):
    pass


class nnUNetTrainerMedContext_organ_cudaCheck(CudaCheckBudget, nnUNetTrainerMedContext_organ):
    pass


class nnUNetTrainerSimCVD_cudaCheck(CudaCheckBudget, nnUNetTrainerSimCVD):
    pass


class nnUNetTrainerVolumeFusion_cudaCheck(CudaCheckBudget, nnUNetTrainerVolumeFusion):
    pass


class nnUNetTrainerSimCVDMedContext_cudaCheck(CudaCheckBudget, nnUNetTrainerSimCVDMedContext):
    pass
