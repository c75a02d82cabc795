"""The unlabeled pool of a fold, readable by nnU-Net's own data loader.

Pool = the configuration's preprocessed ``imagesUnlabeled/`` cases (``<data_identifier>_unlabeled/``, written by
``nnUNetv2_ext_preprocess_unlabeled``) + the training cases that ``nnUNetv2_ext_make_splits`` moved to the
fold's ``unlabeled`` key. Labels of the latter are never used: the pool hands out only nnU-Net's nonzero-region
marker of each case (``-1`` outside the image's nonzero region, ``0`` inside; nnU-Net's masked-normalisation
augmentation needs it) and no class locations. Trainers never use the pool's segmentations as targets.
"""
import os
from typing import Dict, List, Optional, Tuple

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import load_json

from nnunet_ext.errors import UserInputError
from nnunet_ext.splits import UNLABELED_KEY
from nnunet_ext.unlabeled import OUTPUT_SUFFIX

__all__ = ["UnlabeledPool", "split_unlabeled_cases", "build_unlabeled_pool", "build_pretraining_pool"]

_FROM_UNLABELED_FOLDER = "imagesUnlabeled/"
_FROM_SPLIT = "imagesTr/"


class UnlabeledPool:
    """Images without labels from several nnU-Net datasets, with nnU-Net's dataset interface.

    ``identifiers`` are prefixed with the source (``imagesUnlabeled/CASE`` or ``imagesTr/CASE``) so that equal
    case names in the two sources stay distinct.

    Args:
        sources: ``(prefix, dataset)`` pairs; every identifier of each nnU-Net dataset joins the pool.
    """

    def __init__(self, sources: List[Tuple[str, object]]):
        self._cases: Dict[str, Tuple[object, str]] = {}
        for prefix, dataset in sources:
            for case in dataset.identifiers:
                self._cases[prefix + case] = (dataset, case)
        self.identifiers = sorted(self._cases)

    def __len__(self) -> int:
        return len(self.identifiers)

    def __getitem__(self, identifier):
        return self.load_case(identifier)

    def load_case(self, identifier: str):
        dataset, case = self._cases[identifier]
        data, seg, _, properties = dataset.load_case(case)
        # keep only the nonzero-region marker (-1 outside): label values are dropped here
        region = np.where(np.asarray(seg[:1]) >= 0, 0, -1).astype(np.int8)
        return data, region, None, dict(properties, class_locations={})


def _folder_source(dataset_class, prefix: str, folder: str) -> List[Tuple[str, object]]:
    """``[(prefix, dataset of every case in folder)]``, or ``[]`` when the folder is missing or empty."""
    if not os.path.isdir(folder):
        return []
    identifiers = dataset_class.get_identifiers(folder)
    return [(prefix, dataset_class(folder, identifiers))] if identifiers else []


def split_unlabeled_cases(splits_file: str, fold) -> List[str]:
    """The fold's ``unlabeled`` cases of a few-label ``splits_final.json`` (none for fold 'all' or plain splits)."""
    if fold == "all" or not os.path.isfile(splits_file):
        return []
    splits = load_json(splits_file)
    if not isinstance(fold, int) or fold >= len(splits):
        return []
    return list(splits[fold].get(UNLABELED_KEY, []))


def build_unlabeled_pool(dataset_class, preprocessed_dataset_folder_base: str, preprocessed_folder: str,
                         data_identifier: str, fold, dataset_name: str, configuration: str,
                         trainer_name: str, excluded: Optional[set] = None) -> UnlabeledPool:
    """The pool of one fold; raises a :class:`UserInputError` naming the commands to run when it is empty.

    Args:
        dataset_class: nnU-Net dataset class of the configuration's preprocessed data.
        preprocessed_dataset_folder_base: ``$nnUNet_preprocessed/DatasetXXX_Name``.
        preprocessed_folder: the configuration's preprocessed data folder.
        data_identifier: the configuration's ``data_identifier``.
        fold: nnU-Net fold (int or 'all').
        dataset_name, configuration, trainer_name: for messages.
        excluded: case identifiers that must not enter the pool (the fold's labeled and validation cases).
    """
    unlabeled_folder = os.path.join(preprocessed_dataset_folder_base, data_identifier + OUTPUT_SUFFIX)
    sources = _folder_source(dataset_class, _FROM_UNLABELED_FOLDER, unlabeled_folder)
    splits_file = os.path.join(preprocessed_dataset_folder_base, "splits_final.json")
    pooled = split_unlabeled_cases(splits_file, fold)
    if pooled:
        overlap = sorted(set(pooled) & set(excluded or ()))
        if overlap:
            raise UserInputError(
                f"{splits_file}, fold {fold}: cases {overlap[:5]} are both in 'unlabeled' and in 'train' or 'val'. "
                f"Rewrite the split with nnUNetv2_ext_make_splits -d {dataset_name} --labeled N (or --fraction F).")
        missing = [c for c in pooled if not os.path.isfile(os.path.join(preprocessed_folder, c + ".pkl"))]
        if missing:
            raise UserInputError(
                f"{splits_file}, fold {fold}: unlabeled cases {missing[:5]} have no preprocessed data in "
                f"{preprocessed_folder}. Run nnUNetv2_preprocess -d {dataset_name} -c {configuration}.")
        sources.append((_FROM_SPLIT, dataset_class(preprocessed_folder, pooled)))
    pool = UnlabeledPool(sources)
    if len(pool) == 0:
        raise UserInputError(
            f"{trainer_name} needs unlabeled images, but fold {fold} of {dataset_name} has none: "
            f"{unlabeled_folder} does not exist or is empty, and {splits_file} has no '{UNLABELED_KEY}' cases for "
            f"this fold. Either put images in imagesUnlabeled/ of the raw dataset and run "
            f"nnUNetv2_ext_preprocess_unlabeled -d {dataset_name} -c {configuration}, or keep only some training "
            f"cases labeled with nnUNetv2_ext_make_splits -d {dataset_name} --fraction 0.2 (or --labeled N).")
    return pool


def build_pretraining_pool(dataset_class, preprocessed_dataset_folder_base: str, preprocessed_folder: str,
                           data_identifier: str) -> UnlabeledPool:
    """Volume Fusion's pool: every preprocessed training image of the target (labels unused), its
    ``imagesUnlabeled/`` and the extra datasets prepared by ``nnUNetv2_ext_prepare_pretraining``."""
    from nnunet_ext.pretraining import pretraining_folders

    sources = [(_FROM_SPLIT, dataset_class(preprocessed_folder))]
    sources += _folder_source(dataset_class, _FROM_UNLABELED_FOLDER,
                              os.path.join(preprocessed_dataset_folder_base, data_identifier + OUTPUT_SUFFIX))
    for name, folder in pretraining_folders(preprocessed_dataset_folder_base, data_identifier).items():
        sources += _folder_source(dataset_class, name + "/", folder)
    return UnlabeledPool(sources)
