"""Benchmark building blocks: few-label splits and metrics against independent computations."""
import math
import os

import numpy as np
import pytest
from scipy import ndimage

from nnunet_ext.benchmark.metrics import case_metrics, dice, hd95
from nnunet_ext.benchmark.splits import extend_folds, label_efficiency_folds

IDS = [f"case_{i:03d}" for i in range(20)]


def test_folds_share_validation_and_nest_labeled_sets():
    folds, manifest = label_efficiency_folds(IDS, num_val=4, fractions=[0.1, 0.25, 1.0], seeds=[0, 1])
    assert len(folds) == len(manifest) == 6
    val = folds[0]["val"]
    assert len(val) == 4
    for fold, entry in zip(folds, manifest):
        assert fold["val"] == val
        assert not set(fold["train"]) & set(val)
        assert len(fold["train"]) == entry["num_labeled"] == max(1, round(entry["fraction"] * 16))
        # the rest of the pool is the fold's unlabeled pool, disjoint from labeled and validation cases
        assert not set(fold["unlabeled"]) & (set(fold["train"]) | set(val))
        assert len(fold["unlabeled"]) == 16 - len(fold["train"])
    by_key = {(m["seed"], m["fraction"]): set(f["train"]) for f, m in zip(folds, manifest)}
    for seed in (0, 1):
        assert by_key[(seed, 0.1)] <= by_key[(seed, 0.25)] <= by_key[(seed, 1.0)]
        assert len(by_key[(seed, 1.0)]) == 16
    assert by_key[(0, 0.25)] != by_key[(1, 0.25)]
    # deterministic
    assert label_efficiency_folds(IDS, 4, [0.1, 0.25, 1.0], [0, 1]) == (folds, manifest)


@pytest.mark.parametrize("kwargs", [dict(num_val=0), dict(num_val=20), dict(num_val=2, fractions=[0.0]),
                                    dict(num_val=2, fractions=[1.5])])
def test_folds_reject_bad_arguments(kwargs):
    args = dict(case_ids=IDS, num_val=2, fractions=[0.5], seeds=[0])
    args.update(kwargs)
    with pytest.raises(ValueError):
        label_efficiency_folds(**args)


def test_extend_folds_keeps_fold_numbers_and_appends_new_combinations():
    folds, manifest, requested = extend_folds([], [], IDS, 4, [0.1], [0])
    assert (folds, manifest) == label_efficiency_folds(IDS, 4, [0.1], [0]) and requested == manifest
    # continued with more fractions and seeds: fold 0 stays (10 %, seed 0), the rest are appended
    folds2, manifest2, requested2 = extend_folds(folds, manifest, IDS, 4, [0.1, 1.0], [0, 1])
    assert folds2[0] == folds[0] and manifest2[0] == manifest[0]
    assert [(m["fold"], m["fraction"], m["seed"]) for m in manifest2] == [(0, 0.1, 0), (1, 1.0, 0), (2, 0.1, 1),
                                                                           (3, 1.0, 1)]
    assert [m["fold"] for m in requested2] == [0, 1, 2, 3]
    reference = dict(zip([(m["fraction"], m["seed"]) for m in label_efficiency_folds(IDS, 4, [0.1, 1.0], [0, 1])[1]],
                         label_efficiency_folds(IDS, 4, [0.1, 1.0], [0, 1])[0]))
    for m in manifest2:  # each fold is exactly what its (fraction, seed) makes
        assert folds2[m["fold"]] == reference[(m["fraction"], m["seed"])]
    # asking for a subset returns only its entries and changes nothing
    folds3, manifest3, requested3 = extend_folds(folds2, manifest2, IDS, 4, [1.0], [1])
    assert (folds3, manifest3) == (folds2, manifest2) and requested3 == [manifest2[3]]


def test_extend_folds_refuses_folds_of_other_data():
    folds, manifest, _ = extend_folds([], [], IDS, 4, [0.1], [0])
    with pytest.raises(ValueError, match="fold 0"):
        extend_folds(folds, manifest, IDS, 5, [0.1], [0])  # another validation size
    with pytest.raises(ValueError, match="fold 0"):
        extend_folds(folds, manifest, IDS[:-1], 4, [0.1], [0])  # other cases
    with pytest.raises(ValueError, match="manifest"):
        extend_folds(folds, [], IDS, 4, [0.1], [0])


def test_dice_matches_hand_computation():
    a = np.zeros((4, 4), bool); a[:2] = True          # 8 voxels
    b = np.zeros((4, 4), bool); b[1:3] = True          # 8 voxels, 4 shared
    assert dice(a, b) == pytest.approx(0.5)
    assert math.isnan(dice(np.zeros((2, 2), bool), np.zeros((2, 2), bool)))
    assert dice(a, np.zeros_like(a)) == 0.0


def _hd95_reference(a, b, spacing):
    """Independent HD95: distances between the surface voxels of both masks with SciPy's distance transform."""
    def surface(m):
        return m & ~ndimage.binary_erosion(m, structure=ndimage.generate_binary_structure(m.ndim, 1))
    sa, sb = surface(a), surface(b)
    da = ndimage.distance_transform_edt(~sb, sampling=spacing)[sa]
    db = ndimage.distance_transform_edt(~sa, sampling=spacing)[sb]
    return max(np.percentile(da, 95), np.percentile(db, 95))


def test_hd95_matches_scipy_reference():
    rng = np.random.default_rng(0)
    for _ in range(3):
        a = ndimage.binary_dilation(rng.random((12, 16, 16)) > 0.985, iterations=2)
        b = ndimage.binary_dilation(rng.random((12, 16, 16)) > 0.985, iterations=2)
        spacing = (2.0, 0.8, 0.8)
        assert hd95(a, b, spacing) == pytest.approx(_hd95_reference(a, b, spacing), rel=0.05, abs=0.2)
    assert math.isnan(hd95(np.zeros((3, 3, 3), bool), b[:3, :3, :3] | True, (1, 1, 1)))


def test_case_metrics_per_label():
    ref = np.zeros((6, 8, 8), np.uint8); ref[1:4, 1:5, 1:5] = 1; ref[1:4, 5:8, 5:8] = 2
    pred = ref.copy(); pred[ref == 2] = 0
    result = case_metrics(pred, ref, [1, 2], (1.0, 1.0, 1.0))
    assert result[1]["dice"] == 1.0 and result[1]["hd95"] == 0.0
    assert result[2]["dice"] == 0.0 and math.isnan(result[2]["hd95"])


def test_report_mean_std_over_seeds_and_markdown(tmp_path):
    from nnunet_ext.benchmark import report

    rows = []
    for trainer, offset in (("base", 0.0), ("method", 0.1)):
        for seed, dice_value in ((0, 0.5), (1, 0.7)):
            for case in ("a", "b"):
                for label in (1, 2):
                    rows.append(dict(trainer=trainer, fraction=0.5, seed=seed, num_labeled=3, case=case, label=label,
                                     dice=dice_value + offset, hd95=2.0))
    summary = report.summarise(rows)
    method = next(s for s in summary if s["trainer"] == "method")
    assert method["dice_mean"] == pytest.approx(0.7)
    assert method["dice_std"] == pytest.approx(np.std([0.6, 0.8], ddof=1))
    assert method["num_seeds"] == 2
    text = report.markdown(summary, ["base", "method"], {1: "liver", 2: "spleen"}, "base")
    assert "| method | 70.0 ± 14.1 |" in text and "| method | +10.0 |" in text
    report.plot(summary, ["base", "method"], str(tmp_path / "plot.png"))
    assert (tmp_path / "plot.png").stat().st_size > 1000
    one_seed = report.summarise([r for r in rows if r["seed"] == 0])
    assert "| base | 50.0 |" in report.markdown(one_seed, ["base", "method"], {1: "liver", 2: "spleen"}, "base")


def test_report_compares_the_seeds_both_trainers_have_run():
    """A benchmark run piece by piece: the baseline has seeds 0 and 1, the method only seed 0. The gain pairs
    seed 0 with seed 0 (+10 points); the difference of the means (60 - 60) would hide it."""
    from nnunet_ext.benchmark import report

    rows = [dict(trainer=trainer, fraction=0.5, seed=seed, num_labeled=3, case="a", label=1, dice=dice, hd95=2.0)
            for trainer, seed, dice in (("base", 0, 0.5), ("base", 1, 0.7), ("method", 0, 0.6))]
    summary = report.summarise(rows)
    method = next(s for s in summary if s["trainer"] == "method")
    base = next(s for s in summary if s["trainer"] == "base")
    assert report.paired_gain(method, base) == (pytest.approx(0.1), [0])
    text = report.markdown(summary, ["base", "method"], {1: "liver"}, "base")
    assert "| base | 60.0 ± 14.1 (seeds 0, 1) |" in text and "| method | 60.0 (seed 0) |" in text
    assert "| method | +10.0 (seed 0) |" in text
    no_partner = report.summarise([r for r in rows if r["trainer"] == "base" or r["seed"] == 5]
                                  + [dict(rows[-1], seed=5)])
    assert "| method | — |" in report.markdown(no_partner, ["base", "method"], {1: "liver"}, "base")


