"""Standard test problems with closed forms or independent references, shared by tests and benchmarks.

Each problem is a :class:`Problem`: the right-hand side written twice, once for torch (what our
solvers integrate; ``t`` a 0-dim tensor of the state's dtype, ``y`` of ``y0``'s shape) and once for
numpy on a flat state (what scipy integrates for the reference), the initial state in float64, the
time span, and the closed-form solution where one exists. ``scipy_reference`` integrates any of them
with scipy's DOP853 at ``rtol = atol = 1e-13``, an independent reference for the others.

Problems (``PROBLEMS[name]``):

    decay        y' = -k y, three rates                        exact
    linear2      y' = A y, a damped rotation (2x2)             exact (matrix exponential)
    linear4      y' = A y, two coupled damped rotations (4x4)  exact (matrix exponential)
    harmonic     x'' = -w^2 x as a first-order system           exact
    riccati      y' = -2 t y^2, z' = y (non-autonomous)         exact: y = 1/(1+t^2), z = atan t
    rotexp       y = exp(x) for a rotation x' = w(t) J x        exact: exp(cos th), exp(sin th) (entire)
    lotka        Lotka-Volterra predator-prey                   reference; conserved quantity
    vdp          Van der Pol, mu = 1                            reference
    kepler       two-body orbit, eccentricity 0.5               exact (Kepler's equation); energy,
                                                                angular momentum conserved
    batched      16 states of dim 3, y' = tanh(y W^T) - y/2 + b sin t   reference

Usage::

    from tests.problems import PROBLEMS, scipy_reference
    p = PROBLEMS["kepler"]
    ys = solve(p.func, p.y0, p.times(11)).ys          # compare with p.exact(p.times(11))
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.integrate import solve_ivp

__all__ = ["Problem", "PROBLEMS", "scipy_reference", "kepler_energy", "kepler_angular_momentum", "lotka_invariant"]

F64 = torch.float64


@dataclass(frozen=True, eq=False)
class Problem:
    """An initial value problem ``y' = func(t, y)``, ``y(t_span[0]) = y0``.

    Attributes:
        name: key in :data:`PROBLEMS`.
        func: torch right-hand side ``func(t, y) -> dy/dt``; works for float32 and float64 states.
        func_np: numpy right-hand side on the flattened state (for ``scipy.integrate.solve_ivp``).
        y0: initial state, float64, any shape.
        t_span: ``(t0, t_end)`` with ``t0 < t_end``.
        exact: ``exact(t) -> (len(t), *y0.shape)`` float64 tensor for a 1-D tensor ``t``, or ``None``.
        invariants: name -> ``f(ys) -> (len,)`` quantities conserved along solutions
            (``ys`` shaped ``(len, *y0.shape)``, torch or numpy).
    """

    name: str
    func: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    func_np: Callable[[float, np.ndarray], np.ndarray]
    y0: torch.Tensor
    t_span: tuple[float, float]
    exact: Callable[[torch.Tensor], torch.Tensor] | None = None
    invariants: dict = field(default_factory=dict)

    def times(self, n: int, dtype: torch.dtype = F64, reverse: bool = False) -> torch.Tensor:
        """``n`` equally spaced times over ``t_span`` (from ``t_end`` down to ``t0`` if ``reverse``)."""
        t = torch.linspace(self.t_span[0], self.t_span[1], n, dtype=F64)
        return (t.flip(0) if reverse else t).to(dtype)

    def reference(self, t) -> torch.Tensor:
        """The closed form at ``t`` if there is one, else scipy's DOP853 at 1e-13 (float64)."""
        t = torch.as_tensor(t, dtype=F64)
        if self.exact is not None:
            return self.exact(t)
        return torch.from_numpy(scipy_reference(self, t.numpy()))


