"""``nnUNetv2_ext_benchmark_cost``: what a trainer costs relative to a baseline trainer, measured in one run.

Every trainer is built from the same plans and configuration, starts from the same initial weights (the
torch seed is reset before each is built) and trains on the same batches, drawn once from nnU-Net's own
training pipeline (the baseline trainer's, with in-process augmentation) and kept in memory. Three costs:

* training-step time: the steps of all trainers are interleaved (step i of every trainer before step
  i + 1, the order rotated every step), so that drifts of the machine (clock, other jobs) hit all alike;
  on CUDA the device is synchronised around each timed step. Warm-up steps (which absorb torch.compile,
  cuDNN autotuning and the first optimiser step) are not counted.
* training memory: the peak during the training steps after warm-up minus what was resident after
  initialisation, i.e. activations, gradients, optimiser state and teacher outputs (see
  :data:`MEMORY_DEFINITION`).
* inference time through nnU-Net's own ``nnUNetPredictor`` (sliding window, no mirroring) on one
  preprocessed case, from a checkpoint each trainer writes, also interleaved.

Nothing is written to the user's results: ``nnUNet_results`` points at a temporary folder for the run.
As in ``nnUNetv2_train``, nnU-Net may write ``splits_final.json`` into the preprocessed folder if it is missing.
"""
import argparse
import contextlib
import gc
import io
import json
import multiprocessing
import os
import platform
import shlex
import sys
import tempfile
import time
from importlib import metadata
from os.path import isdir, isfile, join
from typing import Dict, List, Optional

import numpy as np
import torch

from nnunet_ext import __version__
from nnunet_ext.env import extended_trainer_path
from nnunet_ext.errors import UserInputError, positive_int, run_cli

PROG = "nnUNetv2_ext_benchmark_cost"
DEFAULT_BASELINE = "nnUNetTrainer"
DEFAULT_TRAINERS = ("nnUNetTrainerMedContext", "nnUNetTrainerMedContext_halfBatch",
                    "nnUNetTrainerMedContext_noTeacher")
RECOMMENDED_STEPS = 20
RECOMMENDED_INFERENCE_REPEATS = 5
MIB = 2 ** 20

# Training-step cost relative to nnUNetTrainer in units of one forward pass (a backward pass counts 2):
# baseline fwd+bwd on B = 3. MedContext: student fwd+bwd on 2B = 6, teacher fwd on B = 1 -> 7/3.
# halfBatch: student on B = 3, teacher fwd counted on the whole batch = 1 -> 4/3 (an upper bound: the
# teacher sees half the batch). noTeacher: student on 2B = 6 -> 2. Subclasses inherit their parent's floor.
ARITHMETIC_FLOOR = {
    # Volume Fusion: the baseline's step on a fused batch (the fusion itself is elementwise)
    "nnUNetTrainerVolumeFusion": 1.0,
    # SimCVD: student fwd+bwd on B labeled + B unlabeled = 6, teacher fwd on B unlabeled = 1 -> 7/3
    "nnUNetTrainerSimCVD": 7 / 3,
    # SimCVD + MedContext: student fwd+bwd on B labeled + B unlabeled + B masked = 9, teacher fwd on B unlabeled
    # + B labeled = 2 -> 11/3
    "nnUNetTrainerSimCVDMedContext": 11 / 3,
    "nnUNetTrainerMedContext": 7 / 3,
    "nnUNetTrainerMedContext_halfBatch": 4 / 3,
    "nnUNetTrainerMedContext_noTeacher": 2.0,
}

