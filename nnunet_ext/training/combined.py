"""SimCVD and MedContext in one trainer: the semi-supervised terms plus the masked-input context term.

Per step, SimCVD's loss (nnunet_ext.training.simcvd) on a labeled batch x and an unlabeled batch u, plus
MedContext's masked-input terms on the labeled batch (methods.md sections 1 and 3):

    L = L_SimCVD(x, u) + L_seg(f(mask(x)), y) + lambda * w(t) * MSE(softmax f(mask(x)), softmax teacher(x))

One EMA teacher serves both: SimCVD's (decay 0.99 with UA-MT's warm-up), which is the stronger teacher of the
two (MedContext's own schedule starts at 0.996 and ends frozen). Fine-tuned from Volume Fusion pretraining with
``-pretrained_weights``, this is "all three combined" of the benchmark. Inference uses the student only.
"""
import torch

from nnunet_ext.masking import LearnableMaskValue
from nnunet_ext.training.base import full_resolution
from nnunet_ext.training.medcontext import MaskedInputMixin
from nnunet_ext.training.simcvd import nnUNetTrainerSimCVD

__all__ = ["nnUNetTrainerSimCVDMedContext"]


class nnUNetTrainerSimCVDMedContext(MaskedInputMixin, nnUNetTrainerSimCVD):
    """SimCVD plus MedContext's block-masked labeled pass and context term, sharing SimCVD's teacher."""

    extra_log_keys = nnUNetTrainerSimCVD.extra_log_keys + ("seg_masked", "context", "context_weight")
    extra_plot_name = "progress_simcvd_medcontext.png"

    def method_hyperparameters(self) -> dict:
        return {**super().method_hyperparameters(), **self.masking_hyperparameters(),
                "context_teacher": "SimCVD's EMA teacher"}

    def initialize(self):
        self._check_masking_config()
        super().initialize()
        self.register_extra_module("mask_value", LearnableMaskValue(self.num_input_channels))
        self.add_extra_parameters_to_optimizer()  # a param group of its own, after SimCVD's heads

    def trainable_extra_parameters(self):
        mask_value = self._extra_modules.get("mask_value")  # registered after SimCVD's set-up
        return super().trainable_extra_parameters() + ([] if mask_value is None else list(mask_value.parameters()))

    def extra_student_input(self, data: torch.Tensor, target) -> torch.Tensor:
        return self.mask_value(data, self.draw_mask(data, target))

    def extra_loss_terms(self, data: torch.Tensor, target, output_masked) -> tuple:
        loss_masked = self.loss(output_masked, target)
        with torch.no_grad():
            teacher_output = full_resolution(self.teacher(data))
            for tap in self._teacher_taps:  # SimCVD's feature taps fire on this pass too; nothing reads them
                tap.clear()
        loss_context = self.context_loss_value(full_resolution(output_masked), teacher_output)
        weight = self.context_weight_now()
        return loss_masked + weight * loss_context, {"seg_masked": loss_masked, "context": loss_context,
                                                     "context_weight": weight}
