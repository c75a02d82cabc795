"""SimCVD + MedContext trainer (see nnunet_ext.training.combined)."""
from nnunet_ext.training.combined import *  # noqa: F401,F403
