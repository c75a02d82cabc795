"""Tests for the abdomen phantom generator (:mod:`nnunet_ext.phantom`)."""
import importlib.util
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from nnunet_ext.phantom import (DIFFICULTIES, ORGANS, PhantomConfigError, PhantomExistsError, generate_case,
                                generate_dataset, main, render_overview)

SMALL = (24, 48, 48)
SPACING = (2.5, 0.8, 0.8)
LABEL = {name: value for value, name in ORGANS.items()}


def _read(path):
    image = sitk.ReadImage(str(path))
    return image, sitk.GetArrayFromImage(image)


def _mtimes(folder):
    return {os.path.join(root, f): os.stat(os.path.join(root, f)).st_mtime_ns
            for root, _, files in os.walk(folder) for f in files}


def _small_dataset(raw, **kwargs):
    args = dict(dataset_id=501, dataset_name="Phantom", num_train=3, num_test=1, shape=SMALL, seed=0,
                progress=False)
    args.update(kwargs)
    return generate_dataset(str(raw), **args)


@pytest.fixture(scope="module", params=sorted(DIFFICULTIES))
def sample(request):
    """Six cases at the default grid, with a body mask taken from the image (air < -500 HU), per difficulty."""
    cases = []
    for i in range(6):
        image, label = generate_case(i, seed=0, difficulty=request.param)
        # Gas inside the body is enclosed in each axial slice (in 3-D it may reach the top of the volume).
        body = np.stack([ndimage.binary_fill_holes(s) for s in image > -500])
        cases.append((image, label, body))
    return cases


# --- determinism --------------------------------------------------------------------------------
def test_same_seed_same_case_different_seed_different_case():
    a_img, a_lab = generate_case(2, 7, SMALL)
    b_img, b_lab = generate_case(2, 7, SMALL)
    c_img, c_lab = generate_case(2, 8, SMALL)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    assert not np.array_equal(a_img, c_img)
    assert not np.array_equal(a_lab, c_lab)
    assert not np.array_equal(a_lab, generate_case(3, 7, SMALL)[1])


def test_outputs_have_requested_shape_and_dtype():
    image, label = generate_case(0, 0, (16, 40, 32), (3.0, 1.0, 1.0))
    assert image.shape == label.shape == (16, 40, 32)
    assert image.dtype == np.float32 and label.dtype == np.uint8
    assert np.isfinite(image).all()


def test_case_does_not_depend_on_dataset_size(tmp_path):
    small = _small_dataset(tmp_path / "a", num_train=3, num_test=0)
    large = _small_dataset(tmp_path / "b", num_train=5, num_test=0)
    for i in range(3):
        for sub, suffix in (("imagesTr", "_0000.nii.gz"), ("labelsTr", ".nii.gz")):
            name = f"Phantom_{i:03d}{suffix}"
            np.testing.assert_array_equal(_read(os.path.join(small, sub, name))[1],
                                          _read(os.path.join(large, sub, name))[1])


# --- labels and images are consistent -----------------------------------------------------------
def test_label_values_and_presence(sample):
    for _, label, _ in sample:
        values = set(np.unique(label).tolist())
        assert values <= set(ORGANS)
        present = [v for v in ORGANS if v and (label == v).sum() > 0]
        assert len(present) >= 5
        assert len(present) == len(ORGANS) - 1  # in this sample every organ is there


def test_labels_inside_body(sample):
    for _, label, body in sample:
        assert not ((label > 0) & ~body).any()


def test_intensities_ordered_like_ct(sample, request):
    enhanced = request.node.callspec.params["sample"] == "standard"  # hard: phases down to almost unenhanced
    for image, label, body in sample:
        mean = {name: image[label == v].mean() for v, name in ORGANS.items() if v}
        if enhanced:
            assert min(mean["kidney_left"], mean["kidney_right"]) > mean["liver"]
            assert max(mean, key=mean.get) == "aorta"
        assert 20 < mean["liver"] < 120 and -20 < mean["spleen"] < 110
        assert np.median(image[(label == 0) & body]) < 0  # fat dominates what is not an organ
        assert image[~body].mean() < -900  # air around the patient


def test_organs_overlap_in_intensity(sample):
    # Liver and spleen must not be separable by a threshold: position has to be used.
    image, label, _ = sample[0]
    liver, spleen = image[label == LABEL["liver"]], image[label == LABEL["spleen"]]
    assert np.percentile(liver, 25) < np.percentile(spleen, 75)


