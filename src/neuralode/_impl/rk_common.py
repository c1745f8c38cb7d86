"""torchdiffeq's way of declaring an explicit Runge-Kutta method, turned into a :class:`ButcherTableau`.

torchdiffeq 0.2.5 declares an embedded explicit method as a class: a subclass of
``RKAdaptiveStepsizeODESolver`` with the class attributes ``order`` (an int), ``tableau`` (a
``_ButcherTableau(alpha, beta, c_sol, c_error)``) and ``mid`` (weights of the midpoint estimate its
interpolant uses), registered with ``SOLVERS[name] = TheClass``. Here the same class is read as data:
registering it in :data:`neuralode._impl.odeint.SOLVERS` converts its coefficients once with
:func:`solver_class_tableau` and neuralode's loop runs the resulting :class:`ButcherTableau`, so
``odeint(..., method=name)`` works as in torchdiffeq. Nothing of the class itself runs; a class that
overrides a method (its own ``_adaptive_step``, ``integrate``, ...) is refused rather than run
without what it customises.

torchdiffeq's layout, for ``s`` stages (the first, ``k_0 = f(t0, y0)``, is implicit in it)::

    alpha    (s-1,)   nodes c_1 .. c_{s-1}                       (c_0 = 0 is not listed)
    beta     s-1 rows; row i (i = 0 .. s-2) has i+1 entries: a_{i+1, 0..i}
    c_sol    (s,)     weights b of the propagated solution
    c_error  (s,)     b - b_hat (None: no error estimate, a fixed-step method)
    mid      (s,)     y(t0 + dt/2) ~ y0 + dt * sum_i mid_i k_i

so ``c = (0, *alpha)``, ``a = ((), *beta)``, ``b = c_sol`` and ``b_err = c_error``. torchdiffeq
controls the step with the exponent ``1 / order`` (``order`` being that of the propagated
solution), which is neuralode's ``1 / (error_order + 1)`` with ``error_order = order - 1``.

Its dense output is the quartic ``p`` on ``theta in [0, 1]`` with ``p(0) = y0``, ``p(1) = y1``,
``p(1/2) = y_mid`` and derivatives ``dt k_0``, ``dt k_{s-1}`` at the ends (the last stage is
``f(t1, y1)`` for FSAL methods, and is used as such whatever the method). Written as
``p(theta) = y0 + dt * sum_i b_i(theta) k_i`` with ``b_i(theta) = sum_j d_ij theta^j`` (j = 1..4), the
four conditions fix, with ``e0`` and ``e_last`` the unit weight vectors of the first and last stage::

    d_1 = e0
    d_2 = 16 mid - 4 e0 - 5 b + e_last
    d_3 = -32 mid + 5 e0 + 14 b - 3 e_last
    d_4 = 16 mid - 2 e0 - 8 b + 2 e_last

(``d_1 + d_2 + d_3 + d_4 = b``; ``sum_j d_j / 2^j = mid``; ``sum_j j d_j = e_last``), the continuous
extension :class:`ButcherTableau` takes as ``dense``, so the interpolated values are torchdiffeq's.
Without ``mid`` the loop interpolates with cubic Hermite, as for any tableau without a dense output.
"""

from __future__ import annotations

import collections
import inspect
from typing import Any

import torch

from ..solvers.methods.tableau import ButcherTableau

__all__ = ["RKAdaptiveStepsizeODESolver", "_ButcherTableau", "solver_class_tableau"]

_ButcherTableau = collections.namedtuple("_ButcherTableau", "alpha, beta, c_sol, c_error")
_ButcherTableau.__doc__ = """torchdiffeq's tableau record: ``alpha`` (nodes after the first), ``beta`` (the
rows of the stage matrix below the diagonal, the first stage's row left out), ``c_sol`` (weights of the
solution), ``c_error`` (weights of the error estimate, ``b - b_hat``). Tensors or sequences of numbers;
see :mod:`neuralode._impl.rk_common` for the layout."""


class RKAdaptiveStepsizeODESolver:
    """Base of torchdiffeq-style declarations of an explicit embedded Runge-Kutta method.

    Subclass it with the class attributes ``order`` (int >= 2), ``tableau`` (:data:`_ButcherTableau`)
    and, for torchdiffeq's quartic dense output, ``mid``; then ``SOLVERS[name] = Subclass`` (from
    :mod:`neuralode._impl.odeint`) makes ``odeint(..., method=name)`` run it. The class is a
    declaration only: neuralode runs the method from its coefficients and never instantiates it.
    """

    order: int
    tableau: Any
    mid: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(
            f"{type(self).__name__} declares a method for neuralode and is not instantiated: register it with "
            f"SOLVERS[name] = {type(self).__name__} (neuralode._impl.odeint.SOLVERS) and call "
            "odeint(func, y0, t, method=name)."
        )


def _floats(what: str, value: Any) -> list[float]:
    """A 1-D sequence of coefficients (tensor, list, tuple) as Python floats."""
    try:
        return torch.as_tensor(value, dtype=torch.float64).reshape(-1).tolist()
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{what} must be a 1-D tensor or sequence of numbers; got {value!r}.") from err


def _overridden(cls: type) -> list[str]:
    """The methods ``cls`` defines above the torchdiffeq base class (ours or torchdiffeq's own)."""
    names = []
    for klass in cls.__mro__:
        if klass is object or klass.__name__ == "RKAdaptiveStepsizeODESolver":
            break
        for attr, value in vars(klass).items():
            if attr.startswith("__") and attr.endswith("__"):
                continue
            if inspect.isfunction(value) or isinstance(value, (staticmethod, classmethod, property)):
                names.append(f"{klass.__name__}.{attr}")
    return names


