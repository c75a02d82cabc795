"""nnUNetv2_ext_preprocess_unlabeled: output format, incremental runs, safety and input checks."""
import contextlib
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import nnunet_env, run_command
from nnunet_ext.errors import UserInputError

DATASET_ID = 511
NAME = "Dataset511_Unl"
UNLABELED_CASES = ["Unl_004", "Unl_005", "Unl_006"]


def _snapshot(folder, skip=()):
    """{relative path: mtime_ns} of every file below ``folder`` except in the ``skip`` subfolders."""
    result = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if os.path.relpath(os.path.join(root, d), folder) not in skip]
        for f in files:
            path = os.path.join(root, f)
            result[os.path.relpath(path, folder)] = os.stat(path).st_mtime_ns
    return result


@pytest.fixture(scope="module")
def unlabeled_dataset(tmp_path_factory):
    """Phantom 511 (4 training, 3 unlabeled cases), planned for 3d_fullres, unlabeled cases preprocessed by the
    command (2 workers). Returns the paths, the command's output and snapshots taken before the command."""
    from nnunet_ext.phantom import generate_dataset

    root = tmp_path_factory.mktemp("unlabeled")
    paths = {key: str(root / key) for key in ("raw", "preprocessed", "results")}
    for folder in paths.values():
        os.makedirs(folder)
    generate_dataset(paths["raw"], dataset_id=DATASET_ID, dataset_name="Unl", num_train=4, num_test=0,
                     num_unlabeled=3, shape=(24, 48, 48), seed=0, progress=False)
    env = nnunet_env(paths)
    run_command(["nnUNetv2_plan_and_preprocess", "-d", DATASET_ID, "-c", "3d_fullres", "-np", "2"], env)
    pre = os.path.join(paths["preprocessed"], NAME)
    raw = os.path.join(paths["raw"], NAME)
    before = {"pre": _snapshot(pre), "raw": _snapshot(raw)}
    result = run_command(["nnUNetv2_ext_preprocess_unlabeled", "-d", DATASET_ID, "-np", "2"], env)
    return dict(env=env, pre=pre, raw=raw, out=os.path.join(pre, "nnUNetPlans_3d_fullres_unlabeled"),
                before=before, stdout=result.stdout)


@pytest.fixture
def nnunet_paths(unlabeled_dataset, monkeypatch):
    """Point nnU-Net's path variables at the test dataset for in-process calls."""
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, unlabeled_dataset["env"][key])
    return unlabeled_dataset


def _run(num_processes=1, **kwargs):
    from nnunet_ext.unlabeled import preprocess_unlabeled

    return preprocess_unlabeled(DATASET_ID, num_processes=num_processes, **kwargs)


# ------------------------------------------------------------------------------------------------------------
# output
# ------------------------------------------------------------------------------------------------------------
def test_output_readable_like_labeled_cases(unlabeled_dataset):
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    out = unlabeled_dataset["out"]
    assert "Next:" in unlabeled_dataset["stdout"] and out in unlabeled_dataset["stdout"]
    labeled_folder = os.path.join(unlabeled_dataset["pre"], "nnUNetPlans_3d_fullres")
    dataset_class = infer_dataset_class(labeled_folder)
    assert infer_dataset_class(out) is dataset_class
    plans = PlansManager(os.path.join(unlabeled_dataset["pre"], "nnUNetPlans.json"))
    target_spacing = plans.get_configuration("3d_fullres").spacing

    def expected_shape(props):
        spacing = [props["spacing"][i] for i in plans.transpose_forward]
        return tuple(compute_new_shape(props["shape_after_cropping_and_before_resampling"], spacing,
                                       target_spacing))

    labeled = dataset_class(labeled_folder)
    lab_data, _, _, lab_props = labeled.load_case(labeled.identifiers[0])
    assert tuple(lab_data.shape[1:]) == expected_shape(lab_props)
    lab_mean = float(np.mean(lab_data[:]))

    unlabeled = dataset_class(out)
    assert unlabeled.identifiers == UNLABELED_CASES
    for case in UNLABELED_CASES:
        data, seg, _, props = unlabeled.load_case(case)
        data = np.asarray(data[:])
        assert data.dtype == np.float32 and data.shape[0] == 1
        assert tuple(data.shape[1:]) == expected_shape(props)
        assert np.all(np.isfinite(data))
        # same normalisation as labeled cases (CT normalisation: z-score of the foreground intensities)
        assert abs(float(data.mean()) - lab_mean) < 1.0 and 0.5 < float(data.std()) < 10
        # no label, only nnU-Net's nonzero-region marker (-1 outside the image's nonzero region, 0 inside)
        seg = np.asarray(seg[:])
        assert seg.shape == (1, *data.shape[1:]) and set(np.unique(seg)) <= {-1, 0} and np.any(seg == 0)
        assert props["class_locations"] == {}
    assert not os.path.exists(os.path.join(out, ".partial")) or not os.listdir(os.path.join(out, ".partial"))


