#!/usr/bin/env bash
# The full benchmark on a CPU, piece by piece, in the order that answers the project's targets first
# (docs/benchmarks.md, "Status"): 10 % labels seed by seed for the baseline and the methods with a target, then
# 20 % and 100 %, then the ablation and equal-wall-clock rows. Every step is one nnUNetv2_ext_benchmark call on
# the same work folder, so running this script again (after a reboot, or in the next session) skips finished
# runs, resumes the interrupted one from its last checkpoint and goes on from there. Stops at the first failure.
# Every finished run's results also go to the archive folder in the repository (docs/results/full_12k: metrics
# and training logs, a few hundred kB per run; commit it): a machine whose work folder is lost between sessions
# regenerates the data, takes the archived runs and goes on with the first missing one.
#
#   nohup bash scripts/full_cpu_grid.sh [WORK_FOLDER [ARCHIVE_FOLDER]] > full_cpu_grid.log 2>&1 &
#
# Default work folder: work_data/benchmark_full_12k. Pass --dry-run as the first argument to print the calls.
set -euo pipefail
cd "$(dirname "$0")/.."

dry_run=false
if [[ "${1:-}" == "--dry-run" ]]; then dry_run=true; shift; fi
work="${1:-work_data/benchmark_full_12k}"
archive="${2:-docs/results/full_12k}"
export nnUNet_compile="${nnUNet_compile:-f}"  # torch.compile does not pay off on 2 CPU cores

targets=(nnUNetTrainer nnUNetTrainerMedContext nnUNetTrainerSimCVD VolumeFusion+nnUNetTrainer
         VolumeFusion+nnUNetTrainerSimCVDMedContext)
others=(nnUNetTrainerMedContext_halfBatch nnUNetTrainer_sameTimeAs_MedContext nnUNetTrainer_sameTimeAs_SimCVD
        nnUNetTrainer_sameTimeAs_SimCVDMedContext)

step() {
    local cmd=(.venv/bin/nnUNetv2_ext_benchmark -device cpu --work "$work" --archive "$archive" "$@")
    echo "$(date '+%F %T') ${cmd[*]}"
    if ! $dry_run; then "${cmd[@]}"; fi
}

# seeds 1 and 2 first at 10 %: seed 0 of every method but the combined one was measured before the archive
# existed (docs/benchmarks.md), and its runs were lost with their machine
for fraction in 0.1 0.2 1.0; do
    seeds=(0 1 2)
    if [[ "$fraction" == 0.1 ]]; then seeds=(1 2 0); fi
    for seed in "${seeds[@]}"; do
        step --fractions "$fraction" --seeds "$seed" -tr "${targets[@]}"
    done
done
for fraction in 0.1 0.2 1.0; do
    step --fractions "$fraction" --seeds 0 1 2 -tr "${others[@]}"
done
step --report-only
