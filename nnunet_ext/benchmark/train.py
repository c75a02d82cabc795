"""Train one benchmark run: nnU-Net's own training entry, with the benchmark's step budget and seed.

Budgets differ between ``--quick`` and full benchmark runs, so instead of one trainer subclass per budget the
benchmark sets ``num_epochs`` / ``num_iterations_per_epoch`` on the trainer nnU-Net builds (before it is
initialised, so the learning-rate schedule and the methods' ramps see the real budget) and writes the budget
into the training log. Everything else is ``nnUNetv2_train``: same trainer lookup, checkpoints, ``--c``,
final validation.
"""
import argparse
import os
import random

import numpy as np
import torch


def write_checkpoints_atomically(trainer) -> None:
    """Make ``trainer.save_checkpoint`` write to a temporary file and rename it into place.

    Plain nnU-Net writes checkpoints in place, so a run killed while writing one (a long CPU benchmark is
    stopped and resumed many times) would leave a truncated ``checkpoint_latest.pth`` that cannot resume.
    nnunet-ext's trainers already write atomically (and name the real file when writing fails).
    """
    from nnunet_ext.training.base import nnUNetTrainerExtBase

    if isinstance(trainer, nnUNetTrainerExtBase):
        return
    save = trainer.save_checkpoint

    def save_atomically(filename: str) -> None:
        partial = filename + ".part"
        save(partial)
        if os.path.isfile(partial):  # only the process of rank 0 writes
            os.replace(partial, filename)

    trainer.save_checkpoint = save_atomically


def train(dataset: str, configuration: str, fold, trainer_name: str, epochs: int, iterations: int,
          val_iterations: int, seed: int, device: str = "cpu", plans: str = "nnUNetPlans",
          pretrained_weights: str = None) -> str:
    """Train (or resume) one run and run nnU-Net's final validation; returns the output folder.

    ``pretrained_weights`` initialise a new run as ``nnUNetv2_train -pretrained_weights`` does (ignored when the
    run resumes from its own checkpoint, as nnU-Net refuses both at once).
    """
    from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint

    from nnunet_ext.benchmark.budget import budget_mismatch, recorded_budget, step_budget
    from nnunet_ext.errors import UserInputError

    trainer = get_trainer_from_args(dataset, configuration, fold, trainer_name, plans, False, torch.device(device))
    final = os.path.join(trainer.output_folder, "checkpoint_final.pth")
    latest = os.path.join(trainer.output_folder, "checkpoint_latest.pth")
    resume = os.path.isfile(final) or os.path.isfile(latest)
    mismatch = budget_mismatch(recorded_budget(trainer.output_folder), step_budget(epochs, iterations, val_iterations))
    if resume and mismatch:
        # resuming would continue the run's learning-rate schedule under another budget
        raise UserInputError(f"{trainer.output_folder} holds a run of {trainer_name}, but {mismatch}. Train this "
                             f"budget into another nnUNet_results folder, or resume with the budget it was started "
                             f"with.")
    write_checkpoints_atomically(trainer)
    trainer.num_epochs = epochs
    trainer.num_iterations_per_epoch = iterations
    trainer.num_val_iterations_per_epoch = val_iterations
    # a killed run resumes from its last checkpoint: at most 5 epochs (and a tenth of the run) are redone
    # (a checkpoint of the benchmark's 3d_small network is about 4 MB)
    trainer.save_every = max(1, min(5, epochs // 10))
    trainer.print_to_log_file(f"nnunet-ext benchmark budget: {epochs} epochs x {iterations} iterations "
                              f"({epochs * iterations} steps), {val_iterations} validation iterations, seed {seed}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if pretrained_weights and not resume:
        trainer.print_to_log_file(f"nnunet-ext benchmark: initialised from {pretrained_weights}")
    maybe_load_checkpoint(trainer, resume, False, None if resume else pretrained_weights)
    trainer.run_training()
    trainer.perform_actual_validation(False)
    return trainer.output_folder


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m nnunet_ext.benchmark.train",
        description="Train one benchmark run through nnU-Net's trainer with a fixed step budget (used by "
                    "nnUNetv2_ext_benchmark). Resumes from the run's checkpoint when there is one.")
    parser.add_argument("dataset")
    parser.add_argument("configuration")
    parser.add_argument("fold", type=lambda f: f if f == "all" else int(f))
    parser.add_argument("-tr", dest="trainer", required=True)
    parser.add_argument("-p", dest="plans", default="nnUNetPlans")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--iterations", type=int, required=True, help="training iterations per epoch")
    parser.add_argument("--val-iterations", type=int, default=5, help="validation iterations per epoch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-device", default="cpu")
    parser.add_argument("--pretrained-weights", default=None, help="checkpoint to initialise a new run from")
    args = parser.parse_args(argv)
    from nnunet_ext.errors import run_cli

    run_cli(lambda: train(args.dataset, args.configuration, args.fold, args.trainer, args.epochs, args.iterations,
                          args.val_iterations, args.seed, args.device, args.plans, args.pretrained_weights),
            parser.prog)


if __name__ == "__main__":
    main()
