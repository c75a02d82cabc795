"""End to end through nnU-Net's own commands: train MedContext, predict, resume after a kill, load strictly."""
import glob
import json
import os
import shutil
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import TEST_TRAINERS, make_trainer, nnunet_env, run_command

CONFIG = "3d_tiny"


def _trainer_folder(ds, trainer, fold):
    return os.path.join(ds["results"], ds["dataset_name"], f"{trainer}__nnUNetPlans__{CONFIG}", f"fold_{fold}")


@pytest.fixture(scope="module")
def trained_medcontext(tiny_planned_dataset):
    ds = tiny_planned_dataset
    run_command(["nnUNetv2_train", ds["dataset_id"], CONFIG, 0, "-tr", "nnUNetTrainerMedContext_smoke",
                 "-device", "cpu"], nnunet_env(ds, training=True))
    return ds


def test_train_writes_checkpoint_log_and_plots(trained_medcontext):
    folder = _trainer_folder(trained_medcontext, "nnUNetTrainerMedContext_smoke", 0)
    for name in ("checkpoint_final.pth", "progress.png", "progress_medcontext.png", "validation/summary.json"):
        assert os.path.isfile(os.path.join(folder, name)), name
    log = open(sorted(glob.glob(os.path.join(folder, "training_log_*.txt")))[-1]).read()
    assert "'mask_ratio': 0.4" in log and "'context_loss': 'mse'" in log
    assert "seg_clean" in log and "teacher_momentum" in log
    checkpoint = torch.load(os.path.join(folder, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    extra = checkpoint["nnunet_ext"]
    assert extra["global_step"] == 2 * 4
    assert extra["hyperparameters"]["mask_ratio"] == 0.4
    assert set(extra["modules"]) == {"mask_value", "teacher"}
    # the mask value is trained: it moved away from its initial 0
    assert extra["modules"]["mask_value"]["value"].abs().sum() > 0
    for key in ("seg_clean", "seg_masked", "context", "context_weight", "teacher_momentum"):
        assert len(checkpoint["logging"][key]) == 2


def test_stock_predict_on_imagesTs(trained_medcontext):
    ds = trained_medcontext
    images = os.path.join(ds["raw"], ds["dataset_name"], "imagesTs")
    out = os.path.join(ds["results"], "predictions_medcontext")
    run_command(["nnUNetv2_predict", "-i", images, "-o", out, "-d", ds["dataset_id"], "-c", CONFIG, "-f", 0,
                 "-tr", "nnUNetTrainerMedContext_smoke", "-device", "cpu", "-npp", 1, "-nps", 1],
                nnunet_env(ds))
    labels = set(json.load(open(os.path.join(ds["raw"], ds["dataset_name"], "dataset.json")))["labels"].values())
    cases = sorted(glob.glob(os.path.join(images, "*_0000.nii.gz")))
    assert len(cases) == 2
    for image_file in cases:
        prediction_file = os.path.join(out, os.path.basename(image_file).replace("_0000.nii.gz", ".nii.gz"))
        image, prediction = sitk.ReadImage(image_file), sitk.ReadImage(prediction_file)
        assert prediction.GetSize() == image.GetSize()
        assert np.allclose(prediction.GetSpacing(), image.GetSpacing())
        assert set(np.unique(sitk.GetArrayFromImage(prediction))) <= labels


def test_checkpoint_loads_strictly_into_plain_nnunet_network(trained_medcontext):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunet_ext.training.smoke import nnUNetTrainerMedContext_smoke

    ds = trained_medcontext
    checkpoint_file = os.path.join(_trainer_folder(ds, "nnUNetTrainerMedContext_smoke", 0), "checkpoint_final.pth")
    trainer = make_trainer(ds, nnUNetTrainerMedContext_smoke, CONFIG, fold=0, continue_training=True)
    plain = nnUNetTrainer.build_network_architecture(
        trainer.plans_manager, trainer.configuration_manager, 1, trainer.label_manager.num_segmentation_heads,
        enable_deep_supervision=False)
    weights = torch.load(checkpoint_file, map_location="cpu", weights_only=False)["network_weights"]
    plain.load_state_dict(weights, strict=True)

    trainer.load_checkpoint(checkpoint_file)
    trainer.set_deep_supervision_enabled(False)
    plain.eval(), trainer.network.eval()
    x = torch.randn(1, 1, *trainer.configuration_manager.patch_size)
    with torch.no_grad():
        assert torch.equal(plain(x), trainer.network(x))


def test_killed_run_resumes_with_teacher_and_step(tiny_planned_dataset):
    sys.path.insert(0, TEST_TRAINERS)
    from nnunet_ext_test_trainers import nnUNetTrainerMedContext_killedAfterEpoch1

    ds = tiny_planned_dataset
    trainer_name = "nnUNetTrainerMedContext_killedAfterEpoch1"
    env = nnunet_env(ds, training=True, extra_trainer_dirs=[TEST_TRAINERS])
    args = ["nnUNetv2_train", ds["dataset_id"], CONFIG, 1, "-tr", trainer_name, "-device", "cpu"]
    killed = run_command(args, env, check=False)
    assert killed.returncode == -9, killed.stdout[-2000:] + killed.stderr[-2000:]
    folder = _trainer_folder(ds, trainer_name, 1)
    latest = os.path.join(folder, "checkpoint_latest.pth")
    saved = torch.load(latest, map_location="cpu", weights_only=False)
    assert saved["nnunet_ext"]["global_step"] == 2 * 4 and saved["current_epoch"] == 2
    saved_teacher = saved["nnunet_ext"]["modules"]["teacher"]
    kept = latest + ".before_resume"
    shutil.copy(latest, kept)

    resumed = run_command(args + ["--c"], env)
    assert "Restored ['mask_value', 'teacher'] and global step 8" in resumed.stdout
    final = torch.load(os.path.join(folder, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert final["nnunet_ext"]["global_step"] == 3 * 4

    # in process: after --c the teacher is the saved one, not a fresh copy of the student
    trainer = make_trainer(ds, nnUNetTrainerMedContext_killedAfterEpoch1, CONFIG, fold=1, continue_training=True)
    trainer.load_checkpoint(kept)
    teacher = trainer.teacher.state_dict()
    assert all(torch.equal(teacher[k], saved_teacher[k]) for k in saved_teacher)
    student = trainer.network.state_dict()
    assert any(not torch.equal(teacher[k], student[k]) for k in saved_teacher if k.endswith("weight"))


def test_continue_with_checkpoint_of_another_trainer_is_refused(tiny_planned_dataset, trained_medcontext):
    ds = tiny_planned_dataset
    env = nnunet_env(ds, training=True)
    source = os.path.join(_trainer_folder(ds, "nnUNetTrainerMedContext_smoke", 0), "checkpoint_final.pth")
    target_folder = _trainer_folder(ds, "nnUNetTrainerMedContext_halfBatch_smoke", 2)
    os.makedirs(target_folder, exist_ok=True)
    shutil.copy(source, os.path.join(target_folder, "checkpoint_latest.pth"))
    result = run_command(["nnUNetv2_train", ds["dataset_id"], CONFIG, 2, "-tr",
                          "nnUNetTrainerMedContext_halfBatch_smoke", "-device", "cpu", "--c"], env, check=False)
    assert result.returncode != 0
    assert "was written by trainer 'nnUNetTrainerMedContext_smoke'" in result.stderr
    # the user's checkpoint is still there, unchanged
    assert os.path.isfile(os.path.join(target_folder, "checkpoint_latest.pth"))


def test_pretrained_weights_reach_student_and_teacher(trained_medcontext):
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
    from nnunet_ext.training.medcontext import nnUNetTrainerMedContext

    ds = trained_medcontext
    pretrained = os.path.join(_trainer_folder(ds, "nnUNetTrainerMedContext_smoke", 0), "checkpoint_final.pth")
    trainer = make_trainer(ds, nnUNetTrainerMedContext, CONFIG, fold=3, continue_training=True)
    trainer.initialize()
    load_pretrained_weights(trainer.network, pretrained)
    trainer.on_train_start()
    try:
        weights = torch.load(pretrained, map_location="cpu", weights_only=False)["network_weights"]
        teacher = trainer.teacher.state_dict()
        for key, value in weights.items():
            if ".seg_layers." not in key:
                assert torch.equal(teacher[key], value), key
    finally:
        trainer.on_train_end()
