"""``torchdiffeq._impl.odeint``: the solve functions and ``SOLVERS``, the methods by name.

In torchdiffeq 0.2.5 ``SOLVERS`` is a plain dict from method name to solver class, which
``odeint`` looks the ``method`` argument up in; programs read its keys (the valid method names,
e.g. as ``argparse`` choices) and some add a class to it to make a new method name work. Here
:data:`SOLVERS` is a live view of neuralode's methods with the same uses:

* its keys are every name ``odeint(method=...)`` accepts: torchdiffeq's (``dopri5``, ``rk4``,
  ``fixed_adams``, ``scipy_solver``, ... and the fixed-grid implicit methods of torchdiffeq's
  development version, ``implicit_euler`` ... ``trbdf2``) and neuralode's own (``tsit5``,
  ``rk4_38``, ``rodas5p``, ``radau5``, ``auto``, ...);
* its values are the methods themselves, as neuralode represents them: a :class:`ButcherTableau`
  for an explicit Runge-Kutta method, the implicit methods' coefficient records, the Adams
  methods' and scipy's records (``SOLVERS["dopri5"].order`` is 5);
* ``SOLVERS[name] = value`` registers a new explicit method under ``name``, so that
  ``odeint(..., method=name)`` runs it: ``value`` is a :class:`ButcherTableau`, or a
  torchdiffeq-style solver class declaring one (``order``, ``tableau``, ``mid``; see
  :mod:`neuralode._impl.rk_common`). ``del SOLVERS[name]`` removes a method registered so.

Registration refuses, with the reason: a name neuralode already has (built-in methods are not
replaced: every solve in the process would change), and values it cannot run as data, such as
torchdiffeq's fixed-grid solver classes, whose behaviour lives in their ``_step_func`` method.
"""

from __future__ import annotations

import dataclasses
from collections.abc import MutableMapping
from typing import Any

from ..solvers import odeint, odeint_dense, odeint_event
from ..solvers.methods.base import Method
from ..solvers.methods.registry import MethodRegistry, method_names, resolve
from ..solvers.methods.tableau import EXPLICIT_METHODS, ButcherTableau
from .rk_common import _is_solver_class, solver_class_tableau

__all__ = ["SOLVERS", "SolverRegistry", "odeint", "odeint_dense", "odeint_event"]


class SolverRegistry(MethodRegistry, MutableMapping):
    """The methods ``odeint`` accepts, by name: torchdiffeq's ``SOLVERS`` (see the module docstring).

    It reads as :data:`neuralode.METHODS` does, and adds registration."""

    def __init__(self) -> None:
        # Names registered through this mapping: only these may be replaced or deleted.
        self._registered: set[str] = set()

    def __setitem__(self, name: str, value: Any) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"SOLVERS keys are method names (non-empty strings); got {name!r}.")
        if name in method_names() and name not in self._registered:
            raise ValueError(
                f"SOLVERS[{name!r}]: neuralode has a built-in method of that name ({resolve(name).__class__.__name__} "
                f"{name!r}), used by every solve that names it; register yours under another name."
            )
        if isinstance(value, Method) and isinstance(value.explicit_tableau, ButcherTableau):
            value = value.explicit_tableau  # an explicit method of METHODS, registered under a new name
        if isinstance(value, ButcherTableau):
            tableau = value if value.name == name else dataclasses.replace(value, name=name)
        elif _is_solver_class(value):
            tableau = solver_class_tableau(name, value)
        else:
            what = value.__qualname__ if isinstance(value, type) else type(value).__name__
            raise TypeError(
                f"SOLVERS[{name!r}] = {what}: neuralode runs methods given as data, so it registers a "
                "neuralode.ButcherTableau, or a torchdiffeq-style explicit Runge-Kutta class with the class attributes "
                "order, tableau (a _ButcherTableau) and mid. A fixed-grid solver class (torchdiffeq's "
                "FixedGridODESolver with its own _step_func) has no such form: write its step as a ButcherTableau "
                "(b_err=None for a fixed-step method), or use a built-in method (see SOLVERS.keys())."
            )
        EXPLICIT_METHODS[name] = tableau
        self._registered.add(name)

    def __delitem__(self, name: str) -> None:
        if name not in self._registered:
            if name in self:
                raise ValueError(
                    f"SOLVERS[{name!r}] is a built-in method; only methods registered here can be deleted."
                )
            raise KeyError(name)
        del EXPLICIT_METHODS[name]
        self._registered.discard(name)

    def __repr__(self) -> str:
        return f"SOLVERS({', '.join(self)})"


SOLVERS = SolverRegistry()
"""The methods ``odeint`` accepts, by name (torchdiffeq's ``SOLVERS``; see the module docstring)."""