def solver_class_tableau(name: str, cls: type) -> ButcherTableau:
    """The :class:`ButcherTableau` of a torchdiffeq-style solver class (``order``, ``tableau``, ``mid``).

    Args:
        name: the method name the tableau is registered under.
        cls: a class with the class attributes ``order`` and ``tableau`` (and optionally ``mid``), such as
            a subclass of :class:`RKAdaptiveStepsizeODESolver`, or of torchdiffeq's own.

    Returns:
        The method as a :class:`ButcherTableau` named ``name``: embedded when ``c_error`` is given
        (``error_order = order - 1``), fixed-step when it is ``None``; with the quartic dense output of
        the module docstring when ``mid`` is given.

    Raises:
        TypeError: if ``cls`` overrides methods of the base class (they would not run), lacks ``order``
            or ``tableau``, or a coefficient is not a number.
        ValueError: if the coefficients do not have torchdiffeq's explicit layout or are inconsistent
            (:class:`ButcherTableau`'s checks; the message names the class).
    """
    label = f"SOLVERS[{name!r}] = {cls.__qualname__}"
    custom = _overridden(cls)
    if custom:
        raise TypeError(
            f"{label}: the class defines {', '.join(custom)}; neuralode runs a registered solver class from its "
            "coefficients (order, tableau, mid) only, so that behaviour would be lost. Register a "
            "neuralode.ButcherTableau instead, or run this method with torchdiffeq."
        )
    order = getattr(cls, "order", None)
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise TypeError(f"{label}: the class attribute order must be a positive int; got {order!r}.")
    tb: Any = getattr(cls, "tableau", None)
    if not all(hasattr(tb, field) for field in ("alpha", "beta", "c_sol", "c_error")):
        raise TypeError(
            f"{label}: the class attribute tableau must be a _ButcherTableau(alpha, beta, c_sol, c_error); got {tb!r}."
        )
    alpha = _floats(f"{label}: tableau.alpha", tb.alpha)
    beta = [_floats(f"{label}: row {i} of tableau.beta", row) for i, row in enumerate(tb.beta)]
    b = _floats(f"{label}: tableau.c_sol", tb.c_sol)
    s = len(alpha) + 1
    layout = (
        f"{label}: torchdiffeq's explicit layout has len(beta) == len(alpha), row i of beta with i + 1 entries and "
        f"len(c_sol) == len(c_error) == len(alpha) + 1 (the first stage, at c = 0, is not listed in alpha). "
        "Implicit tableaus (full rows of the stage matrix) cannot be registered; neuralode has torchdiffeq's "
        "implicit methods built in under their names."
    )
    if len(beta) != s - 1 or any(len(row) != i + 1 for i, row in enumerate(beta)) or len(b) != s:
        raise ValueError(
            f"{layout} Got len(alpha) = {len(alpha)}, rows of beta {[len(r) for r in beta]}, len(c_sol) = {len(b)}."
        )
    b_err = None if tb.c_error is None else _floats(f"{label}: tableau.c_error", tb.c_error)
    if b_err is not None and len(b_err) != s:
        raise ValueError(f"{layout} Got len(c_error) = {len(b_err)}.")
    if b_err is not None and order < 2:
        raise ValueError(
            f"{label}: an embedded method needs order >= 2 (its error estimate has order - 1); got {order}."
        )
    mid = getattr(cls, "mid", None)
    dense = None
    if mid is not None:
        m = _floats(f"{label}: mid", mid)
        if len(m) != s:
            raise ValueError(f"{label}: mid needs one weight per stage ({s}); got {len(m)}.")
        dense = tuple(_quartic_row(i, s, b[i], m[i]) for i in range(s))
    try:
        return ButcherTableau(
            name=name,
            c=(0.0, *alpha),
            a=((), *(tuple(row) for row in beta)),
            b=tuple(b),
            order=order,
            b_err=None if b_err is None else tuple(b_err),
            error_order=None if b_err is None else order - 1,
            dense=dense,
            dense_order=None if dense is None else min(order, 4),
            description=f"registered from the torchdiffeq-style solver class {cls.__module__}.{cls.__qualname__}",
        )
    except ValueError as err:
        raise ValueError(
            f"{label}: {err} (coefficients given as float32 tensors carry rounding errors of about 1e-7; give "
            "them in float64, as torchdiffeq's own tableaus do)."
        ) from err


def _quartic_row(i: int, s: int, b_i: float, mid_i: float) -> tuple[float, float, float, float]:
    """Stage ``i``'s coefficients ``d_i1 .. d_i4`` of torchdiffeq's quartic (the module docstring)."""
    e0 = 1.0 if i == 0 else 0.0
    e_last = 1.0 if i == s - 1 else 0.0
    return (
        e0,
        16 * mid_i - 4 * e0 - 5 * b_i + e_last,
        -32 * mid_i + 5 * e0 + 14 * b_i - 3 * e_last,
        16 * mid_i - 2 * e0 - 8 * b_i + 2 * e_last,
    )


def _is_solver_class(value: Any) -> bool:
    """Whether ``value`` looks like a torchdiffeq solver class declaring an explicit tableau."""
    return isinstance(value, type) and hasattr(value, "tableau") and hasattr(value, "order")
