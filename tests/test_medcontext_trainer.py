"""MedContext trainer in process: every variant, deep supervision on/off, 2-D, bad input."""
import os

import numpy as np
import pytest
import torch

from conftest import make_trainer as _trainer, nnunet_env, run_command, short_budget as _budget
from nnunet_ext.errors import UserInputError
from nnunet_ext.training import medcontext



def _train_and_check(trainer):
    trainer.run_training()
    checkpoint = torch.load(os.path.join(trainer.output_folder, "checkpoint_final.pth"), map_location="cpu",
                            weights_only=False)
    assert checkpoint["nnunet_ext"]["global_step"] == 2
    losses = trainer.logger.get_value("train_losses", step=None)
    assert len(losses) == 1 and np.isfinite(losses[0])
    # the mask value received gradients and moved
    assert trainer.mask_value.value.abs().sum() > 0
    # network_weights is exactly the plans network (strict load into what plain nnU-Net builds)
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    plain = nnUNetTrainer.build_network_architecture(
        trainer.plans_manager, trainer.configuration_manager, trainer.num_input_channels,
        trainer.label_manager.num_segmentation_heads, enable_deep_supervision=False)
    plain.load_state_dict(checkpoint["network_weights"], strict=True)
    return checkpoint


@pytest.mark.parametrize("name", [n for n in medcontext.__all__ if n != "nnUNetTrainerMedContext"])
def test_every_variant_trains(tiny_planned_dataset, monkeypatch, name):
    trainer = _trainer(tiny_planned_dataset, _budget(getattr(medcontext, name)), "3d_tiny", monkeypatch=monkeypatch)
    checkpoint = _train_and_check(trainer)
    assert ("teacher" in checkpoint["nnunet_ext"]["modules"]) == trainer.use_teacher


def test_deep_supervision_off(tiny_planned_dataset, monkeypatch):
    cls = _budget(medcontext.nnUNetTrainerMedContext, enable_deep_supervision=False)
    trainer = _trainer(tiny_planned_dataset, cls, "3d_tiny", monkeypatch=monkeypatch)
    trainer.enable_deep_supervision = False
    _train_and_check(trainer)


@pytest.fixture(scope="module")
def planned_2d(tiny_planned_dataset):
    ds = tiny_planned_dataset
    env = nnunet_env(ds)
    run_command(["nnUNetv2_plan_and_preprocess", "-d", ds["dataset_id"], "-c", "2d", "-np", "2"], env)
    run_command(["nnUNetv2_ext_add_preset", "-d", ds["dataset_id"], "-preset", "2d_small"], env)
    return ds


def test_2d_configuration(planned_2d, monkeypatch):
    trainer = _trainer(planned_2d, _budget(medcontext.nnUNetTrainerMedContext), "2d_small", monkeypatch=monkeypatch)
    assert len(trainer.configuration_manager.patch_size) == 2
    _train_and_check(trainer)


def test_2d_tube_and_organ_masks(planned_2d, monkeypatch):
    for cls in (medcontext.nnUNetTrainerMedContext_tube, medcontext.nnUNetTrainerMedContext_organ):
        trainer = _trainer(planned_2d, _budget(cls), "2d_small", fold=1, monkeypatch=monkeypatch)
        _train_and_check(trainer)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.2, 1.5])
def test_mask_ratio_outside_unit_interval(tiny_planned_dataset, monkeypatch, ratio):
    trainer = _trainer(tiny_planned_dataset, _budget(medcontext.nnUNetTrainerMedContext, ), "3d_tiny",
                       monkeypatch=monkeypatch)
    trainer.mask_ratio = ratio
    with pytest.raises(UserInputError, match=r"nnUNetTrainerMedContext_test, configuration '3d_tiny'.*ratio"):
        trainer.initialize()


def test_patch_too_small_for_mask_grid(tiny_planned_dataset, monkeypatch):
    trainer = _trainer(tiny_planned_dataset, _budget(medcontext.nnUNetTrainerMedContext), "3d_tiny",
                       monkeypatch=monkeypatch)
    trainer.mask_min_cell_edge = 64  # one cell covers the whole 16x32x32 patch
    with pytest.raises(UserInputError, match=r"patch.*\[?16, 32, 32"):
        trainer.initialize()


