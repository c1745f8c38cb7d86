"""Explicit Runge-Kutta methods as data: the Butcher tableau and the named methods.

An explicit ``s``-stage Runge-Kutta method advances ``dy/dt = f(t, y)`` from ``(t0, y0)`` by ``dt``::

    k_i = f(t0 + c_i dt, y0 + dt * sum_{j<i} a_ij k_j)      i = 0 .. s-1
    y1  = y0 + dt * sum_i b_i k_i

An adaptive (embedded) method carries a second weight vector ``b_hat`` of a different order; the solver
propagates ``y1`` (computed with ``b``) and estimates the local error as
``y1 - y1_hat = dt * sum_i b_err_i k_i`` with ``b_err = b - b_hat``. A continuous extension ("dense output")
replaces the constant weights by polynomials ``b_i(theta)`` with ``b_i(0) = 0`` and ``b_i(1) = b_i``, so that
``y(t0 + theta dt) ~ y0 + dt * sum_i b_i(theta) k_i`` for ``0 <= theta <= 1``.

A method is nothing but its coefficients (:class:`ButcherTableau`), checked when it is built; the generic
stepper in :mod:`neuralode.solvers.methods.stepper` (and the drivers' own forms of its stage sums) runs any of them.
:data:`EXPLICIT_METHODS` names the built-in ones; :data:`neuralode.METHODS` names every method ``solve``
accepts.

Some methods carry more than one weight vector for the error, or stages beyond those of the step:

* ``b_err_aux``: a second error estimate (dopri8 = DOP853: estimates of orders 5 and 3, combined by Hairer's
  formula into one that behaves like an order-8 local error; see :attr:`ButcherTableau.b_err_aux`).
* ``c_extra``, ``a_extra``, ``dense_extra``: stages evaluated only when a step has output times in it, and the
  continuous extension over the step's stages followed by those (dopri8: 3 extra stages, dense order 7).
  The extra stage ``j`` is ``f(t0 + c_extra_j dt, y0 + dt * sum_l a_extra_jl k_l)`` over all stages before it.

Notes for users migrating from torchdiffeq:

* torchdiffeq's ``rk4`` is Kutta's *3/8 rule*, not the classic fourth-order Runge-Kutta method. Here ``rk4`` is
  the classic method (``b = 1/6, 1/3, 1/3, 1/6``) and the 3/8 rule is ``rk4_38``; use ``method="rk4_38"`` to
  reproduce torchdiffeq's ``rk4`` numbers.
* torchdiffeq's ``dopri8`` is Prince and Dormand's RK8(7)13M, which has no dense output of its own. Here
  ``dopri8`` is Hairer's DOP853 (the method of scipy's ``DOP853``), which has an order-7 dense output; the 13M
  method is ``dopri8_13m``, use ``method="dopri8_13m"`` to reproduce torchdiffeq's ``dopri8`` numbers.

References:
    E. Hairer, S. P. Norsett, G. Wanner, "Solving Ordinary Differential Equations I: Nonstiff Problems",
    2nd ed., Springer 1993, Sections II.1-II.6 (order conditions, embedded pairs, dense output) and II.10
    (DOP853), with Hairer's Fortran code DOP853.
    J. C. Butcher, "Numerical Methods for Ordinary Differential Equations", 3rd ed., Wiley 2016.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from numbers import Real
from typing import TypeAlias

__all__ = ["EXPLICIT_METHODS", "ButcherTableau"]

Coefficient: TypeAlias = float | int | Fraction
"""A coefficient as a tableau is written: exact (``int``, ``Fraction``) or rounded (``float``). A
:class:`ButcherTableau` converts every coefficient to a Python float when it is built."""

# Absolute tolerance of the structural checks. Several published tableaus (Tsitouras 2011, Prince-Dormand
# 1981) give irrational coefficients rounded to 16-20 digits or as rational approximations, so the rows of
# ``a`` only sum to ``c`` up to rounding; 1e-10 accepts those and still rejects any real typo.
_TOL = 1e-10


def _floats(name: str, field: str, values: Iterable[object]) -> tuple[float, ...]:
    """Convert a sequence of real numbers (float, int, Fraction, NumPy scalars) to a tuple of finite floats."""
    try:
        items = tuple(values)
    except TypeError:
        raise TypeError(
            f"ButcherTableau {name!r}: {field} must be a sequence of real numbers; got {type(values).__name__}"
        ) from None
    reals: list[Real] = []
    for v in items:
        # numbers.Real admits int, float, Fraction and NumPy floats, and refuses strings, which float() would parse.
        if not isinstance(v, Real):
            raise TypeError(f"ButcherTableau {name!r}: {field} must contain real numbers; got {v!r}")
        reals.append(v)
    out = tuple(float(v) for v in reals)
    for x in out:
        if not math.isfinite(x):
            raise ValueError(f"ButcherTableau {name!r}: {field} contains {x}; all coefficients must be finite")
    return out


# ``init=False``: the constructor below takes the coefficients as written (``Coefficient`` sequences) and stores
# them converted to tuples of floats, the types the fields declare; the dataclass still supplies ``repr``, ``==``
# and ``hash`` over the fields.
@dataclass(frozen=True, init=False)
class ButcherTableau:
    """The coefficients of an explicit Runge-Kutta method, validated on creation.

    Attributes:
        name: the method's name, as used in :data:`EXPLICIT_METHODS` and error messages.
        c: ``(s,)`` nodes; stage ``i`` is evaluated at ``t0 + c[i] * dt``. ``c[0] == 0``.
        a: ``s`` rows of the strictly lower-triangular stage matrix; row ``i`` has exactly ``i`` entries
            (row 0 is ``()``), and ``sum(a[i]) == c[i]``.
        b: ``(s,)`` weights of the propagated solution; ``sum(b) == 1``.
        order: order of the propagated solution ``y1`` (local error ``O(dt**(order+1))``).
        b_err: ``(s,)`` ``b - b_hat`` for embedded pairs, so the local error estimate is
            ``dt * sum_i b_err[i] * k[i]``; sums to 0. ``None`` for fixed-step methods.
        error_order: the order the step-size controller assumes for the error estimate (it uses the exponent
            ``1 / (min(order, error_order) + 1)``); given exactly when ``b_err`` is. For an ordinary embedded pair
            it is the order of ``b_hat``. For a method with a second estimate ``b_err_aux`` it is the order of
            the combined estimate, which may exceed that of either ``b_hat`` (dopri8: 7, from estimates of
            orders 5 and 3).
        dense: ``(s, m)`` continuous extension,
            ``b_i(theta) = sum_j dense[i][j] * theta**(j+1)``, so
            ``y(t0 + theta*dt) = y0 + dt * sum_i b_i(theta) k_i``; row sums equal ``b``. ``None`` when the
            method has no continuous extension of its own (the solver then uses cubic Hermite interpolation).
        dense_order: order of the continuous extension; given exactly when ``dense`` or ``dense_extra`` is.
        description: one line naming the method and the reference for its coefficients.
        b_err_aux: ``(s,)`` weights of a second, lower-order error estimate ``err_aux = dt * sum_i b_err_aux[i] k[i]``
            (sums to 0), or ``None`` (every method but dopri8). When given, the loop measures both estimates with
            the same scaled norm and controls the step with Hairer's DOP853 combination
            ``ratio = |err|**2 / sqrt(|err|**2 + 0.01 * |err_aux|**2)`` (0 when both are 0), see
            :func:`neuralode.solvers.methods.stepper.combined_error_ratio`; needs ``b_err``.
        c_extra: ``(e,)`` nodes of stages evaluated only for dense output, after the ``s`` stages of the step
            (``None`` when the continuous extension needs none). Given together with ``a_extra`` and
            ``dense_extra``.
        a_extra: ``e`` rows; row ``j`` has ``s + j`` entries, the coefficients of ``k_0 .. k_{s+j-1}`` (the step's
            stages, then the extra stages before it), and sums to ``c_extra[j]``. Extra stage ``j`` is
            ``f(t0 + c_extra[j] dt, y0 + dt * sum_l a_extra[j][l] k_l)``
            (:func:`neuralode.solvers.methods.interpolation.dense_stages`).
        dense_extra: ``(s + e, m)`` continuous extension over the step's ``s`` stages followed by the ``e`` extra
            stages, in the same monomial form as ``dense``; its first ``s`` rows sum to ``b`` and the last ``e``
            to 0. A method has at most one of ``dense`` and ``dense_extra``; ``dense_extra`` is the one whose
            stages cost ``e`` more evaluations of ``f``, which the loop spends only on steps with output
            times in them.

    All coefficients are stored as tuples of Python floats; exact ``Fraction`` or ``int`` inputs are converted.

    Raises:
        ValueError: naming the tableau and the failed condition, when the coefficients are inconsistent
            (wrong shapes, rows of ``a`` not summing to ``c``, ``b`` not summing to 1, ``b_err`` not summing
            to 0, ``dense`` not reproducing ``b`` at ``theta = 1``, orders missing or below 1, non-finite
            values).
        TypeError: when a coefficient is not a real number or an order is not an integer.
    """

    name: str
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    order: int
    b_err: tuple[float, ...] | None = None
    error_order: int | None = None
    dense: tuple[tuple[float, ...], ...] | None = None
    dense_order: int | None = None
    description: str = ""
    # Added after ``description`` so that existing positional constructions keep their meaning.
    b_err_aux: tuple[float, ...] | None = None
    c_extra: tuple[float, ...] | None = None
    a_extra: tuple[tuple[float, ...], ...] | None = None
    dense_extra: tuple[tuple[float, ...], ...] | None = None

    def __init__(
        self,
        name: str,
        c: Sequence[Coefficient],
        a: Sequence[Sequence[Coefficient]],
        b: Sequence[Coefficient],
        order: int,
        b_err: Sequence[Coefficient] | None = None,
        error_order: int | None = None,
        dense: Sequence[Sequence[Coefficient]] | None = None,
        dense_order: int | None = None,
        description: str = "",
        b_err_aux: Sequence[Coefficient] | None = None,
        c_extra: Sequence[Coefficient] | None = None,
        a_extra: Sequence[Sequence[Coefficient]] | None = None,
        dense_extra: Sequence[Sequence[Coefficient]] | None = None,
    ) -> None:
        # Frozen dataclass: the fields are set through object.__setattr__. The scalar fields are stored as given,
        # each coefficient table as its tuple of floats once converted (or None when not given).
        def put(field: str, value: object) -> None:
            object.__setattr__(self, field, value)

        put("name", name)
        put("order", order)
        put("error_order", error_order)
        put("dense_order", dense_order)
        put("description", description)
        for field in ("b_err", "dense", "b_err_aux", "c_extra", "a_extra", "dense_extra"):
            put(field, None)

        if not isinstance(name, str) or not name:
            raise TypeError(f"ButcherTableau name must be a non-empty string; got {name!r}")

        def invalid(condition: str) -> ValueError:
            return ValueError(f"ButcherTableau {name!r}: {condition}")

        c = _floats(name, "c", c)
        b = _floats(name, "b", b)
        s = len(b)
        put("c", c)
        put("b", b)
        if s == 0:
            raise invalid("b is empty; a method needs at least one stage")
        if len(c) != s:
            raise invalid(f"len(c) = {len(c)} but len(b) = {s}; c and b need one entry per stage")
        rows = tuple(_floats(name, f"row {i} of a", row) for i, row in enumerate(a))
        put("a", rows)
        if len(rows) != s:
            raise invalid(f"a has {len(rows)} rows but there are {s} stages; a needs one row per stage")
        for i, row in enumerate(rows):
            if len(row) != i:
                raise invalid(
                    f"row {i} of a has {len(row)} entries; row i of an explicit method has exactly i entries "
                    "(strictly lower triangular, row 0 is empty)"
                )
        if c[0] != 0.0:
            raise invalid(f"c[0] = {c[0]}; the first stage is evaluated at the start of the step, c[0] = 0")
        for i, row in enumerate(rows[1:], start=1):
            row_sum = math.fsum(row)
            if abs(row_sum - c[i]) > _TOL:
                raise invalid(f"row {i} of a sums to {row_sum} but c[{i}] = {c[i]}; rows of a must sum to c")
        b_sum = math.fsum(b)
        if abs(b_sum - 1.0) > _TOL:
            raise invalid(f"b sums to {b_sum}; b must sum to 1")
        _check_order(name, "order", order)

        if (b_err is None) != (error_order is None):
            given, missing = ("b_err", "error_order") if error_order is None else ("error_order", "b_err")
            raise invalid(f"{given} is given but {missing} is None; give both for an embedded pair or neither")
        if b_err is not None:
            b_err = _floats(name, "b_err", b_err)
            put("b_err", b_err)
            if len(b_err) != s:
                raise invalid(f"len(b_err) = {len(b_err)} but there are {s} stages; b_err needs one entry per stage")
            err_sum = math.fsum(b_err)
            if abs(err_sum) > _TOL:
                raise invalid(f"b_err sums to {err_sum}; b_err = b - b_hat must sum to 0")
            _check_order(name, "error_order", error_order)

        if b_err_aux is not None:
            if b_err is None:
                raise invalid("b_err_aux is given but b_err is None; a second error estimate needs the first")
            b_err_aux = _floats(name, "b_err_aux", b_err_aux)
            put("b_err_aux", b_err_aux)
            if len(b_err_aux) != s:
                raise invalid(
                    f"len(b_err_aux) = {len(b_err_aux)} but there are {s} stages; b_err_aux needs one entry per stage"
                )
            aux_sum = math.fsum(b_err_aux)
            if abs(aux_sum) > _TOL:
                raise invalid(f"b_err_aux sums to {aux_sum}; an error estimate's weights must sum to 0")

        extra = {"c_extra": c_extra, "a_extra": a_extra, "dense_extra": dense_extra}
        if any(v is not None for v in extra.values()) and any(v is None for v in extra.values()):
            given = ", ".join(k for k, v in extra.items() if v is not None)
            missing = ", ".join(k for k, v in extra.items() if v is None)
            raise invalid(f"{given} given but {missing} None; give c_extra, a_extra and dense_extra together or none")
        if dense is not None and dense_extra is not None:
            raise invalid("dense and dense_extra are both given; a method has one continuous extension")
        has_dense = dense is not None or dense_extra is not None
        if has_dense != (dense_order is not None):
            kind = "dense" if dense is not None else "dense_extra"
            given, missing = (kind, "dense_order") if dense_order is None else ("dense_order", "dense")
            raise invalid(f"{given} is given but {missing} is None; give both for a continuous extension or neither")

        n_extra = 0
        if c_extra is not None:
            c_extra = _floats(name, "c_extra", c_extra)
            put("c_extra", c_extra)
            n_extra = len(c_extra)
            if n_extra == 0:
                raise invalid("c_extra is empty; leave c_extra, a_extra and dense_extra None for no extra stages")
            assert a_extra is not None  # c_extra, a_extra and dense_extra are given together (checked above)
            a_extra_rows = tuple(_floats(name, f"row {j} of a_extra", row) for j, row in enumerate(a_extra))
            put("a_extra", a_extra_rows)
            if len(a_extra_rows) != n_extra:
                raise invalid(
                    f"a_extra has {len(a_extra_rows)} rows but c_extra has {n_extra}; one row per extra stage"
                )
            for j, row in enumerate(a_extra_rows):
                if len(row) != s + j:
                    raise invalid(
                        f"row {j} of a_extra has {len(row)} entries; extra stage {j} combines the {s} stages of the "
                        f"step and the {j} extra stages before it, so it needs {s + j}"
                    )
                row_sum = math.fsum(row)
                if abs(row_sum - c_extra[j]) > _TOL:
                    raise invalid(
                        f"row {j} of a_extra sums to {row_sum} but c_extra[{j}] = {c_extra[j]}; rows must sum to c"
                    )

        for field, value in (("dense", dense), ("dense_extra", dense_extra)):
            if value is None:
                continue
            rows = tuple(_floats(name, f"row {i} of {field}", row) for i, row in enumerate(value))
            put(field, rows)
            n_rows = s + (n_extra if field == "dense_extra" else 0)
            if len(rows) != n_rows:
                needs = "one row per stage" if field == "dense" else "one row per stage and extra stage"
                raise invalid(f"{field} has {len(rows)} rows but there are {n_rows} stages; {field} needs {needs}")
            m = len(rows[0])
            if m == 0:
                raise invalid(f"row 0 of {field} is empty; {field} needs at least one column (the theta term)")
            for i, row in enumerate(rows):
                if len(row) != m:
                    raise invalid(
                        f"row {i} of {field} has {len(row)} entries but row 0 has {m}; "
                        f"{field} must be an ({'s' if field == 'dense' else 's + e'}, m) matrix"
                    )
                row_sum = math.fsum(row)
                target = b[i] if i < s else 0.0
                if abs(row_sum - target) > _TOL:
                    what = f"b[{i}] = {target}" if i < s else "0 (an extra stage has no weight in y1)"
                    raise invalid(
                        f"row {i} of {field} sums to {row_sum} but {what}; "
                        "the continuous extension at theta = 1 must reproduce b"
                    )
        if has_dense:
            _check_order(name, "dense_order", dense_order)

    @property
    def stages(self) -> int:
        """Number of stages ``s``, i.e. evaluations of ``f`` per step (``s - 1`` new ones when FSAL)."""
        return len(self.b)

    @property
    def adaptive(self) -> bool:
        """Whether the method carries an embedded error estimate (``b_err``) for step-size control."""
        return self.b_err is not None

    @property
    def fsal(self) -> bool:
        """First Same As Last: the last stage is ``f(t0 + dt, y1)`` and can be reused as the next first stage.

        True when ``c[-1] == 1``, ``a[-1] == b[:-1]`` and ``b[-1] == 0``. The comparison is exact, not within a
        tolerance: the reuse is only sound if the last stage is evaluated at exactly the propagated ``y1``.
        """
        return self.c[-1] == 1.0 and self.a[-1] == self.b[:-1] and self.b[-1] == 0.0

    @property
    def extra_stages(self) -> int:
        """Number ``e`` of stages evaluated only for dense output (``len(c_extra)``; 0 for most methods)."""
        return 0 if self.c_extra is None else len(self.c_extra)

    @property
    def end_stage(self) -> int | None:
        """Index, among the ``s`` stages and then the extra ones, of a stage that is ``f(t0 + dt, y1)``: the last
        stage of an FSAL method, else the last extra stage when it sits at ``c = 1`` with the row ``b`` (its input
        is ``y1``, formed by the same sum), else ``None``. The loop reuses it as the next step's first stage."""
        if self.fsal:
            return self.stages - 1
        # a_extra is given exactly when c_extra is (checked on construction).
        if self.c_extra is not None and self.a_extra is not None and self.c_extra[-1] == 1.0:
            row = self.a_extra[-1]
            if tuple(row[: self.stages]) == tuple(self.b) and not any(row[self.stages :]):
                return self.stages + self.extra_stages - 1
        return None


