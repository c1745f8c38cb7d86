"""The 25 non-stiff DETEST problems, as data for accuracy and cost benchmarks.

Classes A-E of Hull, Enright, Fellen & Sedgwick, "Comparing numerical methods for ordinary
differential equations", SIAM J. Numer. Anal. 9(4):603-637, 1972, each integrated on t in [0, 20]:

    A1-A5  single equations                   B1-B5  small nonlinear systems
    C1-C5  moderate systems (10-51 equations)  D1-D5  two-body orbits, eccentricity 0.1 ... 0.9
    E1-E5  second-order equations written as first-order systems

The same problems, with reference values at t = 20, are Enright & Pryce's Toronto non-stiff test set
(ACM TOMS 13(1), 1987, Algorithm 648); ``tests/test_detest.py`` checks our reference solutions
against those values.

Each right-hand side is written once against a tiny array namespace (``_TORCH`` or ``_NUMPY``), so the
torch version that solvers integrate and the numpy version that scipy integrates for the reference are
the same expression and cannot drift apart. The functions index with ``y[..., i]``, so a batch of
states of shape ``(..., n)`` works too, although the benchmarks use 1-D states.

Differences from torchdiffeq's ``tests/DETEST/detest.py`` (which has the same layout), on purpose:
C5 there has two typos in ``y0`` (``165699966404`` for ``1.65699966404``; ``15.388265967`` for
``15.3882659679``), adds the indirect term ``+ y_k / r_k^3`` instead of subtracting it and leaves the
planet-planet sum outside ``k2``; its E4 uses ``0.32`` where the paper has ``0.032``. Here all follow
the paper (checked against the Toronto test set's end values).

Usage::

    from benchmarks.detest import PROBLEMS, reference_solution
    p = PROBLEMS["D5"]
    y20 = reference_solution(p, np.array([0.0, p.t_end]))[-1]
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

__all__ = ["DetestProblem", "PROBLEMS", "detest_names", "reference_solution"]

# The operations a right-hand side may use beyond arithmetic and indexing. Stacking and
# concatenation are along the last axis; `const` makes an array of constants on y's dtype/device.
_TORCH = SimpleNamespace(
    stack=lambda xs: torch.stack(xs, -1),
    concat=lambda xs: torch.cat(xs, -1),
    zeros_like=torch.zeros_like,
    const=lambda values, like: torch.as_tensor(values, dtype=like.dtype, device=like.device),
    sqrt=torch.sqrt,
    sin=torch.sin,
    cos=torch.cos,
)
_NUMPY = SimpleNamespace(
    stack=lambda xs: np.stack(xs, -1),
    concat=lambda xs: np.concatenate(xs, -1),
    zeros_like=np.zeros_like,
    const=lambda values, like: np.asarray(values, dtype=like.dtype),
    sqrt=np.sqrt,
    sin=np.sin,
    cos=np.cos,
)

RHSFunction = Callable[[Any, Any, SimpleNamespace], Any]


@dataclass(frozen=True)
class DetestProblem:
    """One DETEST initial value problem ``y' = f(t, y)``, ``y(0) = y0``, on ``[0, t_end]``.

    Attributes:
        name: "A1" ... "E5".
        description: the equations in words/symbols, as in the paper.
        y0: initial state, length n.
        t_end: end of the interval (20.0 for all 25 problems).
        func: ``func(t, y, xp)`` with ``xp`` one of the array namespaces; use `rhs` / `rhs_numpy`.
    """

    name: str
    description: str
    y0: tuple[float, ...]
    t_end: float
    func: RHSFunction = field(repr=False, compare=False)

    @property
    def dim(self) -> int:
        """Number of equations n."""
        return len(self.y0)

    def rhs(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``f(t, y)`` in torch: ``y`` of shape ``(n,)`` (or ``(..., n)``), ``t`` a 0-dim tensor or float."""
        t = torch.as_tensor(t, dtype=y.dtype, device=y.device)
        return self.func(t, y, _TORCH)

    def rhs_numpy(self, t: float, y: np.ndarray) -> np.ndarray:
        """``f(t, y)`` in numpy, with the signature scipy's ``solve_ivp`` expects."""
        return self.func(float(t), np.asarray(y, dtype=np.float64), _NUMPY)

    def y0_tensor(self, dtype: torch.dtype = torch.float64, device: Any = None) -> torch.Tensor:
        """The initial state as a tensor of shape ``(n,)``."""
        return torch.tensor(self.y0, dtype=dtype, device=device)


