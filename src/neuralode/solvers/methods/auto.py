"""``method="auto"``: tsit5 while the problem is not stiff, rodas5p while it is, switching both ways.

The idea of LSODA (Petzold 1983) and of Julia's ``AutoTsit5(Rosenbrock23())``, on the host clock: a composite
method whose step is either an explicit tsit5 step or a rodas5p step. Both are of order 5 with an order-4
error estimate, so one step-size controller (exponent 1/5) and one error norm serve both, and a switch
needs no restart.

* Explicit to stiff: Hairer's stiffness test on tsit5's accepted steps (:mod:`~neuralode.solvers.control.stiffness`:
  ``|h| rho`` above half the stability boundary for 15 steps), from the stages, at no evaluation of ``f``.
* Explicit to stiff, second test: Hairer's estimate reads the Jacobian only along the difference of two
  stages, and once the stiff components have decayed that difference hardly contains them, so it can
  stay far below the true spectral radius while tsit5 creeps at its stability limit (Robertson at rtol
  1e-8: |h| rho grows from 0.06 to 0.5 of the boundary over ~5800 steps of h ~ 1.5e-3 while |h lambda|
  is ~0.95 of it). Every ``PROBE_EVERY`` accepted tsit5 steps whose step size has stalled (it moved by
  less than a factor ``STALL_RATIO`` over those steps, as it does when stability holds it), ``PROBE_ITERS``
  power iterations with finite-difference directional derivatives ``J v ~ (f(y + eps v) - f(y)) / eps``
  (one evaluation each, from the FSAL stage ``f(y)``) estimate the spectral radius; ``|h| rho`` above
  ``PROBE_FRACTION`` of the boundary switches to rodas5p at once. The probe costs ``PROBE_ITERS``
  evaluations per ``PROBE_EVERY`` steps of 6 (about 2 % of tsit5's evaluations) and only on stalled steps.
* Stiff to explicit: with the Jacobian rodas5p has anyway, ``|h| max_b ||J_b||_inf`` (an upper bound of
  ``|h|`` times the spectral radius) below the same boundary for 15 accepted steps in a row means that
  tsit5 could take the step that rodas5p takes: switch back.

On a non-stiff problem no switch happens and ``auto`` is tsit5 step for step, with the same evaluations
(tsit5's last stage is reused as the next first stage although the composite is not FSAL as a whole).
A step's stages say which method took it (tsit5: 7 stage derivatives; rodas5p: 8 vectors ``u_i``), and the
dense output uses that method's own interpolant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import torch

from ..control.stiffness import STIFF_STEPS, StiffnessDetector, stability_boundary
from .interpolation import continuous_extension
from .rosenbrock import ImplicitStepper, rosenbrock_dense, rosenbrock_stepper
from .rosenbrock_tableaus import RODAS5P, RosenbrockTableau
from .stepper import StepResult, rk_step
from .tableau import TSIT5, ButcherTableau

# Hairer's rho is a Rayleigh-quotient-like estimate along the stages' difference and often underestimates the
# dominant eigenvalue: on Robertson at t ~ 0.1 tsit5 sits at its stability limit while |h| rho reads 1.85 of
# 3.5, and the 0.98 threshold of the error test only fired at t = 14, after ~10^4 steps. Switching costs
# nothing but Jacobians, so auto switches at half the boundary (the error test keeps 0.98: it stops a solve).
SWITCH_FRACTION = 0.5
PROBE_EVERY = 50  # accepted tsit5 steps between two spectral-radius probes
PROBE_ITERS = 6  # power iterations per probe (one evaluation of f each)
PROBE_FRACTION = 0.8  # |h| rho above this fraction of the stability boundary: stiff
STALL_RATIO = 1.5  # max/min step size over the probe window below which the step has stalled


def spectral_radius_probe(func, t: float, y: torch.Tensor, fy: torch.Tensor, iters: int = PROBE_ITERS) -> float:
    """A power-iteration estimate of the Jacobian's spectral radius at ``(t, y)`` (``fy = f(t, y)``), with
    ``J v`` from forward differences: ``iters`` evaluations of ``func``, no autograd. The start vector is
    fixed (a deterministic pseudo-random direction), so the solve stays reproducible."""
    with torch.no_grad():
        g = torch.Generator(device="cpu").manual_seed(0)
        v = torch.randn(y.shape, generator=g, dtype=torch.float64).to(device=y.device, dtype=y.dtype)
        eps_m = torch.finfo(y.dtype).eps
        y_norm = float(torch.linalg.vector_norm(y))
        rho = 0.0
        for _ in range(iters):
            v = v / torch.linalg.vector_norm(v)
            eps = eps_m**0.5 * max(1.0, y_norm)
            jv = (func(t, y + eps * v) - fy) / eps
            rho = float(torch.linalg.vector_norm(jv))
            if not rho > 0.0 or rho != rho or rho == float("inf"):
                return 0.0
            v = jv
        return rho


@dataclass(frozen=True)
class AutoSwitching:
    """The composite method ``auto``: an explicit and a stiff method of equal orders (data only)."""

    name: str = "auto"
    explicit: ButcherTableau = field(default=TSIT5)
    stiff: RosenbrockTableau = field(default=RODAS5P)
    description: str = "tsit5, switching to rodas5p while the problem is stiff (as LSODA switches Adams/BDF)."

    def __post_init__(self) -> None:
        e, s = self.explicit, self.stiff
        if e.error_order is None:
            raise ValueError(f"AutoSwitching: the explicit method must be an embedded pair; {e.name} has no b_err")
        if (e.order, min(e.order, e.error_order)) != (s.order, min(s.order, s.error_order)):
            raise ValueError(f"AutoSwitching: {e.name} and {s.name} must have equal orders and error orders")
        if e.stages == s.stages:
            raise ValueError("AutoSwitching: the two methods must differ in their number of stages")
        if e.dense is None:  # auto_dense interpolates the explicit steps with it
            raise ValueError(f"AutoSwitching: the explicit method needs its own dense output; {e.name} has no dense")

    order = property(lambda self: self.explicit.order)
    error_order = property(lambda self: self.explicit.error_order)
    adaptive = property(lambda self: True)
    implicit = property(lambda self: True)  # the loop hands it to an implicit-method stepper
    fsal = property(lambda self: False)

    @property
    def options_type(self) -> type:
        from .implicit_options import AutoOptions

        return AutoOptions


AUTO = AutoSwitching()


def auto_dense(y0: torch.Tensor, y1: torch.Tensor, k, method: AutoSwitching, h: float, theta: float) -> torch.Tensor:
    """The dense output of whichever method took the step (told apart by its number of stages)."""
    if len(k) == method.stiff.stages:
        return rosenbrock_dense(y0, y1, k, method.stiff, theta)
    # explicit.dense is not None: AutoSwitching checks it on construction.
    dense = cast("tuple[tuple[float, ...], ...]", method.explicit.dense)
    return continuous_extension(y0, k, h, dense, theta)


@dataclass
class AutoState:
    """What the ``auto`` stepper keeps between attempts.

    Attributes:
        stiff: whether rodas5p takes the steps (else tsit5).
        calm: accepted rodas5p steps in a row that tsit5 could have taken (``|h| max_b ||J_b||_inf`` below the
            boundary); ``STIFF_STEPS`` of them switch back to tsit5.
        window: the sizes of the accepted tsit5 steps since the last spectral-radius probe.
        accepted: the last step the loop accepted, ``(t, h, step, stiff)``, until the next attempt reads it;
            ``None`` when the last attempt was rejected. The next attempt counts it towards a switch when it
            starts from that step's ``y1``; when it starts elsewhere (an event reset the state, or a step onto a
            jump of ``func`` was taken by another stepper) the step is not counted, as that solve continues
            from a state the step's stages do not describe.
        attempt: the attempt just returned, ``(t, h, step, stiff)``, until ``settle`` is told the verdict.
    """

    stiff: bool = False
    calm: int = 0
    window: list[float] = field(default_factory=list)
    accepted: tuple[float, float, StepResult, bool] | None = None
    attempt: tuple[float, float, StepResult, bool] | None = None


class AutoStepper(ImplicitStepper):
    """tsit5 or rodas5p for each step, chosen from the steps accepted before (module docstring); the switching
    state is :class:`AutoState` (``state``), the rodas5p stepper's Jacobian ``stiff_stepper.state``."""

    def __init__(self, func, method: AutoSwitching, checkpoint: bool, opts, problem, error=None):
        super().__init__(func, method, checkpoint, opts, problem, error)
        explicit = self.explicit = method.explicit
        self.stiff_stepper = rosenbrock_stepper(func, method.stiff, checkpoint, opts, problem)
        at_one = [i for i, c in enumerate(explicit.c) if c == 1.0]
        self.detector = StiffnessDetector(explicit, at_one[-2], at_one[-1], fraction=SWITCH_FRACTION)
        self.limit = 0.98 * stability_boundary(explicit)
        self.probe_limit = PROBE_FRACTION * stability_boundary(explicit)
        self.state = AutoState()

    def _count(self, accepted: tuple[float, float, StepResult, bool], t: float, y: torch.Tensor, f0):
        """Count the accepted step ``accepted`` (``state.accepted``) towards a switch, when this attempt continues
        from it; returns ``f0``, tsit5's last stage where that is ``f(t, y)`` and the loop passed none."""
        st, explicit, detector = self.state, self.explicit, self.detector
        t_prev, h_prev, step_prev, was_stiff = accepted
        st.accepted = None
        if step_prev.y1 is not y:  # the solve continues from elsewhere (an event's reset, another stepper)
            return f0
        if not was_stiff:
            if f0 is None and explicit.fsal:
                f0 = step_prev.k[-1]  # tsit5's last stage is f(t, y): no new evaluation
            window = st.window
            window.append(abs(h_prev))
            if detector.accepted(t_prev, h_prev, step_prev.k, 0):
                st.stiff, st.calm, st.window = True, 0, []
                detector.stiff = detector.non_stiff = 0
            elif len(window) >= PROBE_EVERY:
                st.window = []
                if explicit.fsal and max(window) < STALL_RATIO * min(window):
                    rho = spectral_radius_probe(self.func, t_prev + h_prev, step_prev.y1, step_prev.k[-1])
                    if abs(h_prev) * rho > self.probe_limit:
                        st.stiff, st.calm = True, 0
                        detector.stiff = detector.non_stiff = 0
        else:
            lin = self.stiff_stepper.state.lin
            with torch.no_grad():
                norm = float(lin.J.abs().sum(dim=-1).max()) if lin is not None else float("inf")
            st.calm = st.calm + 1 if abs(h_prev) * norm < self.limit else 0
            if st.calm >= STIFF_STEPS:
                st.stiff, st.calm, st.window = False, 0, []
        return f0

    def step(self, t: float, y: torch.Tensor, f0, h: float):
        st = self.state
        accepted = st.accepted
        if accepted is not None:
            f0 = self._count(accepted, t, y, f0)
        if st.stiff:
            f0, step = self.stiff_stepper.step(t, y, f0, h)
        else:
            if f0 is None:
                f0 = self.func(t, y)
            step = rk_step(self.func, t, y, f0, h, self.explicit)
        st.attempt = (t, h, step, st.stiff)
        return f0, step

    def _settle(self, accepted: bool) -> None:
        st = self.state
        if st.attempt is not None and st.attempt[3]:  # a rodas5p step: its stepper keeps what checkpointing needs
            self.stiff_stepper.settle(accepted)
        st.accepted = st.attempt if accepted else None
        st.attempt = None


def make_auto_stepper(func, method: AutoSwitching, checkpoint: bool, opts, problem, error=None):
    """The :class:`AutoStepper` of one solve."""
    return AutoStepper(func, method, checkpoint, opts, problem, error)
