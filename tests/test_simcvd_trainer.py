"""SimCVD trainer in process: variants, deep supervision off, 2-D, batches, gradients,
concatenated vs separate student passes, autocast, and refused configurations."""
import os

import numpy as np
import pytest
import torch

from conftest import make_trainer as _trainer, nnunet_env, run_command, short_budget as _budget
from nnunet_ext.errors import UserInputError
from nnunet_ext.sdm import multiclass_sdm
from nnunet_ext.training import simcvd



def _train_and_check(trainer):
    trainer.run_training()
    checkpoint = torch.load(os.path.join(trainer.output_folder, "checkpoint_final.pth"), map_location="cpu",
                            weights_only=False)
    assert checkpoint["nnunet_ext"]["global_step"] == 2
    losses = trainer.logger.get_value("train_losses", step=None)
    assert len(losses) == 1 and np.isfinite(losses[0])
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    plain = nnUNetTrainer.build_network_architecture(
        trainer.plans_manager, trainer.configuration_manager, trainer.num_input_channels,
        trainer.label_manager.num_segmentation_heads, enable_deep_supervision=False)
    plain.load_state_dict(checkpoint["network_weights"], strict=True)
    return checkpoint


def _initial_heads(trainer):
    torch.manual_seed(0)
    trainer.initialize()
    return {k: v.clone() for k, v in trainer.heads.state_dict().items()}


@pytest.mark.parametrize("name", [n for n in simcvd.__all__ if n != "nnUNetTrainerSimCVD"])
def test_every_variant_trains(tiny_semi_dataset, monkeypatch, name):
    trainer = _trainer(tiny_semi_dataset, _budget(getattr(simcvd, name)), monkeypatch=monkeypatch)
    before = _initial_heads(trainer)
    checkpoint = _train_and_check(trainer)
    heads = checkpoint["nnunet_ext"]["modules"]["heads"]
    assert not torch.equal(heads["sdm.conv.weight"], before["sdm.conv.weight"])
    projection_moved = not torch.equal(heads["projection.mlp.0.weight"], before["projection.mlp.0.weight"])
    assert projection_moved == trainer.use_contrast  # no contrastive term: the projection head gets no gradient
    assert checkpoint["nnunet_ext"]["hyperparameters"]["ema_decay"] == trainer.ema_decay
    if not trainer.use_pairwise:
        assert set(checkpoint["logging"]["pairwise"]) == {0.0}


def test_deep_supervision_off(tiny_semi_dataset, monkeypatch):
    trainer = _trainer(tiny_semi_dataset, _budget(simcvd.nnUNetTrainerSimCVD, enable_deep_supervision=False),
                       monkeypatch=monkeypatch)
    trainer.enable_deep_supervision = False
    _train_and_check(trainer)


def test_batches_carry_sdm_targets_and_unlabeled_images(tiny_semi_dataset, monkeypatch):
    trainer = _trainer(tiny_semi_dataset, _budget(simcvd.nnUNetTrainerSimCVD), monkeypatch=monkeypatch)
    trainer.initialize()
    loader, _ = trainer.get_dataloaders()
    try:
        batch = next(loader)
    finally:
        loader.finish()
    patch = tuple(trainer.configuration_manager.patch_size)
    *segmentations, sdm = batch["target"]
    assert len(segmentations) == len(trainer._get_deep_supervision_scales())
    heads = trainer.label_manager.num_segmentation_heads
    assert sdm.shape == (2, heads - 1, *patch) and sdm.dtype == torch.float32
    for sample in range(2):
        expected = multiclass_sdm(segmentations[0][sample, 0].numpy().astype(int), heads,
                                  trainer.configuration_manager.spacing)
        assert np.allclose(sdm[sample].numpy(), expected)
    assert batch["unlabeled"].shape == (2, 1, *patch)


def _synthetic_batch(trainer, generator):
    from nnunet_ext.sdm import AppendSignedDistanceMapTransform

    patch = trainer.configuration_manager.patch_size
    heads = trainer.label_manager.num_segmentation_heads
    full = torch.randint(0, heads, (2, 1, *patch), generator=generator).float()
    scales = np.cumprod(trainer.configuration_manager.pool_op_kernel_sizes[1:-1], axis=0)
    target = [full] + [torch.nn.functional.interpolate(full, scale_factor=[1 / s for s in scale], mode="nearest")
                       for scale in scales]
    sdm = torch.stack([AppendSignedDistanceMapTransform(heads).maps(sample) for sample in full])
    return {"data": torch.randn(2, 1, *patch, generator=generator), "target": target + [sdm],
            "unlabeled": torch.randn(2, 1, *patch, generator=generator)}


def _copy(batch):
    return {"data": batch["data"].clone(), "target": [t.clone() for t in batch["target"]],
            "unlabeled": batch["unlabeled"].clone()}


