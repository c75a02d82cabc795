"""Packaging, trainer discovery and plans presets."""
import glob
import json
import os
import subprocess
import sys
import zipfile

import pytest

from conftest import nnunet_env, run_command

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------- trainer discovery
def test_env_appends_to_user_value_and_does_not_duplicate():
    from nnunet_ext import trainer_modules_dir
    from nnunet_ext.env import extended_trainer_path

    ours = trainer_modules_dir()
    assert extended_trainer_path(None) == ours
    assert extended_trainer_path("") == ours
    user = os.pathsep.join(["/my/trainers", "/other"])
    assert extended_trainer_path(user) == os.pathsep.join(["/my/trainers", "/other", ours])
    assert extended_trainer_path(extended_trainer_path(user)) == extended_trainer_path(user)


def test_env_command_line_is_evaluable_by_a_shell():
    env = dict(os.environ, nnUNet_extTrainer="/my own/trainers")
    script = f'eval "$({os.path.join(os.path.dirname(sys.executable), "nnUNetv2_ext_env")})"; ' \
             f'printf %s "$nnUNet_extTrainer"'
    value = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=True).stdout
    from nnunet_ext import trainer_modules_dir

    assert value == os.pathsep.join(["/my own/trainers", trainer_modules_dir()])


def test_stock_lookup_finds_every_trainer():
    from nnunet_ext.env import extended_trainer_path
    from nnunet_ext.training import medcontext

    code = ("from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f\n"
            f"for name in {medcontext.__all__!r} + ['nnUNetTrainerMedContext_smoke']:\n"
            "    print(f(name).__module__)\n")
    env = dict(os.environ, nnUNet_extTrainer=extended_trainer_path(None))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    modules = [line for line in out.splitlines() if line.startswith("nnunet_ext")]
    assert len(modules) == len(medcontext.__all__) + 1
    # the classes come from the installed package, not from the lookup folder (which nnU-Net unloads again)
    assert set(modules) == {"nnunet_ext.training.medcontext", "nnunet_ext.training.smoke"}