def test_nnunet_folders_untouched(unlabeled_dataset):
    out_name = os.path.basename(unlabeled_dataset["out"])
    assert _snapshot(unlabeled_dataset["pre"], skip={out_name}) == unlabeled_dataset["before"]["pre"]
    assert _snapshot(unlabeled_dataset["raw"]) == unlabeled_dataset["before"]["raw"]


# ------------------------------------------------------------------------------------------------------------
# incremental runs
# ------------------------------------------------------------------------------------------------------------
def test_second_run_does_nothing(nnunet_paths, capsys):
    out = nnunet_paths["out"]
    before = _snapshot(out)
    assert _run() == {"3d_fullres": out}
    assert _snapshot(out) == before
    assert "3 of 3 cases already done" in capsys.readouterr().out


def test_deleted_and_half_written_cases_are_redone(nnunet_paths):
    out = nnunet_paths["out"]
    os.remove(os.path.join(out, "Unl_005.b2nd"))
    os.remove(os.path.join(out, "Unl_006.pkl"))  # a killed run moves the .pkl last
    os.makedirs(os.path.join(out, ".partial", "Unl_006"))  # leftovers of a killed worker
    with open(os.path.join(out, ".partial", "Unl_006", "Unl_006.b2nd"), "w") as f:
        f.write("junk")
    untouched = os.stat(os.path.join(out, "Unl_004.b2nd")).st_mtime_ns
    _run()
    for case in UNLABELED_CASES:
        for suffix in (".b2nd", "_seg.b2nd", ".pkl"):
            assert os.path.isfile(os.path.join(out, case + suffix))
    assert os.stat(os.path.join(out, "Unl_004.b2nd")).st_mtime_ns == untouched
    assert not os.path.exists(os.path.join(out, ".partial", "Unl_006"))


KILL_WHILE_MOVING = """
import os, signal, sys
real_replace, moved = os.replace, []

def replace_then_die(src, dst):  # SIGKILL right after the first file of a case was moved into place
    real_replace(src, dst)
    moved.append(dst)
    if len(moved) == 1:
        os.kill(os.getpid(), signal.SIGKILL)

os.replace = replace_then_die
from nnunet_ext.unlabeled import main_preprocess
main_preprocess(["-d", "{dataset}", "-np", "1"])
"""


def test_sigkill_while_a_case_is_moved_into_place_is_redone_identically(nnunet_paths):
    """A real SIGKILL of the command between the files of one case: the next run redoes that case, and it ends
    identical to an uninterrupted run (arrays and properties)."""
    import subprocess
    import sys

    out = nnunet_paths["out"]
    case = UNLABELED_CASES[0]
    def content(path):  # blosc2 files carry metadata that differs between writes; compare the arrays
        if path.endswith(".b2nd"):
            import blosc2

            return np.asarray(blosc2.open(path, mode="r")[:])
        with open(path, "rb") as f:
            return f.read()

    expected = {}
    for suffix in (".b2nd", "_seg.b2nd", ".pkl"):
        path = os.path.join(out, case + suffix)
        expected[suffix] = content(path)
        os.remove(path)
    env = dict(nnunet_paths["env"])
    killed = subprocess.run([sys.executable, "-c", KILL_WHILE_MOVING.format(dataset=DATASET_ID)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stdout[-2000:] + killed.stderr[-2000:]
    present = [s for s in expected if os.path.isfile(os.path.join(out, case + s))]
    assert len(present) == 1 and ".pkl" not in present  # one file moved, the case does not count as done
    run_command(["nnUNetv2_ext_preprocess_unlabeled", "-d", DATASET_ID, "-np", "1"], env)
    for suffix, data in expected.items():
        again = content(os.path.join(out, case + suffix))
        assert np.array_equal(again, data) if isinstance(data, np.ndarray) else again == data, suffix
    partial = os.path.join(out, ".partial")
    assert not os.path.isdir(partial) or not os.listdir(partial)


# ------------------------------------------------------------------------------------------------------------
# input checks
# ------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _extra_files(dataset, files):
    """Temporarily add ``{name: writer(path)}`` to imagesUnlabeled/; remove them and their outputs afterwards."""
    folder = os.path.join(dataset["raw"], "imagesUnlabeled")
    paths = [os.path.join(folder, name) for name in files]
    try:
        for path, write in zip(paths, files.values()):
            write(path)
        yield paths
    finally:
        for path in paths:
            if os.path.exists(path):
                os.remove(path)
        for f in os.listdir(dataset["out"]):
            if f.startswith("Bad_"):
                os.remove(os.path.join(dataset["out"], f))


def _image(shape=(24, 48, 48), spacing=(0.8, 0.8, 2.5), value=0.0):
    def write(path):
        image = sitk.GetImageFromArray(np.full(shape, value, dtype=np.float32))
        image.SetSpacing(spacing)
        sitk.WriteImage(image, path)
    return write


def _garbage(path):
    with open(path, "wb") as f:
        f.write(b"this is not a nifti file" * 10)


def _with_nan(path):
    array = np.random.default_rng(0).normal(size=(24, 48, 48)).astype(np.float32)
    array[3, 4, 5] = np.nan
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.8, 2.5))
    sitk.WriteImage(image, path)


