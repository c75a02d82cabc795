"""Volume Fusion end to end through the real commands: prepare the pool (target + imagesUnlabeled + another
dataset), pretrain, fine-tune with -pretrained_weights (plain nnU-Net and this project's trainers), predict."""
import glob
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import TEST_TRAINERS, make_trainer, nnunet_env, pretrain_volume_fusion, run_command, short_budget

CONFIG = "3d_tiny"
EXTRA_ID, EXTRA_NAME = 503, "Dataset503_PhantomExtra"


def _output_channels(weights: dict) -> int:
    """Output channels of the full-resolution segmentation layer (the highest seg_layers index)."""
    keys = [k for k in weights if ".seg_layers." in k and k.endswith(".weight")]
    last = max(keys, key=lambda k: int(k.split(".seg_layers.")[1].split(".")[0]))
    return weights[last].shape[0]


def _folder(ds, trainer, fold):
    return os.path.join(ds["results"], ds["dataset_name"], f"{trainer}__nnUNetPlans__{CONFIG}", f"fold_{fold}")


@pytest.fixture(scope="module")
def pretrained(tiny_semi_dataset):
    from nnunet_ext.phantom import generate_dataset

    ds = tiny_semi_dataset
    # another dataset of the same modality, other size: its images join the pool with the target's plans
    generate_dataset(ds["raw"], dataset_id=EXTRA_ID, dataset_name="PhantomExtra", num_train=2, num_test=0,
                     shape=(20, 40, 40), seed=5, progress=False)
    env = nnunet_env(ds)
    prepared = run_command(["nnUNetv2_ext_prepare_pretraining", "-d", ds["dataset_id"], "-c", CONFIG,
                            "--extra-datasets", EXTRA_ID, "-np", 1], env).stdout
    trained = run_command(["nnUNetv2_train", ds["dataset_id"], CONFIG, "all", "-tr",
                           "nnUNetTrainerVolumeFusion_smoke", "-device", "cpu"], nnunet_env(ds, training=True))
    checkpoint = os.path.join(_folder(ds, "nnUNetTrainerVolumeFusion_smoke", "all"), "checkpoint_final.pth")
    return dict(ds, prepared=prepared.strip(), trained=trained.stdout, checkpoint=checkpoint)


def test_prepare_reports_the_pool_and_is_incremental(pretrained):
    assert "Pretraining pool: Dataset502_PhantomSemi imagesTr: 6, Dataset502_PhantomSemi imagesUnlabeled: 3, " \
           f"{EXTRA_NAME}: 2 (11 images)" in pretrained["prepared"]
    assert "nnUNetv2_train 502 3d_tiny all -p nnUNetPlans -tr nnUNetTrainerVolumeFusion" in pretrained["prepared"]
    extra = os.path.join(pretrained["preprocessed"], pretrained["dataset_name"],
                         f"nnUNetPlans_3d_fullres_pretrain_{EXTRA_NAME}")
    assert sorted(f for f in os.listdir(extra) if f.endswith(".pkl")) == \
        ["imagesTr_PhantomExtra_000.pkl", "imagesTr_PhantomExtra_001.pkl"]
    again = run_command(["nnUNetv2_ext_prepare_pretraining", "-d", pretrained["dataset_id"], "-c", CONFIG,
                         "--extra-datasets", EXTRA_ID, "-np", 1], nnunet_env(pretrained)).stdout
    assert "2 of 2 cases already done" in again and "3 of 3 cases already done" in again


def test_pretraining_run(pretrained):
    folder = _folder(pretrained, "nnUNetTrainerVolumeFusion_smoke", "all")
    log = open(sorted(glob.glob(os.path.join(folder, "training_log_*.txt")))[-1]).read()
    assert "Pretraining pool: 11 images" in log and "'fusion_classes': 4" in log
    assert "no final validation" in log and not os.path.isdir(os.path.join(folder, "validation"))
    checkpoint = torch.load(pretrained["checkpoint"], map_location="cpu", weights_only=False)
    # K + 1 = 5 outputs; the pseudo Dice of the fusion classes 1..4 is logged every epoch
    assert _output_channels(checkpoint["network_weights"]) == 5
    assert len(checkpoint["logging"]["dice_per_class_or_region"]) == 2
    assert len(checkpoint["logging"]["dice_per_class_or_region"][-1]) == 4
    assert checkpoint["nnunet_ext"]["global_step"] == 8
    assert all(v.device.type == "cpu" for v in checkpoint["network_weights"].values())


