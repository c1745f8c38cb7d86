"""Moved to :mod:`neuralode.datasets.mnist`; this name keeps old imports working."""

from .datasets.mnist import *  # noqa: F401,F403
from .datasets.mnist import __all__  # noqa: F401
