"""Unlabeled images: preprocess ``imagesUnlabeled/`` with a dataset's own nnU-Net plans.

Raw layout: ``$nnUNet_raw/DatasetXXX_Name/imagesUnlabeled/`` beside ``imagesTr/``, same naming
(``CASE_0000.nii.gz``, one file per channel of ``dataset.json``'s ``channel_names``), no labels. nnU-Net
ignores this folder, so existing datasets keep working.

``nnUNetv2_ext_preprocess_unlabeled -d 501`` writes the preprocessed cases to
``$nnUNet_preprocessed/DatasetXXX/<data_identifier>_unlabeled/``, a sibling of the configuration's own folder
(configurations sharing a ``data_identifier``, like presets, share it). Cases are preprocessed by the
configuration's preprocessor class exactly as labeled cases (transpose, crop, normalise, resample) and saved
in the on-disk format of the labeled folder, so nnU-Net's dataset class reads them.

nnU-Net's dataset classes always load a segmentation, so every unlabeled case gets the one nnU-Net's
preprocessor makes for an image without a label (int8, shape ``(1, *data.shape[1:])``): ``-1`` outside the
image's nonzero region, ``0`` inside. It carries no label; it only marks the region that nnU-Net's masked
normalisation and its ``MaskImageTransform`` augmentation keep (an all ``-1`` map would blank every image of a
dataset normalised with ``use_mask_for_norm``). Trainers never use it as a target. Properties have
``class_locations = {}``.

The run is incremental: a case is written under ``.partial/`` and moved into place with its ``.pkl`` last,
so an interrupted run leaves no case that counts as done; finished cases are skipped on the next run.
"""
import argparse
import os
import re
import shutil
from typing import Dict, List, Sequence

import numpy as np

from nnunet_ext.datasets import load_plans, preprocessed_dataset_folder
from nnunet_ext.errors import UserInputError, positive_int, run_cli

UNLABELED_SUBFOLDER = "imagesUnlabeled"
OUTPUT_SUFFIX = "_unlabeled"
_PARTIAL = ".partial"
_PSEUDO_2D_RATIO = 100.0  # nnU-Net marks 2-D images with a first-axis spacing of 999 x the in-plane spacing
_ANISOTROPY_RATIO = 3.0  # nnU-Net's own threshold for anisotropic spacing
_SITK_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".gipl", ".gipl.gz")


# ---------------------------------------------------------------------------------------------------------
# locating things
# ---------------------------------------------------------------------------------------------------------
def _dataset_folders(dataset: str):
    """Return ``(dataset_name, raw_dataset_folder, preprocessed_dataset_folder)``; raise if not planned."""
    from nnunetv2.paths import nnUNet_raw

    if not nnUNet_raw.is_set():
        raise UserInputError("nnUNet_raw is not set. Set the nnU-Net paths first (nnU-Net's "
                             "documentation/setting_up_paths.md).")
    preprocessed_folder = preprocessed_dataset_folder(dataset)
    name = os.path.basename(preprocessed_folder)
    raw_folder = os.path.join(nnUNet_raw.get(), name)
    if not os.path.isfile(os.path.join(raw_folder, "dataset.json")):
        raise UserInputError(f"{os.path.join(raw_folder, 'dataset.json')} does not exist. The raw dataset "
                             f"{name} must stay in $nnUNet_raw to preprocess its unlabeled images.")
    return name, raw_folder, preprocessed_folder


def _configuration_manager(plans: dict, configuration: str, dataset: str, plans_identifier: str):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    if configuration not in plans["configurations"]:
        raise UserInputError(
            f"Configuration '{configuration}' is not in the plans {plans_identifier}.json of dataset {dataset} "
            f"(it has {sorted(plans['configurations'])}). Plan and preprocess it with "
            f"nnUNetv2_plan_and_preprocess -d {dataset} -c {configuration}, or pass an existing -c.")
    return PlansManager(plans).get_configuration(configuration)


def unlabeled_folder(preprocessed_dataset_folder: str, configuration_manager) -> str:
    """Folder of a configuration's preprocessed unlabeled cases.

    Args:
        preprocessed_dataset_folder: ``$nnUNet_preprocessed/DatasetXXX_Name``.
        configuration_manager: nnU-Net ``ConfigurationManager`` of the configuration.

    Returns:
        ``<preprocessed_dataset_folder>/<data_identifier>_unlabeled``.
    """
    return os.path.join(preprocessed_dataset_folder, configuration_manager.data_identifier + OUTPUT_SUFFIX)


