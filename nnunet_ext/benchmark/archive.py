"""A benchmark's finished results, kept outside its work folder so that the benchmark can go on elsewhere.

The full benchmark takes days on a CPU. Where the machine or its disk does not last that long (cloud sessions,
preemptible nodes), the work folder's data and checkpoints are lost, but what the report needs of a finished run
is small text: its per-case metrics and nnU-Net's training logs, plus the splits that number the folds.
``nnUNetv2_ext_benchmark --archive DIR`` copies these into DIR after every finished run and restores them into a
new work folder, where the benchmark regenerates the same data (deterministic under its seed), skips every
archived run and writes the report from archived and new runs alike.

Archive layout (JSON and text, and the checkpoints named below)::

    settings.json            the data settings the runs were made with (other settings are refused)
    data_fingerprint.json    per generated image and label: shape, spacing, intensity mean and std, voxels per
                             label (data that differ by more than rounding noise are refused, e.g. after a
                             library changed the generator's random draws)
    dataset.json             label names for the report
    splits_final.json        nnU-Net's folds, and splits_manifest.json: (fraction, seed) of each fold
    metrics/<run>.json       one finished run (the benchmark's metrics file, unchanged)
    training_logs/<run>/     nnU-Net's training_log_*.txt of that run (curves, epoch times)
    pretraining/<trainer>/   a finished pretraining run: checkpoint_final.pth (about 3 MB for the benchmark's
                             network), nnU-Net's debug.json (its step budget) and training logs. Every
                             fine-tuning run of every seed and fraction starts from it, and making it again takes
                             as long as a training run. A pretraining made again (on a machine without the
                             checkpoint, which git does not keep) goes to pretraining/<trainer>__run<N>/.
    step_cost/<trainer>.json the step-time ratio that sets the equal-wall-clock budgets against this trainer
                             (``nnUNetv2_ext_benchmark_cost -o``), measured once: every fold and seed, on any
                             machine, gets the same budget
    unfinished/<run>/        only after ``--keep-unfinished``: a started run's checkpoint_latest.pth, debug.json
                             and training logs, and where.json (its output folder, relative to the work folder),
                             so that a run longer than its machine's life resumes on the next one instead of
                             starting over. Removed when the run finishes.
"""
import glob
import json
import os
import shutil
from typing import List, Sequence

# settings that decide the data, the folds and the network: runs made with others cannot share one table
DATA_KEYS = ("num_train", "num_val", "num_test", "num_unlabeled", "shape", "difficulty", "configuration",
             "iterations", "val_iterations")


class ArchiveMismatchError(ValueError):
    """The archive holds runs of other settings or other folds than the work folder."""


def _read(path: str):
    with open(path) as f:
        return json.load(f)


def _write(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)  # never a half-written file, also when the benchmark is killed


def _copy(source: str, target: str) -> None:
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copyfile(source, target + ".tmp")
    os.replace(target + ".tmp", target)


def data_settings(settings: dict) -> dict:
    """The part of the benchmark's settings that decides its data and folds, JSON-comparable."""
    return {k: list(settings[k]) if isinstance(settings[k], (tuple, list)) else settings[k]
            for k in DATA_KEYS if k in settings}


def check_settings(archive: str, settings: dict) -> None:
    """Record the data settings in a new archive; refuse an archive made with other ones."""
    path = os.path.join(archive, "settings.json")
    current = data_settings(settings)
    if not os.path.isfile(path):
        _write(path, current)
        return
    recorded = _read(path)
    differ = sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))
    if differ:
        raise ArchiveMismatchError(
            "it was made with other settings: " + ", ".join(f"{k} {recorded.get(k)} there, {current.get(k)} here"
                                                            for k in differ))