# --------------------------------------------------------------------------- class A: single equations
def _a1(t, y, xp):
    return -y


def _a2(t, y, xp):
    return -0.5 * y**3


def _a3(t, y, xp):
    return y * xp.cos(t)


def _a4(t, y, xp):
    return 0.25 * y * (1.0 - y / 20.0)


def _a5(t, y, xp):
    return (y - t) / (y + t)


# --------------------------------------------------------------------------- class B: small systems
def _b1(t, y, xp):
    # Predator-prey (Volterra).
    y1, y2 = y[..., 0], y[..., 1]
    return xp.stack([2.0 * (y1 - y1 * y2), -(y2 - y1 * y2)])


def _b2(t, y, xp):
    # Linear chain; eigenvalues 0, -1, -3.
    y1, y2, y3 = y[..., 0], y[..., 1], y[..., 2]
    return xp.stack([-y1 + y2, y1 - 2.0 * y2 + y3, y2 - y3])


def _b3(t, y, xp):
    # Nonlinear chemical reaction.
    y1, y2 = y[..., 0], y[..., 1]
    return xp.stack([-y1, y1 - y2 * y2, y2 * y2])


def _b4(t, y, xp):
    # Solution approaches the limit cycle y1^2 + y2^2 = 1 of a spiral.
    y1, y2, y3 = y[..., 0], y[..., 1], y[..., 2]
    r = xp.sqrt(y1 * y1 + y2 * y2)
    return xp.stack([-y2 - y1 * y3 / r, y1 - y2 * y3 / r, y1 / r])


def _b5(t, y, xp):
    # Euler's equations of a rigid body without external forces (Krogh); solution sn, cn, dn(t, 0.51).
    y1, y2, y3 = y[..., 0], y[..., 1], y[..., 2]
    return xp.stack([y2 * y3, -y1 * y3, -0.51 * y1 * y2])


# --------------------------------------------------------------------------- class C: moderate systems
def _c_chain(y, rates, xp):
    """Decay chain: y1' = -k1 y1, yi' = k(i-1) y(i-1) - ki yi, yn' = k(n-1) y(n-1); rates = k1..k(n-1)."""
    zero = xp.zeros_like(y[..., :1])
    flux = xp.concat([zero, xp.const(rates, y) * y[..., :-1], zero])  # (..., n + 1): 0, k1 y1, ..., 0
    return flux[..., :-1] - flux[..., 1:]


def _c1(t, y, xp):
    # Radioactive decay chain, all rates 1; the last species is stable.
    return _c_chain(y, [1.0] * 9, xp)


def _c2(t, y, xp):
    # Same chain with rates 1, 2, ..., 9.
    return _c_chain(y, [float(i) for i in range(1, 10)], xp)


def _c_tridiagonal(t, y, xp):
    # yi' = y(i-1) - 2 yi + y(i+1), with y0 = y(n+1) = 0 (C3: n = 10, C4: n = 51).
    zero = xp.zeros_like(y[..., :1])
    padded = xp.concat([zero, y, zero])  # (..., n + 2)
    return padded[..., :-2] - 2.0 * padded[..., 1:-1] + padded[..., 2:]


# C5: the Sun (with the inner planets) and Jupiter, Saturn, Uranus, Neptune, Pluto; heliocentric
# coordinates in AU, time in units of 10 days (hence k2 = 100 x Gauss's k^2 = 2.959...).
_C5_K2 = 2.95912208286
_C5_M0 = 1.00000597682
_C5_M = (0.000954786104043, 0.000285583733151, 0.0000437273164546, 0.0000517759138449, 1.0 / 360000.0)


