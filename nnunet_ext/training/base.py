"""What every nnunet-ext trainer shares: extra state beside the plans network, checkpoints, logging.

``self.network`` stays exactly the network the plans describe. Modules a method adds (teachers, heads,
mask values) are registered with :meth:`nnUNetTrainerExtBase.register_extra_module` and live beside it;
they are saved under the checkpoint key ``nnunet_ext`` and restored on ``--c``, while ``network_weights``
keeps nnU-Net's format so stock ``nnUNetv2_predict`` and ``-pretrained_weights`` work unchanged.
"""
import os
import pydoc
import random
from typing import Dict, List

import numpy as np
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
import torch
from torch import autocast, nn
from torch import distributed as dist

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.collate_outputs import collate_outputs
from nnunetv2.utilities.helpers import dummy_context

from nnunet_ext import __version__
from nnunet_ext.ema import unwrap_module
from nnunet_ext.env import check_nnunet_version
from nnunet_ext.errors import UserInputError
from nnunet_ext.label_check import CheckLabelValuesTransform, allowed_label_values
from nnunet_ext.plotting import plot_extra_progress
from nnunet_ext.pretrained_check import (check_pretrained_weights, describe_mismatches, pretrained_weights_argument,
                                         shape_mismatches)

CHECKPOINT_KEY = "nnunet_ext"


def _numpy_scalar_globals() -> list:
    """The numpy types our checkpoints pickle (scalars in nnU-Net's log, numpy's random state), for
    ``torch.serialization.safe_globals``."""
    core = getattr(np, "_core", None) or np.core
    dtypes = (np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint32,
              np.bool_)
    return [core.multiarray.scalar, core.multiarray._reconstruct, np.ndarray, np.dtype,
            *(type(np.dtype(t)) for t in dtypes)]


