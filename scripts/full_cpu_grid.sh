#!/usr/bin/env bash
# The full benchmark on a CPU, piece by piece, in the order that answers the project's targets first
# (docs/benchmarks.md, "Status"): 10 % labels seed by seed for the baseline and the methods with a target, then
# 20 % and 100 %, then the ablation and equal-wall-clock rows. Every step is one nnUNetv2_ext_benchmark call on
# the same work folder, so running this script again (after a reboot, or in the next session) skips finished
# runs, resumes the interrupted one from its last checkpoint and goes on from there. Stops at the first failure.
#
#   nohup bash scripts/full_cpu_grid.sh [WORK_FOLDER] > full_cpu_grid.log 2>&1 &
#
# Default work folder: work_data/benchmark_full_12k. Pass --dry-run as the only argument to print the calls.
set -euo pipefail
cd "$(dirname "$0")/.."

dry_run=false
if [[ "${1:-}" == "--dry-run" ]]; then dry_run=true; shift; fi
work="${1:-work_data/benchmark_full_12k}"
export nnUNet_compile="${nnUNet_compile:-f}"  # torch.compile does not pay off on 2 CPU cores

targets=(nnUNetTrainer nnUNetTrainerMedContext nnUNetTrainerSimCVD VolumeFusion+nnUNetTrainer
         VolumeFusion+nnUNetTrainerSimCVDMedContext)
others=(nnUNetTrainerMedContext_halfBatch nnUNetTrainer_sameTimeAs_MedContext nnUNetTrainer_sameTimeAs_SimCVD
        nnUNetTrainer_sameTimeAs_SimCVDMedContext)

step() {
    local cmd=(.venv/bin/nnUNetv2_ext_benchmark -device cpu --work "$work" "$@")
    echo "$(date '+%F %T') ${cmd[*]}"
    if ! $dry_run; then "${cmd[@]}"; fi
}

for fraction in 0.1 0.2 1.0; do
    for seed in 0 1 2; do
        step --fractions "$fraction" --seeds "$seed" -tr "${targets[@]}"
    done
done
for fraction in 0.1 0.2 1.0; do
    step --fractions "$fraction" --seeds 0 1 2 -tr "${others[@]}"
done
step --report-only