@pytest.mark.parametrize("files, message", [
    ({"Bad_0000.nii.gz": _image(), "Bad_0001.nii.gz": _image()}, ["Bad", "Unexpected", "Bad_0001.nii.gz"]),
    ({"Bad_0001.nii.gz": _image()}, ["Bad", "Missing", "Bad_0000.nii.gz"]),
    ({"Bad.nii.gz": _image()}, ["Bad.nii.gz", "naming"]),
    ({"Bad_0000.nii.gz": _garbage}, ["Bad_0000.nii.gz", "cannot be read", "corrupt"]),
    ({"Bad_0000.nii.gz": _image(shape=(48, 48))}, ["Bad_0000.nii.gz", "2-D", "3-D"]),
    ({"Bad_0000.nii.gz": _with_nan}, ["Bad_0000.nii.gz", "NaN or Inf"]),
    ({"Bad_0000.nii.gz": _image(shape=(48, 48, 24), spacing=(2.5, 0.8, 0.8))}, ["Bad", "axis", "Reorient"]),
], ids=["extra_channel", "missing_channel", "bad_name", "corrupt", "two_d", "nan", "axis_order"])
def test_bad_unlabeled_images(nnunet_paths, files, message):
    with _extra_files(nnunet_paths, files):
        with pytest.raises(UserInputError) as info:
            _run()
    for part in message:
        assert part in str(info.value), str(info.value)


def test_channels_with_different_shapes(nnunet_paths):
    """The phantom has one channel, so the header check is called directly for a two-channel case."""
    import json

    from nnunet_ext.unlabeled import _check_headers

    with open(os.path.join(nnunet_paths["pre"], "nnUNetPlans.json")) as f:
        plans = json.load(f)
    files = {"Bad_0000.nii.gz": _image(), "Bad_0001.nii.gz": _image(shape=(24, 40, 48))}
    with _extra_files(nnunet_paths, files) as paths:
        with pytest.raises(UserInputError, match="different shapes"):
            _check_headers("Bad", paths, plans)


def test_missing_and_empty_folder(nnunet_paths):
    folder = os.path.join(nnunet_paths["raw"], "imagesUnlabeled")
    moved = folder + "_moved"
    os.rename(folder, moved)
    try:
        with pytest.raises(UserInputError, match="imagesUnlabeled does not exist"):
            _run()
        os.makedirs(folder)
        with pytest.raises(UserInputError, match="contains no '.nii.gz' images"):
            _run()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        os.rename(moved, folder)


def test_not_planned_and_missing_configuration(unlabeled_dataset, monkeypatch):
    env = unlabeled_dataset["env"]
    result = run_command(["nnUNetv2_ext_preprocess_unlabeled", "-d", DATASET_ID, "-c", "3d_other"], env,
                         check=False)
    assert result.returncode == 2
    assert "nnUNetv2_plan_and_preprocess -d 511 -c 3d_other" in result.stderr
    assert "Traceback" not in result.stderr
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, env[key])
    # planned (nnU-Net always plans 2d) but not preprocessed
    with pytest.raises(UserInputError, match="nnUNetv2_preprocess -d 511 -c 2d"):
        _run(configurations=("2d",))

    from nnunet_ext.phantom import generate_dataset

    generate_dataset(env["nnUNet_raw"], dataset_id=512, dataset_name="Unplanned",
                     num_train=1, num_test=0, num_unlabeled=1, shape=(24, 48, 48), seed=0, progress=False)
    from nnunet_ext.unlabeled import preprocess_unlabeled

    with pytest.raises(UserInputError, match="nnUNetv2_plan_and_preprocess -d 512"):
        preprocess_unlabeled(512)