def _c5(t, y, xp):
    # y[3i + j] is coordinate j of body i, y[15 + 3i + j] its velocity.
    # y_ij'' = k2 (-(m0 + mi) y_ij / r_i^3 + sum_{k != i} m_k ((y_kj - y_ij) / d_ik^3 - y_kj / r_k^3)).
    q = [[y[..., 3 * i + j] for j in range(3)] for i in range(5)]
    r3 = []
    for i in range(5):
        r2 = q[i][0] * q[i][0] + q[i][1] * q[i][1] + q[i][2] * q[i][2]
        r3.append(r2 * xp.sqrt(r2))
    d3 = {}
    for i in range(5):
        for k in range(i + 1, 5):
            d2 = sum((q[k][j] - q[i][j]) * (q[k][j] - q[i][j]) for j in range(3))
            d3[i, k] = d3[k, i] = d2 * xp.sqrt(d2)
    acc = []
    for i in range(5):
        for j in range(3):
            a = -(_C5_M0 + _C5_M[i]) * q[i][j] / r3[i]
            for k in range(5):
                if k != i:
                    a = a + _C5_M[k] * ((q[k][j] - q[i][j]) / d3[i, k] - q[k][j] / r3[k])
            acc.append(_C5_K2 * a)
    return xp.concat([y[..., 15:], xp.stack(acc)])


_C5_Y0 = (
    # positions of bodies 1..5
    3.42947415189, 3.35386959711, 1.35494901715,
    6.64145542550, 5.97156957878, 2.18231499728,
    11.2630437207, 14.6952576794, 6.27960525067,
    -30.1552268759, 1.65699966404, 1.43785752721,
    -21.1238353380, 28.4465098142, 15.3882659679,
    # velocities of bodies 1..5
    -0.557160570446, 0.505696783289, 0.230578543901,
    -0.415570776342, 0.365682722812, 0.169143213293,
    -0.325325669158, 0.189706021964, 0.0877265322780,
    -0.0240476254170, -0.287659532608, -0.117219543175,
    -0.176860753121, -0.216393453025, -0.0148647893090,
)  # fmt: skip


# --------------------------------------------------------------------------- class D: orbit equations
def _d_orbit(t, y, xp):
    # Two-body problem in the plane: y1'' = -y1 / r^3, y2'' = -y2 / r^3.
    y1, y2 = y[..., 0], y[..., 1]
    r2 = y1 * y1 + y2 * y2
    r3 = r2 * xp.sqrt(r2)
    return xp.stack([y[..., 2], y[..., 3], -y1 / r3, -y2 / r3])


def _orbit_y0(e: float) -> tuple[float, ...]:
    # Start at perihelion of an orbit with semi-major axis 1 and eccentricity e (period 2 pi).
    return (1.0 - e, 0.0, 0.0, math.sqrt((1.0 + e) / (1.0 - e)))


# --------------------------------------------------------------------------- class E: higher order
def _e1(t, y, xp):
    # Bessel's equation of order 1/2 in x = t + 1: y'' + y'/x + (1 - 1/(4 x^2)) y = 0;
    # y = J_{1/2}(t + 1) = sqrt(2 / (pi x)) sin x.
    x = t + 1.0
    return xp.stack([y[..., 1], -(y[..., 1] / x + (1.0 - 0.25 / (x * x)) * y[..., 0])])


def _e2(t, y, xp):
    # Van der Pol, mu = 1: y'' = (1 - y^2) y' - y.
    return xp.stack([y[..., 1], (1.0 - y[..., 0] ** 2) * y[..., 1] - y[..., 0]])


def _e3(t, y, xp):
    # Duffing, forced: y'' = y^3 / 6 - y + 2 sin(2.78535 t).
    return xp.stack([y[..., 1], y[..., 0] ** 3 / 6.0 - y[..., 0] + 2.0 * xp.sin(2.78535 * t)])


def _e4(t, y, xp):
    # Falling body with quadratic drag: y'' = 0.032 - 0.4 y'^2.
    return xp.stack([y[..., 1], 0.032 - 0.4 * y[..., 1] ** 2])


