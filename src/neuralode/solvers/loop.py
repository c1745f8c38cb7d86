"""The joint integration loop: one clock for the whole batch, fixed-step and adaptive methods, events.

:func:`integrate` advances time for every method but those with a driver of their own
(``capabilities.own_driver``: ``scipy_solver``, whose ``solve_ivp`` runs its own loop) and the per-sample
mode. It is not the only code that advances time: before calling it the api may run a fast path of
:mod:`neuralode.solvers.fast` (a plain fixed grid stepped without the loop's bookkeeping, or compiled
chunks of steps under ``options["compile"]``), which either finishes the solve or hands this loop its
end state (``handover``); this module imports none of them. ``options={"per_sample": True}`` runs
:func:`~neuralode.solvers.per_sample.integrate` instead, a second loop repeating this one's
arithmetic with a clock per sample (``docs/architecture.md``, "Clocks" and "Where it is going").

Shape (diffrax's ``_integrate.py`` loop over one state record; torchode's init/step pattern):

* The loop carries one record, :class:`_State` (time, state, the stage reused by FSAL, the step
  to try, the controller's memory, the next stop, the event functions' values), replaced as a
  whole after every attempt rather than mutated piecemeal.
* The loop never asks what kind of method it runs. The
  :class:`~neuralode.solvers.methods.base.Method` gives a :class:`~neuralode.solvers.methods.stepper.Stepper`
  for the solve (``method.stepper``), its interpolant kind and its capabilities (adaptive or not); a
  step returns values and never decides. After every attempt the loop tells the stepper its verdict
  (``settle``), which is how a method with state across steps (Radau's polynomial, the ``auto``
  method's switch) learns it. A step the method could not complete (``StepResult.shrink``: Newton
  failed) is refused: rejected and retried from the same point at ``shrink`` times its size.
* A controller decides: ``adapt(memory, h, ratio) -> (accept, next h, memory)``; its memory (a
  :class:`~neuralode.solvers.control.controller.ControllerState`) rides in the record unread by the loop.
  Adaptive methods use :class:`~neuralode.solvers.control.controller.StepSizeController`; fixed-step
  methods the :class:`~neuralode.solvers.control.controller.ConstantController`, which proposes an
  infinite step. Landing on a stop is one clipping rule for both: the stops are ``step_t``,
  ``jump_t`` and the last output time for adaptive methods, the grid points for fixed ones.
* After an accepted step, in this order: events (sign changes over the step, located on the
  step's interpolant; the step is cut at the first event that ends the solve or resets the
  state), then every output time inside the (possibly cut) step from one interpolant, then the
  dense-output record, then the next state.
* A fixed grid with nothing to decide or watch between steps (no events, step callbacks, dense
  output, ``perturb`` or checkpointing; a plain tensor state) is stepped by the api's lean fixed
  grid (:func:`~neuralode.solvers.fast.fixed_grid.run`): the same arithmetic without the record,
  the clipping and the controller call per step, so the same states; where it stops early, this
  loop starts from the :class:`~neuralode.solvers.solution.Handover` it hands over.

Time is a Python float (float64) throughout and becomes a tensor only where user code sees it.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, NamedTuple

import torch

from .control.controller import ControllerState
from .control.norms import _ErrorNorm
from .control.stiffness import MIN_STEPS_FOR_ERROR, STIFF_STEPS, StiffnessDetector
from .errors import SolverError
from .events.core import EventSet, apply_reset, attach_event_gradient, unravel
from .grid import TIME_EPS
from .interpolant import StepInterpolant
from .problem import _Problem
from .solution import DenseOutput, EventRecord, Handover, LoopResult, SolverStats


class _State(NamedTuple):
    """What the loop carries from one step attempt to the next."""

    t: float
    y: torch.Tensor
    f0: torch.Tensor | None  # f(t, y), reused by the next step; None: evaluate it first
    f0_side: int  # +1: f0 is taken just after t (t is a jump of func, or options['perturb']); else 0
    dt: float  # the step to try next (signed)
    control: ControllerState  # the controller's memory (last accepted ratio and step, last attempt rejected)
    i_stop: int  # index of the next stop
    g: list[torch.Tensor] | None  # event functions at (t, y), as EventSet.start gives them
    guard: float  # roots within this time of t are not searched (a step that starts on a root)
    memory: tuple | None = None  # a multistep method's history (StepResult.memory)


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

    Both clocks call it: the joint loop per (event, element), the per-sample loop per (sample,
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


def integrate(
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
    """Integrate from ``times[0]`` until the last output time or a terminal event.

    Args:
        problem: the adapted right-hand side (float time, flat state, counted).
        y0, f0: the flat initial state and ``f(times[0], y0)`` (``None``: evaluate it).
        times: output times as floats (``times[-1]`` may be ``±inf`` when only an event ends
            the solve).
        method: the :class:`~neuralode.solvers.methods.base.Method`: its stepper takes the steps, its
            ``interpolant_kind`` fills outputs inside them, its capabilities say whether it is adaptive.
        opts: the parsed options, of ``method.options_type``.
        stops: indexable sequence of the times steps must land on, ending with ``times[-1]``.
        jumps: the stops at which ``func`` is discontinuous (no FSAL across them).
        controller: step-size controller (``init``, ``adapt``, ``accepted``).
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
    t0, t_end = times[0], times[-1]
    direction = 1.0 if t_end > t0 else -1.0
    towards = direction * math.inf
    n_out = len(times)
    ys = [y0]
    out_steps: list[tuple[float, int]] = []
    records: list[EventRecord] = []
    i_out = 1
    tableau = method.tableau
    interp_kind = method.interpolant_kind(opts)
    take = method.stepper(problem, opts=opts, config=method_config, error=error, checkpoint=opts.checkpoint)
    fsal = tableau.fsal
    # Adaptive explicit Runge-Kutta steps create their stage times at once (fixed grids have
    # theirs cached for the whole solve, see _Problem.cache_times).
    stage_c = None
    if error is not None and method.explicit_tableau is not None and not opts.compile:
        stage_c = tuple(float(ci) for ci in tableau.c[1:])
    adaptive = method.capabilities.adaptive  # fixed grids have no min_step, max_step or at_min_step
    max_num_steps = opts.max_num_steps
    min_step = opts.min_step if adaptive else 0.0
    max_step = opts.max_step if adaptive else math.inf
    accept_at_min = adaptive and opts.at_min_step == "accept"
    warned_at_min = False
    on_step, on_accept, on_reject = problem.callbacks
    perturb = opts.perturb and error is None  # fixed grids: every step
    if error is None:
        on_accept = on_reject = None  # torchdiffeq calls only callback_step on fixed grids
    stiffness = StiffnessDetector.for_solve(method, opts)  # None: not watched (see stiffness.py)
    # A solve is stopped as stiff only after MIN_STEPS_FOR_ERROR steps, STIFF_STEPS of them in a
    # row at the stability limit, so the test (two norms and a host synchronisation) starts just
    # before that: short solves, most Neural ODE solves, never pay for it.
    watch_from = MIN_STEPS_FOR_ERROR - 2 * STIFF_STEPS

    def before(t_end: float):
        """The stages of a step ending at ``t_end``, those at its end evaluated just before it
        (one unit of the time dtype ``func`` receives, so it holds in float32 too): a step onto a
        jump of ``func`` must see the side it comes from, and so must every step with
        ``options['perturb']``, as in torchdiffeq. ``stage.where(s)`` is ``(time, side)`` of the
        evaluation at ``s``, for steppers that evaluate ``func`` there otherwise (a Jacobian)."""
        t_in = math.nextafter(t_end, -towards)  # catches t + h rounding to either side of t_end

        def stage(s: float, x: torch.Tensor) -> torch.Tensor:
            if (s - t_in) * direction >= 0:
                return problem(t_end, x, -1)
            return problem(s, x)

        stage.where = lambda s: (t_end, -1) if (s - t_in) * direction >= 0 else (s, 0)
        return stage

    guard = 0.0
    g0 = None
    if events:
        h_scale = abs(dt0) if math.isfinite(dt0) else abs(stops[0] - t0)
        g0, guard = events.start(t0, y0, lambda: f0.detach(), direction, h_scale)
    s = _State(t0, y0, f0, 1 if perturb else 0, dt0, controller.init(), 0, g0, guard)
    if handover is not None:
        # A fast path took the steps this far (same arithmetic, so the same states): go on from there.
        ys, out_steps, i_out = handover.ys, handover.out_steps, handover.i_out
        s = s._replace(t=handover.t, y=handover.y, f0=handover.f0, i_stop=handover.i_stop)
    last_ratio = 0.0
    terminal = False
    # The last reset times of each (event, element) that reset the state (check_accumulation): resets
    # of different events or elements (two balls) may coincide without accumulating.
    reset_times: dict[tuple[int, int], list[float]] = {}
    t_max = torch.finfo(problem.t_dtype).max if problem.t_dtype.is_floating_point else math.inf
    while i_out < n_out:
        t, y = s.t, s.y
        t_stop = stops[s.i_stop]
        if error is not None and not math.isfinite(s.dt):
            if s.f0 is not None and not bool(torch.isfinite(s.f0).all()):
                raise SolverError(
                    "Non-finite derivative func(t, y)",
                    t,
                    s.dt,
                    stats.n_accepted + stats.n_rejected,
                    "Check func for NaN or inf.",
                )
            raise SolverError(
                "Non-finite step size",
                t,
                s.dt,
                stats.n_accepted + stats.n_rejected,
                "The error estimate or the initial-step heuristic produced NaN or inf; check func for NaN/inf "
                "and the tolerances.",
            )
        dt_abs = max(min(abs(s.dt), max_step), min_step)
        remaining = abs(t_stop - t)
        # Stretch a step by up to 10% to land on a stop rather than leave a sliver of a step
        # after it (Hairer's DOPRI5 allows 1%; the safety factor 0.9 leaves room for 10%).
        lands = min(1.1 * dt_abs, max_step) >= remaining
        if lands:
            dt_abs = remaining
        h = direction * dt_abs
        if dt_abs <= 4 * TIME_EPS * abs(t) or dt_abs == 0.0:
            if lands:
                # The stop is within rounding of t: arrive without a step.
                while i_out < n_out and (times[i_out] - t_stop) * direction <= 0:
                    ys.append(y)
                    out_steps.append((h, stats.n_accepted))
                    i_out += 1
                if t_stop in jumps:
                    s = s._replace(t=t_stop, f0=None, f0_side=1, i_stop=s.i_stop + 1)
                else:
                    s = s._replace(t=t_stop, i_stop=s.i_stop + 1)
                continue
            if not math.isfinite(last_ratio):
                raise SolverError(
                    "Non-finite state or derivative",
                    t,
                    h,
                    stats.n_steps,
                    "Every step tried from here produced NaN or inf; check func, or the solution blows up here.",
                )
            raise SolverError(
                "Step size underflow",
                t,
                h,
                stats.n_steps,
                "The problem may be stiff, or the solution may blow up (non-finite values); "
                "try a looser tolerance or check func.",
            )
        if abs(t) + dt_abs > t_max:
            raise SolverError(
                f"Time leaves the range of {problem.t_dtype}",
                t,
                h,
                stats.n_steps,
                "func receives t in the state's dtype; integrate over a shorter span or solve in float64.",
            )
        if stats.n_accepted + stats.n_rejected >= max_num_steps:
            raise SolverError(
                f"Too many steps (max_num_steps={max_num_steps})",
                t,
                h,
                stats.n_steps,
                "Raise options['max_num_steps'] or loosen rtol/atol.",
            )
        if on_step is not None:
            problem.call_back(on_step, t, y, h)
        jump_here = lands and t_stop in jumps
        # At a jump, stages with c_i = 1 would sit exactly on the discontinuity, where func may
        # already return its value from after the jump: evaluate them just before it instead.
        stage_func = before(t_stop if lands else t + h) if (jump_here or perturb) else problem
        if stage_c is not None and stage_func is problem:
            problem.step_times(t, h, stage_c)
        f0, step = take(s.f0_side, t, y, s.f0, h, stage_func, s.memory)
        if step.shrink is not None:
            # A step the method could not complete (Newton failed): refused whatever its error, retried
            # from the same point at h * shrink.
            if not bool(torch.isfinite(f0).all()):
                raise SolverError("Non-finite derivative func(t, y)", t, h, stats.n_steps, "Check func for NaN or inf.")
            take.settle(False)
            stats.n_rejected += 1
            if on_reject is not None:
                problem.call_back(on_reject, t, y, h)
            dt_next, control = controller.refuse(s.control, h, step.shrink)
            s = s._replace(f0=f0, dt=dt_next, control=control)
            continue
        if error is not None:
            ratio = error.ratio(step.y_err, y, step.y1, step.y_err_aux)
            last_ratio = ratio
            if not math.isfinite(ratio) and not bool(torch.isfinite(f0).all()):
                raise SolverError("Non-finite derivative func(t, y)", t, h, stats.n_steps, "Check func for NaN or inf.")
        else:
            ratio = 0.0
        accept, dt_next, control = controller.adapt(s.control, h, ratio)
        # A rejected step is final when no smaller one may follow: it was taken at min_step, or it
        # was stretched to land on a stop that a step of min_step would land on too (its retry
        # would be this very step again).
        at_floor = not accept and min_step > 0 and (dt_abs <= min_step or min(1.1 * min_step, max_step) >= remaining)
        if at_floor and accept_at_min:
            # torchdiffeq 0.2.5 accepts every step of size <= min_step whatever its error.
            accept = True
            control = controller.accepted(s.control, h, ratio)
            if not warned_at_min:
                warned_at_min = True
                warnings.warn(
                    "options['at_min_step']='accept': a step at min_step was accepted with an error estimate above "
                    "rtol/atol (as torchdiffeq does); the solution is not within the tolerances there.",
                    RuntimeWarning,
                    stacklevel=2,
                )
        take.settle(accept)
        if not accept:
            stats.n_rejected += 1
            if on_reject is not None:
                problem.call_back(on_reject, t, y, h)
            if at_floor:
                raise SolverError(
                    f"Step rejected at the minimum step size (min_step={min_step:.3g}, error ratio {ratio:.3g})",
                    t,
                    h,
                    stats.n_steps,
                    "Lower options['min_step'] or loosen rtol/atol; options['at_min_step']='accept' accepts such "
                    "steps whatever their error, as torchdiffeq does.",
                )
            s = s._replace(f0=f0, dt=dt_next, control=control)
            continue
        stats.n_accepted += 1
        stats.last_step = h
        if stiffness is not None and stats.n_accepted + stats.n_rejected >= watch_from:
            stiffness.check(t, h, step.k, stats.n_steps)
        if on_accept is not None:
            problem.call_back(on_accept, t, y, h)
        t1 = t_stop if lands else t + h
        f1 = step.k[-1] if (fsal and not jump_here) else None
        # Hermite needs f(t1, y1); at a jump take the limit from inside the step. Built only
        # when something reads inside the step: a step that ends on its only output time (a
        # fixed grid on the output times) needs none.
        if (
            events
            or dense is not None
            or (i_out < n_out and times[i_out] != t1 and (times[i_out] - t1) * direction < 0)
        ):
            end_side = -1 if (jump_here or perturb) else 0  # f(t1, y1) from inside the step, as its stages
            interp = StepInterpolant(
                interp_kind, problem, tableau, t, y, f0, h, step, f1, t1, end_side, stage_func, s.f0_side
            )
        else:
            interp = None

        # 1. Events: locate every crossing in the step; cut at the first that ends the solve
        #    or resets the state (record-only events before it are kept).
        cut = None
        g1 = None
        ev_interp = interp
        if events:
            g1 = events.values(t1, step.y1)
            # Roots are found on the step's cubic Hermite interpolant where outputs interpolate linearly
            # (a fixed grid's default ``interp``): a root of the linear one is second-order in the step
            # whatever the method (rk4 at h = 0.01 on a free fall: 1.4e-5 in the event time; Hermite: 1e-16).
            # Its f(t1, y1) is the next step's first stage: one evaluation more only where an event cuts the step.
            ev_interp = interp.as_hermite() if interp.kind == "linear" else interp
            for loc in events.locate(s.g, g1, t, h, ev_interp, s.guard):
                event = events.events[loc.index]
                at_end = loc.theta == 1.0
                t_e = t1 if at_end else t + loc.theta * h
                y_e = step.y1 if at_end else ev_interp([loc.theta])[0]
                t_star, y_star = attach_event_gradient(
                    event, problem.time, problem.unflatten, problem, t_e, y_e, loc.element, t_dtype
                )
                records.append(
                    EventRecord(
                        t_star,
                        problem.unflatten(y_star),
                        loc.index,
                        unravel(loc.element, events.shapes[loc.index]),
                        event.terminal,
                    )
                )
                stats.n_events += 1
                if event.cuts:
                    cut = (loc, t_e, t_star, y_star)
                    if not event.terminal:
                        other = events.coincident(loc.index, s.g, t_e, y_e)
                        if other is not None:
                            raise coincident_resets_error(loc.index, other, t_e, h, stats.n_steps)
                    break
        t_piece = t1 if cut is None else cut[1]

        # 2. Output times inside the step, from one interpolant.
        if interp is None:
            if i_out < n_out and times[i_out] == t1:
                ys.append(step.y1)
                out_steps.append((h, stats.n_accepted))
                i_out += 1
        else:
            thetas = []
            while i_out < n_out and (times[i_out] - t_piece) * direction <= 0:
                tau = times[i_out]
                thetas.append(1.0 if tau == t1 else (tau - t) / h)
                out_steps.append((h, stats.n_accepted))
                i_out += 1
            if thetas:
                ys.extend(interp(thetas))
            if dense is not None:
                dense.add(t, h, interp, t_piece)

        # 3. The next state.
        if cut is None:
            f_next = None if (jump_here or perturb) else (f1 if interp is None else ev_interp.f1)
            side = 1 if (jump_here or perturb) else 0
            guard = 0.0
            if events:

                def f_end(f=f_next, y1=step.y1, side=side):
                    with torch.no_grad():
                        return f.detach() if f is not None else problem(t1, y1, side)

                g1, guard = events.start(t1, step.y1, f_end, direction, h, gs=g1)
            s = _State(
                t1,
                step.y1,
                f_next,
                side,
                dt_next,
                control,
                s.i_stop + (1 if lands else 0),
                g1,
                guard,
                step.memory,
            )
            continue
        loc, t_e, t_star, y_star = cut
        event = events.events[loc.index]
        if event.terminal:
            terminal = True
            break
        at_end = loc.theta == 1.0
        i_stop = s.i_stop + (1 if (lands and at_end) else 0)
        side = 1 if ((jump_here and at_end) or perturb) else 0
        y_new, f_new = apply_reset(problem, event, loc.index, t_e, t_star, y_star, side)
        # The elements that fired sit on their root: they take the sign they have a moment
        # later, so leaving the root (the ball rising from the floor) does not fire again.
        g_new, guard = events.start(t_e, y_new, lambda: f_new, direction, h, fired=(loc.index, loc.fired))
        series = reset_times.setdefault((loc.index, loc.element), [])
        series.append(t_e)
        check_accumulation(series, guard or events.guard(t_e, h), loc.index, h, stats.n_steps)
        # FSAL restarts at the new state; f_new serves as the first stage unless the next step
        # must differentiate through it.
        f0_next = None if (torch.is_grad_enabled() and y_new.requires_grad) else f_new
        s = _State(t_e, y_new, f0_next, side, dt_next, control, i_stop, g_new, guard)
    stats.next_step = s.dt
    return LoopResult(ys, out_steps, records, terminal)