# ---------------------------------------------------------------------------------------------------------
# listing and checking raw cases
# ---------------------------------------------------------------------------------------------------------
def list_unlabeled_cases(raw_dataset_folder: str, dataset_json: dict,
                         subfolder: str = UNLABELED_SUBFOLDER) -> Dict[str, List[str]]:
    """List the cases of ``imagesUnlabeled/`` (or another image folder) with one file per channel.

    Args:
        raw_dataset_folder: ``$nnUNet_raw/DatasetXXX_Name``.
        dataset_json: the dataset's ``dataset.json`` (``channel_names``, ``file_ending``).
        subfolder: the image folder inside the raw dataset folder.

    Returns:
        ``{case_id: [channel 0 file, channel 1 file, ...]}`` (absolute paths), sorted by case id.

    Raises:
        UserInputError: the folder is missing or empty, a file name does not follow ``CASE_XXXX``, or a case
            lacks a channel file or has one too many.
    """
    folder = os.path.join(raw_dataset_folder, subfolder)
    ending = dataset_json["file_ending"]
    if not os.path.isdir(folder):
        raise UserInputError(
            f"{folder} does not exist. Put the unlabeled images there (beside imagesTr/, named like "
            f"CASE_0000{ending}, one file per channel, no labels).")
    files = sorted(f for f in os.listdir(folder) if f.endswith(ending) and not f.startswith("."))
    if not files:
        others = [f for f in os.listdir(folder) if not f.startswith(".")]
        raise UserInputError(
            f"{folder} contains no '{ending}' images (the file_ending of dataset.json)"
            + (f"; it has {len(others)} other files, e.g. {others[0]}" if others else "")
            + f". Add unlabeled images named like CASE_0000{ending}.")
    pattern = re.compile(r"^(.+)_(\d{4})" + re.escape(ending) + "$")
    channels: Dict[str, Dict[int, str]] = {}
    for f in files:
        match = pattern.match(f)
        if match is None:
            raise UserInputError(f"{os.path.join(folder, f)} does not follow nnU-Net's naming CASE_XXXX{ending} "
                                 f"(XXXX = 4-digit channel index). Rename it, e.g. {f[:-len(ending)]}_0000{ending}.")
        channels.setdefault(match.group(1), {})[int(match.group(2))] = os.path.join(folder, f)
    expected = sorted(int(c) for c in dataset_json["channel_names"])
    for case, found in channels.items():
        missing = [c for c in expected if c not in found]
        extra = [c for c in found if c not in expected]
        if missing or extra:
            raise UserInputError(
                f"Unlabeled case '{case}' in {folder} has channel files {sorted(found)}, but dataset.json's "
                f"channel_names require exactly {expected} ({len(expected)} channels)."
                + (f" Missing: {[f'{case}_{c:04d}{ending}' for c in missing]}." if missing else "")
                + (f" Unexpected: {[os.path.basename(found[c]) for c in extra]}." if extra else "")
                + " Add or remove files so that every case has one file per channel.")
    return {case: [found[c] for c in expected] for case, found in sorted(channels.items())}


def _is_pseudo_2d(spacing: Sequence[float]) -> bool:
    """nnU-Net reads 2-D images as 3-D with a huge first-axis spacing (999 x the in-plane spacing)."""
    return float(spacing[0]) >= _PSEUDO_2D_RATIO * float(max(spacing[1:]))


def _check_headers(case: str, files: List[str], plans: dict) -> None:
    """Cheap checks on the image headers: readable, expected dimension, equal channel shapes."""
    import SimpleITK as sitk

    if not all(f.endswith(_SITK_ENDINGS) for f in files):
        return  # other readers: the worker checks after reading with the plans' reader
    expected_dim = 2 if _is_pseudo_2d(plans["original_median_spacing_after_transp"]) else 3
    sizes = []
    for f in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(f)
        try:
            reader.ReadImageInformation()
        except RuntimeError as e:
            raise UserInputError(f"{f} cannot be read ({str(e).strip().splitlines()[-1]}). The file is corrupt or "
                                 f"not an image; replace or remove it.") from None
        dim = reader.GetDimension()
        if dim != expected_dim:
            raise UserInputError(
                f"{f} is a {dim}-D image, but the plans ({plans['plans_name']}) are for {expected_dim}-D images "
                f"(original median spacing {plans['original_median_spacing_after_transp']}). Convert it to "
                f"{expected_dim}-D like the images in imagesTr/, or remove it.")
        sizes.append(tuple(reader.GetSize()))
    if len(set(sizes)) > 1:
        raise UserInputError(
            f"The channel files of unlabeled case '{case}' have different shapes "
            f"({', '.join(f'{os.path.basename(f)}: {s}' for f, s in zip(files, sizes))}). All channels of a case "
            f"must be on the same voxel grid; resample them to one grid.")


