"""Moved to :mod:`neuralode.training.latent`; this name keeps old imports working."""

from .training.latent import *  # noqa: F401,F403
from .training.latent import __all__  # noqa: F401