def test_benchmark_work_folder_grows_with_more_fractions_and_seeds(tmp_path):
    import json

    from nnunet_ext.benchmark.run import Benchmark
    from nnunet_ext.errors import UserInputError

    def benchmark(**settings):
        b = Benchmark(str(tmp_path), dict(dict(num_val=2, fractions=[0.2], seeds=[0]), **settings), [], "cpu", 0)
        labels = tmp_path / "raw" / b.dataset / "labelsTr"
        labels.mkdir(parents=True, exist_ok=True)
        for case in IDS[:12]:
            (labels / f"{case}.nii.gz").touch()
        (tmp_path / "preprocessed" / b.dataset).mkdir(parents=True, exist_ok=True)
        return b

    first = benchmark().write_splits()
    splits_file = tmp_path / "preprocessed" / benchmark().dataset / "splits_final.json"
    fold0 = json.loads(splits_file.read_text())[0]
    more = benchmark(fractions=[0.2, 1.0], seeds=[0, 3]).write_splits()
    assert more[0] == first[0] and [m["fold"] for m in more] == [0, 1, 2, 3]
    splits = json.loads(splits_file.read_text())
    assert len(splits) == 4 and splits[0] == fold0
    assert json.loads((tmp_path / "splits_manifest.json").read_text()) == more
    with pytest.raises(UserInputError, match="--work"):
        benchmark(num_val=3).write_splits()
    assert json.loads(splits_file.read_text()) == splits  # a refused call writes nothing


def test_nnunet_epoch_times_are_read_from_every_training_log(tmp_path):
    from nnunet_ext.benchmark.budget import epoch_seconds, matched_epochs

    # a resumed run writes one log per start; every epoch line counts, other lines do not
    (tmp_path / "training_log_2026_1.txt").write_text("x: Epoch 0 \nx: Epoch time: 10.5 s \nx: Epoch time: 11.0 s \n")
    (tmp_path / "training_log_2026_2.txt").write_text("x: Current learning rate: 0.01 \nx: Epoch time: 90.0 s \n")
    (tmp_path / "other.txt").write_text("Epoch time: 1000 s\n")
    assert epoch_seconds(str(tmp_path)) == [10.5, 11.0, 90.0]
    assert matched_epochs(60, 2.7) == 162 and matched_epochs(1, 0.2) == 1


def _cost_json(path, trainer, ratio, baseline="nnUNetTrainer"):
    """What nnUNetv2_ext_benchmark_cost -o writes, as far as the benchmark reads it."""
    import json

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"baseline": baseline, "trainers": {baseline: {"step_ratio": 1.0},
                                                      trainer: {"step_ratio": ratio}}}, f)


def test_step_ratio_is_read_from_the_cost_tools_json(tmp_path):
    from nnunet_ext.benchmark.budget import measured_step_ratio

    path = str(tmp_path / "cost.json")
    _cost_json(path, "nnUNetTrainerMedContext", 2.41)
    assert measured_step_ratio(path, "nnUNetTrainerMedContext", "nnUNetTrainer") == pytest.approx(2.41)
    with pytest.raises(ValueError, match="not of nnUNetTrainerSimCVD against nnUNetTrainer"):
        measured_step_ratio(path, "nnUNetTrainerSimCVD", "nnUNetTrainer")
    with pytest.raises(ValueError, match="against nnUNetTrainer, not of nnUNetTrainerMedContext against other"):
        measured_step_ratio(path, "nnUNetTrainerMedContext", "other")
    _cost_json(path, "nnUNetTrainerMedContext", None)
    with pytest.raises(ValueError, match="no positive step ratio"):
        measured_step_ratio(path, "nnUNetTrainerMedContext", "nnUNetTrainer")


def test_equal_wall_clock_budget_is_measured_once_side_by_side(tmp_path, monkeypatch):
    """The budget of an equal-wall-clock run is the common epochs times the step-time ratio that
    nnUNetv2_ext_benchmark_cost measures for the method's trainer against the baseline's: once per work folder
    (also when two runs ask at once), on this benchmark's configuration, then read from step_cost/."""
    import threading

    from nnunet_ext.benchmark.run import Benchmark, benchmark_methods, method_name
    from nnunet_ext.errors import UserInputError

    methods = {method_name(m): m for m in benchmark_methods()}
    same_time = methods["nnUNetTrainer_sameTimeAs_MedContext"]
    b = Benchmark(str(tmp_path), dict(configuration="3d_small", epochs=40), [same_time], "cpu", 0)
    assert b.results_root(same_time) != b.results_root(methods["nnUNetTrainer"])  # never shares a results folder
    calls = []

    def measure(self, args, log_name, training=False, results=None):
        calls.append((args, log_name, training))
        _cost_json(args[args.index("-o") + 1], args[args.index("-tr") + 1], 2.5)
        return 1.0

    monkeypatch.setattr(Benchmark, "command", measure)
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(b.same_time_epochs(same_time))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == [(100, pytest.approx(2.5))] * 2 and len(calls) == 1
    args, log_name, training = calls[0]
    assert os.path.basename(args[0]) == "nnUNetv2_ext_benchmark_cost" and not training
    assert [args[args.index(k) + 1] for k in ("-c", "-device", "--baseline", "-tr", "--steps", "--warmup")] == \
        ["3d_small", "cpu", "nnUNetTrainer", "nnUNetTrainerMedContext", 40, 3]
    assert os.path.isfile(b.step_cost_file("nnUNetTrainerMedContext")) and log_name.startswith("step_cost__")
    # the combined method's row is timed against its fine-tuning trainer
    combined = methods["nnUNetTrainer_sameTimeAs_SimCVDMedContext"]
    assert b.same_time_epochs(combined) == (100, pytest.approx(2.5))
    assert calls[-1][0][calls[-1][0].index("-tr") + 1] == "nnUNetTrainerSimCVDMedContext"
    # a file of other trainers is not used silently
    _cost_json(b.step_cost_file("nnUNetTrainerMedContext"), "nnUNetTrainerSimCVD", 2.0)
    with pytest.raises(UserInputError, match="to measure it again"):
        b.same_time_epochs(same_time)


def test_step_budget_is_read_from_the_debug_json_nnunet_writes(tmp_path):
    import json

    from nnunet_ext.benchmark.budget import budget_mismatch, recorded_budget, step_budget

    assert recorded_budget(str(tmp_path)) is None  # no run started here
    # nnU-Net writes its trainer's attributes as strings
    (tmp_path / "debug.json").write_text(json.dumps({"num_epochs": "60", "num_iterations_per_epoch": "100",
                                                     "num_val_iterations_per_epoch": "10", "seed": "x"}))
    recorded = recorded_budget(str(tmp_path))
    assert recorded == step_budget(60, 100, 10)
    assert budget_mismatch(recorded, step_budget(60, 100, 10)) is None
    assert budget_mismatch(None, step_budget(60, 100, 10)) is None
    message = budget_mismatch(recorded, step_budget(120, 100, 10))
    assert "60 epochs x 100 iterations (6000 steps)" in message and "(12000 steps)" in message
    assert budget_mismatch(recorded, step_budget(60, 100, 5)) is not None


def test_benchmark_refuses_runs_of_another_step_budget(tmp_path):
    """Finished runs are cached per method and fold: a work folder asked for another budget must stop, not report
    the old runs as if trained with the new one (or resume them under another schedule)."""
    import json

    from nnunet_ext.benchmark.run import Benchmark, benchmark_methods
    from nnunet_ext.errors import UserInputError

    baseline = next(m for m in benchmark_methods() if m.get("baseline"))
    entry = dict(fold=0, fraction=0.1, seed=0, num_labeled=5)

    def benchmark(epochs):
        return Benchmark(str(tmp_path), dict(configuration="3d_small", epochs=epochs, iterations=100, val_iterations=10),
                         [baseline], "cpu", 0)

    output = benchmark(60).output_folder(baseline, 0)
    os.makedirs(output)
    (tmp_path / "metrics").mkdir(exist_ok=True)
    metrics = tmp_path / "metrics" / "nnUNetTrainer__fold0.json"
    # a run in progress (no metrics yet), started with 60 epochs
    with open(os.path.join(output, "debug.json"), "w") as f:
        json.dump({"num_epochs": "60", "num_iterations_per_epoch": "100", "num_val_iterations_per_epoch": "10"}, f)
    with pytest.raises(UserInputError, match="6000 steps.*12000 steps.*another --work folder"):
        benchmark(120).run_one(baseline, entry)
    # finished, with metrics written before the budget was recorded in them: the run folder tells
    metrics.write_text(json.dumps(dict(entry, trainer="nnUNetTrainer", cases={})))
    with pytest.raises(UserInputError, match="a finished run of nnUNetTrainer on fold 0"):
        benchmark(120).run_one(baseline, entry)
    assert benchmark(60).run_one(baseline, entry)["cases"] == {}
    # metrics that record their budget need no run folder
    os.remove(os.path.join(output, "debug.json"))
    metrics.write_text(json.dumps(dict(entry, trainer="nnUNetTrainer", cases={},
                                       budget=dict(num_epochs=60, num_iterations_per_epoch=100,
                                                   num_val_iterations_per_epoch=10))))
    with pytest.raises(UserInputError, match="holds a finished run"):
        benchmark(120).run_one(baseline, entry)
    assert json.loads(metrics.read_text())["budget"]["num_epochs"] == 60  # a refused call changes nothing


