"""The public solvers: ``solve`` returns a :class:`Solution`; ``odeint`` returns its tensor.

``odeint(func, y0, t, rtol=1e-7, atol=1e-9, method="dopri5", options=None, event_fn=None)`` has
torchdiffeq 0.2.5's signature and meaning, so ``from neuralode import odeint`` replaces
``from torchdiffeq import odeint``; ``odeint_event`` and ``odeint_dense`` are torchdiffeq's too.
Differences on purpose:

* unknown options, methods and malformed inputs raise ``ValueError``/``TypeError`` naming the
  argument (torchdiffeq asserts, or only warns about unknown options);
* a failing solve raises :class:`SolverError` reporting ``t``, ``dt`` and the step count;
* the adaptive loop never steps past the last output time (torchdiffeq steps past it and
  interpolates back), so ``func`` is never evaluated outside ``[t[0], t[-1]]``;
* the default step-size controller is PI rather than I (see ``controller.py``);
* ``rk4`` is the classic Runge-Kutta method; torchdiffeq's ``rk4`` is Kutta's 3/8 rule,
  available here as ``rk4_38``;
* gradients with respect to ``t`` are the exact sensitivities of the ODE solution
  (``dL/dt_i = dL/dy(t_i) . f(t_i, y(t_i))`` and, for ``t_0``, minus the total gradient with
  respect to ``y0`` projected on ``f(t_0, y0)``), not the derivative of the discrete solver's
  step-size choices;
* ``odeint(..., event_fn=...)`` differentiates the event time itself (implicit function
  theorem), which torchdiffeq leaves to ``odeint_event``; event roots are located to the time
  resolution of the state's dtype, not to ``atol``; ``odeint_dense`` works for every method and
  returns a :class:`Solution` that is called like torchdiffeq's dense-output function.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast, overload

import torch

from . import fast
from .adjoint.recursive import solve_recursive
from .control.controller import ConstantController, StepSizeController, initial_step
from .control.norms import _ErrorNorm, _PrimalErrorNorm
from .counting import counted_by_solver
from .dense import DenseOutput
from .errors import SolverError
from .events.core import Event, EventSet, check_events
from .grid import InfiniteGrid
from .loop import no_event_found, solve_joint
from .methods.base import Method
from .methods.registry import DEFAULT_METHOD, METHODS, MethodRegistry, method_names, resolve
from .options import (
    AdaptiveOptions,
    FixedOptions,
    Options,
    ParsedOptions,
    _accepts_keyword,
    _check_state,
    _check_times,
    _check_tolerance,
    _check_tolerance_pair,
    _fixed_grid,
    _parse_options,
    _type_name,
    all_finite,
    check_method_dtype,
    check_tolerance_resolution,
    refuse_records,
)
from .problem import _Problem, check_step_callbacks
from .solution import Solution, SolverStats, TensorOrTuple

__all__ = ["DEFAULT_METHOD", "METHODS", "MethodRegistry", "method_names", "odeint", "solve"]
# Most stage times of a fixed grid created at once as tensors (see _Problem.cache_times).
CACHED_TIMES = 1 << 18

# The state argument has y0's layout (a tensor, or a tuple of tensors): a func written for one layout is
# called with that layout only, so its parameter type is left open rather than the union.
Func = Callable[[torch.Tensor, Any], TensorOrTuple]


class _OwnDriver(Protocol):
    """A method with ``capabilities.own_driver`` (``scipy_solver``): it runs the whole solve itself."""

    def run(
        self, func: Func, y0: TensorOrTuple, t: torch.Tensor, times: list[float] | None, rtol, atol, opts
    ) -> Solution: ...


_method = resolve  # a ``method`` argument -> its Method (methods.registry.resolve), under its older name


def forward_mode_active(*tensors: torch.Tensor) -> bool:
    """Whether forward-mode derivatives may be carried through a solve of these tensors: a ``torch.func``
    transform (``jvp``, ``jacfwd``, ``vmap``, ...) is running, or a ``torch.autograd.forward_ad`` dual level
    is open and one of ``tensors`` (the state, the times, ``func(t0, y0)``, which carries the tangents of
    parameters) is a dual tensor. Decided once per solve, so the plain solve pays nothing per step."""
    if torch._C._functorch.maybe_current_level() is not None:
        return True
    if torch.autograd.forward_ad._current_level < 0:
        return False
    return any(torch.autograd.forward_ad.unpack_dual(x).tangent is not None for x in tensors)


def functorch_active() -> bool:
    """Whether a ``torch.func`` transform (``jvp``, ``jacfwd``, ``vmap``, ...) is running."""
    return torch._C._functorch.maybe_current_level() is not None


def forward_mode_methods() -> list[str]:
    """The methods that carry ``torch.func`` transforms (``torch.func.jvp``, ``jacfwd``): those with
    ``capabilities.torch_func``, the explicit Runge-Kutta and Adams methods. Every method but those with a
    driver of their own (``scipy_solver``) carries ``torch.autograd.forward_ad`` dual tensors."""
    return [name for name, m in METHODS.items() if m.capabilities.torch_func]


def check_forward_mode(method: Method, jacobian_callable: bool = False) -> None:
    """Refuse a solve that cannot carry the forward-mode derivatives asked of it, before it starts.

    A method with its own driver (``scipy_solver``) integrates NumPy copies of the state, so no tangent reaches
    its result: refused inside a ``torch.func`` transform and whenever a ``torch.autograd.forward_ad`` dual level
    is open. A method without ``capabilities.torch_func`` (the implicit methods and ``auto`` form Jacobians by
    ``torch.autograd.grad`` on a leaf made with ``requires_grad_()``), or a user ``jacobian`` callable (which is
    differentiated in ``t`` the same way), is refused inside a ``torch.func`` transform, with the way that does
    work (dual tensors)."""
    if method.capabilities.own_driver:
        if functorch_active() or torch.autograd.forward_ad._current_level >= 0:
            raise TypeError(
                f"method={method.name!r} cannot carry forward-mode derivatives (torch.func.jvp/jacfwd or "
                "torch.autograd.forward_ad dual tensors): it integrates NumPy copies of the state. Use a "
                f"neuralode method; with torch.func: {', '.join(forward_mode_methods())}."
            )
        return
    if functorch_active() and (not method.capabilities.torch_func or jacobian_callable):
        raise TypeError(
            f"method={method.name!r} cannot run inside a torch.func transform (jvp, jacfwd, vmap): its Jacobian "
            "is formed by torch.autograd.grad, which torch.func transforms refuse. Use torch.autograd.forward_ad "
            "dual tensors for its forward-mode derivatives, or one of the methods that torch.func transforms "
            f"go through: {', '.join(forward_mode_methods())}."
        )


def _run(
    func: Func,
    y0: TensorOrTuple,
    t: torch.Tensor,
    times: list[float],
    *,
    rtol,
    atol,
    method: Method,
    opts: ParsedOptions,
    events: tuple[Event, ...],
    parts: tuple[torch.Tensor, ...] | None = None,
) -> Solution:
    """The solve behind every public entry point, on checked inputs. ``times`` are the output
    times as floats; the last may be ``±inf`` (run until a terminal event). ``parts``: the state's
    components as ``_check_state`` returned them, where the caller has checked ``y0`` already (the
    finiteness check is a host synchronisation; once per solve is enough)."""
    if method.capabilities.per_sample and opts.execution.per_sample:
        raise ValueError(
            "options['per_sample'] does not support torchdiffeq's event_fn interface; watch per-sample events "
            "with solve(..., events=[Event(...)], options={'per_sample': True}), or drop per_sample."
        )
    check_forward_mode(method, method.capabilities.implicit and callable(opts.jacobian))
    callbacks = check_step_callbacks(func, method)
    is_tuple = isinstance(y0, tuple)
    if parts is None:
        parts = _check_state(y0)
    rtol_v = _check_tolerance("rtol", rtol, parts, is_tuple)
    atol_v = _check_tolerance("atol", atol, parts, is_tuple)
    check_method_dtype(method, parts[0].dtype)
    if method.capabilities.adaptive:
        _check_tolerance_pair(rtol_v, atol_v)
        check_tolerance_resolution(rtol_v, atol_v, parts[0].dtype)
    stats = SolverStats()
    if len(times) == 1:
        ys = tuple(p.unsqueeze(0) for p in parts)
        return Solution(t, ys if is_tuple else ys[0], stats, method.name)

    problem = _Problem(func, parts, is_tuple, stats, callbacks)
    t0, t_end = times[0], times[-1]
    direction = 1.0 if t_end > t0 else -1.0
    problem.direction = direction
    problem.pass_perturb = opts.stops.perturb and _accepts_keyword(func, "perturb")
    side0 = 1 if (opts.stops.perturb and not method.capabilities.adaptive) else 0
    # A forward-mode tangent of t takes the same route as its gradient (the shift below is linear in t).
    needs_t_grad = t.requires_grad or forward_mode_active(t)
    y_start = problem.flatten(parts)
    if needs_t_grad:
        # The solve starts at the float t0; its dependence on the tensor t[0] enters through the state
        # it starts from: y_solve is the state at t0 of the solution through (t[0], y0), one explicit
        # midpoint step of zero length (eps = t[0] - t0 is 0 in value, so y_solve == y0 bit for bit).
        # A second-order step matches that solution to O(eps^3), so autograd gets its first and second
        # derivatives exactly: d y_solve / d t0 = -f and d2 y_solve / d t0^2 = f_y f - f_t, hence
        # d y(t_i) / d t_0 = -J(t_i, t_0) f(t_0, y0) and Hessian-vector products through t are right.
        # The inner evaluation needs only its value.
        with torch.no_grad():
            f_start = problem.first_call(t0, y_start, side0)
        eps = (t[0] - t[0].detach()).to(problem.t_dtype)
        t_mid = problem.time(t0, side0) + eps / 2
        f_mid = problem.at_time(t_mid, y_start - (eps / 2).to(y_start.dtype) * f_start, side0)
        y_solve = y_start - eps.to(y_start.dtype) * f_mid
        f0 = problem(t0, y_solve, side0)
    else:
        y_solve = y_start
        f0 = problem.first_call(t0, y_start, side0)

    # Forward mode: the Jacobians keep their tangents, the error norms measure primal values, and the
    # solve runs with autograd recording, which selects the out-of-place stage sums everywhere (the lean
    # paths for solves without autograd write into buffers with out= kernels, which forward mode refuses).
    forward = forward_mode_active(*parts, t, f0)
    problem.forward_mode = forward
    # options['checkpoints'] replaces backpropagation's graph by its own backward pass: only while autograd records.
    recursive = opts.checkpoints is not None and torch.is_grad_enabled() and not forward
    if opts.checkpoints is not None:
        refuse_with_checkpoints(events, forward)
    stops: InfiniteGrid | list[float]
    controller: ConstantController | StepSizeController
    if not method.capabilities.adaptive:
        assert isinstance(opts, FixedOptions)  # the options type of every fixed-step method derives from it
        if math.isinf(t_end):
            step_size = opts.control.step_size
            assert step_size is not None  # an event search on a fixed grid has one (_event_times checks it)
            stops = InfiniteGrid(t0, direction, step_size)
        else:
            grid = _fixed_grid(opts, times, func, y0, t)
            # Compiled chunks make their stage times as one tensor (compiled_chunks.py).
            # Cached only while the stage times are few: one 0-dim tensor per time would take far more
            # memory than the grid itself on a long grid, where creating each at its call costs little.
            c = method.tableau.c
            if len(grid) * len(c) <= CACHED_TIMES and not (
                opts.execution.compile
                and fast.compiled_chunks.can_chunk(
                    problem, method, opts, grid, events, True if opts.output.dense else None, None
                )
            ):
                problem.cache_times([g0 + ci * (g1 - g0) for g0, g1 in zip(grid, grid[1:]) for ci in c])
            stops = grid[1:]
        jumps: frozenset[float] = frozenset()
        controller = ConstantController()
        error = None
        dt0 = math.inf
    else:
        assert isinstance(opts, AdaptiveOptions)  # the options type of every adaptive method derives from it

        def inside(s: float) -> bool:
            return (s - t0) * direction > 0 and (t_end - s) * direction > 0

        at, ctl = opts.stops, opts.control
        stops = sorted({s for s in at.step_t + at.jump_t if inside(s)}, key=lambda s: s * direction) + [t_end]
        jumps = frozenset(at.jump_t)
        assert method.order is not None and method.error_order is not None  # every adaptive method has both
        k = min(method.order, method.error_order) + 1
        assert ctl.controller is not None  # parsed options fill it in (AdaptiveOptions.default_controller)
        controller = StepSizeController(ctl.controller, ctl.safety, ctl.ifactor, ctl.dfactor, k)
        error = (_PrimalErrorNorm if forward else _ErrorNorm)(problem, rtol_v, atol_v, ctl.norm)
        if ctl.first_step is not None:
            dt0 = direction * ctl.first_step
        else:
            dt0 = direction * initial_step(problem, t0, y_solve, f0, direction, method.order, error.scaled)

    event_set = None
    if events:
        event_set = EventSet(events, problem.time, problem.unflatten, stats, torch.finfo(problem.t_dtype).eps)
    dense = DenseOutput(direction, problem.unflatten, t0) if opts.output.dense else None
    config = method.step_config(opts, rtol_v, atol_v)
    # Under compile, a func that counts its own calls and lets the solver count them (counting.py) is counted from
    # stats.nfe: its count is a side effect a compiled graph cannot hold. (compile with checkpoints is refused.)
    counted = counted_by_solver(func, lambda: stats.nfe) if opts.execution.compile else contextlib.nullcontext()
    try:
        with torch.enable_grad() if forward else contextlib.nullcontext(), counted:
            # What the host clock's drivers take besides the state.
            clock = dict(
                method=method,
                opts=opts,
                stops=stops,
                jumps=jumps,
                controller=controller,
                dt0=dt0,
                error=error,
                stats=stats,
                t_dtype=t.dtype,
                method_config=config,
            )
            if recursive:  # the loop on a recording host clock, as one autograd node (adjoint/recursive.py)
                result = solve_recursive(func, problem, y_solve, f0, times, **clock)
            else:
                # A fast path first where the solve needs none of the loop's decisions (fast.choose); the
                # loop takes what it leaves: the whole solve, or the rest from where it stopped.
                path = fast.choose(problem, method, opts, stops, event_set, dense, error, config, f0)
                result, handover = fast.run(
                    path, problem, y_solve, f0, times, stops, method, opts, stats, dt0=dt0, error=error
                )
                if result is None:
                    result = solve_joint(
                        problem, y_solve, f0, times, events=event_set, dense=dense, handover=handover, **clock
                    )
    except SolverError as exc:
        if events and math.isinf(t_end):  # an event search that ended without its event
            raise no_event_found(exc, opts.max_num_steps) from exc
        raise
    n = len(result.ys)
    stacked = torch.stack(result.ys)
    if not method.capabilities.adaptive:
        # Fixed steps control no error, so a blow-up shows only in the states: one check at the
        # end rather than a host synchronisation per step.
        if not all_finite(stacked):
            i = int((~torch.isfinite(stacked.reshape(n, -1)).all(dim=1)).nonzero()[0])
            h, n_steps = result.out_steps[i - 1]
            raise SolverError(
                "Non-finite state",
                times[i],
                h,
                n_steps,
                "The solution blew up or func returned NaN/inf; try a smaller step_size or check func.",
            )
    if needs_t_grad:
        # y(t_0) does not depend on t_0; for i >= 1 the output is carried from the float t_i to the
        # tensor t[i] by a zero-length explicit midpoint step, as y_solve above: its first derivative
        # is f(t_i, y(t_i)) and its second f_t + f_y f, both with their graphs to y(t_i) and the
        # parameters (the inner evaluation needs only its value).
        if n > 1:
            with torch.no_grad():
                f_out = torch.stack([problem(ti, yi) for ti, yi in zip(times[1:n], result.ys[1:])])
            h_t = (t[1:n] - t[1:n].detach()).to(problem.t_dtype)
            f_mid = torch.stack(
                [
                    problem.at_time(problem.time(ti) + hi / 2, yi + (hi / 2).to(yi.dtype) * fi)
                    for ti, hi, yi, fi in zip(times[1:n], h_t, stacked[1:], f_out)
                ]
            )
            h_out = h_t.to(stacked.dtype).reshape(-1, *([1] * (stacked.dim() - 1)))
            stacked = torch.cat([y_start.unsqueeze(0), stacked[1:] + h_out * f_mid])
        else:
            stacked = y_start.unsqueeze(0)

    ys_out: TensorOrTuple
    if is_tuple:
        ys_out = tuple(c.reshape(n, *s) for c, s in zip(torch.split(stacked, problem.sizes, dim=1), problem.shapes))
    else:
        ys_out = stacked
    ts = t if n == len(times) else t[:n]
    # The solution gets a copy of the counters: the problem and the steppers keep counting into
    # ``stats`` whenever they run again, and with options['checkpoint'] backward re-runs every step
    # (measured: dopri5 38 evaluations forward, 74 after backward; rk4 40 -> 79; rodas5p's
    # Jacobians 16 -> 24), which would make the statistics describe forward plus recomputation.
    # options['checkpoint'] and ['checkpoints'] run backward passes of their own, counted apart (set by them).
    backward = problem.backward.stats if problem.backward is not None else None
    return Solution(ts, ys_out, dataclasses.replace(stats), method.name, backward, tuple(result.events), dense)


def refuse_with_checkpoints(events, forward: bool) -> None:
    """What ``options['checkpoints']`` does not combine with, refused where the solve starts: events (the
    recorded steps would be cut and reset at located times) and forward-mode derivatives (it is a reverse-mode
    technique)."""
    if events:
        raise ValueError(
            "options['checkpoints'] does not support events (events= or event_fn=); use backpropagation, "
            "options={'checkpoint': True} or odeint_adjoint for solves with events."
        )
    if forward:
        raise ValueError(
            "options['checkpoints'] stores states for the backward pass (reverse mode); it cannot carry forward-mode "
            "derivatives (torch.func.jvp, forward_ad dual tensors). Drop the option for forward mode."
        )


class _GradientModes:
    """Where ``solve(..., adjoint=...)`` and ``odeint(..., adjoint=...)`` send every mode but backpropagation.

    The modes are run by :mod:`~neuralode.solvers.adjoint.modes`, which is built on this module (the adjoints
    call :func:`solve` for their forward and backward solves); it installs its two entry points here when
    ``neuralode.solvers`` is imported, so the dependency runs one way and the default solve never looks at them.
    """

    solve: Callable[..., Solution] | None = None  # (adjoint, memory_budget, func, y0, t, **solve's keywords)
    odeint_event: Callable[..., Any] | None = None  # the same for torchdiffeq's event mode (event_fn=)


GRADIENT_MODES = _GradientModes()


def _gradient_modes() -> _GradientModes:
    if GRADIENT_MODES.solve is None or GRADIENT_MODES.odeint_event is None:  # neuralode.solvers imports them
        raise RuntimeError("neuralode.solvers.adjoint.modes is not imported; import neuralode first.")
    return GRADIENT_MODES


# The Solution's states follow y0's layout: a tensor for a tensor, a tuple for a tuple.
@overload
def solve(
    func: Func,
    y0: torch.Tensor,
    t: torch.Tensor,
    *,
    rtol: float | torch.Tensor | tuple = ...,
    atol: float | torch.Tensor | tuple = ...,
    method: str | None = ...,
    options: dict | Options | None = ...,
    events: Sequence[Event] | Event | None = ...,
    adjoint: str = ...,
    memory_budget: float | None = ...,
) -> Solution[torch.Tensor]: ...
@overload
def solve(
    func: Func,
    y0: tuple[torch.Tensor, ...],
    t: torch.Tensor,
    *,
    rtol: float | torch.Tensor | tuple = ...,
    atol: float | torch.Tensor | tuple = ...,
    method: str | None = ...,
    options: dict | Options | None = ...,
    events: Sequence[Event] | Event | None = ...,
    adjoint: str = ...,
    memory_budget: float | None = ...,
) -> Solution[tuple[torch.Tensor, ...]]: ...
@overload
def solve(
    func: Func,
    y0: TensorOrTuple,
    t: torch.Tensor,
    *,
    rtol: float | torch.Tensor | tuple = ...,
    atol: float | torch.Tensor | tuple = ...,
    method: str | None = ...,
    options: dict | Options | None = ...,
    events: Sequence[Event] | Event | None = ...,
    adjoint: str = ...,
    memory_budget: float | None = ...,
) -> Solution[TensorOrTuple]: ...
def solve(
    func: Func,
    y0: TensorOrTuple,
    t: torch.Tensor,
    *,
    rtol: float | torch.Tensor | tuple = 1e-7,
    atol: float | torch.Tensor | tuple = 1e-9,
    method: str | None = DEFAULT_METHOD,
    options: dict | Options | None = None,
    events: Sequence[Event] | Event | None = None,
    adjoint: str = "backprop",
    memory_budget: float | None = None,
) -> Solution[TensorOrTuple]:
    """Solve ``dy/dt = func(t, y)``, ``y(t[0]) = y0`` and report the solution at the times ``t``.

    Args:
        func: ``func(t, y) -> dy/dt``; ``t`` is a 0-dim tensor of the state's dtype, ``y`` and the
            result have ``y0``'s shape (or are tuples like ``y0``). A ``torch.nn.Module`` works.
            Methods ``callback_step``, ``callback_accept_step`` and ``callback_reject_step`` of
            ``func``, if present, are called as torchdiffeq calls them: ``(t0, y0, dt)`` before
            every step attempt and after every accepted / rejected adaptive step. Those the
            method never calls (accept and reject on a fixed grid; all three with
            ``scipy_solver`` or ``per_sample``) draw a ``UserWarning``, as in torchdiffeq; one it
            calls that cannot take ``(t0, y0, dt)`` is a ``TypeError`` before the solve.
        y0: initial state: a floating-point tensor of any shape, or a tuple of tensors sharing
            dtype and device.
        t: 1-D floating tensor of output times, strictly increasing or strictly decreasing
            (decreasing integrates backwards). ``t[0]`` is the initial time. With
            ``options={"per_sample": True}`` also ``(B, T)``: row ``i`` the times of sample ``i``
            (see :mod:`neuralode.solvers.per_sample`; ``func`` then gets ``t`` of shape ``(B,)``).
        rtol, atol: relative and absolute tolerances of adaptive methods: numbers, tensors
            broadcastable to the state, or for tuple states a tuple with one entry per tensor.
        method: a key of ``neuralode.METHODS``, which lists every name accepted (default ``"dopri5"``;
            ``None`` means the default).
        options: method options: torchdiffeq's dict (``{"max_step": 0.1}``), or the same as records by
            concern, :class:`~neuralode.solvers.options.Options` (``Options(control=StepControl(max_step=0.1))``);
            the keys each method takes are listed on its options type (:class:`AdaptiveOptions`,
            :class:`FixedOptions`, :class:`ImplicitOptions`).
        events: :class:`~neuralode.solvers.events.core.Event` objects to watch. Located events are
            listed in ``Solution.events``; a terminal one ends the solve and the output times
            after it are left out (``Solution.ts`` is shortened to the times reached).
        adjoint: how the solve is differentiated (:mod:`~neuralode.solvers.adjoint.modes`):
            ``"backprop"`` (the default: backpropagation through the solver), ``"checkpoint"``
            (``options={"checkpoint": True}``), ``"checkpoints"`` (``options={"checkpoints": "auto"}``),
            ``"backsolve"``, ``"interpolating"``, ``"gauss"`` (the adjoints of :func:`~neuralode.solve_adjoint`,
            the backward solve taking the forward method, tolerances and options), or ``"auto"``: one of
            these chosen from the problem's size and ``memory_budget``
            (:func:`~neuralode.solvers.adjoint.modes.choose_adjoint`). The adjoints differentiate
            ``func.parameters()``, so they need ``func`` to be a ``torch.nn.Module``.
        memory_budget: bytes that ``adjoint="auto"`` may hold for backward (a number >= 1); default
            half the free memory of the state's device (ignored by the other modes, but checked).

    Returns:
        A :class:`Solution` whose ``ys`` has shape ``(len(ts), *y0.shape)`` (a tuple for tuple
        states) and whose ``stats`` count evaluations and steps; with ``adjoint=`` other than
        ``"backprop"``, ``adjoint_choice`` says which mode ran and why.

    Raises:
        TypeError, ValueError: for malformed arguments; the message names the argument. Also
            ``ValueError`` when ``func`` changes its input ``y`` in place (detected by the
            tensor's version counter; ``y0`` itself is left unchanged).
        SolverError: when the solve fails (step size underflow, non-finite derivative, too many
            steps, state-resetting events accumulating at a finite time), reporting ``t``,
            ``dt`` and the step count.
    """
    if adjoint != "backprop" or memory_budget is not None:
        run = _gradient_modes().solve
        assert run is not None  # _gradient_modes checks it
        return run(
            adjoint, memory_budget, func, y0, t, rtol=rtol, atol=atol, method=method, options=options, events=events
        )
    if not callable(func):
        raise TypeError(f"func must be callable as func(t, y); got {_type_name(func)}.")
    parts = _check_state(y0)
    options = options_dict(options, method)
    per_sample = isinstance(options, dict) and options.get("per_sample", False) is not False
    times = None if per_sample else _check_times(t)  # per-sample mode takes (B, T) times too
    m = resolve(method)
    if not m.capabilities.events and check_events(events):
        raise ValueError(no_events(m))
    if m.capabilities.own_driver:
        check_forward_mode(m)
        check_step_callbacks(func, m)
        # cast: a method with capabilities.own_driver has run() (the loop's methods have none)
        return cast(_OwnDriver, m).run(func, y0, t, times, rtol, atol, _parse_options(options, m))
    opts = _parse_options(options, m)
    if per_sample:
        from .per_sample import solve_per_sample

        return solve_per_sample(func, y0, t, rtol=rtol, atol=atol, method=m, opts=opts, events=check_events(events))
    assert times is not None  # checked above, as every solve but a per-sample one
    return _run(func, y0, t, times, rtol=rtol, atol=atol, method=m, opts=opts, events=check_events(events), parts=parts)


def options_dict(options: Any, method: Any, argument: str = "options") -> dict | None:
    """``options`` given as :class:`~neuralode.solvers.options.Options`, in torchdiffeq's dict form for
    ``method`` (a name or a :class:`Method`), so that everything past the public boundary reads one form;
    a dict or ``None`` as it is; a bare concern record refused saying where it belongs."""
    if isinstance(options, Options):
        return options.as_dict(resolve(method), argument)
    if options is not None and not isinstance(options, dict):
        refuse_records(options, argument)
    return options


def no_events(method: Method) -> str:
    """The refusal of events for a method without ``capabilities.events``."""
    return f"method={method.name!r} does not handle events; use a neuralode method (e.g. 'dopri5')."


def event_mode(func, y0, t: torch.Tensor, method, options, event_fn):
    """torchdiffeq's event mode checked once for ``odeint`` and ``odeint_adjoint``: the method,
    its options, the times ``[t0, ±inf]`` and the one terminal event."""
    if not callable(func):
        raise TypeError(f"func must be callable as func(t, y); got {_type_name(func)}.")
    if not callable(event_fn):
        raise TypeError(f"event_fn must be callable as event_fn(t, y) -> tensor; got {_type_name(event_fn)}.")
    _check_state(y0)
    m = resolve(method)
    if not m.capabilities.events:
        raise ValueError(no_events(m))
    options = options_dict(options, m)
    opts = _parse_options(options, m)
    if not (isinstance(options, dict) and "max_num_steps" in options):
        opts = opts.replace_keys({"max_num_steps": EVENT_MAX_STEPS})
    return m, opts, _event_times(t, m, opts), (Event(event_fn, terminal=True),)


# The default step budget of an event search (torchdiffeq's event mode has no last time, so its
# budget is all that ends a search whose event never comes; torchdiffeq's is unbounded). An event
# search usually ends within tens to hundreds of steps (a bounce, a threshold); 2,000 bounds a
# search that never ends to seconds, and options['max_num_steps'] raises it.
EVENT_MAX_STEPS = 2_000


def with_event_budget(options: dict | None) -> dict | None:
    """``options`` with the event search's default ``max_num_steps`` unless it names its own."""
    if isinstance(options, dict) and "max_num_steps" in options:
        return options
    if options is not None and not isinstance(options, dict):
        return options  # refused with its message by the option parser
    return {**(options or {}), "max_num_steps": EVENT_MAX_STEPS}


def _event_times(t: torch.Tensor, method: Method, opts) -> list[float]:
    """torchdiffeq's event-mode times: ``t = [t0, t_dir]`` gives the start and the direction."""
    times = _check_times(t)
    if len(times) != 2:
        raise ValueError(
            f"With event_fn, t must hold exactly two times [t0, t_dir] (the start, and any later or "
            f"earlier time for the direction); got {len(times)} times. Use solve(..., events=[Event(...)]) "
            "to watch events while filling many output times."
        )
    if not method.capabilities.adaptive and opts.control.step_size is None:
        raise ValueError(
            f"Event handling with the fixed-step method {method.name!r} needs options['step_size'] "
            "(there is no last time to build a grid to), as in torchdiffeq."
        )
    return [times[0], math.copysign(math.inf, times[1] - times[0])]


def _event_result(sol: Solution, t: torch.Tensor, y0: TensorOrTuple):
    """``(event_t, solution)`` as torchdiffeq's ``odeint(..., event_fn=...)`` returns them."""
    record = sol.events[-1]
    ys: TensorOrTuple
    if isinstance(y0, tuple):
        ys = tuple(torch.stack([y[0], e]) for y, e in zip(sol.ys, record.y))
    else:
        ys = torch.stack([sol.ys[0], cast(torch.Tensor, record.y)])  # a tensor state's records hold tensors
    return record.t.to(t.dtype), ys


# The result follows y0's layout (a tensor for a tensor, a tuple for a tuple); event mode returns
# (event_t, solution) instead.
@overload
def odeint(
    func: Func,
    y0: torch.Tensor,
    t: torch.Tensor,
    *,
    rtol: float | torch.Tensor | tuple = ...,
    atol: float | torch.Tensor | tuple = ...,
    method: str | None = ...,
    options: dict | Options | None = ...,
    event_fn: None = None,
    adjoint: str = ...,
    memory_budget: float | None = ...,
) -> torch.Tensor: ...
@overload
def odeint(
    func: Func,
    y0: tuple[torch.Tensor, ...],
    t: torch.Tensor,
    *,
    rtol: float | torch.Tensor | tuple = ...,
    atol: float | torch.Tensor | tuple = ...,
    method: str | None = ...,
    options: dict | Options | None = ...,
    event_fn: None = None,
    adjoint: str = ...,
    memory_budget: float | None = ...,
) -> tuple[torch.Tensor, ...]: ...
@overload
def odeint(
    func: Func,
    y0: TensorOrTuple,
    t: torch.Tensor,
    *,
    rtol: float | torch.Tensor | tuple = ...,
    atol: float | torch.Tensor | tuple = ...,
    method: str | None = ...,
    options: dict | Options | None = ...,
    event_fn: Callable[[torch.Tensor, TensorOrTuple], torch.Tensor],
    adjoint: str = ...,
    memory_budget: float | None = ...,
) -> tuple[torch.Tensor, TensorOrTuple]: ...
def odeint(
    func: Func,
    y0: TensorOrTuple,
    t: torch.Tensor,
    *,
    rtol: float | torch.Tensor | tuple = 1e-7,
    atol: float | torch.Tensor | tuple = 1e-9,
    method: str | None = DEFAULT_METHOD,
    options: dict | Options | None = None,
    event_fn: Callable[[torch.Tensor, TensorOrTuple], torch.Tensor] | None = None,
    adjoint: str = "backprop",
    memory_budget: float | None = None,
) -> TensorOrTuple | tuple[torch.Tensor, TensorOrTuple]:
    """Solve an ODE and return the states at the times ``t``: a drop-in for torchdiffeq's ``odeint``.

    Same arguments, errors and defaults as :func:`solve`; returns ``solve(...).ys``, a tensor of
    shape ``(len(t), *y0.shape)`` or a tuple of them. Differentiable with respect to ``y0``,
    ``t`` and any parameters ``func`` uses, by backpropagation through the solver, and in forward
    mode: ``torch.autograd.forward_ad`` dual tensors with every method but ``scipy_solver``,
    ``torch.func.jvp``/``jacfwd`` with the explicit and Adams methods (:func:`forward_mode_methods`;
    the others raise ``TypeError``).

    With ``event_fn`` (torchdiffeq's event mode): ``t = [t0, t_dir]`` gives the start and the
    direction; the solve runs until the first sign change of any element of
    ``event_fn(t, y)`` and returns ``(event_t, solution)``, ``solution`` holding the states at
    ``t0`` and at ``event_t``. Both are differentiable (implicit function theorem), also with
    respect to ``t0`` and parameters of ``event_fn``. A search whose event never comes stops after
    ``options['max_num_steps']`` steps (default ``EVENT_MAX_STEPS`` = 2,000 in event mode) with a
    :class:`SolverError` saying that no event was found by the time reached.

    ``adjoint`` and ``memory_budget`` choose the gradient mode as for :func:`solve` (default ``"backprop"``,
    torchdiffeq's); in event mode ``"backprop"``, ``"checkpoint"`` and ``"backsolve"`` (the modes that handle
    events) are accepted.
    """
    if event_fn is None:
        return solve(
            func,
            y0,
            t,
            rtol=rtol,
            atol=atol,
            method=method,
            options=options,
            adjoint=adjoint,
            memory_budget=memory_budget,
        ).ys
    if adjoint != "backprop" or memory_budget is not None:
        run_event = _gradient_modes().odeint_event
        assert run_event is not None  # _gradient_modes checks it
        return run_event(
            adjoint, memory_budget, func, y0, t, event_fn, rtol=rtol, atol=atol, method=method, options=options
        )
    m, opts, times, events = event_mode(func, y0, t, method, options, event_fn)
    sol = _run(func, y0, t, times, rtol=rtol, atol=atol, method=m, opts=opts, events=events)
    return _event_result(sol, t, y0)


def odeint_event(
    func: Func,
    y0: TensorOrTuple,
    t0: torch.Tensor | float,
    *,
    event_fn: Callable[[torch.Tensor, TensorOrTuple], torch.Tensor],
    reverse_time: bool = False,
    odeint_interface: Callable | None = None,
    **kwargs,
):
    """Solve from ``t0`` until ``event_fn(t, y)`` changes sign: torchdiffeq's ``odeint_event``.

    Args:
        func, y0: as for :func:`odeint`.
        t0: the start time (a tensor; may require grad).
        event_fn: ``event_fn(t, y) -> tensor``; the first sign change of any element ends the solve.
        reverse_time: integrate backwards from ``t0``.
        odeint_interface: :func:`odeint` (default) or :func:`~neuralode.odeint_adjoint`.
        **kwargs: passed on (``rtol``, ``atol``, ``method``, ``options``, adjoint arguments).

    Returns:
        ``(event_t, solution)``: the event time and the states at ``t0`` and ``event_t``, both
        differentiable with respect to ``y0``, ``t0`` and the parameters.
    """
    if odeint_interface is None:
        odeint_interface = odeint
    if not isinstance(reverse_time, bool):
        raise TypeError(f"reverse_time must be True or False; got {reverse_time!r}.")
    if not isinstance(t0, torch.Tensor):
        if isinstance(t0, bool) or not isinstance(t0, (int, float)):
            raise TypeError(f"t0 must be a tensor or a number; got {_type_name(t0)}.")
        t0 = torch.tensor(float(t0), dtype=torch.float64)
    if t0.numel() != 1:
        raise ValueError(f"t0 must hold one time; got shape {tuple(t0.shape)}.")
    t0 = t0.reshape(-1)
    step = -1.0 if reverse_time else 1.0
    t = torch.cat([t0, t0.detach() + step])
    return odeint_interface(func, y0, t, event_fn=event_fn, **kwargs)


def odeint_dense(
    func: Func,
    y0: TensorOrTuple,
    t0: torch.Tensor | float,
    t1: torch.Tensor | float,
    *,
    rtol: float | torch.Tensor | tuple = 1e-7,
    atol: float | torch.Tensor | tuple = 1e-9,
    method: str | None = DEFAULT_METHOD,
    options: dict | Options | None = None,
) -> Solution:
    """Solve once over ``[t0, t1]`` and keep the dense output: torchdiffeq's ``odeint_dense``.

    Returns a :class:`Solution` (``ys`` at ``t0`` and ``t1``) that, like torchdiffeq's returned
    function, is called with times: ``sol(t)`` is ``sol.evaluate(t)``, the solution anywhere in
    ``[t0, t1]`` from every step's interpolant (the method's own continuous extension where it
    has one, cubic Hermite otherwise), at no further evaluation of ``func``.
    """

    def as_time(name: str, v) -> torch.Tensor:
        if isinstance(v, torch.Tensor):
            if v.numel() != 1:
                raise ValueError(f"{name} must hold one time; got shape {tuple(v.shape)}.")
            return v.reshape(1).to(torch.float64) if not v.is_floating_point() else v.reshape(1)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"{name} must be a tensor or a number; got {_type_name(v)}.")
        return torch.tensor([float(v)], dtype=torch.float64)

    ta, tb = as_time("t0", t0), as_time("t1", t1)
    t = torch.cat([ta, tb.to(ta.dtype)])
    options = options_dict(options, method)
    if options is not None and not isinstance(options, dict):
        raise TypeError(f"options must be a dict or None; got {_type_name(options)}.")
    return solve(func, y0, t, rtol=rtol, atol=atol, method=method, options={**(options or {}), "dense": True})
