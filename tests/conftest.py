"""Shared fixtures: a tiny generated phantom dataset, planned and preprocessed by nnU-Net's own commands."""
import os
import subprocess
import sys

import pytest

BIN = os.path.dirname(sys.executable)
TEST_TRAINERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ext_trainers")
DATASET_ID = 501
DATASET_NAME = "Dataset501_Phantom"


def nnunet_env(paths: dict, training: bool = False, extra_trainer_dirs=()) -> dict:
    """Environment for nnU-Net's commands: its three folders, our trainers, one export worker.

    ``nnUNet_n_proc_DA=0`` (in-process augmentation) is set for training only: planning crashes with it.
    """
    from nnunet_ext.env import extended_trainer_path

    env = dict(os.environ)
    for key in ("nnUNet_n_proc_DA", "nnUNet_extTrainer"):
        env.pop(key, None)
    env.update({
        "nnUNet_raw": paths["raw"],
        "nnUNet_preprocessed": paths["preprocessed"],
        "nnUNet_results": paths["results"],
        "nnUNet_def_n_proc": "1",
        "nnUNet_compile": "f",
    })
    user_dirs = os.pathsep.join(extra_trainer_dirs) if extra_trainer_dirs else None
    env["nnUNet_extTrainer"] = extended_trainer_path(user_dirs)
    if training:
        env["nnUNet_n_proc_DA"] = "0"
    return env


def run_command(args, env, timeout=600, check=True) -> subprocess.CompletedProcess:
    """Run one of nnU-Net's (or our) console commands from this interpreter's bin folder."""
    cmd = [os.path.join(BIN, args[0])] + [str(a) for a in args[1:]]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n"
                             f"{result.stderr[-4000:]}")
    return result


@pytest.fixture(scope="session")
def tiny_planned_dataset(tmp_path_factory):
    """Phantom dataset 501 (6 training + 2 test cases of 24x48x48), planned for 3d_fullres, with 3d_tiny added.

    Returns a dict with 'raw', 'preprocessed', 'results' (folders), 'dataset_id', 'dataset_name'.
    """
    from nnunet_ext.phantom import generate_dataset

    root = tmp_path_factory.mktemp("nnunet")
    paths = {key: str(root / key) for key in ("raw", "preprocessed", "results")}
    for folder in paths.values():
        os.makedirs(folder)
    generate_dataset(paths["raw"], dataset_id=DATASET_ID, dataset_name="Phantom", num_train=6, num_test=2,
                     shape=(24, 48, 48), seed=0, progress=False)
    env = nnunet_env(paths)
    run_command(["nnUNetv2_plan_and_preprocess", "-d", DATASET_ID, "-c", "3d_fullres", "-np", "2",
                 "--verify_dataset_integrity"], env)
    run_command(["nnUNetv2_ext_add_preset", "-d", DATASET_ID, "-preset", "3d_tiny"], env)
    return dict(paths, dataset_id=DATASET_ID, dataset_name=DATASET_NAME)


RESENC_PLANS = "nnUNetResEncUNetMPlans"


@pytest.fixture(scope="session")
def resenc_planned_dataset(tiny_planned_dataset):
    """Dataset 501 also planned with nnUNetPlannerResEncM (plans ``nnUNetResEncUNetMPlans``), with 3d_tiny added."""
    return add_resenc_plans(tiny_planned_dataset)


def add_resenc_plans(ds):
    """Plan ``ds`` with nnUNetPlannerResEncM and add 3d_tiny; the ResEnc planners reuse nnUNetPlans_3d_fullres
    data (and so its unlabeled folder), so planning alone is enough."""
    env = nnunet_env(ds)
    run_command(["nnUNetv2_plan_experiment", "-d", ds["dataset_id"], "-pl", "nnUNetPlannerResEncM"], env)
    run_command(["nnUNetv2_ext_add_preset", "-d", ds["dataset_id"], "-preset", "3d_tiny", "-p", RESENC_PLANS], env)
    return ds


SEMI_DATASET_ID = 502
SEMI_DATASET_NAME = "Dataset502_PhantomSemi"


@pytest.fixture(scope="session")
def tiny_semi_dataset(tmp_path_factory):
    """Phantom dataset 502 for semi-supervised trainers: 6 labeled + 3 unlabeled + 2 test cases of 24x48x48.

    Planned for 3d_fullres with 3d_tiny added, ``imagesUnlabeled/`` preprocessed, and a few-label split keeping
    2 labeled cases per fold (the others join the fold's unlabeled pool). Separate from dataset 501 because the
    split changes what every fold trains on.
    """
    from nnunet_ext.phantom import generate_dataset

    root = tmp_path_factory.mktemp("nnunet_semi")
    paths = {key: str(root / key) for key in ("raw", "preprocessed", "results")}
    for folder in paths.values():
        os.makedirs(folder)
    generate_dataset(paths["raw"], dataset_id=SEMI_DATASET_ID, dataset_name="PhantomSemi", num_train=6,
                     num_test=2, num_unlabeled=3, shape=(24, 48, 48), seed=1, progress=False)
    env = nnunet_env(paths)
    run_command(["nnUNetv2_plan_and_preprocess", "-d", SEMI_DATASET_ID, "-c", "3d_fullres", "-np", "2"], env)
    run_command(["nnUNetv2_ext_add_preset", "-d", SEMI_DATASET_ID, "-preset", "3d_tiny"], env)
    run_command(["nnUNetv2_ext_preprocess_unlabeled", "-d", SEMI_DATASET_ID, "-c", "3d_tiny", "-np", "1"], env)
    run_command(["nnUNetv2_ext_make_splits", "-d", SEMI_DATASET_ID, "--labeled", "2", "--seed", "0"], env)
    return dict(paths, dataset_id=SEMI_DATASET_ID, dataset_name=SEMI_DATASET_NAME)


