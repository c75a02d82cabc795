"""Will ``-pretrained_weights FILE`` load into this configuration's network? Say exactly why not, and how to fix it.

nnU-Net's ``load_pretrained_weights`` copies every weight but the segmentation outputs and stops at the first
mismatched key with an assertion, and it calls ``torch.load`` without ``map_location``, so a checkpoint written
on a GPU cannot be loaded on a CPU-only machine. This module names every mismatched layer, says which plans the
checkpoint was trained with and which commands align the plans, and writes CPU copies of GPU checkpoints.

Used by ``nnUNetv2_ext_check_pretrained`` (any trainer, plain ``nnUNetTrainer`` included) and, automatically, by
this package's trainers when ``nnUNetv2_train`` is given ``-pretrained_weights``.
"""
import argparse
import os
import sys
from typing import List, Mapping, Optional, Sequence, Set, Tuple

import torch

from nnunet_ext.errors import UserInputError, run_cli

SKIPPED = (".seg_layers.",)  # what nnU-Net's load_pretrained_weights does not transfer

__all__ = ["shape_mismatches", "storage_locations", "read_checkpoint", "describe_mismatches",
           "check_pretrained_weights",
           "pretrained_weights_argument", "write_cpu_copy", "main"]


def shape_mismatches(network_shapes: Mapping[str, Sequence[int]], pretrained_shapes: Mapping[str, Sequence[int]],
                     skipped: Sequence[str] = SKIPPED) -> List[Tuple[str, Optional[tuple], Optional[tuple]]]:
    """Every weight of the network that nnU-Net would transfer but cannot.

    Args:
        network_shapes: ``{key: shape}`` of the network's state dict.
        pretrained_shapes: ``{key: shape}`` of the checkpoint's ``network_weights``.
        skipped: key fragments that are not transferred (segmentation outputs).

    Returns:
        ``(key, network shape, pretrained shape or None if missing)`` in the network's key order.
    """
    mismatches = []
    for key, shape in network_shapes.items():
        if any(s in key for s in skipped):
            continue
        theirs = pretrained_shapes.get(key)
        if theirs is None or tuple(theirs) != tuple(shape):
            mismatches.append((key, tuple(shape), None if theirs is None else tuple(theirs)))
    return mismatches


def storage_locations(path: str) -> Set[str]:
    """Devices the checkpoint's tensors were saved on (e.g. ``{'cuda:0'}``), read without needing those devices."""
    locations: Set[str] = set()
    read_checkpoint(path, locations, require_network_weights=False)
    return locations


def read_checkpoint(path: str, locations: Optional[Set[str]] = None, require_network_weights: bool = True) -> dict:
    """Load a checkpoint on the CPU with a clear error for a missing, truncated or foreign file.

    Args:
        path: the checkpoint file.
        locations: if given, receives the devices the tensors were saved on (same single read).
        require_network_weights: refuse files without nnU-Net's ``network_weights``.
    """
    if not os.path.isfile(path):
        raise UserInputError(f"Pretrained weights {path} do not exist.")

    def to_cpu(storage, location):
        # called per storage with the device it was saved on; the storage itself is already on the CPU
        if locations is not None:
            locations.add(str(location))
        return storage

    try:
        checkpoint = torch.load(path, map_location=to_cpu, weights_only=False, mmap=True)
    except Exception as e:  # truncated zip, pickle errors, ...
        raise UserInputError(f"Pretrained weights {path} cannot be read ({type(e).__name__}: {e}); the file is "
                             f"truncated or not a PyTorch checkpoint. Use checkpoint_final.pth of a finished run."
                             ) from None
    if require_network_weights and (not isinstance(checkpoint, dict) or "network_weights" not in checkpoint):
        raise UserInputError(f"{path} has no 'network_weights': it is not an nnU-Net checkpoint "
                             f"(checkpoint_final.pth / checkpoint_best.pth of nnUNetv2_train).")
    return checkpoint