def dataset_fingerprint(raw_dataset_folder: str) -> dict:
    """Per image and label of an nnU-Net raw dataset: spacing, shape, and intensity mean and std (images) or voxel
    count per label value (labels). Compared with a tolerance (``fingerprint_mismatches``), not hashed: the
    phantom is computed in float32 with BLAS, whose last bits differ between CPUs, so a regenerated dataset may
    differ from the archived one by rounding noise (and a boundary voxel) without being other data."""
    import numpy as np
    import SimpleITK as sitk

    fingerprint = {}
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs", "imagesUnlabeled"):
        folder = os.path.join(raw_dataset_folder, sub)
        for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
            if not name.endswith(".nii.gz"):
                continue
            image = sitk.ReadImage(os.path.join(folder, name))
            array = sitk.GetArrayViewFromImage(image)
            entry = {"spacing": [round(v, 6) for v in image.GetSpacing()], "shape": list(array.shape)}
            if sub.startswith("labels"):
                values, counts = np.unique(array, return_counts=True)
                entry["voxels"] = {str(int(v)): int(c) for v, c in zip(values, counts)}
            else:
                entry["mean"], entry["std"] = float(array.mean(dtype=np.float64)), float(array.std(dtype=np.float64))
            fingerprint[f"{sub}/{name}"] = entry
    return fingerprint


def fingerprint_mismatches(recorded: dict, current: dict) -> List[str]:
    """Files whose fingerprints differ by more than rounding noise: another set of files, another spacing or
    shape, a mean or std off by more than 0.1 % (of the std), a label's voxel count off by more than 0.5 %."""
    problems = [f"{name} {'missing here' if name in recorded else 'not in the archive'}"
                for name in sorted(set(recorded) ^ set(current))]
    for name in sorted(set(recorded) & set(current)):
        a, b = recorded[name], current[name]
        if a["shape"] != b["shape"] or any(abs(x - y) > 1e-4 for x, y in zip(a["spacing"], b["spacing"])):
            problems.append(f"{name}: shape or spacing")
        elif "voxels" in a:
            labels = set(a["voxels"]) | set(b["voxels"])
            if any(abs(a["voxels"].get(v, 0) - b["voxels"].get(v, 0)) > 2 + 0.005 * a["voxels"].get(v, 0)
                   for v in labels):
                problems.append(f"{name}: label volumes")
        elif abs(a["mean"] - b["mean"]) > 1e-3 * a["std"] + 1e-6 or abs(a["std"] - b["std"]) > 1e-3 * a["std"] + 1e-6:
            problems.append(f"{name}: intensities")
    return problems


def check_data(archive: str, fingerprint: dict) -> None:
    """Record the data fingerprint in a new archive; refuse data that differ from the recorded ones."""
    path = os.path.join(archive, "data_fingerprint.json")
    if not os.path.isfile(path):
        _write(path, fingerprint)
        return
    problems = fingerprint_mismatches(_read(path), fingerprint)
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise ArchiveMismatchError(
            f"its runs were made on other images or labels than this work folder's ({shown}; same generator "
            f"settings, so the generator or a library it uses draws differently on this machine)")


def _training_logs(folder: str) -> List[str]:
    return sorted(glob.glob(os.path.join(folder, "training_log_*.txt")))


def _copy_training_logs(source_folder: str, target_folder: str) -> None:
    for log in _training_logs(source_folder):
        _copy(log, os.path.join(target_folder, os.path.basename(log)))


def _merged_folds(target: str, folds: Sequence) -> list:
    """The folds ``target`` should hold after taking ``folds`` in; None if it holds them already."""
    existing = _read(target) if os.path.isfile(target) else []
    merged = merge_folds(existing, folds)
    return None if merged == existing else merged


def merge_folds(local: Sequence, archived: Sequence) -> list:
    """The longer of two fold lists when the shorter is its beginning (a work folder only appends folds)."""
    shorter, longer = sorted((list(local), list(archived)), key=len)
    if longer[:len(shorter)] != shorter:
        first = next(i for i, (a, b) in enumerate(zip(local, archived)) if a != b)
        raise ArchiveMismatchError(f"fold {first} differs between the work folder and the archive")
    return longer


