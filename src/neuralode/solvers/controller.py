"""Step-size control: pure arithmetic from (step, error ratio, order) to (accept, next step).

The error ratio ``r`` of a step is the norm of the local error estimate scaled by
``atol + rtol * max(|y0|, |y1|)``; the step is accepted when ``r <= 1``. For an embedded pair whose
error estimate is of local order ``k = min(order, error_order) + 1`` (``err ~ C dt^k``), the
step ``dt * r^(-1/k)`` would put the next error exactly on the tolerance.

Four controllers:

* ``"i"``, integral control: ``factor = safety * r^(-1/k)``. This is what torchdiffeq and scipy
  use.
* ``"pi"`` (the default of the explicit methods), proportional-integral control (Gustafsson
  1991; Hairer & Wanner, *Solving ODEs II*, IV.2):
  ``factor = safety * r_n^(-alpha) * r_{n-1}^(beta)``. The memory term damps the oscillation
  between accepted and rejected steps that pure I control shows when the step size is limited
  by stability or when the error estimate is noisy, which saves rejected steps (and function
  evaluations). The coefficients are those of Hairer's DOPRI5 code,
  ``beta = 0.04``, ``alpha = 1/5 - 0.75 beta``, written per ``1/k`` (``beta = 0.2/k``,
  ``alpha = 0.85/k``) so that they carry over to other orders. Diffrax's
  ``PIDController(pcoeff, icoeff)`` family contains it; we fix one well-tested choice rather than
  expose three knobs.
* ``"gustafsson"``, Gustafsson's predictive controller (Gustafsson 1994, "Control-theoretic
  techniques for stepsize selection in implicit Runge-Kutta methods", ACM TOMS 20, 496-517;
  Hairer & Wanner, *Solving ODEs II*, IV.8, (8.21)-(8.22)), the one Hairer's RADAU5 and RODAS
  codes use. It models the error of step ``n`` as ``r_n = phi_n h_n^k`` and extrapolates the
  error constant geometrically, ``phi_{n+1} = phi_n^2 / phi_{n-1}``; asking ``r_{n+1} = 1`` gives,
  after an accepted step,

      factor_pred = safety * (h_n / h_{n-1}) * (r_{n-1} / r_n^2)^(1/k),

  with ``r_{n-1} >= 1e-2`` (RADAU5's floor, so that one very accurate step does not inflate the
  next proposal). The step taken is the smaller of this and the I proposal
  ``safety * r_n^(-1/k)``: when ``phi`` is growing (the solution entering a fast transient)
  the prediction shrinks the step *before* a rejection happens, and when it is shrinking the I
  proposal caps the growth. The first accepted step (no ``h_{n-1}``) and every rejected step use
  I control. Opt-in: on the stiff benchmark problems (``benchmarks/results/stiff.md``, rodas5p
  at rtol 1e-4 ... 1e-8) it rejects 201 steps where PI rejects 507, but being I control on the
  smooth stretches it grows the step faster there, taking 7% fewer steps for 1.3x the error
  of PI control per tolerance (up to 5x on Robertson to t = 1e11).
* ``"pi_gustafsson"``: the same predictive cap on the PI proposal instead of the I one,
  ``min(factor_PI, factor_pred)``; the default of the stiff methods
  (:class:`~neuralode.solvers.implicit_options.ImplicitOptions`). Where the error constant is
  steady or shrinking (the smooth stretches of a stiff solve) it is PI control step for step;
  where it grows, the prediction cuts the step as in ``"gustafsson"``. Measured there: 146
  rejected steps against PI's 507 (kvaerno5, rtol 1e-4 ... 1e-6: 191 against 525) at PI's
  accuracy and 0.7% fewer evaluations (kvaerno5: 5.8%).

All clip the factor to ``[dfactor, ifactor]`` and never grow the step right after a rejection
(Hairer's rule, which avoids a second rejection in a row).

The initial step uses Hairer's heuristic (Hairer, Norsett & Wanner, *Solving ODEs I*, II.4),
costing one extra function evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

CONTROLLERS = ("pi", "i", "gustafsson", "pi_gustafsson")

# RADAU5's floor on the previous error ratio in the predictive formula (Hairer & Wanner II, IV.8).
GUSTAFSSON_MIN_PREV_RATIO = 1e-2


@dataclass(frozen=True)
class StepSizeController:
    """Proposes the next step from the current one and its error ratio.

    Attributes:
        kind: ``"pi"``, ``"i"``, ``"gustafsson"`` or ``"pi_gustafsson"``.
        safety: multiplies every proposal, keeping steps a little below the predicted optimum.
        ifactor: largest allowed growth factor per step.
        dfactor: smallest allowed shrink factor per step.
        order: local order ``k`` of the error estimate (``min(order, error_order) + 1``).
    """

    kind: str
    safety: float
    ifactor: float
    dfactor: float
    order: int

    def propose(
        self, dt: float, ratio: float, prev_ratio: float, after_reject: bool, prev_dt: float = math.nan
    ) -> tuple[bool, float]:
        """Decide on a step and propose the next step size.

        Args:
            dt: the step just attempted (signed).
            ratio: its error ratio (``<= 1`` means accept); ``inf``/``nan`` means reject hard.
            prev_ratio: the error ratio of the last accepted step (1.0 before the first).
            after_reject: whether the previous attempt was rejected.
            prev_dt: the last accepted step (signed; ``nan`` before the first), which only the
                predictive controllers (``"gustafsson"``, ``"pi_gustafsson"``) read.

        Returns:
            ``(accept, next_dt)`` with ``next_dt`` carrying the sign of ``dt``.
        """
        if not math.isfinite(ratio):
            return False, dt * self.dfactor
        accept = ratio <= 1.0
        k = self.order
        if ratio == 0.0:
            factor = self.ifactor
        elif accept and self.kind in ("pi", "pi_gustafsson"):
            alpha, beta = 0.85 / k, 0.2 / k
            factor = self.safety * ratio ** (-alpha) * max(prev_ratio, 1e-4) ** beta
        else:
            # I control: accepted steps of "i" and "gustafsson", and every rejected step (the
            # memory terms only make sense between accepted steps, where they smooth the
            # sequence of step sizes).
            factor = self.safety * ratio ** (-1.0 / k)
        if (
            accept
            and ratio > 0.0
            and self.kind in ("gustafsson", "pi_gustafsson")
            and math.isfinite(prev_dt)
            and prev_dt != 0.0
        ):
            # The predictive cap (h_n / h_{n-1}) (r_{n-1} / r_n^2)^(1/k), written with r_n^(-2/k)
            # so that a tiny ratio cannot underflow r_n^2 to zero.
            predicted = (
                self.safety
                * (dt / prev_dt)
                * max(prev_ratio, GUSTAFSSON_MIN_PREV_RATIO) ** (1.0 / k)
                * ratio ** (-2.0 / k)
            )
            factor = min(factor, predicted)
        factor = min(self.ifactor, max(self.dfactor, factor))
        if not accept or after_reject:
            factor = min(factor, 1.0)
        return accept, dt * factor


def initial_step(
    func: Callable[[float, torch.Tensor], torch.Tensor],
    t0: float,
    y0: torch.Tensor,
    f0: torch.Tensor,
    direction: float,
    order: int,
    scaled_norm: Callable[[torch.Tensor, torch.Tensor], float],
) -> float:
    """Hairer's initial step size (Solving ODEs I, II.4, p. 169), one evaluation of ``func``.

    ``d0 = ||y0||``, ``d1 = ||f0||`` (norms scaled by ``atol + rtol |y0|``); ``h0 = 0.01 d0 / d1``;
    one explicit Euler step of ``h0`` estimates the second derivative ``d2``; then
    ``h1 = (0.01 / max(d1, d2))^(1 / (order + 1))`` and the result is ``min(100 h0, h1)``.

    Args:
        func: right-hand side taking a float time.
        t0, y0, f0: initial time, state and derivative.
        direction: +1.0 or -1.0, the direction of integration.
        order: the order of the method.
        scaled_norm: ``scaled_norm(x, y)`` is the norm of ``x`` scaled by ``atol + rtol |y|``.

    Returns:
        The absolute value of the proposed first step.
    """
    with torch.no_grad():
        d0 = scaled_norm(y0, y0)
        d1 = scaled_norm(f0, y0)
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    y1 = torch.add(y0, f0, alpha=direction * h0)
    f1 = func(t0 + direction * h0, y1)
    with torch.no_grad():
        d2 = scaled_norm(f1 - f0, y0) / h0
    if max(d1, d2) <= 1e-15:
        h1 = max(1e-6, h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** (1.0 / (order + 1))
    return min(100.0 * h0, h1)


class ConstantController:
    """The controller of fixed-step methods: every step is accepted and none is proposed.

    It proposes an infinite step, so the loop's clipping rule alone decides where each step ends:
    at the next point of the grid (the output times, ``step_size`` multiples or the user's
    ``grid_constructor`` grid), exactly as the adaptive loop lands on ``step_t`` and the last
    output time. One loop therefore serves both kinds of method.
    """

    def propose(
        self, dt: float, ratio: float, prev_ratio: float, after_reject: bool, prev_dt: float = math.nan
    ) -> tuple[bool, float]:
        return True, math.inf
