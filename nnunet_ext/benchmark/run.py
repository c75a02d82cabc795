"""``nnUNetv2_ext_benchmark``: does a method beat plain nnU-Net with few labels, by how much, at what cost?

One command: generate a phantom dataset, plan and preprocess it with nnU-Net, add a small preset, write
few-label splits, train plain ``nnUNetTrainer`` and each method on the same splits, budget and seeds, predict the
held-out test cases with ``nnUNetv2_predict``, evaluate Dice and HD95 per organ, and write tables and a plot.
Every step is resumable: finished runs, predictions and evaluations are not redone. All data lives in the
benchmark's own work folder (its own nnUNet_raw / _preprocessed / _results), never in the user's.
"""
import argparse
import json
import os
import statistics
import sys
import time
from importlib import resources
from typing import Sequence

from nnunet_ext.benchmark.processes import exit_on_sigterm, run_child
from nnunet_ext.errors import UserInputError, positive_int, run_cli

DATASET_ID = 510
DATASET_NAME = "PhantomBenchmark"
# equal-wall-clock budgets: the method's and the baseline's training steps interleaved in one process
# (nnUNetv2_ext_benchmark_cost), after warm-up steps that absorb the first optimiser step and torch.compile
STEP_COST_STEPS, STEP_COST_WARMUP = 40, 3

MODES = {
    # <= 15 minutes on 2 CPU cores for the methods of methods.json that run in it (not the equal-wall-clock rows,
    # nor the entries marked "quick": false): shows the pipeline end to end, not converged. Sized for the slower
    # of the 2-core machines measured (docs/benchmarks.md), where nnU-Net's own start-up, final validation and
    # prediction take about 50 s per run whatever the budget
    "quick": dict(num_train=14, num_val=4, num_test=6, num_unlabeled=6, shape=(24, 48, 48),
                  configuration="3d_small", fractions=(0.2, 1.0), seeds=(0,), epochs=3, iterations=10,
                  val_iterations=2, tta=False, difficulty="standard"),
    # sized for a GPU (runs on a CPU in many hours): 3 seeds, 10/20/100 % labels. The hard phantom: on the
    # standard one plain nnU-Net reaches validation Dice 0.967 from 5 labeled cases, no headroom for a method.
    # 12,000 steps: with all labels plain nnU-Net learns every organ and flattens out (6,000 missed the pancreas;
    # docs/benchmarks.md), so differences between trainers measure label efficiency, not speed of learning.
    "full": dict(num_train=60, num_val=10, num_test=20, num_unlabeled=30, shape=(40, 80, 80),
                 configuration="3d_small", fractions=(0.1, 0.2, 1.0), seeds=(0, 1, 2), epochs=120, iterations=100,
                 val_iterations=10, tta=True, difficulty="hard"),
    # the full grid sized for 2 CPU cores: the same cases, anatomy, difficulty and budget on a 24x48x48 grid (the
    # whole volume is one 3d_small patch, 2.4x fewer voxels than full's 32x64x64 patch; a training step takes
    # 0.40x full's). 6,000 steps do not converge on it either (docs/benchmarks.md, "The CPU grid")
    "cpu": dict(num_train=60, num_val=10, num_test=20, num_unlabeled=30, shape=(24, 48, 48),
                configuration="3d_small", fractions=(0.1, 0.2, 1.0), seeds=(0, 1, 2), epochs=120, iterations=100,
                val_iterations=10, tta=True, difficulty="hard"),
}


def benchmark_methods() -> list:
    """The trainers to compare, from ``methods.json`` (add a method there, not in code)."""
    data = json.loads(resources.files("nnunet_ext.benchmark").joinpath("methods.json").read_text())
    return data["trainers"]


def method_name(method: dict) -> str:
    """A method's name in tables and file names: ``name`` if given, else the trainer."""
    return method.get("name", method["trainer"])


def pretraining_name(method: dict) -> str:
    """The name of the pretraining run a method fine-tunes from: its pretraining trainer, with the factor of a
    longer pretraining budget (``pretrain_epochs_factor`` in methods.json) when it has one."""
    factor = int(method.get("pretrain_epochs_factor", 1))
    return method["pretrain"] + (f"__{factor}xSteps" if factor != 1 else "")


def _bin(name: str) -> str:
    return os.path.join(os.path.dirname(sys.executable), name)


