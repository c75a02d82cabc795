"""MedContext trainers (see nnunet_ext.training.medcontext)."""
from nnunet_ext.training.medcontext import *  # noqa: F401,F403