def test_one_benchmark_per_work_folder(tmp_path):
    import fcntl

    from nnunet_ext.benchmark.run import Benchmark
    from nnunet_ext.errors import UserInputError

    first = Benchmark(str(tmp_path), {}, [], "cpu", 0)
    first.lock()
    assert (tmp_path / "benchmark.lock").read_text() == str(os.getpid())
    second = Benchmark(str(tmp_path), {}, [], "cpu", 0)
    with pytest.raises(UserInputError, match=f"running in the work folder .* \\(process {os.getpid()}, or a training"):
        second.run()  # refused before data or splits are touched
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == []
    first._lock_file.close()  # what the process's exit does, also when it is killed
    second.lock()
    with open(tmp_path / "benchmark.lock") as f:
        with pytest.raises(BlockingIOError):
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


# A stand-in for nnUNetv2_train: a process that starts a worker (like nnU-Net's augmentation workers) and waits.
_TRAINING_STAND_IN = """
import subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
open(sys.argv[1], "w").write(str(worker.pid))
time.sleep(120)
"""

# Runs the benchmark's command() on the stand-in, holding the work-folder lock like a running benchmark.
_BENCHMARK_STAND_IN = """
import signal, sys
from nnunet_ext.benchmark import processes, run
signal.signal(signal.SIGTERM, processes.exit_on_sigterm)  # what nnUNetv2_ext_benchmark's main() installs
b = run.Benchmark(sys.argv[1], {}, [], "cpu", 0)
b.lock()
b.command([sys.executable, "-c", sys.argv[2], sys.argv[3]], "stand_in.log")
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def _start_benchmark_stand_in(tmp_path):
    import subprocess
    import sys
    import time

    worker_pid_file = tmp_path / "worker.pid"
    benchmark = subprocess.Popen([sys.executable, "-c", _BENCHMARK_STAND_IN, str(tmp_path), _TRAINING_STAND_IN,
                                  str(worker_pid_file)])
    for _ in range(300):
        if worker_pid_file.exists() and worker_pid_file.read_text():
            return benchmark, int(worker_pid_file.read_text())
        time.sleep(0.1)
    benchmark.kill()
    raise AssertionError("the stand-in training did not start")


@pytest.mark.skipif(not os.path.isdir("/proc") or os.name != "posix", reason="reads /proc, sends POSIX signals")
def test_stopping_the_benchmark_stops_its_training_and_workers(tmp_path):
    import signal
    import time

    benchmark, worker = _start_benchmark_stand_in(tmp_path)
    try:
        assert _alive(worker)
        benchmark.send_signal(signal.SIGTERM)  # `kill PID`, as a user stops a benchmark running under nohup
        assert benchmark.wait(timeout=60) == 128 + signal.SIGTERM
        for _ in range(100):
            if not _alive(worker):
                break
            time.sleep(0.1)
        assert not _alive(worker), "the training's worker outlived the stopped benchmark"
    finally:
        if _alive(worker):
            os.killpg(os.getpgid(worker), signal.SIGKILL)


@pytest.mark.skipif(not os.path.isdir("/proc") or os.name != "posix", reason="reads /proc, sends POSIX signals")
def test_a_training_left_running_keeps_the_work_folder_locked(tmp_path):
    import signal
    import time

    from nnunet_ext.benchmark.run import Benchmark
    from nnunet_ext.errors import UserInputError

    benchmark, worker = _start_benchmark_stand_in(tmp_path)
    benchmark.kill()  # SIGKILL cannot be caught: the training runs on
    benchmark.wait(timeout=60)
    assert _alive(worker)
    try:
        with pytest.raises(UserInputError, match="Another nnUNetv2_ext_benchmark is running"):
            Benchmark(str(tmp_path), {}, [], "cpu", 0).lock()
    finally:
        training = os.getpgid(worker)  # the training's own process group (run_child starts a new session)
        assert training != os.getpgid(0)
        os.killpg(training, signal.SIGKILL)
    # free again once the training has gone: every process of its group, the one holding the lock's descriptor
    # too, which a loaded machine may take a moment to tear down after the worker
    for _ in range(100):
        try:
            Benchmark(str(tmp_path), {}, [], "cpu", 0).lock()
            break
        except UserInputError:
            time.sleep(0.1)
    else:
        Benchmark(str(tmp_path), {}, [], "cpu", 0).lock()


def test_quick_mode_leaves_out_equal_wall_clock_runs_unless_named(monkeypatch, tmp_path):
    from nnunet_ext.benchmark import run

    chosen = []
    monkeypatch.setattr(run.Benchmark, "run", lambda self: chosen.append([m.get("name", m["trainer"])
                                                                          for m in self.trainers]) or "")
    run.main(["--quick", "--work", str(tmp_path / "a")])
    run.main(["--quick", "--work", str(tmp_path / "b"), "-tr", "nnUNetTrainer_sameTimeAs_SimCVD"])
    run.main(["--work", str(tmp_path / "c")])
    assert not any("sameTimeAs" in name for name in chosen[0]) and "nnUNetTrainerMedContext" in chosen[0]
    # entries marked "quick": false (the half-batch variant, the combined method) too
    assert "nnUNetTrainerMedContext_halfBatch" not in chosen[0] and "nnUNetTrainerSimCVD" in chosen[0]
    assert not any(name.endswith("SimCVDMedContext") for name in chosen[0])
    assert chosen[1] == ["nnUNetTrainer_sameTimeAs_SimCVD"]
    assert {"nnUNetTrainer_sameTimeAs_MedContext", "nnUNetTrainerMedContext_halfBatch"} <= set(chosen[2])


def test_mode_picks_the_settings_and_the_default_work_folder(monkeypatch, tmp_path, capsys):
    from nnunet_ext.benchmark import run

    seen = []
    monkeypatch.setattr(run.Benchmark, "run", lambda self: seen.append((self.work, self.settings)) or "")
    monkeypatch.chdir(tmp_path)
    run.main(["--mode", "cpu", "-tr", "nnUNetTrainer"])
    run.main(["--mode", "cpu", "--epochs", "7", "-tr", "nnUNetTrainer"])
    assert seen[0] == (str(tmp_path / "work_data" / "benchmark_cpu"), run.MODES["cpu"])
    assert seen[1][1] == dict(run.MODES["cpu"], epochs=7)
    with pytest.raises(SystemExit) as exit_info:
        run.main(["--mode", "cpu", "--quick"])
    assert exit_info.value.code == 2 and "--quick contradicts --mode cpu" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        run.main(["--mode", "cpu", "--archive", "A", "--keep-unfinished", "--report-only"])
    assert exit_info.value.code == 2 and "two separate calls" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "A") and len(seen) == 2


def test_runs_side_by_side_keep_their_dependencies_and_the_limit(monkeypatch, tmp_path):
    """--parallel 2: never more than 2 runs at once; fine-tuning runs start after the run that makes their shared
    pretraining, equal-wall-clock runs wait for nothing (their budget is measured, not read from other runs);
    results in job order; each child gets its share of the CPU threads."""
    import threading
    import time

    from nnunet_ext.benchmark.run import Benchmark, benchmark_methods, method_name

    methods = {method_name(m): m for m in benchmark_methods()}
    names = ["nnUNetTrainer", "nnUNetTrainerMedContext", "VolumeFusion+nnUNetTrainer",
             "VolumeFusion+nnUNetTrainerSimCVDMedContext", "nnUNetTrainer_sameTimeAs_MedContext"]
    b = Benchmark(str(tmp_path), dict(configuration="3d_small", epochs=4), [methods[n] for n in names], "cpu", 0,
                  parallel=2)
    jobs = [(methods[n], dict(fold=fold, fraction=0.1, seed=fold)) for fold in (0, 1) for n in names]
    events, lock, running = [], threading.Lock(), []

    def record_run(self, method, entry, threads):
        assert self.env(training=True).get("OMP_NUM_THREADS") == threads
        key = (method_name(method), entry["fold"])
        with lock:
            running.append(key)
            events.append(("start", key, len(running)))
        time.sleep(0.05)
        with lock:
            running.remove(key)
            events.append(("end", key))
        return {"trainer": key[0], "fold": key[1]}

    shared = str(max(1, os.cpu_count() // 2))
    monkeypatch.setattr(Benchmark, "run_and_keep", lambda self, m, e: record_run(self, m, e, shared))
    results = b.run_jobs(jobs)
    assert [(r["trainer"], r["fold"]) for r in results] == [(method_name(m), e["fold"]) for m, e in jobs]
    starts = {e[1]: i for i, e in enumerate(events) if e[0] == "start"}
    ends = {e[1]: i for i, e in enumerate(events) if e[0] == "end"}
    assert max(e[2] for e in events if e[0] == "start") == 2
    assert b.job_dependencies(jobs)[4] == set() and b.job_dependencies(jobs)[9] == set()
    for fold in (0, 1):
        for name in ("VolumeFusion+nnUNetTrainerSimCVDMedContext", "VolumeFusion+nnUNetTrainer"):
            if (name, fold) != ("VolumeFusion+nnUNetTrainer", 0):  # the run that makes the pretraining
                assert starts[(name, fold)] > ends[("VolumeFusion+nnUNetTrainer", 0)]
    # once the pretraining exists, fine-tuning runs wait for nothing
    os.makedirs(b.pretraining_folder(methods["VolumeFusion+nnUNetTrainer"]))
    open(os.path.join(b.pretraining_folder(methods["VolumeFusion+nnUNetTrainer"]), "checkpoint_final.pth"), "w").close()
    assert b.job_dependencies(jobs)[3] == set() and b.job_dependencies(jobs)[7] == set()
    # a run alone (sequential, or after the side-by-side ones) keeps every core
    assert b.env(training=True).get("OMP_NUM_THREADS") == os.environ.get("OMP_NUM_THREADS")
    # one at a time (the default): strictly in job order, every core for each run
    events.clear()
    b.parallel = 1
    own = os.environ.get("OMP_NUM_THREADS")
    monkeypatch.setattr(Benchmark, "run_and_keep", lambda self, m, e: record_run(self, m, e, own))
    b.run_jobs(jobs)
    assert [e[1] for e in events if e[0] == "start"] == [(method_name(m), e["fold"]) for m, e in jobs]
    assert max(e[2] for e in events if e[0] == "start") == 1


def test_the_one_run_left_to_train_gets_every_core(monkeypatch, tmp_path):
    # a call whose other runs finished earlier trains its last run alone: one thread per run would idle a core
    from nnunet_ext.benchmark.run import Benchmark, benchmark_methods, method_name

    methods = {method_name(m): m for m in benchmark_methods()}
    names = ["nnUNetTrainer", "nnUNetTrainerMedContext", "nnUNetTrainerSimCVD"]
    b = Benchmark(str(tmp_path), dict(configuration="3d_small", epochs=4), [methods[n] for n in names], "cpu", 0,
                  parallel=2)
    jobs = [(methods[n], dict(fold=1, fraction=0.1, seed=0)) for n in names]
    threads = {}

    def record_threads(self, method, entry):
        threads[method_name(method)] = self.env(training=True).get("OMP_NUM_THREADS")
        return {}

    monkeypatch.setattr(Benchmark, "run_and_keep", record_threads)
    os.makedirs(os.path.join(str(tmp_path), "metrics"), exist_ok=True)
    for name in names[:2]:
        open(b.metrics_path(methods[name], 1), "w").close()
    b.run_jobs(jobs)
    assert threads["nnUNetTrainerSimCVD"] == os.environ.get("OMP_NUM_THREADS")
    # two left: side by side, the cores shared out
    os.remove(b.metrics_path(methods["nnUNetTrainerMedContext"], 1))
    b.run_jobs(jobs)
    shared = str(max(1, os.cpu_count() // 2))
    assert threads["nnUNetTrainerSimCVD"] == threads["nnUNetTrainerMedContext"] == shared


def test_a_failed_run_side_by_side_stops_the_other_training(monkeypatch, tmp_path):
    import subprocess
    import sys
    import time

    from nnunet_ext.benchmark import processes
    from nnunet_ext.benchmark.run import Benchmark, benchmark_methods, method_name

    methods = {method_name(m): m for m in benchmark_methods()}
    plain, medcontext = methods["nnUNetTrainer"], methods["nnUNetTrainerMedContext"]
    b = Benchmark(str(tmp_path), dict(configuration="3d_small", epochs=4), [plain, medcontext], "cpu", 0, parallel=2)
    children = []

    def fake_run(self, method, entry):
        if method is plain:
            with open(os.path.join(str(tmp_path), "child.log"), "w") as log:
                children.append(processes.run_child([sys.executable, "-c", "import time; time.sleep(60)"],
                                                    dict(os.environ), log, grace_seconds=5))
            return {}
        time.sleep(0.5)  # the other run is training by now
        raise RuntimeError("nnUNetv2_train failed")

    monkeypatch.setattr(Benchmark, "run_and_keep", fake_run)
    start = time.time()
    with pytest.raises(RuntimeError, match="nnUNetv2_train failed"):
        b.run_jobs([(plain, dict(fold=0, fraction=1.0, seed=0)), (medcontext, dict(fold=0, fraction=1.0, seed=0))])
    assert time.time() - start < 30 and children and children[0] != 0  # stopped (SIGTERM), not finished
    assert not processes._running


def test_training_curves_from_nnunet_logs(tmp_path):
    from nnunet_ext.benchmark.curves import main as curves_main
    from nnunet_ext.benchmark.curves import parse_training_log, read_run

    log = ("2026-11-24 21:35:26.506293: Epoch 0 \n2026-11-24 21:35:26.5: Current learning rate: 0.01 \n"
           "2026-11-24 21:36:20.3: seg_clean 0.7568, seg_masked 0.7677, context 0.0611 \n"
           "2026-11-24 21:36:20.3: train_loss 1.5251 \n2026-11-24 21:36:20.3: val_loss -0.4932 \n"
           "2026-11-24 21:36:20.3: Pseudo dice [np.float32(0.0), np.float32(0.8123)] \n"
           "2026-11-24 21:36:20.9: Epoch 1 \n2026-11-24 21:37:00.0: train_loss 0.9 \n")  # epoch 1 was cut short
    epochs = parse_training_log(log)
    assert epochs == {0: {"train_loss": 1.5251, "val_loss": -0.4932, "pseudo_dice": [0.0, 0.8123]}}
    run = tmp_path / "nnUNetTrainerX__nnUNetPlans__3d_small" / "fold_0"
    run.mkdir(parents=True)
    # killed after epoch 1 finished but before a checkpoint held it
    (run / "training_log_2026_11_9_21_35_26.txt").write_text(
        log + "x: val_loss 0.8 \nx: Pseudo dice [np.float32(0.1), np.float32(0.1)] \n")
    # the run resumed the next day repeats epoch 1 to the end: the later log wins, although nnU-Net's unpadded
    # name sorts it first
    (run / "training_log_2026_11_10_8_0_0.txt").write_text(
        "x: Epoch 1 \nx: train_loss 0.5 \nx: val_loss 0.25 \nx: Pseudo dice [np.float32(0.5), np.float32(0.5)] \n")
    assert read_run(str(run))[1] == {"train_loss": 0.5, "val_loss": 0.25, "pseudo_dice": [0.5, 0.5]}
    with pytest.raises(FileNotFoundError, match="no nnU-Net training log"):
        read_run(str(tmp_path))
    curves_main([str(run), "-o", str(tmp_path / "c.png"), "--iterations", "100"])
    assert (tmp_path / "c.png").stat().st_size > 0


def test_pseudo_dice_table_over_blocks_of_epochs(tmp_path, capsys):
    from nnunet_ext.benchmark.curves import block_table
    from nnunet_ext.benchmark.curves import main as curves_main

    epochs = {e: {"pseudo_dice": [0.1 * e, 1.0 - 0.1 * e], "val_loss": float(-e)} for e in range(5)}
    del epochs[3]["val_loss"]  # an epoch whose validation loss line was not logged
    lines = block_table(epochs, 2, iterations_per_epoch=250, class_names=["liver", "aorta"]).splitlines()
    assert lines[0] == "| steps | liver | aorta | mean | val. loss |"
    # blocks {0, 1}, {2, 3}, {4}: means by hand; the last block is shorter, labeled by its own last epoch
    assert lines[2:] == ["| 500 | 0.05 | 0.95 | 0.50 | -0.50 |", "| 1,000 | 0.25 | 0.75 | 0.50 | -2.00 |",
                         "| 1,250 | 0.40 | 0.60 | 0.50 | -4.00 |"]
    assert block_table(epochs, 5).splitlines()[2] == "| 5 | 0.20 | 0.80 | 0.50 | -1.75 |"
    with pytest.raises(ValueError, match="3 class names for 2 classes"):
        block_table(epochs, 2, class_names=["a", "b", "c"])
    run = tmp_path / "nnUNetTrainerX__nnUNetPlans__3d_small" / "fold_0"
    run.mkdir(parents=True)
    (run / "training_log_1.txt").write_text("x: Epoch 0 \nx: val_loss 0.5 \nx: Pseudo dice [np.float32(0.25)] \n")
    curves_main([str(run), "--table", "10"])
    assert "| 1 | 0.25 | 0.25 | 0.50 |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        curves_main([str(run)])  # neither a plot nor a table asked for


def test_curve_legend_names_never_merge_two_runs(tmp_path, monkeypatch):
    from nnunet_ext.benchmark import curves

    def folder(*parts):
        return str(tmp_path.joinpath(*parts))

    a = folder("x", "nnUNetTrainer__nnUNetPlans__3d_small", "fold_0")
    b = folder("x", "nnUNetTrainerMedContext__nnUNetPlans__3d_small", "fold_0")
    c = folder("x", "nnUNetTrainer__nnUNetPlans__3d_small", "fold_1")
    d = folder("y", "nnUNetTrainer__nnUNetPlans__3d_small", "fold_1")
    assert curves.run_labels([a, b]) == ["nnUNetTrainer", "nnUNetTrainerMedContext"]
    assert curves.run_labels([a, c]) == ["nnUNetTrainer fold_0", "nnUNetTrainer fold_1"]
    assert curves.run_labels([c, d]) == [c, d]
    plotted = {}
    monkeypatch.setattr(curves, "read_run", lambda r: {0: {"pseudo_dice": [float(len(r))]}})
    monkeypatch.setattr(curves, "plot_runs", lambda runs, path, it: plotted.update(runs))
    curves.main([c, d, "-o", "p.png", "--labels", "6k", "12k"])
    assert sorted(plotted) == ["12k", "6k"]  # both runs plotted, under the given names
    with pytest.raises(SystemExit):
        curves.main([c, d, "-o", "p.png", "--labels", "same", "same"])


def test_benchmark_training_writes_checkpoints_atomically(tmp_path):
    from nnunet_ext.benchmark.train import write_checkpoints_atomically

    class Trainer:
        """Writes like nnU-Net's save_checkpoint: in place; ``fail`` stops it halfway, as a kill would."""
        fail = False

        def save_checkpoint(self, filename):
            with open(filename, "w") as f:
                f.write("half")
                if self.fail:
                    raise KeyboardInterrupt
                f.write(" and whole")

    trainer = Trainer()
    write_checkpoints_atomically(trainer)
    target = tmp_path / "checkpoint_latest.pth"
    trainer.save_checkpoint(str(target))
    assert target.read_text() == "half and whole" and not (tmp_path / "checkpoint_latest.pth.part").exists()
    trainer.fail = True
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint(str(target))
    assert target.read_text() == "half and whole"  # the previous checkpoint is untouched


