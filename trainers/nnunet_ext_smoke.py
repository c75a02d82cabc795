"""Short-budget trainers for smoke runs and tests (see nnunet_ext.training.smoke)."""
from nnunet_ext.training.smoke import *  # noqa: F401,F403
