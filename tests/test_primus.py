"""The methods on nnU-Net's Primus trainers: nnU-Net's Primus network and settings, our steps, stock prediction."""
import os

import numpy as np
import pytest
import torch

from conftest import (check_stock_prediction, make_trainer, pretrain_volume_fusion, reinit_output_and_load,
                      short_budget, train_as_nnunet_does)

CONFIG = "3d_tiny"  # patch 16x32x32: divisible by Primus' 8x8x8 patch embedding


def _primus_classes():
    from nnunet_ext.training import primus

    return primus


def test_primus_settings_and_network_come_from_nnunets_primus_trainer(tiny_planned_dataset, monkeypatch, tmp_path):
    from dynamic_network_architectures.architectures.primus import Primus

    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    trainer = make_trainer(tiny_planned_dataset, _primus_classes().nnUNetTrainerMedContext_Primus_S,
                           CONFIG, monkeypatch=monkeypatch)
    trainer.initialize()
    assert isinstance(trainer.network, Primus)
    assert isinstance(trainer.optimizer, torch.optim.AdamW) and trainer.initial_lr == 3e-4
    assert trainer.weight_decay == 5e-2 and trainer.enable_deep_supervision is False
    assert trainer.recorded_hyperparameters()["gradient_clip_norm"] == 1.0


def test_simcvd_heads_stay_in_the_optimizer_when_primus_switches_stage(tiny_semi_dataset, monkeypatch, tmp_path):
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    trainer = make_trainer(tiny_semi_dataset, _primus_classes().nnUNetTrainerSimCVD_Primus_S, CONFIG,
                           monkeypatch=monkeypatch)
    trainer.initialize()
    heads = {id(p) for p in trainer.heads.parameters()}

    def held(optimizer):
        return {id(p) for group in optimizer.param_groups for p in group["params"]}

    assert heads <= held(trainer.optimizer)
    trainer.training_stage = None  # forces the Primus trainer to build a new AdamW for the 'train' stage
    optimizer, _ = trainer.configure_optimizers("train")
    assert optimizer is not trainer.optimizer and heads <= held(optimizer)
    assert len(optimizer.param_groups) == 2  # added once, not per call
    trainer.configure_optimizers("train")
    assert len(optimizer.param_groups) == 2


def test_simcvd_on_primus_trains_reads_features_and_loads_strictly(tiny_semi_dataset, monkeypatch, tmp_path):
    from nnunetv2.training.nnUNetTrainer.primus.primus_trainers import nnUNet_Primus_S_Trainer

    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    cls = short_budget(_primus_classes().nnUNetTrainerSimCVD_Primus_S)
    trainer = make_trainer(tiny_semi_dataset, cls, CONFIG, monkeypatch=monkeypatch)
    trainer.run_training()
    assert isinstance(trainer.heads.sdm.conv, torch.nn.ConvTranspose3d)  # beside Primus' final transposed conv
    checkpoint = torch.load(os.path.join(trainer.output_folder, "checkpoint_final.pth"), map_location="cpu",
                            weights_only=False)
    logging = checkpoint["logging"]
    assert min(logging["pairwise"]) > 0 and min(logging["sdm"]) > 0 and np.isfinite(logging["train_losses"][-1])
    assert checkpoint["nnunet_ext"]["hyperparameters"]["gradient_clip_norm"] == 1.0
    plain = nnUNet_Primus_S_Trainer.build_network_architecture(
        trainer.plans_manager, trainer.configuration_manager, trainer.num_input_channels,
        trainer.label_manager.num_segmentation_heads)
    plain.load_state_dict(checkpoint["network_weights"], strict=True)
    # --c restores the heads into a fresh trainer (nnU-Net's warm-up trainer loads the rest)
    resumed = make_trainer(tiny_semi_dataset, cls, CONFIG, monkeypatch=monkeypatch, continue_training=True)
    resumed.load_checkpoint(os.path.join(trainer.output_folder, "checkpoint_final.pth"))
    saved = checkpoint["nnunet_ext"]["modules"]["heads"]
    assert all(torch.equal(resumed.heads.state_dict()[k], v) for k, v in saved.items())


