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


class _Died(Exception):
    """Stands in for a SIGKILL: the trainer object is dropped, only what is on disk survives."""


def _make(ds, trainer_name, results, monkeypatch, die_after_epoch=None, die_in_epoch=None, continue_training=False):
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunet_ext.training import smoke

    for key, value in nnunet_env(ds, training=True).items():
        if key.startswith("nnUNet_"):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("nnUNet_results", results)
    base = getattr(smoke, trainer_name)

    class Run(base):
        def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cpu")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs = 3

        def on_epoch_end(self):
            super().on_epoch_end()  # writes checkpoint_latest.pth (save_every = 1)
            if die_after_epoch is not None and self.current_epoch == die_after_epoch:
                raise _Died()

        def train_step(self, batch):
            result = super().train_step(batch)
            if die_in_epoch is not None and self.current_epoch == die_in_epoch and self.global_step % 4 == 2:
                raise _Died()  # in the middle of an epoch: weights in memory moved on, the checkpoint did not
            return result

    Run.__name__ = trainer_name  # same results folder for the killed and the resumed run
    folder = os.path.join(ds["preprocessed"], ds["dataset_name"])
    plans = load_json(os.path.join(folder, "nnUNetPlans.json"))
    plans["continue_training"] = continue_training
    fold = "all" if "VolumeFusion" in trainer_name else 0
    return Run(plans=plans, configuration="3d_tiny", fold=fold,
               dataset_json=load_json(os.path.join(folder, "dataset.json")), device=torch.device("cpu"))


def _final_state(trainer):
    checkpoint = torch.load(os.path.join(trainer.output_folder, "checkpoint_final.pth"), map_location="cpu",
                            weights_only=False)
    return checkpoint["network_weights"], checkpoint["nnunet_ext"]["modules"], checkpoint["logging"]["train_losses"]


@pytest.mark.parametrize("trainer_name, killed_at", [(name, "epoch end") for name in TRAINERS[1:]]
                         + [("nnUNetTrainerSimCVD_smoke", "training step")])
def test_a_run_killed_and_resumed_ends_exactly_as_an_uninterrupted_one(tiny_semi_dataset, tmp_path, monkeypatch,
                                                                       trainer_name, killed_at):
    """Seeded, nnUNet_n_proc_DA=0: 3 epochs straight vs. killed after epoch 2 (or in the middle of epoch 3) and
    continued from its last checkpoint (a fresh trainer with other seeds, as after a restart) give bitwise the same
    weights, extra modules and losses."""
    ds = tiny_semi_dataset
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    straight = _make(ds, trainer_name, str(tmp_path / "straight"), monkeypatch)
    straight.run_training()
    expected = _final_state(straight)

    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    if killed_at == "epoch end":
        killed = _make(ds, trainer_name, str(tmp_path / "killed"), monkeypatch, die_after_epoch=2)
    else:
        killed = _make(ds, trainer_name, str(tmp_path / "killed"), monkeypatch, die_in_epoch=2)
    with pytest.raises(_Died):
        killed.run_training()
    # (no on_train_end: a killed process writes no final checkpoint; with nnUNet_n_proc_DA=0 there are no workers)
    random.seed(1), np.random.seed(1), torch.manual_seed(1)  # a restarted process starts elsewhere
    resumed = _make(ds, trainer_name, str(tmp_path / "killed"), monkeypatch, continue_training=True)
    resumed.load_checkpoint(os.path.join(resumed.output_folder, "checkpoint_latest.pth"))
    assert resumed.current_epoch == 2
    resumed.run_training()
    weights, modules, losses = _final_state(resumed)
    assert losses == expected[2]
    assert all(torch.equal(weights[k], v) for k, v in expected[0].items())
    for name, state in expected[1].items():
        assert all(torch.equal(modules[name][k], v) for k, v in state.items()), name