def restore(archive: str, work: str, splits_file: str) -> List[str]:
    """Copy the archive's runs, logs and folds into the work folder where it lacks them; return the runs copied.

    ``splits_file`` (nnU-Net's splits_final.json) is written only where its folder exists, i.e. once nnU-Net
    has planned the dataset; the manifest, which the report needs, always.
    """
    updates = []  # (path, folds): every merge is checked before anything is written
    pairs = [(os.path.join(work, "splits_manifest.json"), os.path.join(archive, "splits_manifest.json"))]
    if os.path.isdir(os.path.dirname(splits_file)):
        pairs.append((splits_file, os.path.join(archive, "splits_final.json")))
    for local_file, archived_file in pairs:
        merged = _merged_folds(local_file, _read(archived_file)) if os.path.isfile(archived_file) else None
        if merged is not None:
            updates.append((local_file, merged))
    for path, folds in updates:
        _write(path, folds)
    if os.path.isfile(os.path.join(archive, "dataset.json")) and not os.path.isfile(os.path.join(work, "dataset.json")):
        _copy(os.path.join(archive, "dataset.json"), os.path.join(work, "dataset.json"))
    restored = []
    for path in sorted(glob.glob(os.path.join(archive, "metrics", "*.json"))):
        run = os.path.basename(path)[:-len(".json")]
        target = os.path.join(work, "metrics", os.path.basename(path))
        if os.path.isfile(target):
            continue
        _copy(path, target)
        _copy_training_logs(os.path.join(archive, "training_logs", run), os.path.join(work, "training_logs", run))
        restored.append(run)
    for path in sorted(glob.glob(os.path.join(archive, "step_cost", "*.json"))):
        target = os.path.join(work, "step_cost", os.path.basename(path))
        if not os.path.isfile(target):
            _copy(path, target)
    return restored


def store_step_cost(archive: str, cost_file: str) -> None:
    """Copy a step-cost measurement (``WORK/step_cost/<trainer>.json``) into the archive."""
    _copy(cost_file, os.path.join(archive, "step_cost", os.path.basename(cost_file)))


def keep_training_logs(output_folder: str, work: str, run: str) -> None:
    """Copy a finished run's nnU-Net training logs from its output folder into ``work/training_logs/<run>``."""
    _copy_training_logs(output_folder, os.path.join(work, "training_logs", run))


def store(archive: str, work: str, splits_file: str, dataset_json: str, runs: Sequence[str]) -> None:
    """Copy the folds, the label names and the given finished runs (metrics and training logs) into the archive."""
    manifest_file = os.path.join(work, "splits_manifest.json")
    for source, name in ((manifest_file, "splits_manifest.json"), (splits_file, "splits_final.json")):
        if os.path.isfile(source):
            merged = _merged_folds(os.path.join(archive, name), _read(source))
            if merged is not None:
                _write(os.path.join(archive, name), merged)
    if os.path.isfile(dataset_json):
        _copy(dataset_json, os.path.join(archive, "dataset.json"))
    for run in runs:
        _copy(os.path.join(work, "metrics", run + ".json"), os.path.join(archive, "metrics", run + ".json"))
        _copy_training_logs(os.path.join(work, "training_logs", run), os.path.join(archive, "training_logs", run))


PRETRAINING_FILES = ("checkpoint_final.pth", "debug.json")


def pretraining_runs(archive: str, trainer: str) -> List[str]:
    """The archive's folders of ``trainer``'s pretraining runs, oldest first: ``pretraining/<trainer>`` and, for each
    pretraining made again later, ``pretraining/<trainer>__run<N>`` (N = 2, 3, ...)."""
    root = os.path.join(archive, "pretraining")
    runs = [os.path.join(root, trainer)] if os.path.isdir(os.path.join(root, trainer)) else []
    number = 2
    while os.path.isdir(os.path.join(root, f"{trainer}__run{number}")):
        runs.append(os.path.join(root, f"{trainer}__run{number}"))
        number += 1
    return runs


def _log_names(folder: str) -> set:
    return {os.path.basename(p) for p in _training_logs(folder)}


