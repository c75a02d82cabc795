"""The Volume Fusion pretraining pool of a target dataset, preprocessed with the target's own plans.

Pool (methods.md section 2, Decision 2) = the target's preprocessed training images (labels never used) + its
``imagesUnlabeled/`` + the images of other nnU-Net raw datasets, all preprocessed with the **target's** plans, so
the pretrained network has exactly the architecture that fine-tuning builds. Images of another dataset
``DatasetYYY_Other`` (its ``imagesTr/`` and ``imagesUnlabeled/``; labels are never needed) go to
``$nnUNet_preprocessed/<target>/<data_identifier>_pretrain_DatasetYYY_Other/``.

This has the effect of nnU-Net's ``nnUNetv2_move_plans_between_datasets`` + ``nnUNetv2_preprocess``, without
requiring labels, a ``dataset.json`` copy or a new dataset id.
"""
import argparse
import json
import os
from typing import Dict, Sequence

from nnunet_ext.datasets import load_plans
from nnunet_ext.errors import UserInputError, positive_int, run_cli
from nnunet_ext.unlabeled import (UNLABELED_SUBFOLDER, _check_headers, _configuration_manager, _dataset_folders,
                                  _labeled_dataset_class, list_unlabeled_cases, preprocess_image_cases,
                                  preprocess_unlabeled)

PRETRAIN_SUFFIX = "_pretrain_"
TRAINING_SUBFOLDER = "imagesTr"

__all__ = ["PRETRAIN_SUFFIX", "pretraining_folders", "prepare_pretraining", "main"]


def pretraining_folders(preprocessed_dataset_folder: str, data_identifier: str) -> Dict[str, str]:
    """``{source dataset name: folder}`` of the extra-dataset folders prepared for a ``data_identifier``."""
    prefix = data_identifier + PRETRAIN_SUFFIX
    if not os.path.isdir(preprocessed_dataset_folder):
        return {}
    return {name[len(prefix):]: os.path.join(preprocessed_dataset_folder, name)
            for name in sorted(os.listdir(preprocessed_dataset_folder))
            if name.startswith(prefix) and os.path.isdir(os.path.join(preprocessed_dataset_folder, name))}


def _extra_dataset(dataset: str, target_json: dict, target_name: str):
    """Raw folder, dataset.json and image cases of an extra dataset, checked against the target's channels."""
    from nnunetv2.paths import nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        name = maybe_convert_to_dataset_name(dataset)
    except RuntimeError as e:
        raise UserInputError(f"Extra dataset '{dataset}' is not in $nnUNet_raw ({e}).") from None
    raw_folder = os.path.join(nnUNet_raw.get(), name)
    json_file = os.path.join(raw_folder, "dataset.json")
    if not os.path.isfile(json_file):
        raise UserInputError(f"{json_file} does not exist: extra dataset {name} needs a dataset.json (its "
                             f"channel_names and file_ending) in $nnUNet_raw.")
    with open(json_file) as f:
        dataset_json = json.load(f)
    theirs = {int(k): v for k, v in dataset_json["channel_names"].items()}
    ours = {int(k): v for k, v in target_json["channel_names"].items()}
    if sorted(theirs) != sorted(ours) or any(theirs[c].lower() != ours[c].lower() for c in ours):
        raise UserInputError(
            f"Extra dataset {name} has channels {theirs}, but the target {target_name} has {ours}. Pretraining "
            f"images must have the target's channels in the target's order (the target's normalisation is applied "
            f"to them); leave {name} out or convert it.")
    cases = {}
    for sub in (TRAINING_SUBFOLDER, UNLABELED_SUBFOLDER):
        if os.path.isdir(os.path.join(raw_folder, sub)):
            cases.update({f"{sub}_{case}": files
                          for case, files in list_unlabeled_cases(raw_folder, dataset_json, sub).items()})
    if not cases:
        raise UserInputError(f"Extra dataset {name} has no images in {TRAINING_SUBFOLDER}/ or "
                             f"{UNLABELED_SUBFOLDER}/ of {raw_folder}.")
    return name, cases


