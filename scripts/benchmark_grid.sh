#!/usr/bin/env bash
# The whole benchmark grid, piece by piece, in the order that answers the project's targets first
# (docs/benchmarks.md, "The CPU grid"): plain nnU-Net with all labels (the budget must let it converge), then
# 10 % labels seed by seed for the baseline and the methods with a target, the ablations (at 10 %) on seed 0,
# 20 % labels and the 100 %-label baseline it is compared with, the ablations' other seeds, the methods at 100 %,
# and the equal-wall-clock rows; on the CPU grid the runs longer than a session go last (long_runs, below). Every
# step is one nnUNetv2_ext_benchmark call on the same work folder, so running this script again (after a reboot,
# or in the next session) skips finished runs, resumes the interrupted one from its last checkpoint and goes on
# from there. Stops at the first failure.
# Every finished run's results also go to the archive folder in the repository (metrics and training logs, a few
# hundred kB per run; commit it): a machine whose work folder is lost between sessions regenerates the data,
# takes the archived runs and goes on with the first missing one. Before such a machine goes, keep the started
# run too (its logs; its latest checkpoint stays out of git, so only a machine that keeps its disk resumes it):
#
#   .venv/bin/nnUNetv2_ext_benchmark --mode cpu --work work_data/benchmark_cpu --archive docs/results/cpu --keep-unfinished
#
#   nohup bash scripts/benchmark_grid.sh [--dry-run] [--mode cpu|full] [--parallel N] [--device cpu|cuda] [WORK_FOLDER [ARCHIVE_FOLDER]] > grid.log 2>&1 &
#
# --mode cpu (default): the grid on 24x48x48 volumes, sized for 2 CPU cores, in work_data/benchmark_cpu, archived
# in docs/results/cpu; 2 runs at a time with one core each (--parallel 2:
# 1.1-1.3x the work of one run on both cores).
# --mode full: the GPU-sized grid (40x80x80 volumes), in work_data/benchmark_full_12k, archived in
# docs/results/full_12k; one run at a time. --parallel N overrides the runs at a time; --device cuda trains on a
# GPU (default cpu). --dry-run prints the calls.
set -euo pipefail
cd "$(dirname "$0")/.."

dry_run=false
mode=cpu
parallel=
device=cpu
while [[ $# -gt 0 && "$1" == --* ]]; do
    case "$1" in
        --dry-run) dry_run=true; shift ;;
        --mode) mode="$2"; shift 2 ;;
        --parallel) parallel="$2"; shift 2 ;;
        --device) device="$2"; shift 2 ;;
        *) echo "benchmark_grid.sh: unknown option $1 (see the comment at the top of $0)" >&2; exit 2 ;;
    esac
done
case "$mode" in
    cpu) default_work=work_data/benchmark_cpu; default_archive=docs/results/cpu; parallel=${parallel:-2} ;;
    full) default_work=work_data/benchmark_full_12k; default_archive=docs/results/full_12k; parallel=${parallel:-1} ;;
    *) echo "benchmark_grid.sh: --mode must be cpu or full, not $mode" >&2; exit 2 ;;
esac
work="${1:-$default_work}"
archive="${2:-$default_archive}"
export nnUNet_compile="${nnUNet_compile:-f}"  # torch.compile does not pay off on 2 CPU cores

targets=(nnUNetTrainer nnUNetTrainerMedContext nnUNetTrainerSimCVD VolumeFusion+nnUNetTrainer
         VolumeFusion+nnUNetTrainerSimCVDMedContext)
# ablations ("ablation": true in methods.json) explain a method's result at the targets' 10 % labels
ablations=(nnUNetTrainerMedContext_noTeacher nnUNetTrainerMedContext_organ VolumeFusion4xSteps+nnUNetTrainer
           nnUNetTrainerMedContext_halfBatch)
equal_time=(nnUNetTrainer_sameTimeAs_MedContext nnUNetTrainer_sameTimeAs_SimCVD nnUNetTrainer_sameTimeAs_SimCVDMedContext)

# Runs that take longer than a session of this project's CPU machines (3 hours, whose work folder may be gone in the
# next): the combined method (about 3.4 h beside another run on 2 cores), the 4x pretraining (about 4 h) and plain
# nnU-Net for the combined method's time. On a machine that loses its disk they would start over in every session
# and never finish, so in --mode cpu the grid runs in two passes in the same order: every other run first, these
# last (for a machine that keeps its disk; docs/benchmarks.md, "The CPU grid"). --mode full (a GPU) has one pass.
long_runs=(VolumeFusion+nnUNetTrainerSimCVDMedContext VolumeFusion4xSteps+nnUNetTrainer
           nnUNetTrainer_sameTimeAs_SimCVDMedContext)
pass=all

# the pass a trainer belongs to: long or short
pass_of() {
    local run
    for run in "${long_runs[@]}"; do [[ "$run" == "$1" ]] && { echo long; return; }; done
    echo short
}

# one nnUNetv2_ext_benchmark call: the options, then -tr TRAINER...; only the trainers of this pass, none: no call
step() {
    local options=() trainers=() trainer
    while [[ $# -gt 0 && "$1" != -tr ]]; do options+=("$1"); shift; done
    if [[ $# -gt 0 ]]; then
        shift
        for trainer in "$@"; do
            if [[ "$pass" == all || "$pass" == "$(pass_of "$trainer")" ]]; then trainers+=("$trainer"); fi
        done
        [[ ${#trainers[@]} -gt 0 ]] || return 0
        options+=(-tr "${trainers[@]}")
    fi
    local cmd=(.venv/bin/nnUNetv2_ext_benchmark --mode "$mode" -device "$device" --work "$work" --archive "$archive"
               --parallel "$parallel" "${options[@]}")
    echo "$(date '+%F %T') ${cmd[*]}"
    if ! $dry_run; then "${cmd[@]}"; fi
}

grid() {
    # the budget first: plain nnU-Net with all labels must converge on the data (methods.md, section 6)
    step --fractions 1.0 --seeds 0 -tr nnUNetTrainer
    # the targets at 10 % labels; one call for the three seeds (its runs go seed by seed): with --parallel 2 the
    # next seed's runs train beside the last of a seed's instead of a core idling
    local seeds=(0 1 2)
    # full: seed 0 at 10 % of every method but the combined one was measured before the archive existed
    # (docs/benchmarks.md), and its runs were lost with their machine: the other seeds first
    if [[ "$mode" == full ]]; then seeds=(1 2 0); fi
    step --fractions 0.1 --seeds "${seeds[@]}" -tr "${targets[@]}"
    # why a method falls short of its target: one seed of the ablations before the other fractions
    step --fractions 0.1 --seeds 0 -tr "${ablations[@]}"
    # the 20 % target: the methods at 20 %, and plain nnU-Net's 100 %-label Dice it is measured against
    step --fractions 0.2 --seeds 0 1 2 -tr "${targets[@]}"
    step --fractions 1.0 --seeds 1 2 -tr nnUNetTrainer
    step --fractions 0.1 --seeds 1 2 -tr "${ablations[@]}"
    step --fractions 1.0 --seeds 0 1 2 -tr "${targets[@]}"
    local fraction
    for fraction in 0.1 0.2 1.0; do
        step --fractions "$fraction" --seeds 0 1 2 -tr "${equal_time[@]}"
    done
}

if [[ "$mode" == cpu ]]; then
    pass=short; grid
    pass=long; grid
else
    grid
fi
step --report-only
