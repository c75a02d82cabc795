"""Training curves of nnU-Net runs side by side, from nnU-Net's own training logs.

``python -m nnunet_ext.benchmark.curves RUN_FOLDER [RUN_FOLDER ...] -o curves.png`` plots, per epoch, the mean
pseudo Dice over classes, the validation loss and the training loss of each run (a run folder is nnU-Net's
``fold_X`` folder); ``--table 10`` prints each run's pseudo Dice per class over blocks of 10 epochs. Used to
look into why a method does or does not beat the baseline.
"""
import argparse
import os
import re
from typing import Dict, List

from nnunet_ext.benchmark.budget import training_log_files

_EPOCH = re.compile(r": Epoch (\d+) ?$")
_VALUE = re.compile(r": (train_loss|val_loss) (-?[0-9.]+(?:e-?\d+)?)")
_DICE = re.compile(r": Pseudo dice \[(.*)\]")
_NUMBER = re.compile(r"(-?\d+(?:\.\d*)?(?:e-?\d+)?)\)")


def parse_training_log(text: str) -> Dict[int, dict]:
    """Per epoch: ``train_loss``, ``val_loss`` and ``pseudo_dice`` (list per class), as nnU-Net logged them.
    A resumed run repeats epochs; the later entry wins."""
    epochs, current = {}, None
    for line in text.splitlines():
        line = line.rstrip()
        m = _EPOCH.search(line)
        if m:
            current = epochs[int(m.group(1))] = {}
            continue
        if current is None:
            continue
        m = _VALUE.search(line)
        if m:
            current[m.group(1)] = float(m.group(2))
        m = _DICE.search(line)
        if m:
            current["pseudo_dice"] = [float(x) for x in _NUMBER.findall(m.group(1))]
    return {e: v for e, v in epochs.items() if "pseudo_dice" in v}  # epochs that finished


def read_run(folder: str) -> Dict[int, dict]:
    """All ``training_log_*.txt`` of a run folder, in the order they were started (an epoch trained again after a
    resume counts as logged last)."""
    epochs = {}
    for path in training_log_files(folder):
        with open(path) as f:
            epochs.update(parse_training_log(f.read()))
    if not epochs:
        raise FileNotFoundError(f"{folder} holds no nnU-Net training log with a finished epoch")
    return epochs


def plot_runs(runs: Dict[str, Dict[int, dict]], path: str, iterations_per_epoch: int = None) -> None:
    """One panel each for mean pseudo Dice, validation loss and training loss; one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name, epochs in runs.items():
        xs = sorted(epochs)
        steps = [(e + 1) * iterations_per_epoch for e in xs] if iterations_per_epoch else [e + 1 for e in xs]
        dice = [sum(epochs[e]["pseudo_dice"]) / len(epochs[e]["pseudo_dice"]) for e in xs]
        axes[0].plot(steps, dice, label=name)
        for ax, key in zip(axes[1:], ("val_loss", "train_loss")):
            ax.plot(steps, [epochs[e].get(key, float("nan")) for e in xs], label=name)
    for ax, title in zip(axes, ("mean pseudo Dice", "validation loss", "training loss (whole objective)")):
        ax.set_title(title)
        ax.set_xlabel("steps" if iterations_per_epoch else "epochs")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def block_table(epochs: Dict[int, dict], every: int, iterations_per_epoch: int = None,
                class_names: List[str] = None) -> str:
    """Markdown table of a run: per block of ``every`` consecutive epochs (the last one may be shorter), the mean
    pseudo Dice of each class, their mean, and the mean validation loss, labeled by the block's last epoch (or
    step). Block means smooth nnU-Net's pseudo Dice, which is taken on a few validation patches per epoch."""
    if every < 1:
        raise ValueError(f"blocks need at least 1 epoch, got {every}")
    num_classes = len(next(iter(epochs.values()))["pseudo_dice"])
    names = class_names or [f"class {k + 1}" for k in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} classes in the log")
    unit = "steps" if iterations_per_epoch else "epochs"
    lines = ["| " + " | ".join([unit, *names, "mean", "val. loss"]) + " |", "|" + "---|" * (num_classes + 3)]
    blocks: Dict[int, list] = {}
    for e in sorted(epochs):
        blocks.setdefault(e // every, []).append(e)
    for members in blocks.values():
        dice = [sum(epochs[e]["pseudo_dice"][k] for e in members) / len(members) for k in range(num_classes)]
        losses = [epochs[e]["val_loss"] for e in members if "val_loss" in epochs[e]]
        end = members[-1] + 1
        label = f"{end * iterations_per_epoch:,}" if iterations_per_epoch else str(end)
        loss = f"{sum(losses) / len(losses):.2f}" if losses else "n/a"
        lines.append("| " + " | ".join([label, *(f"{d:.2f}" for d in dice), f"{sum(dice) / num_classes:.2f}",
                                        loss]) + " |")
    return "\n".join(lines)


def run_labels(folders: List[str]) -> List[str]:
    """Legend names: the trainer of each run, with its fold where trainers repeat, and the whole path where
    even that repeats (runs of the same trainer and fold from two results folders); never two alike."""
    parts = [os.path.normpath(os.path.abspath(f)).split(os.sep) for f in folders]
    for name in ([p[-2].split("__")[0] for p in parts], [f"{p[-2].split('__')[0]} {p[-1]}" for p in parts]):
        if len(set(name)) == len(name):
            return name
    return [os.path.normpath(f) for f in folders]


def main(argv: List[str] = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m nnunet_ext.benchmark.curves",
        description="Plot nnU-Net runs' per-epoch mean pseudo Dice, validation and training loss side by side "
                    "from their training logs.")
    parser.add_argument("runs", nargs="+", help="nnU-Net run folders (.../TRAINER__PLANS__CONFIG/fold_X)")
    parser.add_argument("-o", "--output", default=None, help="PNG to write")
    parser.add_argument("--table", type=int, default=None, metavar="EPOCHS",
                        help="print a Markdown table per run: mean pseudo Dice per class over blocks of EPOCHS "
                             "epochs, and the mean validation loss")
    parser.add_argument("--class-names", nargs="+", default=None, help="column names of the table's classes")
    parser.add_argument("--iterations", type=int, default=None, help="iterations per epoch: x axis in steps")
    parser.add_argument("--labels", nargs="+", default=None,
                        help="one legend name per run (default: the trainer, and the fold where trainers repeat)")
    args = parser.parse_args(argv)
    labels = args.labels or run_labels(args.runs)
    if len(labels) != len(args.runs) or len(set(labels)) != len(labels):
        parser.error(f"--labels needs one distinct name per run ({len(args.runs)} runs, got {labels})")
    if args.output is None and args.table is None:
        parser.error("nothing to do: pass -o PNG, --table EPOCHS or both")
    if args.table is not None and args.table < 1:
        parser.error(f"--table needs at least 1 epoch per block, got {args.table}")
    runs = {label: read_run(r) for label, r in zip(labels, args.runs)}
    if args.table is not None:
        for label, epochs in runs.items():
            try:
                print(f"{label}\n\n{block_table(epochs, args.table, args.iterations, args.class_names)}\n")
            except ValueError as e:
                parser.error(f"{label}: {e}")
    if args.output:
        plot_runs(runs, args.output, args.iterations)
        print(args.output)


if __name__ == "__main__":
    main()
