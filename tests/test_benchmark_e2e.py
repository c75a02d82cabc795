"""The benchmark's --quick path end to end, at a tiny size, through nnU-Net's commands."""
import csv
import json
import os
import sys

from conftest import run_command


def test_quick_benchmark_tiny(tmp_path):
    work = tmp_path / "bench"
    # SimCVD runs inside the combined trainer here; its own trainer has its end-to-end tests (test_e2e_simcvd.py)
    args = ["nnUNetv2_ext_benchmark", "--quick", "--work", work, "-tr", "nnUNetTrainer", "nnUNetTrainerMedContext",
            "VolumeFusion+nnUNetTrainer", "VolumeFusion+nnUNetTrainerSimCVDMedContext",
            "nnUNetTrainer_sameTimeAs_MedContext", "--num-train", 5, "--num-val", 1, "--num-test", 2,
            "--num-unlabeled", 2, "--shape", 24, 48, 48, "-c", "3d_tiny",
            "--epochs", 1, "--iterations", 2, "--val-iterations", 1, "--fractions", 0.5, "--seeds", 0,
            "--num-proc-DA", 0]
    env = dict(os.environ, nnUNet_compile="f")
    # two runs at a time (the CPU grid's setting): the combined method waits for the pretraining that
    # VolumeFusion+nnUNetTrainer's job makes; the equal-wall-clock run measures MedContext's step cost first
    out = run_command(args + ["--parallel", 2], env, timeout=900).stdout
    report = work / "report"
    out_md = (report / "results.md").read_text()
    for name in ("results.md", "results_summary.csv", "results_per_case.csv", "dice_vs_fraction.png"):
        assert (report / name).is_file(), name
    with open(report / "results_per_case.csv") as f:
        rows = list(csv.DictReader(f))
    # 5 methods x 1 fold x 2 test cases x 7 organs
    assert len(rows) == 5 * 2 * 7
    assert {r["trainer"] for r in rows} == {"nnUNetTrainer", "nnUNetTrainerMedContext", "VolumeFusion+nnUNetTrainer",
                                            "VolumeFusion+nnUNetTrainerSimCVDMedContext",
                                            "nnUNetTrainer_sameTimeAs_MedContext"}
    # the equal-wall-clock run got the epochs that MedContext's step cost asks for, measured side by side with
    # the baseline's steps by nnUNetv2_ext_benchmark_cost, in its own results folder
    same_time = json.load(open(work / "metrics" / "nnUNetTrainer_sameTimeAs_MedContext__fold0.json"))
    cost = json.load(open(work / "step_cost" / "nnUNetTrainerMedContext.json"))
    assert cost["baseline"] == "nnUNetTrainer" and cost["steps"] == 40 and cost["configuration"] == "3d_tiny"
    assert same_time["time_ratio"] == cost["trainers"]["nnUNetTrainerMedContext"]["step_ratio"] > 1
    assert same_time["epochs"] == max(1, round(same_time["time_ratio"]))
    assert same_time["budget"] == {"num_epochs": same_time["epochs"], "num_iterations_per_epoch": 2,
                                   "num_val_iterations_per_epoch": 1}
    log = open(work / "logs" / "train__nnUNetTrainer_sameTimeAs_MedContext__fold0.log").read()
    assert f"budget: {same_time['epochs']} epochs x 2 iterations" in log
    assert (work / "results_nnUNetTrainer_sameTimeAs_MedContext").is_dir() and "equal-wall-clock" in out
    # both fine-tuned methods started from one pretraining run's weights, each in its own results folder
    pretrained = work / "results_pretraining" / "Dataset510_PhantomBenchmark" / \
        "nnUNetTrainerVolumeFusion__nnUNetPlans__3d_tiny" / "fold_all" / "checkpoint_final.pth"
    assert pretrained.is_file()
    assert [n for n in os.listdir(work / "logs") if n.startswith("pretrain__")] == \
        ["pretrain__nnUNetTrainerVolumeFusion.log"]
    for name in ("VolumeFusion+nnUNetTrainer", "VolumeFusion+nnUNetTrainerSimCVDMedContext"):
        log = open(work / "logs" / f"train__{name}__fold0.log").read()
        assert "initialised from" in log and str(pretrained) in log, name
        assert (work / f"results_{name}").is_dir()
    assert ("VolumeFusion+nnUNetTrainer, VolumeFusion+nnUNetTrainerSimCVDMedContext: plus one "
            "nnUNetTrainerVolumeFusion pretraining run of") in out
    assert all(0.0 <= float(r["dice"]) <= 1.0 for r in rows if r["dice"] != "nan")
    manifest = json.load(open(work / "splits_manifest.json"))
    assert manifest == [{"fold": 0, "fraction": 0.5, "seed": 0, "num_labeled": 2}]
    assert "| nnUNetTrainerMedContext |" in out and "| VolumeFusion+nnUNetTrainerSimCVDMedContext |" in out
    # the runs did train side by side, never more than two at once
    spans = {run: _training_span(work / "training_logs" / run) for run in os.listdir(work / "training_logs")}
    assert len(spans) == 5
    at_once = [sum(1 for s, e in spans.values() if s <= start <= e) for start, _ in spans.values()]
    assert max(at_once) == 2
    # resumable: a second call (one run at a time) redoes nothing and reports the same table
    before = sorted(os.listdir(work / "logs"))
    again = run_command(args, env, timeout=300).stdout
    assert sorted(os.listdir(work / "logs")) == before
    assert again.split("nnunet-ext benchmark")[1].split("\n", 1)[1] == out.split("nnunet-ext benchmark")[1].split("\n", 1)[1]
    # --report-only writes the same report from the finished runs, trains nothing, and names what is missing
    only = run_command(args + ["--report-only"], env, timeout=300).stdout
    assert only.split("nnunet-ext benchmark")[1].split("\n", 1)[1] == out.split("nnunet-ext benchmark")[1].split("\n", 1)[1]
    assert sorted(os.listdir(work / "logs")) == before
    # the same work folder with another phantom is refused before anything is touched
    raw_before = _mtimes(work / "raw")
    other = run_command(args + ["--difficulty", "hard"], env, timeout=300, check=False)
    assert other.returncode == 2
    assert "difficulty: existing standard, requested hard" in other.stderr and "--work" in other.stderr
    assert _mtimes(work / "raw") == raw_before and sorted(os.listdir(work / "logs")) == before
    # ... and so is another step budget: the cached runs were trained with 2 steps, not 4
    metrics_before = _mtimes(work / "metrics")
    other = run_command(args + ["--epochs", 2], env, timeout=300, check=False)
    assert other.returncode == 2
    assert "1 epochs x 2 iterations (2 steps)" in other.stderr and "(4 steps)" in other.stderr
    assert _mtimes(work / "metrics") == metrics_before and (work / "report" / "results.md").read_text() == out_md
    # nnU-Net's run folder refuses to resume under another budget when trained directly, too
    run_env = dict(env, nnUNet_raw=str(work / "raw"), nnUNet_preprocessed=str(work / "preprocessed"),
                   nnUNet_results=str(work / "results"))
    fold = work / "results" / "Dataset510_PhantomBenchmark" / "nnUNetTrainer__nnUNetPlans__3d_tiny" / "fold_0"
    checkpoint = _mtimes(fold)
    direct = run_command([sys.executable, "-m", "nnunet_ext.benchmark.train", "510", "3d_tiny", "0", "-tr",
                          "nnUNetTrainer", "--epochs", "3", "--iterations", "2", "--val-iterations", "1"], run_env,
                         timeout=300, check=False)
    assert direct.returncode == 2 and "resume with the budget it was started with" in direct.stderr
    assert {k: v for k, v in _mtimes(fold).items() if k.endswith(".pth")} == \
        {k: v for k, v in checkpoint.items() if k.endswith(".pth")}
    # asked for seeds the folder has no fold for, --report-only names them (and rewrites the report)
    more = run_command(args + ["--report-only", "--seeds", 0, 1], env, timeout=300).stdout
    assert "Not finished yet, so not in these tables: every trainer at 50% seed 1 (no fold yet)." in more


def _training_span(folder):
    """(first, last) timestamp of nnU-Net's training log lines of one run."""
    import datetime
    import glob

    stamps = []
    for path in glob.glob(os.path.join(folder, "training_log_*.txt")):
        for line in open(path):
            try:
                stamps.append(datetime.datetime.strptime(line[:26], "%Y-%m-%d %H:%M:%S.%f"))
            except ValueError:
                continue
    return min(stamps), max(stamps)


def _mtimes(folder):
    return {os.path.join(r, f): os.stat(os.path.join(r, f)).st_mtime_ns for r, _, fs in os.walk(folder) for f in fs}
