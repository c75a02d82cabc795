"""Volume Fusion pretraining of the whole plans network on images only (methods.md section 2).

``nnUNetv2_ext_prepare_pretraining -d TARGET`` prepares the pool; ``nnUNetv2_train TARGET CFG all -tr
nnUNetTrainerVolumeFusion`` pretrains the exact network the target's plans describe, with K + 1 outputs (fusion
classes 0..K); any trainer then fine-tunes with ``-pretrained_weights`` (every layer but the segmentation
outputs). Each step fuses nnU-Net's augmented batch: the foreground of sample i is sample i - 1 (batch roll),
or a second random crop when the batch holds one sample; the target is the painted class map, downsampled
nearest-exact for deep supervision as nnU-Net downsamples its targets. The loss is nnU-Net's Dice + CE with the
background (class 0) included in the Dice. Labels are never read; there is no final validation.

The per-epoch pseudo Dice in nnU-Net's log and ``progress.png`` is that of fusion classes 1..K on fused
validation batches (from the same pool).
"""
import torch
from nnunetv2.utilities.label_handling.label_handling import LabelManager
from torch.nn import functional as F

from nnunet_ext.ema import unwrap_module
from nnunet_ext.errors import UserInputError
from nnunet_ext.training.base import nnUNetTrainerExtBase
from nnunet_ext.training.unlabeled_pool import build_pretraining_pool
from nnunet_ext.volume_fusion import fuse_batch

__all__ = ["nnUNetTrainerVolumeFusion", "nnUNetTrainerVolumeFusion_K2", "nnUNetTrainerVolumeFusion_K8"]


def fusion_label_manager(num_classes: int) -> LabelManager:
    """Labels 0..K of the pretext task (0 = pure background, k = fraction k/K of the foreground)."""
    labels = {"background": 0, **{f"fusion_{k}_of_{num_classes}": k for k in range(1, num_classes + 1)}}
    return LabelManager(labels, regions_class_order=None)


class nnUNetTrainerVolumeFusion(nnUNetTrainerExtBase):
    """Volume Fusion pretraining with K = 4 (5 classes), 10-40 boxes of 1/8-5/8 of the patch edge."""

    fusion_classes = 4                   # K
    pretraining_only = True              # predicts the pretext task: no inference on the dataset's labels
    checks_label_values = False          # labels are never read (the pool includes unlabeled images)
    num_boxes = (10, 40)
    box_edge_fraction = (1 / 8, 5 / 8)

    def __init__(self, plans: dict, configuration: str, fold, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        # the pretext task's classes replace the dataset's labels (output channels, loss, pseudo Dice)
        self.label_manager = fusion_label_manager(self.fusion_classes)
        # images only: there is no foreground to oversample
        self.oversample_foreground_percent = 0.0

    def method_hyperparameters(self) -> dict:
        return {"fusion_classes": self.fusion_classes, "num_boxes": list(self.num_boxes),
                "box_edge_fraction": list(self.box_edge_fraction),
                "cross_scan": "batch roll" if self.batch_size >= 2 else "second random crop"}

    def initialize(self):
        if self.fusion_classes < 1:
            raise UserInputError(f"{self.__class__.__name__}: fusion_classes must be >= 1.")
        super().initialize()
        if self.fold != "all":
            self.print_to_log_file(f"Note: Volume Fusion pretrains on the whole pool whatever the fold; fold "
                                   f"{self.fold} only names the output folder (nnU-Net's convention is 'all').")

    def _build_loss(self):
        loss = super()._build_loss()
        # Dice over all fusion classes, class 0 included (the pretext task has no 'ignorable' background)
        inner = loss.loss if hasattr(loss, "loss") else loss
        unwrap_module(inner.dc).do_bg = True
        return loss

    # ---------------------------------------------------------------- data: the pretraining pool
    def get_tr_and_val_datasets(self):
        pool = build_pretraining_pool(self.dataset_class, self.preprocessed_dataset_folder_base,
                                      self.preprocessed_dataset_folder, self.configuration_manager.data_identifier)
        self.print_to_log_file(f"Pretraining pool: {len(pool)} images")
        # validation batches (pseudo Dice of the fusion classes) come from the same pool
        return pool, pool

    # ---------------------------------------------------------------- fusion
    def _fusion_targets(self, labels: torch.Tensor):
        """nnU-Net's target structure: one map per deep-supervision output, nearest-exact downsampled."""
        if not self.enable_deep_supervision:
            return labels
        targets = []
        spatial = labels.shape[2:]
        for scale in self._get_deep_supervision_scales():
            shape = [int(round(s * f)) for s, f in zip(spatial, scale)]
            if list(shape) == list(spatial):
                targets.append(labels)
            else:
                targets.append(F.interpolate(labels.float(), size=shape, mode="nearest-exact").to(labels.dtype))
        return targets

    def fuse(self, batch: dict, loader) -> dict:
        """The fused batch (``data``, ``target``) that replaces nnU-Net's batch; labels are not read."""
        data = self.to_device(batch["data"], self.device)
        foreground = None
        if data.shape[0] < 2:
            # no other scan in the batch: the foreground is a second random crop from the pool
            foreground = self.to_device(next(loader)["data"], self.device)
        fused, labels = fuse_batch(data, self.fusion_classes, foreground, self.num_boxes, self.box_edge_fraction)
        return {"data": fused, "target": self._fusion_targets(labels)}

    def train_step(self, batch: dict) -> dict:
        result = super().train_step(self.fuse(batch, self.dataloader_train))
        self.global_step += 1
        return result

    def validation_step(self, batch: dict) -> dict:
        return super().validation_step(self.fuse(batch, self.dataloader_val))

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("Volume Fusion pretraining has no final validation (the pretext task has no "
                               "labels to export); fine-tune with -pretrained_weights and validate that run.")


class nnUNetTrainerVolumeFusion_K2(nnUNetTrainerVolumeFusion):
    """K = 2 (3 fusion classes)."""
    fusion_classes = 2


class nnUNetTrainerVolumeFusion_K8(nnUNetTrainerVolumeFusion):
    """K = 8 (9 fusion classes)."""
    fusion_classes = 8