def test_anatomical_relations(sample):
    for _, label, _ in sample:
        zz, yy, xx = np.indices(label.shape)
        cy = {n: yy[label == v].mean() / label.shape[1] for v, n in ORGANS.items() if v}
        cx = {n: xx[label == v].mean() / label.shape[2] for v, n in ORGANS.items() if v}
        # x grows towards the patient's left (LPS), y towards posterior.
        assert cx["liver"] < 0.5 < cx["spleen"]
        assert cx["kidney_right"] < 0.5 < cx["kidney_left"]
        assert abs(cx["aorta"] - 0.5) < 0.1
        assert min(cy["kidney_left"], cy["kidney_right"]) > cy["liver"]
        assert cy["spleen"] > cy["stomach"]
        assert cy["pancreas"] < cy["aorta"]


# --- difficulties -------------------------------------------------------------------------------
def _difficulty_statistics(difficulty, num_cases=12):
    """Noise inside the liver, organ-to-organ contact, spread of organ centroids and volumes over cases."""
    noise, contact, centroids, volumes = [], [], [], []
    for i in range(num_cases):
        image, label = generate_case(i, 0, SMALL, difficulty=difficulty)
        noise.append(image[ndimage.binary_erosion(label == LABEL["liver"], iterations=2)].std())
        faces = 0
        for axis in range(3):
            a = np.moveaxis(label, axis, 0)
            faces += ((a[1:] > 0) & (a[:-1] > 0) & (a[1:] != a[:-1])).sum()  # organs touching, no fat between
        contact.append(faces)
        organs = [v for v in ORGANS if v]
        centroids.append([np.argwhere(label == v).mean(0) for v in organs])
        volumes.append([(label == v).sum() for v in organs])
    volumes = np.asarray(volumes, float)
    return dict(noise=np.mean(noise), contact=np.mean(contact), centroid_sd=np.std(centroids, axis=0).mean(),
                volume_cv=(volumes.std(0) / volumes.mean(0)).mean())


def test_hard_phantom_is_noisier_more_variable_and_its_organs_abut():
    standard, hard = _difficulty_statistics("standard"), _difficulty_statistics("hard")
    assert hard["noise"] > 1.6 * standard["noise"]
    assert hard["contact"] > 1.5 * standard["contact"]
    assert hard["centroid_sd"] > 1.15 * standard["centroid_sd"]
    assert hard["volume_cv"] > 1.3 * standard["volume_cv"]


def test_hard_phantom_is_deterministic_and_differs_from_standard():
    a_img, a_lab = generate_case(1, 3, SMALL, difficulty="hard")
    b_img, b_lab = generate_case(1, 3, SMALL, difficulty="hard")
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    s_img, s_lab = generate_case(1, 3, SMALL, difficulty="standard")
    assert not np.array_equal(a_lab, s_lab) and not np.array_equal(a_img, s_img)
    np.testing.assert_array_equal(generate_case(1, 3, SMALL)[1], s_lab)  # standard is the default


def test_unknown_difficulty_is_refused(tmp_path):
    with pytest.raises(PhantomConfigError, match="standard"):
        generate_case(0, 0, SMALL, difficulty="extreme")
    with pytest.raises(PhantomConfigError, match="hard"):
        _small_dataset(tmp_path, difficulty="extreme")
    assert not os.path.exists(tmp_path / "Dataset501_Phantom")


def test_difficulty_is_recorded_and_guards_reuse(tmp_path):
    folder = _small_dataset(tmp_path, num_test=0)
    json_path = os.path.join(folder, "dataset.json")
    with open(json_path) as f:
        meta = json.load(f)
    assert meta["phantom"]["difficulty"] == "standard"
    # A dataset written before difficulties existed is a standard one and is reused as it is.
    del meta["phantom"]["difficulty"]
    with open(json_path, "w") as f:
        json.dump(meta, f)
    before = _mtimes(os.path.join(folder, "imagesTr"))
    _small_dataset(tmp_path, num_test=0)
    assert _mtimes(os.path.join(folder, "imagesTr")) == before
    with pytest.raises(PhantomExistsError, match="difficulty: existing standard, requested hard"):
        _small_dataset(tmp_path, num_test=0, difficulty="hard")
    assert _mtimes(os.path.join(folder, "imagesTr")) == before
    _small_dataset(tmp_path, num_test=0, difficulty="hard", overwrite=True)
    with open(json_path) as f:
        assert json.load(f)["phantom"]["difficulty"] == "hard"
    np.testing.assert_array_equal(_read(os.path.join(folder, "labelsTr", "Phantom_000.nii.gz"))[1],
                                  generate_case(0, 0, SMALL, SPACING, "hard")[1])


