"""The integration loop: one loop for every method that steps (explicit, implicit, stiff, Adams) on either
clock, the batch's shared clock or a clock per sample.

:func:`integrate` is the loop. It holds the decisions every solve makes in the same order, whatever it
integrates and however it keeps time::

    while clock.running():
        plan the attempt               clock.plan: land on the next stop (stretching a step by up to 10%),
                                       arrive without a step where the stop is within rounding, refuse a
                                       non-finite, underflowing or over-budget step
        attempt it                     clock.attempt -> take(...): the Method's Stepper, never deciding
        a step the method could not complete (StepResult.shrink: Newton failed): refused, retried smaller
        judge it                       error.ratio (the norm of the clock), controller.adapt (its memory a
                                       ControllerState the loop carries unread), clock.judge (min_step)
        tell the method                take.settle(accept)
        after an accepted step:        clock.interpolant, clock.events (located on the interpolant, the
                                       step cut at the first event that ends the solve or resets the
                                       state), clock.outputs (every output time inside the step from one
                                       interpolant), clock.dense (the dense-output record), clock.move

It never asks what kind of method it runs (the :class:`~neuralode.solvers.methods.base.Method` gives the
:class:`~neuralode.solvers.methods.stepper.Stepper`, its interpolant kind and its capabilities) nor what kind
of clock it holds. A clock owns the solve's time and state between attempts and does the arithmetic of time:

* :class:`HostClock` (here): one time for the whole batch, a Python float (float64) that never touches the
  device, so that a small solve costs its tensor work and little more; a rejected attempt is retried at
  once (its ``keep`` is ``False``).
* :class:`~neuralode.solvers.per_sample.SampleClock` (``options={"per_sample": True}``): a time, step, error
  ratio and verdict per sample, as ``(B,)`` tensors; every attempt moves the accepted samples and keeps the
  others where they are, so its ``keep`` is always ``True`` and its later phases act on the accepted rows.

Both take their steps through the Method's Stepper (the Runge-Kutta stage sum
:func:`~neuralode.solvers.methods.stepper.rk_step` is generic over a float or a ``(B,)`` step), judge them with
the error norms and controllers of :mod:`~neuralode.solvers.control` (one module for both clocks), fill outputs
and search events on the Method's :class:`~neuralode.solvers.methods.interpolants.StepInterpolant`, and raise the same errors
(:func:`too_many_steps`, :func:`step_underflow`, :func:`rejected_at_min_step`, :func:`check_accumulation`,
:func:`coincident_resets_error`), naming the sample where there is one. Events and the output bookkeeping have
a scalar form (one time) and a vectorised one (a time per sample): :mod:`~neuralode.solvers.events.core` and
:mod:`~neuralode.solvers.events.per_sample`.

Before the loop, the api may run a fast path of :mod:`neuralode.solvers.fast` (a plain fixed grid stepped
without the loop's bookkeeping, compiled chunks of steps under ``options["compile"]``, or an adaptive solve's
run of steps compiled with its clock on the device), which either finishes the solve or hands the host clock
its end state (``handover``, with the step to try and the controller's memory where the fast path had them);
this module imports none of them.
Methods with a driver of their own (``capabilities.own_driver``: ``scipy_solver``) do not use the loop.

Shape: diffrax's ``_integrate.py`` (one loop over a state; solver, controller and interpolation called, never
inspected), torchode's per-sample ``step`` / ``adapt_step_size`` / merge of accepted samples, scipy's
``OdeSolver`` (method state as named attributes of one object per solve).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any, Protocol, cast

import torch

from .control.controller import ControllerState
from .control.norms import _ErrorNorm
from .control.stepping import at_step_floor, output_theta, plan_step
from .control.stiffness import MIN_STEPS_FOR_ERROR, STIFF_STEPS, StiffnessDetector
from .dense import DenseOutput
from .errors import SolverError
from .events.core import EventSet, apply_reset, attach_event_gradient, unravel
from .methods.interpolants import StepInterpolant
from .methods.stepper import Stepper, StepResult
from .problem import _Problem
from .solution import EventRecord, Handover, LoopResult, SolverStats

# The event values of a solve without events: none (shared, never mutated).
_NO_VALUES: list[torch.Tensor] = []


class Clock(Protocol):
    """The time-keeping of one solve, for :func:`integrate`: the solve's time, state and the step to try
    next, and every phase of an attempt that depends on how time is kept. ``h`` is the step of the attempt
    being made (a float, or a ``(B,)`` tensor), ``control`` the controller's memory (carried, never read)."""

    h: Any
    control: ControllerState

    def running(self) -> bool: ...

    def plan(self) -> bool: ...

    def attempt(self, take: Stepper) -> tuple[torch.Tensor, StepResult]: ...

    def refuse(self, controller: Any, f0: torch.Tensor, shrink: float) -> None: ...

    def ratio(self, error: Any, f0: torch.Tensor, step: StepResult) -> Any: ...

    def judge(self, controller: Any, ratio: Any, accept: Any, control: ControllerState) -> tuple[Any, Any]: ...

    def keep(self, accept: Any, f0: torch.Tensor, step: StepResult, dt_next: Any, control: ControllerState) -> bool: ...

    def interpolant(self, f0: torch.Tensor, step: StepResult) -> Any: ...

    def events(self, step: StepResult, interp: Any) -> Any: ...

    def outputs(self, step: StepResult, interp: Any, cut: Any) -> None: ...

    def dense(self, interp: Any, cut: Any) -> None: ...

    def move(self, f0: torch.Tensor, step: StepResult, accept: Any, dt_next: Any, control: Any, cut: Any) -> None: ...


