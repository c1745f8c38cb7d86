"""Moved to :mod:`neuralode.training.cnf`; this name keeps old imports working."""

from .training.cnf import *  # noqa: F401,F403
from .training.cnf import __all__  # noqa: F401
