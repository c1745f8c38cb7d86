"""Fixed-grid explicit Runge-Kutta steps with nothing between them: the lean fixed grid.

On a fixed grid the integration loop (:func:`~neuralode.solvers.loop.integrate`) decides nothing
between steps: the constant controller accepts every step, each step ends on the next grid point,
and when the solve has no events, no torchdiffeq step callbacks, no dense output, no ``perturb``
and no checkpointing, a step is only its Runge-Kutta arithmetic and the output times it reaches.
For the small networks of many scientific Neural ODEs that arithmetic is a handful of eager
operations on a few dozen numbers, and the general loop's per-step Python (the state record, the
clipping rule, the controller call, the checks for events, callbacks and dense output, the
``StepResult`` and the func adapter's layers) cost more than the operations themselves.

:func:`run` takes those steps in one tight loop, with the same arithmetic in the same order as
:func:`~neuralode.solvers.methods.stepper.rk_step` and :func:`~neuralode.solvers.methods.stepper.combine`, so the
states are the same bits:

* stage ``i``: ``z_i = y + h sum_j a_ij k_j`` over the nonzero ``a_ij``, as one
  ``torch.add(y, k_j0, alpha=h a_ij0)`` followed by in-place ``add_`` on that fresh tensor when
  autograd is not recording (a chain of ``torch.add`` when it is, so the graph is the same);
  ``k_i = func(t_i, z_i)``, with ``t_i`` the time tensor cached for the whole grid
  (:meth:`~neuralode.solvers.problem._Problem.cache_times`), the user's ``func`` called directly;
* the update ``y1 = y + h sum_i b_i k_i`` in the same way (for FSAL tableaus the last stage's
  input);
* output times on grid points take ``y1`` itself; an output time strictly inside a step is
  filled by the loop's interpolant of that step
  (the method's :class:`~neuralode.solvers.methods.interpolants.StepInterpolant`), exactly as the general loop does.

The api chooses this path (:func:`~neuralode.solvers.fast.choose`) and runs it before the loop.
A step within rounding of its start (a ``grid_constructor`` grid with two points a few ulps apart)
ends the stretch: the api then hands the end state to the general loop
(:class:`~neuralode.solvers.solution.Handover`), which takes over with its own rule for such steps.
"""

from __future__ import annotations

import torch

from ..control.stepping import output_theta
from ..grid import TIME_EPS
from ..methods.interpolants import StepInterpolant
from ..methods.stepper import StepResult, step_plan
from ..methods.tableau import ButcherTableau
from ..problem import changed_in_place


def applies(problem, method, opts, error, events, dense, on_step, perturb, stops, method_config) -> bool:
    """Whether the solve is a fixed-grid explicit Runge-Kutta solve with nothing to watch between
    steps, which :func:`run` integrates with the same results as the general loop."""
    return (
        error is None
        and not events
        and dense is None
        and on_step is None
        and not perturb
        and method_config is None
        and isinstance(stops, list)
        and method.explicit_tableau is not None
        and not opts.execution.compile
        and not (opts.execution.checkpoint and torch.is_grad_enabled())
        and problem.plain
    )