def integrate(clock: Clock, take: Stepper, controller: Any, error: Any) -> None:
    """Integrate until ``clock`` says the solve is over (its last output time, or a terminal event).

    Args:
        clock: the solve's clock (:class:`HostClock` or :class:`~neuralode.solvers.per_sample.SampleClock`),
            which holds the solve's state and receives its outputs.
        take: the Method's stepper for this solve (``method.stepper(...)``), told every verdict (``settle``).
        controller: the step-size controller of the clock (``adapt``, ``refuse``, ``accepted``; for a
            fixed grid the constant controller, which accepts every step).
        error: the error norm of the clock (``None`` on a fixed grid).
    """
    while clock.running():
        if not clock.plan():
            continue  # a stop within rounding of the clock's time, reached without a step
        f0, step = clock.attempt(take)
        if step.shrink is not None:
            # A step the method could not complete (Newton failed): refused whatever its error, retried
            # from the same point at shrink times its size.
            take.settle(False)
            clock.refuse(controller, f0, step.shrink)
            continue
        ratio = clock.ratio(error, f0, step)
        accept, dt_next, control = controller.adapt(clock.control, clock.h, ratio)
        accept, control = clock.judge(controller, ratio, accept, control)
        take.settle(accept)
        if not clock.keep(accept, f0, step, dt_next, control):
            continue
        interp = clock.interpolant(f0, step)
        cut = clock.events(step, interp)
        clock.outputs(step, interp, cut)
        clock.dense(interp, cut)
        clock.move(f0, step, accept, dt_next, control, cut)


def no_event_found(exc: SolverError, max_num_steps: float) -> SolverError:
    """The error of an event search (torchdiffeq's event mode: no last time) that stopped before its
    event: said as such, whatever stopped it (the step budget, a solution that settles where an
    explicit method's step is held at its stability limit, or one that overflows)."""
    return SolverError(
        f"No event found: event_fn did not change sign before the search stopped ({exc.reason})",
        exc.t,
        exc.dt,
        exc.n_steps,
        f"An event search runs for at most options['max_num_steps'] steps (here {max_num_steps}); raise it if the "
        "event comes later, or check that event_fn changes sign on this solution.",
    )


# A reset that comes within this many times the event time resolution (events.EventSet.guard) of
# the one before, or whose successor is predicted that close, stops the solve as accumulating.
ACCUMULATION_MARGIN = 100.0


