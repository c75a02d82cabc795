"""Few-label splits: keep a count or fraction of each fold's training cases labeled, pool the rest as unlabeled.

``nnUNetv2_ext_make_splits -d 501 --labeled 5`` rewrites ``$nnUNet_preprocessed/DatasetXXX/splits_final.json``:
per fold, ``train`` keeps the chosen labeled cases, a new key ``unlabeled`` lists the other training cases
(their labels are never read by training; nnU-Net ignores unknown keys), ``val`` is untouched.

Re-running re-derives from ``train + unlabeled`` (the original full split), so ``--labeled 5`` followed by
``--labeled 3`` gives the same result as ``--labeled 3`` alone. For one seed the labeled sets are nested:
the cases labeled with 3 are among those labeled with 5. The previous file is backed up first.
"""
import argparse
import json
import os
from copy import deepcopy
from typing import List, Optional

import numpy as np

from nnunet_ext.errors import UserInputError, run_cli

SPLITS_FILE = "splits_final.json"
UNLABELED_KEY = "unlabeled"


def _check_amount(labeled: Optional[int], fraction: Optional[float]) -> None:
    if (labeled is None) == (fraction is None):
        raise UserInputError("Give exactly one of --labeled N (a count of labeled training cases per fold) or "
                             "--fraction F (a fraction in (0, 1]).")
    if labeled is not None and (isinstance(labeled, bool) or int(labeled) != labeled or labeled < 1):
        raise UserInputError(f"--labeled must be a positive whole number (got {labeled}).")
    if fraction is not None and not 0 < fraction <= 1:
        raise UserInputError(f"--fraction must be in (0, 1] (got {fraction}); e.g. --fraction 0.1 keeps 10% of "
                             f"each fold's training cases labeled.")


def _labeled_count(pool_size: int, labeled: Optional[int], fraction: Optional[float], fold: int) -> int:
    if labeled is not None:
        if labeled > pool_size:
            raise UserInputError(f"Fold {fold} has only {pool_size} training cases, fewer than --labeled {labeled}. "
                                 f"Choose --labeled {pool_size} or fewer.")
        return int(labeled)
    return max(1, int(round(fraction * pool_size)))


def make_few_label_splits(splits: list, labeled: Optional[int] = None, fraction: Optional[float] = None,
                          seed: int = 0) -> list:
    """Return few-label versions of nnU-Net cross-validation splits (the input is not modified).

    Args:
        splits: nnU-Net splits (``[{"train": [...], "val": [...]}, ...]``); folds that already have an
            ``unlabeled`` key (from an earlier call) are re-derived from ``train + unlabeled``.
        labeled: number of training cases per fold that stay labeled.
        fraction: fraction of each fold's training cases that stays labeled (``round``, at least 1).
        seed: choice seed; fold ``i`` uses ``(seed, i)``. For one seed, smaller labeled sets are subsets of
            larger ones.

    Returns:
        Splits with ``train`` (sorted labeled cases), ``unlabeled`` (sorted other training cases) and all
        other keys (``val``) unchanged.

    Raises:
        UserInputError: both or neither of ``labeled``/``fraction``, ``fraction`` outside (0, 1], or more
            labeled cases than a fold has.
    """
    _check_amount(labeled, fraction)
    result = []
    for fold, split in enumerate(splits):
        pool = sorted(set(split["train"]) | set(split.get(UNLABELED_KEY, [])))
        n = _labeled_count(len(pool), labeled, fraction, fold)
        order = np.random.default_rng([seed, fold]).permutation(len(pool))  # prefixes give nested subsets
        chosen = {pool[i] for i in order[:n]}
        new = deepcopy(split)
        new["train"] = [c for c in pool if c in chosen]
        new[UNLABELED_KEY] = [c for c in pool if c not in chosen]
        result.append(new)
    return result