def test_gradients_reach_student_and_heads_never_the_teacher(tiny_semi_dataset, monkeypatch):
    trainer = _trainer(tiny_semi_dataset, _budget(simcvd.nnUNetTrainerSimCVD), fold=1, monkeypatch=monkeypatch)
    trainer.initialize()
    trainer.on_train_epoch_start()
    trainer.global_step = trainer.total_steps  # full unsupervised weight
    teacher_before = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
    captured = {}

    def step(loss):  # record the gradients the optimiser would use, then take the real step
        loss.backward(retain_graph=True)
        captured.update({name: p.grad is not None and p.grad.abs().sum().item() > 0
                         for name, p in [*trainer.network.named_parameters(),
                                         *(("heads." + n, p) for n, p in trainer.heads.named_parameters()),
                                         *(("teacher." + n, p) for n, p in trainer.teacher.named_parameters()),
                                         *(("teacher_heads." + n, p) for n, p in
                                           trainer.teacher_heads.named_parameters())]})
        trainer.optimizer.zero_grad(set_to_none=True)
        type(trainer).optimizer_step(trainer, loss)

    trainer.optimizer_step = step
    result = trainer.train_step(_synthetic_batch(trainer, torch.Generator().manual_seed(0)))
    assert all(np.isfinite(result[key]) for key in ("loss", "seg", "sdm", "contrast", "pairwise", "consistency"))
    assert captured["heads.sdm.conv.weight"] and captured["heads.projection.mlp.0.weight"]
    assert captured["encoder.stages.0.0.convs.0.conv.weight"]
    assert not any(v for k, v in captured.items() if k.startswith("teacher"))
    assert all(not p.requires_grad for p in trainer.teacher.parameters())
    # the teacher moved by the EMA update only: decay min(1 - 1/(step + 1), 0.99) at step total_steps
    decay = result["teacher_decay"]
    assert decay == pytest.approx(2 / 3)  # 2 steps were taken before this update: 1 - 1/3
    student = dict(trainer.network.named_parameters())
    for name, value in trainer.teacher.named_parameters():
        assert torch.allclose(value, decay * teacher_before[name] + (1 - decay) * student[name], atol=1e-6), name


def test_concatenated_and_separate_student_passes_agree(tiny_semi_dataset, monkeypatch):
    """The GPU/DDP path (one batch of labeled + unlabeled) and the CPU path (two passes) take the same step."""
    base = _budget(simcvd.nnUNetTrainerSimCVD)

    class Concatenated(base):
        concatenate_student_passes = True

    class Separate(base):
        concatenate_student_passes = False

    trainers = []
    for fold, cls in enumerate((Concatenated, Separate)):
        trainer = _trainer(tiny_semi_dataset, cls, fold=fold, monkeypatch=monkeypatch)
        trainer.initialize()
        trainer.on_train_epoch_start()
        trainer.global_step = 1
        trainers.append(trainer)
    for name in ("network", "teacher", "heads", "teacher_heads"):
        getattr(trainers[1], name).load_state_dict(getattr(trainers[0], name).state_dict())
    batch = _synthetic_batch(trainers[0], torch.Generator().manual_seed(0))
    results = []
    for trainer in trainers:
        torch.manual_seed(1)  # same teacher noise and dropout views
        results.append(trainer.train_step(_copy(batch)))
    for key in ("loss", "seg", "sdm", "contrast", "pairwise", "consistency"):
        assert np.allclose(results[0][key], results[1][key], rtol=1e-4, atol=1e-6), key
    for (name, a), b in zip(trainers[0].network.named_parameters(), trainers[1].network.parameters()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), name


def test_train_step_under_autocast(tiny_semi_dataset, monkeypatch):
    """The mixed-precision path (nnU-Net autocasts on CUDA), exercised on the CPU with bfloat16."""

    class Autocast(_budget(simcvd.nnUNetTrainerSimCVD)):
        def autocast_context(self):
            return torch.autocast("cpu", dtype=torch.bfloat16)

    trainer = _trainer(tiny_semi_dataset, Autocast, fold=2, monkeypatch=monkeypatch)
    trainer.initialize()
    trainer.on_train_epoch_start()
    trainer.global_step = 1
    result = trainer.train_step(_synthetic_batch(trainer, torch.Generator().manual_seed(0)))
    assert all(np.isfinite(result[key]) for key in ("loss", "seg", "sdm", "contrast", "pairwise", "consistency"))
    assert trainer.heads.sdm.conv.weight.grad is not None


@pytest.fixture(scope="module")
def semi_2d(tiny_semi_dataset):
    ds = tiny_semi_dataset
    env = nnunet_env(ds)
    run_command(["nnUNetv2_plan_and_preprocess", "-d", ds["dataset_id"], "-c", "2d", "-np", "2"], env)
    run_command(["nnUNetv2_ext_add_preset", "-d", ds["dataset_id"], "-preset", "2d_small"], env)
    run_command(["nnUNetv2_ext_preprocess_unlabeled", "-d", ds["dataset_id"], "-c", "2d_small", "-np", "1"], env)
    return ds


def test_2d_configuration(semi_2d, monkeypatch):
    trainer = _trainer(semi_2d, _budget(simcvd.nnUNetTrainerSimCVD), "2d_small", monkeypatch=monkeypatch)
    assert len(trainer.configuration_manager.patch_size) == 2
    _train_and_check(trainer)


# ---------------------------------------------------------------- refused configurations
def test_region_based_dataset_is_refused(tiny_semi_dataset, monkeypatch):
    from batchgenerators.utilities.file_and_folder_operations import load_json

    ds = tiny_semi_dataset
    dataset_json = load_json(os.path.join(ds["preprocessed"], ds["dataset_name"], "dataset.json"))
    foreground = [v for k, v in dataset_json["labels"].items() if k != "background"]
    dataset_json["labels"] = {"background": 0, "all_organs": foreground, "first_organ": foreground[0]}
    dataset_json["regions_class_order"] = [1, 2]
    trainer = _trainer(ds, _budget(simcvd.nnUNetTrainerSimCVD), monkeypatch=monkeypatch, dataset_json=dataset_json)
    with pytest.raises(UserInputError, match="trains on regions"):
        trainer.initialize()


def test_ema_decay_outside_range_is_refused(tiny_semi_dataset, monkeypatch):
    trainer = _trainer(tiny_semi_dataset, _budget(simcvd.nnUNetTrainerSimCVD, ema_decay=1.0), monkeypatch=monkeypatch)
    with pytest.raises(UserInputError, match=r"ema_decay must lie in \[0, 1\)"):
        trainer.initialize()