# --- files on disk ------------------------------------------------------------------------------
def test_dataset_layout_geometry_and_json(tmp_path):
    folder = _small_dataset(tmp_path, num_train=3, num_test=2, num_unlabeled=2)
    assert os.path.basename(folder) == "Dataset501_Phantom"
    with open(os.path.join(folder, "dataset.json")) as f:
        meta = json.load(f)
    assert meta["channel_names"] == {"0": "CT"}
    assert meta["labels"] == {name: value for value, name in ORGANS.items()}
    assert meta["file_ending"] == ".nii.gz"
    assert meta["numTraining"] == len(os.listdir(os.path.join(folder, "labelsTr"))) == 3
    assert meta["numTest"] == 2 and meta["numUnlabeled"] == 2
    assert meta["phantom"]["shape"] == list(SMALL) and meta["phantom"]["spacing"] == list(SPACING)
    assert sorted(os.listdir(os.path.join(folder, "imagesTs"))) == ["Phantom_003_0000.nii.gz", "Phantom_004_0000.nii.gz"]
    assert sorted(os.listdir(os.path.join(folder, "labelsTs"))) == ["Phantom_003.nii.gz", "Phantom_004.nii.gz"]
    assert sorted(os.listdir(os.path.join(folder, "imagesUnlabeled"))) == ["Phantom_005_0000.nii.gz",
                                                                            "Phantom_006_0000.nii.gz"]
    for case in ("Phantom_000", "Phantom_002"):
        img, img_arr = _read(os.path.join(folder, "imagesTr", case + "_0000.nii.gz"))
        lab, lab_arr = _read(os.path.join(folder, "labelsTr", case + ".nii.gz"))
        np.testing.assert_allclose(img.GetSpacing(), SPACING[::-1], rtol=1e-6)
        assert img.GetSpacing() == lab.GetSpacing() and img.GetOrigin() == lab.GetOrigin()
        assert img.GetDirection() == lab.GetDirection()
        assert img_arr.shape == lab_arr.shape == SMALL
        expected_img, expected_lab = generate_case(int(case[-3:]), 0, SMALL, SPACING)
        np.testing.assert_array_equal(lab_arr, expected_lab)
        np.testing.assert_allclose(img_arr, expected_img)
    # Test and unlabeled cases are new patients, not copies of training cases.
    test_img = _read(os.path.join(folder, "imagesTs", "Phantom_003_0000.nii.gz"))[1]
    assert not any(np.array_equal(test_img, _read(os.path.join(folder, "imagesTr", f"Phantom_{i:03d}_0000.nii.gz"))[1])
                   for i in range(3))


def test_no_unlabeled_folder_by_default(tmp_path):
    folder = _small_dataset(tmp_path)
    assert not os.path.exists(os.path.join(folder, "imagesUnlabeled"))


# --- reuse, resume and refusals -----------------------------------------------------------------
def test_second_call_is_a_no_op_and_resumes_missing_cases(tmp_path):
    folder = _small_dataset(tmp_path)
    before = _mtimes(folder)
    assert _small_dataset(tmp_path) == folder
    assert _mtimes(folder) == before

    missing = os.path.join(folder, "labelsTr", "Phantom_001.nii.gz")
    os.remove(missing)
    _small_dataset(tmp_path)
    after = _mtimes(folder)
    assert set(after) == set(before)
    assert all(after[p] == t for p, t in before.items() if p != missing)
    np.testing.assert_array_equal(_read(missing)[1], generate_case(1, 0, SMALL)[1])


def test_other_parameters_need_overwrite(tmp_path):
    folder = _small_dataset(tmp_path)
    with pytest.raises(FileExistsError, match="seed"):
        _small_dataset(tmp_path, seed=1)
    with pytest.raises(FileExistsError, match="numTraining"):
        _small_dataset(tmp_path, num_train=4)
    _small_dataset(tmp_path, seed=1, overwrite=True)
    with open(os.path.join(folder, "dataset.json")) as f:
        assert json.load(f)["phantom"]["seed"] == 1
    np.testing.assert_array_equal(_read(os.path.join(folder, "labelsTr", "Phantom_000.nii.gz"))[1],
                                  generate_case(0, 1, SMALL)[1])