MEMORY_DEFINITION = {
    "cuda": "training working memory on CUDA: torch.cuda.max_memory_allocated() during each training step "
            "(reset before the step), minus the memory the other trainers sharing the device held at that "
            "moment, minus this trainer's memory allocated right after initialisation (network and extra "
            "modules such as teachers and heads); the maximum over the steps after warm-up. It covers "
            "activations, gradients, optimiser state and autocast copies, not the CUDA context or the caching "
            "allocator's unused reserve.",
    "cpu": "training working memory on CPU: each trainer runs its steps alone in a fresh process "
           "(multiprocessing 'spawn') on the same batches: peak RSS of the steps after warm-up (VmHWM, "
           "reset through /proc/self/clear_refs after warm-up) minus RSS after initialisation and loading "
           "the batches (VmRSS). It covers activations, gradients, optimiser state and allocator overhead, "
           "not the interpreter, libraries or parameters. If the reset failed ('peak_reset_after_warmup': "
           "false) the value is an upper bound. getrusage's ru_maxrss is not used: in a spawned child it "
           "starts at the parent's RSS at fork time.",
}


# ---------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Measure, in one run on the same data, configuration, initial weights and batches, the "
                    "training-step time, training memory and inference time of nnU-Net trainers relative to "
                    "a baseline trainer. Prints a Markdown table; -o also writes every raw timing as JSON. "
                    "Needs nnUNet_preprocessed; nnUNet_results is replaced by a temporary folder, so no "
                    "results are touched.")
    parser.add_argument("-d", dest="dataset", required=True, help="dataset name or id")
    parser.add_argument("-c", dest="configuration", required=True, help="configuration, e.g. 3d_fullres")
    parser.add_argument("-p", dest="plans", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    parser.add_argument("-tr", dest="trainers", nargs="+", default=list(DEFAULT_TRAINERS),
                        help=f"trainers to compare with the baseline (default: {' '.join(DEFAULT_TRAINERS)})")
    parser.add_argument("--baseline", default=DEFAULT_BASELINE,
                        help=f"trainer every ratio refers to (default: {DEFAULT_BASELINE})")
    parser.add_argument("--steps", type=positive_int, default=RECOMMENDED_STEPS,
                        help=f"timed training steps per trainer (default: {RECOMMENDED_STEPS})")
    parser.add_argument("--warmup", type=_non_negative_int, default=3,
                        help="untimed warm-up steps per trainer before the timed ones (default: 3)")
    parser.add_argument("--inference-repeats", type=positive_int, default=RECOMMENDED_INFERENCE_REPEATS,
                        help=f"timed sliding-window predictions per trainer, after one untimed "
                             f"(default: {RECOMMENDED_INFERENCE_REPEATS})")
    parser.add_argument("-device", default="cuda", choices=("cpu", "cuda"), help="device (default: cuda)")
    parser.add_argument("-o", dest="output", default=None, help="write all raw results to this JSON file")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights, batches and masks (default: 0)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    parser.add_argument("--no-inference", action="store_true", help="skip the inference timing")
    return parser



def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def main(argv: Optional[List[str]] = None) -> None:
    """Console entry point; returns ``None`` because console scripts pass the return value to ``sys.exit``."""
    run_cli(lambda: run_benchmark(argv), PROG)


def run_benchmark(argv: Optional[List[str]] = None) -> dict:
    """Parse ``argv``, run the benchmark, print the table, write the JSON; return the results dict."""
    args = build_parser().parse_args(argv)
    command = list(sys.argv) if argv is None else [PROG] + [str(a) for a in argv]
    device = _check_device(args.device)
    _warn_about_few_samples(args)
    with tempfile.TemporaryDirectory(prefix="nnunet_ext_cost_") as results_dir, \
            _benchmark_environment(results_dir), _torch_settings(device):
        setup = resolve_setup(args.dataset, args.configuration, args.plans)
        names = _trainer_names(args.baseline, args.trainers)
        classes = find_trainer_classes(names)
        results = _measure(args, setup, classes, device, results_dir)
    results.update(command=shlex.join(command), argv=command)
    print(format_table(results))
    if args.output:
        _write_json(results, args.output)
    return results


def _check_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserInputError("-device cuda was requested, but torch sees no CUDA device. Use -device cpu.")
    return torch.device(name)


def _warn_about_few_samples(args):
    if args.steps < RECOMMENDED_STEPS or (not args.no_inference
                                          and args.inference_repeats < RECOMMENDED_INFERENCE_REPEATS):
        _log(f"note: fewer than {RECOMMENDED_STEPS} steps or {RECOMMENDED_INFERENCE_REPEATS} inference "
             f"repeats; the medians will be noisy")


def _log(message: str):
    # stdout carries only the table, so that it can be redirected to a file
    print(message, file=sys.stderr, flush=True)


def _trainer_names(baseline: str, trainers: List[str]) -> List[str]:
    """Baseline first, then the other trainers in the given order, each once."""
    names = [baseline]
    for name in trainers:
        if name not in names:
            names.append(name)
    return names


# ---------------------------------------------------------------- environment
@contextlib.contextmanager
def _benchmark_environment(results_dir: str):
    """Point nnU-Net at a temporary results folder and our trainers; restore the environment afterwards.

    ``nnUNet_n_proc_DA=0`` makes nnU-Net augment in this process (nnU-Net reads it when it builds the
    dataloaders). Child processes started meanwhile inherit these variables.
    """
    saved = dict(os.environ)
    os.environ["nnUNet_results"] = results_dir
    os.environ["nnUNet_n_proc_DA"] = "0"
    os.environ["nnUNet_extTrainer"] = extended_trainer_path(os.environ.get("nnUNet_extTrainer"))
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def cpu_threads() -> int:
    """Threads for the CPU measurement: ``OMP_NUM_THREADS`` where it is set to a positive number, else one per
    core (as ``nnUNetv2_train`` takes)."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    return multiprocessing.cpu_count()


@contextlib.contextmanager
def _torch_settings(device: torch.device):
    """Thread count and cuDNN autotuning as ``nnUNetv2_train`` sets them; restored afterwards.

    On the CPU a set ``OMP_NUM_THREADS`` is kept: beside other work (e.g. a benchmark's trainings) one thread
    per core oversubscribes the cores: beside two single-thread trainings on 2 cores a plain step took 3.6 s with
    2 threads against 0.44 s with 1 (docs/cost.md).
    """
    threads, benchmark = torch.get_num_threads(), torch.backends.cudnn.benchmark
    if device.type == "cuda":
        torch.set_num_threads(1)
        torch.backends.cudnn.benchmark = True
    else:
        torch.set_num_threads(cpu_threads())
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = benchmark


@contextlib.contextmanager
def _quiet():
    """Silence nnU-Net's console output (citation banner, log lines); show it if something crashes."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    except UserInputError:
        raise  # its message says everything
    except BaseException:
        sys.stderr.write(buffer.getvalue())
        raise


# ---------------------------------------------------------------- dataset, plans, trainers
def resolve_setup(dataset: str, configuration: str, plans_identifier: str) -> dict:
    """Find the dataset's plans and preprocessed data, with a clear error when something is missing.

    Returns:
        ``{'dataset_name', 'configuration', 'plans_identifier', 'plans_file', 'dataset_json_file'}``.
    """
    if not os.environ.get("nnUNet_preprocessed"):
        raise UserInputError("nnUNet_preprocessed is not set; point it at nnU-Net's preprocessed folder.")
    dataset_name = _dataset_name(dataset)
    folder = join(os.environ["nnUNet_preprocessed"], dataset_name)
    plans_file = join(folder, plans_identifier + ".json")
    if not isfile(plans_file):
        raise UserInputError(f"No plans file {plans_file}. Run nnUNetv2_plan_and_preprocess -d {dataset} "
                             f"(or check -p {plans_identifier}).")
    _check_configuration(plans_file, configuration, folder)
    return {"dataset_name": dataset_name, "configuration": configuration, "plans_identifier": plans_identifier,
            "plans_file": plans_file, "dataset_json_file": join(folder, "dataset.json")}


def _dataset_name(dataset: str) -> str:
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        name = maybe_convert_to_dataset_name(dataset)
    except (RuntimeError, ValueError) as e:
        raise UserInputError(f"Dataset '{dataset}' not found: {e}") from None
    if not isdir(join(os.environ["nnUNet_preprocessed"], name)):
        raise UserInputError(f"Dataset {name} has no folder in nnUNet_preprocessed "
                             f"({os.environ['nnUNet_preprocessed']}). Run nnUNetv2_plan_and_preprocess first.")
    return name


def _check_configuration(plans_file: str, configuration: str, folder: str):
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = load_json(plans_file)
    if configuration not in plans["configurations"]:
        raise UserInputError(f"Configuration '{configuration}' is not in {plans_file}; it has "
                             f"{', '.join(sorted(plans['configurations']))}.")
    data_folder = join(folder, PlansManager(plans).get_configuration(configuration).data_identifier)
    if not isdir(data_folder):
        raise UserInputError(f"No preprocessed data for configuration '{configuration}': {data_folder} does not "
                             f"exist. Run nnUNetv2_preprocess for it (for a preset: for the configuration it "
                             f"inherits from).")


def find_trainer_classes(names: List[str]) -> Dict[str, type]:
    """Look the trainers up the way ``nnUNetv2_train`` does (nnU-Net's folder, then ``nnUNet_extTrainer``)."""
    return {name: _find_trainer_class(name) for name in names}


def _find_trainer_class(name: str) -> type:
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return recursive_find_trainer_class_by_name(name)
    except (RuntimeError, AssertionError):
        raise UserInputError(f"Trainer '{name}' not found among nnU-Net's trainers nor in nnUNet_extTrainer "
                             f"({os.environ.get('nnUNet_extTrainer')}), or it is not an nnUNetTrainer. Check "
                             f"the spelling (class names are case-sensitive).") from None


def arithmetic_floor(trainer_class: type) -> Optional[float]:
    """The floor of :data:`ARITHMETIC_FLOOR` for this class or its nearest listed ancestor, else ``None``."""
    if trainer_class.__name__ == DEFAULT_BASELINE:
        return 1.0
    for cls in trainer_class.__mro__:
        if cls.__name__ in ARITHMETIC_FLOOR:
            return ARITHMETIC_FLOOR[cls.__name__]
    return None


def make_trainer(trainer_class: type, setup: dict, device: torch.device, seed: int):
    """Build, initialise and put a trainer in training mode, as at the start of an epoch.

    The seed is reset first, so that every trainer starts from the same network weights.
    """
    from batchgenerators.utilities.file_and_folder_operations import load_json

    torch.manual_seed(seed)
    plans = load_json(setup["plans_file"])
    plans["continue_training"] = False
    with _quiet():
        trainer = trainer_class(plans=plans, configuration=setup["configuration"], fold=0,
                                dataset_json=load_json(setup["dataset_json_file"]), device=device)
        trainer.initialize()
        trainer.network.train()
        trainer.on_train_epoch_start()
    return trainer


# ---------------------------------------------------------------- batches
def draw_batches(trainer, count: int, seed: int) -> List[dict]:
    """Draw ``count`` training batches from ``trainer``'s own nnU-Net dataloader and keep copies."""
    _seed_everything(seed)
    with _quiet():
        loader, _ = trainer.get_dataloaders()
        batches = [_copy_batch(next(loader)) for _ in range(count)]
    return batches


def _seed_everything(seed: int):
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _copy_batch(batch: dict, pin: bool = False) -> dict:
    """A private copy of ``data`` and ``target``; pinned for CUDA, as nnU-Net's loader pins its batches."""
    def copy(tensor):
        tensor = torch.as_tensor(tensor)
        return tensor.pin_memory() if pin else tensor.clone()

    target = batch["target"]
    target = [copy(t) for t in target] if isinstance(target, (list, tuple)) else copy(target)
    copied = {"data": copy(batch["data"]), "target": target}
    if "unlabeled" in batch:  # semi-supervised trainers' batches carry an unlabeled batch
        copied["unlabeled"] = copy(batch["unlabeled"])
    return copied


def trainer_batches(trainer, batches: List[dict]) -> List[dict]:
    """The shared batches in the form ``trainer`` trains on.

    Trainers whose batches carry more than nnU-Net's (SimCVD: signed distance maps computed by the loader's
    workers, an unlabeled batch) define ``complete_batch``; it runs here, before and outside the timing, as it
    runs in the data-loading workers during training. The labeled part stays the same for every trainer.
    """
    complete = getattr(trainer, "complete_batch", None)
    if complete is None:
        return batches
    with _quiet():
        # the copy keeps the shared batch intact; complete_batch returns fresh containers around it
        return [complete(_copy_batch(batch)) for batch in batches]


# ---------------------------------------------------------------- training steps
def _synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class CudaMemoryLedger:
    """Peak device memory of each trainer while several trainers share one CUDA device.

    The other trainers are idle during a trainer's step, so what they hold is the allocated memory before
    the step minus this trainer's own resident memory, which the ledger tracks from its initialisation on.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.after_init: Dict[str, int] = {}
        self.resident: Dict[str, int] = {}
        self.peak: Dict[str, int] = {}
        self._before_init = self._others = 0

    def start_init(self):
        _synchronize(self.device)
        self._before_init = torch.cuda.memory_allocated(self.device)

    def end_init(self, name: str):
        _synchronize(self.device)
        self.after_init[name] = self.resident[name] = torch.cuda.memory_allocated(self.device) - self._before_init

    def before_step(self, name: str):
        _synchronize(self.device)
        self._others = torch.cuda.memory_allocated(self.device) - self.resident[name]
        torch.cuda.reset_peak_memory_stats(self.device)

    def after_step(self, name: str, count_peak: bool = True):
        """Update the trainer's resident memory; ``count_peak=False`` for warm-up steps, whose peaks include
        one-off allocations (cuDNN autotuning, torch.compile)."""
        _synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device) - self._others
        self.resident[name] = torch.cuda.memory_allocated(self.device) - self._others
        if count_peak:
            self.peak[name] = max(self.peak.get(name, 0), peak)

    def report(self, name: str) -> dict:
        return {"after_init_bytes": self.after_init[name], "peak_bytes": self.peak[name],
                "working_bytes": self.peak[name] - self.after_init[name]}


def make_trainers(classes: Dict[str, type], setup: dict, device: torch.device, seed: int,
                  ledger: Optional[CudaMemoryLedger]) -> dict:
    """Build the trainers one after the other (so the ledger can attribute their memory)."""
    trainers = {}
    for name, cls in classes.items():
        _log(f"initialising {name}")
        if ledger is not None:
            ledger.start_init()
        trainers[name] = make_trainer(cls, setup, device, seed)
        if ledger is not None:
            ledger.end_init(name)
    return trainers


def time_training_steps(trainers: dict, batches: List[dict], device: torch.device, warmup: int,
                        ledger: Optional[CudaMemoryLedger] = None) -> Dict[str, List[float]]:
    """Seconds of every step of every trainer (warm-up included); step i of all trainers runs before step i + 1.

    Every trainer gets the same labeled batches (completed by :func:`trainer_batches` where a trainer needs
    more). The order of the trainers is rotated every step, so that none always follows the same one. The
    ledger counts peaks of the steps after ``warmup`` only.
    """
    from tqdm import tqdm

    names = list(trainers)
    own = {name: trainer_batches(trainers[name], batches) for name in names}
    seconds = {name: [] for name in names}
    for i in tqdm(range(len(batches)), desc="training steps (all trainers)", unit="step", file=sys.stderr):
        for name in names[i % len(names):] + names[:i % len(names)]:
            seconds[name].append(_timed_step(trainers[name], name, own[name][i], device, ledger, i >= warmup))
    return seconds


def _timed_step(trainer, name: str, batch: dict, device: torch.device, ledger: Optional[CudaMemoryLedger],
                count_peak: bool) -> float:
    # a private copy, so that no trainer sees another's in-place changes
    batch = _copy_batch(batch, pin=device.type == "cuda")
    if ledger is not None:
        ledger.before_step(name)
    _synchronize(device)
    start = time.perf_counter()
    trainer.train_step(batch)
    _synchronize(device)
    elapsed = time.perf_counter() - start
    if ledger is not None:
        ledger.after_step(name, count_peak)
    return elapsed


# ---------------------------------------------------------------- CPU memory (child processes)
def measure_cpu_memory(names: List[str], setup: dict, batches_file: str, warmup: int,
                       seed: int) -> Dict[str, dict]:
    """Training working memory of each trainer, each measured alone in a fresh 'spawn' process."""
    context = multiprocessing.get_context("spawn")
    reports = {}
    for name in names:
        _log(f"measuring memory of {name} in a child process")
        spec = {"trainer": name, "setup": setup, "batches_file": batches_file, "warmup": warmup, "seed": seed,
                "threads": torch.get_num_threads()}
        with context.Pool(processes=1) as pool:
            reports[name] = pool.apply(_cpu_memory_worker, (spec,))
    return reports


def _cpu_memory_worker(spec: dict) -> dict:
    """Child process: initialise one trainer, load the batches, run every step; report RSS in bytes."""
    torch.set_num_threads(spec["threads"])
    trainer = make_trainer(_find_trainer_class(spec["trainer"]), spec["setup"], torch.device("cpu"),
                           spec["seed"])
    batches = trainer_batches(trainer, torch.load(spec["batches_file"], weights_only=True))
    gc.collect()
    rss_after_init = _proc_status_bytes("VmRSS")
    with _quiet():
        _train(trainer, batches[:spec["warmup"]])
        peak_reset = _reset_peak_rss()
        _train(trainer, batches[spec["warmup"]:])
    peak = _proc_status_bytes("VmHWM")
    return {"rss_after_init_bytes": rss_after_init, "peak_rss_bytes": peak, "working_bytes": peak - rss_after_init,
            "peak_reset_after_warmup": peak_reset}


def _train(trainer, batches: List[dict]):
    for batch in batches:
        trainer.train_step(_copy_batch(batch))


def _proc_status_bytes(field: str) -> int:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process, from /proc/self/status."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024  # the kernel reports kB
    except OSError:
        pass
    raise UserInputError("Measuring CPU memory needs Linux's /proc/self/status; use --no-memory.")


def _reset_peak_rss() -> bool:
    """Reset the peak resident set size (Linux >= 4.0), so that it reflects the training steps only."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ---------------------------------------------------------------- inference
def export_for_inference(trainer):
    """Write the checkpoint, plans.json and dataset.json where nnU-Net's predictor expects them."""
    from batchgenerators.utilities.file_and_folder_operations import save_json

    with _quiet():
        trainer.save_checkpoint(join(trainer.output_folder, "checkpoint_final.pth"))
    save_json(trainer.plans_manager.plans, join(trainer.output_folder_base, "plans.json"), sort_keys=False)
    save_json(trainer.dataset_json, join(trainer.output_folder_base, "dataset.json"), sort_keys=False)


def make_predictor(trainer, device: torch.device):
    """nnU-Net's predictor, loaded from the trainer's exported fold 0."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    with _quiet():
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                    perform_everything_on_device=device.type == "cuda", device=device,
                                    verbose=False, allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(trainer.output_folder_base, use_folds=(0,),
                                                       checkpoint_name="checkpoint_final.pth")
    return predictor


def load_inference_case(trainer) -> tuple:
    """The first preprocessed case (sorted by identifier) as a float tensor (C, *spatial), and its identifier."""
    dataset = trainer.dataset_class(trainer.preprocessed_dataset_folder)
    identifier = sorted(dataset.identifiers)[0]
    data = dataset.load_case(identifier)[0]
    return torch.from_numpy(np.array(data[:], dtype=np.float32)), identifier


def time_inference(predictors: dict, image: torch.Tensor, device: torch.device,
                   repeats: int) -> Dict[str, List[float]]:
    """Seconds of ``repeats`` sliding-window predictions per trainer, interleaved, after one untimed each."""
    names = list(predictors)
    seconds = {name: [] for name in names}
    for i in range(repeats + 1):
        for name in names[i % len(names):] + names[:i % len(names)]:
            elapsed = _timed_prediction(predictors[name], image, device)
            if i > 0:
                seconds[name].append(elapsed)
    return seconds


def _timed_prediction(predictor, image: torch.Tensor, device: torch.device) -> float:
    _synchronize(device)
    start = time.perf_counter()
    with _quiet():
        predictor.predict_sliding_window_return_logits(image)
    _synchronize(device)
    return time.perf_counter() - start


# ---------------------------------------------------------------- the run
@contextlib.contextmanager
def _phase(name: str, seconds: Dict[str, float]):
    """Log the start of a phase and record how long it took (where the benchmark's own time goes)."""
    _log(f"{name} ...")
    start = time.perf_counter()
    yield
    seconds[name] = time.perf_counter() - start


def _measure(args, setup: dict, classes: Dict[str, type], device: torch.device, results_dir: str) -> dict:
    names, phases = list(classes), {}
    ledger = CudaMemoryLedger(device) if device.type == "cuda" and not args.no_memory else None
    with _phase("initialising trainers", phases):
        trainers = make_trainers(classes, setup, device, args.seed, ledger)
    baseline = trainers[names[0]]
    with _phase("drawing batches", phases):
        batches = draw_batches(baseline, args.warmup + args.steps, args.seed)
    torch.manual_seed(args.seed)
    with _phase("training steps", phases):
        step_seconds = time_training_steps(trainers, batches, device, args.warmup, ledger)
    with _phase("memory", phases):
        memory = _measure_memory(args, setup, names, batches, device, ledger, results_dir)
    with _phase("inference", phases):
        inference, case = _measure_inference(args, trainers, device)
    results = summarise(args, setup, classes, baseline, device, step_seconds, memory, inference, case)
    results["phase_seconds"] = phases
    return results


def _measure_memory(args, setup, names, batches, device, ledger, results_dir) -> Optional[Dict[str, dict]]:
    if args.no_memory:
        return None
    if ledger is not None:
        return {name: ledger.report(name) for name in names}
    batches_file = join(results_dir, "batches.pt")
    torch.save(batches, batches_file)
    return measure_cpu_memory(names, setup, batches_file, args.warmup, args.seed)


def _measure_inference(args, trainers: dict, device: torch.device):
    if args.no_inference:
        return None, None
    predictors = {}
    for name, trainer in trainers.items():
        # pretraining trainers (Volume Fusion) predict a pretext task, not the dataset's labels: no inference
        if getattr(trainer, "pretraining_only", False):
            continue
        export_for_inference(trainer)
        predictors[name] = make_predictor(trainer, device)
    image, identifier = load_inference_case(next(iter(trainers.values())))
    seconds = time_inference(predictors, image, device, args.inference_repeats)
    return seconds, {"identifier": identifier, "shape": list(image.shape)}


# ---------------------------------------------------------------- summary
def _median(values: List[float]) -> float:
    return float(np.median(values))


def _ratio(value: Optional[float], baseline: Optional[float]) -> Optional[float]:
    if value is None or baseline is None or baseline <= 0:
        return None
    return value / baseline


def summarise(args, setup, classes, baseline_trainer, device, step_seconds, memory, inference, case) -> dict:
    """All raw measurements, their medians and the ratios to the baseline (the first trainer)."""
    names = list(classes)
    # the floors count cost in units of nnUNetTrainer's step, so they mean nothing against another baseline
    floors = {name: arithmetic_floor(cls) if names[0] == DEFAULT_BASELINE else None for name, cls in classes.items()}
    per_trainer = {name: _trainer_summary(name, floors[name], step_seconds[name], args.warmup, memory, inference)
                   for name in names}
    _add_ratios(per_trainer, names[0])
    return {
        "nnunet_ext_version": __version__,
        "versions": {"torch": torch.__version__, "nnunetv2": metadata.version("nnunetv2"),
                     "python": platform.python_version()},
        "device": _device_description(device),
        "dataset": setup["dataset_name"], "configuration": setup["configuration"],
        "plans": setup["plans_identifier"],
        "batch_size": int(baseline_trainer.batch_size),
        # what initialize() did (nnU-Net compiles on CUDA unless nnUNet_compile says otherwise)
        "torch_compile": isinstance(baseline_trainer.network, torch._dynamo.eval_frame.OptimizedModule),
        "patch_size": [int(s) for s in baseline_trainer.configuration_manager.patch_size],
        "steps": args.steps, "warmup": args.warmup, "inference_repeats": args.inference_repeats,
        "seed": args.seed, "baseline": names[0],
        "memory_definition": None if memory is None else MEMORY_DEFINITION[device.type],
        "inference_case": case,
        "trainers": per_trainer,
    }


def _trainer_summary(name, floor, seconds, warmup, memory, inference) -> dict:
    timed = seconds[warmup:]
    summary = {
        "warmup_step_seconds": seconds[:warmup], "step_seconds": timed,
        "step_median_s": _median(timed),
        "step_iqr_s": [float(np.percentile(timed, 25)), float(np.percentile(timed, 75))],
        "arithmetic_floor": floor,
        "memory": None if memory is None else memory[name],
        "inference_seconds": None if inference is None or name not in inference else inference[name],
        "inference_median_s": None if inference is None or name not in inference else _median(inference[name]),
    }
    return summary


def _add_ratios(per_trainer: dict, baseline: str):
    base = per_trainer[baseline]
    for name, summary in per_trainer.items():
        summary["step_ratio"] = _ratio(summary["step_median_s"], base["step_median_s"])
        summary["memory_ratio"] = _ratio(_working(summary), _working(base))
        summary["inference_ratio"] = _ratio(summary["inference_median_s"], base["inference_median_s"])
    # the baseline is the unit by definition, whatever rounding would say
    base["step_ratio"] = 1.0
    base["memory_ratio"] = 1.0 if base["memory_ratio"] is not None else None
    base["inference_ratio"] = 1.0 if base["inference_ratio"] is not None else None


def _working(summary: dict) -> Optional[float]:
    return None if summary["memory"] is None else float(summary["memory"]["working_bytes"])


def _device_description(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"type": "cuda", "name": torch.cuda.get_device_name(device),
                "cuda": torch.version.cuda, "torch_threads": torch.get_num_threads()}
    return {"type": "cpu", "name": _cpu_name(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _fmt(value: Optional[float], digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def format_table(results: dict) -> str:
    """The Markdown table, with a line on what was measured below it."""
    header = ("| trainer | step median s | step IQR s | step ratio | floor | peak memory MiB | memory ratio "
              "| inference s | inference ratio |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for name, s in results["trainers"].items():
        working = _working(s)
        lines.append(
            f"| {name} | {_fmt(s['step_median_s'], 4)} | {s['step_iqr_s'][0]:.4f}–{s['step_iqr_s'][1]:.4f} "
            f"| {_fmt(s['step_ratio'], 2)} | {_fmt(s['arithmetic_floor'], 2)} "
            f"| {_fmt(None if working is None else working / MIB, 1)} | {_fmt(s['memory_ratio'], 2)} "
            f"| {_fmt(s['inference_median_s'], 4)} | {_fmt(s['inference_ratio'], 2)} |")
    lines.append("")
    lines.append(f"{results['dataset']} {results['configuration']} ({results['plans']}), batch size "
                 f"{results['batch_size']}, patch {results['patch_size']}, {results['device']['type']} "
                 f"({results['device']['name']}), torch.compile {'on' if results.get('torch_compile') else 'off'}; "
                 f"medians of {results['steps']} steps after {results['warmup']} "
                 f"warm-up steps, interleaved; ratios relative to {results['baseline']}.")
    if results["memory_definition"]:
        lines.append(f"Peak memory = {results['memory_definition']}")
    if results["inference_case"]:
        lines.append(f"Inference = nnUNetPredictor.predict_sliding_window_return_logits (step 0.5, Gaussian, no "
                     f"mirroring) on case {results['inference_case']['identifier']} of shape "
                     f"{results['inference_case']['shape']}, median of {results['inference_repeats']}.")
    return "\n".join(lines)


def _write_json(results: dict, path: str):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    _log(f"wrote {path}")


if __name__ == "__main__":
    main()