def test_half_batch_needs_two_samples(tiny_planned_dataset, monkeypatch):
    trainer = _trainer(tiny_planned_dataset, _budget(medcontext.nnUNetTrainerMedContext_halfBatch), "3d_tiny",
                       monkeypatch=monkeypatch)
    trainer.configuration_manager.configuration["batch_size"] = 1
    with pytest.raises(UserInputError, match="batch size 1"):
        trainer.initialize()


def test_configuration_without_preprocessed_data(tiny_planned_dataset, monkeypatch):
    from batchgenerators.utilities.file_and_folder_operations import load_json

    ds = tiny_planned_dataset
    for key, value in nnunet_env(ds, training=True).items():
        if key.startswith("nnUNet_"):
            monkeypatch.setenv(key, value)
    folder = os.path.join(ds["preprocessed"], ds["dataset_name"])
    plans = load_json(os.path.join(folder, "nnUNetPlans.json"))
    plans["continue_training"] = False
    plans["configurations"]["3d_unprocessed"] = {"inherits_from": "3d_tiny", "data_identifier": "nnUNetPlans_nothing"}
    trainer = medcontext.nnUNetTrainerMedContext(plans=plans, configuration="3d_unprocessed", fold=0,
                                                 dataset_json=load_json(os.path.join(folder, "dataset.json")),
                                                 device=torch.device("cpu"))
    with pytest.raises(UserInputError, match=r"No preprocessed data for configuration '3d_unprocessed'.*"
                                             r"nnUNetv2_preprocess -d Dataset501_Phantom"):
        trainer.initialize()


def test_concatenated_and_separate_student_passes_agree(tiny_planned_dataset, monkeypatch):
    """The GPU path (one concatenated batch) and the CPU path (two passes) take the same optimiser step."""
    base = _budget(medcontext.nnUNetTrainerMedContext)

    class Concatenated(base):
        concatenate_student_passes = True

    class Separate(base):
        concatenate_student_passes = False

    trainers = []
    for fold, cls in enumerate((Concatenated, Separate)):
        trainer = _trainer(tiny_planned_dataset, cls, "3d_tiny", fold=fold, monkeypatch=monkeypatch)
        trainer.initialize()
        trainers.append(trainer)
    trainers[1].network.load_state_dict(trainers[0].network.state_dict())
    trainers[1].teacher.load_state_dict(trainers[0].teacher.state_dict())
    generator = torch.Generator().manual_seed(0)
    patch = trainers[0].configuration_manager.patch_size
    data = torch.randn(2, 1, *patch, generator=generator)
    full = torch.randint(0, 8, (2, 1, *patch), generator=generator).float()
    # deep-supervision targets by nearest downsampling, as nnU-Net's transform makes them
    target = [full] + [torch.nn.functional.interpolate(full, scale_factor=[1 / s for s in scale], mode="nearest")
                       for scale in np.cumprod(trainers[0].configuration_manager.pool_op_kernel_sizes[1:-1], axis=0)]
    results = []
    for trainer in trainers:
        trainer.network.train()
        torch.manual_seed(1)  # same masks
        results.append(trainer.train_step({"data": data.clone(), "target": [t.clone() for t in target]}))
    for key in ("loss", "seg_clean", "seg_masked", "context"):
        assert np.allclose(results[0][key], results[1][key], rtol=1e-4, atol=1e-6), key
    for (name, a), b in zip(trainers[0].network.named_parameters(), trainers[1].network.parameters()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), name


def test_train_step_under_autocast(tiny_planned_dataset, monkeypatch):
    """The mixed-precision path (nnU-Net autocasts on CUDA), exercised on the CPU with bfloat16."""

    class Autocast(_budget(medcontext.nnUNetTrainerMedContext)):
        def autocast_context(self):
            return torch.autocast("cpu", dtype=torch.bfloat16)

    trainer = _trainer(tiny_planned_dataset, Autocast, "3d_tiny", fold=4, monkeypatch=monkeypatch)
    trainer.initialize()
    trainer.network.train()
    patch = trainer.configuration_manager.patch_size
    data = torch.randn(2, 1, *patch)
    full = torch.randint(0, 8, (2, 1, *patch)).float()
    target = [full] + [torch.nn.functional.interpolate(full, scale_factor=[1 / s for s in scale], mode="nearest")
                       for scale in np.cumprod(trainer.configuration_manager.pool_op_kernel_sizes[1:-1], axis=0)]
    result = trainer.train_step({"data": data, "target": target})
    assert all(np.isfinite(result[key]) for key in ("loss", "seg_clean", "seg_masked", "context"))
    assert trainer.mask_value.value.grad is not None