def test_volume_fusion_on_primus_pretrains_with_k_plus_one_outputs(tiny_planned_dataset, monkeypatch, tmp_path):
    from nnunetv2.training.nnUNetTrainer.primus.primus_trainers import nnUNet_Primus_S_Trainer

    ds = tiny_planned_dataset
    pretrained, weights = pretrain_volume_fusion(ds, CONFIG, "nnUNetTrainerVolumeFusion_Primus_S_smoke", monkeypatch)
    final = sorted(k for k in weights if k.startswith("up_projection.decode.") and k.endswith(".weight"))[-1]
    assert weights[final].shape[1] == 5  # ConvTranspose3d weight: (in, out, ...); K + 1 fusion classes

    # fine-tuning with nnU-Net's Primus trainer: its loader skips only '.seg_layers.', so the checkpoint needs a
    # fresh output layer first; the check says so and writes it
    refused, accepted, target = reinit_output_and_load(ds, CONFIG, nnUNet_Primus_S_Trainer, pretrained,
                                                       str(tmp_path / "vf_finetune.pth"), monkeypatch)
    assert refused.returncode == 2 and "only in the output layer" in refused.stderr
    assert "--reinit-output" in refused.stderr and "up_projection.decode.2.weight" in refused.stderr
    assert "OK:" in accepted.stdout
    loaded = target.network.state_dict()
    transferred = [k for k in weights if not k.startswith("up_projection.decode.2.")]
    assert all(torch.equal(loaded[k], weights[k]) for k in transferred)
    assert loaded["up_projection.decode.2.weight"].shape[1] == target.label_manager.num_segmentation_heads


@pytest.mark.parametrize("name, dataset_fixture", [("nnUNetTrainerMedContext_Primus_S_smoke", "tiny_planned_dataset"),
                                                   ("nnUNetTrainerSimCVD_Primus_S_smoke", "tiny_semi_dataset")])
def test_trains_and_stock_predict_runs(name, dataset_fixture, request, monkeypatch):
    ds = request.getfixturevalue(dataset_fixture)
    trainer = train_as_nnunet_does(ds, name, CONFIG, 0, monkeypatch)
    checkpoint = torch.load(os.path.join(trainer.output_folder, "checkpoint_final.pth"), map_location="cpu",
                            weights_only=False)
    assert any(k.startswith("eva.") for k in checkpoint["network_weights"])
    assert checkpoint["nnunet_ext"]["global_step"] == 8
    check_stock_prediction(ds, trainer)


def test_reinitialise_output_layer_replaces_exactly_the_output_layer(tmp_path):
    from dynamic_network_architectures.architectures.primus import Primus

    from nnunet_ext.errors import UserInputError
    from nnunet_ext.pretrained_check import reinitialise_output_layer

    def primus(classes, embed=48):
        return Primus(1, embed, (8, 8, 8), classes, 1, 4, (16, 32, 32))

    # as nnUNetTrainerVolumeFusion_Primus_* builds it: the target's decoder with K + 1 = 5 outputs at the end
    pretrained, target = primus(3), primus(3)
    final = pretrained.up_projection.decode[-1]
    pretrained.up_projection.decode[-1] = torch.nn.ConvTranspose3d(final.in_channels, 5, kernel_size=final.kernel_size,
                                                                   stride=final.stride)
    path, out = str(tmp_path / "pre.pth"), str(tmp_path / "adapted.pth")
    torch.save({"network_weights": pretrained.state_dict()}, path)
    replaced = reinitialise_output_layer(target, path, out)
    assert replaced == ["up_projection.decode.2.weight", "up_projection.decode.2.bias"]
    adapted = torch.load(out, weights_only=False)["network_weights"]
    target_state, pretrained_state = target.state_dict(), pretrained.state_dict()
    for key, value in adapted.items():
        assert torch.equal(value, (target_state if key in replaced else pretrained_state)[key]), key
    with pytest.raises(UserInputError, match="exists"):
        reinitialise_output_layer(target, path, out)
    with pytest.raises(UserInputError, match="beyond its output layer.*down_projection"):
        reinitialise_output_layer(primus(3, embed=72), path, str(tmp_path / "other.pth"))