@pytest.mark.parametrize("mode", ["cpu", "full"])
def test_grid_script_runs_every_method_of_its_modes_grid(mode):
    """scripts/benchmark_grid.sh names methods by hand: each must exist in methods.json, and together its calls
    must cover every method at every fraction and seed of the mode's grid (an ablation at 10 % labels only), in
    that mode."""
    import shlex
    import subprocess

    from nnunet_ext.benchmark.run import MODES, benchmark_methods, method_name

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(["bash", os.path.join(root, "scripts", "benchmark_grid.sh"), "--dry-run", "--mode", mode,
                          "WORK", "ARCHIVE"], capture_output=True, text=True, check=True).stdout
    covered, report_only = set(), False
    for line in out.splitlines():
        args = shlex.split(line)[2:]  # after the date and time
        assert args[:11] == [".venv/bin/nnUNetv2_ext_benchmark", "--mode", mode, "-device", "cpu", "--work", "WORK",
                             "--archive", "ARCHIVE", "--parallel", {"cpu": "2", "full": "1"}[mode]], line
        if "--report-only" in args:
            report_only = True
            continue
        fractions = args[args.index("--fractions") + 1:args.index("--seeds")]
        seeds = args[args.index("--seeds") + 1:args.index("-tr")]
        covered |= {(m, float(f), int(s)) for m in args[args.index("-tr") + 1:] for f in fractions for s in seeds}
    known = {method_name(m): m.get("ablation", False) for m in benchmark_methods()}
    assert {m for m, _, _ in covered} == set(known)
    grid = MODES[mode]
    assert covered == {(m, f, s) for m, ablation in known.items() for f in ((0.1,) if ablation else grid["fractions"])
                       for s in grid["seeds"]}
    assert report_only and "--report-only" in out.splitlines()[-1]


