"""SimCVD for nnU-Net: semi-supervised mean teacher with signed-distance heads and contrastive distillation.

Specification: methods.md section 3 (multi-class, with its decisions). Per step, on a labeled batch (x, y, sdm)
and an equally large unlabeled batch u (same nnU-Net augmentation, no labels):

    L = L_seg(f(x), y) + 0.1 * MSE(sdm_head(x), sdm)                                     (supervised)
        + w(t) * (0.5 * InfoNCE(slices of u + sdm_s(u), of u' + sdm_t(u'))                (contrastive)
                  + 0.1 * InfoNCE over bottleneck locations of f(u) and teacher(u')          (pair-wise)
                  + 0.1 * MSE(softmax f(u), softmax teacher(u')))                            (consistency)

with u' = u + clamp(N(0, 0.1), +-0.2), w(t) the Gaussian ramp exp(-5 (1 - t/T)^2) and the teacher (network and
heads) an EMA of the student with decay min(1 - 1/(step + 1), 0.99) (UA-MT's warm-up). ``self.network`` is the
plans network; the SDM head reads its last decoder stage and the pair-wise term its bottleneck through forward
hooks. Heads and teacher live beside it and in the checkpoint, so inference is plain nnU-Net's.

The unlabeled batch comes from a second nnU-Net loader over the fold's unlabeled pool; it travels with the
labeled batch (``batch['unlabeled']``). Signed distance maps of the labeled patches are computed in the
data-loading workers and arrive as the last element of ``batch['target']``.
"""
import torch
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

from nnunet_ext.contrastive import pairwise_distillation_loss, symmetric_info_nce
from nnunet_ext.ema import ema_update_, make_teacher, unwrap_module
from nnunet_ext.errors import UserInputError
from nnunet_ext.feature_taps import locate_unet_features
from nnunet_ext.losses import softmax_mse
from nnunet_ext.schedules import gaussian_rampup, mean_teacher_decay
from nnunet_ext.sdm import AppendSignedDistanceMapTransform
from nnunet_ext.simcvd import SimCVDHeads, boundary_aware_input, clipped_gaussian_noise, sdm_regression_loss
from nnunet_ext.training.base import (batch_slice, disable_deep_supervision, full_resolution,
                                       nnUNetTrainerExtBase)
from nnunet_ext.training.unlabeled_pool import build_unlabeled_pool

__all__ = [
    "nnUNetTrainerSimCVD",
    "nnUNetTrainerSimCVD_ema999",
    "nnUNetTrainerSimCVD_noContrast",
    "nnUNetTrainerSimCVD_noPD",
]


class LabeledUnlabeledLoader:
    """Yields nnU-Net's labeled batches with an unlabeled batch attached as ``batch['unlabeled']``.

    Both loaders keep their own augmenter (worker processes); :meth:`finish` shuts both down.
    """

    def __init__(self, labeled, unlabeled):
        self.labeled, self.unlabeled = labeled, unlabeled

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = next(self.labeled)
        batch["unlabeled"] = next(self.unlabeled)["data"]
        return batch

    def finish(self):
        for loader in (self.labeled, self.unlabeled):
            if hasattr(loader, "_finish"):
                loader._finish()


