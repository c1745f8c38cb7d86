"""Rosenbrock (linearly implicit) methods as data: the coefficient set and the named methods.

A Rosenbrock method with ``s`` stages advances ``dy/dt = f(t, y)`` from ``(t0, y0)`` by ``h`` with one
Jacobian ``J = df/dy(t0, y0)`` and ``s`` linear solves with the one matrix ``I - h gamma J``. In the form
Hairer & Wanner state the order conditions in (Solving ODEs II, IV.7, eq. (7.4)), with slopes ``k_i``::

    (I - h gamma J) k_i = f(t0 + alpha_i h, y0 + h sum_{j<i} alpha_ij k_j) + h J sum_{j<i} gamma_ij k_j
                          + h gamma_i f_t                                 (f_t = df/dt(t0, y0))
    y1 = y0 + h sum_i b_i k_i,   y1_hat = y0 + h sum_i b_hat_i k_i,
    alpha_i = sum_{j<i} alpha_ij,   gamma_i = gamma + sum_{j<i} gamma_ij.

The steppers use the equivalent transformed form (Hairer & Wanner II, IV.7, eq. (7.25)), which needs no
product of ``J`` with a vector: with ``Gamma = (gamma_ij)`` (lower triangular, ``gamma`` on the diagonal)
and ``u = h Gamma k``::

    (I / (h gamma) - J) u_i = f(t0 + c_i h, y0 + sum_{j<i} a_ij u_j) + sum_{j<i} (C_ij / h) u_j + h d_i f_t
    y1 = y0 + sum_i m_i u_i,   err = sum_i m_err_i u_i,
    A = (alpha_ij) Gamma^-1,  C = diag(1 / gamma) - Gamma^-1,  m = b Gamma^-1,  m_err = (b - b_hat) Gamma^-1,
    c_i = alpha_i,  d_i = gamma_i.

:class:`RosenbrockTableau` stores the transformed coefficients (the form in which Rodas5P is published),
checks them when it is built, and gives back the classical ``(alpha, Gamma, b, b_hat)`` through
:meth:`RosenbrockTableau.standard`, in which ``tests/test_stiff.py`` checks the order conditions. The dense
output of both methods has the form::

    y(t0 + theta h) = (1 - theta) y0 + theta y1 + theta (1 - theta) sum_r theta^r sum_i dense[r][i] u_i

Methods (:data:`ROSENBROCK_METHODS`):

* ``rodas5p``: Steinebach's Rodas5P, 8 stages, order 5 with an embedded order-4 solution and an order-4
  dense output; stiffly accurate (``y1`` is the last stage's argument plus ``u_8``, so ``R(inf) = 0``),
  the default stiff method. Coefficients: G. Steinebach, "Construction of Rosenbrock-Wanner method Rodas5P
  and numerical benchmarks within the Julia Differential Equations package", BIT Numerical Mathematics 63,
  27 (2023), in the transformed form above (as for RODAS5 of Di Marzo 1993 and Hairer & Wanner's RODAS).
* ``rosenbrock23``: Shampine & Reichelt's ode23s (MATLAB), 3 stages, a second-order W-method-like pair
  with a third-order error estimate and a second-order dense output, L-stable; FSAL (the third stage is
  ``f(t0 + h, y1)``). L. F. Shampine, M. W. Reichelt, "The MATLAB ODE Suite", SIAM J. Sci. Comput. 18(1),
  1-22 (1997), Section 3.1, with ``d = 1 / (2 + sqrt 2)`` and ``e32 = 6 + sqrt 2``. Written there as
  ``W k1 = F0 + h d T``, ``W k2 = F1 - k1 + W k1``, ``W k3 = F2 - e32 (k2 - F1) - 2 (k1 - F0) + h d T``;
  substituting ``k1 - F0 = h d (J k1 + T)`` and ``k2 - F1 = h d J (k2 - k1)`` gives the classical form
  ``alpha_21 = 1/2, alpha_32 = 1, gamma_21 = -d, gamma_31 = d (e32 - 2), gamma_32 = -e32 d``,
  ``b = (0, 1, 0)``, ``b_hat = (1, 4, 1) / 6`` (the order-3 solution whose difference from ``y1`` is
  ode23s's ``err = h (k1 - 2 k2 + k3) / 6``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from numbers import Real

__all__ = ["RosenbrockTableau", "ROSENBROCK_METHODS", "RODAS5P", "ROSENBROCK23"]

# The published Rodas5P coefficients have 16-17 significant digits: the consistency checks below hold to
# rounding only, and 1e-9 (relative to the size of the coefficients, some of which exceed 100) still rejects
# any mistyped digit that matters.
_TOL = 1e-9


def _floats(name: str, field: str, values: Iterable[object]) -> tuple[float, ...]:
    items = tuple(values)
    reals: list[Real] = []
    for v in items:
        if not isinstance(v, Real):
            raise TypeError(f"RosenbrockTableau {name!r}: {field} must contain real numbers; got {v!r}")
        reals.append(v)
    out = tuple(float(v) for v in reals)
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"RosenbrockTableau {name!r}: {field} must be finite; got {out}")
    return out


def _lower(name: str, field: str, rows: Iterable[Iterable[object]], s: int) -> tuple[tuple[float, ...], ...]:
    rows = tuple(rows)
    if len(rows) != s:
        raise ValueError(f"RosenbrockTableau {name!r}: {field} must have {s} rows (one per stage); got {len(rows)}")
    out = []
    for i, given in enumerate(rows):
        row = _floats(name, f"{field}[{i}]", given)
        if len(row) != i:
            raise ValueError(
                f"RosenbrockTableau {name!r}: {field}[{i}] must have {i} entries (strictly lower triangular); "
                f"got {len(row)}"
            )
        out.append(row)
    return tuple(out)


def _gamma_inverse(gamma: float, C: tuple[tuple[float, ...], ...]) -> list[list[float]]:
    """``Gamma^-1 = diag(1/gamma) - C`` as a full lower-triangular matrix."""
    s = len(C)
    g = [[0.0] * s for _ in range(s)]
    for i in range(s):
        g[i][i] = 1.0 / gamma
        for j, cij in enumerate(C[i]):
            g[i][j] = -cij
    return g


def _invert_lower(m: list[list[float]]) -> list[list[float]]:
    """Inverse of a lower-triangular matrix by forward substitution (tiny matrices; pure Python)."""
    s = len(m)
    inv = [[0.0] * s for _ in range(s)]
    for col in range(s):
        for i in range(col, s):
            acc = (1.0 if i == col else 0.0) - sum(m[i][k] * inv[k][col] for k in range(col, i))
            inv[i][col] = acc / m[i][i]
    return inv


def _row_times(v: Sequence[float], m: list[list[float]]) -> list[float]:
    return [sum(v[i] * m[i][j] for i in range(len(v))) for j in range(len(m[0]))]


@dataclass(frozen=True)
class RosenbrockTableau:
    """The coefficients of a Rosenbrock method in transformed form, validated on creation.

    Attributes:
        name: the method's name, as used by ``method=`` and in error messages.
        gamma: the diagonal coefficient; the iteration matrix is ``I / (h gamma) - J``.
        a: ``s`` rows, row ``i`` with ``i`` entries: stage ``i`` is evaluated at ``y0 + sum_j a_ij u_j``.
        C: ``s`` rows like ``a``: stage ``i``'s right-hand side adds ``sum_j (C_ij / h) u_j``.
        c: ``(s,)`` time nodes, ``c_i = sum_j alpha_ij`` of the classical form.
        d: ``(s,)`` coefficients of ``h f_t``, ``d_i = gamma_i = sum_j gamma_ij`` (``d_0 = gamma``).
        m: ``(s,)`` weights of the propagated solution ``y1 = y0 + sum_i m_i u_i``.
        m_err: ``(s,)`` weights of the error estimate ``y1 - y1_hat = sum_i m_err_i u_i``.
        order: order of ``y1``.
        error_order: order of ``y1_hat``.
        dense: rows ``r = 0, 1, ...`` of ``(s,)`` coefficients of the dense output (see the module
            docstring); ``()`` for none.
        dense_order: order of the dense output.
        description: one line naming the method and its source.

    Derived (properties): ``stages``, ``fsal`` (the last stage is ``f(t0 + h, y1)``, reusable as the next
    step's first), ``adaptive`` (always true), ``implicit`` (always true) and :meth:`standard`.

    Raises:
        TypeError, ValueError: for coefficients of the wrong type, shape or consistency (``c`` and ``d``
            must be the row sums of the classical ``alpha`` and ``Gamma``; ``b`` and ``b_hat`` must sum to 1).
    """

    name: str
    gamma: float
    a: tuple[tuple[float, ...], ...]
    C: tuple[tuple[float, ...], ...]
    c: tuple[float, ...]
    d: tuple[float, ...]
    m: tuple[float, ...]
    m_err: tuple[float, ...]
    order: int
    error_order: int
    dense: tuple[tuple[float, ...], ...] = ()
    dense_order: int = 0
    description: str = ""

    def __post_init__(self) -> None:
        name = self.name
        if not isinstance(name, str) or not name:
            raise TypeError(f"RosenbrockTableau: name must be a non-empty string; got {name!r}")
        set_ = object.__setattr__
        if not isinstance(self.gamma, Real) or not (math.isfinite(self.gamma) and self.gamma > 0):
            raise ValueError(f"RosenbrockTableau {name!r}: gamma must be a positive finite number; got {self.gamma!r}")
        set_(self, "gamma", float(self.gamma))
        s = len(tuple(self.c))
        set_(self, "a", _lower(name, "a", self.a, s))
        set_(self, "C", _lower(name, "C", self.C, s))
        for field in ("c", "d", "m", "m_err"):
            values = _floats(name, field, getattr(self, field))
            if len(values) != s:
                raise ValueError(f"RosenbrockTableau {name!r}: {field} must have {s} entries; got {len(values)}")
            set_(self, field, values)
        set_(self, "dense", tuple(_floats(name, f"dense[{r}]", row) for r, row in enumerate(self.dense)))
        for r, row in enumerate(self.dense):
            if len(row) != s:
                raise ValueError(f"RosenbrockTableau {name!r}: dense[{r}] must have {s} entries; got {len(row)}")
        for field in ("order", "error_order", "dense_order"):
            v = getattr(self, field)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise TypeError(f"RosenbrockTableau {name!r}: {field} must be a non-negative integer; got {v!r}")
        if self.c[0] != 0.0:
            raise ValueError(f"RosenbrockTableau {name!r}: c[0] must be 0; got {self.c[0]!r}")
        alpha, Gamma, b, b_hat = self.standard()
        for i in range(s):
            scale = 1.0 + max([abs(x) for x in self.a[i]] + [abs(x) for x in self.C[i]], default=0.0)
            if abs(sum(alpha[i]) - self.c[i]) > _TOL * scale:
                raise ValueError(
                    f"RosenbrockTableau {name!r}: c[{i}] = {self.c[i]!r} is not the row sum {sum(alpha[i])!r} of "
                    "the classical alpha = A Gamma"
                )
            if abs(sum(Gamma[i]) - self.d[i]) > _TOL * scale:
                raise ValueError(
                    f"RosenbrockTableau {name!r}: d[{i}] = {self.d[i]!r} is not the row sum {sum(Gamma[i])!r} of "
                    "the classical Gamma = (diag(1/gamma) - C)^-1"
                )
        for label, w in (("b = m Gamma", b), ("b_hat = (m - m_err) Gamma", b_hat)):
            if abs(sum(w) - 1.0) > _TOL * (1.0 + max(abs(x) for x in w)):
                raise ValueError(f"RosenbrockTableau {name!r}: the weights {label} must sum to 1; got {sum(w)!r}")

    @property
    def stages(self) -> int:
        return len(self.c)

    @property
    def adaptive(self) -> bool:
        return True

    @property
    def implicit(self) -> bool:
        return True

    @property
    def options_type(self) -> type:
        """The options these methods take: :class:`~neuralode.solvers.methods.implicit_options.ImplicitOptions`."""
        from .implicit_options import ImplicitOptions

        return ImplicitOptions

    @property
    def fsal(self) -> bool:
        """Whether the last stage is evaluated at ``(t0 + h, y1)`` (its ``f`` is the next step's first)."""
        s = self.stages
        return self.c[-1] == 1.0 and self.m[-1] == 0.0 and self.a[-1] == self.m[: s - 1]

    def standard(self) -> tuple[list[list[float]], list[list[float]], list[float], list[float]]:
        """The classical coefficients ``(alpha, Gamma, b, b_hat)`` (full ``s x s`` lists; ``alpha`` strictly
        lower, ``Gamma`` lower with ``gamma`` on the diagonal), in which the order conditions are stated."""
        s = self.stages
        Gamma = _invert_lower(_gamma_inverse(self.gamma, self.C))
        a_full = [[(self.a[i][j] if j < i else 0.0) for j in range(s)] for i in range(s)]
        alpha = [[sum(a_full[i][k] * Gamma[k][j] for k in range(s)) for j in range(s)] for i in range(s)]
        b = _row_times(self.m, Gamma)
        b_hat = _row_times([mi - ei for mi, ei in zip(self.m, self.m_err)], Gamma)
        return alpha, Gamma, b, b_hat

    @classmethod
    def from_standard(
        cls,
        name: str,
        gamma: float,
        alpha,
        gammas,
        b,
        b_err,
        order: int,
        error_order: int,
        dense_k=(),
        dense_order: int = 0,
        description: str = "",
    ) -> RosenbrockTableau:
        """Build the transformed coefficients from the classical ones (Hairer & Wanner II, (7.25)).

        ``alpha`` and ``gammas`` are strictly lower rows (row ``i`` with ``i`` entries); ``b_err = b - b_hat``;
        ``dense_k`` are dense-output rows acting on ``h k`` (converted to rows acting on ``u``).
        """
        s = len(b)
        G = [[0.0] * s for _ in range(s)]
        for i in range(s):
            G[i][i] = float(gamma)
            for j, g in enumerate(gammas[i]):
                G[i][j] = float(g)
        Ginv = _invert_lower(G)
        al = [[(float(alpha[i][j]) if j < i else 0.0) for j in range(s)] for i in range(s)]
        A = [[sum(al[i][k] * Ginv[k][j] for k in range(s)) for j in range(s)] for i in range(s)]
        return cls(
            name=name,
            gamma=float(gamma),
            a=tuple(tuple(A[i][:i]) for i in range(s)),
            C=tuple(tuple(-Ginv[i][j] for j in range(i)) for i in range(s)),
            c=tuple(sum(al[i]) for i in range(s)),
            d=tuple(sum(G[i]) for i in range(s)),
            m=tuple(_row_times([float(x) for x in b], Ginv)),
            m_err=tuple(_row_times([float(x) for x in b_err], Ginv)),
            order=order,
            error_order=error_order,
            dense=tuple(tuple(_row_times([float(x) for x in row], Ginv)) for row in dense_k),
            dense_order=dense_order,
            description=description,
        )


# --------------------------------------------------------------------------------------------------------------
# Rodas5P (Steinebach 2023), transformed form. Stages 7 and 8 reuse the argument of the stage before plus its
# u (a_7j = a_6j, a_76 = 1; a_8j = a_7j, a_87 = 1); y1 = stage 8's argument + u_8, the embedded solution is
# stage 8's argument, so m_err = (0, ..., 0, 1).

_R5P_A6 = (-7.502846399306121, 2.561846144803919, -11.627539656261098, -0.18268767659942256, 0.030198172008377946)
_R5P_A = (
    (),
    (3.0,),
    (2.849394379747939, 0.45842242204463923),
    (-6.954028509809101, 2.489845061869568, -10.358996098473584),
    (2.8029986275628964, 0.5072464736228206, -0.3988312541770524, -0.04721187230404641),
    _R5P_A6,
    (*_R5P_A6, 1.0),
    (*_R5P_A6, 1.0, 1.0),
)
_R5P_C = (
    (),
    (-14.155112264123755,),
    (-17.97296035885952, -2.859693295451294),
    (147.12150275711716, -1.41221402718213, 71.68940251302358),
    (165.43517024871676, -0.4592823456491126, 42.90938336958603, -5.961986721573306),
    (24.854864614690072, -3.0009227002832186, 47.4931110020768, 5.5814197821558125, -0.6610691825249471),
    (30.91273214028599, -3.1208243349937974, 77.79954646070892, 34.28646028294783, -19.097331116725623,
     -28.087943162872662),
    (37.80277123390563, -3.2571969029072276, 112.26918849496327, 66.9347231244047, -40.06618937091002,
     -54.66780262877968, -9.48861652309627),
)  # fmt: skip
_R5P_DENSE = (
    (25.948786856663858, -2.5579724845846235, 10.433815404888879, -2.3679251022685204, 0.524948541321073,
     1.1241088310450404, 0.4272876194431874, -0.17202221070155493),
    (-9.91568850695171, -0.9689944594115154, 3.0438037242978453, -24.495224566215796, 20.176138334709044,
     15.98066361424651, -6.789040303419874, -6.710236069923372),
    (11.419903575922262, 2.8879645146136994, 72.92137995996029, 80.12511834622643, -52.072871366152654,
     -59.78993625266729, -0.15582684282751913, 4.883087185713722),
)  # fmt: skip

RODAS5P = RosenbrockTableau(
    name="rodas5p",
    gamma=0.21193756319429014,
    a=_R5P_A,
    C=_R5P_C,
    c=(0.0, 0.6358126895828704, 0.4095798393397535, 0.9769306725060716, 0.4288403609558664, 1.0, 1.0, 1.0),
    d=(0.21193756319429014, -0.42387512638858027, -0.3384627126235924, 1.8046452872882734, 2.325825639765069,
       0.0, 0.0, 0.0),
    m=(*_R5P_A6, 1.0, 1.0, 1.0),
    m_err=(0.0,) * 7 + (1.0,),
    order=5,
    error_order=4,
    dense=_R5P_DENSE,
    dense_order=4,
    description="Rodas5P (Steinebach 2023): 8-stage stiffly accurate Rosenbrock method of order 5(4), dense order 4.",
)  # fmt: skip

_D = 1.0 / (2.0 + math.sqrt(2.0))
_E32 = 6.0 + math.sqrt(2.0)

ROSENBROCK23 = RosenbrockTableau.from_standard(
    "rosenbrock23",
    gamma=_D,
    alpha=((), (0.5,), (0.0, 1.0)),
    gammas=((), (-_D,), (_D * (_E32 - 2.0), -_E32 * _D)),
    b=(0.0, 1.0, 0.0),
    # The third-order solution is y0 + h (k1 + 4 k2 + k3) / 6, so b - b_hat = -(1, -2, 1) / 6.
    b_err=(-1.0 / 6.0, 1.0 / 3.0, -1.0 / 6.0),
    order=2,
    error_order=3,
    # ode23s's interpolant y0 + h [theta (1 - theta) k1 + theta (theta - 2d) k2] / (1 - 2d)
    # = (1 - theta) y0 + theta y1 + theta (1 - theta) h (k1 - k2) / (1 - 2d), since y1 = y0 + h k2.
    dense_k=((1.0 / (1.0 - 2.0 * _D), -1.0 / (1.0 - 2.0 * _D), 0.0),),
    dense_order=2,
    description="Shampine & Reichelt's ode23s (1997): 3-stage L-stable Rosenbrock pair of order 2(3), FSAL.",
)

ROSENBROCK_METHODS: dict[str, RosenbrockTableau] = {t.name: t for t in (ROSENBROCK23, RODAS5P)}
"""The built-in Rosenbrock methods by name."""
