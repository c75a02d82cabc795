"""Plans presets: small configurations added to a dataset's existing nnU-Net plans.

A preset (``plans/<name>.json``) describes a configuration that inherits from an existing one (e.g.
``3d_fullres``) with a smaller patch, fewer features and fewer stages. It reuses the parent's preprocessed
data (same ``data_identifier``), so nothing has to be preprocessed again. The network topology (strides and
kernel sizes) is derived with nnU-Net's own planner function for the parent's spacing, so the result is what
nnU-Net would plan for that patch size.

``nnUNetv2_ext_add_preset -d 501 -preset 3d_small`` adds it; existing configurations are never changed.
"""
import argparse
import json
import os
from copy import deepcopy
from importlib import resources

import numpy as np

from nnunet_ext.datasets import load_plans, plans_file, preprocessed_dataset_folder, replace_json
from nnunet_ext.errors import UserInputError, run_cli

PRESET_MARKER = "nnunet_ext_preset"
_REQUIRED_KEYS = ("name", "inherits_from", "max_patch_size", "batch_size", "base_num_features",
                  "max_num_features", "max_stages", "min_feature_map_edge")


def available_presets() -> dict:
    """Return ``{name: preset dict}`` for every preset shipped in ``plans/``."""
    presets = {}
    for entry in resources.files("nnunet_ext.plans_presets").iterdir():
        if entry.name.endswith(".json"):
            preset = json.loads(entry.read_text())
            presets[preset["name"]] = preset
    return presets


def load_preset(name_or_path: str) -> dict:
    """Load a shipped preset by name, or a preset JSON file by path."""
    if name_or_path.endswith(".json") and os.path.isfile(name_or_path):
        with open(name_or_path) as f:
            preset = json.load(f)
    else:
        presets = available_presets()
        if name_or_path not in presets:
            raise UserInputError(
                f"Unknown preset '{name_or_path}'. Available presets: {', '.join(sorted(presets))} "
                f"(or give the path of a preset .json file). List them with: nnUNetv2_ext_add_preset --list")
        preset = presets[name_or_path]
    missing = [k for k in _REQUIRED_KEYS if k not in preset]
    if missing:
        raise UserInputError(f"Preset '{name_or_path}' lacks the keys {missing}; see plans/3d_small.json for "
                             f"the format.")
    return preset


