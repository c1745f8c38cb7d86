"""Stiffness detection in explicit adaptive methods, from the stages a step already has.

Hairer's test (Hairer & Wanner, *Solving ODEs II*, IV.2, and the stiffness check of his DOPRI5 and DOP853
codes): two stages evaluated at the same time ``t0 + h`` (``c_i = c_j = 1``; for FSAL methods one of them is
``f(t0 + h, y1)``) at the points ``Y_i`` and ``Y_j`` estimate the dominant eigenvalue of the Jacobian,

    rho = ||k_j - k_i|| / ||Y_j - Y_i||,      Y_j - Y_i = h sum_l (a_jl - a_il) k_l,

with no evaluation of ``f``. When ``|h| rho`` sits at the method's stability boundary on the negative real
axis (``|R(-x)| <= 1`` up to ``x = boundary``), the step size is limited by stability, not accuracy. Following
Hairer, a step counts as stiff when ``|h| rho > 0.98 boundary``; 15 stiff accepted steps without 6
non-stiff ones in between mean the problem is stiff. Where Hairer's codes print a warning and go on, the
solve stops (once it has taken 500 steps, so that a short solve whose last steps are stability-limited
still finishes) with a :class:`SolverError` that names the stiff methods (an explicit method on a stiff problem
creeps on at the stability limit for as long as the user waits). ``options={"stiffness": "off"}`` skips
the test.

Only methods with two stages at ``c = 1`` are tested (dopri5, tsit5, dopri8, dopri8_13m); the check costs
two vector norms per accepted step and no evaluation of ``f``.
"""

from __future__ import annotations

from functools import cache

import torch

from ..errors import SolverError

STIFF_STEPS = 15  # stiff accepted steps that make a problem stiff (Hairer's DOPRI5: 15)
RESET_STEPS = 6  # non-stiff accepted steps in a row that reset the count (Hairer: 6)
# A solve is stopped only once it has also taken this many steps: a problem whose solution has decayed
# below atol (DETEST A1, y' = -y, at rtol 1e-3) is stability-limited for its last few steps, which Hairer's
# test rightly calls stiff, but it ends in a few more steps and must not fail. 500 steps cost milliseconds.
MIN_STEPS_FOR_ERROR = 500
STIFF_METHODS_HINT = "method='rodas5p' (or 'rosenbrock23' for loose tolerances, or method='auto')"


def _stability_function(tableau, z: complex) -> complex:
    """``R(z) = 1 + z b^T (I - z A)^-1 1`` for an explicit tableau (forward substitution)."""
    g: list[complex] = []
    for i in range(tableau.stages):
        g.append(1 + z * sum(tableau.a[i][j] * g[j] for j in range(i)))
    return 1 + z * sum(bi * gi for bi, gi in zip(tableau.b, g))


@cache
def stability_boundary(tableau) -> float:
    """The largest ``x`` with ``|R(-s)| <= 1`` for all ``0 <= s <= x`` (to 1e-3), e.g. 3.31 for dopri5."""
    x = 0.0
    while x < 50.0 and abs(_stability_function(tableau, complex(-(x + 1e-3), 0.0))) <= 1.0 + 1e-12:
        x += 1e-3
    return x


class StiffnessDetector:
    """Counts stability-limited accepted steps (see the module docstring); raises when the problem is stiff.

    Its counters are the only state it keeps, and it changes nothing about the solve: it reads the
    accepted step's stages.
    """

    def __init__(self, tableau, i: int, j: int, fraction: float = 0.98):
        self.tableau = tableau
        self.i, self.j = i, j
        self.diff = tuple(
            (l, a_jl - (tableau.a[i][l] if l < i else 0.0))
            for l, a_jl in enumerate(tableau.a[j])
            if a_jl - (tableau.a[i][l] if l < i else 0.0) != 0.0
        )
        self.limit = fraction * stability_boundary(tableau)
        self.stiff = 0
        self.non_stiff = 0

    @classmethod
    def for_solve(cls, method, opts) -> StiffnessDetector | None:
        """A detector for this :class:`~neuralode.solvers.methods.base.Method` and its options, or ``None``
        (not an adaptive explicit Runge-Kutta method, no two stages at c = 1, or ``stiffness="off"``)."""
        tableau = method.explicit_tableau
        if tableau is None or not method.capabilities.adaptive or opts.execution.stiffness == "off":
            return None
        at_one = [i for i, c in enumerate(tableau.c) if c == 1.0]
        if len(at_one) < 2:
            return None
        return cls(tableau, at_one[-2], at_one[-1])

    def h_rho(self, h: float, k) -> float:
        """``|h| rho`` for an accepted step with stages ``k``."""
        with torch.no_grad():
            dk = torch.linalg.vector_norm(k[self.j] - k[self.i])
            (l0, c0), *rest = self.diff
            dy = k[l0] * c0
            for l, c in rest:
                dy = torch.add(dy, k[l], alpha=c)
            dy = torch.linalg.vector_norm(dy)  # ||Y_j - Y_i|| / |h|
            return float(dk / dy) if float(dy) > 0 else 0.0

    def accepted(self, t: float, h: float, k, n_steps: int) -> bool:
        """Record an accepted step; ``True`` when the problem has just been found stiff."""
        hr = self.h_rho(h, k)
        if hr > self.limit:
            self.stiff += 1
            self.non_stiff = 0
            return self.stiff >= STIFF_STEPS
        self.non_stiff += 1
        if self.non_stiff >= RESET_STEPS:
            self.stiff = 0
        return False

    def check(self, t: float, h: float, k, n_steps: int) -> None:
        """:meth:`accepted`, raising :class:`SolverError` when the problem is stiff and the solve has taken
        ``MIN_STEPS_FOR_ERROR`` steps."""
        if self.accepted(t, h, k, n_steps) and n_steps >= MIN_STEPS_FOR_ERROR:
            raise SolverError(
                f"The problem is stiff: {self.tableau.name}'s step is held at its stability limit "
                f"(|h| rho = {self.h_rho(h, k):.3g}, boundary {stability_boundary(self.tableau):.3g}) for {self.stiff} steps",
                t,
                h,
                n_steps,
                f"Use a stiff method: {STIFF_METHODS_HINT}; options={{'stiffness': 'off'}} lets "
                f"{self.tableau.name} run on regardless.",
            )