def describe_mismatches(mismatches: Sequence[Tuple[str, Optional[tuple], Optional[tuple]]], other: str,
                        max_listed: int) -> str:
    """``key: this network [..], <other> [..]; ...`` for the first ``max_listed`` of :func:`shape_mismatches`."""
    listed = "; ".join(f"{key}: this network {list(shape)}, {other} {'missing' if theirs is None else list(theirs)}"
                       for key, shape, theirs in mismatches[:max_listed])
    more = f" (and {len(mismatches) - max_listed} more)" if len(mismatches) > max_listed else ""
    return listed + more


def _origin(checkpoint: dict) -> Optional[dict]:
    """Dataset, plans and configuration the checkpoint was trained with (nnU-Net stores its init arguments)."""
    init = checkpoint.get("init_args") or {}
    plans = init.get("plans") or {}
    if not plans:
        return None
    return {"dataset": plans.get("dataset_name"), "plans": plans.get("plans_name"),
            "configuration": init.get("configuration"), "trainer": checkpoint.get("trainer_name")}


def _alignment_advice(origin: Optional[dict], dataset: str, configuration: str, plans: str, path: str) -> str:
    if origin is None:
        return ("The checkpoint does not record its plans. Pretrain with this dataset's plans, e.g. "
                f"nnUNetv2_ext_prepare_pretraining -d {dataset} -c {configuration} and nnUNetv2_train {dataset} "
                f"{configuration} all -p {plans} -tr nnUNetTrainerVolumeFusion.")
    where = (f"The checkpoint was trained by {origin['trainer']} on {origin['dataset']}, plans {origin['plans']}, "
             f"configuration {origin['configuration']}.")
    if origin["dataset"] == dataset:
        return (f"{where} Fine-tune with the same plans and configuration: nnUNetv2_train {dataset} "
                f"{origin['configuration']} FOLD -p {origin['plans']} -pretrained_weights {path}.")
    new_plans = f"{origin['plans']}_from_{origin['dataset']}"
    return (f"{where} Align the plans by moving them to {dataset} (nnU-Net's way), preprocess, and fine-tune with "
            f"them: nnUNetv2_move_plans_between_datasets -s {origin['dataset']} -t {dataset} -sp {origin['plans']} "
            f"-tp {new_plans}; nnUNetv2_preprocess -d {dataset} -plans_name {new_plans} -c "
            f"{origin['configuration']}; nnUNetv2_train {dataset} {origin['configuration']} FOLD -p {new_plans} "
            f"-pretrained_weights {path}.")


def check_pretrained_weights(network: torch.nn.Module, path: str, dataset: str, configuration: str,
                             plans: str, max_listed: int = 12) -> dict:
    """Raise a :class:`UserInputError` unless nnU-Net's ``load_pretrained_weights`` will load ``path``.

    Args:
        network: the network that will be fine-tuned (wrappers are fine).
        path: the checkpoint file.
        dataset, configuration, plans: what is being fine-tuned (for the advice).
        max_listed: mismatched layers listed in the message.

    Returns:
        The checkpoint (on the CPU) when everything matches.
    """
    from nnunet_ext.ema import unwrap_module

    locations: Set[str] = set()
    checkpoint = read_checkpoint(path, locations)
    ours = {k: tuple(v.shape) for k, v in unwrap_module(network).state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in checkpoint["network_weights"].items()}
    mismatches = shape_mismatches(ours, theirs)
    if mismatches:
        raise UserInputError(
            f"Pretrained weights {path} do not fit configuration '{configuration}' of {dataset} (plans {plans}): "
            f"{len(mismatches)} of {len(ours)} layers differ: "
            f"{describe_mismatches(mismatches, 'pretrained', max_listed)}. "
            + _alignment_advice(_origin(checkpoint), dataset, configuration, plans, path))
    devices = {loc for loc in locations if not loc.startswith("cpu")}
    if devices and not torch.cuda.is_available():
        raise UserInputError(
            f"Pretrained weights {path} were saved on {sorted(devices)}, and this machine has no GPU: nnU-Net's "
            f"loader (torch.load without map_location) cannot read them here. Write a CPU copy with "
            f"nnUNetv2_ext_check_pretrained -d {dataset} -c {configuration} -p {plans} -pretrained_weights {path} "
            f"-o {os.path.splitext(path)[0]}_cpu.pth and pass that file instead.")
    return checkpoint