def check_accumulation(
    reset_times: list[float], guard: float, index: int, h: float, n_steps: int, sample: int | None = None
) -> None:
    """Stop a solve whose state-resetting events accumulate at a finite time (Zeno behaviour).

    A bouncing ball whose restitution ``e < 1`` loses energy geometrically: its flights last
    ``2 e^k t_1``, so its impacts accumulate at ``t_1 (1 + 2 e / (1 - e))``. Without a rule the solve
    continues until a flight is shorter than the time resolution of event location (after a
    reset, roots within ``guard`` are not searched, so that the event does not fire again at once);
    the next impact is then missed and the ball falls through the floor, silently. The same class of
    failure is reported against diffrax (issues #507, #639) and SciML's callbacks.

    The rule, on the reset times ``reset_times`` of one element of one event (oldest first; trimmed
    here to the last four): with ``d_k`` the interval between the last two, stop when ``d_k`` is
    within ``ACCUMULATION_MARGIN`` event-time resolutions (``guard``), or when the intervals kept
    (up to three) shrink and the next one, extrapolated geometrically (``d_k^2 / d_{k-1}``), would be
    within a tenth of that. The accumulation point reported is the geometric series' limit
    ``t_k + d_k r / (1 - r)``, ``r = d_k / d_{k-1}``.

    Both clocks call it: the host clock per (event, element), the per-sample clock per (sample,
    event, element), passing ``sample`` so that the message names it.

    Raises:
        SolverError: the resets accumulate; the message names ``events[index]`` (and the sample),
            the accumulation point and the fix.
    """
    del reset_times[:-4]  # the last four resets are all the rule reads
    if len(reset_times) < 3:
        return
    t_k = reset_times[-1]
    d = [abs(b - a) for a, b in zip(reset_times, reset_times[1:])]
    d_k, d_prev = d[-1], d[-2]
    limit = ACCUMULATION_MARGIN * guard
    shrinking = len(d) >= 2 and all(b < a for a, b in zip(d, d[1:]))
    predicted = d_k * d_k / d_prev if d_prev > 0 else 0.0
    if d_k > limit and not (shrinking and predicted <= limit / 10):
        return
    r = d_k / d_prev if d_prev > 0 else 0.0
    direction = 1.0 if reset_times[-1] >= reset_times[0] else -1.0
    who = "" if sample is None else f" of sample {sample}"
    where = f" towards t={t_k + direction * d_k * r / (1 - r):.10g} (geometric extrapolation)" if 0 < r < 1 else ""
    raise SolverError(
        f"Events accumulate (Zeno behaviour): events[{index}]{who} resets the state at ever shorter intervals, the last "
        f"two resets {d_k:.3g} apart{where}, closer than event times can be resolved",
        t_k,
        h,
        n_steps,
        "The model has no continuation past the accumulation point: end the solve before it (a t[-1] or a terminal "
        "event there), or change the model where the events crowd (e.g. a terminal event, or a reset to rest, once "
        "the bounce velocity is below a threshold).",
    )


def coincident_resets_error(
    index: int, other: int, t: float, h: float, n_steps: int, sample: int | None = None
) -> SolverError:
    """The refusal of ``events[index]``, which resets the state, crossing at the same time as
    ``events[other]``, which resets it too or ends the solve (of sample ``sample`` in per-sample
    mode). Both clocks restart from one event's reset, so the other's crossing would be lost: its
    reset never applied, its element starting the next step past its root."""
    who = "" if sample is None else f" (sample {sample})"
    return SolverError(
        f"events[{index}] and events[{other}] change the state at the same time{who}",
        t,
        h,
        n_steps,
        "The solve restarts from one event's reset, so the other's crossing would be lost "
        "(a second ball falling through the floor). Combine them into one Event whose fn "
        "returns both values (torch.stack) and whose reset handles every element at its root.",
    )


def _who(sample: int | None) -> str:
    return "" if sample is None else f" (sample {sample})"


def too_many_steps(max_num_steps: int, t: float, h: float, n_steps: int, sample: int | None = None) -> SolverError:
    """The step budget (``options['max_num_steps']``) spent, on either clock."""
    return SolverError(
        f"Too many steps (max_num_steps={max_num_steps}){_who(sample)}",
        t,
        h,
        n_steps,
        "Raise options['max_num_steps'] or loosen rtol/atol.",
    )


def step_underflow(t: float, h: float, n_steps: int, sample: int | None = None) -> SolverError:
    """A step below the resolution of time at ``t`` that does not reach a stop."""
    return SolverError(
        f"Step size underflow{_who(sample)}",
        t,
        h,
        n_steps,
        "The problem may be stiff, or the solution may blow up (non-finite values); "
        "try a looser tolerance or check func.",
    )


def non_finite(what: str, t: float, h: float, n_steps: int, sample: int | None = None) -> SolverError:
    """``what`` is ``"derivative"`` (``func`` returned NaN or inf at the step's start) or ``"state"`` (every
    step tried from ``t`` produced NaN or inf, down to the resolution of time)."""
    if what == "derivative":
        return SolverError(
            f"Non-finite derivative func(t, y){_who(sample)}", t, h, n_steps, "Check func for NaN or inf."
        )
    return SolverError(
        f"Non-finite state or derivative{_who(sample)}",
        t,
        h,
        n_steps,
        "Every step tried from here produced NaN or inf; check func, or the solution blows up here.",
    )