def prepare_pretraining(target, configuration: str = "3d_fullres", plans_identifier: str = "nnUNetPlans",
                        extra_datasets: Sequence[str] = (), num_processes: int = 2) -> Dict[str, int]:
    """Preprocess everything the target's pretraining pool needs; returns ``{source: number of cases}``.

    Args:
        target: target dataset id or name (planned and preprocessed for ``configuration``).
        configuration: configuration whose plans are applied (pretrain and fine-tune with the same one).
        plans_identifier: plans name.
        extra_datasets: ids or names of other raw datasets whose images join the pool.
        num_processes: worker processes.

    Raises:
        UserInputError: the target is not planned/preprocessed, an extra dataset is missing or has other
            channels, or an image is unreadable or has NaN/Inf.
    """
    target = str(target)
    target_name, raw_folder, preprocessed_folder = _dataset_folders(target)
    with open(os.path.join(raw_folder, "dataset.json")) as f:
        target_json = json.load(f)
    plans = load_plans(preprocessed_folder, plans_identifier, target)
    manager = _configuration_manager(plans, configuration, target, plans_identifier)
    labeled_folder = os.path.join(preprocessed_folder, manager.data_identifier)
    dataset_class = _labeled_dataset_class(labeled_folder, target, configuration, plans_identifier)
    counts = {f"{target_name} imagesTr": len(dataset_class.get_identifiers(labeled_folder))}
    if os.path.isdir(os.path.join(raw_folder, UNLABELED_SUBFOLDER)):
        preprocess_unlabeled(target, [configuration], plans_identifier, num_processes)
        counts[f"{target_name} {UNLABELED_SUBFOLDER}"] = len(list_unlabeled_cases(raw_folder, target_json))
    extras = [_extra_dataset(str(d), target_json, target_name) for d in extra_datasets]
    for name, cases in extras:
        if name == target_name:
            raise UserInputError(f"{name} is the target itself; its images are in the pool already.")
        for case, files in cases.items():
            _check_headers(case, files, plans)
        out_folder = os.path.join(preprocessed_folder, manager.data_identifier + PRETRAIN_SUFFIX + name)
        # the target's dataset.json: its normalisation schemes apply to every pool image
        preprocess_image_cases(cases, plans, configuration, target_json, dataset_class, out_folder, num_processes,
                               f"{name} with {target_name}'s plans")
        counts[name] = len(cases)
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_ext_prepare_pretraining",
        description="Prepare the Volume Fusion pretraining pool of a target dataset: its training images, its "
                    "imagesUnlabeled/ and the images of other raw datasets, all preprocessed with the target's "
                    "plans (labels are never needed). Incremental: finished cases are skipped.")
    parser.add_argument("-d", dest="dataset", required=True, help="target dataset id or name, e.g. 501")
    parser.add_argument("-c", dest="configuration", default="3d_fullres",
                        help="configuration to pretrain and fine-tune. Default: 3d_fullres")
    parser.add_argument("-p", "-plans_name", dest="plans", default="nnUNetPlans",
                        help="plans identifier. Default: nnUNetPlans")
    parser.add_argument("--extra-datasets", nargs="+", default=[],
                        help="ids or names of other raw datasets whose images (imagesTr/, imagesUnlabeled/) join "
                             "the pool; their labels are not used")
    parser.add_argument("-np", dest="num_processes", type=positive_int, default=2,
                        help="number of worker processes. Default: 2")
    args = parser.parse_args(argv)

    def run():
        counts = prepare_pretraining(args.dataset, args.configuration, args.plans, args.extra_datasets,
                                     args.num_processes)
        total = sum(counts.values())
        print("Pretraining pool: " + ", ".join(f"{source}: {n}" for source, n in counts.items())
              + f" ({total} images)")
        print(f"Next: nnUNetv2_train {args.dataset} {args.configuration} all -p {args.plans} "
              f"-tr nnUNetTrainerVolumeFusion, then fine-tune with nnUNetv2_train {args.dataset} "
              f"{args.configuration} FOLD -p {args.plans} -tr TRAINER -pretrained_weights "
              f"$nnUNet_results/<dataset>/nnUNetTrainerVolumeFusion__{args.plans}__{args.configuration}/"
              f"fold_all/checkpoint_final.pth")

    run_cli(run, parser.prog)