def write_cpu_copy(path: str, out: str) -> None:
    """A copy of a checkpoint with every tensor on the CPU (written atomically; never over the input)."""
    if os.path.abspath(out) == os.path.abspath(path):
        raise UserInputError(f"-o {out} is the input file; choose another name (the original is kept).")
    if os.path.exists(out):
        raise UserInputError(f"{out} exists; choose another name (nothing is overwritten).")
    checkpoint = read_checkpoint(path)
    tmp = out + ".tmp"
    torch.save(checkpoint, tmp)
    os.replace(tmp, out)


def pretrained_weights_argument(argv: Sequence[str] = None) -> Optional[str]:
    """The ``-pretrained_weights`` file when this process is ``nnUNetv2_train`` (else None)."""
    argv = list(sys.argv if argv is None else argv)
    if not argv or not os.path.basename(argv[0]).startswith("nnUNetv2_train"):
        return None
    for flag in ("-pretrained_weights", "--pretrained_weights"):
        if flag in argv[:-1]:
            return argv[argv.index(flag) + 1]
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_ext_check_pretrained",
        description="Check that nnUNetv2_train -pretrained_weights FILE will load into a configuration's network "
                    "(names every mismatched layer and the commands that align the plans), and optionally write "
                    "a CPU copy of a checkpoint saved on a GPU.")
    parser.add_argument("-d", dest="dataset", required=True, help="dataset to fine-tune, id or name")
    parser.add_argument("-c", dest="configuration", required=True, help="configuration to fine-tune")
    parser.add_argument("-p", "-plans_name", dest="plans", default="nnUNetPlans",
                        help="plans identifier. Default: nnUNetPlans")
    parser.add_argument("-pretrained_weights", required=True, help="checkpoint file")
    parser.add_argument("-o", dest="cpu_copy", default=None,
                        help="write a copy with every tensor on the CPU to this file")
    args = parser.parse_args(argv)

    def run():
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        from nnunet_ext.datasets import load_plans, preprocessed_dataset_folder

        if args.cpu_copy:
            write_cpu_copy(args.pretrained_weights, args.cpu_copy)
            print(f"Wrote {args.cpu_copy} (all tensors on the CPU).")
        folder = preprocessed_dataset_folder(args.dataset)
        plans_manager = PlansManager(load_plans(folder, args.plans, args.dataset))
        if args.configuration not in plans_manager.available_configurations:
            raise UserInputError(f"Configuration '{args.configuration}' is not in plans {args.plans} of "
                                 f"{plans_manager.dataset_name} ({plans_manager.available_configurations}).")
        configuration = plans_manager.get_configuration(args.configuration)
        import json

        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

        with open(os.path.join(folder, "dataset.json")) as f:
            dataset_json = json.load(f)
        label_manager = plans_manager.get_label_manager(dataset_json)
        num_inputs = determine_num_input_channels(plans_manager, configuration, dataset_json)
        network = nnUNetTrainer.build_network_architecture(plans_manager, configuration, num_inputs,
                                                           label_manager.num_segmentation_heads,
                                                           enable_deep_supervision=True)
        check_pretrained_weights(network, args.cpu_copy or args.pretrained_weights, plans_manager.dataset_name,
                                 args.configuration, args.plans)
        print(f"OK: {args.cpu_copy or args.pretrained_weights} loads into {plans_manager.dataset_name} "
              f"{args.configuration} ({args.plans}); every layer but the segmentation outputs is transferred.")

    run_cli(run, parser.prog)