def _e5(t, y, xp):
    # Pursuit curve: y'' = sqrt(1 + y'^2) / (25 - t).
    return xp.stack([y[..., 1], xp.sqrt(1.0 + y[..., 1] ** 2) / (25.0 - t)])


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_T_END = 20.0

_PROBLEM_LIST = [
    DetestProblem("A1", "y' = -y (negative exponential)", (1.0,), _T_END, _a1),
    DetestProblem("A2", "y' = -y^3 / 2 (special case of the Riccati equation)", (1.0,), _T_END, _a2),
    DetestProblem("A3", "y' = y cos t (oscillatory)", (1.0,), _T_END, _a3),
    DetestProblem("A4", "y' = y/4 (1 - y/20) (logistic curve)", (1.0,), _T_END, _a4),
    DetestProblem("A5", "y' = (y - t) / (y + t) (spiral curve)", (4.0,), _T_END, _a5),
    DetestProblem("B1", "y1' = 2 (y1 - y1 y2), y2' = -(y2 - y1 y2) (growth of two conflicting populations)",
                  (1.0, 3.0), _T_END, _b1),
    DetestProblem("B2", "y1' = -y1 + y2, y2' = y1 - 2 y2 + y3, y3' = y2 - y3 (linear chemical reaction)",
                  (2.0, 0.0, 1.0), _T_END, _b2),
    DetestProblem("B3", "y1' = -y1, y2' = y1 - y2^2, y3' = y2^2 (nonlinear chemical reaction)",
                  (1.0, 0.0, 0.0), _T_END, _b3),
    DetestProblem("B4", "y1' = -y2 - y1 y3 / r, y2' = y1 - y2 y3 / r, y3' = y1 / r, r = sqrt(y1^2 + y2^2)",
                  (3.0, 0.0, 0.0), _T_END, _b4),
    DetestProblem("B5", "y1' = y2 y3, y2' = -y1 y3, y3' = -0.51 y1 y2 (rigid body without forces, Krogh)",
                  (0.0, 1.0, 1.0), _T_END, _b5),
    DetestProblem("C1", "radioactive decay chain, 10 equations, all rates 1",
                  (1.0,) + (0.0,) * 9, _T_END, _c1),
    DetestProblem("C2", "radioactive decay chain, 10 equations, rates 1 ... 9",
                  (1.0,) + (0.0,) * 9, _T_END, _c2),
    DetestProblem("C3", "yi' = y(i-1) - 2 yi + y(i+1), 10 equations (tridiagonal)",
                  (1.0,) + (0.0,) * 9, _T_END, _c_tridiagonal),
    DetestProblem("C4", "yi' = y(i-1) - 2 yi + y(i+1), 51 equations (tridiagonal)",
                  (1.0,) + (0.0,) * 50, _T_END, _c_tridiagonal),
    DetestProblem("C5", "five outer planets about the Sun, 30 equations (second order in 3-D)",
                  _C5_Y0, _T_END, _c5),
    DetestProblem("D1", "two-body orbit, eccentricity 0.1", _orbit_y0(0.1), _T_END, _d_orbit),
    DetestProblem("D2", "two-body orbit, eccentricity 0.3", _orbit_y0(0.3), _T_END, _d_orbit),
    DetestProblem("D3", "two-body orbit, eccentricity 0.5", _orbit_y0(0.5), _T_END, _d_orbit),
    DetestProblem("D4", "two-body orbit, eccentricity 0.7", _orbit_y0(0.7), _T_END, _d_orbit),
    DetestProblem("D5", "two-body orbit, eccentricity 0.9", _orbit_y0(0.9), _T_END, _d_orbit),
    DetestProblem("E1", "y'' + y'/(t+1) + (1 - 0.25/(t+1)^2) y = 0 (Bessel, order 1/2)",
                  (_SQRT_2_OVER_PI * math.sin(1.0), _SQRT_2_OVER_PI * (math.cos(1.0) - 0.5 * math.sin(1.0))),
                  _T_END, _e1),
    DetestProblem("E2", "y'' = (1 - y^2) y' - y (van der Pol)", (2.0, 0.0), _T_END, _e2),
    DetestProblem("E3", "y'' = y^3/6 - y + 2 sin(2.78535 t) (Duffing)", (0.0, 0.0), _T_END, _e3),
    DetestProblem("E4", "y'' = 0.032 - 0.4 y'^2 (falling body with drag)", (30.0, 0.0), _T_END, _e4),
    DetestProblem("E5", "y'' = sqrt(1 + y'^2) / (25 - t) (pursuit curve)", (0.0, 0.0), _T_END, _e5),
]  # fmt: skip