def test_foreign_folder_is_never_deleted(tmp_path):
    foreign = tmp_path / "Dataset501_Phantom"
    foreign.mkdir()
    (foreign / "dataset.json").write_text(json.dumps({"labels": {"background": 0}}))
    (foreign / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="not generated"):
            _small_dataset(tmp_path, overwrite=overwrite)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_generated_folder_with_extra_content_is_not_deleted(tmp_path):
    folder = _small_dataset(tmp_path)
    extra = os.path.join(folder, "my_predictions")
    os.mkdir(extra)
    with pytest.raises(FileExistsError, match="my_predictions"):
        _small_dataset(tmp_path, seed=3, overwrite=True)
    assert os.path.isdir(extra)


def test_refuses_second_dataset_with_same_id(tmp_path):
    (tmp_path / "Dataset501_Other").mkdir()
    with pytest.raises(ValueError, match="Dataset501_Other"):
        _small_dataset(tmp_path)


def test_invalid_parameters(tmp_path):
    with pytest.raises(ValueError):
        _small_dataset(tmp_path, dataset_name="bad name")
    with pytest.raises(ValueError):
        _small_dataset(tmp_path, dataset_id=1000)
    with pytest.raises(ValueError):
        _small_dataset(tmp_path, num_train=0)


# --- overview and command line ------------------------------------------------------------------
def test_render_overview_writes_png(tmp_path):
    folder = _small_dataset(tmp_path, num_test=0)
    png = tmp_path / "figs" / "overview.png"
    render_overview(folder, str(png), num_cases=2, num_slices=2)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_cli(tmp_path, monkeypatch, capsys):
    png = tmp_path / "o.png"
    assert main(["-o", str(tmp_path), "-d", "7", "-n", "Tiny", "--train", "2", "--test", "0",
                 "--shape", "16", "32", "32", "--spacing", "3", "1", "1", "--no-progress", "--overview", str(png)]) is None
    folder = capsys.readouterr().out.splitlines()[0]
    assert folder.endswith("Dataset007_Tiny") and png.stat().st_size > 0
    assert _read(os.path.join(folder, "imagesTr", "Tiny_001_0000.nii.gz"))[0].GetSpacing() == (1.0, 1.0, 3.0)
    assert main(["-o", str(tmp_path / "h"), "-d", "8", "-n", "Hard", "--train", "1", "--test", "0",
                 "--shape", "16", "32", "32", "--difficulty", "hard", "--no-progress"]) is None
    hard = capsys.readouterr().out.splitlines()[0]
    np.testing.assert_array_equal(_read(os.path.join(hard, "labelsTr", "Hard_000.nii.gz"))[1],
                                  generate_case(0, 0, (16, 32, 32), SPACING, "hard")[1])

    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    with pytest.raises(SystemExit) as e:  # a clash is reported as a message, not a traceback
        main(["-d", "7", "-n", "Other", "--train", "1", "--test", "0", "--no-progress"])
    assert e.value.code == 2 and "Dataset007_Tiny" in capsys.readouterr().err

    monkeypatch.delenv("nnUNet_raw")
    with pytest.raises(SystemExit):
        main(["--train", "1"])
    assert "nnUNet_raw" in capsys.readouterr().err


def test_cli_help_explains_flags(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for flag in ("-o", "-d", "-n", "--train", "--test", "--unlabeled", "--shape", "--spacing", "--seed",
                 "--overwrite", "--overview", "--difficulty"):
        assert flag in text


# --- speed and nnU-Net compatibility ------------------------------------------------------------
def test_small_case_is_fast():
    generate_case(0, 0, SMALL)  # warm-up (imports, caches)
    start = time.perf_counter()
    generate_case(1, 0, SMALL)
    assert time.perf_counter() - start < 0.5


@pytest.mark.skipif(importlib.util.find_spec("nnunetv2") is None, reason="nnunetv2 not installed")
def test_nnunet_integrity_check(tmp_path):
    raw = tmp_path / "raw"
    folder = _small_dataset(raw)
    env = dict(os.environ, nnUNet_raw=str(raw), nnUNet_preprocessed=str(tmp_path / "pre"),
               nnUNet_results=str(tmp_path / "res"))
    code = ("from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity\n"
            f"verify_dataset_integrity({folder!r}, 1)\n")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_console_script_exits_zero(tmp_path):
    """Console scripts hand main()'s return value to sys.exit: it must succeed with exit code 0."""
    import subprocess
    import sys

    exe = os.path.join(os.path.dirname(sys.executable), "nnUNetv2_ext_generate_phantom")
    result = subprocess.run([exe, "-o", str(tmp_path), "-d", "8", "--train", "1", "--test", "0", "--shape", "16", "32",
                             "32", "--no-progress"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("Dataset008_Phantom")
