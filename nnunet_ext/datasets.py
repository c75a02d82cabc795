"""Locating a user's nnU-Net dataset and plans, and rewriting their JSON files safely.

Shared by the commands that read or extend a dataset's preprocessed folder (presets, unlabeled images,
few-label splits), so that they fail with the same actionable messages.
"""
import json
import os
import shutil
from datetime import datetime

from nnunet_ext.errors import UserInputError


def preprocessed_dataset_folder(dataset) -> str:
    """``$nnUNet_preprocessed/DatasetXXX_Name`` of a dataset id or name; raise if it was never planned."""
    from nnunetv2.paths import nnUNet_preprocessed

    if not nnUNet_preprocessed.is_set():
        raise UserInputError("nnUNet_preprocessed is not set. Set the nnU-Net paths first (nnU-Net's "
                             "documentation/setting_up_paths.md).")
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        name = maybe_convert_to_dataset_name(str(dataset))
    except RuntimeError as e:
        raise UserInputError(f"Dataset {dataset} was not found: {e}") from None
    folder = os.path.join(nnUNet_preprocessed.get(), name)
    if not os.path.isdir(folder):
        raise UserInputError(
            f"Dataset {name} has not been planned and preprocessed yet ({folder} does not exist). Run "
            f"nnUNetv2_plan_and_preprocess -d {dataset} -c 3d_fullres first.")
    return folder


def plans_file(folder: str, plans_identifier: str, dataset) -> str:
    """Path of ``<plans_identifier>.json`` in a preprocessed dataset folder; raise, listing the plans there."""
    path = os.path.join(folder, plans_identifier + ".json")
    if not os.path.isfile(path):
        found = sorted(f[:-5] for f in os.listdir(folder) if f.endswith("Plans.json"))
        raise UserInputError(f"Plans file {path} does not exist (plans found: {found}). Pass the right -p, or "
                             f"plan the dataset with nnUNetv2_plan_and_preprocess -d {dataset} first.")
    return path


def load_plans(folder: str, plans_identifier: str, dataset) -> dict:
    with open(plans_file(folder, plans_identifier, dataset)) as f:
        return json.load(f)


def replace_json(path: str, content, indent: int = 4) -> str | None:
    """Write ``content`` to ``path`` atomically, after backing up an existing file.

    Returns:
        The backup's path (``<path>.<timestamp>.bak``), or None when there was no file to back up.
    """
    backup = None
    if os.path.isfile(path):
        backup = f"{path}.{datetime.now():%Y%m%d_%H%M%S_%f}.bak"
        shutil.copy2(path, backup)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(content, f, indent=indent, sort_keys=False)
    os.replace(tmp, path)
    return backup