def _case_ids(preprocessed_folder: str, plans: dict, raw_folder: Optional[str]) -> List[str]:
    """Training case ids as nnU-Net's trainer sees them (3d_fullres data folder), else from labelsTr."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    if "3d_fullres" in plans["configurations"]:
        data_folder = os.path.join(preprocessed_folder,
                                   PlansManager(plans).get_configuration("3d_fullres").data_identifier)
        if os.path.isdir(data_folder) and any(f.endswith(".pkl") for f in os.listdir(data_folder)):
            return sorted(infer_dataset_class(data_folder).get_identifiers(data_folder))
    labels = os.path.join(raw_folder, "labelsTr") if raw_folder else None
    if labels and os.path.isdir(labels):
        with open(os.path.join(raw_folder, "dataset.json")) as f:
            ending = json.load(f)["file_ending"]
        ids = sorted(f[:-len(ending)] for f in os.listdir(labels) if f.endswith(ending))
        if ids:
            return ids
    raise UserInputError(f"No training cases found: neither preprocessed 3d_fullres data in {preprocessed_folder} "
                         f"nor labels in $nnUNet_raw/.../labelsTr. Run nnUNetv2_plan_and_preprocess first.")


def _default_splits(preprocessed_folder: str, plans: dict) -> list:
    """nnU-Net's own default 5-fold split, as ``nnUNetTrainer.do_split`` creates it."""
    from nnunetv2.paths import nnUNet_raw
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    raw_folder = os.path.join(nnUNet_raw.get(), os.path.basename(preprocessed_folder)) if nnUNet_raw.is_set() \
        else None
    ids = _case_ids(preprocessed_folder, plans, raw_folder)
    if len(ids) < 5:
        raise UserInputError(f"Dataset {os.path.basename(preprocessed_folder)} has {len(ids)} training cases; "
                             f"nnU-Net's 5-fold split needs at least 5. Write your own {SPLITS_FILE}.")
    splits = generate_crossval_split(ids, seed=12345, n_splits=5)
    return [{key: [str(c) for c in cases] for key, cases in split.items()} for split in splits]


def _load_splits(path: str) -> list:
    try:
        with open(path) as f:
            splits = json.load(f)
    except (OSError, ValueError) as e:
        raise UserInputError(f"{path} cannot be read as JSON ({e}). Fix or delete it (nnU-Net then creates its "
                             f"default 5 folds).") from None
    if not isinstance(splits, list) or not splits or not all(
            isinstance(s, dict) and isinstance(s.get("train"), list) and isinstance(s.get("val"), list)
            for s in splits):
        raise UserInputError(f"{path} is not an nnU-Net split file (a list of {{'train': [...], 'val': [...]}}). "
                             f"Fix or delete it.")
    return splits


def write_few_label_splits(dataset, labeled: Optional[int] = None, fraction: Optional[float] = None,
                           seed: int = 0, plans_identifier: str = "nnUNetPlans") -> str:
    """Write few-label splits into the dataset's ``splits_final.json``.

    Starts from the existing file, or from nnU-Net's default 5 folds when there is none. An existing file is
    backed up to ``splits_final.json.<timestamp>.bak``; the new one is written atomically.

    Args:
        dataset: dataset id or name (must be planned).
        labeled: labeled training cases per fold.
        fraction: fraction of training cases per fold that stays labeled.
        seed: choice seed.
        plans_identifier: plans that must exist (the dataset is planned).

    Returns:
        Path of ``splits_final.json``.
    """
    from nnunet_ext.datasets import load_plans, preprocessed_dataset_folder, replace_json

    _check_amount(labeled, fraction)
    folder = preprocessed_dataset_folder(dataset)
    plans = load_plans(folder, plans_identifier, dataset)  # the dataset must be planned
    path = os.path.join(folder, SPLITS_FILE)
    if os.path.isfile(path):
        splits, origin = _load_splits(path), "existing"
    else:
        splits, origin = _default_splits(folder, plans), "nnU-Net's default"
    new_splits = make_few_label_splits(splits, labeled, fraction, seed)
    backup = replace_json(path, new_splits)

    counts = ", ".join(f"fold {i}: {len(s['train'])} labeled / {len(s[UNLABELED_KEY])} unlabeled / "
                       f"{len(s['val'])} val" for i, s in enumerate(new_splits))
    print(f"Wrote few-label splits (from the {origin} {len(splits)} folds) to {path}: {counts}."
          + (f"\nBackup of the previous file: {backup}" if backup else ""))
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_ext_make_splits",
        description="Write few-label splits into $nnUNet_preprocessed/DatasetXXX/splits_final.json: per fold, a "
                    "count or fraction of the training cases stays labeled ('train'), the rest moves to "
                    "'unlabeled' (labels never read), 'val' is untouched. Starts from the existing file (or "
                    "nnU-Net's default 5 folds) and re-derives from train+unlabeled, so it can be re-run with "
                    "other amounts. The previous file is backed up.")
    parser.add_argument("-d", dest="dataset", required=True, help="dataset id or name, e.g. 501")
    parser.add_argument("--labeled", type=int, default=None, help="labeled training cases per fold")
    parser.add_argument("--fraction", type=float, default=None,
                        help="fraction of each fold's training cases that stays labeled, in (0, 1]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the choice. Default: 0")
    parser.add_argument("-p", "-plans_name", dest="plans", default="nnUNetPlans",
                        help="plans identifier (the dataset must be planned). Default: nnUNetPlans")
    args = parser.parse_args(argv)
    run_cli(lambda: write_few_label_splits(args.dataset, args.labeled, args.fraction, args.seed, args.plans),
            parser.prog)


if __name__ == "__main__":
    main()