def scipy_reference(problem: Problem, t_eval) -> np.ndarray:
    """The solution at ``t_eval`` by ``solve_ivp(method="DOP853", rtol=1e-13, atol=1e-13)``.

    Integrates forward from ``problem.t_span[0]`` and ``problem.y0``; ``t_eval`` may be in any
    order (decreasing too) but must not precede ``t_span[0]``. Returns a float64 array of shape
    ``(len(t_eval), *y0.shape)``. Cached per problem and times.
    """
    t_eval = np.asarray(
        torch.as_tensor(t_eval, dtype=F64).numpy() if isinstance(t_eval, torch.Tensor) else t_eval, dtype=np.float64
    )
    return _scipy_reference(problem.name, tuple(t_eval.reshape(-1).tolist())).copy()


@functools.lru_cache(maxsize=256)
def _scipy_reference(name: str, t_eval: tuple[float, ...]) -> np.ndarray:
    problem = PROBLEMS[name]
    t0 = problem.t_span[0]
    t = np.asarray(t_eval)
    if t.size and t.min() < t0:
        raise ValueError(f"t_eval must not precede t_span[0] = {t0}; got {t.min()}.")
    order = np.argsort(t, kind="stable")
    t_sorted = t[order]
    y0 = problem.y0.numpy().reshape(-1)
    t_end = max(float(t_sorted[-1]) if t.size else t0, t0)
    out = np.empty((t.size, y0.size))
    if t_end == t0:
        out[:] = y0
    else:
        sol = solve_ivp(
            problem.func_np,
            (t0, t_end),
            y0,
            method="DOP853",
            rtol=1e-13,
            atol=1e-13,
            dense_output=False,
            t_eval=t_sorted,
        )
        if not sol.success:
            raise RuntimeError(f"scipy reference for {name} failed: {sol.message}")
        out[order] = sol.y.T
    return out.reshape(t.size, *problem.y0.shape)


# ------------------------------------------------------------------------------------------------
# The problems.


def _decay() -> Problem:
    k = torch.tensor([0.5, 1.0, 2.0], dtype=F64)
    y0 = torch.tensor([1.0, -2.0, 3.0], dtype=F64)

    def func(t, y):
        return -k.to(y.dtype) * y

    def func_np(t, y):
        return -k.numpy() * y

    def exact(t):
        return y0 * torch.exp(-k * t[:, None])

    return Problem("decay", func, func_np, y0, (0.0, 2.0), exact)


def _linear(name: str, A: list[list[float]], y0: list[float], t_end: float) -> Problem:
    A = torch.tensor(A, dtype=F64)
    y0 = torch.tensor(y0, dtype=F64)

    def func(t, y):
        return y @ A.T.to(y.dtype)  # (..., n): batches of states work too

    def func_np(t, y):
        return A.numpy() @ y

    def exact(t):
        return torch.stack([torch.linalg.matrix_exp(A * ti) @ y0 for ti in t.tolist()])

    return Problem(name, func, func_np, y0, (0.0, t_end), exact)


def _harmonic() -> Problem:
    w = 2.0
    y0 = torch.tensor([1.0, 0.5], dtype=F64)  # (x, v)

    def func(t, y):
        return torch.stack([y[..., 1], -(w * w) * y[..., 0]], -1)

    def func_np(t, y):
        return np.array([y[1], -(w * w) * y[0]])

    def exact(t):
        x0, v0 = y0.tolist()
        x = x0 * torch.cos(w * t) + v0 / w * torch.sin(w * t)
        v = -x0 * w * torch.sin(w * t) + v0 * torch.cos(w * t)
        return torch.stack([x, v], -1)

    return Problem("harmonic", func, func_np, y0, (0.0, 6.0), exact)


def _riccati() -> Problem:
    y0 = torch.tensor([1.0, 0.0], dtype=F64)

    def func(t, y):
        u = y[..., 0]
        return torch.stack([-2.0 * t * u * u, u], -1)

    def func_np(t, y):
        return np.array([-2.0 * t * y[0] ** 2, y[0]])

    def exact(t):
        return torch.stack([1.0 / (1.0 + t * t), torch.atan(t)], -1)

    return Problem("riccati", func, func_np, y0, (0.0, 2.0), exact)


