"""Step budgets of benchmark runs, and the equal wall-clock budget of plain nnU-Net beside a costlier method.

A method that costs k× the baseline's time per step is compared at equal steps *and* with the baseline given
k× the steps (methods.md §6). k is the ratio of the two trainers' step times that ``nnUNetv2_ext_benchmark_cost``
measures side by side in one process (:func:`measured_step_ratio`); nnU-Net's logged epoch times
(:func:`epoch_seconds`, :func:`seconds_per_epoch`) go into the report only.
"""
import glob
import json
import os
import re
from typing import Dict, List, Optional

_EPOCH_TIME = re.compile(r"Epoch time: ([0-9.]+) s")
_EPOCH_OR_TIME = re.compile(r": Epoch (\d+)\s*$|Epoch time: ([0-9.]+) s", re.M)
_LOG_STAMP = re.compile(r"training_log_(\d+)_(\d+)_(\d+)_(\d+)_(\d+)_(\d+)\.txt$")


def training_log_files(output_folder: str) -> List[str]:
    """A run's ``training_log_*.txt`` files in the order nnU-Net started them (one per start of the training).

    Ordered by the date and time in the name, which nnU-Net writes without zero padding (day 7 after day 10 in
    name order)."""
    def started(path):
        m = _LOG_STAMP.search(os.path.basename(path))
        return (0, tuple(int(g) for g in m.groups()), path) if m else (1, (), path)
    return sorted(glob.glob(os.path.join(output_folder, "training_log_*.txt")), key=started)


def epoch_seconds(output_folder: str) -> List[float]:
    """Every "Epoch time: X s" that nnU-Net logged in a run's ``training_log_*.txt`` files (resumed runs
    write one file per start)."""
    seconds = []
    for path in training_log_files(output_folder):
        with open(path) as f:
            seconds += [float(m.group(1)) for m in _EPOCH_TIME.finditer(f.read())]
    return seconds


def seconds_per_epoch(output_folder: str) -> Dict[int, float]:
    """nnU-Net's logged time of each epoch of a run, by epoch number, over all its training logs.

    A run resumed from a checkpoint trains the epochs after that checkpoint again; each epoch counts once, with
    the time of its last training, so that the sum is the training time of the whole budget (without nnU-Net's
    start-up and final validation) however often the run was interrupted.
    """
    seconds, epoch = {}, None
    for path in training_log_files(output_folder):
        with open(path) as f:
            for m in _EPOCH_OR_TIME.finditer(f.read()):
                if m.group(1) is not None:
                    epoch = int(m.group(1))
                elif epoch is not None:
                    seconds[epoch] = float(m.group(2))
                    epoch = None
    return seconds


def validation_dice(output_folder: str) -> Optional[float]:
    """Mean Dice over the foreground labels of nnU-Net's final validation of a run (its
    ``validation/summary.json``); None when the run has not been validated."""
    path = os.path.join(output_folder, "validation", "summary.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return float(json.load(f)["foreground_mean"]["Dice"])


def measured_step_ratio(cost_file: str, trainer: str, baseline: str) -> float:
    """``trainer``'s median step time over ``baseline``'s, from the JSON that ``nnUNetv2_ext_benchmark_cost -o``
    wrote; ValueError naming the file when it measured other trainers or no positive ratio."""
    with open(cost_file) as f:
        results = json.load(f)
    measured = results.get("trainers", {})
    if results.get("baseline") != baseline or trainer not in measured:
        raise ValueError(f"{cost_file} holds step times of {sorted(measured)} against {results.get('baseline')}, "
                         f"not of {trainer} against {baseline}.")
    ratio = measured[trainer].get("step_ratio")
    if not ratio or ratio <= 0:
        raise ValueError(f"{cost_file} holds no positive step ratio for {trainer} ({ratio}).")
    return float(ratio)


def matched_epochs(epochs: int, ratio: float) -> int:
    """Epochs (of the same iterations each) that take ``ratio`` times as long as ``epochs``; at least 1."""
    return max(1, int(round(epochs * ratio)))


# the attributes the benchmark sets on nnU-Net's trainer, as nnU-Net names them in a run's debug.json
BUDGET_KEYS = ("num_epochs", "num_iterations_per_epoch", "num_val_iterations_per_epoch")


def step_budget(epochs: int, iterations: int, val_iterations: int) -> dict:
    """A run's step budget, keyed as nnU-Net's trainer attributes."""
    return dict(zip(BUDGET_KEYS, (int(epochs), int(iterations), int(val_iterations))))


def recorded_budget(output_folder: str):
    """The step budget a run was started with, from the ``debug.json`` nnU-Net writes when training starts
    (after the benchmark has set the budget); None when the folder holds no started run."""
    path = os.path.join(output_folder, "debug.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        debug = json.load(f)
    if not all(k in debug for k in BUDGET_KEYS):
        return None
    return {k: int(debug[k]) for k in BUDGET_KEYS}


def describe(budget: dict) -> str:
    return (f"{budget['num_epochs']} epochs x {budget['num_iterations_per_epoch']} iterations "
            f"({budget['num_epochs'] * budget['num_iterations_per_epoch']} steps), "
            f"{budget['num_val_iterations_per_epoch']} validation iterations")


def budget_mismatch(recorded: dict, expected: dict):
    """None if a recorded budget is the expected one, else a sentence naming both."""
    if recorded is None or recorded == expected:
        return None
    return f"it was trained with {describe(recorded)}, these settings ask for {describe(expected)}"
