"""SimCVD trainers (see nnunet_ext.training.simcvd)."""
from nnunet_ext.training.simcvd import *  # noqa: F401,F403
