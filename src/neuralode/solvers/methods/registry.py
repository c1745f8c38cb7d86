"""``METHODS``: every method ``solve`` accepts, by name, as a :class:`~neuralode.solvers.methods.base.Method`.

Built from the families' coefficient records by plain imports: the explicit Runge-Kutta tableaus
(:data:`~neuralode.solvers.methods.tableau.EXPLICIT_METHODS`, which torchdiffeq's ``SOLVERS`` registration writes to),
the stiff methods (:data:`IMPLICIT_METHODS`: Rosenbrock, ESDIRK, Radau IIA, fixed-grid implicit), ``auto``,
the Adams methods and ``scipy_solver``. :func:`resolve` turns a ``method`` argument into its Method, with the
error that lists the valid names; :func:`get_tableau` gives a method's coefficient record.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, TypeAlias

from ..options import suggest
from .adams import ADAMS_METHODS
from .auto import AUTO, AutoSwitching
from .base import Method
from .esdirk import ESDIRK_METHODS, ESDIRKTableau
from .explicit import Adams, ExplicitRK
from .implicit_fixed import IMPLICIT_FIXED_METHODS, ImplicitRK
from .radau import RADAU_METHODS, RadauTableau
from .rosenbrock_tableaus import ROSENBROCK_METHODS, RosenbrockTableau
from .scipy import Scipy
from .scipy_solver import SCIPY_METHOD
from .stiff import ESDIRK, Auto, ImplicitFixed, Radau, Rosenbrock
from .tableau import EXPLICIT_METHODS, ButcherTableau

DEFAULT_METHOD = "dopri5"

ImplicitTableau: TypeAlias = RosenbrockTableau | ESDIRKTableau | RadauTableau | ImplicitRK
"""The coefficient record of an implicit (stiff) method."""

Tableau: TypeAlias = ButcherTableau | ImplicitTableau | AutoSwitching
"""What :func:`get_tableau` returns: the coefficient record of an explicit Runge-Kutta, implicit or ``auto`` method."""

IMPLICIT_METHODS: dict[str, ImplicitTableau] = {
    **ROSENBROCK_METHODS,
    **ESDIRK_METHODS,
    **RADAU_METHODS,
    **IMPLICIT_FIXED_METHODS,
}
"""Every built-in implicit (stiff) method's coefficient record by name: the Rosenbrock methods, the ESDIRK
methods, Radau IIA and the fixed-grid implicit Runge-Kutta methods."""

# The methods of every family but the explicit Runge-Kutta one, whose registry (EXPLICIT_METHODS) can grow.
_FIXED_FAMILIES: dict[str, Method] = {
    **{name: Rosenbrock(r) for name, r in ROSENBROCK_METHODS.items()},
    **{name: ESDIRK(r) for name, r in ESDIRK_METHODS.items()},
    **{name: Radau(r) for name, r in RADAU_METHODS.items()},
    **{name: ImplicitFixed(r) for name, r in IMPLICIT_FIXED_METHODS.items()},
    AUTO.name: Auto(AUTO),
    **{name: Adams(r) for name, r in ADAMS_METHODS.items()},
    SCIPY_METHOD.name: Scipy(SCIPY_METHOD),
}
# The order of METHODS: explicit, implicit, auto, Adams, scipy.
_AFTER_EXPLICIT = [*IMPLICIT_METHODS, AUTO.name]
_LAST = [*ADAMS_METHODS, SCIPY_METHOD.name]

# One ExplicitRK per registered tableau, rebuilt when the tableau under a name is replaced.
_explicit: dict[str, ExplicitRK] = {}


def explicit_method(tableau: ButcherTableau) -> ExplicitRK:
    """The :class:`~neuralode.solvers.methods.explicit.ExplicitRK` method of ``tableau``: the registry's own
    for a registered tableau (so that ``METHODS[name]`` is one object), a new one otherwise."""
    m = _explicit.get(tableau.name)
    if m is not None and m.tableau is tableau:
        return m
    m = ExplicitRK(tableau)
    if EXPLICIT_METHODS.get(tableau.name) is tableau:
        _explicit[tableau.name] = m
    return m


def method_names() -> list[str]:
    """Every method ``solve`` accepts, in the order of :data:`METHODS`."""
    return [*EXPLICIT_METHODS, *_AFTER_EXPLICIT, *_LAST]


class MethodRegistry(Mapping):
    """Every method ``solve`` accepts, name -> :class:`~neuralode.solvers.methods.base.Method`: the explicit
    Runge-Kutta methods (``euler`` ... ``dopri8_13m``, and those registered through torchdiffeq's ``SOLVERS``),
    the implicit ones (``rosenbrock23``, ``rodas5p``, ``kvaerno5``, ``radau5`` ... and the fixed-grid
    ``implicit_euler`` ...), ``auto``, the Adams methods (``explicit_adams``, ``implicit_adams``, ``fixed_adams``)
    and ``scipy_solver``.

    Read-only; a new explicit method is registered through torchdiffeq's ``SOLVERS``
    (:mod:`neuralode._impl.odeint`), which is this mapping made writable. Each value holds its coefficient
    record as ``.tableau``.
    """

    def __getitem__(self, name: str) -> Method:
        if isinstance(name, str):
            tableau = EXPLICIT_METHODS.get(name)
            if tableau is not None:
                return explicit_method(tableau)
            m = _FIXED_FAMILIES.get(name)
            if m is not None:
                return m
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(method_names())

    def __len__(self) -> int:
        return len(EXPLICIT_METHODS) + len(_FIXED_FAMILIES)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in EXPLICIT_METHODS or name in _FIXED_FAMILIES)

    def __repr__(self) -> str:
        return f"METHODS({', '.join(self)})"


METHODS = MethodRegistry()
"""Every method ``solve`` accepts, by name (see :class:`MethodRegistry`)."""


def resolve(method: Any) -> Method:
    """The Method a ``method`` argument names (``None``: the default, ``"dopri5"``); a Method is returned as is.

    Raises:
        TypeError: ``method`` is not a string.
        ValueError: no method has that name; the message suggests the closest and lists every name.
    """
    if isinstance(method, Method):
        return method
    if method is None:
        method = DEFAULT_METHOD
    if not isinstance(method, str):
        raise TypeError(f"method must be a string naming a solver; got {type(method).__name__}.")
    try:
        return METHODS[method]
    except KeyError:
        names = method_names()
        raise ValueError(
            f"Unknown method {method!r}.{suggest(method, names)} Valid methods: {', '.join(names)}."
        ) from None


def get_tableau(method: str) -> Tableau:
    """The coefficient record of the method named ``method``: its data, without the behaviour.

    Args:
        method: a key of :data:`METHODS` other than the Adams methods and ``"scipy_solver"``.

    Returns:
        A :class:`~neuralode.solvers.methods.tableau.ButcherTableau` for an explicit Runge-Kutta method; for an implicit
        one a :class:`~neuralode.solvers.methods.rosenbrock_tableaus.RosenbrockTableau`,
        :class:`~neuralode.solvers.methods.esdirk.ESDIRKTableau`, :class:`~neuralode.solvers.methods.radau.RadauTableau` or
        :class:`~neuralode.solvers.methods.implicit_fixed.ImplicitRK`; for ``"auto"`` the
        :class:`~neuralode.solvers.methods.auto.AutoSwitching` record. ``METHODS[name].tableau`` gives every method's
        record, the Adams methods' and scipy's included.

    Raises:
        TypeError: if ``method`` is not a string.
        ValueError: if no method of that name has a tableau; the message lists the valid names.
    """
    if not isinstance(method, str):
        raise TypeError(f"method must be a string naming a solver; got {type(method).__name__}.")
    if method in EXPLICIT_METHODS or method in IMPLICIT_METHODS or method == AUTO.name:
        return METHODS[method].tableau
    raise ValueError(
        f"Unknown method {method!r}. Valid methods: {', '.join([*EXPLICIT_METHODS, *IMPLICIT_METHODS, AUTO.name])}."
    )
