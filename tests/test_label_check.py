"""Labels outside dataset.json: caught in the data-loading pipeline with the commands that find and fix them."""
import os

import pytest
import torch

from conftest import make_trainer
from nnunet_ext.errors import UserInputError
from nnunet_ext.label_check import CheckLabelValuesTransform, allowed_label_values


def test_allowed_values_include_nnunets_outside_marker_and_the_ignore_label():
    assert allowed_label_values([1, 2, 3]) == [-1, 0, 1, 2, 3]
    assert allowed_label_values((1, 3), ignore_label=5) == [-1, 0, 1, 3, 5]


@pytest.mark.parametrize("values", [[0, 1, 2], [-1, 0, 2], [0]])
def test_legal_patches_pass_unchanged(values):
    seg = torch.tensor(values, dtype=torch.int16).reshape(1, -1, 1, 1)
    out = CheckLabelValuesTransform(allowed_label_values([1, 2]))(image=torch.zeros(1, 3, 1, 1), segmentation=seg)
    assert torch.equal(out["segmentation"], seg)


@pytest.mark.parametrize("allowed, bad", [([1, 2], 3), ([1, 3], 2), ([1, 2], -2)])
def test_a_label_outside_dataset_json_is_named_with_the_fix(allowed, bad):
    seg = torch.tensor([0, 1, bad], dtype=torch.int16).reshape(1, 3, 1, 1)
    check = CheckLabelValuesTransform(allowed_label_values(allowed), "Dataset042_Liver")
    with pytest.raises(UserInputError, match=rf"Dataset042_Liver has label value\(s\) \[{bad}\] that its "
                                             r"dataset.json does not define.*nnUNetv2_extract_fingerprint -d 042 "
                                             r"--verify_dataset_integrity.*nnUNetv2_preprocess"):
        check(image=torch.zeros(1, 3, 1, 1), segmentation=seg)


def test_deep_supervision_lists_are_checked_at_full_resolution():
    seg = [torch.tensor([0, 4], dtype=torch.int16).reshape(1, 2, 1, 1), torch.zeros(1, 1, 1, 1)]
    with pytest.raises(UserInputError, match=r"\[4\]"):
        CheckLabelValuesTransform([-1, 0, 1])(segmentation=seg)


def _first_batches(trainer, count):
    trainer.initialize()
    loader, _ = trainer.get_dataloaders()
    for _ in range(count):
        next(loader)


@pytest.mark.parametrize("trainer_name", ["nnUNetTrainerMedContext", "nnUNetTrainerSimCVD"])
def test_trainers_stop_at_labels_that_dataset_json_lacks(tiny_planned_dataset, tiny_semi_dataset, monkeypatch,
                                                         tmp_path, trainer_name):
    """dataset.json without the aorta (label 7) while the label files still hold it."""
    from batchgenerators.utilities.file_and_folder_operations import load_json

    from nnunet_ext.training.medcontext import nnUNetTrainerMedContext
    from nnunet_ext.training.simcvd import nnUNetTrainerSimCVD

    cls = {"nnUNetTrainerMedContext": nnUNetTrainerMedContext, "nnUNetTrainerSimCVD": nnUNetTrainerSimCVD}
    ds = tiny_planned_dataset if trainer_name == "nnUNetTrainerMedContext" else tiny_semi_dataset
    dataset_json = load_json(os.path.join(ds["preprocessed"], ds["dataset_name"], "dataset.json"))
    assert dataset_json["labels"].pop("aorta") == 7
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    trainer = make_trainer(ds, cls[trainer_name], monkeypatch=monkeypatch, dataset_json=dataset_json)
    with pytest.raises(UserInputError, match=r"label value\(s\) \[7\] that its dataset.json does not define"):
        _first_batches(trainer, 20)
    # the complete dataset.json trains
    trainer = make_trainer(ds, cls[trainer_name], monkeypatch=monkeypatch)
    _first_batches(trainer, 3)
