"""Thin modules that expose nnunet-ext's trainers to nnU-Net's ``nnUNet_extTrainer`` lookup.

nnU-Net imports every module of this folder under a top-level name and drops it again afterwards, so each
module only re-exports classes that live in the installed ``nnunet_ext`` package.
"""
