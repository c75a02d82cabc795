"""Trainers used only by the tests (a user's own nnUNet_extTrainer folder, listed before ours).

``nnUNetTrainerMedContext_killedAfterEpoch1`` SIGKILLs its own process right after epoch 1 was checkpointed,
unless it was resumed from a checkpoint: a deterministic stand-in for a job killed mid-training.
"""
import os
import signal

import torch

from nnunet_ext.training.smoke import (nnUNetTrainerMedContext_smoke, nnUNetTrainerSimCVD_smoke,
                                      nnUNetTrainerVolumeFusion_smoke)


class KilledAfterEpoch1:
    """Mixin: 3 epochs, and a SIGKILL of the own process right after epoch 1 was checkpointed (unless resumed)."""

    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 3

    def on_epoch_end(self):
        super().on_epoch_end()
        if not self.restored_from_checkpoint and self.current_epoch == 2:
            os.kill(os.getpid(), signal.SIGKILL)


class nnUNetTrainerMedContext_killedAfterEpoch1(KilledAfterEpoch1, nnUNetTrainerMedContext_smoke):
    pass


class nnUNetTrainerSimCVD_killedAfterEpoch1(KilledAfterEpoch1, nnUNetTrainerSimCVD_smoke):
    pass


class nnUNetTrainerVolumeFusion_killedAfterEpoch1(KilledAfterEpoch1, nnUNetTrainerVolumeFusion_smoke):
    pass