PROBLEMS: dict[str, DetestProblem] = {p.name: p for p in _PROBLEM_LIST}


def detest_names() -> list[str]:
    """The 25 problem names in class order, "A1" ... "E5"."""
    return list(PROBLEMS)


# DOP853 at rtol 1e-13 (near scipy's floor of 100 machine epsilons) agrees with the Toronto test
# set's published end values to < 5e-12 absolute (tests/test_detest.py). The atol far below rtol keeps
# the relative accuracy of tiny components (A1, B3 and C2 end near 2e-9) too, at little extra cost.
_REF_RTOL = 1e-13
_REF_ATOL = 1e-18


@functools.cache
def _reference_cached(name: str, t_eval: tuple[float, ...]) -> np.ndarray:
    from scipy.integrate import solve_ivp  # scipy is a dev dependency, needed only here

    problem = PROBLEMS[name]
    t = np.asarray(t_eval, dtype=np.float64)
    if t[-1] == 0.0:  # nothing to integrate; solve_ivp refuses an empty interval
        out = np.tile(np.asarray(problem.y0, dtype=np.float64), (t.size, 1))
        out.setflags(write=False)
        return out
    sol = solve_ivp(
        problem.rhs_numpy,
        (0.0, float(t[-1])),
        np.asarray(problem.y0, dtype=np.float64),
        method="DOP853",
        t_eval=t,
        rtol=_REF_RTOL,
        atol=_REF_ATOL,
    )
    if not sol.success:
        raise RuntimeError(f"reference solve of DETEST {name} failed: {sol.message}")
    out = sol.y.T.copy()  # (len(t_eval), n)
    out.setflags(write=False)  # shared by the cache: callers must not modify it
    return out


def reference_solution(problem: DetestProblem | str, t_eval: np.ndarray) -> np.ndarray:
    """A tight-tolerance solution of ``problem`` at the times ``t_eval``.

    scipy ``solve_ivp(method="DOP853", rtol=1e-13, atol=1e-18)`` from t = 0, evaluated at ``t_eval``
    by its dense output (error below about 1e-11 on all 25 problems); cached per (problem name, times) for the life of the process.

    Args:
        problem: a `DetestProblem` or its name.
        t_eval: 1-D array of times in ``[0, t_end]``, non-decreasing.

    Returns:
        Read-only float64 array of shape ``(len(t_eval), n)``.

    Raises:
        KeyError: unknown problem name.
        ValueError: ``t_eval`` not 1-D, empty, decreasing, or outside ``[0, t_end]``.
    """
    p = PROBLEMS[problem] if isinstance(problem, str) else problem
    if p.name not in PROBLEMS or PROBLEMS[p.name] is not p:
        raise ValueError(f"reference_solution: problem {p.name!r} is not one of the DETEST PROBLEMS")
    t = np.asarray(t_eval, dtype=np.float64)
    if t.ndim != 1 or t.size == 0:
        raise ValueError(f"reference_solution: t_eval must be a non-empty 1-D array, got shape {t.shape}")
    if np.any(np.diff(t) < 0) or t[0] < 0.0 or t[-1] > p.t_end:
        raise ValueError(
            f"reference_solution: t_eval must be non-decreasing within [0, {p.t_end}], "
            f"got values from {t.min()} to {t.max()}"
        )
    return _reference_cached(p.name, tuple(float(x) for x in t))
