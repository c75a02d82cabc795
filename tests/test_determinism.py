"""Under a fixed seed with in-process augmentation (nnUNet_n_proc_DA=0), two CPU runs of each trainer give
identical losses for their first epoch: nnU-Net's sampling and augmentation draw from the seeded global
generators, and nothing in the methods adds unseeded randomness."""
import os
import random

import numpy as np
import pytest
import torch

from conftest import nnunet_env

TRAINERS = ["nnUNetTrainer_smoke", "nnUNetTrainerMedContext_smoke", "nnUNetTrainerSimCVD_smoke",
            "nnUNetTrainerVolumeFusion_smoke"]


def _first_epoch_losses(ds, trainer_name, results, monkeypatch):
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunet_ext.training import smoke

    for key, value in nnunet_env(ds, training=True).items():
        if key.startswith("nnUNet_"):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("nnUNet_results", results)
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    folder = os.path.join(ds["preprocessed"], ds["dataset_name"])
    plans = load_json(os.path.join(folder, "nnUNetPlans.json"))
    plans["continue_training"] = False
    fold = "all" if "VolumeFusion" in trainer_name else 0
    trainer = getattr(smoke, trainer_name)(plans=plans, configuration="3d_tiny", fold=fold,
                                           dataset_json=load_json(os.path.join(folder, "dataset.json")),
                                           device=torch.device("cpu"))
    trainer.on_train_start()
    try:
        trainer.on_train_epoch_start()
        return [float(trainer.train_step(next(trainer.dataloader_train))["loss"])
                for _ in range(trainer.num_iterations_per_epoch)]
    finally:
        trainer.on_train_end()


@pytest.mark.parametrize("trainer_name", TRAINERS)
def test_first_epoch_losses_repeat_exactly(tiny_semi_dataset, tmp_path, monkeypatch, trainer_name):
    first = _first_epoch_losses(tiny_semi_dataset, trainer_name, str(tmp_path / "first"), monkeypatch)
    second = _first_epoch_losses(tiny_semi_dataset, trainer_name, str(tmp_path / "second"), monkeypatch)
    assert len(first) == 4 and all(np.isfinite(first))
    assert first == second