def test_cpu_grid_runs_the_runs_longer_than_a_session_last():
    """On the CPU grid the combined method, the 4x pretraining and plain nnU-Net for the combined method's time
    (more than a 3-hour session each) come after every other run and in calls of their own, so that a machine that
    loses its work folder between sessions finishes the other runs instead of restarting one of these."""
    import shlex
    import subprocess

    from nnunet_ext.benchmark.run import benchmark_methods, method_name

    methods = benchmark_methods()
    combined = {method_name(m) for m in methods if "SimCVDMedContext" in m["trainer"] and not m.get("same_time_as")}
    long_runs = combined | {method_name(m) for m in methods if int(m.get("pretrain_epochs_factor", 1)) > 1
                            or m.get("same_time_as") in combined}
    assert len(long_runs) == 3
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(["bash", os.path.join(root, "scripts", "benchmark_grid.sh"), "--dry-run"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    calls = [set(shlex.split(line)[shlex.split(line).index("-tr") + 1:]) for line in out if " -tr " in line]
    kinds = [bool(c & long_runs) for c in calls]
    assert all(not (c & long_runs) or c <= long_runs for c in calls)  # no call mixes the two
    first_long = kinds.index(True)
    assert not any(kinds[:first_long]) and all(kinds[first_long:])
    full = subprocess.run(["bash", os.path.join(root, "scripts", "benchmark_grid.sh"), "--dry-run", "--mode", "full"],
                          capture_output=True, text=True, check=True).stdout.splitlines()
    assert "VolumeFusion+nnUNetTrainerSimCVDMedContext" in full[1]  # a GPU has no such limit: the targets together


def test_grid_script_refuses_an_unknown_mode():
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(["bash", os.path.join(root, "scripts", "benchmark_grid.sh"), "--dry-run", "--mode", "gpu"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "--mode must be cpu or full" in out.stderr
    gpu = subprocess.run(["bash", os.path.join(root, "scripts", "benchmark_grid.sh"), "--dry-run", "--device", "cuda",
                          "--parallel", "1"], capture_output=True, text=True, check=True).stdout.splitlines()
    assert all("-device cuda" in line and "--parallel 1 " in line for line in gpu[:-1])


def test_cpu_mode_is_the_full_grid_on_a_smaller_volume():
    """The CPU grid keeps full's cases, splits, seeds, phantom difficulty and step budget; only the volume is
    smaller."""
    from nnunet_ext.benchmark.run import MODES

    same = {k: v for k, v in MODES["full"].items() if k != "shape"}
    assert {k: MODES["cpu"][k] for k in same} == same
    assert all(c < f for c, f in zip(MODES["cpu"]["shape"], MODES["full"]["shape"]))


def test_unfinished_runs_report_how_far_they_got(tmp_path):
    from nnunet_ext.benchmark.run import Benchmark

    plain = {"trainer": "nnUNetTrainer", "baseline": True}
    pretrained = {"trainer": "nnUNetTrainer", "pretrain": "nnUNetTrainerVolumeFusion",
                  "name": "VolumeFusion+nnUNetTrainer"}
    b = Benchmark(str(tmp_path), dict(configuration="3d_small", epochs=120), [plain, pretrained], "cpu", 0)
    assert b.progress_note(plain, 1) == "" and b.progress_note(pretrained, 1) == ""

    def log_epochs(folder, n):
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "training_log_1.txt"), "w") as f:
            for e in range(n):
                f.write(f"x: Epoch {e} \nx: Pseudo dice [np.float32(0.5)] \n")
            f.write(f"x: Epoch {n} \n")  # started, not finished

    log_epochs(b.output_folder(plain, 1), 15)
    assert b.progress_note(plain, 1) == " (training: 15 of 120 epochs done)"
    log_epochs(os.path.join(str(tmp_path), "results_pretraining", b.dataset,
                            "nnUNetTrainerVolumeFusion__nnUNetPlans__3d_small", "fold_all"), 7)
    assert b.progress_note(pretrained, 1) == " (pretraining: 7 of 120 epochs done)"
    log_epochs(b.output_folder(pretrained, 1), 3)
    assert b.progress_note(pretrained, 1) == " (training: 3 of 120 epochs done)"


def test_archive_merges_folds_only_when_one_list_begins_the_other(tmp_path):
    from nnunet_ext.benchmark import archive

    assert archive.merge_folds([1, 2], [1, 2, 3]) == [1, 2, 3]
    assert archive.merge_folds([1, 2, 3], []) == [1, 2, 3]
    with pytest.raises(archive.ArchiveMismatchError, match="fold 1 differs"):
        archive.merge_folds([1, 5], [1, 2, 3])
    settings = dict(num_train=60, shape=(40, 80, 80), configuration="3d_small", iterations=100, epochs=120)
    archive.check_settings(str(tmp_path), settings)
    archive.check_settings(str(tmp_path), dict(settings, epochs=60))  # a run's epochs are checked per run
    with pytest.raises(archive.ArchiveMismatchError, match="shape \\[40, 80, 80\\] there, \\[32, 64, 64\\] here"):
        archive.check_settings(str(tmp_path), dict(settings, shape=(32, 64, 64)))


def _archive_setup(tmp_path):
    """The benchmark's methods by name, small settings, and an archive folder."""
    from nnunet_ext.benchmark.run import benchmark_methods, method_name

    settings = dict(configuration="3d_small", epochs=4, iterations=10, val_iterations=2, num_val=2,
                    fractions=(0.5,), seeds=(0,), shape=(8, 8, 8))
    return {method_name(m): m for m in benchmark_methods()}, settings, str(tmp_path / "archive")


def _planned_fold(benchmark):
    """Stand-ins for a generated and planned dataset of 6 training cases; the one fold of the settings."""
    raw = os.path.join(benchmark.paths["raw"], benchmark.dataset, "labelsTr")
    os.makedirs(raw)
    for case in IDS[:6]:
        open(os.path.join(raw, f"{case}.nii.gz"), "w").close()
    os.makedirs(os.path.join(benchmark.paths["preprocessed"], benchmark.dataset))
    return benchmark.write_splits()[0]


def test_archived_runs_carry_a_benchmark_over_to_a_new_work_folder(tmp_path):
    """A benchmark whose work folder is lost goes on from its archive: the finished runs (metrics, training logs,
    folds, step-cost measurements) are restored, reported and never trained or measured again."""
    import json

    from nnunet_ext.benchmark import archive
    from nnunet_ext.benchmark.run import Benchmark, method_name
    from nnunet_ext.errors import UserInputError

    methods, settings, store = _archive_setup(tmp_path)
    plain, medcontext = methods["nnUNetTrainer"], methods["nnUNetTrainerMedContext"]
    first = Benchmark(str(tmp_path / "first"), settings, [plain, medcontext], "cpu", 0, archive=store)
    first.restore_archive()  # an empty archive restores nothing
    entry = _planned_fold(first)
    (tmp_path / "first" / "raw" / first.dataset / "dataset.json").write_text(
        json.dumps({"labels": {"background": 0, "liver": 1}}))
    budget = dict(num_epochs=4, num_iterations_per_epoch=10, num_val_iterations_per_epoch=2)
    for method, mean_dice, epoch_time in ((plain, 0.5, 10.0), (medcontext, 0.7, 25.0)):
        output = first.output_folder(method, entry["fold"])
        os.makedirs(output)
        with open(os.path.join(output, "training_log_1.txt"), "w") as f:
            f.write("".join(f"x: Epoch {e} \nx: Epoch time: {epoch_time} s \n" for e in range(4)))
        with open(os.path.join(first.work, "metrics", first.run_name(method, entry["fold"]) + ".json"), "w") as f:
            json.dump(dict(entry, trainer=method_name(method), train_seconds=40 * epoch_time, budget=budget,
                           epochs=4, cases={"c1": {"1": {"dice": mean_dice, "hd95": 1.0}}}), f)
        first.keep_run(method, entry["fold"])
    _cost_json(first.step_cost_file("nnUNetTrainerMedContext"), "nnUNetTrainerMedContext", 2.5)
    archive.store_step_cost(store, first.step_cost_file("nnUNetTrainerMedContext"))
    assert sorted(os.listdir(os.path.join(store, "metrics"))) == ["nnUNetTrainerMedContext__fold0.json",
                                                                  "nnUNetTrainer__fold0.json"]
    assert os.listdir(os.path.join(store, "training_logs", "nnUNetTrainer__fold0")) == ["training_log_1.txt"]

    # the machine is gone: only the archive is left
    second = Benchmark(str(tmp_path / "second"), settings, [plain, medcontext], "cpu", 0, archive=store)
    text = second.report_finished()
    assert "| nnUNetTrainer | 50.0 |" in text and "| nnUNetTrainerMedContext | +20.0 |" in text
    assert "Not finished yet" not in text
    assert second.run_one(plain, entry)["cases"]["c1"]["1"]["dice"] == 0.5  # cached: nothing is trained
    same_time = methods["nnUNetTrainer_sameTimeAs_MedContext"]
    second.command = None  # measuring again would fail: the archived ratio is used
    assert second.same_time_epochs(same_time) == (10, pytest.approx(2.5))
    # once nnU-Net has planned the new work folder, its folds are the archived ones
    (tmp_path / "second" / "preprocessed" / second.dataset).mkdir(parents=True)
    second.restore_archive()
    assert json.loads(open(second.splits_file()).read()) == json.loads(open(first.splits_file()).read())

    # a finished pretraining run is archived once and restored whole (fine-tuning of every seed starts from it)
    fused = methods["VolumeFusion+nnUNetTrainer"]
    pretrained = first.pretraining_folder(fused)
    os.makedirs(pretrained)
    with open(os.path.join(pretrained, "debug.json"), "w") as f:
        json.dump({k: str(v) for k, v in budget.items()}, f)
    with open(os.path.join(pretrained, "checkpoint_final.pth"), "wb") as f:
        f.write(b"weights")
    first.pretrain(fused)  # finished: trains nothing, archives it
    assert not os.path.exists(second.pretraining_folder(fused))
    second.trainers.append(fused)
    second.restore_archive()
    with open(os.path.join(second.pretraining_folder(fused), "checkpoint_final.pth"), "rb") as f:
        assert f.read() == b"weights"
    assert second.pretrain(fused) == (os.path.join(second.pretraining_folder(fused), "checkpoint_final.pth"), None)
    longer = Benchmark(second.work, dict(settings, epochs=8), [fused], "cpu", 0, archive=store)
    with pytest.raises(UserInputError, match="pretraining run"):  # its budget came along in debug.json
        longer.pretrain(fused)

    other = Benchmark(str(tmp_path / "third"), dict(settings, shape=(16, 16, 16)), [plain], "cpu", 0, archive=store)
    with pytest.raises(UserInputError, match="does not belong to the work folder.*shape"):
        other.report_finished()


def test_a_pretraining_made_again_is_archived_beside_the_first_not_into_it(tmp_path):
    """A machine without the archived pretraining's checkpoint (git does not keep it) pretrains again: other
    weights, so another archive folder; the first run's logs and debug.json stay as they were. A resumed or restored
    run (it shares a training log with an archived one) goes on in its own folder, and a new work folder gets the
    latest pretraining that has its checkpoint."""
    from nnunet_ext.benchmark import archive

    def pretraining(folder, logs, debug, weights=None):
        os.makedirs(tmp_path / folder, exist_ok=True)
        for log in logs:
            (tmp_path / folder / log).write_text(f"{log} of {debug}")
        (tmp_path / folder / "debug.json").write_text(debug)
        if weights is not None:
            (tmp_path / folder / "checkpoint_final.pth").write_bytes(weights)
        return str(tmp_path / folder)

    store = str(tmp_path / "archive")
    first = pretraining("a", ["training_log_2026_12_6_23_50_20.txt"], "first")
    assert archive.store_pretraining(store, "VF", first).endswith(os.path.join("pretraining", "VF"))
    resumed = pretraining("a", ["training_log_2026_12_7_2_14_52.txt"], "first, resumed")  # same folder, 2 logs
    assert archive.store_pretraining(store, "VF", resumed).endswith(os.path.join("pretraining", "VF"))
    archived = os.path.join(store, "pretraining", "VF")  # without its checkpoint, as in a clone of the repository
    again = pretraining("b", ["training_log_2026_12_7_14_59_47.txt"], "second", b"second weights")
    target = archive.store_pretraining(store, "VF", again)
    assert target == os.path.join(store, "pretraining", "VF__run2")
    assert sorted(os.listdir(archived)) == ["debug.json", "training_log_2026_12_6_23_50_20.txt",
                                            "training_log_2026_12_7_2_14_52.txt"]
    assert open(os.path.join(archived, "debug.json")).read() == "first, resumed"
    assert sorted(os.listdir(target)) == ["checkpoint_final.pth", "debug.json", "training_log_2026_12_7_14_59_47.txt"]
    assert archive.pretraining_runs(store, "VF") == [archived, target]
    # a third machine takes the second run, the only one with weights, and archiving it again changes nothing
    third = str(tmp_path / "c")
    assert archive.restore_pretraining(store, "VF", third)
    assert open(os.path.join(third, "checkpoint_final.pth"), "rb").read() == b"second weights"
    assert archive.store_pretraining(store, "VF", third) == target
    assert archive.pretraining_runs(store, "VF") == [archived, target]
    assert not archive.restore_pretraining(store, "VF", third)  # it holds a finished one


def test_unfinished_runs_kept_in_the_archive_resume_on_a_new_work_folder(tmp_path):
    """--keep-unfinished hands a started run (and a started pretraining) to the next machine: its latest
    checkpoint, budget and logs come back into the same output folder of a new work folder, so the training
    resumes there; a local checkpoint is never overwritten, and a finished run drops its unfinished copy."""
    import json

    from nnunet_ext.benchmark import archive
    from nnunet_ext.benchmark.budget import recorded_budget
    from nnunet_ext.benchmark.run import Benchmark
    from nnunet_ext.errors import UserInputError

    methods, settings, store = _archive_setup(tmp_path)
    plain, fused = methods["nnUNetTrainer"], methods["VolumeFusion+nnUNetTrainer"]
    first = Benchmark(str(tmp_path / "first"), settings, [plain, fused], "cpu", 0, archive=store)
    with pytest.raises(UserInputError, match="--archive"):
        Benchmark(str(tmp_path / "x"), settings, [plain], "cpu", 0).keep_unfinished()
    assert first.keep_unfinished().startswith("No started, unfinished run")
    entry = _planned_fold(first)
    budget = dict(num_epochs=4, num_iterations_per_epoch=10, num_val_iterations_per_epoch=2)

    def started(folder, epochs_done, weights):
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "training_log_1.txt"), "w") as f:
            f.write("".join(f"x: Epoch {e} \nx: Pseudo dice [np.float32(0.5)] \nx: Epoch time: 3.0 s \n"
                            for e in range(epochs_done)))
        with open(os.path.join(folder, "debug.json"), "w") as f:
            json.dump({k: str(v) for k, v in budget.items()}, f)
        with open(os.path.join(folder, "checkpoint_latest.pth"), "wb") as f:
            f.write(weights)

    started(first.output_folder(plain, entry["fold"]), 2, b"plain at epoch 2")
    started(first.pretraining_folder(fused), 3, b"fusion at epoch 3")
    text = first.keep_unfinished()
    assert "nnUNetTrainer__fold0 (training: 2 of 4 epochs done)" in text and "nnUNetTrainerVolumeFusion pretraining" in text
    assert sorted(os.listdir(os.path.join(store, "unfinished"))) == ["nnUNetTrainer__fold0",
                                                                     "pretraining__nnUNetTrainerVolumeFusion"]
    # with their folds, though no run of them has finished: the next machine numbers them alike
    assert json.load(open(os.path.join(store, "splits_manifest.json"))) == [entry]
    assert json.load(open(os.path.join(store, "splits_final.json"))) == json.load(open(first.splits_file()))

    second = Benchmark(str(tmp_path / "second"), settings, [plain, fused], "cpu", 0, archive=store)
    second.restore_archive()  # --report-only's restore leaves checkpoints where they are
    assert not os.path.exists(second.output_folder(plain, entry["fold"]))
    second.restore_archive(unfinished=True)
    for folder, weights in ((second.output_folder(plain, entry["fold"]), b"plain at epoch 2"),
                            (second.pretraining_folder(fused), b"fusion at epoch 3")):
        assert open(os.path.join(folder, "checkpoint_latest.pth"), "rb").read() == weights
        assert os.listdir(folder) and "training_log_1.txt" in os.listdir(folder)
    assert second.progress_note(plain, entry["fold"]) == " (training: 2 of 4 epochs done)"
    # its budget came along: a call with another budget refuses to resume it
    assert recorded_budget(second.output_folder(plain, entry["fold"])) == budget

    # the second machine got further: restoring again never overwrites its own checkpoint
    started(second.output_folder(plain, entry["fold"]), 3, b"plain at epoch 3")
    second.restore_archive(unfinished=True)
    assert open(os.path.join(second.output_folder(plain, entry["fold"]), "checkpoint_latest.pth"), "rb").read() == \
        b"plain at epoch 3"
    # a finished run is archived and its unfinished copy dropped
    with open(os.path.join(second.work, "metrics", "nnUNetTrainer__fold0.json"), "w") as f:
        json.dump(dict(entry, trainer="nnUNetTrainer", budget=budget, epochs=4, cases={}), f)
    second.keep_run(plain, entry["fold"])
    assert os.listdir(os.path.join(store, "unfinished")) == ["pretraining__nnUNetTrainerVolumeFusion"]
    # a kept run whose checkpoint did not come along (not committed) starts over, without its old logs
    os.remove(os.path.join(store, "unfinished", "pretraining__nnUNetTrainerVolumeFusion", "checkpoint_latest.pth"))
    third = Benchmark(str(tmp_path / "fourth"), settings, [plain, fused], "cpu", 0, archive=store)
    third.restore_archive(unfinished=True)
    assert not os.path.exists(third.pretraining_folder(fused))
    # an archive entry that points outside the work folder is refused
    archive._write(os.path.join(store, "unfinished", "evil", "where.json"), {"output_folder": "../elsewhere"})
    with pytest.raises(UserInputError, match="outside the work folder"):
        Benchmark(str(tmp_path / "third"), settings, [plain], "cpu", 0, archive=store).restore_archive(True)