def run(
    problem,
    y: torch.Tensor,
    f0: torch.Tensor | None,
    times: list[float],
    stops: list[float],
    tableau: ButcherTableau,
    interpolant: type[StepInterpolant],
    ys: list,
    out_steps: list,
):
    """Step from ``(times[0], y)`` across the grid ``stops`` until the last output time.

    Args:
        problem: the adapted right-hand side; its cached grid times are used, its ``func`` called.
        y, f0: the flat initial state and ``f(times[0], y)`` (``None``: evaluated here).
        times: the output times (floats); ``times[0]`` is the start.
        stops: the grid points after the start, ending with ``times[-1]``.
        tableau: an explicit method.
        interpolant: the method's interpolant (``method.interpolant(opts)``) for output times inside a step.
        ys, out_steps: the solve's output lists (``ys`` holds ``y0``), appended to.

    Returns:
        ``(t, y, f0, i_stop, i_out)``: where the stretch ended (``i_out == len(times)`` when the
        solve is done; else the general loop continues from this state, see
        :class:`~neuralode.solvers.solution.Handover`), ``f0`` the derivative there when it is
        known (FSAL, or evaluated by a cubic interpolant), else ``None``.
    """
    plan = step_plan(tableau)
    # Per stage i >= 1: (c_i, first nonzero (j, a_ij) or None, the remaining ones).
    stages = tuple((ci, row[0] if row else None, row[1:]) for ci, row in zip(plan.c, plan.rows))
    b0, b_rest = plan.b[0], plan.b[1:]
    fsal = plan.fsal
    func = problem.func
    watch = problem.watch  # check func's input for in-place changes (see problem.changed_in_place)
    stats = problem.stats
    cached = problem.times.get
    time = problem.time
    add = torch.add
    in_place = not torch.is_grad_enabled()
    eps4 = 4 * TIME_EPS
    t = times[0]
    n_out = len(times)
    i_out = 1
    next_out = times[1]
    direction = 1.0 if times[-1] > t else -1.0
    n_stops = len(stops)
    i_stop = 0
    n_steps = 0
    nfe = 0
    h = 0.0
    try:
        while i_out < n_out and i_stop < n_stops:
            t1 = stops[i_stop]
            dt_abs = abs(t1 - t)
            if dt_abs <= eps4 * abs(t):
                break  # a step within rounding of t: the general loop's rule applies
            h = direction * dt_abs
            k1 = f0
            if k1 is None:
                tt = cached(t)
                if watch:
                    version = y._version
                    k1 = func(time(t) if tt is None else tt, y)
                    if y._version != version:
                        raise changed_in_place("func(t, y)", t)
                else:
                    k1 = func(time(t) if tt is None else tt, y)
                nfe += 1
            k = [k1]
            z = y
            for ci, first, rest in stages:
                if first is None:
                    z = y
                else:
                    z = add(y, k[first[0]], alpha=first[1] * h)
                    if in_place:
                        for j, a in rest:
                            z.add_(k[j], alpha=a * h)
                    else:
                        for j, a in rest:
                            z = add(z, k[j], alpha=a * h)
                ts = t + ci * h
                tt = cached(ts)
                if watch:
                    version = z._version
                    k.append(func(time(ts) if tt is None else tt, z))
                    if z._version != version:
                        raise changed_in_place("func(t, y)", ts)
                else:
                    k.append(func(time(ts) if tt is None else tt, z))
            nfe += len(stages)
            if fsal:
                y1 = z
            else:
                y1 = add(y, k[b0[0]], alpha=b0[1] * h)
                if in_place:
                    for j, a in b_rest:
                        y1.add_(k[j], alpha=a * h)
                else:
                    for j, a in b_rest:
                        y1 = add(y1, k[j], alpha=a * h)
            n_steps += 1
            f1 = k[-1] if fsal else None
            if next_out == t1:
                ys.append(y1)
                out_steps.append((h, stats.n_accepted + n_steps))
                i_out += 1
                if i_out < n_out:
                    next_out = times[i_out]
            elif (next_out - t1) * direction < 0:
                # Output times inside the step: the general loop's interpolant of this step.
                step = StepResult(y1, None, tuple(k))
                interp = interpolant(problem, tableau, t, y, k1, h, step, f1, t1, 0, None)
                thetas = []
                while i_out < n_out and (times[i_out] - t1) * direction <= 0:
                    tau = times[i_out]
                    thetas.append(output_theta(tau, t, t1, h))
                    out_steps.append((h, stats.n_accepted + n_steps))
                    i_out += 1
                ys.extend(interp(thetas))
                f1 = interp.f1
                if i_out < n_out:
                    next_out = times[i_out]
            t, y, f0 = t1, y1, f1
            i_stop += 1
    finally:
        stats.nfe += nfe
        stats.n_accepted += n_steps
        if n_steps:
            stats.last_step = h
    return t, y, f0, i_stop, i_out