@pytest.mark.parametrize("trainer_name", ["nnUNetTrainer", "nnUNetTrainerMedContext", "nnUNetTrainerSimCVD"])
def test_fine_tuning_starts_from_every_pretrained_weight(pretrained, trainer_name):
    """At the first step every weight but the segmentation outputs is the pretrained one (teachers too)."""
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunet_ext.training.medcontext import nnUNetTrainerMedContext
    from nnunet_ext.training.simcvd import nnUNetTrainerSimCVD

    cls = {"nnUNetTrainer": nnUNetTrainer, "nnUNetTrainerMedContext": nnUNetTrainerMedContext,
           "nnUNetTrainerSimCVD": nnUNetTrainerSimCVD}[trainer_name]
    trainer = make_trainer(pretrained, cls, CONFIG, fold=3)
    trainer.initialize()
    load_pretrained_weights(trainer.network, pretrained["checkpoint"], verbose=False)
    trainer.on_train_start()
    try:
        weights = torch.load(pretrained["checkpoint"], map_location="cpu", weights_only=False)["network_weights"]
        networks = {"network": trainer.network.state_dict()}
        if hasattr(trainer, "teacher"):
            networks["teacher"] = trainer.teacher.state_dict()
        checked = 0
        for name, state in networks.items():
            for key, value in weights.items():
                if ".seg_layers." in key:
                    assert state[key].shape[0] == trainer.label_manager.num_segmentation_heads
                    continue
                assert torch.equal(state[key], value), (name, key)
                checked += 1
        assert checked >= len(weights) - 6
    finally:
        trainer.on_train_end()


def test_fine_tune_with_stock_command_and_predict(pretrained):
    ds = pretrained
    run_command(["nnUNetv2_train", ds["dataset_id"], CONFIG, 0, "-tr", "nnUNetTrainer_smoke", "-device", "cpu",
                 "-pretrained_weights", ds["checkpoint"]], nnunet_env(ds, training=True))
    images = os.path.join(ds["raw"], ds["dataset_name"], "imagesTs")
    out = os.path.join(ds["results"], "predictions_vf")
    run_command(["nnUNetv2_predict", "-i", images, "-o", out, "-d", ds["dataset_id"], "-c", CONFIG, "-f", 0,
                 "-tr", "nnUNetTrainer_smoke", "-device", "cpu", "-npp", 1, "-nps", 1], nnunet_env(ds))
    labels = set(json.load(open(os.path.join(ds["raw"], ds["dataset_name"], "dataset.json")))["labels"].values())
    predictions = sorted(glob.glob(os.path.join(out, "*.nii.gz")))
    assert len(predictions) == 2
    for p in predictions:
        assert set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(p)))) <= labels


@pytest.mark.parametrize("variant, batch_size, deep_supervision", [
    ("nnUNetTrainerVolumeFusion", 1, True),         # a second random crop instead of the batch roll
    ("nnUNetTrainerVolumeFusion_K2", 2, False),
    ("nnUNetTrainerVolumeFusion_K8", 2, True),
])
def test_variants_batch_of_one_and_no_deep_supervision(pretrained, variant, batch_size, deep_supervision):
    from nnunet_ext.training import volume_fusion

    cls = short_budget(getattr(volume_fusion, variant), enable_deep_supervision=deep_supervision)
    trainer = make_trainer(pretrained, cls, CONFIG, fold="all")
    trainer.configuration_manager.configuration["batch_size"] = batch_size
    trainer.enable_deep_supervision = deep_supervision
    trainer.run_training()
    assert trainer.batch_size == batch_size
    checkpoint = torch.load(os.path.join(trainer.output_folder, "checkpoint_final.pth"), map_location="cpu",
                            weights_only=False)
    k = trainer.fusion_classes
    assert _output_channels(checkpoint["network_weights"]) == k + 1
    assert checkpoint["nnunet_ext"]["hyperparameters"]["cross_scan"] == \
        ("second random crop" if batch_size == 1 else "batch roll")
    assert np.isfinite(trainer.logger.get_value("train_losses", step=-1))


