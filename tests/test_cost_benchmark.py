"""nnUNetv2_ext_benchmark_cost on the tiny phantom dataset: one short CPU run, and its error messages."""
import contextlib
import io
import json
import os

import pytest
import torch

from nnunet_ext.cost_benchmark import ARITHMETIC_FLOOR, CudaMemoryLedger, arithmetic_floor, main

CONFIG = "3d_tiny"
TRAINERS = ["nnUNetTrainerMedContext", "nnUNetTrainerMedContext_halfBatch"]


def _set_env(monkeypatch, dataset: dict, results: str):
    monkeypatch.setenv("nnUNet_raw", dataset["raw"])
    monkeypatch.setenv("nnUNet_preprocessed", dataset["preprocessed"])
    monkeypatch.setenv("nnUNet_results", results)
    monkeypatch.setenv("nnUNet_compile", "f")


@pytest.fixture
def benchmark_env(tiny_planned_dataset, tmp_path, monkeypatch):
    _set_env(monkeypatch, tiny_planned_dataset, str(tmp_path))
    return tiny_planned_dataset


@pytest.fixture(scope="module")
def short_run(tiny_planned_dataset, tmp_path_factory):
    """One short CPU run; returns (JSON results, stdout, dataset with an untouched 'user_results' folder)."""
    folder = tmp_path_factory.mktemp("cost_benchmark")
    user_results, output = folder / "results", folder / "cost.json"
    user_results.mkdir()
    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as monkeypatch, contextlib.redirect_stdout(stdout):
        _set_env(monkeypatch, tiny_planned_dataset, str(user_results))
        main(["-d", str(tiny_planned_dataset["dataset_id"]), "-c", CONFIG, "-tr", *TRAINERS, "-device", "cpu",
              "--steps", "3", "--warmup", "1", "--inference-repeats", "1", "-o", str(output)])
        # the temporary results folder was only set during the run
        restored = os.environ["nnUNet_results"] == str(user_results)
    with open(output) as f:
        results = json.load(f)
    return results, stdout.getvalue(), dict(tiny_planned_dataset, user_results=str(user_results),
                                            environment_restored=restored)


def test_ratios_are_positive_and_baseline_is_one(short_run):
    results, _, _ = short_run
    assert list(results["trainers"]) == ["nnUNetTrainer"] + TRAINERS
    baseline = results["trainers"]["nnUNetTrainer"]
    for key in ("step_ratio", "memory_ratio", "inference_ratio"):
        assert baseline[key] == 1.0
        for name in TRAINERS:
            assert results["trainers"][name][key] > 0, (name, key)
    for summary in results["trainers"].values():
        assert len(summary["step_seconds"]) == 3 and len(summary["warmup_step_seconds"]) == 1
        assert len(summary["inference_seconds"]) == 1
        assert summary["memory"]["working_bytes"] > 0


def test_records_the_setup(short_run):
    results, _, ds = short_run
    assert results["dataset"] == ds["dataset_name"] and results["configuration"] == CONFIG
    assert results["device"]["type"] == "cpu"
    assert results["torch_compile"] is False  # nnU-Net never compiles on the CPU
    assert results["batch_size"] >= 1 and len(results["patch_size"]) == 3
    assert results["steps"] == 3 and results["warmup"] == 1 and results["inference_repeats"] == 1
    assert {"torch", "nnunetv2"} <= set(results["versions"])
    assert "--steps 3" in results["command"] and results["memory_definition"]
    assert results["trainers"]["nnUNetTrainerMedContext"]["arithmetic_floor"] == pytest.approx(7 / 3)


def test_prints_table_and_leaves_user_results_alone(short_run):
    _, out, ds = short_run
    lines = [line for line in out.splitlines() if line.startswith("| nnUNetTrainer")]
    assert len(lines) == 3
    assert "torch.compile off" in out
    assert os.listdir(ds["user_results"]) == []
    assert ds["environment_restored"]


@pytest.mark.parametrize("args, message", [
    (["-tr", "nnUNetTrainerDoesNotExist"], "nnUNetTrainerDoesNotExist"),
    (["-c", "4d_imaginary"], "4d_imaginary"),
    (["-p", "noSuchPlans"], "noSuchPlans"),
])
def test_clear_errors(benchmark_env, capsys, args, message):
    argv = ["-d", str(benchmark_env["dataset_id"]), "-c", CONFIG, "-device", "cpu"] + args
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "nnUNetv2_ext_benchmark_cost: error:" in err and message in err


def test_unknown_dataset_is_a_clear_error(benchmark_env, capsys):
    with pytest.raises(SystemExit):
        main(["-d", "987", "-c", CONFIG, "-device", "cpu"])
    assert "Dataset '987' not found" in capsys.readouterr().err


def test_floors_follow_the_class_hierarchy():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_ext.training.medcontext import nnUNetTrainerMedContext_halfBatch, nnUNetTrainerMedContext_tube
    from nnunet_ext.training.smoke import nnUNetTrainerMedContext_halfBatch_smoke

    assert arithmetic_floor(nnUNetTrainer) == 1.0
    assert arithmetic_floor(nnUNetTrainerMedContext_tube) == ARITHMETIC_FLOOR["nnUNetTrainerMedContext"]
    assert arithmetic_floor(nnUNetTrainerMedContext_halfBatch_smoke) == \
        ARITHMETIC_FLOOR[nnUNetTrainerMedContext_halfBatch.__name__]


class _FakeAllocator:
    """Stands in for CUDA's allocator statistics, so the ledger's arithmetic can be checked without a GPU."""

    def __init__(self):
        self.allocated = self.peak = 0

    def alloc(self, size):
        self.allocated += size
        self.peak = max(self.peak, self.allocated)

    def free(self, size):
        self.allocated -= size

    def reset_peak(self, device=None):
        self.peak = self.allocated


def test_cuda_memory_ledger_attributes_memory_to_each_trainer(monkeypatch):
    fake = _FakeAllocator()
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: fake.allocated)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: fake.peak)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", fake.reset_peak)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    ledger = CudaMemoryLedger(torch.device("cuda"))
    fake.alloc(7)  # held by something else on the device
    for name, parameters in (("a", 10), ("b", 30)):
        ledger.start_init()
        fake.alloc(parameters)
        ledger.end_init(name)

    def step(name, activations, new_state, count_peak=True):
        ledger.before_step(name)
        fake.alloc(activations + new_state)
        fake.free(activations)
        ledger.after_step(name, count_peak)

    step("a", 1000, 0, count_peak=False)  # a warm-up spike (autotuning) is not counted
    step("b", 300, 30)  # the first step creates optimiser state
    step("a", 100, 10)
    step("b", 300, 0)
    step("a", 100, 0)
    assert ledger.report("a") == {"after_init_bytes": 10, "peak_bytes": 120, "working_bytes": 110}
    assert ledger.report("b") == {"after_init_bytes": 30, "peak_bytes": 360, "working_bytes": 330}


def test_cpu_measurement_keeps_a_set_thread_count(monkeypatch):
    """Beside other trainings (the benchmark's --parallel) the caller limits the threads; one per core would
    oversubscribe the cores. Unset or unusable values fall back to one thread per core, as nnUNetv2_train."""
    import multiprocessing

    from nnunet_ext.cost_benchmark import _torch_settings, cpu_threads

    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cpu_threads() == 1
    with _torch_settings(torch.device("cpu")):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    for unusable in ("", "0", "two"):
        monkeypatch.setenv("OMP_NUM_THREADS", unusable)
        assert cpu_threads() == multiprocessing.cpu_count()
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert cpu_threads() == multiprocessing.cpu_count()