def _rotexp() -> Problem:
    # x = (cos th, sin th) solves x' = w(t) J x with th' = w(t) = 1 + cos(t) / 2; y = exp(x)
    # componentwise solves the nonlinear, non-autonomous y' = w(t) y * (J log y). The solution is
    # an entire function of t, so its Taylor coefficients do not grow factorially (unlike riccati,
    # whose poles at t = +-i make high-order methods look an order higher than they are until
    # the error is near rounding): the problem of choice for empirical orders of convergence.
    def func(t, y):
        w = 1.0 + 0.5 * torch.cos(t)
        log_y = torch.log(y)
        return torch.stack([-w * y[..., 0] * log_y[..., 1], w * y[..., 1] * log_y[..., 0]], -1)

    def func_np(t, y):
        w = 1.0 + 0.5 * np.cos(t)
        return np.array([-w * y[0] * np.log(y[1]), w * y[1] * np.log(y[0])])

    def exact(t):
        th = t + 0.5 * torch.sin(t)
        return torch.stack([torch.exp(torch.cos(th)), torch.exp(torch.sin(th))], -1)

    return Problem("rotexp", func, func_np, torch.tensor([math.e, 1.0], dtype=F64), (0.0, 2.0), exact)


_LV = (1.5, 1.0, 3.0, 1.0)  # a, b, c, d


def lotka_invariant(ys):
    """``d x - c log x + b y - a log y``, conserved by Lotka-Volterra; ``ys`` shaped ``(..., 2)``."""
    a, b, c, d = _LV
    lib = torch if isinstance(ys, torch.Tensor) else np
    x, y = ys[..., 0], ys[..., 1]
    return d * x - c * lib.log(x) + b * y - a * lib.log(y)


def _lotka() -> Problem:
    a, b, c, d = _LV

    def func(t, y):
        x, p = y[..., 0], y[..., 1]
        return torch.stack([a * x - b * x * p, -c * p + d * x * p], -1)

    def func_np(t, y):
        x, p = y
        return np.array([a * x - b * x * p, -c * p + d * x * p])

    y0 = torch.tensor([1.0, 1.0], dtype=F64)
    return Problem("lotka", func, func_np, y0, (0.0, 5.0), invariants={"lotka": lotka_invariant})


def _vdp() -> Problem:
    mu = 1.0

    def func(t, y):
        x, v = y[..., 0], y[..., 1]
        return torch.stack([v, mu * (1.0 - x * x) * v - x], -1)

    def func_np(t, y):
        x, v = y
        return np.array([v, mu * (1.0 - x * x) * v - x])

    return Problem("vdp", func, func_np, torch.tensor([2.0, 0.0], dtype=F64), (0.0, 5.0))


KEPLER_E = 0.5


def kepler_energy(ys):
    """``|v|^2 / 2 - 1 / r``; ``-1/2`` for the orbit here (semi-major axis 1, GM = 1)."""
    lib = torch if isinstance(ys, torch.Tensor) else np
    x, y, vx, vy = (ys[..., i] for i in range(4))
    return 0.5 * (vx * vx + vy * vy) - 1.0 / lib.sqrt(x * x + y * y)


def kepler_angular_momentum(ys):
    """``x v_y - y v_x``; ``sqrt(1 - e^2)`` for the orbit here."""
    x, y, vx, vy = (ys[..., i] for i in range(4))
    return x * vy - y * vx


def _kepler() -> Problem:
    e = KEPLER_E

    def func(t, y):
        x, p = y[..., 0], y[..., 1]
        r3 = (x * x + p * p) ** 1.5
        return torch.stack([y[..., 2], y[..., 3], -x / r3, -p / r3], -1)

    def func_np(t, y):
        x, p, vx, vy = y
        r3 = (x * x + p * p) ** 1.5
        return np.array([vx, vy, -x / r3, -p / r3])

    def exact(t):
        # Start at perihelion with a = GM = 1, so the mean anomaly is M = t. Solve Kepler's
        # equation E - e sin E = M by Newton's method (converges to rounding for e = 0.5).
        M = t.to(F64)
        E = M + e * torch.sin(M)
        for _ in range(50):
            E = E - (E - e * torch.sin(E) - M) / (1.0 - e * torch.cos(E))
        s = math.sqrt(1.0 - e * e)
        denom = 1.0 - e * torch.cos(E)
        return torch.stack([torch.cos(E) - e, s * torch.sin(E), -torch.sin(E) / denom, s * torch.cos(E) / denom], -1)

    y0 = torch.tensor([1.0 - e, 0.0, 0.0, math.sqrt((1.0 + e) / (1.0 - e))], dtype=F64)
    return Problem(
        "kepler",
        func,
        func_np,
        y0,
        (0.0, 2.0 * math.pi),
        exact,
        invariants={"energy": kepler_energy, "angular_momentum": kepler_angular_momentum},
    )


