"""ResidualEncoderUNet (nnUNetPlannerResEncM plans): MedContext and SimCVD trained as nnUNetv2_train does, their
checkpoints predicted as nnUNetv2_predict does (which loads them strictly into the plans network)."""
import os

import pytest
import torch

from conftest import RESENC_PLANS, check_stock_prediction, train_as_nnunet_does

CONFIG = "3d_tiny"


@pytest.mark.parametrize("trainer_name, dataset_fixture", [("nnUNetTrainerMedContext_smoke", "resenc_planned_dataset"),
                                                           ("nnUNetTrainerSimCVD_smoke", "resenc_semi_dataset")])
def test_train_and_stock_predict(trainer_name, dataset_fixture, request, monkeypatch):
    ds = request.getfixturevalue(dataset_fixture)
    trainer = train_as_nnunet_does(ds, trainer_name, CONFIG, 0, monkeypatch, plans=RESENC_PLANS)
    checkpoint = torch.load(os.path.join(trainer.output_folder, "checkpoint_final.pth"), map_location="cpu",
                            weights_only=False)
    assert any(".stages.0.blocks." in k for k in checkpoint["network_weights"])  # residual encoder blocks
    assert checkpoint["nnunet_ext"]["global_step"] == 8
    check_stock_prediction(ds, trainer)