def test_extra_dataset_with_other_channels_is_refused(tiny_semi_dataset, tmp_path):
    from nnunet_ext.errors import UserInputError
    from nnunet_ext.pretraining import prepare_pretraining

    ds = tiny_semi_dataset
    folder = os.path.join(ds["raw"], "Dataset504_OtherModality")
    os.makedirs(os.path.join(folder, "imagesTr"), exist_ok=True)
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump({"channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0, "a": 1},
                   "numTraining": 0, "file_ending": ".nii.gz"}, f)
    env = nnunet_env(ds)
    saved = {k: os.environ.get(k) for k in ("nnUNet_raw", "nnUNet_preprocessed")}
    os.environ.update(nnUNet_raw=env["nnUNet_raw"], nnUNet_preprocessed=env["nnUNet_preprocessed"])
    try:
        with pytest.raises(UserInputError, match=r"Extra dataset Dataset504_OtherModality has channels "
                                                 r"\{0: 'T1', 1: 'T2'\}, but the target Dataset502_PhantomSemi "
                                                 r"has \{0: 'CT'\}"):
            prepare_pretraining(ds["dataset_id"], CONFIG, extra_datasets=["504"], num_processes=1)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---------------------------------------------------------------- pretrained weights that do not fit
def test_check_pretrained_command(pretrained, tmp_path):
    ds = pretrained
    env = nnunet_env(ds)
    ok = run_command(["nnUNetv2_ext_check_pretrained", "-d", ds["dataset_id"], "-c", CONFIG,
                      "-pretrained_weights", ds["checkpoint"]], env)
    assert "OK:" in ok.stdout
    bad = run_command(["nnUNetv2_ext_check_pretrained", "-d", ds["dataset_id"], "-c", "3d_fullres",
                       "-pretrained_weights", ds["checkpoint"]], env, check=False)
    assert bad.returncode != 0
    assert "do not fit configuration '3d_fullres' of Dataset502_PhantomSemi" in bad.stderr
    assert "encoder.stages.0.0.convs.0.conv.weight: this network" in bad.stderr
    assert "configuration 3d_tiny" in bad.stderr and "nnUNetv2_train Dataset502_PhantomSemi 3d_tiny FOLD" in bad.stderr
    # a CPU copy is written beside, never over the input
    copy = tmp_path / "cpu_copy.pth"
    run_command(["nnUNetv2_ext_check_pretrained", "-d", ds["dataset_id"], "-c", CONFIG, "-pretrained_weights",
                 ds["checkpoint"], "-o", copy], env)
    original = torch.load(ds["checkpoint"], map_location="cpu", weights_only=False)["network_weights"]
    copied = torch.load(copy, weights_only=False)["network_weights"]
    assert all(torch.equal(original[k], copied[k]) for k in original)
    again = run_command(["nnUNetv2_ext_check_pretrained", "-d", ds["dataset_id"], "-c", CONFIG,
                         "-pretrained_weights", ds["checkpoint"], "-o", copy], env, check=False)
    assert again.returncode != 0 and "nothing is overwritten" in again.stderr


def test_our_trainers_refuse_mismatched_pretrained_weights_before_nnunet(pretrained):
    ds = pretrained
    result = run_command(["nnUNetv2_train", ds["dataset_id"], "3d_fullres", 0, "-tr", "nnUNetTrainerMedContext_smoke",
                          "-device", "cpu", "-pretrained_weights", ds["checkpoint"]], nnunet_env(ds, training=True),
                         check=False)
    assert result.returncode != 0
    assert "layers differ" in result.stderr and "AssertionError" not in result.stderr
    assert "Fine-tune with the same plans and configuration" in result.stderr


