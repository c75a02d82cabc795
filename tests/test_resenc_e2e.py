"""ResidualEncoderUNet (nnUNetPlannerResEncM plans): MedContext and SimCVD trained with nnUNetv2_train, checkpoints
predicted with stock nnUNetv2_predict (which loads them strictly into the plans network)."""
import glob
import os

import pytest
import torch

from conftest import RESENC_PLANS, nnunet_env, run_command

CONFIG = "3d_tiny"


@pytest.mark.parametrize("trainer_name, dataset_fixture", [("nnUNetTrainerMedContext_smoke", "resenc_planned_dataset"),
                                                           ("nnUNetTrainerSimCVD_smoke", "resenc_semi_dataset")])
def test_train_and_stock_predict(trainer_name, dataset_fixture, request):
    ds = request.getfixturevalue(dataset_fixture)
    run_command(["nnUNetv2_train", ds["dataset_id"], CONFIG, 0, "-p", RESENC_PLANS, "-tr", trainer_name,
                 "-device", "cpu"], nnunet_env(ds, training=True), timeout=900)
    folder = os.path.join(ds["results"], ds["dataset_name"], f"{trainer_name}__{RESENC_PLANS}__{CONFIG}", "fold_0")
    checkpoint = torch.load(os.path.join(folder, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert any(".stages.0.blocks." in k for k in checkpoint["network_weights"])  # residual encoder blocks
    assert checkpoint["nnunet_ext"]["global_step"] == 8
    out = os.path.join(ds["results"], f"predictions_resenc_{trainer_name}")
    run_command(["nnUNetv2_predict", "-i", os.path.join(ds["raw"], ds["dataset_name"], "imagesTs"), "-o", out,
                 "-d", ds["dataset_id"], "-c", CONFIG, "-f", 0, "-p", RESENC_PLANS, "-tr", trainer_name,
                 "-device", "cpu", "-npp", 1, "-nps", 1, "--disable_tta"], nnunet_env(ds))
    assert len(glob.glob(os.path.join(out, "*.nii.gz"))) == 2