def store_pretraining(archive: str, trainer: str, output_folder: str) -> str:
    """Copy a finished pretraining run (final checkpoint, debug.json, training logs) into the archive; returns the
    folder it went to.

    That is the archived run it continues (one that shares a training log with it: the same run, resumed or
    restored), or else a new ``__run<N>`` folder: a pretraining made again, on a machine that had not kept the
    first one's checkpoint, has other weights (CPU training is not bit-reproducible), and merging its logs and
    debug.json into the first one's would make one run of two."""
    runs = pretraining_runs(archive, trainer)
    logs = _log_names(output_folder)
    same = [r for r in runs if _log_names(r) & logs]
    if same:
        target = same[-1]
    elif not runs:
        target = os.path.join(archive, "pretraining", trainer)
    else:
        target = os.path.join(archive, "pretraining", f"{trainer}__run{len(runs) + 1}")
    for name in PRETRAINING_FILES:
        source = os.path.join(output_folder, name)
        # the checkpoint is final: copied once, not again for every run fine-tuned from it
        if os.path.isfile(source) and not (name == "checkpoint_final.pth"
                                           and os.path.isfile(os.path.join(target, name))):
            _copy(source, os.path.join(target, name))
    _copy_training_logs(output_folder, target)
    return target


def restore_pretraining(archive: str, trainer: str, output_folder: str) -> bool:
    """Put the latest archived pretraining run of ``trainer`` that has its checkpoint into ``output_folder`` unless
    that holds a finished one; True if it was restored."""
    with_checkpoint = [r for r in pretraining_runs(archive, trainer)
                       if os.path.isfile(os.path.join(r, "checkpoint_final.pth"))]
    if not with_checkpoint or os.path.isfile(os.path.join(output_folder, "checkpoint_final.pth")):
        return False
    source = with_checkpoint[-1]
    # the checkpoint last: a copy interrupted before it leaves no finished-looking run behind
    for name in sorted(os.listdir(source), key=lambda n: n == "checkpoint_final.pth"):
        _copy(os.path.join(source, name), os.path.join(output_folder, name))
    return True


UNFINISHED_FILES = ("debug.json", "checkpoint_latest.pth")  # the checkpoint last: see restore_unfinished


def store_unfinished(archive: str, run: str, work: str, output_folder: str) -> bool:
    """Copy a started, unfinished run (latest checkpoint, debug.json, training logs) into ``unfinished/<run>``;
    False if the run has written no checkpoint yet. Safe while the run trains: nnunet-ext writes its
    checkpoints by renaming a finished file into place, so the copy is of one whole checkpoint."""
    if not os.path.isfile(os.path.join(output_folder, "checkpoint_latest.pth")):
        return False
    target = os.path.join(archive, "unfinished", run)
    for name in UNFINISHED_FILES:
        if os.path.isfile(os.path.join(output_folder, name)):
            _copy(os.path.join(output_folder, name), os.path.join(target, name))
    _copy_training_logs(output_folder, target)
    _write(os.path.join(target, "where.json"), {"output_folder": os.path.relpath(output_folder, work)})
    return True


def restore_unfinished(archive: str, work: str) -> List[str]:
    """Put every archived unfinished run into its output folder in ``work`` where that folder holds no checkpoint
    and the run has not finished there; return the runs restored."""
    restored = []
    for folder in sorted(glob.glob(os.path.join(archive, "unfinished", "*", "where.json"))):
        source, run = os.path.dirname(folder), os.path.basename(os.path.dirname(folder))
        relative = _read(folder)["output_folder"]
        if os.path.isabs(relative) or relative.split(os.sep)[0] == "..":
            raise ArchiveMismatchError(f"{folder} names an output folder outside the work folder: {relative}")
        target = os.path.join(work, relative)
        if not os.path.isfile(os.path.join(source, "checkpoint_latest.pth")):
            continue  # its checkpoint was not kept (e.g. not committed): the run starts over, without old logs
        if (os.path.isfile(os.path.join(work, "metrics", run + ".json"))
                or any(os.path.isfile(os.path.join(target, c)) for c in ("checkpoint_latest.pth",
                                                                         "checkpoint_final.pth"))):
            continue
        _copy_training_logs(source, target)
        # the checkpoint last: a copy interrupted before it leaves no resumable-looking run behind
        for name in UNFINISHED_FILES:
            if os.path.isfile(os.path.join(source, name)):
                _copy(os.path.join(source, name), os.path.join(target, name))
        restored.append(run)
    return restored


def discard_unfinished(archive: str, run: str) -> None:
    """Drop the archived unfinished state of a run that has finished (its results are archived now)."""
    shutil.rmtree(os.path.join(archive, "unfinished", run), ignore_errors=True)
