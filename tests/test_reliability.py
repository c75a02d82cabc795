"""Checkpoints under a full disk, a read-only folder or a truncated file: clear errors, nothing lost."""
import errno
import os

import pytest
import torch

from conftest import nnunet_env
from nnunet_ext.errors import UserInputError


def _trainer(ds, monkeypatch, tmp_path):
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunet_ext.training.medcontext import nnUNetTrainerMedContext

    for key, value in nnunet_env(ds, training=True).items():
        if key.startswith("nnUNet_"):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    folder = os.path.join(ds["preprocessed"], ds["dataset_name"])
    plans = load_json(os.path.join(folder, "nnUNetPlans.json"))
    plans["continue_training"] = False
    trainer = nnUNetTrainerMedContext(plans=plans, configuration="3d_tiny", fold=0,
                                      dataset_json=load_json(os.path.join(folder, "dataset.json")),
                                      device=torch.device("cpu"))
    trainer.initialize()
    os.makedirs(trainer.output_folder, exist_ok=True)
    return trainer


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   PermissionError(errno.EACCES, "Permission denied")])
def test_failed_checkpoint_write_keeps_the_previous_checkpoint(tiny_planned_dataset, monkeypatch, tmp_path, error):
    import nnunet_ext.training.base as base

    trainer = _trainer(tiny_planned_dataset, monkeypatch, tmp_path)
    filename = os.path.join(trainer.output_folder, "checkpoint_latest.pth")
    trainer.save_checkpoint(filename)
    before = open(filename, "rb").read()
    real_save = torch.save

    def failing_save(obj, path, *args, **kwargs):
        with open(path, "wb") as f:  # half a file, then the disk is full / the folder turns read-only
            f.write(b"partial")
        raise error

    monkeypatch.setattr(base.torch, "save", failing_save)
    trainer.current_epoch = 5
    with pytest.raises(UserInputError, match=rf"Could not write checkpoint {filename}: .*{error.strerror}.*"
                                             r"The previous checkpoint_latest.pth is unchanged.*--c"):
        trainer.save_checkpoint(filename)
    monkeypatch.setattr(base.torch, "save", real_save)
    assert open(filename, "rb").read() == before
    assert not os.path.exists(filename + ".tmp")


def test_truncated_checkpoint_is_named_with_what_to_do(tiny_planned_dataset, monkeypatch, tmp_path):
    trainer = _trainer(tiny_planned_dataset, monkeypatch, tmp_path)
    filename = os.path.join(trainer.output_folder, "checkpoint_latest.pth")
    trainer.save_checkpoint(filename)
    data = open(filename, "rb").read()
    with open(filename, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(UserInputError, match=r"checkpoint_latest.pth cannot be read .*truncated or corrupt\. Move "
                                             r"it out of"):
        trainer.load_checkpoint(filename)
    assert os.path.getsize(filename) == len(data) // 2  # the user's file is left as it was


@pytest.mark.parametrize("version, ok", [("2.8.1", True), ("2.8.0", True), ("2.8", True), ("2.7.2", False),
                                         ("2.9.0", False), ("3.0.0.dev1", False), ("2.8.2rc1", True)])
def test_nnunet_version_range(version, ok):
    from nnunet_ext.env import check_nnunet_version

    if ok:
        assert check_nnunet_version(version) == version
    else:
        with pytest.raises(UserInputError, match=rf"nnunetv2 {version} is installed\. Install a supported "
                                                 r"version: pip install 'nnunetv2>=2\.8,<2\.9'"):
            check_nnunet_version(version)


def test_trainers_check_the_installed_nnunet_version(tiny_planned_dataset, monkeypatch, tmp_path):
    from importlib import metadata

    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "2.6.4" if name == "nnunetv2" else real(name))
    with pytest.raises(UserInputError, match="nnunetv2 2.6.4 is installed"):
        _trainer(tiny_planned_dataset, monkeypatch, tmp_path)


def test_env_check_says_how_to_fix_the_trainer_path(tmp_path):
    from conftest import run_command

    env = {k: v for k, v in os.environ.items() if k != "nnUNet_extTrainer"}
    missing = run_command(["nnUNetv2_ext_env", "--check"], env, check=False)
    assert missing.returncode == 2
    assert "nnUNet_extTrainer is not set" in missing.stderr and 'eval "$(nnUNetv2_ext_env)"' in missing.stderr
    stale = run_command(["nnUNetv2_ext_env", "--check"], dict(env, nnUNet_extTrainer=str(tmp_path / "old")),
                        check=False)
    assert stale.returncode == 2 and "do not exist" in stale.stderr and "does not list" in stale.stderr
    from nnunet_ext.env import extended_trainer_path

    ok = run_command(["nnUNetv2_ext_env", "--check"], dict(env, nnUNet_extTrainer=extended_trainer_path(None)))
    assert "OK:" in ok.stdout and "finds nnunet-ext's trainers" in ok.stdout


def test_continue_with_a_checkpoint_of_other_plans_names_the_layers(tiny_planned_dataset, monkeypatch, tmp_path):
    trainer = _trainer(tiny_planned_dataset, monkeypatch, tmp_path)
    filename = os.path.join(trainer.output_folder, "checkpoint_latest.pth")
    trainer.save_checkpoint(filename)
    checkpoint = torch.load(filename, map_location="cpu", weights_only=False)
    key = "encoder.stages.0.0.convs.0.conv.weight"
    shape = list(checkpoint["network_weights"][key].shape)
    checkpoint["network_weights"][key] = torch.zeros(shape[0] * 2, *shape[1:])  # as if planned with more features
    torch.save(checkpoint, filename)
    with pytest.raises(UserInputError, match=rf"does not fit the network that plans 'nnUNetPlans', configuration "
                                             rf"'3d_tiny' describe now \(1 layers differ: {key}: this network "
                                             rf"\[{shape[0]}, .*checkpoint \[{shape[0] * 2}, .*Restore the plans file"):
        trainer.load_checkpoint(filename)