def rejected_at_min_step(
    min_step: float,
    ratio: float,
    t: float,
    h: float,
    n_steps: int,
    sample: int | None = None,
    accept_option: bool = True,
) -> SolverError:
    """A step rejected where no smaller one may follow (:meth:`HostClock.judge`); ``accept_option``: the clock
    offers ``options['at_min_step']='accept'`` (the host clock does, the per-sample one not yet)."""
    fix = "Lower options['min_step'] or loosen rtol/atol"
    if accept_option:
        fix += "; options['at_min_step']='accept' accepts such steps whatever their error, as torchdiffeq does"
    return SolverError(
        f"Step rejected at the minimum step size (min_step={min_step:.3g}, error ratio {ratio:.3g}){_who(sample)}",
        t,
        h,
        n_steps,
        fix + ".",
    )


class HostClock:
    """One clock for the whole batch, kept in Python floats (float64): time and step size never touch the
    device. Holds the solve's state between attempts (time, state, the derivative reused by FSAL and its
    side, the step to try, the controller's memory, the next stop, the event functions' values, a multistep
    method's history) and gathers the outputs, event records and dense output as they come.

    Stops are the times steps must land on: ``step_t``, ``jump_t`` and the last output time for adaptive
    methods, the grid points for fixed ones. A step is clipped to the next stop, and stretched by up to 10%
    to land on it rather than leave a sliver of a step after it (Hairer's DOPRI5 allows 1%; the safety
    factor 0.9 leaves room for 10%). At a jump of ``func`` (``jump_t``), and on every step with
    ``options['perturb']``, the evaluations at the step's end are taken just before it.
    """

    __slots__ = tuple(
        """
        problem times stops jumps stats ev t_dtype dense_out tableau interpolant_type fsal stage_c adaptive watch_dt
        max_num_steps min_step max_step accept_at_min warned_at_min on_step on_accept on_reject perturb stiffness
        watch_from direction towards n_out t_max reset_times
        t y f0 f0_side dt control i_stop g guard memory ys out_steps records i_out last_ratio terminal
        h dt_abs remaining lands t_stop jump_here stage_func at_floor
        t1 f1 ev_interp g1
        """.split()
    )  # the solve's settings; its state between attempts; the attempt being made; the accepted step

    def __init__(
        self,
        problem: _Problem,
        y0: torch.Tensor,
        f0: torch.Tensor | None,
        times: list[float],
        *,
        method,
        opts: Any,
        stops,
        jumps: frozenset[float],
        control: ControllerState,
        dt0: float,
        error: _ErrorNorm | None,
        stats: SolverStats,
        events: EventSet | None = None,
        t_dtype: torch.dtype = torch.float64,
        dense: DenseOutput | None = None,
        handover: Handover | None = None,
    ):
        self.problem, self.times, self.stops, self.jumps, self.stats = problem, times, stops, jumps, stats
        self.ev, self.t_dtype, self.dense_out = events, t_dtype, dense
        t0, t_end = times[0], times[-1]
        self.direction = direction = 1.0 if t_end > t0 else -1.0
        self.towards = direction * math.inf
        self.n_out = len(times)
        self.tableau = tableau = method.tableau
        self.interpolant_type = method.interpolant(opts)
        self.fsal = tableau.fsal
        # Adaptive explicit Runge-Kutta steps create their stage times at once (fixed grids have
        # theirs cached for the whole solve, see _Problem.cache_times).
        self.stage_c = None
        if error is not None and method.explicit_tableau is not None and not opts.compile:
            self.stage_c = tuple(float(ci) for ci in tableau.c[1:])
        self.adaptive = adaptive = method.capabilities.adaptive  # fixed grids: no min_step, max_step, at_min_step
        self.watch_dt = error is not None  # a non-finite step proposed by the controller is an error
        self.max_num_steps = opts.max_num_steps
        self.min_step = opts.min_step if adaptive else 0.0
        self.max_step = opts.max_step if adaptive else math.inf
        self.accept_at_min = adaptive and opts.at_min_step == "accept"
        self.warned_at_min = False
        self.on_step: Callable | None
        self.on_accept: Callable | None
        self.on_reject: Callable | None
        self.on_step, self.on_accept, self.on_reject = problem.callbacks
        self.perturb = perturb = opts.perturb and error is None  # fixed grids: every step
        if error is None:
            self.on_accept = self.on_reject = None  # torchdiffeq calls only callback_step on fixed grids
        self.stiffness = StiffnessDetector.for_solve(method, opts)  # None: not watched (see stiffness.py)
        # A solve is stopped as stiff only after MIN_STEPS_FOR_ERROR steps, STIFF_STEPS of them in a
        # row at the stability limit, so the test (two norms and a host synchronisation) starts just
        # before that: short solves, most Neural ODE solves, never pay for it.
        self.watch_from = MIN_STEPS_FOR_ERROR - 2 * STIFF_STEPS
        self.t_max = torch.finfo(problem.t_dtype).max if problem.t_dtype.is_floating_point else math.inf
        # The last reset times of each (event, element) that reset the state (check_accumulation): resets
        # of different events or elements (two balls) may coincide without accumulating.
        self.reset_times: dict[tuple[int, int], list[float]] = {}
        # The events' values at the step's start, one tensor per event (none without events).
        self.g: list[torch.Tensor] = _NO_VALUES
        self.guard = 0.0
        if events:
            # The solves with events start from f(t0, y0): the api evaluates it (the checkpointed solve,
            # which may start without it, has no events).
            assert f0 is not None
            h_scale = abs(dt0) if math.isfinite(dt0) else abs(stops[0] - t0)
            self.g, self.guard = events.start(t0, y0, lambda: f0.detach(), direction, h_scale)
        self.t, self.y, self.f0, self.f0_side = t0, y0, f0, 1 if perturb else 0
        self.memory: tuple[torch.Tensor, ...] | None  # a multistep method's history (StepResult.memory)
        self.dt, self.control, self.i_stop, self.memory = dt0, control, 0, None
        self.records: list[EventRecord]
        self.ys, self.out_steps, self.records, self.i_out = [y0], [], [], 1
        if handover is not None:
            # A fast path took the steps this far (same arithmetic, so the same states): go on from there.
            self.ys, self.out_steps, self.i_out = handover.ys, handover.out_steps, handover.i_out
            self.t, self.y, self.f0, self.i_stop = handover.t, handover.y, handover.f0, handover.i_stop
            if handover.dt is not None:
                self.dt, self.control = handover.dt, handover.control
        self.last_ratio = 0.0
        self.terminal = False

    def result(self) -> LoopResult:
        self.stats.next_step = self.dt
        return LoopResult(self.ys, self.out_steps, self.records, self.terminal)

    def running(self) -> bool:
        return self.i_out < self.n_out and not self.terminal

    def _before(self, t_end: float):
        """The stages of a step ending at ``t_end``, those at its end evaluated just before it
        (one unit of the time dtype ``func`` receives, so it holds in float32 too): a step onto a
        jump of ``func`` must see the side it comes from, and so must every step with
        ``options['perturb']``, as in torchdiffeq. ``stage.where(s)`` is ``(time, side)`` of the
        evaluation at ``s``, for steppers that evaluate ``func`` there otherwise (a Jacobian)."""
        problem, direction = self.problem, self.direction
        t_in = math.nextafter(t_end, -self.towards)  # catches t + h rounding to either side of t_end

        def stage(s: float, x: torch.Tensor) -> torch.Tensor:
            if (s - t_in) * direction >= 0:
                return problem(t_end, x, -1)
            return problem(s, x)

        # An optional attribute of a stage function (so set through the function's __dict__, which a
        # static checker allows), read with getattr by the steppers that use it.
        stage.__dict__["where"] = lambda s: (t_end, -1) if (s - t_in) * direction >= 0 else (s, 0)
        return stage

    def plan(self) -> bool:
        """Clip the next step to the next stop; ``False`` where the stop is within rounding of ``t`` and
        was reached without a step. Refuses a non-finite step, one below the resolution of time, one
        leaving the time dtype's range and one past the step budget."""
        t, stats, direction = self.t, self.stats, self.direction
        t_stop = self.t_stop = self.stops[self.i_stop]
        if self.watch_dt and not math.isfinite(self.dt):
            if self.f0 is not None and not bool(torch.isfinite(self.f0).all()):
                raise non_finite("derivative", t, self.dt, stats.n_accepted + stats.n_rejected)
            raise SolverError(
                "Non-finite step size",
                t,
                self.dt,
                stats.n_accepted + stats.n_rejected,
                "The error estimate or the initial-step heuristic produced NaN or inf; check func for NaN/inf "
                "and the tolerances.",
            )
        dt_abs, remaining, lands, below = plan_step(self.dt, t, t_stop, self.min_step, self.max_step)
        h = direction * dt_abs
        if below:
            if lands:
                # The stop is within rounding of t: arrive without a step.
                times, n_out = self.times, self.n_out
                while self.i_out < n_out and (times[self.i_out] - t_stop) * direction <= 0:
                    self.ys.append(self.y)
                    self.out_steps.append((h, stats.n_accepted))
                    self.i_out += 1
                if t_stop in self.jumps:
                    self.f0, self.f0_side = None, 1
                self.t, self.i_stop = t_stop, self.i_stop + 1
                return False
            if not math.isfinite(self.last_ratio):
                raise non_finite("state", t, h, stats.n_steps)
            raise step_underflow(t, h, stats.n_steps)
        if abs(t) + dt_abs > self.t_max:
            raise SolverError(
                f"Time leaves the range of {self.problem.t_dtype}",
                t,
                h,
                stats.n_steps,
                "func receives t in the state's dtype; integrate over a shorter span or solve in float64.",
            )
        if stats.n_accepted + stats.n_rejected >= self.max_num_steps:
            raise too_many_steps(self.max_num_steps, t, h, stats.n_steps)
        if self.on_step is not None:
            self.problem.call_back(self.on_step, t, self.y, h)
        self.h, self.dt_abs, self.remaining, self.lands = h, dt_abs, remaining, lands
        self.jump_here = lands and t_stop in self.jumps
        return True

    def attempt(self, take: Stepper) -> tuple[torch.Tensor, StepResult]:
        t, h, problem = self.t, self.h, self.problem
        # At a jump, stages with c_i = 1 would sit exactly on the discontinuity, where func may
        # already return its value from after the jump: evaluate them just before it instead.
        if self.jump_here or self.perturb:
            stage_func = self._before(self.t_stop if self.lands else t + h)
        else:
            stage_func = problem
            if self.stage_c is not None:
                problem.step_times(t, h, self.stage_c)
        self.stage_func = stage_func
        return take(self.f0_side, t, self.y, self.f0, h, stage_func, self.memory)

    def refuse(self, controller, f0: torch.Tensor, shrink: float) -> None:
        stats = self.stats
        if not bool(torch.isfinite(f0).all()):
            raise non_finite("derivative", self.t, self.h, stats.n_steps)
        stats.n_rejected += 1
        if self.on_reject is not None:
            self.problem.call_back(self.on_reject, self.t, self.y, self.h)
        self.dt, self.control = controller.refuse(self.control, self.h, shrink)
        self.f0 = f0

    def ratio(self, error, f0: torch.Tensor, step: StepResult) -> float:
        if error is None:
            return 0.0
        ratio = self.last_ratio = error.ratio(step.y_err, self.y, step.y1, step.y_err_aux)
        if not math.isfinite(ratio) and not bool(torch.isfinite(f0).all()):
            raise non_finite("derivative", self.t, self.h, self.stats.n_steps)
        return ratio

    def judge(self, controller, ratio: float, accept: bool, control: ControllerState):
        """A rejected step is final when no smaller one may follow: it was taken at ``min_step``, or it
        was stretched to land on a stop that a step of ``min_step`` would land on too (its retry would be
        this very step again). torchdiffeq 0.2.5 accepts every step of size <= ``min_step`` whatever its
        error: ``options['at_min_step']='accept'``; by default such a step is an error (:meth:`keep`)."""
        min_step = self.min_step
        self.at_floor = at_floor = (
            not accept and min_step > 0 and at_step_floor(self.dt_abs, self.remaining, min_step, self.max_step)
        )
        if at_floor and self.accept_at_min:
            accept = True
            control = controller.accepted(self.control, self.h, ratio)
            if not self.warned_at_min:
                self.warned_at_min = True
                warnings.warn(
                    "options['at_min_step']='accept': a step at min_step was accepted with an error estimate above "
                    "rtol/atol (as torchdiffeq does); the solution is not within the tolerances there.",
                    RuntimeWarning,
                    stacklevel=4,
                )
        return accept, control

    def keep(self, accept: bool, f0: torch.Tensor, step: StepResult, dt_next: float, control: ControllerState) -> bool:
        """Count the verdict; a rejected step is retried from the same point with ``dt_next``. An accepted
        one is shown to the stiffness detector (``options['stiffness']``) and to ``callback_accept_step``."""
        stats = self.stats
        if not accept:
            stats.n_rejected += 1
            if self.on_reject is not None:
                self.problem.call_back(self.on_reject, self.t, self.y, self.h)
            if self.at_floor:
                raise rejected_at_min_step(self.min_step, self.last_ratio, self.t, self.h, stats.n_steps)
            self.f0, self.dt, self.control = f0, dt_next, control
            return False
        stats.n_accepted += 1
        t, h = self.t, self.h
        stats.last_step = h
        if self.stiffness is not None and stats.n_accepted + stats.n_rejected >= self.watch_from:
            self.stiffness.check(t, h, step.k, stats.n_steps)
        if self.on_accept is not None:
            self.problem.call_back(self.on_accept, t, self.y, h)
        return True

    def interpolant(self, f0: torch.Tensor, step: StepResult) -> StepInterpolant | None:
        """The accepted step's interpolant, built only where something reads inside the step: a step that
        ends on its only output time (a fixed grid on the output times) needs none."""
        t, h = self.t, self.h
        t1 = self.t1 = self.t_stop if self.lands else t + h
        self.f1 = f1 = step.k[-1] if (self.fsal and not self.jump_here) else None
        i_out, times = self.i_out, self.times
        if (
            self.ev
            or self.dense_out is not None
            or (i_out < self.n_out and times[i_out] != t1 and (times[i_out] - t1) * self.direction < 0)
        ):
            # Hermite needs f(t1, y1); at a jump take the limit from inside the step.
            end_side = -1 if (self.jump_here or self.perturb) else 0  # f(t1, y1) from inside the step, as its stages
            return self.interpolant_type(
                self.problem,
                self.tableau,
                t,
                self.y,
                f0,
                h,
                step,
                f1,
                t1,
                end_side,
                self.stage_func,
                self.f0_side,
            )
        return None

    def events(self, step: StepResult, interp: StepInterpolant | None):
        """Locate every crossing in the step; the step is cut at the first that ends the solve or resets
        the state (record-only events before it are kept). Returns ``(location, t_e, t*, y*)`` of the cut,
        or ``None``."""
        self.ev_interp = interp
        events = self.ev
        if not events:
            return None
        t, h, t1, problem, stats = self.t, self.h, self.t1, self.problem, self.stats
        g1 = self.g1 = events.values(t1, step.y1)
        # Roots are found on the step's cubic Hermite interpolant where outputs interpolate linearly
        # (a fixed grid's default ``interp``; StepInterpolant.smooth): a root of the linear one is second-order
        # in the step whatever the method (rk4 at h = 0.01 on a free fall: 1.4e-5 in the event time; Hermite:
        # 1e-16). Its f(t1, y1) is the next step's first stage: one evaluation more only where an event cuts
        # the step.
        # cast: interpolant() builds one for every step of a solve with events
        ev_interp = self.ev_interp = cast("StepInterpolant", interp).smooth()
        for loc in events.locate(self.g, g1, t, h, ev_interp, self.guard):
            event = events.events[loc.index]
            at_end = loc.theta == 1.0
            t_e = t1 if at_end else t + loc.theta * h
            y_e = step.y1 if at_end else ev_interp([loc.theta])[0]
            t_star, y_star = attach_event_gradient(
                event, problem.time, problem.unflatten, problem, t_e, y_e, loc.element, self.t_dtype
            )
            shape = events.shapes[loc.index]
            assert shape is not None  # known since events.values first ran the event's function
            self.records.append(
                EventRecord(
                    t_star,
                    problem.unflatten(y_star),
                    loc.index,
                    unravel(loc.element, shape),
                    event.terminal,
                )
            )
            stats.n_events += 1
            if event.cuts:
                if not event.terminal:
                    other = events.coincident(loc.index, self.g, t_e, y_e)
                    if other is not None:
                        raise coincident_resets_error(loc.index, other, t_e, h, stats.n_steps)
                return (loc, t_e, t_star, y_star)
        return None

    def outputs(self, step: StepResult, interp: StepInterpolant | None, cut) -> None:
        """The output times inside the (possibly cut) step, from one interpolant."""
        i_out, n_out, times, t1 = self.i_out, self.n_out, self.times, self.t1
        if interp is None:
            if i_out < n_out and times[i_out] == t1:
                self.ys.append(step.y1)
                self.out_steps.append((self.h, self.stats.n_accepted))
                self.i_out = i_out + 1
            return
        t, h, direction = self.t, self.h, self.direction
        t_piece = t1 if cut is None else cut[1]
        thetas = []
        while i_out < n_out and (times[i_out] - t_piece) * direction <= 0:
            tau = times[i_out]
            thetas.append(output_theta(tau, t, t1, h))
            self.out_steps.append((h, self.stats.n_accepted))
            i_out += 1
        self.i_out = i_out
        if thetas:
            self.ys.extend(interp(thetas))

    def dense(self, interp: StepInterpolant | None, cut) -> None:
        if self.dense_out is not None:
            # cast: interpolant() builds one for every step of a solve with dense output
            self.dense_out.add(self.t, self.h, cast("StepInterpolant", interp), self.t1 if cut is None else cut[1])

    def move(self, f0: torch.Tensor, step: StepResult, accept: bool, dt_next: float, control, cut) -> None:
        """The next state: the step's end, or the event it was cut at (after its reset); a terminal event
        ends the solve."""
        events, t1 = self.ev, self.t1
        jump_here, perturb = self.jump_here, self.perturb
        if cut is None:
            f_next = None if (jump_here or perturb) else (self.f1 if self.ev_interp is None else self.ev_interp.f1)
            side = 1 if (jump_here or perturb) else 0
            guard = 0.0
            g1 = _NO_VALUES
            if events:
                problem = self.problem

                def f_end(f=f_next, y1=step.y1, side=side):
                    with torch.no_grad():
                        return f.detach() if f is not None else problem(t1, y1, side)

                g1, guard = events.start(t1, step.y1, f_end, self.direction, self.h, gs=self.g1)
            self.t, self.y, self.f0, self.f0_side, self.dt, self.control = t1, step.y1, f_next, side, dt_next, control
            self.i_stop += 1 if self.lands else 0
            self.g, self.guard, self.memory = g1, guard, step.memory
            return
        loc, t_e, t_star, y_star = cut
        assert events is not None  # a step is cut only at an event
        event = events.events[loc.index]
        if event.terminal:
            self.terminal = True
            return
        h = self.h
        at_end = loc.theta == 1.0
        if self.lands and at_end:
            self.i_stop += 1
        side = 1 if ((jump_here and at_end) or perturb) else 0
        y_new, f_new = apply_reset(self.problem, event, loc.index, t_e, t_star, y_star, side)
        # The elements that fired sit on their root: they take the sign they have a moment
        # later, so leaving the root (the ball rising from the floor) does not fire again.
        g_new, guard = events.start(t_e, y_new, lambda: f_new, self.direction, h, fired=(loc.index, loc.fired))
        series = self.reset_times.setdefault((loc.index, loc.element), [])
        series.append(t_e)
        check_accumulation(series, guard or events.guard(t_e, h), loc.index, h, self.stats.n_steps)
        # FSAL restarts at the new state; f_new serves as the first stage unless the next step
        # must differentiate through it.
        f0_next = None if (torch.is_grad_enabled() and y_new.requires_grad) else f_new
        self.t, self.y, self.f0, self.f0_side, self.dt, self.control = t_e, y_new, f0_next, side, dt_next, control
        self.g, self.guard, self.memory = g_new, guard, None


