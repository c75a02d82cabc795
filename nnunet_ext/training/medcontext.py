"""MedContext for nnU-Net: masked-input contextual reconstruction trained jointly with supervision.

Specification: methods.md section 1. Per step, with student = ``self.network`` (the plans network):

    L = L_seg(student(x), y) + L_seg(student(mask(x)), y) + lambda * w(t) * L_ctx(student(mask(x)), teacher(x))

L_seg is nnU-Net's own (deep-supervised) Dice+CE, L_ctx the MSE between softmax probabilities at full
resolution, w(t) a Gaussian ramp over the first 20 % of training and the teacher an EMA of the student with a
cosine momentum schedule (0.996 -> 1) indexed by the global iteration. Clean and masked inputs go through the
student as one concatenated batch on GPUs (two passes with one backward on the CPU, where that is faster).
Inference uses the student only, so it costs what plain nnU-Net costs.

Variants are subclasses that change class attributes; each trains into its own results folder.
"""
import torch

from nnunet_ext.ema import ema_update_, make_teacher, unwrap_module
from nnunet_ext.errors import UserInputError
from nnunet_ext.losses import sigmoid_mse, softmax_kl, softmax_mse
from nnunet_ext.masking import (LearnableMaskValue, block_mask, check_mask_config, default_cell_size,
                                mixed_organ_block_mask, tube_mask)
from nnunet_ext.schedules import cosine_momentum, gaussian_rampup
from nnunet_ext.training.base import (batch_slice, disable_deep_supervision, full_resolution,
                                       nnUNetTrainerExtBase)

__all__ = [
    "nnUNetTrainerMedContext",
    "nnUNetTrainerMedContext_ratio06",
    "nnUNetTrainerMedContext_tube",
    "nnUNetTrainerMedContext_organ",
    "nnUNetTrainerMedContext_KL",
    "nnUNetTrainerMedContext_noTeacher",
    "nnUNetTrainerMedContext_halfBatch",
]

_CONTEXT_LOSSES = {"mse": softmax_mse, "kl": softmax_kl}
# region-based training (overlapping labels) has sigmoid outputs, one per region
_REGION_CONTEXT_LOSSES = {"mse": sigmoid_mse}


