"""nnUNetv2_ext_make_splits: the pure split function and the command on a planned dataset."""
import glob
import json
import os
import shutil

import pytest

from conftest import nnunet_env, run_command
from nnunet_ext.errors import UserInputError
from nnunet_ext.splits import make_few_label_splits


@pytest.fixture
def full_splits():
    """nnU-Net's default 5 folds of 20 cases (16 train, 4 val each)."""
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    ids = [f"case_{i:03d}" for i in range(20)]
    return [{k: [str(c) for c in v] for k, v in s.items()} for s in generate_crossval_split(ids, 12345, 5)]


# ------------------------------------------------------------------------------------------------------------
# pure function
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, expected", [({"labeled": 3}, 3), ({"fraction": 0.25}, 4),
                                              ({"fraction": 0.01}, 1), ({"fraction": 1.0}, 16),
                                              ({"labeled": 16}, 16)])
def test_counts_disjoint_val_untouched(full_splits, kwargs, expected):
    original = json.loads(json.dumps(full_splits))
    result = make_few_label_splits(full_splits, **kwargs)
    assert full_splits == original  # input not modified
    assert len(result) == 5
    for new, old in zip(result, original):
        assert len(new["train"]) == expected
        assert not set(new["train"]) & set(new["unlabeled"])
        assert sorted(new["train"] + new["unlabeled"]) == sorted(old["train"])
        assert new["train"] == sorted(new["train"]) and new["unlabeled"] == sorted(new["unlabeled"])
        assert new["val"] == old["val"]


def test_deterministic_per_seed(full_splits):
    a = make_few_label_splits(full_splits, labeled=4, seed=0)
    assert a == make_few_label_splits(full_splits, labeled=4, seed=0)
    assert a != make_few_label_splits(full_splits, labeled=4, seed=1)
    assert len({tuple(s["train"]) for s in a}) > 1  # folds draw independently


def test_rederivation_from_reduced_splits(full_splits):
    five = make_few_label_splits(full_splits, labeled=5, seed=3)
    three_from_five = make_few_label_splits(five, labeled=3, seed=3)
    assert three_from_five == make_few_label_splits(full_splits, labeled=3, seed=3)
    assert make_few_label_splits(three_from_five, labeled=5, seed=3) == five
    for small, large in zip(three_from_five, five):
        assert set(small["train"]) <= set(large["train"])  # nested for one seed


@pytest.mark.parametrize("kwargs, message", [
    ({"labeled": 17}, "Fold 0 has only 16 training cases"),
    ({"fraction": 0.0}, r"\(0, 1\]"),
    ({"fraction": 1.5}, r"\(0, 1\]"),
    ({"labeled": 2, "fraction": 0.5}, "exactly one"),
    ({}, "exactly one"),
    ({"labeled": 0}, "positive"),
])
def test_errors(full_splits, kwargs, message):
    with pytest.raises(UserInputError, match=message):
        make_few_label_splits(full_splits, **kwargs)


# ------------------------------------------------------------------------------------------------------------
# command
# ------------------------------------------------------------------------------------------------------------
@pytest.fixture
def planned_copy(tiny_planned_dataset, tmp_path):
    """A private copy of the planned dataset's preprocessed folder (other tests train on the shared one)."""
    preprocessed = tmp_path / "preprocessed"
    shutil.copytree(os.path.join(tiny_planned_dataset["preprocessed"], tiny_planned_dataset["dataset_name"]),
                    preprocessed / tiny_planned_dataset["dataset_name"])
    folder = str(preprocessed / tiny_planned_dataset["dataset_name"])
    for f in glob.glob(os.path.join(folder, "splits_final.json*")):
        os.remove(f)
    paths = {"raw": tiny_planned_dataset["raw"], "preprocessed": str(preprocessed),
             "results": str(tmp_path / "results")}
    return {"env": nnunet_env(paths), "folder": folder, "id": tiny_planned_dataset["dataset_id"]}


def test_command_end_to_end(planned_copy):
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    env, folder, dataset_id = planned_copy["env"], planned_copy["folder"], planned_copy["id"]
    splits_file = os.path.join(folder, "splits_final.json")
    data_folder = os.path.join(folder, "nnUNetPlans_3d_fullres")
    ids = sorted(infer_dataset_class(data_folder).get_identifiers(data_folder))
    default = generate_crossval_split(ids, seed=12345, n_splits=5)

    # no file yet: starts from nnU-Net's default folds, nothing to back up
    run_command(["nnUNetv2_ext_make_splits", "-d", dataset_id, "--labeled", "2"], env)
    assert glob.glob(splits_file + ".*.bak") == []
    with open(splits_file) as f:
        first = json.load(f)
    for new, old in zip(first, default):
        assert set(new) == {"train", "val", "unlabeled"}  # nnU-Net's trainer reads only train and val
        assert len(new["train"]) == 2 and new["val"] == [str(c) for c in old["val"]]
        assert sorted(new["train"] + new["unlabeled"]) == sorted(str(c) for c in old["train"])

    # re-run with another amount: re-derived from train+unlabeled, previous file backed up unchanged
    with open(splits_file) as f:
        old_text = f.read()
    result = run_command(["nnUNetv2_ext_make_splits", "-d", dataset_id, "--fraction", "0.5", "--seed", "1"], env)
    backups = glob.glob(splits_file + ".*.bak")
    assert len(backups) == 1 and "Backup" in result.stdout
    with open(backups[0]) as f:
        assert f.read() == old_text
    with open(splits_file) as f:
        second = json.load(f)
    expected = make_few_label_splits([{k: [str(c) for c in v] for k, v in s.items()} for s in default],
                                     fraction=0.5, seed=1)
    assert second == expected
    assert not os.path.exists(splits_file + ".tmp")


def test_command_errors(planned_copy, tmp_path):
    env, dataset_id = planned_copy["env"], planned_copy["id"]
    result = run_command(["nnUNetv2_ext_make_splits", "-d", dataset_id, "--labeled", "99"], env, check=False)
    assert result.returncode == 2 and "Fold 0 has only" in result.stderr and "Traceback" not in result.stderr
    assert not os.path.exists(os.path.join(planned_copy["folder"], "splits_final.json"))


def test_not_planned(planned_copy, tmp_path, monkeypatch):
    from nnunet_ext.splits import write_few_label_splits

    env = planned_copy["env"]
    empty = tmp_path / "empty_preprocessed"
    empty.mkdir()
    monkeypatch.setenv("nnUNet_raw", env["nnUNet_raw"])
    monkeypatch.setenv("nnUNet_preprocessed", str(empty))
    with pytest.raises(UserInputError, match="nnUNetv2_plan_and_preprocess"):
        write_few_label_splits(planned_copy["id"], labeled=2)
    with pytest.raises(UserInputError, match="exactly one"):
        write_few_label_splits(planned_copy["id"])
