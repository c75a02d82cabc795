"""SimCVD end to end through nnU-Net's own commands on a dataset with imagesUnlabeled/ and a few-label split:
train, stock predict, strict load into the plain network, resume after a kill, empty pool refused."""
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
TRAINER = "nnUNetTrainerSimCVD_smoke"


def _trainer_folder(ds, trainer, fold):
    return os.path.join(ds["results"], ds["dataset_name"], f"{trainer}__nnUNetPlans__{CONFIG}", f"fold_{fold}")


@pytest.fixture(scope="module")
def trained_simcvd(tiny_semi_dataset):
    ds = tiny_semi_dataset
    result = run_command(["nnUNetv2_train", ds["dataset_id"], CONFIG, 0, "-tr", TRAINER, "-device", "cpu"],
                         nnunet_env(ds, training=True))
    return dict(ds, stdout=result.stdout)


def test_train_writes_checkpoint_log_and_plots(trained_simcvd):
    folder = _trainer_folder(trained_simcvd, TRAINER, 0)
    for name in ("checkpoint_final.pth", "progress.png", "progress_simcvd.png", "validation/summary.json"):
        assert os.path.isfile(os.path.join(folder, name)), name
    log = open(sorted(glob.glob(os.path.join(folder, "training_log_*.txt")))[-1]).read()
    assert "'ema_decay': 0.99" in log and "'contrast_weight': 0.5" in log
    # the pool: 3 preprocessed imagesUnlabeled/ cases + the fold's training cases beyond the 2 labeled ones
    splits = json.load(open(os.path.join(trained_simcvd["preprocessed"], trained_simcvd["dataset_name"],
                                         "splits_final.json")))
    assert len(splits[0]["train"]) == 2
    assert f"Unlabeled pool: {3 + len(splits[0]['unlabeled'])} cases, batch size 2" in log
    for key in ("contrast", "pairwise", "consistency", "teacher_decay"):
        assert key in log
    checkpoint = torch.load(os.path.join(folder, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    extra = checkpoint["nnunet_ext"]
    assert extra["global_step"] == 2 * 4
    assert extra["hyperparameters"]["ema_decay"] == 0.99
    assert set(extra["modules"]) == {"heads", "teacher", "teacher_heads"}
    for key in ("seg", "sdm", "contrast", "pairwise", "consistency", "unsupervised_weight", "teacher_decay"):
        assert len(checkpoint["logging"][key]) == 2 and np.all(np.isfinite(checkpoint["logging"][key])), key
    # every unsupervised term was computed (positive InfoNCE values), and the teacher moved with the student
    assert min(checkpoint["logging"]["contrast"]) > 0 and min(checkpoint["logging"]["pairwise"]) > 0
    # epoch 2 logs the mean decay of steps 4..7: UA-MT's warm-up min(1 - 1/(step + 1), 0.99)
    assert checkpoint["logging"]["teacher_decay"][-1] == pytest.approx(np.mean([1 - 1 / (s + 1) for s in range(4, 8)]))


def test_stock_predict_on_imagesTs(trained_simcvd):
    ds = trained_simcvd
    images = os.path.join(ds["raw"], ds["dataset_name"], "imagesTs")
    out = os.path.join(ds["results"], "predictions_simcvd")
    run_command(["nnUNetv2_predict", "-i", images, "-o", out, "-d", ds["dataset_id"], "-c", CONFIG, "-f", 0,
                 "-tr", TRAINER, "-device", "cpu", "-npp", 1, "-nps", 1], nnunet_env(ds))
    labels = set(json.load(open(os.path.join(ds["raw"], ds["dataset_name"], "dataset.json")))["labels"].values())
    cases = sorted(glob.glob(os.path.join(images, "*_0000.nii.gz")))
    assert len(cases) == 2
    for image_file in cases:
        prediction = sitk.ReadImage(os.path.join(out, os.path.basename(image_file).replace("_0000.nii.gz",
                                                                                          ".nii.gz")))
        assert prediction.GetSize() == sitk.ReadImage(image_file).GetSize()
        assert set(np.unique(sitk.GetArrayFromImage(prediction))) <= labels


def test_checkpoint_loads_strictly_into_plain_nnunet_network(trained_simcvd):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunet_ext.training.smoke import nnUNetTrainerSimCVD_smoke

    ds = trained_simcvd
    checkpoint_file = os.path.join(_trainer_folder(ds, TRAINER, 0), "checkpoint_final.pth")
    trainer = make_trainer(ds, nnUNetTrainerSimCVD_smoke, CONFIG, fold=0, continue_training=True)
    plain = nnUNetTrainer.build_network_architecture(
        trainer.plans_manager, trainer.configuration_manager, 1, trainer.label_manager.num_segmentation_heads,
        enable_deep_supervision=False)
    plain.load_state_dict(torch.load(checkpoint_file, map_location="cpu", weights_only=False)["network_weights"],
                          strict=True)
    trainer.load_checkpoint(checkpoint_file)
    trainer.set_deep_supervision_enabled(False)
    plain.eval(), trainer.network.eval()
    x = torch.randn(1, 1, *trainer.configuration_manager.patch_size)
    with torch.no_grad():
        assert torch.equal(plain(x), trainer.network(x))


def test_killed_run_resumes_with_teacher_heads_and_step(tiny_semi_dataset):
    sys.path.insert(0, TEST_TRAINERS)
    from nnunet_ext_test_trainers import nnUNetTrainerSimCVD_killedAfterEpoch1

    ds = tiny_semi_dataset
    trainer_name = "nnUNetTrainerSimCVD_killedAfterEpoch1"
    env = nnunet_env(ds, training=True, extra_trainer_dirs=[TEST_TRAINERS])
    args = ["nnUNetv2_train", ds["dataset_id"], CONFIG, 1, "-tr", trainer_name, "-device", "cpu"]
    killed = run_command(args, env, check=False)
    assert killed.returncode == -9, killed.stdout[-2000:] + killed.stderr[-2000:]
    folder = _trainer_folder(ds, trainer_name, 1)
    latest = os.path.join(folder, "checkpoint_latest.pth")
    saved = torch.load(latest, map_location="cpu", weights_only=False)
    assert saved["nnunet_ext"]["global_step"] == 2 * 4 and saved["current_epoch"] == 2
    kept = latest + ".before_resume"
    shutil.copy(latest, kept)

    resumed = run_command(args + ["--c"], env)
    assert "Restored ['heads', 'teacher', 'teacher_heads'] and global step 8" in resumed.stdout
    final = torch.load(os.path.join(folder, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert final["nnunet_ext"]["global_step"] == 3 * 4
    assert len(final["logging"]["contrast"]) == 3

    # in process: after --c, teacher and heads are the saved ones, not fresh copies of the student
    trainer = make_trainer(ds, nnUNetTrainerSimCVD_killedAfterEpoch1, CONFIG, fold=1, continue_training=True)
    trainer.load_checkpoint(kept)
    trainer.on_train_start()
    try:
        for name in ("teacher", "heads", "teacher_heads"):
            state = getattr(trainer, name).state_dict()
            saved_state = saved["nnunet_ext"]["modules"][name]
            assert all(torch.equal(state[k], saved_state[k]) for k in saved_state), name
        teacher, student = trainer.teacher.state_dict(), trainer.network.state_dict()
        assert any(not torch.equal(teacher[k], student[k]) for k in teacher if k.endswith("weight"))
    finally:
        trainer.on_train_end()


def test_dataset_without_unlabeled_pool_is_refused(tiny_planned_dataset):
    ds = tiny_planned_dataset
    result = run_command(["nnUNetv2_train", ds["dataset_id"], CONFIG, 4, "-tr", TRAINER, "-device", "cpu"],
                         nnunet_env(ds, training=True), check=False)
    assert result.returncode != 0
    assert "needs unlabeled images, but fold 4 of Dataset501_Phantom has none" in result.stderr
    assert "nnUNetv2_ext_preprocess_unlabeled -d Dataset501_Phantom" in result.stderr
    assert "nnUNetv2_ext_make_splits -d Dataset501_Phantom" in result.stderr
