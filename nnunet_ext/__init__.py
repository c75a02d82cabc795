"""nnunet-ext: label-efficient training methods as nnU-Net v2 trainers.

The method maths (masking, schedules, EMA, losses) lives in small modules without nnU-Net imports; the
trainers in :mod:`nnunet_ext.training` only wire them into nnU-Net.
"""
import os

__version__ = "0.1.0"


def trainer_modules_dir() -> str:
    """Folder with the thin trainer modules that ``nnUNet_extTrainer`` must point at.

    The modules are shipped inside the package (``nnunet_ext.trainer_modules``), so this works for
    editable and non-editable installs alike.
    """
    from nnunet_ext import trainer_modules

    return os.path.dirname(os.path.abspath(trainer_modules.__file__))
