"""Equal wall-clock budgets: how many epochs give plain nnU-Net the training time of a costlier method.

A method that costs k× the baseline's time per step is compared at equal steps *and* with the baseline given
k× the steps (methods.md §6). k comes from nnU-Net's own per-epoch timings of the two finished runs.
"""
import glob
import os
import re
import statistics
from typing import List

_EPOCH_TIME = re.compile(r"Epoch time: ([0-9.]+) s")


def epoch_seconds(output_folder: str) -> List[float]:
    """Every "Epoch time: X s" that nnU-Net logged in a run's ``training_log_*.txt`` files (resumed runs
    write one file per start)."""
    seconds = []
    for path in sorted(glob.glob(os.path.join(output_folder, "training_log_*.txt"))):
        with open(path) as f:
            seconds += [float(m.group(1)) for m in _EPOCH_TIME.finditer(f.read())]
    return seconds


def time_ratio(method_seconds: List[float], baseline_seconds: List[float]) -> float:
    """Ratio of median epoch times: medians, because other work on a shared machine slows single epochs."""
    if not method_seconds or not baseline_seconds:
        raise ValueError("both runs need logged epoch times")
    return statistics.median(method_seconds) / statistics.median(baseline_seconds)


def matched_epochs(epochs: int, ratio: float) -> int:
    """Epochs (of the same iterations each) that take ``ratio`` times as long as ``epochs``; at least 1."""
    return max(1, int(round(epochs * ratio)))
