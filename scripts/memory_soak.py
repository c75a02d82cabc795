"""Memory soak: train several trainers side by side for a fixed wall time and record their memory over time.

Each trainer runs in its own process through nnU-Net's own trainer (`run_training`), with its data-loading
workers, short epochs (so epoch ends, validation and checkpoint writes happen often) and checkpoints every
`--save-every` epochs. Every `--interval` seconds the proportional set size (PSS, from
/proc/<pid>/smaps_rollup, so memory shared with the workers is not counted twice) of each trainer's whole
process tree is recorded. Linux only.

Writes <out>/soak.csv, <out>/soak.png and <out>/soak.md (peak memory per 10-minute window, growth between
the first and the last window). Needs nnUNet_raw / nnUNet_preprocessed set and a planned dataset with a
preprocessed unlabeled pool, and `eval "$(nnUNetv2_ext_env)"` for the trainers:

    python scripts/memory_soak.py -d 501 -c 3d_small -tr nnUNetTrainer nnUNetTrainerMedContext \\
        nnUNetTrainerSimCVD nnUNetTrainerVolumeFusion --minutes 60 -o soak
"""
import argparse
import csv
import os
import signal
import subprocess
import sys
import time


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants, read from /proc."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def pss_mib(pid: int) -> float:
    """Proportional set size of one process in MiB (0 if it has gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_worker(args):
    """Train one trainer with short epochs until killed."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    torch.set_num_threads(args.threads)
    fold = args.fold if args.fold == "all" else int(args.fold)
    trainer = get_trainer_from_args(args.dataset, args.configuration, fold, args.trainer[0], args.plans,
                                    device=torch.device("cpu"))
    trainer.num_iterations_per_epoch = args.iterations
    trainer.num_val_iterations_per_epoch = max(1, args.iterations // 5)
    trainer.save_every = args.save_every
    trainer.run_training()


def summarise(rows, trainers, window_min=10.0):
    lines = ["| trainer | epochs done | peak first %g min (MiB) | peak last %g min (MiB) | growth (MiB) | overall peak (MiB) |"
             % (window_min, window_min), "|---|---|---|---|---|---|"]
    for name in trainers:
        mine = [r for r in rows if r["trainer"] == name]
        if not mine:
            continue
        end = mine[-1]["minutes"]
        first = max(r["pss_mib"] for r in mine if r["minutes"] <= window_min)
        last = max(r["pss_mib"] for r in mine if r["minutes"] >= end - window_min)
        peak = max(r["pss_mib"] for r in mine)
        lines.append(f"| {name} | {mine[-1]['epochs']} | {first:.0f} | {last:.0f} | {last - first:+.0f} | {peak:.0f} |")
    return "\n".join(lines) + "\n"


def epochs_done(log_dir: str) -> int:
    """Completed epochs, counted from nnU-Net's training log ("Epoch N" lines)."""
    count = 0
    if os.path.isdir(log_dir):
        for name in os.listdir(log_dir):
            if name.startswith("training_log"):
                with open(os.path.join(log_dir, name)) as f:
                    count = max(count, sum(1 for line in f if ": Epoch " in line and "time" not in line) - 1)
    return max(count, 0)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", dest="dataset", required=True)
    parser.add_argument("-c", dest="configuration", required=True)
    parser.add_argument("-f", dest="fold", default="0")
    parser.add_argument("-p", dest="plans", default="nnUNetPlans")
    parser.add_argument("-tr", dest="trainer", nargs="+", required=True)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=20.0, help="seconds between memory samples")
    parser.add_argument("--iterations", type=int, default=25, help="training iterations per epoch")
    parser.add_argument("--save-every", type=int, default=2, help="checkpoint every N epochs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per trainer")
    parser.add_argument("-o", dest="out", default="soak")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return run_worker(args)

    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    os.makedirs(args.out, exist_ok=True)
    dataset_name = maybe_convert_to_dataset_name(args.dataset)
    procs = {}
    for name in args.trainer:
        command = [sys.executable, os.path.abspath(__file__), "--worker", "-d", args.dataset, "-c",
                   args.configuration, "-f", args.fold, "-p", args.plans, "-tr", name, "--iterations",
                   str(args.iterations), "--save-every", str(args.save_every), "--threads", str(args.threads)]
        log = open(os.path.join(args.out, f"{name}.log"), "w")
        procs[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    rows, start = [], time.time()
    try:
        with open(os.path.join(args.out, "soak.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, ["minutes", "trainer", "pss_mib", "processes", "epochs"])
            writer.writeheader()
            while time.time() - start < args.minutes * 60:
                time.sleep(args.interval)
                minutes = (time.time() - start) / 60
                for name, proc in procs.items():
                    if proc.poll() is not None:
                        raise SystemExit(f"{name} stopped early (exit code {proc.returncode}); see "
                                         f"{os.path.join(args.out, name + '.log')}")
                    tree = process_tree(proc.pid)
                    log_dir = os.path.join(os.environ["nnUNet_results"], dataset_name,
                                           f"{name}__{args.plans}__{args.configuration}", f"fold_{args.fold}")
                    row = {"minutes": round(minutes, 2), "trainer": name,
                           "pss_mib": round(sum(pss_mib(p) for p in tree), 1), "processes": len(tree),
                           "epochs": epochs_done(log_dir)}
                    rows.append(row)
                    writer.writerow(row)
                f.flush()
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    table = summarise(rows, args.trainer)
    with open(os.path.join(args.out, "soak.md"), "w") as f:
        f.write(table)
    print(table)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name in args.trainer:
        mine = [r for r in rows if r["trainer"] == name]
        ax.plot([r["minutes"] for r in mine], [r["pss_mib"] for r in mine], label=name)
    ax.set_xlabel("minutes")
    ax.set_ylabel("PSS of process tree (MiB)")
    ax.set_ylim(bottom=0)
    ax.legend()
    ax.set_title(f"memory soak, {args.configuration}, {args.iterations} iterations/epoch")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "soak.png"), dpi=100)


if __name__ == "__main__":
    main()
