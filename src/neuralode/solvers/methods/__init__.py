"""The integration methods: the :class:`~neuralode.solvers.methods.base.Method` protocol (``base``), the
families (``explicit``: Runge-Kutta tableaus and Adams; ``implicit``: Rosenbrock, ESDIRK, Radau IIA, fixed-grid
implicit, ``auto``; ``scipy``) and the one registry, ``METHODS`` (``registry``)."""

from .base import Capabilities, Method
from .registry import METHODS, get_tableau, resolve

__all__ = ["METHODS", "Capabilities", "Method", "get_tableau", "resolve"]
