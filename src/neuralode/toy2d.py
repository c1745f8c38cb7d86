"""Moved to :mod:`neuralode.datasets.toy2d`; this name keeps old imports working."""

from .datasets.toy2d import *  # noqa: F401,F403
from .datasets.toy2d import __all__  # noqa: F401