def _check_order(name: str, field: str, value: object) -> None:
    """An order is an int >= 1 (bool, although an int subclass, is refused)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"ButcherTableau {name!r}: {field} must be an int; got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"ButcherTableau {name!r}: {field} = {value}; {field} must be >= 1")


def _embedded(b: Sequence[Coefficient], b_hat: Sequence[Coefficient]) -> tuple[Fraction, ...]:
    """``b_err = b - b_hat``, computed exactly before the conversion to floats."""
    return tuple(Fraction(x) - Fraction(y) for x, y in zip(b, b_hat, strict=True))


def _dec(*digits: str) -> tuple[Fraction, ...]:
    """Exact rationals from decimal strings, so differences like ``b - b_hat`` are formed before rounding."""
    return tuple(Fraction(d) for d in digits)


def _nested_dense(
    b: Sequence[Coefficient], d: Sequence[Sequence[Coefficient]], fsal_stage: int, stages: int
) -> tuple[tuple[Fraction, ...], ...]:
    """Monomial weights ``b_i(theta)`` of Hairer's nested dense output (DOP853's CONTD8), computed exactly.

    Hairer writes the interpolant with ``s1 = 1 - theta`` as::

        y(theta) = r1 + theta (r2 + s1 (r3 + theta (r4 + s1 (r5 + theta (r6 + s1 (r7 + theta r8)))))),
        r1 = y0, r2 = y1 - y0, r3 = dt k_first - r2, r4 = r2 - dt f(t1, y1) - r3,
        r_{5+j} = dt * sum_i d[j][i] k_i    (j = 0 .. len(d) - 1).

    With ``r2 = dt sum_i b_i k_i`` every ``r`` is ``dt`` times a combination of the stages, so the interpolant is
    ``y0 + dt sum_i b_i(theta) k_i`` with ``b_i(theta) = sum_n w_n[i] B_n(theta)`` over the nested basis
    ``B_0 = theta``, ``B_n = B_{n-1} * (theta if n even else s1)``. Returns, per stage, the coefficients of
    ``theta, theta^2, ..`` (the form of :attr:`ButcherTableau.dense`); ``fsal_stage`` is the index of the stage
    ``f(t1, y1)``, ``stages`` the length of the stage list the ``d`` rows run over.
    """

    def unit(i: int) -> tuple[Fraction, ...]:
        return tuple(Fraction(int(j == i)) for j in range(stages))

    bb = tuple(Fraction(x) for x in b) + (Fraction(0),) * (stages - len(b))
    first, last = unit(0), unit(fsal_stage)
    weights = [
        bb,  # r2
        tuple(f - x for f, x in zip(first, bb)),  # r3 = dt k_0 - r2
        tuple(2 * x - f - g for x, f, g in zip(bb, first, last)),  # r4 = r2 - dt f1 - r3
        *(tuple(Fraction(x) for x in row) for row in d),
    ]
    # Basis polynomials as coefficient lists in powers theta^0, theta^1, ...
    basis, poly = [], [Fraction(0), Fraction(1)]
    for n in range(len(weights)):
        if n > 0:
            factor = (Fraction(0), Fraction(1)) if n % 2 == 0 else (Fraction(1), Fraction(-1))
            poly = [
                sum((poly[i] * factor[p - i] for i in range(len(poly)) if 0 <= p - i < 2), Fraction(0))
                for p in range(len(poly) + 1)
            ]
        basis.append(poly)
    degree = len(basis[-1]) - 1
    rows = []
    for i in range(stages):
        coeffs = [Fraction(0)] * (degree + 1)
        for w, bn in zip(weights, basis):
            for p, x in enumerate(bn):
                coeffs[p] += w[i] * x
        assert coeffs[0] == 0  # every basis polynomial vanishes at theta = 0
        rows.append(tuple(coeffs[1:]))
    return tuple(rows)


F = Fraction

# ---------------------------------------------------------------------------------------------------------------
# Fixed-step methods
# ---------------------------------------------------------------------------------------------------------------

EULER = ButcherTableau(
    name="euler",
    c=(0,),
    a=((),),
    b=(1,),
    order=1,
    description="Forward Euler method (Euler 1768); one stage, order 1.",
)

MIDPOINT = ButcherTableau(
    name="midpoint",
    c=(0, F(1, 2)),
    a=((), (F(1, 2),)),
    b=(0, 1),
    order=2,
    description="Explicit midpoint rule (Runge 1895); Hairer-Norsett-Wanner I, Sec. II.1, order 2.",
)

HEUN2 = ButcherTableau(
    name="heun2",
    c=(0, 1),
    a=((), (1,)),
    b=(F(1, 2), F(1, 2)),
    order=2,
    description="Heun's second-order method / explicit trapezoidal rule (Heun 1900), order 2.",
)

HEUN3 = ButcherTableau(
    name="heun3",
    c=(0, F(1, 3), F(2, 3)),
    a=((), (F(1, 3),), (0, F(2, 3))),
    b=(F(1, 4), 0, F(3, 4)),
    order=3,
    description="Heun's third-order method (Heun 1900); Hairer-Norsett-Wanner I, Table II.1.1, order 3.",
)

RK4 = ButcherTableau(
    name="rk4",
    c=(0, F(1, 2), F(1, 2), 1),
    a=((), (F(1, 2),), (0, F(1, 2)), (0, 0, 1)),
    b=(F(1, 6), F(1, 3), F(1, 3), F(1, 6)),
    order=4,
    description="Classic fourth-order Runge-Kutta method (Kutta 1901); not torchdiffeq's rk4 (that is rk4_38).",
)

RK4_38 = ButcherTableau(
    name="rk4_38",
    c=(0, F(1, 3), F(2, 3), 1),
    a=((), (F(1, 3),), (F(-1, 3), 1), (1, -1, 1)),
    b=(F(1, 8), F(3, 8), F(3, 8), F(1, 8)),
    order=4,
    description="Kutta's 3/8 rule (Kutta 1901), order 4; torchdiffeq's 'rk4'.",
)

# ---------------------------------------------------------------------------------------------------------------
# Adaptive (embedded) methods. All propagate the higher-order solution ("local extrapolation") except where noted.
# ---------------------------------------------------------------------------------------------------------------

ADAPTIVE_HEUN = ButcherTableau(
    name="adaptive_heun",
    c=(0, 1),
    a=((), (1,)),
    b=(F(1, 2), F(1, 2)),
    order=2,
    b_err=_embedded((F(1, 2), F(1, 2)), (1, 0)),
    error_order=1,
    description="Heun-Euler 2(1) pair: Heun's trapezoidal rule with embedded forward Euler, order 2(1).",
)

# Fehlberg's RKF1(2) (E. Fehlberg, "Low-order classical Runge-Kutta formulas with stepsize control and their
# application to some heat transfer problems", NASA TR R-315, 1969). Fehlberg built it to propagate the
# first-order solution b_hat = (1/256, 255/256, 0), for which the last stage is FSAL. torchdiffeq's 'fehlberg2'
# instead propagates the second-order b = (1/512, 255/256, 1/512) (its c_sol, with c_error = b - b_hat), and
# we follow torchdiffeq. Consequence: the last stage is f(t1, y1_hat), not f(t1, y1), so the method is *not*
# FSAL here (torchdiffeq nevertheless reuses that stage as the next step's first one, which evaluates f at a
# slightly different point than y1).
_FEHLBERG2_B: tuple[Coefficient, ...] = (F(1, 512), F(255, 256), F(1, 512))
FEHLBERG2 = ButcherTableau(
    name="fehlberg2",
    c=(0, F(1, 2), 1),
    a=((), (F(1, 2),), (F(1, 256), F(255, 256))),
    b=_FEHLBERG2_B,
    order=2,
    b_err=_embedded(_FEHLBERG2_B, (F(1, 256), F(255, 256), 0)),
    error_order=1,
    description="Fehlberg RKF1(2) (NASA TR R-315, 1969), propagating the order-2 solution as torchdiffeq does.",
)

# P. Bogacki, L. F. Shampine, "A 3(2) pair of Runge-Kutta formulas", Appl. Math. Lett. 2(4), 321-325, 1989.
# The fourth stage is f(t1, y1): FSAL, so three new evaluations per accepted step.
_BOSH3_B: tuple[Coefficient, ...] = (F(2, 9), F(1, 3), F(4, 9), 0)
BOSH3 = ButcherTableau(
    name="bosh3",
    c=(0, F(1, 2), F(3, 4), 1),
    a=((), (F(1, 2),), (0, F(3, 4)), _BOSH3_B[:3]),
    b=_BOSH3_B,
    order=3,
    b_err=_embedded(_BOSH3_B, (F(7, 24), F(1, 4), F(1, 3), F(1, 8))),
    error_order=2,
    description="Bogacki-Shampine 3(2) pair (Bogacki & Shampine, Appl. Math. Lett. 2(4), 1989), FSAL.",
)

# J. R. Dormand, P. J. Prince, "A family of embedded Runge-Kutta formulae", J. Comput. Appl. Math. 6(1), 19-26,
# 1980 (RK5(4)7M). The continuous extension is Shampine's order-4 interpolant (L. F. Shampine, "Some practical
# Runge-Kutta formulas", Math. Comp. 46(173), 135-150, 1986), the same polynomial as the dense output of
# Hairer's DOPRI5 code and scipy's RK45 (its matrix P); it needs no extra evaluation of f. The alternative
# torchdiffeq uses (a quartic fitted through y0, y1, a midpoint value, f0 and f1) is also order 4 but is not a
# tableau row, so it is not expressible here.
_DOPRI5_B: tuple[Coefficient, ...] = (F(35, 384), 0, F(500, 1113), F(125, 192), F(-2187, 6784), F(11, 84), 0)
DOPRI5 = ButcherTableau(
    name="dopri5",
    c=(0, F(1, 5), F(3, 10), F(4, 5), F(8, 9), 1, 1),
    a=(
        (),
        (F(1, 5),),
        (F(3, 40), F(9, 40)),
        (F(44, 45), F(-56, 15), F(32, 9)),
        (F(19372, 6561), F(-25360, 2187), F(64448, 6561), F(-212, 729)),
        (F(9017, 3168), F(-355, 33), F(46732, 5247), F(49, 176), F(-5103, 18656)),
        _DOPRI5_B[:6],
    ),
    b=_DOPRI5_B,
    order=5,
    b_err=_embedded(
        _DOPRI5_B, (F(5179, 57600), 0, F(7571, 16695), F(393, 640), F(-92097, 339200), F(187, 2100), F(1, 40))
    ),
    error_order=4,
    # Row i: coefficients of theta, theta^2, theta^3, theta^4 in b_i(theta).
    dense=(
        (1, F(-8048581381, 2820520608), F(8663915743, 2820520608), F(-12715105075, 11282082432)),
        (0, 0, 0, 0),
        (0, F(131558114200, 32700410799), F(-68118460800, 10900136933), F(87487479700, 32700410799)),
        (0, F(-1754552775, 470086768), F(14199869525, 1410260304), F(-10690763975, 1880347072)),
        (0, F(127303824393, 49829197408), F(-318862633887, 49829197408), F(701980252875, 199316789632)),
        (0, F(-282668133, 205662961), F(2019193451, 616988883), F(-1453857185, 822651844)),
        (0, F(40617522, 29380423), F(-110615467, 29380423), F(69997945, 29380423)),
    ),
    dense_order=4,
    description=(
        "Dormand-Prince 5(4) (J. Comput. Appl. Math. 6, 1980), FSAL, "
        "with Shampine's order-4 dense output (Math. Comp. 46, 1986)."
    ),
)

# Ch. Tsitouras, "Runge-Kutta pairs of order 5(4) satisfying only the first column simplifying assumption",
# Comput. Math. Appl. 62(2), 770-775, 2011. Its coefficients are irrational; the paper prints them to about 16
# digits, which satisfy the order conditions only to about 1e-15. We use the longer expansions distributed
# with diffrax and OrdinaryDiffEq.jl, rounded to 30 digits, and read them as exact decimals so that
# b_err = b - b_hat is formed before rounding to float64. The first column of a is derived from the row-sum
# condition a_i1 = c_i - sum_{j>1} a_ij (as OrdinaryDiffEq.jl's generic tableau does); it agrees with the
# published first column to all printed digits.
_TSIT5_C: tuple[Coefficient, ...] = (
    0,
    F(161, 1000),
    F(327, 1000),
    F(9, 10),
    F("0.980025540904509685729810286287"),
    1,
    1,
)
_TSIT5_A_TAIL: tuple[tuple[Coefficient, ...], ...] = (
    (),
    (),
    _dec("0.335480655492356988544426874250"),
    _dec("-6.35944848997507484314815991238", "4.36229543286958141101772731819"),
    _dec(
        "-11.7488835640628278777471703398",
        "7.49553934288983620830460478456",
        "-0.0924950663617552492565020793321",
    ),
    _dec(
        "-12.9209693178471092917061186818",
        "8.15936789857615864318040079454",
        "-0.0715849732814009972245305425258",
        "-0.0282690503940683829090030572127",
    ),
)
_TSIT5_B: tuple[Coefficient, ...] = (
    *_dec("0.0964607668180652295181673131651"),
    F(1, 100),
    *_dec(
        "0.479889650414499574775249532291",
        "1.37900857410374189319227482186",
        "-3.29006951543608067990104758571",
        "2.32471052409977398241535591840",
    ),
    0,
)
_TSIT5_B_HAT: tuple[Coefficient, ...] = (
    *_dec(
        "0.0946807557658394580747887625576",
        "0.00918356554034325309677636393665",
        "0.487770528424761570785564259963",
        "1.23429756693047898565510967388",
        "-2.70771234998352545488110997506",
        "1.86662841817058703575371939957",
    ),
    F(1, 66),
)
TSIT5 = ButcherTableau(
    name="tsit5",
    c=_TSIT5_C,
    a=(
        (),
        *(((_TSIT5_C[i] - sum(tail),) + tail) for i, tail in enumerate(_TSIT5_A_TAIL[1:], start=1)),
        _TSIT5_B[:6],
    ),
    b=_TSIT5_B,
    order=5,
    b_err=_embedded(_TSIT5_B, _TSIT5_B_HAT),
    error_order=4,
    # Tsitouras' interpolant: b_i(theta) are the quartics of the paper, expanded into monomial coefficients
    # (columns: theta, theta^2, theta^3, theta^4) as in OrdinaryDiffEq.jl's Tsit5Interp. Only b_1 has a linear
    # term (b_i'(0) = 1 for i = 1 and 0 otherwise, so the interpolant's slope at theta = 0 is f(t0, y0)).
    dense=(
        (1, -2.763706197274826, 2.9132554618219126, -1.0530884977290216),
        (0, 0.13169999999999998, -0.2234, 0.1017),
        (0, 3.9302962368947516, -5.941033872131505, 2.490627285651253),
        (0, -12.411077166933676, 30.33818863028232, -16.548102889244902),
        (0, 37.50931341651104, -88.1789048947664, 47.37952196281928),
        (0, -27.896526289197286, 65.09189467479366, -34.87065786149661),
        (0, F(3, 2), -4, F(5, 2)),
    ),
    dense_order=4,
    description="Tsitouras 5(4) (Comput. Math. Appl. 62, 2011), FSAL, with the paper's order-4 dense output.",
)


# P. J. Prince, J. R. Dormand, "High order embedded Runge-Kutta formulae", J. Comput. Appl. Math. 7(1), 67-75,
# 1981: RK8(7)13M, with the rational approximations of the paper. These are torchdiffeq's 'dopri8'
# coefficients; here the method is registered as 'dopri8_13m' (method="dopri8_13m" reproduces torchdiffeq's
# dopri8), while 'dopri8' is Hairer's DOP853 (below), which has an order-7 dense output. Some nodes, e.g.
# c[8] = 5490023248/9719169821, approximate irrational values, so the rows of a sum to c and the order
# conditions hold only up to that rounding (tests/test_tableau.py checks them). b[12] = 1/4 != 0, so the method
# is not FSAL; torchdiffeq appends a 14th stage f(t1, y1) with zero weight to reuse it, which costs the same 13
# evaluations per step as computing f(t1, y1) at the start of the next step. It has no continuous extension of
# its own; the solver interpolates with cubic Hermite polynomials.
def _quartic_through_midpoint(b: Sequence, mid: Sequence) -> tuple[tuple[Fraction, ...], ...]:
    """The continuous extension of the quartic ``p(theta)`` with ``p(0) = y0``, ``p(1) = y1``, ``p'(0) = dt f0``,
    ``p'(1) = dt f1`` and ``p(1/2) = y_mid``, as ``dense_extra`` rows over the ``s`` stages and the extra stage
    ``f1 = f(t0 + dt, y1)``; ``b`` (``s`` weights) gives ``y1 = y0 + dt sum b_i k_i`` and ``mid`` (``s + 1``
    weights) the midpoint estimate ``y_mid = y0 + dt sum mid_i k_i``.

    Writing ``p(theta) - y0 = H_1 (y1 - y0) + H_m (y_mid - y0) + dt (H_0 f0 + H_e f1)`` with basis quartics
    that vanish at 0 (coefficients of theta .. theta^4, from a 4 x 4 system in exact fractions), stage ``i``'s
    weight is ``b_i H_1 + mid_i H_m`` plus ``H_0`` for the first stage and ``H_e`` for the extra one.
    """
    # Rows: p(1), p'(0), p'(1), p(1/2) of p = sum_j q_j theta^(j+1), j = 0..3.
    half = Fraction(1, 2)
    system = [
        [Fraction(1)] * 4,
        [Fraction(1), 0, 0, 0],
        [Fraction(j + 1) for j in range(4)],
        [half ** (j + 1) for j in range(4)],
    ]

    def basis(rhs):  # Gauss-Jordan elimination in fractions
        m = [row[:] + [Fraction(r)] for row, r in zip(system, rhs)]
        for col in range(4):
            pivot = next(r for r in range(col, 4) if m[r][col] != 0)
            m[col], m[pivot] = m[pivot], m[col]
            m[col] = [x / m[col][col] for x in m[col]]
            for r in range(4):
                if r != col and m[r][col] != 0:
                    m[r] = [x - m[r][col] * y for x, y in zip(m[r], m[col])]
        return [m[r][4] for r in range(4)]

    h_1, h_0, h_e, h_m = basis((1, 0, 0, 0)), basis((0, 1, 0, 0)), basis((0, 0, 1, 0)), basis((0, 0, 0, 1))
    s = len(b)
    rows = []
    for i in range(s + 1):
        bi = Fraction(b[i]) if i < s else Fraction(0)
        mi = Fraction(mid[i])
        rows.append(
            tuple(bi * h_1[j] + mi * h_m[j] + (h_0[j] if i == 0 else 0) + (h_e[j] if i == s else 0) for j in range(4))
        )
    return tuple(rows)


# torchdiffeq 0.2.5 (torchdiffeq/_impl/dopri8.py, ``C_mid``: polynomials evaluated at 1/2, here as the float64
# values it computes) interpolates this method with the quartic above through the midpoint estimate
# y0 + dt * sum C_mid_i k_i over the 13 stages and f(t1, y1); with the same data its outputs between step ends
# are torchdiffeq's to rounding. The interpolant has order 4 (the continuous order conditions up to order 4
# hold at every theta: tests/test_tableau.py). Measured on a damped rotation (omega = 2, 11 outputs on [0, 5],
# float64) at rtol 1e-5: max error at the outputs 7.4e-4 against 1.7e-2 with cubic Hermite, which it replaces,
# and 2.5e-5 for dopri8 (DOP853, order-7 dense output); the extra stage is f(t1, y1), reused as the next
# step's first, so the evaluations are those of Hermite, which needs it too.
_DOPRI8_13M_MID: tuple[Coefficient, ...] = (
    0.04103130360739393,
    0.0,
    0.0,
    0.0,
    0.0,
    0.05100562801991382,
    0.2388930677412202,
    0.3096870143996103,
    -0.2172325471755352,
    0.07833405679331928,
    -0.0018614369715579948,
    0.007072844202678841,
    0.00690847373200576,
    -0.013838404349047373,
)
_DOPRI8_13M_DENSE_ORDER = 4

_DOPRI8_13M_B: tuple[Coefficient, ...] = (
    F(14005451, 335480064), 0, 0, 0, 0,
    F(-59238493, 1068277825), F(181606767, 758867731), F(561292985, 797845732), F(-1041891430, 1371343529),
    F(760417239, 1151165299), F(118820643, 751138087), F(-528747749, 2220607170), F(1, 4),
)  # fmt: skip
_DOPRI8_13M_B_HAT: tuple[Coefficient, ...] = (
    F(13451932, 455176623), 0, 0, 0, 0,
    F(-808719846, 976000145), F(1757004468, 5645159321), F(656045339, 265891186), F(-3867574721, 1518517206),
    F(465885868, 322736535), F(53011238, 667516719), F(2, 45), 0,
)  # fmt: skip
DOPRI8_13M = ButcherTableau(
    name="dopri8_13m",
    c=(
        0,
        F(1, 18),
        F(1, 12),
        F(1, 8),
        F(5, 16),
        F(3, 8),
        F(59, 400),
        F(93, 200),
        F(5490023248, 9719169821),
        F(13, 20),
        F(1201146811, 1299019798),
        1,
        1,
    ),  # fmt: skip
    a=(
        (),
        (F(1, 18),),
        (F(1, 48), F(1, 16)),
        (F(1, 32), 0, F(3, 32)),
        (F(5, 16), 0, F(-75, 64), F(75, 64)),
        (F(3, 80), 0, 0, F(3, 16), F(3, 20)),
        (F(29443841, 614563906), 0, 0, F(77736538, 692538347), F(-28693883, 1125000000), F(23124283, 1800000000)),
        (
            F(16016141, 946692911),
            0,
            0,
            F(61564180, 158732637),
            F(22789713, 633445777),
            F(545815736, 2771057229),
            F(-180193667, 1043307555),
        ),
        (
            F(39632708, 573591083),
            0,
            0,
            F(-433636366, 683701615),
            F(-421739975, 2616292301),
            F(100302831, 723423059),
            F(790204164, 839813087),
            F(800635310, 3783071287),
        ),
        (
            F(246121993, 1340847787),
            0,
            0,
            F(-37695042795, 15268766246),
            F(-309121744, 1061227803),
            F(-12992083, 490766935),
            F(6005943493, 2108947869),
            F(393006217, 1396673457),
            F(123872331, 1001029789),
        ),
        (
            F(-1028468189, 846180014),
            0,
            0,
            F(8478235783, 508512852),
            F(1311729495, 1432422823),
            F(-10304129995, 1701304382),
            F(-48777925059, 3047939560),
            F(15336726248, 1032824649),
            F(-45442868181, 3398467696),
            F(3065993473, 597172653),
        ),
        (
            F(185892177, 718116043),
            0,
            0,
            F(-3185094517, 667107341),
            F(-477755414, 1098053517),
            F(-703635378, 230739211),
            F(5731566787, 1027545527),
            F(5232866602, 850066563),
            F(-4093664535, 808688257),
            F(3962137247, 1805957418),
            F(65686358, 487910083),
        ),
        (
            F(403863854, 491063109),
            0,
            0,
            F(-5068492393, 434740067),
            F(-411421997, 543043805),
            F(652783627, 914296604),
            F(11173962825, 925320556),
            F(-13158990841, 6184727034),
            F(3936647629, 1978049680),
            F(-160528059, 685178525),
            F(248638103, 1413531060),
            0,
        ),
    ),  # fmt: skip
    b=_DOPRI8_13M_B,
    order=8,
    b_err=_embedded(_DOPRI8_13M_B, _DOPRI8_13M_B_HAT),
    error_order=7,
    c_extra=(1,),
    a_extra=(_DOPRI8_13M_B,),
    dense_extra=_quartic_through_midpoint(_DOPRI8_13M_B, _DOPRI8_13M_MID),
    dense_order=_DOPRI8_13M_DENSE_ORDER,
    description="Prince-Dormand RK8(7)13M (J. Comput. Appl. Math. 7, 1981), 13 stages; torchdiffeq's 'dopri8', "
    "with its interpolant (a quartic through a midpoint estimate).",
)

# E. Hairer, S. P. Norsett, G. Wanner, "Solving Ordinary Differential Equations I", 2nd ed., Springer 1993,
# Sec. II.10 (DOP853), and Hairer's Fortran code DOP853 (version of 2004, http://www.unige.ch/~hairer/software.html):
# Dormand and Prince's 12-stage method of order 8 with Hairer's error estimators of orders 5 and 3 and his
# dense output of order 7. The coefficients are those of the Fortran code, printed to about 30 digits (several
# nodes involve sqrt(6)); the same values are the data of scipy's scipy/integrate/_ivp/dop853_coefficients.py,
# whose 16-stage indexing (12 stages, f(t1, y1), 3 extra stages) we follow. They are read as exact decimals
# so that differences (b - b_hat) and the dense-output conversion below are formed before rounding to float64.
#
# Stage 13 is f(t1, y1): its row of a is b, b_13 = 0 and c_13 = 1, so the method is FSAL exactly like dopri5
# (12 new evaluations per step, as in Hairer's code, which evaluates f(t1, y1) before the error test).
_DOP853_C: tuple[Coefficient, ...] = (
    0, *_dec(
        "0.526001519587677318785587544488e-01", "0.789002279381515978178381316732e-01",
        "0.118350341907227396726757197510", "0.281649658092772603273242802490",
    ),
    F(1, 3), F(1, 4), F(4, 13), F(127, 195), F(3, 5), F(6, 7), 1, 1,
)  # fmt: skip
_DOP853_A: tuple[tuple[Coefficient, ...], ...] = (
    (),
    _dec("5.26001519587677318785587544488e-2"),
    _dec("1.97250569845378994544595329183e-2", "5.91751709536136983633785987549e-2"),
    (*_dec("2.95875854768068491816892993775e-2"), 0, *_dec("8.87627564304205475450678981324e-2")),
    (
        *_dec("2.41365134159266685502369798665e-1"), 0,
        *_dec("-8.84549479328286085344864962717e-1", "9.24834003261792003115737966543e-1"),
    ),
    (
        *_dec("3.7037037037037037037037037037e-2"), 0, 0,
        *_dec("1.70828608729473871279604482173e-1", "1.25467687566822425016691814123e-1"),
    ),
    (
        *_dec("3.7109375e-2"), 0, 0,
        *_dec("1.70252211019544039314978060272e-1", "6.02165389804559606850219397283e-2", "-1.7578125e-2"),
    ),
    (
        *_dec("3.70920001185047927108779319836e-2"), 0, 0,
        *_dec(
            "1.70383925712239993810214054705e-1", "1.07262030446373284651809199168e-1",
            "-1.53194377486244017527936158236e-2", "8.27378916381402288758473766002e-3",
        ),
    ),
    (
        *_dec("6.24110958716075717114429577812e-1"), 0, 0,
        *_dec(
            "-3.36089262944694129406857109825", "-8.68219346841726006818189891453e-1",
            "2.75920996994467083049415600797e1", "2.01540675504778934086186788979e1",
            "-4.34898841810699588477366255144e1",
        ),
    ),
    (
        *_dec("4.77662536438264365890433908527e-1"), 0, 0,
        *_dec(
            "-2.48811461997166764192642586468", "-5.90290826836842996371446475743e-1",
            "2.12300514481811942347288949897e1", "1.52792336328824235832596922938e1",
            "-3.32882109689848629194453265587e1", "-2.03312017085086261358222928593e-2",
        ),
    ),
    (
        *_dec("-9.3714243008598732571704021658e-1"), 0, 0,
        *_dec(
            "5.18637242884406370830023853209", "1.09143734899672957818500254654",
            "-8.14978701074692612513997267357", "-1.85200656599969598641566180701e1",
            "2.27394870993505042818970056734e1", "2.49360555267965238987089396762",
            "-3.0467644718982195003823669022",
        ),
    ),
    (
        *_dec("2.27331014751653820792359768449"), 0, 0,
        *_dec(
            "-1.05344954667372501984066689879e1", "-2.00087205822486249909675718444",
            "-1.79589318631187989172765950534e1", "2.79488845294199600508499808837e1",
            "-2.85899827713502369474065508674", "-8.87285693353062954433549289258",
            "1.23605671757943030647266201528e1", "6.43392746015763530355970484046e-1",
        ),
    ),
)  # fmt: skip
_DOP853_B: tuple[Coefficient, ...] = (
    *_dec("5.42937341165687622380535766363e-2"), 0, 0, 0, 0,
    *_dec(
        "4.45031289275240888144113950566", "1.89151789931450038304281599044", "-5.8012039600105847814672114227",
        "3.1116436695781989440891606237e-1", "-1.52160949662516078556178806805e-1",
        "2.01365400804030348374776537501e-1", "4.47106157277725905176885569043e-2",
    ),
    0,
)  # fmt: skip
# Error estimators (Hairer's ER1..ER12 and BHH1..BHH3): err5 = dt * sum_i E5_i k_i is b minus a 5th-order
# embedded solution; err3 = dt * sum_i (b_i - bhh_i) k_i with the 3rd-order bhh on k_1, k_9, k_12.
_DOP853_E5: tuple[Coefficient, ...] = (
    *_dec("0.1312004499419488073250102996e-1"), 0, 0, 0, 0,
    *_dec(
        "-0.1225156446376204440720569753e+1", "-0.4957589496572501915214079952",
        "0.1664377182454986536961530415e+1", "-0.3503288487499736816886487290",
        "0.3341791187130174790297318841", "0.8192320648511571246570742613e-1",
        "-0.2235530786388629525884427845e-1",
    ),
    0,
)  # fmt: skip
_DOP853_BHH: tuple[Coefficient, ...] = (
    *_dec("0.244094488188976377952755905512"), 0, 0, 0, 0, 0, 0, 0,
    *_dec("0.733846688281611857341361741547"), 0, 0, *_dec("0.220588235294117647058823529412e-1"), 0,
)  # fmt: skip
# The three stages evaluated only for dense output (stages 14-16; each row runs over all stages before it,
# including stage 13, f(t1, y1)).
_DOP853_C_EXTRA: tuple[Coefficient, ...] = (F(1, 10), F(1, 5), F(7, 9))
_DOP853_A_EXTRA: tuple[tuple[Coefficient, ...], ...] = (
    (
        *_dec("5.61675022830479523392909219681e-2"), 0, 0, 0, 0, 0,
        *_dec(
            "2.53500210216624811088794765333e-1", "-2.46239037470802489917441475441e-1",
            "-1.24191423263816360469010140626e-1", "1.5329179827876569731206322685e-1",
            "8.20105229563468988491666602057e-3", "7.56789766054569976138603589584e-3", "-8.298e-3",
        ),
    ),
    (
        *_dec("3.18346481635021405060768473261e-2"), 0, 0, 0, 0,
        *_dec(
            "2.83009096723667755288322961402e-2", "5.35419883074385676223797384372e-2",
            "-5.49237485713909884646569340306e-2",
        ),
        0, 0,
        *_dec(
            "-1.08347328697249322858509316994e-4", "3.82571090835658412954920192323e-4",
            "-3.40465008687404560802977114492e-4", "1.41312443674632500278074618366e-1",
        ),
    ),
    (
        *_dec("-4.28896301583791923408573538692e-1"), 0, 0, 0, 0,
        *_dec(
            "-4.69762141536116384314449447206", "7.68342119606259904184240953878",
            "4.06898981839711007970213554331", "3.56727187455281109270669543021e-1",
        ),
        0, 0, 0,
        *_dec(
            "-1.39902416515901462129418009734e-3", "2.9475147891527723389556272149",
            "-9.15095847217987001081870187138",
        ),
    ),
)  # fmt: skip
# Hairer's d-coefficients (D4xx .. D7xx), one row per power 4..7 of the nested form, over the 16 stages.
_DOP853_D: tuple[tuple[Coefficient, ...], ...] = (
    (
        *_dec("-0.84289382761090128651353491142e+1"), 0, 0, 0, 0,
        *_dec(
            "0.56671495351937776962531783590", "-0.30689499459498916912797304727e+1",
            "0.23846676565120698287728149680e+1", "0.21170345824450282767155149946e+1",
            "-0.87139158377797299206789907490", "0.22404374302607882758541771650e+1",
            "0.63157877876946881815570249290", "-0.88990336451333310820698117400e-1",
            "0.18148505520854727256656404962e+2", "-0.91946323924783554000451984436e+1",
            "-0.44360363875948939664310572000e+1",
        ),
    ),
    (
        *_dec("0.10427508642579134603413151009e+2"), 0, 0, 0, 0,
        *_dec(
            "0.24228349177525818288430175319e+3", "0.16520045171727028198505394887e+3",
            "-0.37454675472269020279518312152e+3", "-0.22113666853125306036270938578e+2",
            "0.77334326684722638389603898808e+1", "-0.30674084731089398182061213626e+2",
            "-0.93321305264302278729567221706e+1", "0.15697238121770843886131091075e+2",
            "-0.31139403219565177677282850411e+2", "-0.93529243588444783865713862664e+1",
            "0.35816841486394083752465898540e+2",
        ),
    ),
    (
        *_dec("0.19985053242002433820987653617e+2"), 0, 0, 0, 0,
        *_dec(
            "-0.38703730874935176555105901742e+3", "-0.18917813819516756882830838328e+3",
            "0.52780815920542364900561016686e+3", "-0.11573902539959630126141871134e+2",
            "0.68812326946963000169666922661e+1", "-0.10006050966910838403183860980e+1",
            "0.77771377980534432092869265740", "-0.27782057523535084065932004339e+1",
            "-0.60196695231264120758267380846e+2", "0.84320405506677161018159903784e+2",
            "0.11992291136182789328035130030e+2",
        ),
    ),
    (
        *_dec("-0.25693933462703749003312586129e+2"), 0, 0, 0, 0,
        *_dec(
            "-0.15418974869023643374053993627e+3", "-0.23152937917604549567536039109e+3",
            "0.35763911791061412378285349910e+3", "0.93405324183624310003907691704e+2",
            "-0.37458323136451633156875139351e+2", "0.10409964950896230045147246184e+3",
            "0.29840293426660503123344363579e+2", "-0.43533456590011143754432175058e+2",
            "0.96324553959188282948394950600e+2", "-0.39177261675615439165231486172e+2",
            "-0.14972683625798562581422125276e+3",
        ),
    ),
)  # fmt: skip
DOPRI8 = ButcherTableau(
    name="dopri8",
    c=_DOP853_C,
    a=(*_DOP853_A, _DOP853_B[:12]),
    b=_DOP853_B,
    order=8,
    b_err=_DOP853_E5,
    # The controller's exponent is 1 / (min(order, error_order) + 1). The combined estimate
    # |e5|^2 / sqrt(|e5|^2 + 0.01 |e3|^2) ~ dt^12 / dt^4 = dt^8 once e3 dominates, i.e. it behaves like the
    # estimate of an order-7 embedded solution, so error_order = 7 gives Hairer's exponent 1/8. (b - b_err on
    # its own is of order 5, and b - b_err_aux of order 3; tests/test_tableau.py checks both.)
    error_order=7,
    b_err_aux=_embedded(_DOP853_B, _DOP853_BHH),
    c_extra=_DOP853_C_EXTRA,
    a_extra=_DOP853_A_EXTRA,
    dense_extra=_nested_dense(_DOP853_B, _DOP853_D, fsal_stage=12, stages=16),
    dense_order=7,
    description=(
        "Dormand-Prince 8(5,3) as Hairer's DOP853 (Hairer-Norsett-Wanner I, Sec. II.10), FSAL, "
        "with its order-7 dense output (3 extra stages)."
    ),
)

del F

EXPLICIT_METHODS: dict[str, ButcherTableau] = {
    t.name: t
    for t in (
        EULER, MIDPOINT, HEUN2, HEUN3, RK4, RK4_38,
        ADAPTIVE_HEUN, FEHLBERG2, BOSH3, DOPRI5, TSIT5, DOPRI8, DOPRI8_13M,
    )
}  # fmt: skip
"""The built-in explicit Runge-Kutta methods by name: fixed-step methods first, then embedded pairs in increasing
order. :data:`neuralode.METHODS` (:mod:`~neuralode.solvers.methods.registry`) adds the implicit, Adams, ``auto`` and
``scipy_solver`` methods to these."""