def short_budget(cls, **attributes):
    """A subclass of ``cls`` (named ``<cls>_test``) that trains 1 epoch of 2 iterations with 1 validation
    iteration, on the CPU by default, and sets ``attributes`` after nnU-Net's constructor."""
    import torch

    class Short(cls):
        def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cpu")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 1, 2, 1
            for key, value in attributes.items():
                setattr(self, key, value)

    Short.__name__ = cls.__name__ + "_test"
    return Short


def set_nnunet_env(ds, monkeypatch=None):
    """Put the dataset's nnU-Net folders (and the training settings of ``nnunet_env``) into this process'
    environment, through ``monkeypatch`` when given, else into ``os.environ``."""
    for key, value in nnunet_env(ds, training=True).items():
        if key.startswith("nnUNet_"):
            if monkeypatch is not None:
                monkeypatch.setenv(key, value)
            else:
                os.environ[key] = value


def make_trainer(ds, cls, configuration="3d_tiny", plans_name="nnUNetPlans", fold=0, monkeypatch=None,
                 dataset_json=None, continue_training=False):
    """Build a trainer in this process as nnUNetv2_train does, with the dataset's nnU-Net folders in the
    environment (through ``monkeypatch`` when given, else in ``os.environ``)."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json

    set_nnunet_env(ds, monkeypatch)
    folder = os.path.join(ds["preprocessed"], ds["dataset_name"])
    plans = load_json(os.path.join(folder, plans_name + ".json"))
    plans["continue_training"] = continue_training
    return cls(plans=plans, configuration=configuration, fold=fold,
               dataset_json=dataset_json or load_json(os.path.join(folder, "dataset.json")),
               device=torch.device("cpu"))


@pytest.fixture(scope="session")
def resenc_semi_dataset(tiny_semi_dataset):
    """Dataset 502 (with its unlabeled pool and few-label split) also planned with nnUNetPlannerResEncM."""
    return add_resenc_plans(tiny_semi_dataset)


def train_as_nnunet_does(ds, trainer_name, configuration, fold, monkeypatch, plans="nnUNetPlans"):
    """Train ``trainer_name`` in this process as ``nnUNetv2_train`` does: the class found by name (nnU-Net's lookup,
    through ``nnUNet_extTrainer``), its whole budget, checkpoints and ``checkpoint_final.pth``; without the final
    validation. A smoke trainer's 8 steps take seconds here; a subprocess adds half a minute of imports and
    spawned workers, which the end-to-end tests of each method pay once. Returns the trainer."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    set_nnunet_env(ds, monkeypatch)
    trainer = get_trainer_from_args(str(ds["dataset_id"]), configuration, fold, trainer_name, plans,
                                    device=torch.device("cpu"))
    trainer.run_training()
    return trainer


def check_stock_prediction(ds, trainer):
    """Predict the dataset's first test image from ``trainer``'s results with nnU-Net's predictor set up as
    ``nnUNetv2_predict`` sets it up (the trainer class found by the name in the checkpoint, its
    ``build_network_architecture`` without deep supervision, the weights loaded strictly), in this process and
    without mirroring; check the segmentation: the image's shape, only the dataset's labels."""
    import glob

    import numpy as np
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(use_mirroring=False, perform_everything_on_device=False, device=torch.device("cpu"),
                                allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(os.path.dirname(trainer.output_folder), use_folds=(trainer.fold,))
    image_file = sorted(glob.glob(os.path.join(ds["raw"], ds["dataset_name"], "imagesTs", "*_0000.nii.gz")))[0]
    image, properties = SimpleITKIO().read_images([image_file])
    segmentation = predictor.predict_single_npy_array(image, properties)
    labels = set(load_json(os.path.join(ds["raw"], ds["dataset_name"], "dataset.json"))["labels"].values())
    assert segmentation.shape == image.shape[1:]
    assert set(np.unique(segmentation).tolist()) <= labels
    return segmentation


def pretrain_volume_fusion(ds, configuration, trainer_name, monkeypatch, plans="nnUNetPlans"):
    """Volume Fusion pretraining on fold ``all`` as ``nnUNetv2_train ... all`` does it (in this process, see
    ``train_as_nnunet_does``); returns (checkpoint path, network weights)."""
    import torch

    trainer = train_as_nnunet_does(ds, trainer_name, configuration, "all", monkeypatch, plans)
    path = os.path.join(trainer.output_folder, "checkpoint_final.pth")
    return path, torch.load(path, map_location="cpu", weights_only=False)["network_weights"]


def reinit_output_and_load(ds, configuration, target_class, pretrained, adapted, monkeypatch):
    """``nnUNetv2_ext_check_pretrained -tr <target>`` on ``pretrained`` (expected to refuse it), then with
    ``--reinit-output adapted``, then nnU-Net's ``load_pretrained_weights`` into the target trainer's network.
    Returns (the refused command's result, the accepted command's result, the target trainer)."""
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

    args = ["nnUNetv2_ext_check_pretrained", "-d", ds["dataset_id"], "-c", configuration, "-tr",
            target_class.__name__, "-pretrained_weights", pretrained]
    refused = run_command(args, nnunet_env(ds), check=False)
    accepted = run_command(args + ["--reinit-output", adapted], nnunet_env(ds))
    target = make_trainer(ds, target_class, configuration, monkeypatch=monkeypatch)
    target.initialize()
    load_pretrained_weights(target.network, adapted)  # what nnUNetv2_train -pretrained_weights calls
    return refused, accepted, target