KILL_DURING_WRITE = '''
import os, signal, sys, torch
sys.path.insert(0, {tests!r})
import nnunet_ext.training.base as base
from test_reliability import _trainer


class Env:  # a monkeypatch stand-in outside pytest
    def setenv(self, key, value):
        os.environ[key] = value


trainer = _trainer({dataset!r}, Env(), __import__("pathlib").Path({tmp!r}))
filename = os.path.join(trainer.output_folder, "checkpoint_latest.pth")
trainer.save_checkpoint(filename)
print("FIRST", os.path.getsize(filename), flush=True)
real_save = torch.save


def killed_while_writing(obj, path, *args, **kwargs):
    real_save(obj, path, *args, **kwargs)
    with open(path, "r+b") as f:  # the process dies half way through the file
        f.truncate(os.path.getsize(path) // 2)
    os.kill(os.getpid(), signal.SIGKILL)


base.torch.save = killed_while_writing
trainer.current_epoch = 7
trainer.save_checkpoint(filename)
'''


def test_sigkill_while_writing_a_checkpoint_keeps_the_previous_one(tiny_planned_dataset, monkeypatch, tmp_path):
    import subprocess
    import sys

    from conftest import nnunet_env

    tests = os.path.dirname(os.path.abspath(__file__))
    script = KILL_DURING_WRITE.format(tests=tests, dataset=dict(tiny_planned_dataset), tmp=str(tmp_path))
    env = dict(os.environ, **{k: v for k, v in nnunet_env(tiny_planned_dataset, training=True).items()
                              if k.startswith("nnUNet_")})
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == -9, result.stdout[-2000:] + result.stderr[-2000:]
    size = int(result.stdout.split("FIRST ")[1].split()[0])
    folder = os.path.dirname(next(os.path.join(root, f) for root, _, files in os.walk(tmp_path / "results")
                                  for f in files if f == "checkpoint_latest.pth"))
    latest = os.path.join(folder, "checkpoint_latest.pth")
    assert os.path.getsize(latest) == size  # the previous checkpoint, whole
    assert os.path.getsize(latest + ".tmp") < size  # the half-written file never replaced it
    # and --c continues from it
    trainer = _trainer(tiny_planned_dataset, monkeypatch, tmp_path)
    trainer.load_checkpoint(latest)
    assert trainer.current_epoch == 1 and trainer.restored_from_checkpoint


def _planned(tiny_planned_dataset):
    import json

    with open(os.path.join(tiny_planned_dataset["preprocessed"], tiny_planned_dataset["dataset_name"],
                           "nnUNetPlans.json")) as f:
        return json.load(f)


def test_presets_that_do_not_fit_the_dataset(tiny_planned_dataset):
    import copy

    from nnunet_ext.presets import build_preset_configuration, load_preset

    plans = _planned(tiny_planned_dataset)
    # a 2-D preset for plans without a 2d configuration
    no_2d = copy.deepcopy(plans)
    del no_2d["configurations"]["2d"]
    with pytest.raises(UserInputError, match=r"inherits from configuration '2d', which these plans .* do not have"
                                             r".*nnUNetv2_plan_and_preprocess -d DATASET -c 2d"):
        build_preset_configuration(no_2d, load_preset("2d_small"))
    # a 2-D preset pointed at a 3-D configuration
    flat = dict(load_preset("2d_small"), inherits_from="3d_fullres")
    with pytest.raises(UserInputError, match=r"is 2-D but configuration '3d_fullres' is 3-D"):
        build_preset_configuration(plans, flat)
    # images too small for even one downsampling at the preset's minimum feature-map edge
    tiny = copy.deepcopy(plans)
    tiny["configurations"]["3d_fullres"]["patch_size"] = [4, 4, 4]
    with pytest.raises(UserInputError, match=r"does not fit configuration '3d_fullres'.*allows no downsampling"):
        build_preset_configuration(tiny, load_preset("3d_small"))
    # an architecture without U-Net stages
    other = copy.deepcopy(plans)
    other["configurations"]["3d_fullres"]["architecture"] = {"network_class_name": "monai.networks.nets.SwinUNETR",
                                                             "arch_kwargs": {}, "_kw_requires_import": []}
    with pytest.raises(UserInputError, match=r"uses monai.networks.nets.SwinUNETR, which has no U-Net stage"):
        build_preset_configuration(other, load_preset("3d_small"))


def test_setup_refuses_to_start_an_install_that_cannot_fit_on_the_disk(tmp_path):
    """scripts/setup.sh stops before pip when under 7 GiB are free and torch is not installed yet."""
    import shutil
    import subprocess

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    (tmp_path / "scripts").mkdir()
    shutil.copy(os.path.join(repo, "scripts", "setup.sh"), tmp_path / "scripts" / "setup.sh")
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "df").write_text("#!/bin/sh\necho Avail; echo 1048576\n")  # 1 GiB free
    (fake_bin / "df").chmod(0o755)
    result = subprocess.run(["bash", str(tmp_path / "scripts" / "setup.sh")], capture_output=True, text=True,
                            env=dict(os.environ, PATH=f"{fake_bin}:{os.environ['PATH']}"), timeout=60)
    assert result.returncode == 1
    assert "only 1024 MiB free" in result.stderr and "7 GiB" in result.stderr
    assert not (tmp_path / ".venv").exists()  # nothing was started