def test_wheel_ships_trainer_modules_and_presets(tmp_path):
    """A non-editable install carries the trainer folder and the presets inside the package."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), REPO], check=True, capture_output=True)
    wheel = glob.glob(str(tmp_path / "nnunet_ext-*.whl"))[0]
    names = zipfile.ZipFile(wheel).namelist()
    assert "nnunet_ext/trainer_modules/nnunet_ext_medcontext.py" in names
    assert "nnunet_ext/plans_presets/3d_small.json" in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), wheel],
                   check=True, capture_output=True)
    code = "import nnunet_ext, os; d = nnunet_ext.trainer_modules_dir(); print(d); print(sorted(os.listdir(d)))"
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(target)),
                         cwd=str(tmp_path), capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0].startswith(str(target))
    assert "nnunet_ext_medcontext.py" in out[1]


# ---------------------------------------------------------------- presets
def test_preset_added_without_touching_existing_configurations(tiny_planned_dataset):
    ds = tiny_planned_dataset
    folder = os.path.join(ds["preprocessed"], ds["dataset_name"])
    plans = json.load(open(os.path.join(folder, "nnUNetPlans.json")))
    # the oldest backup holds the plans as nnU-Net wrote them (other tests add further presets)
    backups = sorted(glob.glob(os.path.join(folder, "nnUNetPlans.json.*.bak")))
    assert backups
    original = json.load(open(backups[0]))
    assert "3d_tiny" not in original["configurations"]
    for name, configuration in original["configurations"].items():
        assert plans["configurations"][name] == configuration
    tiny = plans["configurations"]["3d_tiny"]
    assert tiny["inherits_from"] == "3d_fullres"
    assert tiny["patch_size"] == [16, 32, 32]
    assert tiny["architecture"]["arch_kwargs"]["features_per_stage"] == [4, 8, 16]

    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(plans)
    resolved = manager.get_configuration("3d_tiny")
    # reuses the parent's preprocessed data
    assert resolved.data_identifier == manager.get_configuration("3d_fullres").data_identifier
    strides = resolved.pool_op_kernel_sizes
    for axis, size in enumerate(resolved.patch_size):
        divisor = 1
        for stride in strides:
            divisor *= stride[axis]
        assert size % divisor == 0


def test_preset_is_idempotent_and_refuses_foreign_configuration(tiny_planned_dataset, tmp_path):
    ds = tiny_planned_dataset
    env = nnunet_env(ds)
    folder = os.path.join(ds["preprocessed"], ds["dataset_name"])
    plans_file = os.path.join(folder, "nnUNetPlans.json")
    before = open(plans_file).read()
    out = run_command(["nnUNetv2_ext_add_preset", "-d", ds["dataset_id"], "-preset", "3d_tiny"], env).stdout
    assert "nothing to do" in out and open(plans_file).read() == before
    # a preset under the name of one of nnU-Net's own configurations is refused; the plans stay as they were
    result = run_command(["nnUNetv2_ext_add_preset", "-d", ds["dataset_id"], "-preset", "3d_tiny", "-n",
                          "3d_fullres"], env, check=False)
    assert result.returncode == 2 and "not added by nnunet-ext" in result.stderr
    assert open(plans_file).read() == before


@pytest.mark.parametrize("args, message", [
    (["-d", 501, "-preset", "4d_huge"], "Unknown preset '4d_huge'. Available presets:"),
    (["-d", 777, "-preset", "3d_small"], "Dataset 777 was not found"),
    (["-d", 501, "-preset", "3d_small", "-p", "MyMissingPlans"], "MyMissingPlans.json does not exist (plans found: ["),
])
def test_preset_errors_are_actionable(tiny_planned_dataset, args, message):
    result = run_command(["nnUNetv2_ext_add_preset"] + args, nnunet_env(tiny_planned_dataset), check=False)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_preset_for_raw_but_unplanned_dataset(tiny_planned_dataset, tmp_path):
    from nnunet_ext.phantom import generate_dataset

    paths = {key: str(tmp_path / key) for key in ("raw", "preprocessed", "results")}
    for folder in paths.values():
        os.makedirs(folder)
    generate_dataset(paths["raw"], dataset_id=502, dataset_name="Unplanned", num_train=2, num_test=0,
                     shape=(16, 32, 32), seed=1, progress=False)
    result = run_command(["nnUNetv2_ext_add_preset", "-d", 502], nnunet_env(paths), check=False)
    assert result.returncode == 2
    assert "has not been planned and preprocessed yet" in result.stderr
    assert "nnUNetv2_plan_and_preprocess -d 502" in result.stderr


def test_cuda_check_script_covers_every_benchmark_trainer():
    """scripts/cuda_check.sh (run by hand on a GPU) must train a short variant of every trainer the benchmark
    compares, and each variant it names must exist in its trainer folder."""
    import importlib.util
    import re

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = os.path.join(root, "scripts", "cuda_check.sh")
    subprocess.run(["bash", "-n", script], check=True)
    module_file = os.path.join(root, "scripts", "cuda_check_trainers", "nnunet_ext_cuda_check_trainers.py")
    spec = importlib.util.spec_from_file_location("cuda_check_trainers", module_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with open(os.path.join(root, "nnunet_ext", "benchmark", "methods.json")) as f:
        entries = json.load(f)["trainers"]
    needed = {e["trainer"] for e in entries} | {e["pretrain"] for e in entries if "pretrain" in e}
    with open(script) as f:
        named = set(re.findall(r"\b(nnUNetTrainer\w*)_cudaCheck\b", f.read()))
    assert needed <= named, f"cuda_check.sh does not train {sorted(needed - named)}"
    for name in named:
        variant = getattr(module, f"{name}_cudaCheck")
        assert variant.__mro__[2].__name__ == name and variant.__mro__[1] is module.CudaCheckBudget
