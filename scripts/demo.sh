#!/usr/bin/env bash
# The main job on the bundled generated data: phantom dataset -> nnU-Net planning -> small preset ->
# short training of plain nnU-Net and MedContext -> stock prediction and evaluation -> cost benchmark.
# Everything goes through nnU-Net's own commands; all data stays under work_data/ (override with WORK).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-$PWD/work_data/demo}
export nnUNet_raw=$WORK/raw nnUNet_preprocessed=$WORK/preprocessed nnUNet_results=$WORK/results
export nnUNet_def_n_proc=2 nnUNet_compile=f
DEVICE=${DEVICE:-cpu}
mkdir -p "$nnUNet_raw" "$nnUNet_preprocessed" "$nnUNet_results"
BIN=.venv/bin
eval "$($BIN/nnUNetv2_ext_env)"

$BIN/nnUNetv2_ext_generate_phantom -d 501 --train 12 --test 4 --shape 40 80 80 --seed 0 \
    --overview "$WORK/phantom_overview.png"
[ -f "$nnUNet_preprocessed/Dataset501_Phantom/nnUNetPlans.json" ] || \
    $BIN/nnUNetv2_plan_and_preprocess -d 501 -c 3d_fullres -np 2 --verify_dataset_integrity
$BIN/nnUNetv2_ext_add_preset -d 501 -preset 3d_small

for TR in nnUNetTrainer_smoke nnUNetTrainerMedContext_smoke; do
  if [ ! -f "$nnUNet_results/Dataset501_Phantom/${TR}__nnUNetPlans__3d_small/fold_0/checkpoint_final.pth" ]; then
    nnUNet_n_proc_DA=2 $BIN/nnUNetv2_train 501 3d_small 0 -tr $TR -device $DEVICE
  fi
  $BIN/nnUNetv2_predict -i "$nnUNet_raw/Dataset501_Phantom/imagesTs" -o "$WORK/predictions/$TR" \
      -d 501 -c 3d_small -f 0 -tr $TR -device $DEVICE -npp 2 -nps 2
  $BIN/nnUNetv2_evaluate_folder "$nnUNet_raw/Dataset501_Phantom/labelsTs" "$WORK/predictions/$TR" \
      -djfile "$WORK/predictions/$TR/dataset.json" -pfile "$WORK/predictions/$TR/plans.json"
  echo "$TR test Dice (mean over organs): $($BIN/python -c "import json,sys; print(round(json.load(open(sys.argv[1]))['foreground_mean']['Dice'], 4))" "$WORK/predictions/$TR/summary.json")"
done

$BIN/nnUNetv2_ext_benchmark_cost -d 501 -c 3d_small -tr nnUNetTrainerMedContext nnUNetTrainerMedContext_halfBatch \
    -device $DEVICE -o "$WORK/cost.json"