class nnUNetTrainerSimCVD(nnUNetTrainerExtBase):
    """SimCVD (methods.md section 3): SDM head, EMA teacher 0.99, contrastive + pair-wise + consistency terms."""

    ema_decay = 0.99
    sdm_weight = 0.1                     # alpha of L_sup
    contrast_weight = 0.5
    pairwise_weight = 0.1
    consistency_weight = 0.1
    temperature = 0.5                    # of the slice InfoNCE
    # UA-MT/DTC ramp their unsupervised weights over the whole run (40 "epochs" of 150 of 6000 iterations)
    unsupervised_rampup_fraction = 1.0
    teacher_noise_std = 0.1
    teacher_noise_clip = 0.2
    unlabeled_batch_ratio = 1.0          # unlabeled batch size = ratio x labeled batch size
    projection_hidden = 256
    projection_dim = 128
    projection_pool = 4
    projection_dropout = 0.1
    use_contrast = True
    use_pairwise = True

    extra_log_keys = ("seg", "sdm", "contrast", "pairwise", "consistency", "unsupervised_weight",
                      "teacher_decay")
    extra_plot_name = "progress_simcvd.png"

    def method_hyperparameters(self) -> dict:
        names = ("ema_decay", "sdm_weight", "contrast_weight", "pairwise_weight", "consistency_weight",
                 "temperature", "unsupervised_rampup_fraction", "teacher_noise_std", "teacher_noise_clip",
                 "unlabeled_batch_ratio", "projection_hidden", "projection_dim", "projection_pool",
                 "projection_dropout", "use_contrast", "use_pairwise")
        hyperparameters = {name: getattr(self, name) for name in names}
        hyperparameters["unlabeled_batch_size"] = self.unlabeled_batch_size
        hyperparameters["student_passes"] = "concatenated" if self.concatenate_student_passes else "separate"
        return hyperparameters

    @property
    def unlabeled_batch_size(self) -> int:
        return max(1, int(round(self.unlabeled_batch_ratio * self.batch_size)))

    @property
    def concatenate_student_passes(self) -> bool:
        """Labeled and unlabeled samples in one student batch on GPUs and under DDP (one forward per backward).

        On the CPU two passes at the configuration's batch size are faster (docs/cost.md: oneDNN convolutions
        cost more than twice as much for twice the batch). Same maths with nnU-Net's instance normalisation.
        """
        return self.device.type != "cpu" or self.is_ddp

    # ---------------------------------------------------------------- set-up
    def initialize(self):
        self._check_method_config()
        super().initialize()
        try:
            features = locate_unet_features(self.network)
        except ValueError as e:
            raise UserInputError(f"{self.__class__.__name__}: {e}") from None
        spatial_dims = len(self.configuration_manager.patch_size)
        heads = SimCVDHeads(features.decoder_channels, self.label_manager.num_segmentation_heads - 1,
                            self.num_input_channels, spatial_dims, projection_hidden=self.projection_hidden,
                            projection_dim=self.projection_dim, projection_pool=self.projection_pool,
                            projection_dropout=self.projection_dropout,
                            sdm_upsample=features.decoder_upsample)
        self.register_extra_module("heads", heads)
        teacher = make_teacher(self.unwrapped_network)  # copied before the student is hooked
        disable_deep_supervision(teacher)  # only the full-resolution output is used
        self._student_taps = features.taps()
        self._teacher_taps = locate_unet_features(teacher).taps()
        if self._do_i_compile():
            teacher = torch.compile(teacher)
        self.register_extra_module("teacher", teacher)
        self.register_extra_module("teacher_heads", make_teacher(self.heads))
        self.add_extra_parameters_to_optimizer()

    def _check_method_config(self):
        name = self.__class__.__name__
        if self.label_manager.has_regions:
            raise UserInputError(f"{name} needs a label map (one class per voxel) for its signed distance maps, "
                                 f"but this dataset trains on regions. Use nnUNetTrainerMedContext or "
                                 f"nnUNetTrainer for region-based datasets.")
        if self.is_cascaded:
            raise UserInputError(f"{name} cannot train a cascade stage ('{self.configuration_name}'): unlabeled "
                                 f"images have no previous-stage segmentation. Use 3d_fullres, 3d_lowres or 2d.")
        if self.label_manager.num_segmentation_heads < 2:
            raise UserInputError(f"{name} needs at least one foreground class in dataset.json.")
        if not 0.0 <= self.ema_decay < 1.0:
            raise UserInputError(f"{name}: ema_decay must lie in [0, 1), not {self.ema_decay}.")

    def trainable_extra_parameters(self):
        return list(self.heads.parameters())

    def on_train_start(self):
        super().on_train_start()
        if not self.restored_from_checkpoint:
            # start from the student as it is now, i.e. after -pretrained_weights were loaded
            unwrap_module(self.teacher).load_state_dict(self.unwrapped_network.state_dict())
            self.teacher_heads.load_state_dict(self.heads.state_dict())

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self.heads.train()
        self.teacher.eval()
        # the teacher's projection head keeps its dropout active: the two dropout views of SimCVD
        self.teacher_heads.train()

    def on_train_end(self):
        loader = self.dataloader_train
        super().on_train_end()
        if isinstance(loader, LabeledUnlabeledLoader):
            loader.finish()
        for tap in (*self._student_taps, *self._teacher_taps):
            tap.remove()  # final validation and export run the plain network

    # ---------------------------------------------------------------- data
    def get_training_transforms(self, patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes,
                                do_dummy_2d_data_aug, **kwargs):
        """nnU-Net's training transforms, plus signed distance maps appended to the labeled targets.

        The unlabeled pool gets the same augmentation without deep-supervision targets (they are not used).
        """
        parent = super().get_training_transforms  # a staticmethod of nnUNetTrainer
        self._unlabeled_transforms = parent(patch_size, rotation_for_DA, None, mirror_axes,
                                            do_dummy_2d_data_aug, **kwargs)
        labeled = parent(patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes, do_dummy_2d_data_aug,
                         **kwargs)
        return ComposeTransforms([*labeled.transforms, self._sdm_transform()])

    def _sdm_transform(self) -> AppendSignedDistanceMapTransform:
        return AppendSignedDistanceMapTransform(self.label_manager.num_segmentation_heads,
                                                spacing=self.configuration_manager.spacing)

    def get_dataloaders(self):
        labeled, validation = super().get_dataloaders()
        return LabeledUnlabeledLoader(labeled, self._unlabeled_loader()), validation

    def unlabeled_pool(self):
        tr_keys, val_keys = self.do_split()
        return build_unlabeled_pool(
            self.dataset_class, self.preprocessed_dataset_folder_base, self.preprocessed_dataset_folder,
            self.configuration_manager.data_identifier, self.fold, self.plans_manager.dataset_name,
            self.configuration_name, self.__class__.__name__, excluded=set(tr_keys) | set(val_keys))

    def _unlabeled_loader(self):
        pool = self.unlabeled_pool()
        _, _, initial_patch_size, _ = self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        loader = nnUNetDataLoader(pool, self.unlabeled_batch_size, initial_patch_size,
                                  self.configuration_manager.patch_size, self.label_manager,
                                  oversample_foreground_percent=0.0, transforms=self._unlabeled_transforms)
        self.print_to_log_file(f"Unlabeled pool: {len(pool)} cases, batch size {self.unlabeled_batch_size}")
        processes = get_allowed_n_proc_DA()
        if processes == 0:
            return SingleThreadedAugmenter(loader, None)
        # the same augmentation work per step as the labeled loader, so as many workers
        return NonDetMultiThreadedAugmenter(loader, None, num_processes=processes,
                                            num_cached=max(6, processes // 2), seeds=None,
                                            pin_memory=self.device.type == "cuda", wait_time=0.002)

    def complete_batch(self, batch: dict) -> dict:
        """Turn a plain nnU-Net training batch into this trainer's batch (for benchmarks on shared batches).

        Appends the signed distance maps of ``batch['target']`` (as the loader's workers would) and draws an
        unlabeled batch from this trainer's own unlabeled loader (built on first use).
        """
        if self.dataloader_train is None:
            self.dataloader_train, self.dataloader_val = self.get_dataloaders()
        sdm = self._sdm_transform()
        target = batch["target"]
        full = target[0] if isinstance(target, (list, tuple)) else target
        maps = torch.stack([sdm.maps(sample) for sample in full])
        segmentations = list(target) if isinstance(target, (list, tuple)) else [target]
        return {"data": batch["data"], "target": segmentations + [maps],
                "unlabeled": next(self.dataloader_train.unlabeled)["data"]}

    # ---------------------------------------------------------------- one step
    def unsupervised_weight_now(self) -> float:
        return gaussian_rampup(self.global_step, int(self.unsupervised_rampup_fraction * self.total_steps))

    def _split_target(self, target):
        """``[*segmentations, sdm]`` -> (nnU-Net's target: list under deep supervision else tensor, sdm)."""
        *segmentations, sdm = target
        return (segmentations if self.enable_deep_supervision else segmentations[0]), sdm

    def _student(self, labeled: torch.Tensor, unlabeled: torch.Tensor, extra=None):
        """Student outputs and tapped features for both batches, and the output for an optional extra batch:
        ``(out_l, decoder_l), (out_u, decoder_u, bottleneck_u), out_extra``."""
        bottleneck_tap, decoder_tap = self._student_taps
        if self.concatenate_student_passes:
            n, m = labeled.shape[0], labeled.shape[0] + unlabeled.shape[0]
            output = self.network(torch.cat([labeled, unlabeled] + ([] if extra is None else [extra])))
            decoder, bottleneck = decoder_tap.pop(), bottleneck_tap.pop()
            output_extra = None if extra is None else batch_slice(output, m, None)
            return ((batch_slice(output, 0, n), decoder[:n]),
                    (batch_slice(output, n, m), decoder[n:m], bottleneck[n:m]), output_extra)
        output_l = self.network(labeled)
        decoder_l = decoder_tap.pop()
        bottleneck_tap.clear()
        output_u = self.network(unlabeled)
        decoder_u, bottleneck_u = decoder_tap.pop(), bottleneck_tap.pop()
        output_extra = None
        if extra is not None:
            output_extra = self.network(extra)
            decoder_tap.clear()
            bottleneck_tap.clear()
        return (output_l, decoder_l), (output_u, decoder_u, bottleneck_u), output_extra

    # hooks for trainers that add a term on the labeled batch (nnunet_ext.training.combined)
    def extra_student_input(self, data: torch.Tensor, target):
        """Another input batch for the student's forward pass, or None (SimCVD has none)."""
        return None

    def extra_loss_terms(self, data: torch.Tensor, target, output_extra) -> tuple:
        """(loss added to SimCVD's or None, {log key: tensor or float}) for the extra batch's output."""
        return None, {}

    def train_step(self, batch: dict) -> dict:
        data = self.to_device(batch["data"], self.device)
        target, sdm_target = self._split_target(batch["target"])
        target = self.to_device(target, self.device)
        sdm_target = self.to_device(sdm_target, self.device)
        unlabeled = self.to_device(batch["unlabeled"], self.device)
        weight = self.unsupervised_weight_now()
        ignore_label = self.label_manager.ignore_label
        valid = None if ignore_label is None else (full_resolution(target) != ignore_label)
        teacher_bottleneck_tap, teacher_decoder_tap = self._teacher_taps
        zero = torch.zeros((), device=self.device)

        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast_context():
            extra_input = self.extra_student_input(data, target)
            (output_l, decoder_l), (output_u, decoder_u, bottleneck_u), output_extra = self._student(
                data, unlabeled, extra_input)
            loss_seg = self.loss(output_l, target)
            loss_sdm = sdm_regression_loss(self.heads.sdm(decoder_l), sdm_target, valid)
            with torch.no_grad():
                teacher_input = clipped_gaussian_noise(unlabeled, self.teacher_noise_std, self.teacher_noise_clip)
                teacher_output = full_resolution(self.teacher(teacher_input))
                teacher_decoder, teacher_bottleneck = teacher_decoder_tap.pop(), teacher_bottleneck_tap.pop()
            loss_consistency = softmax_mse(full_resolution(output_u), teacher_output)
            loss_contrast = zero
            if self.use_contrast:
                student_slices = self.heads.projection(
                    boundary_aware_input(unlabeled, self.heads.sdm(decoder_u)))
                with torch.no_grad():
                    teacher_slices = self.teacher_heads.projection(
                        boundary_aware_input(teacher_input, self.teacher_heads.sdm(teacher_decoder)))
                loss_contrast = symmetric_info_nce(student_slices.flatten(0, 1), teacher_slices.flatten(0, 1),
                                                   self.temperature)
            loss_pairwise = pairwise_distillation_loss(bottleneck_u, teacher_bottleneck) if self.use_pairwise \
                else zero
            unsupervised = (self.contrast_weight * loss_contrast + self.pairwise_weight * loss_pairwise
                            + self.consistency_weight * loss_consistency)
            loss = loss_seg + self.sdm_weight * loss_sdm + weight * unsupervised
            extra_loss, extra_values = self.extra_loss_terms(data, target, output_extra)
            if extra_loss is not None:
                loss = loss + extra_loss
        self.optimizer_step(loss)

        # the decay is indexed by the optimiser steps taken before this update (UA-MT)
        decay = mean_teacher_decay(self.global_step - 1, self.ema_decay)
        ema_update_(self.teacher, self.network, decay)
        ema_update_(self.teacher_heads, self.heads, decay)
        # one device-to-host transfer for all logged values (cast first: autocast may mix dtypes)
        extra_tensors = {k: v for k, v in extra_values.items() if torch.is_tensor(v)}
        values = torch.stack([t.detach().float() for t in (loss, loss_seg, loss_sdm, loss_contrast, loss_pairwise,
                                                             loss_consistency, *extra_tensors.values())])
        values = values.cpu().numpy()
        logged = {"loss": values[0], "seg": float(values[1]), "sdm": float(values[2]), "contrast": float(values[3]),
                  "pairwise": float(values[4]), "consistency": float(values[5]),
                  "unsupervised_weight": float(weight), "teacher_decay": float(decay)}
        logged.update({k: float(v) for k, v in extra_values.items() if not torch.is_tensor(v)})
        logged.update({k: float(v) for k, v in zip(extra_tensors, values[6:])})
        return logged


class nnUNetTrainerSimCVD_ema999(nnUNetTrainerSimCVD):
    """EMA decay 0.999 (the value the SimCVD paper states; UA-MT's code uses 0.99)."""
    ema_decay = 0.999


class nnUNetTrainerSimCVD_noContrast(nnUNetTrainerSimCVD):
    """Ablation: without the slice-level contrastive term."""
    use_contrast = False


class nnUNetTrainerSimCVD_noPD(nnUNetTrainerSimCVD):
    """Ablation: without the pair-wise distillation term."""
    use_pairwise = False