class MaskedInputMixin:
    """MedContext's input masking and context-term settings, shared by its trainers and the combined one.

    Needs an ``nnUNetTrainerExtBase`` (``configuration_manager``, ``label_manager``, ``global_step``,
    ``total_steps``). The learnable mask value is registered by the trainer as ``mask_value``.
    """

    mask_mode = "block"                  # "block", "tube" or "organ"
    mask_ratio = 0.4
    mask_cell_divisor = 8                # cube edge = patch edge / 8 ...
    mask_min_cell_edge = 4               # ... but at least 4 voxels
    tube_axis = 0                        # nnU-Net's first spatial axis (usually the out-of-plane one)
    organ_mask_probability = 0.5
    organ_mask_dilation = 3
    context_loss = "mse"                 # "mse" or "kl"
    context_weight = 1.0                 # lambda
    context_rampup_fraction = 0.2        # Gaussian ramp over this fraction of all iterations

    masking_hyperparameter_names = ("mask_mode", "mask_ratio", "mask_cell_divisor", "mask_min_cell_edge",
                                    "tube_axis", "organ_mask_probability", "organ_mask_dilation", "context_loss",
                                    "context_weight", "context_rampup_fraction")

    def masking_hyperparameters(self) -> dict:
        hyperparameters = {name: getattr(self, name) for name in self.masking_hyperparameter_names}
        hyperparameters["mask_cell_size"] = list(self.mask_cell_size)
        return hyperparameters

    @property
    def mask_cell_size(self):
        return default_cell_size(self.configuration_manager.patch_size, self.mask_cell_divisor,
                                 self.mask_min_cell_edge)

    def _check_masking_config(self):
        try:
            check_mask_config(self.configuration_manager.patch_size, self.mask_cell_size, self.mask_ratio)
        except ValueError as e:
            raise UserInputError(f"{self.__class__.__name__}, configuration '{self.configuration_name}': {e}") \
                from None
        if self.mask_mode not in ("block", "tube", "organ"):
            raise UserInputError(f"{self.__class__.__name__}: mask_mode must be 'block', 'tube' or 'organ', "
                                 f"not {self.mask_mode!r}.")
        if self.context_loss not in _CONTEXT_LOSSES:
            raise UserInputError(f"{self.__class__.__name__}: context_loss must be one of "
                                 f"{sorted(_CONTEXT_LOSSES)}, not {self.context_loss!r}.")
        if self.label_manager.has_regions:
            if self.context_loss not in _REGION_CONTEXT_LOSSES:
                raise UserInputError(f"{self.__class__.__name__}: context loss '{self.context_loss}' is not "
                                     f"defined for region-based training; use nnUNetTrainerMedContext.")
            if self.mask_mode == "organ":
                raise UserInputError(f"{self.__class__.__name__}: organ masking needs a label map, but this "
                                     f"dataset trains on regions; use nnUNetTrainerMedContext.")

    def draw_mask(self, data: torch.Tensor, target) -> torch.Tensor:
        """Boolean mask (B, 1, *spatial), True = hidden, drawn independently per sample."""
        batch_size, spatial = data.shape[0], tuple(data.shape[2:])
        if self.mask_mode == "block":
            return block_mask(batch_size, spatial, self.mask_cell_size, self.mask_ratio, device=data.device)
        if self.mask_mode == "tube":
            return tube_mask(batch_size, spatial, self.mask_cell_size, self.mask_ratio, axis=self.tube_axis,
                             device=data.device)
        return mixed_organ_block_mask(full_resolution(target), self.mask_cell_size, self.mask_ratio,
                                      self.organ_mask_probability, dilation=self.organ_mask_dilation,
                                      ignore_label=self.label_manager.ignore_label)

    def context_weight_now(self) -> float:
        ramp_steps = int(self.context_rampup_fraction * self.total_steps)
        return self.context_weight * gaussian_rampup(self.global_step, ramp_steps)

    def context_loss_value(self, student_masked: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """The context term between full-resolution student (masked input) and teacher (clean input) logits."""
        losses = _REGION_CONTEXT_LOSSES if self.label_manager.has_regions else _CONTEXT_LOSSES
        return losses[self.context_loss](student_masked, teacher)


class nnUNetTrainerMedContext(MaskedInputMixin, nnUNetTrainerExtBase):
    """MedContext with block masking (ratio 0.4), EMA teacher, MSE context loss (methods.md section 1)."""

    # "duplicate": every sample is seen clean and masked (faithful); "half": the second half of the batch is
    # masked instead of duplicating it (economical variant)
    masked_batch = "duplicate"
    use_teacher = True
    teacher_momentum_base = 0.996
    teacher_momentum_final = 1.0

    extra_log_keys = ("seg_clean", "seg_masked", "context", "context_weight", "teacher_momentum")
    extra_plot_name = "progress_medcontext.png"

    def method_hyperparameters(self) -> dict:
        names = ("masked_batch", "use_teacher", "teacher_momentum_base", "teacher_momentum_final")
        hyperparameters = {**self.masking_hyperparameters(), **{name: getattr(self, name) for name in names}}
        hyperparameters["student_passes"] = "concatenated" if self.concatenate_student_passes else "separate"
        return hyperparameters

    # ---------------------------------------------------------------- set-up
    def initialize(self):
        self._check_method_config()
        super().initialize()
        self.register_extra_module("mask_value", LearnableMaskValue(self.num_input_channels))
        if self.use_teacher:
            teacher = make_teacher(self.unwrapped_network)
            disable_deep_supervision(teacher)  # only the full-resolution output is used
            if self._do_i_compile():
                teacher = torch.compile(teacher)
            self.register_extra_module("teacher", teacher)
        self.add_extra_parameters_to_optimizer()

    def _check_method_config(self):
        self._check_masking_config()
        if self.masked_batch not in ("duplicate", "half"):
            raise UserInputError(f"{self.__class__.__name__}: masked_batch must be 'duplicate' or 'half'.")
        if self.masked_batch == "half" and self.configuration_manager.batch_size < 2:
            raise UserInputError(
                f"{self.__class__.__name__} masks half of each batch, but configuration "
                f"'{self.configuration_name}' has batch size {self.configuration_manager.batch_size}. Use "
                f"nnUNetTrainerMedContext, or a configuration with batch size >= 2.")

    def trainable_extra_parameters(self):
        return list(self.mask_value.parameters())

    def on_train_start(self):
        super().on_train_start()
        if self.use_teacher and not self.restored_from_checkpoint:
            # start from the student as it is now, i.e. after -pretrained_weights were loaded
            unwrap_module(self.teacher).load_state_dict(self.unwrapped_network.state_dict())

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        if self.use_teacher:
            self.teacher.eval()

    # ---------------------------------------------------------------- one step
    def teacher_momentum_now(self) -> float:
        return cosine_momentum(self.global_step, self.total_steps, self.teacher_momentum_base,
                               self.teacher_momentum_final)

    @property
    def concatenate_student_passes(self) -> bool:
        """One concatenated student batch, except where that doubles the batch on the CPU.

        Same maths with nnU-Net's instance normalisation. A concatenated batch uses a GPU better and is what DDP
        needs (one forward per backward). On the CPU, oneDNN convolutions cost more than twice as much for twice
        the batch and also much more per sample at batch size 1 (both measured, docs/cost.md), so there the
        student runs at the configuration's batch size: two passes when the batch is duplicated, one when half
        of it is masked.
        """
        return self.device.type != "cpu" or self.is_ddp or self.masked_batch == "half"

    def student_outputs(self, clean: torch.Tensor, masked: torch.Tensor):
        """Student outputs (deep-supervision lists or tensors) for the clean and the masked inputs."""
        if not self.concatenate_student_passes:
            return self.network(clean), self.network(masked)
        output = self.network(torch.cat([clean, masked]))
        return batch_slice(output, 0, clean.shape[0]), batch_slice(output, clean.shape[0], None)

    def train_step(self, batch: dict) -> dict:
        data = self.to_device(batch["data"], self.device)
        target = self.to_device(batch["target"], self.device)
        batch_size = data.shape[0]
        # "duplicate": the whole batch is seen clean and masked; "half": samples [n_clean:] are seen masked only
        n_clean = batch_size if self.masked_batch == "duplicate" else batch_size - batch_size // 2
        masked_from = 0 if self.masked_batch == "duplicate" else n_clean
        masked_source = data[masked_from:]
        masked_target = batch_slice(target, masked_from, None)
        clean_target = batch_slice(target, 0, n_clean)
        mask = self.draw_mask(masked_source, masked_target)
        weight = self.context_weight_now() if self.use_teacher else 0.0

        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast_context():
            masked = self.mask_value(masked_source, mask)
            output_clean, output_masked = self.student_outputs(data[:n_clean], masked)
            loss_clean = self.loss(output_clean, clean_target)
            loss_masked = self.loss(output_masked, masked_target)
            loss = loss_clean + loss_masked
            if self.use_teacher:
                with torch.no_grad():
                    # always the whole clean batch: in "half" mode the arithmetic counts it so (4/3), and on
                    # the CPU a batch of one falls back to PyTorch's slow native convolution (docs/cost.md)
                    teacher_output = full_resolution(self.teacher(data))[masked_from:]
                loss_context = self.context_loss_value(full_resolution(output_masked), teacher_output)
                loss = loss + weight * loss_context
            else:
                loss_context = torch.zeros((), device=data.device)
        self.optimizer_step(loss)

        momentum = self.teacher_momentum_now() if self.use_teacher else 1.0
        if self.use_teacher:
            # the schedule is indexed by the global iteration just completed
            ema_update_(self.teacher, self.network, momentum)
        # one device-to-host transfer for all logged values
        # (cast first: under autocast the terms can differ in dtype)
        values = torch.stack([t.detach().float() for t in (loss, loss_clean, loss_masked, loss_context)])
        values = values.cpu().numpy()
        return {"loss": values[0], "seg_clean": float(values[1]), "seg_masked": float(values[2]),
                "context": float(values[3]), "context_weight": float(weight), "teacher_momentum": float(momentum)}


class nnUNetTrainerMedContext_ratio06(nnUNetTrainerMedContext):
    """Mask ratio 0.6 (the ratio MedContext used with UNETR on BraTS)."""
    mask_ratio = 0.6


class nnUNetTrainerMedContext_tube(nnUNetTrainerMedContext):
    """Tube masking: one 2-D cell pattern repeated along the first spatial axis (the paper's mask shape)."""
    mask_mode = "tube"


class nnUNetTrainerMedContext_organ(nnUNetTrainerMedContext):
    """Organ masking: with probability 0.5 hide one foreground organ's dilated bounding box, else block mask."""
    mask_mode = "organ"


class nnUNetTrainerMedContext_KL(nnUNetTrainerMedContext):
    """KL(teacher || student) as context loss instead of the MSE of probabilities."""
    context_loss = "kl"


class nnUNetTrainerMedContext_noTeacher(nnUNetTrainerMedContext):
    """Ablation: clean + masked supervision only, no teacher and no context term."""
    use_teacher = False
    extra_log_keys = ("seg_clean", "seg_masked")


class nnUNetTrainerMedContext_halfBatch(nnUNetTrainerMedContext):
    """Economical variant: the second half of each batch is masked instead of duplicating the batch."""
    masked_batch = "half"
