"""The integration methods: the :class:`~neuralode.solvers.methods.base.Method` protocol (``base``), one Method
class per family (``explicit``: Runge-Kutta tableaus and Adams; ``stiff``: Rosenbrock, ESDIRK, Radau IIA,
fixed-grid implicit, ``auto``; ``scipy``), the one registry, ``METHODS`` (``registry``), and what the families are
made of: coefficient records as data (``tableau``, ``rosenbrock_tableaus``, the tableaus of ``esdirk``, ``radau``
and ``implicit_fixed``), their steppers (``stepper``: the generic explicit step and the ``Stepper`` contract;
``adams``, ``rosenbrock``, ``esdirk``, ``radau``, ``implicit_fixed``, ``auto``), Jacobians (``jacobian``),
continuous extensions (``interpolation``), the stiff methods' options (``implicit_options``) and scipy's driver
(``scipy_solver``). Nothing here imports the loop, the fast paths, events or the adjoints."""

from .base import Capabilities, Method
from .registry import METHODS, get_tableau, resolve

__all__ = ["METHODS", "Capabilities", "Method", "get_tableau", "resolve"]