def _check_nifti_finite(files: List[str]) -> None:
    """Raise if a NIfTI file stores NaN/Inf voxels.

    Checked on the stored values with nibabel because SimpleITK 2.5 (ITK 5.4) reads a float NIfTI that contains
    NaN as silently wrong finite values, so the array from nnU-Net's reader cannot reveal them.
    """
    import nibabel

    for f in files:
        if f.endswith((".nii", ".nii.gz")):
            values = np.asanyarray(nibabel.load(f).dataobj)
            if np.issubdtype(values.dtype, np.floating) and not np.all(np.isfinite(values)):
                bad = int(values.size - np.count_nonzero(np.isfinite(values)))
                raise UserInputError(f"{f} contains {bad} NaN or Inf voxels. nnU-Net's normalisation cannot "
                                     f"handle them; replace them (e.g. with the image minimum) or remove the case.")


def _check_array(case: str, files: List[str], data: np.ndarray, spacing: Sequence[float], plans: dict) -> None:
    """Checks on the loaded image: finite values, dimension and axis order as the plans expect."""
    for c in range(data.shape[0]):
        if not np.all(np.isfinite(data[c])):
            bad = int(np.size(data[c]) - np.count_nonzero(np.isfinite(data[c])))
            raise UserInputError(f"{files[c]} contains {bad} NaN or Inf voxels. nnU-Net's normalisation cannot "
                                 f"handle them; replace them (e.g. with the image minimum) or remove the case.")
    transpose = plans["transpose_forward"]
    case_spacing = [float(spacing[i]) for i in transpose]
    plans_spacing = [float(s) for s in plans["original_median_spacing_after_transp"]]
    if _is_pseudo_2d(case_spacing) != _is_pseudo_2d(plans_spacing):
        dims = ("2-D", "3-D") if _is_pseudo_2d(case_spacing) else ("3-D", "2-D")
        raise UserInputError(f"Unlabeled case '{case}' ({files[0]}) is {dims[0]}, but the plans are for {dims[1]} "
                             f"images. Convert it like the images in imagesTr/, or remove it.")
    # anisotropic data: the coarse axis must be where the plans have it, else the axes are permuted
    if max(plans_spacing) / min(plans_spacing) >= _ANISOTROPY_RATIO:
        if int(np.argmax(case_spacing)) != int(np.argmax(plans_spacing)):
            raise UserInputError(
                f"Unlabeled case '{case}' ({files[0]}) has spacing {case_spacing} after nnU-Net's transpose "
                f"{transpose}, but the training images have {plans_spacing}: its coarsest axis is "
                f"{int(np.argmax(case_spacing))} instead of {int(np.argmax(plans_spacing))}, so its axes are "
                f"ordered differently. Reorient it like the images in imagesTr/ (same axis order), or remove it.")


# ---------------------------------------------------------------------------------------------------------
# processing one case
# ---------------------------------------------------------------------------------------------------------
def _expected_files(dataset_class, case: str) -> List[str]:
    """Files that make a finished case, the ``.pkl`` (written last) at the end."""
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2, nnUNetDatasetNumpy

    if issubclass(dataset_class, nnUNetDatasetBlosc2):
        return [case + ".b2nd", case + "_seg.b2nd", case + ".pkl"]
    if issubclass(dataset_class, nnUNetDatasetNumpy):
        return [case + ".npz", case + ".pkl"]
    return [case + ".pkl"]


def _is_complete(folder: str, dataset_class, case: str) -> bool:
    return all(os.path.isfile(os.path.join(folder, f)) for f in _expected_files(dataset_class, case))


def _save(dataset_class, data: np.ndarray, seg: np.ndarray, properties: dict, out_truncated: str,
          patch_size: Sequence[int]) -> None:
    """Save like nnU-Net's preprocessor does for the given dataset class."""
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2

    if issubclass(dataset_class, nnUNetDatasetBlosc2):
        blocks, chunks = comp_blosc2_params(data.shape, tuple(patch_size), data.itemsize)
        blocks_seg, chunks_seg = comp_blosc2_params(seg.shape, tuple(patch_size), seg.itemsize)
        dataset_class.save_case(data, seg, properties, out_truncated, chunks=chunks, blocks=blocks,
                                chunks_seg=chunks_seg, blocks_seg=blocks_seg)
    else:
        dataset_class.save_case(data, seg, properties, out_truncated)


