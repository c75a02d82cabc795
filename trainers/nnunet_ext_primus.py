"""The methods on nnU-Net's Primus trainers (see nnunet_ext.training.primus)."""
from nnunet_ext.training.primus import *  # noqa: F401,F403