def _batched() -> Problem:
    g = torch.Generator().manual_seed(0)
    W = torch.randn(3, 3, generator=g, dtype=F64) / math.sqrt(3.0)
    bias = torch.tensor([0.3, -0.2, 0.1], dtype=F64)
    y0 = torch.randn(16, 3, generator=g, dtype=F64)

    def func(t, y):
        return torch.tanh(y @ W.T.to(y.dtype)) - 0.5 * y + bias.to(y.dtype) * torch.sin(t)

    def func_np(t, y):
        Y = y.reshape(16, 3)
        return (np.tanh(Y @ W.numpy().T) - 0.5 * Y + bias.numpy() * np.sin(t)).reshape(-1)

    return Problem("batched", func, func_np, y0, (0.0, 3.0))


PROBLEMS: dict[str, Problem] = {
    p.name: p
    for p in (
        _decay(),
        _linear("linear2", [[-0.1, -1.0], [1.0, -0.1]], [1.0, 0.0], 5.0),
        _linear(
            "linear4",
            [[-0.2, 1.0, 0.0, 0.1], [-1.0, -0.2, 0.1, 0.0], [0.0, 0.0, -0.1, 2.0], [0.0, 0.0, -2.0, -0.1]],
            [1.0, 0.0, -0.5, 1.0],
            4.0,
        ),
        _harmonic(),
        _riccati(),
        _rotexp(),
        _lotka(),
        _vdp(),
        _kepler(),
        _batched(),
    )
}


# ---------------------------------------------------------------------------------------------------------------
# Stiff problems (torch right-hand side, and numpy right-hand side and Jacobian for scipy's Radau).

ROBERTSON_RATES = (0.04, 3e7, 1e4)


def robertson(t, y, k=ROBERTSON_RATES):
    """Robertson's kinetics (Robertson 1966) with rates ``k = (k1, k2, k3)``, batch-last layout ``(..., 3)``."""
    y1, y2, y3 = y[..., 0], y[..., 1], y[..., 2]
    k1, k2, k3 = k
    return torch.stack([-k1 * y1 + k3 * y2 * y3, k1 * y1 - k3 * y2 * y3 - k2 * y2**2, k2 * y2**2], dim=-1)


def robertson_np(t, y, k=ROBERTSON_RATES):
    k1, k2, k3 = k
    return [-k1 * y[0] + k3 * y[1] * y[2], k1 * y[0] - k3 * y[1] * y[2] - k2 * y[1] ** 2, k2 * y[1] ** 2]


def robertson_jac_np(t, y, k=ROBERTSON_RATES):
    k1, k2, k3 = k
    return [[-k1, k3 * y[2], k3 * y[1]], [k1, -k3 * y[2] - 2 * k2 * y[1], -k3 * y[1]], [0.0, 2 * k2 * y[1], 0.0]]


def stiff_vdp(mu: float):
    """Van der Pol with parameter ``mu``: ``(f, f_np, jac_np)`` (stiff for large ``mu``)."""

    def f(t, y):
        return torch.stack([y[..., 1], mu * ((1 - y[..., 0] ** 2) * y[..., 1]) - y[..., 0]], dim=-1)

    def f_np(t, y):
        return [y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]]

    def jac_np(t, y):
        return [[0.0, 1.0], [-2 * mu * y[0] * y[1] - 1.0, mu * (1 - y[0] ** 2)]]

    return f, f_np, jac_np
