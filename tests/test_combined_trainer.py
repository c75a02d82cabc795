"""SimCVD + MedContext trainer in process: training and resuming, the loss's composition, gradients, the
concatenated (GPU/DDP) and separate (CPU) student passes, and refused mask settings."""
import os

import numpy as np
import pytest
import torch

from conftest import make_trainer as _trainer, short_budget as _budget
from nnunet_ext.ema import unwrap_module
from nnunet_ext.errors import UserInputError
from nnunet_ext.training.combined import nnUNetTrainerSimCVDMedContext
from test_simcvd_trainer import _copy, _synthetic_batch

LOGGED = ("loss", "seg", "sdm", "contrast", "pairwise", "consistency", "seg_masked", "context")


def _ready(trainer, global_step):
    trainer.initialize()
    trainer.on_train_epoch_start()
    trainer.global_step = global_step
    return trainer


def test_trains_and_resumes_with_every_module(tiny_semi_dataset, monkeypatch):
    cls = _budget(nnUNetTrainerSimCVDMedContext)
    trainer = _trainer(tiny_semi_dataset, cls, monkeypatch=monkeypatch)
    trainer.run_training()
    path = os.path.join(trainer.output_folder, "checkpoint_final.pth")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    extra = checkpoint["nnunet_ext"]
    assert extra["global_step"] == 2
    assert set(extra["modules"]) == {"heads", "teacher", "teacher_heads", "mask_value"}
    assert extra["modules"]["mask_value"]["value"].abs().sum() > 0  # the mask value was trained
    hyperparameters = extra["hyperparameters"]
    assert hyperparameters["ema_decay"] == 0.99 and hyperparameters["mask_ratio"] == 0.4
    assert hyperparameters["context_teacher"] == "SimCVD's EMA teacher"
    for key in ("seg_masked", "context", "context_weight", "contrast"):
        assert len(checkpoint["logging"][key]) == 1 and np.isfinite(checkpoint["logging"][key][0]), key
    # network_weights is exactly the plans network
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    plain = nnUNetTrainer.build_network_architecture(
        trainer.plans_manager, trainer.configuration_manager, trainer.num_input_channels,
        trainer.label_manager.num_segmentation_heads, enable_deep_supervision=False)
    plain.load_state_dict(checkpoint["network_weights"], strict=True)
    # --c restores the mask value and the teacher beside the network
    resumed = _trainer(tiny_semi_dataset, cls, monkeypatch=monkeypatch, continue_training=True)
    resumed.load_checkpoint(path)
    assert resumed.global_step == 2
    assert torch.equal(resumed.mask_value.value, extra["modules"]["mask_value"]["value"])
    for name, value in unwrap_module(resumed.teacher).state_dict().items():
        assert torch.equal(value, extra["modules"]["teacher"][name]), name


def test_unmasked_input_reproduces_the_clean_terms(tiny_semi_dataset, monkeypatch):
    """With nothing hidden and the teacher equal to the student, the masked pass is the clean pass: its
    segmentation loss equals the clean one and the context term vanishes; the total is the documented sum."""
    trainer = _ready(_trainer(tiny_semi_dataset, _budget(nnUNetTrainerSimCVDMedContext), fold=1,
                              monkeypatch=monkeypatch), global_step=3)  # past both ramps (2 steps)
    unwrap_module(trainer.teacher).load_state_dict(trainer.network.state_dict())
    trainer.draw_mask = lambda data, target: torch.zeros((data.shape[0], 1, *data.shape[2:]), dtype=torch.bool)
    result = trainer.train_step(_synthetic_batch(trainer, torch.Generator().manual_seed(0)))
    assert result["seg_masked"] == pytest.approx(result["seg"], rel=1e-5)
    assert result["context"] == pytest.approx(0.0, abs=1e-7)
    assert result["unsupervised_weight"] == 1.0 and result["context_weight"] == 1.0
    expected = (result["seg"] + 0.1 * result["sdm"] + 0.5 * result["contrast"] + 0.1 * result["pairwise"]
                + 0.1 * result["consistency"] + result["seg_masked"] + result["context"])
    assert result["loss"] == pytest.approx(expected, rel=1e-5)


def test_gradients_reach_student_heads_and_mask_value_never_the_teacher(tiny_semi_dataset, monkeypatch):
    trainer = _ready(_trainer(tiny_semi_dataset, _budget(nnUNetTrainerSimCVDMedContext), fold=2,
                              monkeypatch=monkeypatch), global_step=3)  # past both ramps (2 steps)
    captured = {}

    def step(loss):  # record the gradients the optimiser would use, then take the real step
        loss.backward(retain_graph=True)
        named = [*trainer.network.named_parameters(), ("mask_value", trainer.mask_value.value),
                 *(("heads." + n, p) for n, p in trainer.heads.named_parameters()),
                 *(("teacher." + n, p) for n, p in trainer.teacher.named_parameters())]
        captured.update({name: p.grad is not None and p.grad.abs().sum().item() > 0 for name, p in named})
        trainer.optimizer.zero_grad(set_to_none=True)
        type(trainer).optimizer_step(trainer, loss)

    trainer.optimizer_step = step
    result = trainer.train_step(_synthetic_batch(trainer, torch.Generator().manual_seed(0)))
    assert all(np.isfinite(result[key]) for key in LOGGED)
    assert result["context"] > 0  # a real mask: the masked student differs from the teacher
    assert captured["mask_value"] and captured["heads.sdm.conv.weight"]
    assert captured["encoder.stages.0.0.convs.0.conv.weight"]
    assert not any(v for k, v in captured.items() if k.startswith("teacher"))
    # no tapped feature (and with it no autograd graph) outlives the step
    assert all(tap.output is None for tap in (*trainer._student_taps, *trainer._teacher_taps))


def test_concatenated_and_separate_student_passes_agree(tiny_semi_dataset, monkeypatch):
    """The GPU/DDP path (labeled, unlabeled and masked in one batch) and the CPU path (three passes)."""
    base = _budget(nnUNetTrainerSimCVDMedContext)

    class Concatenated(base):
        concatenate_student_passes = True

    class Separate(base):
        concatenate_student_passes = False

    trainers = [_ready(_trainer(tiny_semi_dataset, cls, fold=fold, monkeypatch=monkeypatch), global_step=1)
                for fold, cls in enumerate((Concatenated, Separate))]
    for name in ("network", "teacher", "heads", "teacher_heads", "mask_value"):
        getattr(trainers[1], name).load_state_dict(getattr(trainers[0], name).state_dict())
    batch = _synthetic_batch(trainers[0], torch.Generator().manual_seed(0))
    results = []
    for trainer in trainers:
        torch.manual_seed(1)  # same mask, teacher noise and dropout views
        results.append(trainer.train_step(_copy(batch)))
    for key in LOGGED:
        assert np.allclose(results[0][key], results[1][key], rtol=1e-4, atol=1e-6), key
    for (name, a), b in zip(trainers[0].network.named_parameters(), trainers[1].network.parameters()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), name


def test_mask_settings_are_checked(tiny_semi_dataset, monkeypatch):
    trainer = _trainer(tiny_semi_dataset, _budget(nnUNetTrainerSimCVDMedContext, mask_ratio=1.0),
                       monkeypatch=monkeypatch)
    with pytest.raises(UserInputError, match=r"nnUNetTrainerSimCVDMedContext_test, configuration '3d_tiny'.*ratio"):
        trainer.initialize()