def _topology(spacing, patch_size, min_edge: int, max_stages: int):
    """Strides and kernel sizes as nnU-Net's planner chooses them, cut to ``max_stages`` stages."""
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    _, strides, kernels, _, _ = get_pool_and_conv_props(list(spacing), list(patch_size), min_edge, 999999)
    strides = [list(s) for s in strides[:max_stages]]
    kernels = [list(k) for k in kernels[:max_stages]]
    divisible_by = np.prod(np.array(strides), axis=0)
    # round the patch down to the divisibility the strides require (never below one multiple)
    patch = [int(max(d, (p // d) * d)) for p, d in zip(patch_size, divisible_by)]
    return strides, kernels, patch


def build_preset_configuration(plans: dict, preset: dict) -> dict:
    """Return the configuration entry that ``preset`` adds to ``plans``.

    Args:
        plans: the dataset's plans (as loaded from ``nnUNetPlans.json``).
        preset: a preset dict (see :func:`load_preset`).

    Returns:
        A configuration with ``inherits_from`` plus the keys it overrides (patch size, batch size and the
        whole ``architecture`` block, because nnU-Net's inheritance replaces top-level keys).
    """
    parent_name = preset["inherits_from"]
    configurations = plans["configurations"]
    if parent_name not in configurations:
        raise UserInputError(
            f"Preset '{preset['name']}' inherits from configuration '{parent_name}', which these plans "
            f"({plans.get('plans_name')}) do not have (they have {sorted(configurations)}). Plan it first, "
            f"e.g. nnUNetv2_plan_and_preprocess -d DATASET -c {parent_name}, or use a preset for another "
            f"configuration.")
    parent = _resolved_configuration(plans, parent_name)
    arch = deepcopy(parent["architecture"])
    kwargs = arch["arch_kwargs"]
    if "n_stages" not in kwargs or "features_per_stage" not in kwargs:
        raise UserInputError(
            f"Configuration '{parent_name}' uses {arch['network_class_name']}, which has no U-Net stage "
            f"parameters (n_stages, features_per_stage); presets only shrink U-Net style architectures.")
    dim = len(parent["patch_size"])
    if len(preset["max_patch_size"]) != dim:
        raise UserInputError(
            f"Preset '{preset['name']}' is {len(preset['max_patch_size'])}-D but configuration "
            f"'{parent_name}' is {dim}-D.")

    wanted_patch = [min(a, b) for a, b in zip(preset["max_patch_size"], parent["patch_size"])]
    strides, kernels, patch = _topology(parent["spacing"], wanted_patch, preset["min_feature_map_edge"],
                                        preset["max_stages"])
    n_stages = len(strides)
    if n_stages < 2:
        raise UserInputError(
            f"Preset '{preset['name']}' does not fit configuration '{parent_name}': its patch "
            f"{wanted_patch} allows no downsampling with feature maps of at least "
            f"{preset['min_feature_map_edge']} voxels. Use a configuration with larger images.")
    old_stages = kwargs["n_stages"]
    for key, value in list(kwargs.items()):
        # per-stage lists (encoder: n_stages entries, decoder: n_stages - 1) are cut to the new depth
        if isinstance(value, (list, tuple)) and key not in ("kernel_sizes", "strides", "features_per_stage"):
            if len(value) == old_stages:
                kwargs[key] = list(value[:n_stages])
            elif len(value) == old_stages - 1:
                kwargs[key] = list(value[:n_stages - 1])
    kwargs.update({
        "n_stages": n_stages,
        "features_per_stage": [min(preset["max_num_features"], preset["base_num_features"] * 2 ** i)
                               for i in range(n_stages)],
        "kernel_sizes": kernels,
        "strides": strides,
    })
    return {
        "inherits_from": parent_name,
        "patch_size": patch,
        "batch_size": int(preset["batch_size"]),
        "architecture": arch,
        PRESET_MARKER: {"preset": preset["name"], "description": preset.get("description", "")},
    }


def _resolved_configuration(plans: dict, configuration: str) -> dict:
    """The configuration dict with nnU-Net's inheritance applied."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    return PlansManager(deepcopy(plans)).get_configuration(configuration).configuration


def add_preset(dataset: str, preset_name: str, plans_identifier: str = "nnUNetPlans",
               configuration_name: str | None = None, overwrite: bool = False) -> str:
    """Add a preset configuration to a dataset's plans file.

    Existing configurations are never modified. The plans file is backed up before the first change and
    replaced atomically. Re-adding an identical preset is a no-op.

    Args:
        dataset: dataset id or name.
        preset_name: a shipped preset name or a preset .json path.
        plans_identifier: plans name (file ``<plans_identifier>.json``).
        configuration_name: name of the new configuration (default: the preset's name).
        overwrite: replace a configuration of that name that an earlier call of this function added.

    Returns:
        The name of the configuration in the plans.
    """
    preset = load_preset(preset_name)
    folder = preprocessed_dataset_folder(dataset)
    plans_path = plans_file(folder, plans_identifier, dataset)
    plans = load_plans(folder, plans_identifier, dataset)
    name = configuration_name or preset["name"]
    new_configuration = build_preset_configuration(plans, preset)

    parent = _resolved_configuration(plans, preset["inherits_from"])
    data_folder = os.path.join(folder, parent["data_identifier"])
    if not os.path.isdir(data_folder):
        raise UserInputError(
            f"Configuration '{preset['inherits_from']}' has plans but no preprocessed data ({data_folder} is "
            f"missing). Run nnUNetv2_preprocess -d {dataset} -c {preset['inherits_from']} -plans_name "
            f"{plans_identifier} first.")

    existing = plans["configurations"].get(name)
    if existing is not None:
        if existing == new_configuration:
            print(f"Configuration '{name}' is already in {plans_path}; nothing to do.")
            return name
        if PRESET_MARKER not in existing:
            raise UserInputError(
                f"{plans_path} already has a configuration '{name}' that was not added by nnunet-ext; it is "
                f"left untouched. Choose another name with -n.")
        if not overwrite:
            raise UserInputError(
                f"{plans_path} already has a different '{name}' configuration from an earlier preset. Pass "
                f"--overwrite to replace it (results trained with it keep their own copy of the plans).")

    plans["configurations"][name] = new_configuration
    backup = replace_json(plans_path, plans)
    print(f"Added configuration '{name}' (inherits from '{preset['inherits_from']}', patch "
          f"{new_configuration['patch_size']}, features "
          f"{new_configuration['architecture']['arch_kwargs']['features_per_stage']}) to {plans_path}.\n"
          f"Backup of the previous plans: {backup}\n"
          f"Train with: nnUNetv2_train {dataset} {name} FOLD -p {plans_identifier} -tr TRAINER")
    return name


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_ext_add_preset",
        description="Add a small-machine configuration (a plans preset) to a dataset's nnU-Net plans. The new "
                    "configuration inherits from an existing one, reuses its preprocessed data and leaves all "
                    "existing configurations untouched; the plans file is backed up first.")
    parser.add_argument("-d", dest="dataset", help="dataset id or name, e.g. 501")
    parser.add_argument("-preset", "--preset", default="3d_small",
                        help="preset name (see --list) or path of a preset .json file. Default: 3d_small")
    parser.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier. Default: nnUNetPlans")
    parser.add_argument("-n", "--name", default=None,
                        help="name of the new configuration. Default: the preset's name")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a configuration of that name added earlier by this command")
    parser.add_argument("--list", action="store_true", help="list the shipped presets and exit")
    args = parser.parse_args(argv)

    def run():
        if args.list:
            for name, preset in sorted(available_presets().items()):
                print(f"{name:12s} (inherits {preset['inherits_from']}): {preset.get('description', '')}")
            return
        if args.dataset is None:
            parser.error("-d DATASET is required (or use --list)")
        add_preset(args.dataset, args.preset, args.plans, args.name, args.overwrite)

    run_cli(run, parser.prog)


if __name__ == "__main__":
    main()
