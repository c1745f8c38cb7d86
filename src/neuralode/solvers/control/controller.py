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
  (:class:`~neuralode.solvers.methods.implicit_options.ImplicitOptions`). Where the error constant is
  steady or shrinking (the smooth stretches of a stiff solve) it is PI control step for step;
  where it grows, the prediction cuts the step as in ``"gustafsson"``. Measured there: 146
  rejected steps against PI's 507 (kvaerno5, rtol 1e-4 ... 1e-6: 191 against 525) at PI's
  accuracy and 0.7% fewer evaluations (kvaerno5: 5.8%).

All clip the factor to ``[dfactor, ifactor]`` and never grow the step right after a rejection
(Hairer's rule, which avoids a second rejection in a row).

Each controller owns its memory, a :class:`ControllerState` (the last accepted ratio and step, and
whether the last attempt was rejected), which the loops carry without reading: ``init()`` makes it,
``adapt(state, dt, ratio) -> (accept, next dt, state)`` decides on an attempted step, and
``refuse(state, dt, factor) -> (next dt, state)`` rejects a step the method could not complete (a
failed Newton iteration) whatever its error. Two clocks: :class:`StepSizeController` decides in
Python floats for the host clock, whose time is a host float; :class:`BatchStepSizeController`
evaluates the same formulas on ``(B,)`` tensors for the per-sample clock, one decision per sample.

The initial step uses Hairer's heuristic (Hairer, Norsett & Wanner, *Solving ODEs I*, II.4),
costing one extra function evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from .stepping import ClockOps, FloatOps, R, TensorOps

CONTROLLERS = ("pi", "i", "gustafsson", "pi_gustafsson")

# RADAU5's floor on the previous error ratio in the predictive formula (Hairer & Wanner II, IV.8).
GUSTAFSSON_MIN_PREV_RATIO = 1e-2
# The floor on the previous error ratio in the PI formula (a very accurate step does not inflate the next).
PI_MIN_PREV_RATIO = 1e-4


class ControllerState(NamedTuple):
    """The controller's memory between step attempts, carried by the loop without reading it.

    On the scalar clock the fields are Python scalars; on the per-sample clock ``(B,)`` tensors
    (float64, bool, float64), one entry per sample.

    Attributes:
        prev_ratio: the error ratio of the last accepted step (1.0 before the first): PI control's
            memory term and the predictive controllers' ``r_{n-1}``.
        after_reject: whether the last attempt was rejected (the next step may then not grow).
        prev_dt: the last accepted step (signed; ``nan`` before the first), ``h_{n-1}`` of the
            predictive controllers.
    """

    prev_ratio: Any
    after_reject: Any
    prev_dt: Any

    def select(self, index: torch.Tensor) -> ControllerState:
        """The rows ``index`` of a per-sample state (a compacted batch)."""
        return ControllerState(self.prev_ratio[index], self.after_reject[index], self.prev_dt[index])


_INITIAL = ControllerState(1.0, False, math.nan)
# ControllerState(a, b, c) without the generated __new__'s Python frame: the scalar clock makes one per
# step attempt.
_state = tuple.__new__


@dataclass(frozen=True)
class StepSizeController:
    """The scalar clock's controller: decides on a step and proposes the next one, in Python floats.

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

    def init(self) -> ControllerState:
        """The memory before the first step: no accepted step yet (``prev_ratio = 1``, ``prev_dt = nan``)."""
        return _INITIAL

    def adapt(self, state: ControllerState, dt: float, ratio: float) -> tuple[bool, float, ControllerState]:
        """Decide on the step ``dt`` from its error ratio and propose the next step size.

        Args:
            state: the memory (:meth:`init`, or the state the last call returned).
            dt: the step just attempted (signed).
            ratio: its error ratio (``<= 1`` means accept); ``inf``/``nan`` means reject hard.

        Returns:
            ``(accept, next_dt, state)``: ``next_dt`` carries the sign of ``dt``; after an accepted
            step ``state`` remembers its ratio and size, after a rejected one that it was rejected.
        """
        prev_ratio, after_reject, prev_dt = state
        if not math.isfinite(ratio):
            return False, dt * self.dfactor, _state(ControllerState, (prev_ratio, True, prev_dt))
        accept = ratio <= 1.0
        k = self.order
        # The formulas of the module docstring, in the order the per-sample clock's
        # BatchStepSizeController.adapt evaluates them (in log space there).
        if ratio == 0.0:
            factor = self.ifactor
        elif accept and self.kind in ("pi", "pi_gustafsson"):
            alpha, beta = 0.85 / k, 0.2 / k
            factor = self.safety * ratio ** (-alpha) * max(prev_ratio, PI_MIN_PREV_RATIO) ** beta
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
        if not accept:
            return False, dt * min(factor, 1.0), _state(ControllerState, (prev_ratio, True, prev_dt))
        if after_reject:
            factor = min(factor, 1.0)
        return True, dt * factor, _state(ControllerState, (ratio, False, dt))

    def accepted(self, state: ControllerState, dt: float, ratio: float) -> ControllerState:
        """The memory after the step ``dt`` of error ratio ``ratio`` is accepted whatever :meth:`adapt`
        decided (torchdiffeq's acceptance of every step at ``min_step``)."""
        return ControllerState(ratio, False, dt)

    def refuse(self, state: ControllerState, dt: float, factor: float) -> tuple[float, ControllerState]:
        """A step the method could not complete (its Newton iteration failed): rejected whatever its
        error and retried at ``dt * factor``; the step after the retry may not grow, as after any
        rejection."""
        return dt * factor, ControllerState(state.prev_ratio, True, state.prev_dt)


@dataclass(frozen=True)
class BatchStepSizeController:
    """The per-sample clock's controller: :class:`StepSizeController` on ``(B,)`` tensors, one
    decision per sample.

    The same formulas, evaluated in log space so that every branch shares one ``exp``:
    ``factor = safety exp(-alpha log r + beta log max(r_prev, 1e-4))`` with ``alpha = 0.85/k``,
    ``beta = 0.2/k`` (PI, accepted) or ``alpha = 1/k``, ``beta = 0`` (I: rejected steps and the
    ``"i"``/``"gustafsson"`` kinds); the predictive cap is the minimum with
    ``log safety + log(h_n / h_{n-1}) + (1/k) log max(r_{n-1}, 1e-2) - (2/k) log r_n`` before the
    ``exp``, which is monotone, so the minimum is the scalar clock's ``min`` of the two factors.
    The limits come out of the same formula: ``r = 0`` gives ``exp(+inf) = inf``, clipped to
    ``ifactor`` (the scalar rule "r = 0: grow by ifactor"); ``r = inf`` gives 0, clipped to
    ``dfactor``; a NaN ratio is mapped to ``dfactor``. ``exp(log a + log b)`` and ``a * b`` may
    differ in the last bit, so the two clocks agree to rounding (and exactly wherever the clipping
    decides), not bit for bit; each clock's own numbers do not depend on the other.

    Attributes: as :class:`StepSizeController`.
    """

    kind: str
    safety: float
    ifactor: float
    dfactor: float
    order: int

    def init(self, like: torch.Tensor) -> ControllerState:
        """The memory before the first step of every sample; ``like`` is any ``(B,)`` tensor on the
        solve's device (its values are not read)."""
        shape, dev = like.shape, like.device
        return ControllerState(
            torch.ones(shape, dtype=torch.float64, device=dev),
            torch.zeros(shape, dtype=torch.bool, device=dev),
            torch.full(shape, math.nan, dtype=torch.float64, device=dev),
        )

    def adapt(
        self, state: ControllerState, dt: torch.Tensor, ratio: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, ControllerState]:
        """:meth:`StepSizeController.adapt` per sample: ``dt`` and ``ratio`` are ``(B,)`` float64;
        returns the ``(B,)`` acceptance mask, the next steps and the new state."""
        prev_ratio, after_reject, prev_dt = state
        accept = ratio <= 1.0  # False for NaN and inf: no separate finiteness mask is needed
        k = self.order
        log_r = ratio.log()
        if self.kind in ("pi", "pi_gustafsson"):
            log_pi = torch.add(prev_ratio.clamp(min=PI_MIN_PREV_RATIO).log() * (0.2 / k), log_r, alpha=-0.85 / k)
            expo = torch.where(accept, log_pi, log_r * (-1.0 / k))
        else:
            expo = log_r * (-1.0 / k)
        predictive = self.kind in ("gustafsson", "pi_gustafsson")
        if predictive:
            # log(predicted / safety); where it does not apply (a rejected step, a zero ratio, no
            # accepted step yet) the I or PI exponent is kept.
            log_pred = (
                (dt / prev_dt).log()
                + prev_ratio.clamp(min=GUSTAFSSON_MIN_PREV_RATIO).log() * (1.0 / k)
                + log_r * (-2.0 / k)
            )
            applies = accept & (ratio > 0.0) & torch.isfinite(prev_dt) & (prev_dt != 0.0)
            expo = torch.where(applies, torch.minimum(expo, log_pred), expo)
        factor = torch.nan_to_num(expo.exp_().mul_(self.safety), nan=self.dfactor).clamp_(self.dfactor, self.ifactor)
        # No growth on a rejection or on the step right after one.
        factor = torch.where(accept & ~after_reject, factor, factor.clamp(max=1.0))
        new_dt = torch.where(accept, dt, prev_dt) if predictive else prev_dt
        return accept, dt * factor, ControllerState(torch.where(accept, ratio, prev_ratio), ~accept, new_dt)

    def accepted(self, state: ControllerState, dt: torch.Tensor, ratio: torch.Tensor) -> ControllerState:
        """The memory after every sample's step is accepted whatever :meth:`adapt` decided."""
        return ControllerState(ratio, torch.zeros_like(state.after_reject), dt)

    def refuse(self, state: ControllerState, dt: torch.Tensor, factor) -> tuple[torch.Tensor, ControllerState]:
        """Every sample's step refused (see :meth:`StepSizeController.refuse`)."""
        return dt * factor, ControllerState(state.prev_ratio, torch.ones_like(state.after_reject), state.prev_dt)


def initial_step(
    func: Callable,
    t0,
    y0: torch.Tensor,
    f0: torch.Tensor,
    direction: float,
    order: int,
    scaled_norm: Callable,
):
    """Hairer's initial step size (Solving ODEs I, II.4, p. 169), one evaluation of ``func``.

    ``d0 = ||y0||``, ``d1 = ||f0||`` (norms scaled by ``atol + rtol |y0|``); ``h0 = 0.01 d0 / d1``
    (``1e-6`` when either is below ``1e-5``); one explicit Euler step of ``h0`` estimates the second
    derivative ``d2 = ||f(t0 + h0, y0 + h0 f0) - f0|| / h0``; then
    ``h1 = (0.01 / max(d1, d2))^(1 / (order + 1))`` (``max(1e-6, 1e-3 h0)`` when both are below
    ``1e-15``) and the result is ``min(100 h0, h1)``.

    One formula for both clocks; the norm decides which. On the scalar clock ``scaled_norm`` returns
    a float and the step is a float; on the per-sample clock (``t0`` a ``(B,)`` tensor, ``y0`` and
    ``f0`` ``(B, N)``) it returns the ``(B,)`` norms of the rows and every sample gets its own step.

    Args:
        func: right-hand side taking the clock's time (a float, or a ``(B,)`` tensor).
        t0, y0, f0: initial time, state and derivative.
        direction: +1.0 or -1.0, the direction of integration.
        order: the order of the method.
        scaled_norm: ``scaled_norm(x, y)`` is the norm of ``x`` scaled by ``atol + rtol |y|``.

    Returns:
        The absolute value of the proposed first step (a float, or ``(B,)`` float64).
    """
    with torch.no_grad():
        d0 = scaled_norm(y0, y0)
        d1 = scaled_norm(f0, y0)
    if isinstance(d0, torch.Tensor):
        return _first_step(TensorOps, func, t0, y0, f0, direction, order, scaled_norm, d0, d1)
    return _first_step(FloatOps, func, t0, y0, f0, direction, order, scaled_norm, d0, d1)


def _first_step(
    ops: ClockOps[R],
    func: Callable,
    t0,
    y0: torch.Tensor,
    f0: torch.Tensor,
    direction: float,
    order: int,
    scaled_norm: Callable,
    d0: R,
    d1: R,
) -> R:
    """:func:`initial_step` after the two norms ``d0``, ``d1``, in the arithmetic ``ops`` of their clock."""
    # d1 is floored only so that the branch not taken cannot divide by zero (both are evaluated
    # on tensors); where h0 = 0.01 d0 / d1 is taken, d1 >= 1e-5.
    h0 = ops.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / ops.floor(d1, 1e-300))
    y1 = ops.euler(y0, f0, direction * h0)
    f1 = func(t0 + direction * h0, y1)
    with torch.no_grad():
        d2 = scaled_norm(f1 - f0, y0) / h0
    dmax = ops.maximum(d1, d2)
    h1 = ops.where(dmax <= 1e-15, ops.floor(h0 * 1e-3, 1e-6), (0.01 / ops.floor(dmax, 1e-300)) ** (1.0 / (order + 1)))
    return ops.minimum(100.0 * h0, h1)


class ConstantController:
    """The controller of fixed-step methods: every step is accepted and none is proposed.

    It proposes an infinite step, so the loop's clipping rule alone decides where each step ends:
    at the next point of the grid (the output times, ``step_size`` multiples or the user's
    ``grid_constructor`` grid), exactly as the adaptive loop lands on ``step_t`` and the last
    output time. One loop therefore serves both kinds of method. It keeps no memory: its state is
    :meth:`init`'s throughout.
    """

    def init(self) -> ControllerState:
        return _INITIAL

    def adapt(self, state: ControllerState, dt: float, ratio: float) -> tuple[bool, float, ControllerState]:
        return True, math.inf, state

    def accepted(self, state: ControllerState, dt: float, ratio: float) -> ControllerState:
        return state

    def refuse(self, state: ControllerState, dt: float, factor: float) -> tuple[float, ControllerState]:
        """A grid step the method could not complete is retried at ``dt * factor``; the steps after
        it return to the grid (the clipping rule ends the next step on the grid point)."""
        return dt * factor, state