def test_archive_refuses_runs_made_on_other_generated_data(tmp_path):
    """Same settings, other data (a library that draws differently): the archived runs are not mixed in; data
    regenerated on another CPU, equal up to float32 rounding, are accepted."""
    import numpy as np
    import SimpleITK as sitk

    from nnunet_ext.benchmark import archive

    raw = tmp_path / "raw"
    for sub in ("imagesTr", "labelsTr"):
        (raw / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    image = rng.normal(40.0, 30.0, (8, 16, 16)).astype(np.float32)
    label = (rng.random((8, 16, 16)) > 0.7).astype(np.uint8) * 2

    def write(image, label, spacing=(0.8, 0.8, 2.5)):
        for sub, array in (("imagesTr", image), ("labelsTr", label)):
            volume = sitk.GetImageFromArray(array)
            volume.SetSpacing(spacing)
            sitk.WriteImage(volume, str(raw / sub / "case_000.nii.gz"))

    write(image, label)
    store = str(tmp_path / "archive")
    archive.check_data(store, archive.dataset_fingerprint(str(raw)))
    noisy_label = label.copy()
    noisy_label[0, 0, 0] = 2 - noisy_label[0, 0, 0]  # a boundary voxel that rounding put on the other side
    write(np.nextafter(image, np.float32(np.inf)), noisy_label)
    archive.check_data(store, archive.dataset_fingerprint(str(raw)))
    for changed, match in (((image + 5, label), "case_000.nii.gz: intensities"),
                           ((image, np.roll(label, 1) * (rng.random(label.shape) > 0.2)), "label volumes")):
        write(*changed)
        with pytest.raises(archive.ArchiveMismatchError, match=f"other images or labels.*{match}"):
            archive.check_data(store, archive.dataset_fingerprint(str(raw)))
    write(image, label, spacing=(0.8, 0.8, 3.0))
    with pytest.raises(archive.ArchiveMismatchError, match="shape or spacing"):
        archive.check_data(store, archive.dataset_fingerprint(str(raw)))
    os.remove(raw / "labelsTr" / "case_000.nii.gz")
    with pytest.raises(archive.ArchiveMismatchError, match="labelsTr/case_000.nii.gz missing here"):
        archive.check_data(store, archive.dataset_fingerprint(str(raw)))


def test_cost_table_reports_median_epoch_times_beside_wall_time():
    """A run resumed in a later call records only that call's wall time, so its wall time is left out; the sum
    of its epoch times and nnU-Net's median epoch time still compare the trainers. Ratios pair the runs with the
    baseline's on the same fractions and seeds."""
    from nnunet_ext.benchmark.run import Benchmark

    results = [dict(trainer="base", fraction=0.1, seed=seed, train_seconds=3600, median_epoch_seconds=30.0,
                    epoch_seconds_total=3500.0, training_calls=1) for seed in (0, 1)]
    results += [dict(trainer="base", fraction=1.0, seed=0, train_seconds=1800, median_epoch_seconds=15.0,
                     epoch_seconds_total=1750.0, training_calls=1),  # no method run at 100 %: not in the ratios
                dict(trainer="method", fraction=0.1, seed=0, train_seconds=900, median_epoch_seconds=75.0,
                     epoch_seconds_total=8750.0, training_calls=2),  # resumed: 900 s is its last call only
                dict(trainer="method", fraction=0.1, seed=1, train_seconds=9000, median_epoch_seconds=75.0,
                     epoch_seconds_total=8750.0, training_calls=1),
                dict(trainer="old", fraction=0.1, seed=0, train_seconds=7200)]  # metrics from before the fields
    text = Benchmark.cost_table(results, ["base", "method", "old"], "base")
    assert "| base | 2917 | 1.00× | 25.0 | 1.00× | 3000 | 1.00× |" in text  # means over its three runs
    assert "| method | 8750 | 2.50× | 75.0 | 2.50× | 9000 | 2.50× |" in text  # ratios on the common 10 % runs
    assert "| old | — | — | — | — | 7200 | 2.00× |" in text


def test_seconds_per_epoch_counts_each_epoch_once_over_resumed_logs(tmp_path):
    """Two starts of one run (nnU-Net names its logs by start time, unpadded: day 7 sorts after day 10 by
    name): epochs 2 and 3 ran again after the resume, and count with their later times."""
    from nnunet_ext.benchmark.budget import epoch_seconds, seconds_per_epoch, training_log_files

    def log(name, epochs):
        with open(tmp_path / name, "w") as f:
            for epoch, seconds in epochs:
                f.write(f"2026-12-07 09:00:00.000001: Epoch {epoch} \n2026-12-07 09:00:00.000002: Current "
                        f"learning rate: 0.01 \n2026-12-07 09:00:01.000000: train_loss -0.5 \n"
                        f"2026-12-07 09:00:01.000001: Pseudo dice [np.float32(0.5)] \n"
                        f"2026-12-07 09:00:01.000002: Epoch time: {seconds} s \n")
            f.write("2026-12-07 09:00:02.000000: Epoch 99 \n")  # killed during the next epoch: no time

    log("training_log_2026_12_7_9_0_0.txt", [(0, 10.0), (1, 11.0), (2, 12.0), (3, 13.0)])
    log("training_log_2026_12_10_9_0_0.txt", [(2, 20.0), (3, 21.0), (4, 22.0)])
    assert [os.path.basename(p) for p in training_log_files(str(tmp_path))] == [
        "training_log_2026_12_7_9_0_0.txt", "training_log_2026_12_10_9_0_0.txt"]
    assert seconds_per_epoch(str(tmp_path)) == {0: 10.0, 1: 11.0, 2: 20.0, 3: 21.0, 4: 22.0}
    assert sorted(epoch_seconds(str(tmp_path))) == [10.0, 11.0, 12.0, 13.0, 20.0, 21.0, 22.0]


def test_report_times_runs_from_their_training_logs(tmp_path):
    """The report's cost table takes each run's epoch-time sum and number of starts from the training logs kept
    beside its metrics, so that archived runs resumed across machines are timed right."""
    from nnunet_ext.benchmark.run import Benchmark

    plain = {"trainer": "nnUNetTrainer", "baseline": True}
    b = Benchmark(str(tmp_path), dict(configuration="3d_small", epochs=2), [plain], "cpu", 0)
    logs = tmp_path / "training_logs" / "nnUNetTrainer__fold1"
    logs.mkdir(parents=True, exist_ok=True)
    for name, epochs in (("training_log_2026_12_7_1_0_0.txt", (0, 1)), ("training_log_2026_12_7_2_0_0.txt", (1,))):
        (logs / name).write_text("".join(f"x: Epoch {e} \nx: Epoch time: {30 + e} s \n" for e in epochs))
    results = [dict(trainer="nnUNetTrainer", fold=1, epochs=2, train_seconds=40.0),
               dict(trainer="nnUNetTrainer", fold=2, epochs=2, train_seconds=70.0)]  # no logs kept
    timed = b.with_run_records(results)
    assert timed[0]["epoch_seconds_total"] == 61.0 and timed[0]["training_calls"] == 2
    assert timed[1]["epoch_seconds_total"] is None and timed[1]["training_calls"] is None
    assert timed[0]["validation_dice"] is None  # no run folder with nnU-Net's final validation here
    assert "train_seconds" in results[0] and "training_calls" not in results[0]  # the caller's dicts unchanged


def _case_rows(trainer, per_case, seed=0, fraction=0.1):
    return [dict(trainer=trainer, fraction=fraction, seed=seed, num_labeled=5, case=case, label=label, dice=d,
                 hd95=1.0) for case, per_label in per_case.items() for label, d in enumerate(per_label, start=1)]


def test_paired_case_comparison_against_hand_computation():
    """Six cases, every one improved: the mean difference, a percentile bootstrap computed here by hand, and
    the exact two-sided Wilcoxon p of six positive differences (2 / 2**6)."""
    from nnunet_ext.benchmark import report

    base = {f"c{i}": (0.5, 0.6) for i in range(6)}
    gains = [0.01, 0.02, 0.03, 0.05, 0.08, 0.13]
    method = {f"c{i}": (0.5 + g, 0.6 + g) for i, g in enumerate(gains)}
    rows = _case_rows("base", base) + _case_rows("method", method)
    result = report.paired_case_comparison(rows, "method", "base", 0.1, [0])
    assert result["num_cases"] == 6 and result["wins"] == 6
    assert result["mean"] == pytest.approx(np.mean(gains))
    assert result["p_value"] == pytest.approx(2 / 2 ** 6)
    rng = np.random.default_rng(1)
    by_hand = np.array(gains)[rng.integers(0, 6, size=(20000, 6))].mean(axis=1)
    low, high = np.percentile(by_hand, [2.5, 97.5])
    assert result["low"] == pytest.approx(low, abs=0.01) and result["high"] == pytest.approx(high, abs=0.015)
    assert result["low"] < result["mean"] < result["high"]


def test_paired_case_comparison_averages_seeds_per_case_and_says_when_undefined():
    from nnunet_ext.benchmark import report

    rows = (_case_rows("base", {"a": (0.5,), "b": (0.5,)}, seed=0) + _case_rows("base", {"a": (0.7,), "b": (0.7,)}, seed=1)
            + _case_rows("method", {"a": (0.6,), "b": (0.4,)}, seed=0)
            + _case_rows("method", {"a": (0.8,), "b": (0.8,)}, seed=1))
    result = report.paired_case_comparison(rows, "method", "base", 0.1, [0, 1])
    # case a: (+0.1 + 0.1) / 2, case b: (-0.1 + 0.1) / 2
    assert result["mean"] == pytest.approx(0.05) and result["wins"] == 1 and result["num_cases"] == 2
    equal = report.paired_case_comparison(rows, "method", "base", 0.1, [1])
    assert equal["mean"] == pytest.approx(0.1) and math.isnan(equal["low"]) and math.isnan(equal["p_value"])
    summary = report.summarise(rows)
    text = report.markdown(summary, ["base", "method"], {1: "liver"}, "base", rows)
    assert "| method | 10% | 0, 1 | +5.0 |" in text and "1 of 2 |" in text


def test_gain_per_organ_pairs_seeds_against_hand_computation():
    """Two organs, two seeds of the baseline, one of them shared with the method: organ 1 gains +20 and +0 points
    on cases a and b (mean +10), organ 2 loses 10 on both; the baseline's unshared seed does not count."""
    from nnunet_ext.benchmark import report

    rows = (_case_rows("base", {"a": (0.5, 0.6), "b": (0.7, 0.8)}, seed=0)
            + _case_rows("base", {"a": (0.1, 0.1), "b": (0.1, 0.1)}, seed=1)
            + _case_rows("method", {"a": (0.7, 0.5), "b": (0.7, 0.7)}, seed=0))
    rows[-1]["hd95"] = 3.0  # the method's spleen on case b: 2 mm further off, so its mean over a and b 1 mm worse
    lines = report.organ_gain_lines(rows, ["base", "method"], "base", {1: "liver", 2: "spleen"})
    assert "| trainer | seeds | liver | spleen |" in lines
    assert "| method | 0 | +10.0 (1/1) | -10.0 (0/1) |" in lines
    assert "| method | 0 | +0.0 (0/1) | +1.0 (0/1) |" in lines  # HD95: neither organ better
    assert any("HD95 in mm, lower is better" in line for line in lines)
    text = report.markdown(report.summarise(rows), ["base", "method"], {1: "liver", 2: "spleen"}, "base", rows)
    assert "Gain per organ over base at 10% labels" in text
    assert report.organ_gain_lines([r for r in rows if r["trainer"] == "base"], ["base"], "base", {1: "liver"}) == []


def test_longer_pretraining_is_a_run_of_its_own(tmp_path):
    """A method with "pretrain_epochs_factor" pretrains in its own results folder, under its own archive name,
    with that many times the epochs; the one-budget pretraining is left alone."""
    from nnunet_ext.benchmark.run import Benchmark, benchmark_methods, pretraining_name

    methods = {m["name"]: m for m in benchmark_methods() if m.get("pretrain")}
    short, long_ = methods["VolumeFusion+nnUNetTrainer"], methods["VolumeFusion4xSteps+nnUNetTrainer"]
    assert pretraining_name(short) == "nnUNetTrainerVolumeFusion"
    assert pretraining_name(long_) == "nnUNetTrainerVolumeFusion__4xSteps"
    b = Benchmark(str(tmp_path), dict(configuration="3d_small", epochs=120), [short, long_], "cpu", 0)
    assert b.pretraining_root(short) == os.path.join(str(tmp_path), "results_pretraining")
    assert b.pretraining_root(long_) == os.path.join(str(tmp_path), "results_pretraining__4xSteps")
    assert b.pretraining_folder(long_).startswith(b.pretraining_root(long_) + os.sep)
    assert b.results_root(short) != b.results_root(long_)
    # two pretrainings: the fine-tuning runs of the long one do not wait for the short one's
    assert b.job_dependencies([(short, {}), (long_, {}), (long_, {})]) == [set(), set(), {1}]
    folder = b.pretraining_folder(long_)
    os.makedirs(folder)
    with open(os.path.join(folder, "training_log_1.txt"), "w") as f:
        f.write("x: Epoch 0 \nx: Pseudo dice [np.float32(0.5)] \nx: Epoch 1 \n")
    assert b.progress_note(long_, 1) == " (pretraining: 1 of 480 epochs done)"
    assert b.progress_note(short, 1) == ""


def test_longer_pretraining_trains_its_factor_of_epochs_in_its_own_folder(tmp_path, monkeypatch):
    from nnunet_ext.benchmark.run import Benchmark, benchmark_methods

    long_ = next(m for m in benchmark_methods() if m.get("pretrain_epochs_factor"))
    b = Benchmark(str(tmp_path), dict(configuration="3d_small", epochs=7, iterations=3, val_iterations=1),
                  [long_], "cpu", 0)
    calls = []
    monkeypatch.setattr(b, "command", lambda args, log, training=False, results=None:
                        calls.append((list(map(str, args)), log, results)) or 1.0)
    checkpoint, seconds = b.pretrain(long_)
    (prepare, _, _), (train, log, results) = calls
    assert train[train.index("--epochs") + 1] == str(7 * long_["pretrain_epochs_factor"])
    assert train[train.index("-tr") + 1] == "nnUNetTrainerVolumeFusion" and "all" in train
    assert log == "pretrain__nnUNetTrainerVolumeFusion__4xSteps.log"
    assert results == b.pretraining_root(long_) and checkpoint.startswith(results + os.sep) and seconds == 1.0


def test_validation_table_pairs_gains_on_common_seeds(tmp_path):
    """nnU-Net's final validation per trainer: mean ± std over seeds, the gain over the baseline averaged over
    the seeds both have; runs without the field do not count, and no run with it gives no table."""
    import json

    from nnunet_ext.benchmark import report
    from nnunet_ext.benchmark.budget import validation_dice

    results = [dict(trainer="base", fraction=0.1, seed=0, validation_dice=0.70),
               dict(trainer="base", fraction=0.1, seed=1, validation_dice=0.74),
               dict(trainer="base", fraction=1.0, seed=0, validation_dice=None),  # validated before the field
               dict(trainer="method", fraction=0.1, seed=1, validation_dice=0.77),
               dict(trainer="method", fraction=0.1, seed=2, validation_dice=0.60)]  # no baseline seed 2
    lines = report.validation_lines(results, ["base", "method", "absent"], "base")
    assert "| trainer | 10% |" in lines
    assert "| base | 72.0 ± 2.8 |" in lines  # std over seeds, ddof 1: 0.04 / sqrt(2)
    assert "| method | 68.5 ± 12.0 (+3.0) |" in lines  # the gain on seed 1 only
    assert not any(line.startswith("| absent") for line in lines)
    assert report.validation_lines([dict(trainer="base", fraction=0.1, seed=0)], ["base"], "base") == []

    run = tmp_path / "fold_1"
    assert validation_dice(str(run)) is None
    (run / "validation").mkdir(parents=True)
    (run / "validation" / "summary.json").write_text(json.dumps({"foreground_mean": {"Dice": 0.75}}))
    assert validation_dice(str(run)) == 0.75
