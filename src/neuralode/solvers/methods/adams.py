"""Adams multistep methods on fixed grids: torchdiffeq's ``explicit_adams`` and ``implicit_adams``.

With the derivatives ``f_n, f_{n-1}, ..., f_{n-q+1}`` of the last ``q`` grid points (newest first),
a step of size ``dt`` from ``y_n`` is

* Adams–Bashforth (explicit, order ``q``): ``y_{n+1} = y_n + dt * sum_j beta_j^{(q)} f_{n-j}``;
* Adams–Bashforth–Moulton (predictor-corrector): the Bashforth value predicts ``y_{n+1}``, then
  the Moulton formula of order ``q + 1``,
  ``y_{n+1} = y_n + dt * (gamma_0 f(t_{n+1}, y_{n+1}) + sum_{j>=1} gamma_j f_{n+1-j})``, is
  iterated as a fixed point (at most ``max_iters`` times) until successive increments agree
  within ``atol + rtol * |increment|`` in the max norm.

Start-up and orders follow torchdiffeq 0.2.5 so that its programs give the same numbers: the
history holds at most ``max_order - 1`` derivatives; while it holds fewer than three the step is
Kutta's 3/8 rule (``rk4_38``, torchdiffeq's ``rk4``); then ``q = min(len(history), max_order - 1)``.
When the corrector does not converge a warning is issued and the oldest derivative is dropped,
lowering the order of the next step, as torchdiffeq does. The coefficients are the classical
ones (Hairer, Nørsett & Wanner, *Solving ODEs I*, III.1, Tables 1.1-1.2), as exact fractions.

Stability: the stability regions of Adams–Bashforth shrink fast with the order (Hairer & Wanner,
*Solving ODEs II*, V.1, Fig. 1.1), so at the default ``max_order`` (orders up to 11) ``explicit_adams``
needs a small step on oscillatory problems: on a damped rotation with ``omega = 2`` and ``step_size``
0.01 (``h omega = 0.02``) it grows to 1e67 over ``[0, 5]``, exactly as torchdiffeq 0.2.5's does, while
``options={"max_order": 6}`` gives an error of 1.3e-7 (measured in float64). The corrector of
``implicit_adams`` keeps it stable there.

The history is not hidden solver state: a step returns it in ``StepResult.memory`` and the loop
hands it to the next step, so checkpointing and restarts after an event (where the history is
started afresh) need nothing special.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from functools import cache

import torch

from .stepper import StepResult, combine, rk_step
from .tableau import RK4_38

MIN_ORDER = 4  # below this many history entries plus one, steps are rk4_38 (torchdiffeq's _MIN_ORDER)
MAX_ORDER = 12  # torchdiffeq's _MAX_ORDER
MAX_ITERS = 4


@cache
def _adams_coefficients(order: int, implicit: bool) -> tuple[float, ...]:
    """Adams–Bashforth (``implicit=False``: ``order`` weights of ``f_n .. f_{n-order+1}``) or
    Adams–Moulton (``order`` weights of ``f_{n+1} .. f_{n-order+2}``) coefficients.

    Computed exactly as ``beta_j = integral_0^1 l_j(s) ds`` of the Lagrange basis polynomials of
    the nodes ``s = 0, -1, ..., -(order-1)`` (Bashforth) or ``1, 0, ..., -(order-2)`` (Moulton),
    in units of the step.
    """
    nodes = [Fraction(1 - j) if implicit else Fraction(-j) for j in range(order)]
    out = []
    for j, xj in enumerate(nodes):
        # l_j(s) = prod_{m != j} (s - x_m) / (x_j - x_m), integrated over [0, 1].
        poly = [Fraction(1)]  # coefficients, lowest degree first
        denom = Fraction(1)
        for m, xm in enumerate(nodes):
            if m == j:
                continue
            poly = [
                (poly[k - 1] if k > 0 else 0) - xm * (poly[k] if k < len(poly) else 0) for k in range(len(poly) + 1)
            ]
            denom *= xj - xm
        out.append(float(sum(c / (k + 1) for k, c in enumerate(poly)) / denom))
    return tuple(out)


@dataclass(frozen=True)
class AdamsMethod:
    """A fixed-grid Adams method as the loop sees it.

    Attributes:
        name: ``"explicit_adams"`` or ``"implicit_adams"`` (``"fixed_adams"`` is an alias).
        corrector: whether the Moulton corrector runs (``implicit_adams``). Not called
            ``implicit``: that attribute marks the stiff methods, which need a Jacobian.
        description: one line for listings.
    """

    name: str
    corrector: bool
    description: str

    # What the loop and the solver's set-up read of a method.
    adaptive = False
    fsal = False
    dense = None
    dense_extra = None
    extra_stages = 0
    order = 4  # of the start-up steps; the multistep order rises with the history
    c = (0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0)  # stage times of the rk4_38 start-up steps (time cache)

    def step(
        self,
        func: Callable,
        t0: float,
        y0: torch.Tensor,
        f0: torch.Tensor,
        dt: float,
        memory: tuple[torch.Tensor, ...] | None,
        options,
    ) -> StepResult:
        """One step; ``memory`` is the previous steps' derivatives, newest first (or None)."""
        max_order = options.max_order
        prev_f = ((f0,) + (memory or ()))[: max_order - 1]
        order = min(len(prev_f), max_order - 1)
        if order < MIN_ORDER - 1:
            step = rk_step(func, t0, y0, f0, dt, _RK4_38)
            return StepResult(step.y1, None, step.k, memory=prev_f)
        beta = _adams_coefficients(order, False)
        y1 = combine(y0, dt, tuple(enumerate(beta)), prev_f)
        if self.corrector:
            gamma = _adams_coefficients(order + 1, True)
            # Everything of the corrector but its implicit term, as an increment.
            base = combine(y0, dt, tuple((j, g) for j, g in enumerate(gamma[1:])), prev_f)
            t1 = t0 + dt
            dy = y1 - y0
            converged = False
            for _ in range(options.max_iters):
                dy_old = dy
                f1 = func(t1, y0 + dy)
                y1 = torch.add(base, f1, alpha=dt * gamma[0])
                dy = y1 - y0
                with torch.no_grad():
                    scale = torch.maximum(dy_old.abs(), dy.abs()).mul_(options.rtol).add_(options.atol)
                    converged = bool(((dy_old - dy).abs() / scale).max() < 1)
                if converged:
                    break
            if not converged:
                # One message text (no time in it), so Python's warning filter shows it once per solve
                # site rather than once per step.
                warnings.warn(
                    f"{self.name}: the corrector did not converge in max_iters={options.max_iters} iterations; "
                    "the next step lowers its order. Use a smaller step_size, a looser rtol/atol or a larger "
                    "max_iters.",
                    RuntimeWarning,
                    stacklevel=2,
                )
                prev_f = prev_f[:-1]
        return StepResult(y1, None, (f0,), memory=prev_f)


_RK4_38 = RK4_38

ADAMS_METHODS: dict[str, AdamsMethod] = {
    m.name: m
    for m in (
        AdamsMethod(
            "explicit_adams", False, "Adams-Bashforth on a fixed grid, order rising to max_order - 1 (torchdiffeq's)."
        ),
        AdamsMethod(
            "implicit_adams", True, "Adams-Bashforth-Moulton predictor-corrector on a fixed grid (torchdiffeq's)."
        ),
    )
}
ADAMS_METHODS["fixed_adams"] = ADAMS_METHODS["implicit_adams"]  # torchdiffeq's older name
