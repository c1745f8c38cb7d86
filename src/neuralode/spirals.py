"""Moved to :mod:`neuralode.datasets.spirals`; this name keeps old imports working."""

from .datasets.spirals import *  # noqa: F401,F403
from .datasets.spirals import __all__  # noqa: F401