def _rng_state() -> dict:
    """The random streams nnU-Net's in-process sampling, augmentation and our methods draw from."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def disable_deep_supervision(module: nn.Module) -> None:
    """Make a (teacher) copy of a dynamic-network-architectures U-Net return its full-resolution output only."""
    decoder = getattr(unwrap_module(module), "decoder", None)
    if decoder is not None and hasattr(decoder, "deep_supervision"):
        decoder.deep_supervision = False


def _cpu_state_dict(module: nn.Module) -> dict:
    return {k: v.detach().cpu() for k, v in unwrap_module(module).state_dict().items()}


def full_resolution(output):
    """The highest-resolution output (deep supervision returns a list, highest first)."""
    return output[0] if isinstance(output, (list, tuple)) else output


def batch_slice(output_or_list, start, stop):
    """Samples ``start:stop`` of an output or of each element of a deep-supervision list."""
    if isinstance(output_or_list, (list, tuple)):
        return [o[start:stop] for o in output_or_list]
    return output_or_list[start:stop]


class nnUNetTrainerExtBase(nnUNetTrainer):
    """nnU-Net trainer with extra modules, extra per-epoch log values and a recorded set of hyperparameters.

    Subclasses list their per-step values in ``extra_log_keys`` (each returned by ``train_step`` and logged as
    the epoch mean), and their method hyperparameters in :meth:`method_hyperparameters`.
    """

    extra_log_keys: tuple = ()
    # training patches are checked against dataset.json's labels (off for trainers that never read labels)
    checks_label_values: bool = True
    # nnU-Net's gradient clipping norm (its Primus trainers use 1)
    gradient_clip_norm: float = 12.0
    extra_plot_name = "progress_nnunet_ext.png"

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        check_nnunet_version()
        super().__init__(plans, configuration, fold, dataset_json, device)
        architecture = pydoc.locate(self.configuration_manager.network_arch_class_name)
        if getattr(architecture, "supports_deep_supervision", True) is False:
            # architectures with a single output (nnunet_ext.architectures) train without deep supervision
            self.enable_deep_supervision = False
        self.global_step = 0
        self.restored_from_checkpoint = False
        self._pending_rng_state = None
        self._extra_modules: Dict[str, nn.Module] = {}
        for key in self.extra_log_keys:
            # nnU-Net's logger only accepts registered keys; they go into its checkpoint with the rest
            self.logger.local_logger.my_fantastic_logging.setdefault(key, [])

    def set_deep_supervision_enabled(self, enabled: bool):
        """nnU-Net's switch, skipped for architectures without a deep-supervision decoder (nothing to switch)."""
        decoder = getattr(self.unwrapped_network, "decoder", None)
        if decoder is None or not hasattr(decoder, "deep_supervision"):
            return
        super().set_deep_supervision_enabled(enabled)

    @property
    def total_steps(self) -> int:
        """Optimisation steps of the whole run; schedules (ramp-ups, EMA momentum) are functions of
        ``global_step / total_steps``."""
        return self.num_epochs * self.num_iterations_per_epoch

    # ---------------------------------------------------------------- hyperparameters
    def method_hyperparameters(self) -> dict:
        """The method's hyperparameters (written to the log, the logger config and every checkpoint)."""
        return {}

    def recorded_hyperparameters(self) -> dict:
        """The method's hyperparameters plus the optimisation settings it shares with nnU-Net (which differ
        between nnU-Net's trainer families, e.g. its Primus trainers)."""
        return {**self.method_hyperparameters(), "initial_lr": self.initial_lr, "weight_decay": self.weight_decay,
                "gradient_clip_norm": self.gradient_clip_norm,
                "deep_supervision": bool(self.enable_deep_supervision)}

    def initialize(self):
        self._check_preprocessed_data()
        super().initialize()
        hyperparameters = {**self.recorded_hyperparameters(), "optimizer": type(self.optimizer).__name__}
        self.print_to_log_file(f"{self.__class__.__name__} (nnunet-ext {__version__}) hyperparameters: "
                               f"{hyperparameters}")
        self.logger.update_config({"nnunet_ext": hyperparameters})
        pretrained = pretrained_weights_argument()
        if pretrained is not None:
            # before nnU-Net's loader, whose assertion names one key and cannot read GPU checkpoints on a CPU
            check_pretrained_weights(self.network, pretrained, self.plans_manager.dataset_name,
                                     self.configuration_name, self.plans_manager.plans_name,
                                     trainer=self.__class__.__name__)

    def _check_preprocessed_data(self):
        if self.preprocessed_dataset_folder is not None and not os.path.isdir(self.preprocessed_dataset_folder):
            dataset = self.plans_manager.dataset_name
            raise UserInputError(
                f"No preprocessed data for configuration '{self.configuration_name}' of {dataset}: "
                f"{self.preprocessed_dataset_folder} does not exist. Run nnUNetv2_preprocess -d {dataset} "
                f"-c {self.configuration_name} -plans_name {self.plans_manager.plans_name} (for a preset "
                f"configuration: preprocess the configuration it inherits from).")

    # ---------------------------------------------------------------- data
    def get_training_transforms(self, *args, **kwargs):
        return self._with_label_check(super().get_training_transforms(*args, **kwargs))

    def get_validation_transforms(self, *args, **kwargs):
        return self._with_label_check(super().get_validation_transforms(*args, **kwargs))

    def _with_label_check(self, transforms):
        """nnU-Net's pipeline preceded by a check of the patch's label values (nnunet_ext.label_check)."""
        if not self.checks_label_values:
            return transforms
        allowed = allowed_label_values(self.label_manager.foreground_labels, self.label_manager.ignore_label)
        check = CheckLabelValuesTransform(allowed, self.plans_manager.dataset_name)
        return ComposeTransforms([check, *transforms.transforms])

    # ---------------------------------------------------------------- extra modules
    def register_extra_module(self, name: str, module: nn.Module) -> nn.Module:
        """Keep ``module`` beside the network: moved to the device, saved and restored with checkpoints."""
        module = module.to(self.device)
        self._extra_modules[name] = module
        setattr(self, name, module)
        return module

    @property
    def unwrapped_network(self) -> nn.Module:
        return unwrap_module(self.network)

    def trainable_extra_parameters(self) -> List[nn.Parameter]:
        """Parameters of extra modules that the optimiser trains (default: none)."""
        return []

    def add_extra_parameters_to_optimizer(self, optimizer=None):
        """Add the extra modules' trainable parameters to ``optimizer`` (default: ``self.optimizer``) as one
        param group, unless it already holds them."""
        optimizer = self.optimizer if optimizer is None else optimizer
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        params = [p for p in self.trainable_extra_parameters() if p.requires_grad and id(p) not in held]
        if params:
            # nnU-Net's learning-rate schedulers set the rate of every param group, so this one follows them
            optimizer.add_param_group({"params": params, "weight_decay": 0.0})

    def configure_optimizers(self, *args, **kwargs):
        # trainers that build a new optimiser during training (nnU-Net's warm-up and Primus trainers switch
        # stages) keep training the extra modules
        optimizer, lr_scheduler = super().configure_optimizers(*args, **kwargs)
        if self._extra_modules:
            self.add_extra_parameters_to_optimizer(optimizer)
        return optimizer, lr_scheduler

    # ---------------------------------------------------------------- one optimiser step
    def autocast_context(self):
        """nnU-Net's rule: autocast on CUDA only."""
        return autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context()

    def optimizer_step(self, loss: torch.Tensor):
        """Backward, clip and step exactly as nnU-Net's ``train_step`` does, for network and extra parameters."""
        extra = [p for p in self.trainable_extra_parameters() if p.requires_grad]
        params = list(self.network.parameters()) + extra
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self._sync_extra_gradients(extra)
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(params, self.gradient_clip_norm)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            self._sync_extra_gradients(extra)
            torch.nn.utils.clip_grad_norm_(params, self.gradient_clip_norm)
            self.optimizer.step()
        self.global_step += 1

    def _sync_extra_gradients(self, params):
        # DDP averages the network's gradients only; parameters beside it are averaged here so that every
        # rank takes the same step
        if self.is_ddp:
            world_size = dist.get_world_size()
            for p in params:
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= world_size

    @staticmethod
    def to_device(tensor_or_list, device):
        if isinstance(tensor_or_list, list):
            return [t.to(device, non_blocking=True) for t in tensor_or_list]
        return tensor_or_list.to(device, non_blocking=True)

    # ---------------------------------------------------------------- logging
    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        if not self.extra_log_keys:
            return
        collated = collate_outputs(train_outputs)
        for key in self.extra_log_keys:
            value = float(np.mean(collated[key]))
            if self.is_ddp:
                values = [None] * dist.get_world_size()
                dist.all_gather_object(values, value)
                value = float(np.mean(values))
            self.logger.log(key, value, self.current_epoch)

    def on_train_epoch_start(self):
        # a resumed run continues the random streams where the checkpoint left them: with nnUNet_n_proc_DA=0 (all
        # sampling and augmentation in this process) it then ends exactly as the uninterrupted run would have
        if self._pending_rng_state is not None:
            _set_rng_state(self._pending_rng_state)
            self._pending_rng_state = None
        super().on_train_epoch_start()

    def on_epoch_end(self):
        if self.extra_log_keys:
            self.print_to_log_file(", ".join(
                f"{key} {np.round(self.logger.get_value(key, step=-1), decimals=4)}"
                for key in self.extra_log_keys))
        super().on_epoch_end()
        if self.local_rank == 0 and self.extra_log_keys:
            logged = {k: self.logger.get_value(k, step=None) for k in self.extra_log_keys}
            plot_extra_progress(logged, os.path.join(self.output_folder, self.extra_plot_name),
                                title=self.__class__.__name__)

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint plus the extra state, written atomically (temporary file, then rename)."""
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file("No checkpoint written, checkpointing is disabled")
            return
        checkpoint = {
            # on the CPU, so that -pretrained_weights (torch.load without map_location) also works on a machine
            # without the device the checkpoint was written on
            "network_weights": _cpu_state_dict(self.unwrapped_network),
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "logging": self.logger.get_checkpoint(),
            "_best_ema": self._best_ema,
            "current_epoch": self.current_epoch + 1,
            "init_args": self.my_init_kwargs,
            "trainer_name": self.__class__.__name__,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,
            CHECKPOINT_KEY: {
                "version": __version__,
                "trainer_name": self.__class__.__name__,
                "hyperparameters": self.recorded_hyperparameters(),
                "global_step": self.global_step,
                "modules": {name: _cpu_state_dict(m) for name, m in self._extra_modules.items()},
                "rng_state": _rng_state(),
            },
        }
        tmp = filename + ".tmp"
        try:
            torch.save(checkpoint, tmp)
            os.replace(tmp, filename)
        except (OSError, RuntimeError) as e:  # full disk, read-only folder; torch wraps some OSErrors
            if os.path.exists(tmp):
                os.remove(tmp)
            kept = (f"The previous {os.path.basename(filename)} is unchanged" if os.path.isfile(filename)
                    else f"No {os.path.basename(filename)} was written")
            raise UserInputError(
                f"Could not write checkpoint {filename}: {e}. {kept}. Free disk space or make "
                f"{os.path.dirname(filename)} writable, then continue the run with nnUNetv2_train ... --c.") from None

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        if not isinstance(filename_or_checkpoint, str):
            raise TypeError("nnunet-ext trainers load checkpoints from a file path")
        if not os.path.isfile(filename_or_checkpoint):
            raise UserInputError(f"Checkpoint {filename_or_checkpoint} does not exist.")
        if not self.was_initialized:
            self.initialize()
        # mmap: only the few extra tensors are read here; nnU-Net's own loader reads the rest (2.8.1 cannot
        # be handed an already loaded dict)
        try:
            checkpoint = torch.load(filename_or_checkpoint, map_location="cpu", weights_only=False, mmap=True)
        except Exception as e:  # truncated zip, pickle errors, ...
            folder = os.path.dirname(filename_or_checkpoint)
            raise UserInputError(
                f"Checkpoint {filename_or_checkpoint} cannot be read ({type(e).__name__}: {e}); it is truncated or "
                f"corrupt. Move it out of {folder} (do not delete it yet): --c then continues from the next "
                f"checkpoint nnU-Net finds there (checkpoint_final.pth, checkpoint_latest.pth, checkpoint_best.pth), "
                f"or starts afresh if there is none.") from None
        self._check_checkpoint_origin(checkpoint, filename_or_checkpoint)
        # nnU-Net's warm-up and Primus trainers load with torch.load's default weights_only=True, which since torch
        # 2.6 refuses nnU-Net's own checkpoints (numpy scalars in its log): allow exactly those types
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            super().load_checkpoint(filename_or_checkpoint)
        extra = checkpoint[CHECKPOINT_KEY]
        for name, module in self._extra_modules.items():
            if name not in extra["modules"]:
                raise UserInputError(f"Checkpoint {filename_or_checkpoint} has no state for '{name}'; it was "
                                     f"written by a different version or variant of {self.__class__.__name__}.")
            unwrap_module(module).load_state_dict(extra["modules"][name])
        self.global_step = int(extra["global_step"])
        self._pending_rng_state = extra.get("rng_state")
        self.restored_from_checkpoint = True
        self.print_to_log_file(f"Restored {sorted(self._extra_modules)} and global step {self.global_step} "
                               f"from {filename_or_checkpoint}")

    def _check_checkpoint_origin(self, checkpoint: dict, filename: str):
        mine = self.__class__.__name__
        theirs = checkpoint.get("trainer_name")
        if theirs != mine or CHECKPOINT_KEY not in checkpoint:
            raise UserInputError(
                f"Checkpoint {filename} was written by trainer '{theirs}', not by '{mine}', so '{mine}' cannot "
                f"continue it. To continue that run use -tr {theirs}; to start from its weights use "
                f"nnUNetv2_train ... -tr {mine} -pretrained_weights {filename} (without --c); or move the "
                f"file out of {os.path.dirname(filename)} to start afresh.")
        ours = {k: tuple(v.shape) for k, v in self.unwrapped_network.state_dict().items()}
        saved = {k: tuple(v.shape) for k, v in checkpoint["network_weights"].items()}
        differing = shape_mismatches(ours, saved, skipped=())
        if differing:
            listed = describe_mismatches(differing, "checkpoint", max_listed=8)
            init = checkpoint.get("init_args") or {}
            origin = (f" It was written with plans '{(init.get('plans') or {}).get('plans_name')}', configuration "
                      f"'{init.get('configuration')}'." if init else "")
            raise UserInputError(
                f"Checkpoint {filename} does not fit the network that plans '{self.plans_manager.plans_name}', "
                f"configuration '{self.configuration_name}' describe now ({len(differing)} layers differ: {listed})."
                f"{origin} The plans changed since the run started (re-planned, or a different preset). Restore "
                f"the plans file it was trained with (nnunet-ext's commands leave timestamped backups beside it) "
                f"to continue, or move the checkpoint out of {os.path.dirname(filename)} to start afresh.")
