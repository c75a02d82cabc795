"""Volume Fusion pretraining trainers (see nnunet_ext.training.volume_fusion)."""
from nnunet_ext.training.volume_fusion import *  # noqa: F401,F403
