"""An architecture from outside nnU-Net, named in the plans by its import path: MONAI's SwinUNETR through
``nnunet_ext.architectures.SwinUNETR``, with MedContext and SimCVD (trained and predicted as nnU-Net's commands
do), Volume Fusion and plain nnU-Net without deep supervision."""
import json
import os

import numpy as np
import pytest
import torch

from conftest import (check_stock_prediction, make_trainer, pretrain_volume_fusion, reinit_output_and_load,
                      short_budget, train_as_nnunet_does)

CONFIG = "3d_swin"
SWIN = {"network_class_name": "nnunet_ext.architectures.SwinUNETR",
        "arch_kwargs": {"feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 4, 8]},
        "_kw_requires_import": []}


@pytest.fixture(scope="module")
def swin_plans(tiny_semi_dataset):
    """Dataset 502 with a '3d_swin' configuration: SwinUNETR on 32x64x64 patches (about the smallest that its five
    halvings and a bottleneck of more than one voxel allow), reusing 3d_fullres' data."""
    ds = tiny_semi_dataset
    plans_file = os.path.join(ds["preprocessed"], ds["dataset_name"], "nnUNetPlans.json")
    with open(plans_file) as f:
        plans = json.load(f)
    plans["configurations"][CONFIG] = {"inherits_from": "3d_fullres", "patch_size": [32, 64, 64],
                                       "batch_size": 1, "architecture": SWIN}
    with open(plans_file + ".tmp", "w") as f:
        json.dump(plans, f, indent=1)
    os.replace(plans_file + ".tmp", plans_file)
    return ds


@pytest.mark.parametrize("trainer_name", ["nnUNetTrainerMedContext_smoke", "nnUNetTrainerSimCVD_smoke"])
def test_trains_and_stock_predict_runs(swin_plans, trainer_name, monkeypatch):
    trainer = train_as_nnunet_does(swin_plans, trainer_name, CONFIG, 0, monkeypatch)
    checkpoint = torch.load(os.path.join(trainer.output_folder, "checkpoint_final.pth"), map_location="cpu",
                            weights_only=False)
    assert any(k.startswith("swin_unetr.") for k in checkpoint["network_weights"])
    assert checkpoint["nnunet_ext"]["global_step"] == 8
    if "SimCVD" in trainer_name:
        assert min(checkpoint["logging"]["pairwise"]) > 0  # the bottleneck was read through the adapter
    check_stock_prediction(swin_plans, trainer)


def test_plain_nnunet_without_deep_supervision_trains(swin_plans, monkeypatch):
    from nnunetv2.training.nnUNetTrainer.variants.network_architecture.nnUNetTrainerNoDeepSupervision import \
        nnUNetTrainerNoDeepSupervision

    trainer = make_trainer(swin_plans, short_budget(nnUNetTrainerNoDeepSupervision), CONFIG, monkeypatch=monkeypatch)
    assert trainer.enable_deep_supervision is False
    trainer.run_training()
    assert np.isfinite(trainer.logger.get_value("train_losses", step=-1))


def test_volume_fusion_pretrains_and_fine_tunes_after_reinit_output(swin_plans, monkeypatch, tmp_path):
    """Pretraining through nnUNetv2_train; SwinUNETR's output layer ('swin_unetr.out') is not one nnU-Net's loader
    skips, so the check asks for --reinit-output, and the copy then loads through nnU-Net's loader."""
    from nnunetv2.training.nnUNetTrainer.variants.network_architecture.nnUNetTrainerNoDeepSupervision import \
        nnUNetTrainerNoDeepSupervision

    ds = swin_plans
    pretrained, weights = pretrain_volume_fusion(ds, CONFIG, "nnUNetTrainerVolumeFusion_smoke", monkeypatch)
    assert weights["swin_unetr.out.conv.conv.weight"].shape[0] == 5  # K + 1 fusion classes
    refused, _, target = reinit_output_and_load(ds, CONFIG, nnUNetTrainerNoDeepSupervision, pretrained,
                                                str(tmp_path / "swin_finetune.pth"), monkeypatch)
    loaded = target.network.state_dict()
    assert refused.returncode == 2 and "only in the output layer" in refused.stderr
    assert all(torch.equal(loaded[k], v) for k, v in weights.items() if not k.startswith("swin_unetr.out."))


def test_plain_trainer_with_deep_supervision_gets_advice(swin_plans, monkeypatch):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    trainer = make_trainer(swin_plans, short_budget(nnUNetTrainer), CONFIG, monkeypatch=monkeypatch)
    with pytest.raises(ValueError, match="nnUNetTrainerNoDeepSupervision"):
        trainer.initialize()