def _process_case(job: dict) -> str:
    """Preprocess one unlabeled case and move it into place (worker; all arguments picklable)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    case, files, out_folder = job["case"], job["files"], job["out_folder"]
    plans_manager = PlansManager(job["plans"])
    configuration_manager = plans_manager.get_configuration(job["configuration"])
    try:
        _check_nifti_finite(files)
        data, properties = plans_manager.image_reader_writer_class().read_images(files)
    except UserInputError:
        raise
    except Exception as e:  # readers raise anything from RuntimeError to nibabel errors
        raise UserInputError(f"Unlabeled case '{case}' ({', '.join(files)}) cannot be read: {e!r}. Replace the "
                             f"corrupt file or remove the case.") from None
    _check_array(case, files, data, properties["spacing"], job["plans"])
    preprocessor = configuration_manager.preprocessor_class(verbose=False)
    # run_case() without a segmentation, split so that the image is read (and checked) once
    data, seg, properties = preprocessor.run_case_npy(data, None, properties, plans_manager, configuration_manager,
                                                      job["dataset_json"])
    data = data.astype(np.float32, copy=False)
    seg = np.where(seg >= 0, 0, -1).astype(np.int8)  # the nonzero-region marker only (see module docstring)
    properties["class_locations"] = {}

    partial = os.path.join(out_folder, _PARTIAL, case)
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    _save(job["dataset_class"], data, seg, properties, os.path.join(partial, case), configuration_manager.patch_size)
    for name in _expected_files(job["dataset_class"], case):  # .pkl last: it marks the case as done
        os.replace(os.path.join(partial, name), os.path.join(out_folder, name))
    shutil.rmtree(partial, ignore_errors=True)
    return case


# ---------------------------------------------------------------------------------------------------------
# the whole dataset
# ---------------------------------------------------------------------------------------------------------
def _labeled_dataset_class(labeled_folder: str, dataset: str, configuration: str, plans_identifier: str):
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    if not os.path.isdir(labeled_folder) or not any(f.endswith(".pkl") for f in os.listdir(labeled_folder)):
        raise UserInputError(
            f"Configuration '{configuration}' is planned but has no preprocessed data in {labeled_folder}. Run "
            f"nnUNetv2_preprocess -d {dataset} -c {configuration} -plans_name {plans_identifier} first (the "
            f"unlabeled cases are saved in the same format).")
    try:
        return infer_dataset_class(labeled_folder)
    except (AssertionError, KeyError) as e:
        raise UserInputError(f"Cannot tell nnU-Net's on-disk format of {labeled_folder} ({e}). Re-run "
                             f"nnUNetv2_preprocess -d {dataset} -c {configuration}.") from None


def _run_jobs(jobs: List[dict], num_processes: int, description: str) -> None:
    from tqdm import tqdm

    if num_processes <= 1 or len(jobs) <= 1:
        for job in tqdm(jobs, desc=description):
            _process_case(job)
        return
    import multiprocessing

    # spawn as nnU-Net does: forking a process that holds torch threads can hang
    with multiprocessing.get_context("spawn").Pool(min(num_processes, len(jobs))) as pool:
        for _ in tqdm(pool.imap_unordered(_process_case, jobs), total=len(jobs), desc=description):
            pass


def preprocess_unlabeled(dataset, configurations: Sequence[str] = ("3d_fullres",),
                         plans_identifier: str = "nnUNetPlans", num_processes: int = 2) -> Dict[str, str]:
    """Preprocess a dataset's ``imagesUnlabeled/`` with its own plans.

    Args:
        dataset: dataset id or name (must be planned and preprocessed for each configuration).
        configurations: configuration names; those sharing a ``data_identifier`` share the output.
        plans_identifier: plans name (file ``<plans_identifier>.json``).
        num_processes: worker processes.

    Returns:
        ``{configuration: output folder}``.

    Raises:
        UserInputError: the dataset or a configuration is not planned/preprocessed, or an unlabeled image is
            missing, corrupt, of the wrong shape or dimension, or contains NaN/Inf.
    """
    import json

    dataset = str(dataset)
    _, raw_folder, preprocessed_folder = _dataset_folders(dataset)
    with open(os.path.join(raw_folder, "dataset.json")) as f:
        dataset_json = json.load(f)
    plans = load_plans(preprocessed_folder, plans_identifier, dataset)
    managers = {c: _configuration_manager(plans, c, dataset, plans_identifier) for c in configurations}
    own_folders = {os.path.join(preprocessed_folder, m.data_identifier) for m in managers.values()}

    cases = list_unlabeled_cases(raw_folder, dataset_json)
    for case, files in cases.items():
        _check_headers(case, files, plans)

    outputs, done_folders = {}, set()
    for configuration, manager in managers.items():
        out_folder = unlabeled_folder(preprocessed_folder, manager)
        outputs[configuration] = out_folder
        if out_folder in done_folders:
            continue
        if out_folder in own_folders:
            raise UserInputError(f"{out_folder} is the preprocessed folder of a configuration; refusing to write "
                                 f"unlabeled cases into nnU-Net's own data. Rename that configuration's "
                                 f"data_identifier.")
        labeled = os.path.join(preprocessed_folder, manager.data_identifier)
        dataset_class = _labeled_dataset_class(labeled, dataset, configuration, plans_identifier)
        preprocess_image_cases(cases, plans, configuration, dataset_json, dataset_class, out_folder,
                               num_processes, f"Unlabeled ({configuration})")
        done_folders.add(out_folder)
    return outputs


def preprocess_image_cases(cases: Dict[str, List[str]], plans: dict, configuration: str, dataset_json: dict,
                           dataset_class, out_folder: str, num_processes: int, description: str) -> None:
    """Preprocess image-only cases with a configuration's plans into ``out_folder`` (incremental, atomic).

    Args:
        cases: ``{case_id: [channel files]}`` (see :func:`list_unlabeled_cases`).
        plans: the plans whose configuration (spacing, normalisation) is applied.
        configuration: configuration name in ``plans``.
        dataset_json: ``dataset.json`` of the dataset that owns ``plans`` (its normalisation schemes).
        dataset_class: nnU-Net dataset class that writes the on-disk format.
        out_folder: output folder; finished cases in it are skipped, a half-written one is redone.
        num_processes: worker processes.
        description: progress bar label.
    """
    os.makedirs(out_folder, exist_ok=True)
    shutil.rmtree(os.path.join(out_folder, _PARTIAL), ignore_errors=True)  # leftovers of a killed run
    todo = [c for c in cases if not _is_complete(out_folder, dataset_class, c)]
    print(f"{configuration}: {len(cases) - len(todo)} of {len(cases)} cases already done in {out_folder}; "
          f"preprocessing {len(todo)}.")
    jobs = [{"case": c, "files": cases[c], "out_folder": out_folder, "plans": plans,
             "configuration": configuration, "dataset_json": dataset_json, "dataset_class": dataset_class}
            for c in todo]
    _run_jobs(jobs, num_processes, description)


def main_preprocess(argv=None):
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_ext_preprocess_unlabeled",
        description="Preprocess the unlabeled images of a dataset ($nnUNet_raw/DatasetXXX/imagesUnlabeled/, named "
                    "like imagesTr/, no labels) with the dataset's own nnU-Net plans, into "
                    "$nnUNet_preprocessed/DatasetXXX/<data_identifier>_unlabeled/. Finished cases are skipped; "
                    "nnU-Net's own folders are never changed.")
    parser.add_argument("-d", dest="dataset", required=True, help="dataset id or name, e.g. 501")
    parser.add_argument("-c", dest="configurations", nargs="+", default=["3d_fullres"],
                        help="configuration(s) whose plans to use. Default: 3d_fullres")
    parser.add_argument("-p", "-plans_name", dest="plans", default="nnUNetPlans",
                        help="plans identifier. Default: nnUNetPlans")
    parser.add_argument("-np", dest="num_processes", type=positive_int, default=2,
                        help="number of worker processes. Default: 2")
    args = parser.parse_args(argv)

    def run():
        outputs = preprocess_unlabeled(args.dataset, args.configurations, args.plans, args.num_processes)
        for configuration, folder in outputs.items():
            print(f"{configuration}: unlabeled cases in {folder}")
        print(f"Next: choose the labeled training cases with nnUNetv2_ext_make_splits -d {args.dataset} "
              f"--fraction F (or --labeled N), then train a semi-supervised trainer with nnUNetv2_train "
              f"{args.dataset} {args.configurations[0]} FOLD -p {args.plans} -tr TRAINER.")

    run_cli(run, parser.prog)


if __name__ == "__main__":
    main_preprocess()
