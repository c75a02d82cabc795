"""Will ``-pretrained_weights FILE`` load into this configuration's network? Say exactly why not, and how to fix it.

nnU-Net's ``load_pretrained_weights`` copies every weight but the segmentation outputs and stops at the first
mismatched key with an assertion, and it calls ``torch.load`` without ``map_location``, so a checkpoint written
on a GPU cannot be loaded on a CPU-only machine. This module names every mismatched layer, says which plans the
checkpoint was trained with and which commands align the plans, and writes CPU copies of GPU checkpoints.

nnU-Net skips only keys with ``.seg_layers.`` (the U-Nets' outputs). Architectures whose output layer is named
otherwise (Primus' final transposed convolution, SwinUNETR's ``out``) cannot be fine-tuned from a checkpoint
with another number of classes (e.g. Volume Fusion's K + 1); for them this module writes a copy whose output
layer is the target network's freshly initialised one (``--reinit-output``).

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
           "check_pretrained_weights", "output_layer_keys", "reinitialise_output_layer",
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


def output_layer_keys(network: torch.nn.Module) -> List[str]:
    """State-dict keys of the network's (full-resolution) output layer, found by the architecture adapters of
    :func:`nnunet_ext.feature_taps.output_layer`; empty for an architecture without an adapter."""
    from nnunet_ext.ema import unwrap_module
    from nnunet_ext.feature_taps import output_layer

    net = unwrap_module(network)
    layer = output_layer(net)
    if layer is None:
        return []
    name = next(n for n, m in net.named_modules() if m is layer)
    return [f"{name}.{n}" for n, _ in layer.named_parameters()]


def _output_only(mismatches, network) -> bool:
    """True when every mismatch is a shape difference inside the output layer (another number of classes)."""
    outputs = set(output_layer_keys(network))
    return bool(mismatches) and all(key in outputs and theirs is not None and len(theirs) == len(shape)
                                    for key, shape, theirs in mismatches)


def reinitialise_output_layer(network: torch.nn.Module, path: str, out: str) -> List[str]:
    """Write a copy of checkpoint ``path`` whose output layer is ``network``'s (freshly initialised) one, so that
    nnU-Net's loader accepts it; every other weight is the checkpoint's. Returns the replaced keys.

    Raises :class:`UserInputError` when anything but the output layer differs, or ``out`` exists / is ``path``.
    """
    from nnunet_ext.ema import unwrap_module

    if os.path.abspath(out) == os.path.abspath(path):
        raise UserInputError(f"--reinit-output {out} is the input file; choose another name (the original is kept).")
    if os.path.exists(out):
        raise UserInputError(f"{out} exists; choose another name (nothing is overwritten).")
    checkpoint = read_checkpoint(path)
    state = unwrap_module(network).state_dict()
    ours = {k: tuple(v.shape) for k, v in state.items()}
    theirs = {k: tuple(v.shape) for k, v in checkpoint["network_weights"].items()}
    mismatches = shape_mismatches(ours, theirs, skipped=())
    outputs = set(output_layer_keys(network))
    others = [m for m in mismatches if m[0] not in outputs]
    if others:
        raise UserInputError(f"{path} differs from the target network beyond its output layer: "
                             f"{describe_mismatches(others, 'pretrained', 12)}. A fresh output layer cannot fix "
                             f"that; align the plans first (nnUNetv2_ext_check_pretrained without "
                             f"--reinit-output says how).")
    replaced = [key for key, _, _ in mismatches]
    for key in replaced:
        checkpoint["network_weights"][key] = state[key].detach().cpu().clone()
    tmp = out + ".tmp"
    torch.save(checkpoint, tmp)
    os.replace(tmp, out)
    return replaced


def check_pretrained_weights(network: torch.nn.Module, path: str, dataset: str, configuration: str,
                             plans: str, max_listed: int = 12, trainer: str = "nnUNetTrainer") -> dict:
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
    if _output_only(mismatches, network):
        stem = os.path.splitext(path)[0]
        raise UserInputError(
            f"Pretrained weights {path} differ from configuration '{configuration}' of {dataset} only in the "
            f"output layer ({describe_mismatches(mismatches, 'pretrained', max_listed)}): another number of "
            f"classes, which nnU-Net's loader skips only for U-Nets' seg_layers. Write a copy with a freshly "
            f"initialised output layer and fine-tune from it: nnUNetv2_ext_check_pretrained -d {dataset} -c "
            f"{configuration} -p {plans} -tr {trainer} -pretrained_weights {path} --reinit-output "
            f"{stem}_finetune.pth")
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
    parser.add_argument("-tr", dest="trainer", default="nnUNetTrainer",
                        help="trainer that will fine-tune (it builds the network; e.g. nnUNet_Primus_M_Trainer). "
                             "Default: nnUNetTrainer")
    parser.add_argument("-o", dest="cpu_copy", default=None,
                        help="write a copy with every tensor on the CPU to this file")
    parser.add_argument("--reinit-output", dest="reinit_output", default=None, metavar="FILE",
                        help="write a copy whose output layer is freshly initialised for this configuration (for "
                             "architectures whose output layer nnU-Net's loader does not skip, e.g. Primus after "
                             "Volume Fusion pretraining)")
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
        trainer_class = nnUNetTrainer
        if args.trainer != "nnUNetTrainer":
            from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

            try:
                trainer_class = recursive_find_trainer_class_by_name(args.trainer)
            except RuntimeError:
                raise UserInputError(f"Trainer {args.trainer} not found by nnU-Net. For nnunet-ext's trainers run "
                                     f"eval \"$(nnUNetv2_ext_env)\" first.") from None
        torch.manual_seed(0)  # a fresh output layer is reproducible
        # without deep supervision: the same weights (U-Nets keep every seg layer), and architectures without it
        # (nnunet_ext.architectures.SwinUNETR) refuse True
        network = trainer_class.build_network_architecture(plans_manager, configuration, num_inputs,
                                                           label_manager.num_segmentation_heads,
                                                           enable_deep_supervision=False)
        checked = args.cpu_copy or args.pretrained_weights
        if args.reinit_output:
            replaced = reinitialise_output_layer(network, checked, args.reinit_output)
            print(f"Wrote {args.reinit_output}: the checkpoint with a freshly initialised output layer "
                  f"({', '.join(replaced) or 'nothing differed'}).")
            checked = args.reinit_output
        check_pretrained_weights(network, checked, plans_manager.dataset_name, args.configuration, args.plans,
                                 trainer=args.trainer)
        print(f"OK: {checked} loads into {plans_manager.dataset_name} {args.configuration} ({args.plans}, "
              f"{args.trainer}); every layer but the segmentation outputs is transferred.")

    run_cli(run, parser.prog)
