"""Moved to :mod:`neuralode.datasets.demo_spiral`; this name keeps old imports working."""

from .datasets.demo_spiral import *  # noqa: F401,F403
from .datasets.demo_spiral import __all__  # noqa: F401