def solve_joint(
    problem: _Problem,
    y0: torch.Tensor,
    f0: torch.Tensor | None,
    times: list[float],
    *,
    method,
    opts: Any,
    stops,
    jumps: frozenset[float],
    controller,
    dt0: float,
    error: _ErrorNorm | None,
    stats: SolverStats,
    events: EventSet | None = None,
    t_dtype: torch.dtype = torch.float64,
    dense: DenseOutput | None = None,
    method_config: Any = None,
    handover: Handover | None = None,
) -> LoopResult:
    """Integrate from ``times[0]`` until the last output time or a terminal event on the host clock.

    Args:
        problem: the adapted right-hand side (float time, flat state, counted).
        y0, f0: the flat initial state and ``f(times[0], y0)`` (``None``: evaluate it).
        times: output times as floats (``times[-1]`` may be ``±inf`` when only an event ends
            the solve).
        method: the :class:`~neuralode.solvers.methods.base.Method`: its stepper takes the steps, its
            ``interpolant`` fills outputs inside them, its capabilities say whether it is adaptive.
        opts: the parsed options, of ``method.options_type``.
        stops: indexable sequence of the times steps must land on, ending with ``times[-1]``.
        jumps: the stops at which ``func`` is discontinuous (no FSAL across them).
        controller: step-size controller (``init``, ``adapt``, ``accepted``, ``refuse``).
        dt0: the first step to try (signed; ``inf`` for fixed-step methods).
        error: the error norm (adaptive methods), else ``None``.
        stats: counters, updated in place.
        events: the solve's events, if any.
        t_dtype: dtype of event times as returned to the user.
        dense: when given, every accepted step's interpolant is added to it.
        method_config: ``method.step_config(...)``, what its steps need besides the state (the Adams
            methods' orders and corrector tolerances), or ``None``.
        handover: where a fast path stopped short of the end (its time, state, derivative, next
            stop, next output and the outputs so far): the loop goes on from there instead of
            from ``(times[0], y0, f0)``.
    """
    clock = HostClock(
        problem,
        y0,
        f0,
        times,
        method=method,
        opts=opts,
        stops=stops,
        jumps=jumps,
        control=controller.init(),
        dt0=dt0,
        error=error,
        stats=stats,
        events=events,
        t_dtype=t_dtype,
        dense=dense,
        handover=handover,
    )
    take = method.stepper(problem, opts=opts, config=method_config, error=error, checkpoint=opts.checkpoint)
    integrate(clock, take, controller, error)
    return clock.result()