def test_checkpoint_file_problems(tmp_path):
    from nnunet_ext.errors import UserInputError
    from nnunet_ext.pretrained_check import read_checkpoint, shape_mismatches, storage_locations

    truncated = tmp_path / "truncated.pth"
    torch.save({"network_weights": {"a": torch.zeros(100)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(UserInputError, match="truncated or not a PyTorch checkpoint"):
        read_checkpoint(str(truncated))
    foreign = tmp_path / "foreign.pth"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(UserInputError, match="has no 'network_weights'"):
        read_checkpoint(str(foreign))
    with pytest.raises(UserInputError, match="do not exist"):
        read_checkpoint(str(tmp_path / "missing.pth"))
    assert storage_locations(str(foreign)) == set()
    cpu = tmp_path / "cpu.pth"
    torch.save({"network_weights": {"a": torch.zeros(2)}}, cpu)
    assert storage_locations(str(cpu)) == {"cpu"}
    ours = {"a.weight": (2, 3), "b.weight": (4,), "x.seg_layers.0.weight": (5, 2)}
    theirs = {"a.weight": (2, 3), "b.weight": (5,), "x.seg_layers.0.weight": (3, 2)}
    assert shape_mismatches(ours, theirs) == [("b.weight", (4,), (5,))]
    assert shape_mismatches(ours, {"a.weight": (2, 3)}) == [("b.weight", (4,), None)]


def test_killed_pretraining_resumes_with_step_and_optimiser(pretrained):
    ds = pretrained
    name = "nnUNetTrainerVolumeFusion_killedAfterEpoch1"
    env = nnunet_env(ds, training=True, extra_trainer_dirs=[TEST_TRAINERS])
    args = ["nnUNetv2_train", ds["dataset_id"], CONFIG, "all", "-tr", name, "-device", "cpu"]
    killed = run_command(args, env, check=False)
    assert killed.returncode == -9, killed.stdout[-2000:] + killed.stderr[-2000:]
    latest = os.path.join(_folder(ds, name, "all"), "checkpoint_latest.pth")
    saved = torch.load(latest, map_location="cpu", weights_only=False)
    assert saved["nnunet_ext"]["global_step"] == 2 * 4 and saved["current_epoch"] == 2
    resumed = run_command(args + ["--c"], env)
    assert "global step 8" in resumed.stdout
    final = torch.load(os.path.join(_folder(ds, name, "all"), "checkpoint_final.pth"), map_location="cpu",
                       weights_only=False)
    assert final["nnunet_ext"]["global_step"] == 3 * 4 and final["current_epoch"] == 3
    # the resumed epoch continued from the saved optimiser (momentum buffers present and moved on)
    assert final["optimizer_state"]["state"] and len(final["logging"]["train_losses"]) == 3


def test_pretraining_on_residual_encoder_unet_fine_tunes_through_nnunets_loader(resenc_planned_dataset, monkeypatch,
                                                                                tmp_path):
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from conftest import RESENC_PLANS

    ds = resenc_planned_dataset
    checkpoint, weights = pretrain_volume_fusion(ds, CONFIG, "nnUNetTrainerVolumeFusion_smoke", monkeypatch,
                                                 plans=RESENC_PLANS)
    assert any(".stages.0.blocks." in k for k in weights)  # residual encoder blocks
    assert _output_channels(weights) == 5
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    target = make_trainer(ds, nnUNetTrainer, CONFIG, RESENC_PLANS, monkeypatch=monkeypatch)
    target.initialize()
    load_pretrained_weights(target.network, checkpoint)  # what nnUNetv2_train -pretrained_weights calls
    loaded = target.network.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in weights.items() if ".seg_layers." not in k)


def test_gpu_checkpoint_on_a_cpu_only_machine(pretrained, tmp_path, monkeypatch):
    """A checkpoint whose tensors are tagged 'cuda:0', as torch.save writes them on a GPU (simulated by torch's
    own location tag): nnU-Net cannot read it here; the check names the device and writes a CPU copy that nnU-Net's
    loader then reads."""
    import torch.serialization as serialization
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

    from nnunet_ext.training.smoke import nnUNetTrainer_smoke

    ds = pretrained
    source = os.path.join(_folder(ds, "nnUNetTrainerVolumeFusion_smoke", "all"), "checkpoint_final.pth")
    gpu_file, cpu_copy = str(tmp_path / "from_gpu.pth"), str(tmp_path / "from_gpu_cpu.pth")
    checkpoint = torch.load(source, map_location="cpu", weights_only=False)
    with monkeypatch.context() as patch:
        patch.setattr(serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(checkpoint, gpu_file)
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(gpu_file, weights_only=False)  # what nnU-Net's loader does
    args = ["nnUNetv2_ext_check_pretrained", "-d", ds["dataset_id"], "-c", CONFIG, "-pretrained_weights", gpu_file]
    refused = run_command(args, nnunet_env(ds), check=False)
    assert refused.returncode == 2 and "were saved on ['cuda:0'], and this machine has no GPU" in refused.stderr
    assert f"-o {str(tmp_path / 'from_gpu')}_cpu.pth" in refused.stderr
    run_command(args + ["-o", cpu_copy], nnunet_env(ds))
    target = make_trainer(ds, nnUNetTrainer_smoke, CONFIG, fold=0, monkeypatch=monkeypatch)
    target.initialize()
    load_pretrained_weights(target.network, cpu_copy)
    loaded = target.network.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in checkpoint["network_weights"].items() if ".seg_layers." not in k)