class Benchmark:
    """State and steps of one benchmark work folder."""

    def __init__(self, work: str, settings: dict, trainers: list, device: str, num_proc_da: int,
                 archive: str = None, parallel: int = 1):
        import threading

        self.work = os.path.abspath(work)
        self.archive = os.path.abspath(archive) if archive else None
        self.parallel = parallel
        self.threads_per_run = None  # set while runs train side by side
        self._archive_lock = threading.Lock()  # runs side by side finish in worker threads
        self._step_cost_lock = threading.Lock()  # one measurement per trainer, also with runs side by side
        self.settings = settings
        self.trainers = trainers
        self.device = device
        self.num_proc_da = num_proc_da
        self.paths = {k: os.path.join(self.work, k) for k in ("raw", "preprocessed", "results")}
        self.dataset = f"Dataset{DATASET_ID:03d}_{DATASET_NAME}"
        for sub in ("raw", "preprocessed", "results", "logs", "predictions", "metrics", "training_logs", "report"):
            os.makedirs(os.path.join(self.work, sub), exist_ok=True)

    # ------------------------------------------------------------ environment and commands
    def env(self, training: bool = False, results: str = None) -> dict:
        from nnunet_ext.env import extended_trainer_path

        env = dict(os.environ)
        env.pop("nnUNet_n_proc_DA", None)
        env.update({"nnUNet_raw": self.paths["raw"], "nnUNet_preprocessed": self.paths["preprocessed"],
                    "nnUNet_results": results or self.paths["results"], "nnUNet_def_n_proc": "2",
                    "nnUNet_extTrainer": extended_trainer_path(os.environ.get("nnUNet_extTrainer"))})
        if training:
            env["nnUNet_n_proc_DA"] = str(self.num_proc_da)  # training only: planning crashes with 0
        if self.threads_per_run:
            # runs side by side share the cores instead of each spinning a thread per core (oversubscribed OpenMP
            # threads made two trainings each about 4x slower)
            env["OMP_NUM_THREADS"] = str(self.threads_per_run)
        return env

    def command(self, args: list, log_name: str, training: bool = False, results: str = None) -> float:
        """Run a command with its output in ``logs/``; return its wall time. Raise with the log's tail on failure."""
        log_file = os.path.join(self.work, "logs", log_name)
        start = time.time()
        with open(log_file, "w") as log:
            returncode = run_child([str(a) for a in args], self.env(training, results), log, self._held_fds())
        if returncode != 0:
            tail = open(log_file).read()[-3000:]
            raise RuntimeError(f"{' '.join(map(str, args))} failed (exit {returncode}); log: {log_file}\n{tail}")
        return time.time() - start

    def _held_fds(self) -> tuple:
        # the child shares the work-folder lock: should this process die without stopping it (SIGKILL), no second
        # benchmark can start a training into the same output folder while it runs on
        lock_file = getattr(self, "_lock_file", None)
        return (lock_file.fileno(),) if lock_file is not None and not lock_file.closed else ()

    # ------------------------------------------------------------ results archive (--archive)
    @staticmethod
    def run_name(method: dict, fold) -> str:
        """A run's name in metrics/ and training_logs/."""
        return f"{method_name(method)}__fold{fold}"

    def splits_file(self) -> str:
        return os.path.join(self.paths["preprocessed"], self.dataset, "splits_final.json")

    def restore_archive(self, unfinished: bool = False):
        """Take the finished runs (and their folds) that the archive holds and this work folder lacks; with
        ``unfinished``, also the checkpoints of runs kept unfinished (``--keep-unfinished``), to resume them."""
        from nnunet_ext.benchmark import archive

        if not self.archive:
            return
        raw = os.path.join(self.paths["raw"], self.dataset)
        try:
            archive.check_settings(self.archive, self.settings)
            if os.path.isfile(os.path.join(raw, "dataset.json")):  # not for --report-only on a new work folder
                archive.check_data(self.archive, archive.dataset_fingerprint(raw))
            restored = archive.restore(self.archive, self.work, self.splits_file())
            if unfinished:
                restored += [f"{run} (unfinished: resumes from its checkpoint)"
                             for run in archive.restore_unfinished(self.archive, self.work)]
        except archive.ArchiveMismatchError as e:
            raise UserInputError(f"The archive {self.archive} does not belong to the work folder {self.work}: {e}. "
                                 f"Pass the --archive of this benchmark, or another --archive folder (a new one "
                                 f"is made) or --work folder.") from e
        for method in self.trainers:
            if method.get("pretrain") and archive.restore_pretraining(self.archive, pretraining_name(method),
                                                                      self.pretraining_folder(method)):
                restored.append(f"{pretraining_name(method)} pretraining")
        if restored:
            print(f"Restored from {self.archive}: {', '.join(restored)}")

    def keep_run(self, method: dict, fold):
        """Keep a finished run's training logs beside its metrics, and both in the archive (if any)."""
        from nnunet_ext.benchmark import archive

        run = self.run_name(method, fold)
        if not os.path.isdir(os.path.join(self.work, "training_logs", run)):
            archive.keep_training_logs(self.output_folder(method, fold), self.work, run)
        if self.archive:
            with self._archive_lock:
                archive.store(self.archive, self.work, self.splits_file(),
                              os.path.join(self.paths["raw"], self.dataset, "dataset.json"), [run])
                archive.discard_unfinished(self.archive, run)

    def keep_unfinished(self) -> str:
        """Copy the latest checkpoint of every started, unfinished run into the archive (``--keep-unfinished``),
        so that a machine that does not last hands its runs on; trains nothing, safe while the benchmark runs."""
        from nnunet_ext.benchmark import archive

        if not self.archive:
            raise UserInputError("--keep-unfinished copies into the archive: pass --archive DIR as well.")
        self.restore_archive()  # checks that the archive is this benchmark's, and merges the folds both ways:
        raw = os.path.join(self.paths["raw"], self.dataset)
        with self._archive_lock:  # the folds of unfinished runs too, so that the next machine numbers them alike
            archive.store(self.archive, self.work, self.splits_file(), os.path.join(raw, "dataset.json"), [])
        manifest_file = os.path.join(self.work, "splits_manifest.json")
        manifest = []
        if os.path.isfile(manifest_file):
            with open(manifest_file) as f:
                manifest = json.load(f)
        kept = []
        for entry in manifest:
            for method in self.trainers:
                fold, run = entry["fold"], self.run_name(method, entry["fold"])
                if (not os.path.isfile(os.path.join(self.work, "metrics", run + ".json"))
                        and archive.store_unfinished(self.archive, run, self.work, self.output_folder(method, fold))):
                    kept.append(f"{run}{self.progress_note(method, fold)}")
        for trainer, folder in {pretraining_name(m): self.pretraining_folder(m) for m in self.trainers
                                if m.get("pretrain")}.items():
            if (not os.path.isfile(os.path.join(folder, "checkpoint_final.pth"))
                    and archive.store_unfinished(self.archive, f"pretraining__{trainer}", self.work, folder)):
                kept.append(f"{trainer} pretraining")
        if not kept:
            return f"No started, unfinished run in {self.work}: nothing kept."
        return f"Kept in {os.path.join(self.archive, 'unfinished')}: " + "; ".join(kept)

    def training_logs(self, method: dict, fold) -> str:
        """The folder with a run's nnU-Net training logs: its output folder, or the copy kept when it finished
        (the only one for runs restored from an archive)."""
        kept = os.path.join(self.work, "training_logs", self.run_name(method, fold))
        return kept if os.path.isdir(kept) else self.output_folder(method, fold)

    # ------------------------------------------------------------ data
    def prepare_data(self):
        from nnunet_ext.phantom import PhantomExistsError, generate_dataset

        s = self.settings
        try:
            generate_dataset(self.paths["raw"], DATASET_ID, DATASET_NAME, num_train=s["num_train"],
                             num_test=s["num_test"], num_unlabeled=s["num_unlabeled"], shape=s["shape"], seed=0,
                             progress=False, difficulty=s.get("difficulty", "standard"))
        except PhantomExistsError as e:
            raise UserInputError(f"The work folder {self.work} was made with other data settings: {e} The "
                                 f"benchmark never regenerates its data in place (finished runs would no longer "
                                 f"match it); pass another --work folder.") from e
        plans = os.path.join(self.paths["preprocessed"], self.dataset, "nnUNetPlans.json")
        if not os.path.isfile(plans):
            self.command([_bin("nnUNetv2_plan_and_preprocess"), "-d", DATASET_ID, "-c", "3d_fullres", "-np", 2,
                          "--verify_dataset_integrity"], "plan_and_preprocess.log")
        if s["configuration"] not in ("3d_fullres", "2d", "3d_lowres"):
            self.command([_bin("nnUNetv2_ext_add_preset"), "-d", DATASET_ID, "-preset", s["configuration"]],
                         "add_preset.log")
        if s["num_unlabeled"] > 0:
            # incremental: finished cases are skipped on a re-run
            self.command([_bin("nnUNetv2_ext_preprocess_unlabeled"), "-d", DATASET_ID, "-c", s["configuration"],
                          "-np", 2], "preprocess_unlabeled.log")

    def write_splits(self) -> list:
        """Write the folds of the requested (fraction, seed) pairs; return their manifest entries.

        A work folder grows: folds of earlier runs keep their numbers (their results are named after them)
        and new fractions or seeds are appended, so a benchmark can be continued with more of them.
        """
        from nnunet_ext.benchmark.splits import extend_folds

        s = self.settings
        labels_tr = os.path.join(self.paths["raw"], self.dataset, "labelsTr")
        ids = sorted(f[:-len(".nii.gz")] for f in os.listdir(labels_tr) if f.endswith(".nii.gz"))
        splits_file = os.path.join(self.paths["preprocessed"], self.dataset, "splits_final.json")
        manifest_file = os.path.join(self.work, "splits_manifest.json")
        old_folds, old_manifest = [], []
        if os.path.isfile(splits_file):
            with open(splits_file) as f:
                old_folds = json.load(f)
            if os.path.isfile(manifest_file):
                with open(manifest_file) as f:
                    old_manifest = json.load(f)
        try:
            folds, manifest, requested = extend_folds(old_folds, old_manifest, ids, s["num_val"], s["fractions"],
                                                      s["seeds"])
        except ValueError as e:
            raise UserInputError(
                f"{splits_file} holds other splits than these settings make ({e}; the work folder {self.work} "
                f"was made with another --num-val or other data). Use another --work folder.") from e
        if folds != old_folds:
            for path, obj in ((splits_file, folds), (manifest_file, manifest)):
                with open(path + ".tmp", "w") as f:  # nnU-Net may be reading the splits of a running fold
                    json.dump(obj, f, indent=1)
                os.replace(path + ".tmp", path)
        return requested

    # ------------------------------------------------------------ pretraining (methods with a "pretrain" entry)
    def results_root(self, method: dict) -> str:
        """nnU-Net results folder of a method: its own when it trains a stock trainer differently (fine-tuned
        from pretrained weights, or with another budget), so that its runs never share a results folder with
        the same trainer trained from scratch at the common budget."""
        if method.get("pretrain") or method.get("same_time_as"):
            return os.path.join(self.work, f"results_{method_name(method)}")
        return self.paths["results"]

    def output_folder(self, method: dict, fold) -> str:
        return os.path.join(self.results_root(method), self.dataset,
                            f"{method['trainer']}__nnUNetPlans__{self.settings['configuration']}", f"fold_{fold}")

    def same_time_epochs(self, method: dict) -> tuple:
        """(epochs, ratio) that give ``method['trainer']`` the training time of ``method['same_time_as']``: the
        common epoch budget times the ratio of the two trainers' step times (:meth:`step_cost_ratio`).

        One ratio for every fold and seed. Epoch times of the finished runs would not do: a long CPU benchmark's
        runs span machines of different speed, and with ``--parallel`` an epoch's time depends on its neighbour.
        """
        from nnunet_ext.benchmark.budget import matched_epochs

        methods = {method_name(m): m for m in benchmark_methods()}
        reference = methods.get(method["same_time_as"])
        if reference is None:
            raise UserInputError(f"methods.json: '{method_name(method)}' takes the time of "
                                 f"'{method['same_time_as']}', which methods.json does not list.")
        ratio = self.step_cost_ratio(reference["trainer"])
        return matched_epochs(self.settings["epochs"], ratio), ratio

    def baseline_trainer(self) -> str:
        return next(m["trainer"] for m in benchmark_methods() if m.get("baseline"))

    def step_cost_file(self, trainer: str) -> str:
        return os.path.join(self.work, "step_cost", f"{trainer}.json")

    def step_cost_ratio(self, trainer: str) -> float:
        """Step time of ``trainer`` over the baseline trainer's on this benchmark's data and configuration,
        measured once per work folder with ``nnUNetv2_ext_benchmark_cost`` (steps interleaved in one process, so
        that the machine's speed and the load beside it hit both alike) and kept in ``step_cost/`` (and the
        archive). Data loading and augmentation are not in it: they cost the same per step for every trainer, so
        the baseline's time is somewhat overestimated and the comparison errs against the method."""
        from nnunet_ext.benchmark.budget import measured_step_ratio

        baseline, path = self.baseline_trainer(), self.step_cost_file(trainer)
        with self._step_cost_lock:
            if not os.path.isfile(path):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                self.command([_bin("nnUNetv2_ext_benchmark_cost"), "-d", DATASET_ID, "-c",
                              self.settings["configuration"], "-device", self.device, "--baseline", baseline,
                              "-tr", trainer, "--steps", STEP_COST_STEPS, "--warmup", STEP_COST_WARMUP,
                              "--no-memory", "--no-inference", "-o", path + ".tmp"], f"step_cost__{trainer}.log")
                os.replace(path + ".tmp", path)
                if self.archive:
                    from nnunet_ext.benchmark import archive

                    with self._archive_lock:
                        archive.store_step_cost(self.archive, path)
        try:
            return measured_step_ratio(path, trainer, baseline)
        except ValueError as e:
            raise UserInputError(f"{e} Delete {path} (and its copy in the archive, if any) to measure it again.") \
                from None

    def pretraining_root(self, method: dict) -> str:
        """nnU-Net results folder of the pretraining run that ``method`` fine-tunes from; a longer pretraining of
        the same trainer has its own."""
        return os.path.join(self.work, "results_pretraining" + pretraining_name(method)[len(method["pretrain"]):])

    def pretraining_folder(self, method: dict) -> str:
        """nnU-Net's output folder of the pretraining run that ``method`` fine-tunes from."""
        return os.path.join(self.pretraining_root(method), self.dataset,
                            f"{method['pretrain']}__nnUNetPlans__{self.settings['configuration']}", "fold_all")

    def pretraining_log(self, method: dict):
        """The first training log of the pretraining run ``method`` fine-tuned from (its start time names it, also in
        the archive, where a pretraining made again on another machine is another run); None without one."""
        from nnunet_ext.benchmark.budget import training_log_files

        logs = training_log_files(self.pretraining_folder(method)) if method.get("pretrain") else []
        return os.path.basename(logs[0]) if logs else None

    def pretrain(self, method: dict) -> tuple:
        """Pretrain once (fold 'all', the step budget of one run, times ``pretrain_epochs_factor`` if given) on the
        pool; returns (checkpoint, seconds).

        One pretraining per pretraining trainer and budget, in its own results folder: every method that
        fine-tunes from it (e.g. plain nnU-Net and the combined trainer from Volume Fusion) starts from the same
        weights, and seconds is None when an earlier run already made them."""
        from nnunet_ext.benchmark.budget import recorded_budget, step_budget

        s = self.settings
        trainer, name = method["pretrain"], pretraining_name(method)
        epochs = s["epochs"] * int(method.get("pretrain_epochs_factor", 1))
        folder = self.pretraining_folder(method)
        root, checkpoint = self.pretraining_root(method), os.path.join(folder, "checkpoint_final.pth")
        seconds = None
        self.refuse_other_budget(recorded_budget(folder), step_budget(epochs, s["iterations"], s["val_iterations"]),
                                 f"a {name} pretraining run ({folder})")
        if not os.path.isfile(checkpoint):
            self.command([_bin("nnUNetv2_ext_prepare_pretraining"), "-d", DATASET_ID, "-c", s["configuration"],
                          "-np", 2], f"prepare_pretraining__{trainer}.log")
            seconds = self.command(
                [sys.executable, "-m", "nnunet_ext.benchmark.train", DATASET_ID, s["configuration"], "all", "-tr",
                 trainer, "--epochs", epochs, "--iterations", s["iterations"], "--val-iterations",
                 s["val_iterations"], "--seed", 0, "-device", self.device],
                f"pretrain__{name}.log", training=True, results=root)
        if self.archive:
            from nnunet_ext.benchmark import archive

            with self._archive_lock:
                archive.store_pretraining(self.archive, name, folder)
                archive.discard_unfinished(self.archive, f"pretraining__{name}")
        return checkpoint, seconds

    def refuse_other_budget(self, recorded: dict, expected: dict, what: str):
        """Stop before a run of another step budget is reused or resumed: its numbers would enter the table as
        if trained with these settings (finished runs are cached per method and fold, not per budget)."""
        from nnunet_ext.benchmark.budget import budget_mismatch

        mismatch = budget_mismatch(recorded, expected)
        if mismatch:
            raise UserInputError(
                f"The work folder {self.work} holds {what}, but {mismatch}. A work folder keeps one step budget, "
                f"so that its table never mixes budgets: pass another --work folder for this budget, or the "
                f"--epochs/--iterations/--val-iterations it was made with.")

    # ------------------------------------------------------------ one run
    def metrics_path(self, method: dict, fold) -> str:
        """Where a finished run of ``method`` on ``fold`` keeps its metrics (the run is finished when it exists)."""
        return os.path.join(self.work, "metrics", f"{method_name(method)}__fold{fold}.json")

    def finished_run(self, method: dict, fold, epochs=None):
        """The metrics of a finished run of ``method`` on ``fold`` (None if there are none), after checking that
        it was trained with ``epochs`` epochs of this benchmark's steps (``None``: the epochs it recorded)."""
        from nnunet_ext.benchmark.budget import recorded_budget, step_budget

        name, s = method_name(method), self.settings
        metrics_file = self.metrics_path(method, fold)
        if not os.path.isfile(metrics_file):
            return None
        with open(metrics_file) as f:
            cached = json.load(f)
        expected = step_budget(cached["epochs"] if epochs is None else epochs, s["iterations"], s["val_iterations"])
        # metrics written before the budget was recorded in them: the run folder's debug.json tells
        self.refuse_other_budget(cached.get("budget") or recorded_budget(self.output_folder(method, fold)), expected,
                                 f"a finished run of {name} on fold {fold}")
        return cached

    def run_one(self, method: dict, entry: dict) -> dict:
        """Train, predict and evaluate one (method, fold); cached in ``metrics/``."""
        from nnunet_ext.benchmark.budget import epoch_seconds, recorded_budget, step_budget, validation_dice

        fold, trainer, name = entry["fold"], method["trainer"], method_name(method)
        metrics_file = self.metrics_path(method, fold)
        s = self.settings
        root = self.results_root(method)
        output = self.output_folder(method, fold)
        epochs, time_ratio = s["epochs"], None
        if method.get("same_time_as"):
            cached = self.finished_run(method, fold)  # with the epochs it was given
            if cached is not None:
                return cached
            epochs, time_ratio = self.same_time_epochs(method)
        budget = step_budget(epochs, s["iterations"], s["val_iterations"])
        cached = self.finished_run(method, fold, epochs)
        if cached is not None:
            return cached
        self.refuse_other_budget(recorded_budget(output), budget, f"a run of {name} on fold {fold} ({output})")
        train_seconds = pretrain_seconds = None
        if not os.path.isfile(os.path.join(output, "validation", "summary.json")):
            args = [sys.executable, "-m", "nnunet_ext.benchmark.train", DATASET_ID, s["configuration"], fold, "-tr",
                    trainer, "--epochs", epochs, "--iterations", s["iterations"], "--val-iterations",
                    s["val_iterations"], "--seed", entry["seed"], "-device", self.device]
            if method.get("pretrain"):
                checkpoint, pretrain_seconds = self.pretrain(method)
                args += ["--pretrained-weights", checkpoint]
            train_seconds = self.command(args, f"train__{name}__fold{fold}.log", training=True, results=root)
        predictions = os.path.join(self.work, "predictions", name, f"fold_{fold}")
        predict = [_bin("nnUNetv2_predict"), "-i", os.path.join(self.paths["raw"], self.dataset, "imagesTs"),
                   "-o", predictions, "-d", DATASET_ID, "-c", s["configuration"], "-f", fold, "-tr", trainer,
                   "-device", self.device, "-npp", 1, "-nps", 1]
        if not s["tta"]:
            predict.append("--disable_tta")
        predict_seconds = self.command(predict, f"predict__{name}__fold{fold}.log", results=root)
        logged = epoch_seconds(output)
        result = dict(entry, trainer=name, train_seconds=train_seconds, predict_seconds=predict_seconds,
                      validation_dice=validation_dice(output),
                      pretrain=pretraining_name(method) if method.get("pretrain") else None,
                      pretraining_log=self.pretraining_log(method), pretrain_seconds=pretrain_seconds, epochs=epochs,
                      median_epoch_seconds=statistics.median(logged) if logged else None,
                      time_ratio=time_ratio, budget=budget, cases=self.evaluate(predictions))
        with open(metrics_file + ".tmp", "w") as f:
            json.dump(result, f, indent=1)
        os.replace(metrics_file + ".tmp", metrics_file)
        return result

    def evaluate(self, predictions: str) -> dict:
        import SimpleITK as sitk

        from nnunet_ext.benchmark.metrics import case_metrics

        labels_ts = os.path.join(self.paths["raw"], self.dataset, "labelsTs")
        with open(os.path.join(self.paths["raw"], self.dataset, "dataset.json")) as f:
            labels = [v for v in json.load(f)["labels"].values() if v != 0]
        cases = {}
        for name in sorted(os.listdir(labels_ts)):
            if not name.endswith(".nii.gz"):
                continue
            reference = sitk.ReadImage(os.path.join(labels_ts, name))
            prediction = sitk.ReadImage(os.path.join(predictions, name))
            spacing = reference.GetSpacing()[::-1]  # SimpleITK (x, y, z) -> array (z, y, x)
            cases[name[:-len(".nii.gz")]] = case_metrics(sitk.GetArrayFromImage(prediction),
                                                         sitk.GetArrayFromImage(reference), labels, spacing)
        return cases

    # ------------------------------------------------------------ report
    def report(self, results: list, missing: Sequence[str] = ()) -> str:
        from nnunet_ext.benchmark import report

        dataset_json = os.path.join(self.paths["raw"], self.dataset, "dataset.json")
        if not os.path.isfile(dataset_json):  # a work folder restored from an archive for --report-only
            dataset_json = os.path.join(self.work, "dataset.json")
        with open(dataset_json) as f:
            label_names = {v: k for k, v in json.load(f)["labels"].items() if v != 0}
        rows = [dict(trainer=r["trainer"], fraction=r["fraction"], seed=r["seed"], num_labeled=r["num_labeled"],
                     case=case, label=int(label), dice=m["dice"], hd95=m["hd95"])
                for r in results for case, per_label in r["cases"].items() for label, m in per_label.items()]
        summary = report.summarise(rows)
        trainers = [method_name(t) for t in self.trainers]
        baseline = next((method_name(t) for t in self.trainers if t.get("baseline")), trainers[0])
        out = os.path.join(self.work, "report")
        report.write_case_csv(rows, os.path.join(out, "results_per_case.csv"))
        report.write_summary_csv(summary, label_names, os.path.join(out, "results_summary.csv"))
        text = report.markdown(summary, trainers, label_names, baseline, rows)
        results = self.with_run_records(results)
        text += "\n".join(report.validation_lines(results, trainers, baseline)) + "\n"
        text += "\n" + self.cost_table(results, trainers, baseline)
        if missing:
            text += f"\nNot finished yet, so not in these tables: {'; '.join(missing)}.\n"
        with open(os.path.join(out, "results.md"), "w") as f:
            f.write(text)
        report.plot(summary, trainers, os.path.join(out, "dice_vs_fraction.png"),
                    title=f"{DATASET_NAME}: {self.settings['epochs'] * self.settings['iterations']} steps per run")
        return text

    def with_run_records(self, results: list) -> list:
        """The results with what their runs' nnU-Net records say: from the training logs ``epoch_seconds_total``,
        the sum of the epoch times (each epoch once, also for a resumed run), and ``training_calls``, the number of
        starts of the training (one log each; a resumed run's ``train_seconds`` covers only its last); and
        ``validation_dice`` from nnU-Net's final validation where the metrics predate the field and the run
        folder is here."""
        from nnunet_ext.benchmark.budget import seconds_per_epoch, training_log_files, validation_dice

        methods = {method_name(m): m for m in self.trainers}
        timed = []
        for r in results:
            method = methods.get(r["trainer"])
            if method is None or r.get("fold") is None:
                timed.append(r)
                continue
            folder = self.training_logs(method, r["fold"])
            per_epoch = seconds_per_epoch(folder)
            complete = per_epoch and len(per_epoch) == r.get("epochs")
            validation = r.get("validation_dice")
            if validation is None:
                validation = validation_dice(self.output_folder(method, r["fold"]))
            timed.append(dict(r, training_calls=len(training_log_files(folder)) or None,
                              epoch_seconds_total=sum(per_epoch.values()) if complete else None,
                              validation_dice=validation))
        return timed

    @staticmethod
    def cost_table(results: list, trainers: list, baseline: str) -> str:
        """Training time per trainer relative to the baseline (runs of this benchmark, same machine).

        Three measures, since a long CPU benchmark resumes and pauses runs: the sum of nnU-Net's epoch times
        (``epoch_seconds_total``, each epoch once, unaffected by resuming), nnU-Net's median epoch time, and the
        wall time of the training call (start-up and final validation included), which is only kept for runs
        trained in one call (``training_calls``; metrics without the field count as one call)."""
        def timed(key, t):
            """(fraction, seed) -> the run's value, for the runs of ``t`` that have one."""
            return {(r["fraction"], r["seed"]): r[key] for r in results if r["trainer"] == t and r.get(key)
                    and (key != "train_seconds" or (r.get("training_calls") or 1) == 1)}

        def cells(key, t):
            values, base = timed(key, t), timed(key, baseline)
            if not values:
                return "— | —"
            mean = sum(values.values()) / len(values)
            # relative to the baseline's runs on the same fractions and seeds: runs differ in fraction (epoch
            # times do: the unlabeled batch of a semi-supervised method) and in what trained beside them
            common = sorted(set(values) & set(base))
            ratio = (f"{sum(values[k] for k in common) / sum(base[k] for k in common):.2f}×" if common else "—")
            return f"{mean:.{1 if key == 'median_epoch_seconds' else 0}f} | {ratio}"

        keys = ("epoch_seconds_total", "median_epoch_seconds", "train_seconds")
        lines = ["Training time per run, same budget in steps for every trainer: the sum of nnU-Net's epoch times "
                 "(each epoch once, also in a run resumed from a checkpoint; without start-up and final "
                 "validation), nnU-Net's median epoch time, and the wall time of the training call with start-up "
                 "and final validation, over the runs trained in one call (a resumed run's covers only its last "
                 "call); each ratio to the baseline over the runs of both on the same fractions and seeds:", "",
                 "| trainer | training s per run (epochs) | relative to baseline | median epoch s | relative to "
                 "baseline | wall s per run (one call) | relative to baseline |",
                 "|---|---|---|---|---|---|---|"]
        for t in trainers:
            if any(timed(key, t) for key in keys):
                lines.append(f"| {t} | " + " | ".join(cells(key, t) for key in keys) + " |")
        for r in results:
            if r.get("time_ratio"):
                lines.append(f"\n{r['trainer']} ({r['fraction']:.0%}, seed {r['seed']}): {r['epochs']} epochs instead "
                             f"of the common budget's, i.e. {r['time_ratio']:.2f}× the steps: the baseline given the "
                             f"training time of the method it names (the ratio of the two trainers' step times, "
                             f"measured side by side in one process; WORK/step_cost/). Its row is the "
                             f"equal-wall-clock comparison; every other row compares at equal steps.")
        for pretrainer in sorted({r["pretrain"] for r in results if r.get("pretrain")}):
            runs = [r for r in results if r.get("pretrain") == pretrainer]
            seconds = [r["pretrain_seconds"] for r in runs if r.get("pretrain_seconds")]
            names = ", ".join(dict.fromkeys(r["trainer"] for r in runs))
            took = f" of {seconds[0]:.0f} s" if seconds else ""
            lines.append(f"\n{names}: plus one {pretrainer} pretraining run{took}, shared by all these fine-tuning "
                         f"runs.")
        return "\n".join(lines) + "\n"

    def lock(self):
        """Hold the work folder for this process (released when it exits, also when it is killed).

        Two benchmarks in one folder would train the same run into the same nnU-Net output folder. Runs side by
        side belong in one benchmark (``--parallel``), which shares the cores out between them: two trainings
        that each take every core were each about 4x slower on 2 cores (measured).
        """
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; the benchmark runs unguarded
            return
        path = os.path.join(self.work, "benchmark.lock")
        self._lock_file = open(path, "a+")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.seek(0)
            holder = self._lock_file.read().strip() or "unknown"
            self._lock_file.close()
            raise UserInputError(
                f"Another nnUNetv2_ext_benchmark is running in the work folder {self.work} (process {holder}, or a "
                f"training it started that still runs). "
                f"Wait for it to finish (it keeps every finished run), or stop it and run this command again; "
                f"for a separate benchmark pass another --work folder.") from None
        self._lock_file.seek(0)
        self._lock_file.truncate()
        self._lock_file.write(str(os.getpid()))
        self._lock_file.flush()

    def run(self) -> str:
        from tqdm import tqdm

        self.lock()
        self.prepare_data()
        self.restore_archive(unfinished=True)
        manifest = self.write_splits()
        jobs = [(t, entry) for entry in manifest for t in self.trainers]
        return self.report(self.run_jobs(jobs))

    @staticmethod
    def job_label(method: dict, entry: dict) -> str:
        return f"{method_name(method)} {entry['fraction']:.0%} seed {entry['seed']}"

    def run_and_keep(self, method: dict, entry: dict) -> dict:
        result = self.run_one(method, entry)
        self.keep_run(method, entry["fold"])
        return result

    def job_dependencies(self, jobs: list) -> list:
        """Per job, the earlier jobs it must wait for when runs train side by side: a fine-tuning run whose
        pretraining is not made yet waits for the first job that makes it (one pretraining run, shared).
        Equal-wall-clock runs wait for nothing: their budget comes from a step-time measurement of their own."""
        makes_pretraining = {}
        dependencies = []
        for i, (method, entry) in enumerate(jobs):
            needs = set()
            pretrain = pretraining_name(method) if method.get("pretrain") else None
            if pretrain and not os.path.isfile(os.path.join(self.pretraining_folder(method), "checkpoint_final.pth")):
                if pretrain in makes_pretraining:
                    needs.add(makes_pretraining[pretrain])
                else:
                    makes_pretraining[pretrain] = i
            dependencies.append(needs)
        return dependencies

    def run_jobs(self, jobs: list) -> list:
        """Train ``self.parallel`` runs at a time (one after the other by default), in job order as far as
        dependencies allow; results in job order. Runs side by side share the CPU threads out (``env``). The
        first failure, Ctrl-C or ``kill`` stops every running training (they resume from their checkpoints on
        the next call)."""
        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

        from tqdm import tqdm

        from nnunet_ext.benchmark.processes import stop_children

        # finished runs are only read back: the cores go to the runs left to train (one left: all of them)
        to_train = sum(not os.path.isfile(self.metrics_path(method, entry["fold"])) for method, entry in jobs)
        at_once = min(self.parallel, max(1, to_train))
        dependencies = self.job_dependencies(jobs)
        results, pending, running, done = [None] * len(jobs), list(range(len(jobs))), {}, set()
        if self.device == "cpu" and at_once > 1:
            self.threads_per_run = max(1, (os.cpu_count() or 1) // at_once)
        with ThreadPoolExecutor(max(1, at_once)) as pool, tqdm(total=len(jobs), desc="benchmark runs",
                                                               unit="run") as bar:
            try:
                while pending or running:
                    for i in [i for i in pending if dependencies[i] <= done][:at_once - len(running)]:
                        pending.remove(i)
                        running[pool.submit(self.run_and_keep, *jobs[i])] = i
                    bar.set_postfix_str(" | ".join(self.job_label(*jobs[i]) for i in sorted(running.values())))
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in finished:
                        i = running.pop(future)
                        results[i] = future.result()  # a failed run raises here
                        done.add(i)
                        bar.update()
            except BaseException:
                stop_children()
                raise
            finally:
                self.threads_per_run = None
        return results

    def progress_note(self, method: dict, fold) -> str:
        """How far an unfinished run has got, from nnU-Net's training logs ('' when it has not started)."""
        from nnunet_ext.benchmark.curves import read_run

        def epochs_done(folder):
            try:
                return max(read_run(folder)) + 1
            except FileNotFoundError:  # no log with a finished epoch yet
                return 0

        of = "" if method.get("same_time_as") else f" of {self.settings['epochs']}"
        done = epochs_done(self.output_folder(method, fold))
        if done:
            return f" (training: {done}{of} epochs done)"
        if method.get("pretrain"):
            done = epochs_done(self.pretraining_folder(method))
            if done:
                total = self.settings["epochs"] * int(method.get("pretrain_epochs_factor", 1))
                return f" (pretraining: {done} of {total} epochs done)"
        return ""

    def report_finished(self) -> str:
        """The report of the runs this work folder has finished, without generating, training or predicting
        anything (a benchmark run piece by piece can be looked at while it goes on). Lists what is missing."""
        self.restore_archive()
        manifest_file = os.path.join(self.work, "splits_manifest.json")
        if not os.path.isfile(manifest_file):
            raise UserInputError(f"{self.work} holds no benchmark (no splits_manifest.json): run "
                                 f"nnUNetv2_ext_benchmark without --report-only first.")
        s = self.settings
        with open(manifest_file) as f:
            manifest = [e for e in json.load(f) if e["fraction"] in s["fractions"] and e["seed"] in s["seeds"]]
        results, missing = [], []
        made = {(e["fraction"], e["seed"]) for e in manifest}
        missing += [f"every trainer at {fraction:.0%} seed {seed} (no fold yet)" for fraction in s["fractions"]
                    for seed in s["seeds"] if (fraction, seed) not in made]
        for entry in manifest:
            for method in self.trainers:
                # an equal-wall-clock row keeps the epoch count it was given; the steps per epoch are common
                cached = self.finished_run(method, entry["fold"], None if method.get("same_time_as") else s["epochs"])
                if cached is None:
                    missing.append(f"{method_name(method)} {entry['fraction']:.0%} seed {entry['seed']}"
                                   f"{self.progress_note(method, entry['fold'])}")
                else:
                    results.append(cached)
        if not results:
            raise UserInputError(f"No run of these settings has finished in {self.work} yet; nothing to report.")
        return self.report(results, missing)


def _per_mode(key: str) -> str:
    return ", ".join(f"{mode}: {settings[key]}" for mode, settings in MODES.items())


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_ext_benchmark",
        description="Label-efficiency benchmark on a generated multi-organ phantom: trains plain nnUNetTrainer "
                    "and each method of nnunet-ext (listed in nnunet_ext/benchmark/methods.json) on the same "
                    "few-label splits, budget and seeds, predicts the test cases with nnUNetv2_predict and reports "
                    "Dice and HD95 (tables in CSV and Markdown, a plot as PNG) under WORK/report/. Resumable: "
                    "run the same command again to continue.")
    parser.add_argument("--mode", choices=tuple(MODES), default="full",
                        help="quick: small settings that finish in about 15 minutes on 2 CPU cores and show the "
                             "pipeline, not the methods; cpu: the whole grid (10/20/100 %% labels, 3 seeds) sized "
                             "for 2 CPU cores; full (default): the grid on larger volumes, sized for a GPU")
    parser.add_argument("--quick", action="store_true", help="the same as --mode quick")
    parser.add_argument("--work", default=None, help="work folder (default: work_data/benchmark_MODE)")
    parser.add_argument("-tr", "--trainers", nargs="+", default=None,
                        help="only these trainers (default: all in methods.json)")
    parser.add_argument("--report-only", action="store_true",
                        help="write the report from the runs already finished in the work folder and list the "
                             "missing ones; generates, trains and predicts nothing (safe while a benchmark runs)")
    parser.add_argument("--archive", default=None,
                        help="also keep every finished run's results (per-case metrics, nnU-Net's training logs, the "
                             "folds: small text files) in this folder, and take the runs it holds into the work "
                             "folder: to continue a long benchmark on another machine or after the work folder is "
                             "lost (the data is regenerated identically; checkpoints of unfinished runs only "
                             "with --keep-unfinished)")
    parser.add_argument("--keep-unfinished", action="store_true",
                        help="copy the latest checkpoint (about 3 MB for the benchmark's network, twice that with "
                             "a teacher) and logs of every started, unfinished run into --archive, for a machine "
                             "that will not last: the next benchmark call with that archive resumes them instead "
                             "of starting over; trains nothing, safe while a benchmark runs")
    parser.add_argument("-device", default="cpu", choices=("cpu", "cuda", "mps"))
    parser.add_argument("--num-proc-DA", type=int, default=2, help="augmentation workers per training run")
    parser.add_argument("--parallel", type=positive_int, default=1,
                        help="train this many runs at a time, each with its share of the CPU cores (on 2 cores, "
                             "2 runs side by side did 1.1-1.3x the work of one run with both cores; "
                             "docs/benchmarks.md). Epoch times, and so the report's time ratios, then include the "
                             "other runs' load; equal-wall-clock budgets do not (they come from a step-time "
                             "ratio measured side by side in one process). Default: 1")
    for key, kind in (("num_train", int), ("num_val", int), ("num_test", int), ("num_unlabeled", int),
                      ("epochs", int), ("iterations", int), ("val_iterations", int)):
        parser.add_argument("--" + key.replace("_", "-"), type=kind, default=None,
                            help=f"override the mode's {key} ({_per_mode(key)})")
    parser.add_argument("--shape", type=int, nargs=3, default=None, help="phantom volume shape (z y x)")
    parser.add_argument("--fractions", type=float, nargs="+", default=None, help="labeled fractions")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("-c", "--configuration", default=None, help="nnU-Net configuration or preset name")
    parser.add_argument("--tta", default=None, choices=("on", "off"), help="mirroring at prediction")
    parser.add_argument("--difficulty", default=None, choices=("standard", "hard"),
                        help=f"phantom difficulty (nnUNetv2_ext_generate_phantom --help; {_per_mode('difficulty')})")
    args = parser.parse_args(argv)
    if args.quick and args.mode not in ("quick", "full"):
        parser.error(f"--quick contradicts --mode {args.mode}")
    mode = "quick" if args.quick else args.mode
    if args.keep_unfinished and args.report_only:
        parser.error("--keep-unfinished and --report-only are two separate calls")

    def run():
        settings = dict(MODES[mode])
        for key in ("num_train", "num_val", "num_test", "num_unlabeled", "epochs", "iterations", "val_iterations",
                    "shape", "fractions", "seeds", "configuration", "difficulty"):
            if getattr(args, key) is not None:
                settings[key] = getattr(args, key)
        if args.tta is not None:
            settings["tta"] = args.tta == "on"
        methods = benchmark_methods()
        if mode == "quick" and not args.trainers:
            # quick runs are dominated by start-up and final validation: their times say nothing per step; and
            # entries marked "quick": false would push it past its 15 minutes
            methods = [m for m in methods if not m.get("same_time_as") and m.get("quick", True)]
        if args.trainers:
            known = {method_name(t): t for t in methods}
            unknown = [t for t in args.trainers if t not in known]
            if unknown:
                raise UserInputError(f"Unknown benchmark trainers {unknown}; methods.json lists {sorted(known)}.")
            methods = [known[t] for t in args.trainers]
        work = args.work or os.path.join("work_data", f"benchmark_{mode}")
        print(f"nnunet-ext benchmark ({mode}) in {os.path.abspath(work)} with {json.dumps(settings)}")
        benchmark = Benchmark(work, settings, methods, args.device, args.num_proc_DA, args.archive, args.parallel)
        if args.keep_unfinished:
            text = benchmark.keep_unfinished()
        elif args.report_only:
            text = benchmark.report_finished()
        else:
            text = benchmark.run()
        print(text)
        print(f"Tables, CSVs and the plot are in {os.path.join(os.path.abspath(work), 'report')}")

    import signal

    signal.signal(signal.SIGTERM, exit_on_sigterm)
    run_cli(run, parser.prog)


if __name__ == "__main__":
    main()
