#!/usr/bin/env bash
# Run every nnunet-ext trainer on a CUDA GPU through nnU-Net's own commands, with torch.compile and mixed
# precision as nnU-Net enables them there: train (killed after epoch 2, then resumed with --c), predict,
# fine-tune from Volume Fusion weights. Prints PASS/FAIL per check; exits non-zero on any failure.
#   bash scripts/cuda_check.sh WORK_FOLDER        (needs a GPU; about 6 minutes on one H100)
set -uo pipefail
WORK=${1:?usage: cuda_check.sh WORK_FOLDER}
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$WORK/logs"
export nnUNet_raw=$WORK/raw nnUNet_preprocessed=$WORK/pre nnUNet_results=$WORK/res
unset nnUNet_n_proc_DA nnUNet_compile   # nnU-Net's defaults on CUDA: torch.compile on
export nnUNet_extTrainer=$REPO/scripts/cuda_check_trainers
eval "$(nnUNetv2_ext_env)" || exit 1
failures=0
check() {  # check NAME COMMAND...: run a shell test, print PASS/FAIL
  local name=$1; shift
  if "$@"; then echo "PASS $name"; else echo "FAIL $name"; failures=$((failures + 1)); fi
}
stamp() { echo "== $(date +%T) $*"; }

stamp "data: phantom (12 training, 2 test, 6 unlabeled cases of 40x80x80), plans, 3d_small"
if [ ! -f "$WORK/.prepared" ]; then
  nnUNetv2_ext_generate_phantom -d 501 --train 12 --test 2 --unlabeled 6 --shape 40 80 80 --seed 0 \
      > "$WORK/logs/prepare.log" 2>&1 &&
  nnUNetv2_plan_and_preprocess -d 501 -c 3d_fullres -np 8 >> "$WORK/logs/prepare.log" 2>&1 &&
  nnUNetv2_ext_add_preset -d 501 -preset 3d_small >> "$WORK/logs/prepare.log" 2>&1 &&
  nnUNetv2_ext_preprocess_unlabeled -d 501 -c 3d_small >> "$WORK/logs/prepare.log" 2>&1 &&
  nnUNetv2_ext_prepare_pretraining -d 501 -c 3d_small >> "$WORK/logs/prepare.log" 2>&1 &&
  touch "$WORK/.prepared" || { tail -30 "$WORK/logs/prepare.log"; exit 1; }
fi
RES=$nnUNet_results/Dataset501_Phantom

train_killed_then_resumed() {  # TRAINER FOLD [extra args]: first call is SIGKILLed after epoch 2, --c finishes
  local tr=$1 fold=$2; shift 2
  local log=$WORK/logs/train_${tr}_${fold}.log
  export nnUNet_n_proc_DA=2
  nnUNetv2_train 501 3d_small "$fold" -tr "$tr" "$@" > "$log" 2>&1
  echo "first call exit code $?" >> "$log"
  nnUNetv2_train 501 3d_small "$fold" -tr "$tr" --c >> "$log" 2>&1
  echo "resumed call exit code $?" >> "$log"
}

SEG="nnUNetTrainer_cudaCheck nnUNetTrainerMedContext_cudaCheck nnUNetTrainerMedContext_halfBatch_cudaCheck
     nnUNetTrainerMedContext_noTeacher_cudaCheck nnUNetTrainerMedContext_organ_cudaCheck
     nnUNetTrainerSimCVD_cudaCheck nnUNetTrainerSimCVDMedContext_cudaCheck"
stamp "wave 1: every trainer on fold 0 (Volume Fusion on fold all), in parallel"
for tr in $SEG; do train_killed_then_resumed "$tr" 0 & done
train_killed_then_resumed nnUNetTrainerVolumeFusion_cudaCheck all &
wait
VF=$RES/nnUNetTrainerVolumeFusion_cudaCheck__nnUNetPlans__3d_small/fold_all/checkpoint_final.pth

stamp "wave 2: fine-tuning from Volume Fusion weights (fold 1), predictions of the fold-0 models"
for tr in nnUNetTrainer_cudaCheck nnUNetTrainerSimCVDMedContext_cudaCheck; do
  train_killed_then_resumed "$tr" 1 -pretrained_weights "$VF" &
done
for tr in $SEG; do
  nnUNetv2_predict -i "$nnUNet_raw/Dataset501_Phantom/imagesTs" -o "$WORK/pred_$tr" -d 501 -c 3d_small -f 0 \
      -tr "$tr" > "$WORK/logs/predict_$tr.log" 2>&1 &
done
wait
stamp "checks"

for tr in $SEG nnUNetTrainerVolumeFusion_cudaCheck; do
  folds="0"; [ "$tr" = nnUNetTrainerVolumeFusion_cudaCheck ] && folds=all
  case $tr in nnUNetTrainer_cudaCheck|nnUNetTrainerSimCVDMedContext_cudaCheck) folds="0 1";; esac
  for fold in $folds; do
    out=$RES/${tr}__nnUNetPlans__3d_small/fold_$fold
    log=$WORK/logs/train_${tr}_${fold}.log
    check "$tr fold $fold: first call killed (137), resumed call exit 0" \
      grep -qz "first call exit code 137.*resumed call exit code 0" "$log"
    check "$tr fold $fold: resumed from the epoch-2 checkpoint" \
      bash -c "last=\$(ls '$out'/training_log_*.txt | tail -1); ls '$out'/training_log_*.txt | wc -l | grep -qx 2 &&
              grep -q 'Epoch 2 *\$' \$last && ! grep -q 'Epoch 0 *\$' \$last"
    check "$tr fold $fold: checkpoint_final.pth written" test -s "$out/checkpoint_final.pth"
    check "$tr fold $fold: no NaN/inf in the training logs" bash -c "cat '$out'/training_log_*.txt > /dev/null &&
                                                                   ! grep -qiwE 'nan|inf' '$out'/training_log_*.txt"
    [ "$fold" != all ] && check "$tr fold $fold: final validation summary" test -s "$out/validation/summary.json"
    echo "   $(grep -h 'Pseudo dice' "$out"/training_log_*.txt | tail -1 | cut -c28-)"
    echo "   $(grep -h 'Epoch time' "$out"/training_log_*.txt | tail -1 | cut -c28-)"
  done
done
for tr in $SEG; do
  check "$tr: nnUNetv2_predict on CUDA wrote 2 test predictions" \
    bash -c "ls '$WORK/pred_$tr'/*.nii.gz 2>/dev/null | wc -l | grep -qx 2"
done
check "fine-tuning logs show the pretrained weights were loaded" \
  grep -q "Loading pretrained weights from file" "$WORK/logs/train_nnUNetTrainer_cudaCheck_1.log"
echo "failures: $failures"
exit $((failures > 0))
