"""The adjoint sensitivity method: gradients of an ODE solve in memory independent of its steps.

For ``dy/dt = f(t, y, θ)`` and a loss ``L`` of the outputs ``y(t_0) .. y(t_N)``, define the adjoint
``a(t) = dL/dy(t)``. Between output times it obeys (Pontryagin; Chen et al. 2018, eq. 4-5)::

    da/dt      = -a(t)ᵀ ∂f/∂y
    d(gθ)/dt   = -a(t)ᵀ ∂f/∂θ          with  dL/dθ = gθ(t_0)

solved backwards from ``a(t_N) = ∂L/∂y(t_N)`` together with ``y(t)`` itself (recomputed backwards,
restarted from the stored forward value at every output time). At each output time the adjoint
jumps by the direct gradient ``∂L/∂y(t_i)``. Time gradients are exact:
``dL/dt_i = ∂L/∂y(t_i) · f(t_i, y(t_i))`` for ``i >= 1`` and
``dL/dt_0 = -(a(t_0) - ∂L/∂y(t_0)) · f(t_0, y_0)``.

Design choices:

* One vector-Jacobian product per evaluation of the augmented dynamics:
  ``torch.autograd.grad(f, (y, *θ), -a)`` gives ``-aᵀ∂f/∂y`` and every ``-aᵀ∂f/∂θ`` at once.
* The augmented state is the tuple ``(y, a, *gθ)``, one entry per parameter tensor; parameters
  are never concatenated, only their gradient contributions are (once per evaluation, by the
  solver's tuple flattening).
* The seminorm (Kidger, Chen & Lyons 2021, "Hey, that's not an ODE"): the ``gθ`` components are
  pure quadratures that feed nothing back, so they are left out of the step-size error norm.
  This is **on by default** and typically cuts the backward evaluations by a third or more; opt
  out with ``adjoint_options={"norm": "full"}``. torchdiffeq's spelling
  ``adjoint_options={"norm": "seminorm"}`` is accepted too, and so is a norm of its own written
  for torchdiffeq (called on torchdiffeq's tuple ``(t, y, adj_y, *adj_params)``, rebuilt from the
  backward state; ``adjoint_options={"augmented_norm": fn}`` calls ``fn`` on that state itself).
* Every vector-Jacobian product of a backward solve with respect to ``adjoint_params`` (here,
  in the interpolating adjoint, and in the per-sample adjoint's quadrature and event maps)
  retains its graph. The path from ``func``'s output to a parameter is not always the
  evaluation's own: a tensor computed once outside ``func`` and closed over by it (the
  interpolation coefficients of a neural CDE, torchcde's pattern, whether the listed parameter
  is that tensor or the leaf it comes from; a weight ``w * mask`` formed once; an event level)
  puts autograd nodes on it that every evaluation, and every later solve, goes through. Freeing
  their saved tensors after the first product would make the second fail ("backward through the
  graph a second time"), so a leaf parameter needs the retaining as much as a non-leaf one.
  Nothing outlives the evaluation: its own nodes go with its output when the dynamics return,
  their saved tensors freed then instead of node by node during the product. One product's peak
  memory grows by at most one evaluation's saved activations, constant in the number of steps;
  backward times of an MLP adjoint (32-64-64-32, batch 256) stayed within run-to-run noise.
  torchdiffeq 0.2.5 retains there too.
* Only the output states are saved for backward: memory does not grow with the number of
  steps (the price is a second solve, backwards, whose ``y`` differs from the forward one by the
  solver's error; at tight tolerances adjoint and backprop gradients agree).
* Double backward (``create_graph=True``): the backsolve records its backward solve, the products
  taken at detached leaves and joined back to ``y``'s graph (:class:`_Reattach`), so the gradient
  is differentiable; the interpolating and per-sample adjoints and an implicit ``adjoint_method``
  refuse it (:func:`~neuralode.solvers.adjoint.common.refuse_double_backward`) instead of returning a
  wrongly differentiable gradient.
* Except with an implicit (stiff) ``adjoint_method``: re-solving ``y`` backwards is unstable for a
  stiff dissipative system, so there the default is the interpolating adjoint
  (:mod:`~neuralode.solvers.adjoint.interpolating`; ``adjoint_options={"interpolate": True | False}``
  chooses either way): the forward solve keeps its dense output (memory ``O(steps × stages)``)
  and the backward solve integrates only ``(a, *gθ)`` with ``y(t)`` read from it; or, with
  ``adjoint_options={"quadrature": True}``, the Gauss adjoint (:mod:`~neuralode.solvers.adjoint.gauss`),
  which integrates ``a`` alone and sums ``dL/dθ`` by quadrature over the backward steps.
* Under ``options={"compile": ...}`` (and no ``adjoint_options``, which would say the backward solve's own
  options) the backward solves are compiled as the forward one is, where their dynamics can be written with
  ``torch.func.vjp`` (:mod:`~neuralode.solvers.adjoint.traced`: ``func`` a ``torch.nn.Module`` differentiated
  with respect to its own parameters, no adjoint step callbacks, no ``create_graph``): each interval's backward
  solve then takes the device run (an adaptive ``dopri5``/``tsit5``/``bosh3`` backward method) or the
  compiled step. Elsewhere the backward solve keeps the eager dynamics, without ``compile``.

This module holds the entry points (:func:`solve_adjoint`, :func:`odeint_adjoint`), the checks and parsing
of the adjoint arguments, the backsolve adjoint and the events' adjoint. The arguments are checked once,
when the solve is called, into one frozen :class:`~neuralode.solvers.adjoint.common.AdjointConfig` that the
autograd Function carries to backward; it dispatches to :mod:`~neuralode.solvers.adjoint.interpolating` and
:mod:`~neuralode.solvers.adjoint.per_sample`, which share the interval sweep with it through
:mod:`~neuralode.solvers.adjoint.common` and never import this module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Literal, cast, overload

import torch

from ..api import _event_result, _run, event_mode, no_events, options_dict, solve, with_event_budget
from ..control.norms import seminorm, seminorm_a
from ..dense import DenseOutput, dense_tensors
from ..events.core import Event, apply_reset, attach_event_gradient, check_events, ravel
from ..methods.base import Method
from ..methods.registry import resolve
from ..options import (
    Options,
    _check_state,
    _check_times,
    _check_tolerance,
    _parse_options,
    _type_name,
    all_finite,
    time_dtype,
)
from ..problem import _Problem, adjoint_step_callbacks, check_step_callbacks
from ..solution import HeldStorages, Solution, SolverStats, TensorOrTuple, storage_bytes
from .common import (
    IN_BACKWARD,
    AdjointConfig,
    AdjointOptions,
    Flat,
    differentiated_params,
    interval_options,
    refuse_double_backward,
    sweep_intervals,
)
from .gauss import QuadratureRequest, gauss_backward, resolve_quadrature, split_quadrature
from .interpolating import interpolating_backward
from .per_sample import solve_adjoint_per_sample
from .traced import traced_dynamics


class _Reattach(torch.autograd.Function):
    """``outs`` computed from detached leaves, joined again to the tensors they were detached from.

    In a recorded backward solve (``create_graph=True``) the state ``y`` (and the clock ``t``) carry
    a graph back to the saved outputs and through them to the parameters, so
    ``torch.autograd.grad(f, (y, *θ))`` on ``y`` itself would follow the path through ``y`` too and
    return the total derivative instead of ``∂f/∂θ`` (and run this backward again, recursively).
    The products are therefore taken at leaves ``y_d = y.detach()``: ``outs = (f, -aᵀ∂f/∂y,
    -aᵀ∂f/∂θ)`` have graphs to ``y_d``, ``a`` and ``θ`` only. This function returns ``outs``
    unchanged, passes their cotangents on to those graphs, and sends ``y`` what reaches ``y_d``:
    ``(∂outs/∂y_d)ᵀ g``, one backward through the products' recorded graph. The backward through
    the recorded solve (the second derivative) thus reaches ``y``'s own graph as the chain rule says.
    """

    @staticmethod
    def forward(ctx, n_src: int, *tensors: torch.Tensor):
        ctx.n_src = n_src
        ctx.save_for_backward(*tensors[n_src:])  # the leaves, then the outputs
        return tuple(o.view_as(o) for o in tensors[2 * n_src :])

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        n = ctx.n_src
        saved = ctx.saved_tensors
        leaves, outs = saved[:n], saved[n:]
        pairs = [(o, g) for o, g in zip(outs, grads) if g is not None and o.requires_grad]
        wanted = [k for k, leaf in enumerate(leaves) if leaf.requires_grad and ctx.needs_input_grad[1 + k]]
        src: list[torch.Tensor | None] = [None] * n
        if pairs and wanted:
            found = torch.autograd.grad(
                [o for o, _ in pairs],
                [leaves[k] for k in wanted],
                [g for _, g in pairs],
                allow_unused=True,
                retain_graph=True,
                create_graph=torch.is_grad_enabled(),
            )
            for k, g in zip(wanted, found):
                src[k] = g
        return (None, *src, *(None,) * n, *grads)


@dataclasses.dataclass
class _ForwardRun:
    """The forward solve of one :class:`_AdjointSolve`: its outputs ``ys`` (flat, time first) and counters.

    Given ``ys`` (a stretch between events, whose states the solve with events has found already), the
    Function returns them; given none, it solves and fills both in. An autograd Function returns tensors
    only, so the counters come back here; and ``ys`` travels here rather than as an argument so that
    autograd sees it as an output of the Function, not as an input: the recorded backward solve
    (``create_graph=True``) restarts ``y`` from the saved outputs, and the second derivative must flow
    through them back into the Function.
    """

    ys: torch.Tensor | None = None
    stats: SolverStats | None = None


class _AdjointSolve(torch.autograd.Function):
    """Forward: an ordinary solve without a graph (or the given states of one). Backward: the adjoint ODE,
    interval by interval, as ``cfg`` (:class:`~neuralode.solvers.adjoint.common.AdjointConfig`) says."""

    @staticmethod
    def forward(
        ctx, cfg: AdjointConfig, run: _ForwardRun, y0: torch.Tensor, t: torch.Tensor, *params: torch.Tensor
    ) -> torch.Tensor:
        if run.ys is None:
            options = {**(cfg.options or {}), "dense": True} if cfg.interpolate else cfg.options
            with torch.no_grad():
                sol = solve(
                    cfg.func,
                    cfg.flat.unflatten(y0),
                    t.detach(),
                    rtol=cfg.rtol,
                    atol=cfg.atol,
                    method=cfg.method,
                    options=options,
                )
            assert isinstance(sol.stats, SolverStats)  # the host clock's solve (per-sample solves are apart)
            run.ys, run.stats = cfg.flat.flatten_series(sol.ys), sol.stats
            if cfg.interpolate:  # the backward solve reads y(t) from the forward solve's interpolants
                # asked for by options["dense"] above, on the one clock (the per-sample adjoint is apart)
                assert isinstance(sol.dense, DenseOutput)
                cfg = dataclasses.replace(cfg, dense=sol.dense.hermite())
        ctx.cfg = cfg
        ctx.save_for_backward(t, run.ys)
        return run.ys

    @staticmethod
    def backward(ctx, grad_ys: torch.Tensor):
        cfg = ctx.cfg
        t, ys = ctx.saved_tensors
        if not all_finite(grad_ys):
            # The adjoint ODE starts from these values: solving it would fail inside the backward
            # solve and blame func for a NaN that the loss produced.
            bad = (~torch.isfinite(grad_ys.detach().reshape(grad_ys.shape[0], -1)).all(dim=1)).nonzero()
            i = int(bad[0]) if bad.numel() else 0
            raise ValueError(
                f"The gradient reaching odeint_adjoint's output contains NaN or inf (the output at t[{i}] = "
                f"{float(t[i]):.8g}): the loss, or what was computed from the solution, produced it, not func. "
                "Check the loss (e.g. log or sqrt of non-positive values, a division by zero); "
                "torch.autograd.detect_anomaly() names the operation."
            )
        if cfg.dense is not None:
            if cfg.quadrature_nodes:
                refuse_double_backward("Gauss adjoint (adjoint_options['quadrature']=True)")
            else:
                refuse_double_backward("interpolating adjoint (adjoint_options['interpolate']=True)")

            need_t = ctx.needs_input_grad[3]
            backward = gauss_backward if cfg.quadrature_nodes else interpolating_backward
            # Held for this pass: the saved outputs and the forward solve's dense-output tables, then the
            # backward state each interval carries (noted by the interval solves).
            held = HeldStorages()
            held.add(t, ys, dense_tensors(cfg.dense))
            a, t_grad, g_params = backward(cfg, t, ys, grad_ys, need_t, held)
            cfg.adjoint_stats.held_bytes = max(cfg.adjoint_stats.held_bytes, held.peak)
            g_params = tuple(
                compact((torch.real(g) if g.is_complex() and not p.is_complex() else g).to(p.dtype))
                for g, p in zip(g_params, cfg.params)
            )
            return (None, None, a, t_grad.to(t.dtype) if need_t else None, *g_params)
        flat = cfg.flat
        func = cfg.func
        params = cfg.params
        stats = cfg.adjoint_stats
        acc_dtype = ys.dtype
        times = t.detach().to("cpu", torch.float64).tolist()

        def f_flat(tt: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return flat.flatten(func(tt, flat.unflatten(y)))

        # An implicit backward method (adjoint_method="rodas5p") differentiates the augmented dynamics
        # itself, for its Jacobian: then they are built with a graph (create_graph, nothing detached).
        stiff_backward = cfg.backward_method.capabilities.implicit
        # Under create_graph=True (grad mode on in backward) the backward solve is itself recorded:
        # every vector-Jacobian product keeps its graph (create_graph), y is not detached from the
        # saved outputs, and the solver's steps are ordinary autograd operations, so the returned
        # gradient is differentiable and its derivative is the exact one of the computed gradient
        # (backpropagation through the backward solve). Memory then grows with its steps.
        differentiable = torch.is_grad_enabled()
        if differentiable and stiff_backward:
            refuse_double_backward(f"backsolve adjoint with the implicit adjoint_method={cfg.adjoint_method!r}")
        graph = stiff_backward or differentiable

        def augmented(tt: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            y, a = state[0], state[1]
            with torch.enable_grad():
                sources = None
                if differentiable and (y.requires_grad or tt.requires_grad):
                    # Partial derivatives at detached leaves, joined back afterwards (_Reattach).
                    sources = (y, tt)
                    y = y.detach().requires_grad_(True)
                    tt = tt.detach().requires_grad_(True) if tt.requires_grad else tt
                elif not (graph and y.requires_grad):
                    y = y.detach().requires_grad_(True)
                f = f_flat(tt, y)
                if f.requires_grad:
                    # retain_graph: the path to a parameter may be shared (the module docstring).
                    # allow_unused: an input f does not depend on gets None (the stubs say Tensor).
                    vjps: tuple[torch.Tensor | None, ...] = torch.autograd.grad(
                        f, (y, *params), -a, allow_unused=True, retain_graph=True, create_graph=graph
                    )
                else:  # f depends on neither y nor any parameter (e.g. a forcing of t alone)
                    vjps = (None,) * (1 + len(params))
            # The quadratures are carried in the state's dtype (a tuple state has one dtype): a
            # real parameter of a complex or lower-precision state is cast back at the end.
            vjp_params = tuple(
                torch.zeros_like(p, dtype=acc_dtype) if g is None else g.to(acc_dtype) for g, p in zip(vjps[1:], params)
            )
            vjp_y = torch.zeros_like(y) if vjps[0] is None else vjps[0]
            if sources is not None:
                return _Reattach.apply(2, *sources, y, tt, f, vjp_y, *vjp_params)
            return (f if graph else f.detach(), vjp_y, *vjp_params)

        # torchdiffeq's adjoint callbacks: func.callback_step_adjoint etc. are called during the
        # backward solve as the forward callbacks are during the forward one.
        callbacks = adjoint_step_callbacks(func, cfg.backward_method)
        for name, callback in callbacks:
            setattr(augmented, name, callback)
        dynamics, backward_options = augmented, cfg.backward_options
        forward_compile = {k: v for k, v in (cfg.options or {}).items() if k in ("compile", "compile_steps")}
        if forward_compile.get("compile") and not cfg.adjoint_options.given and not graph and not callbacks:
            # A compiled forward solve (options["compile"]) compiles the backward one too, where its dynamics can be
            # written in a form torch.compile captures (adjoint/traced.py): func a module, the tensors differentiated
            # its parameters. Otherwise (or with adjoint_options given, which say the backward's options) the
            # backward solve is as the options say, with the eager dynamics.
            traced = traced_dynamics(func, params, flat)
            if traced is not None:
                dynamics, backward_options = traced, {**backward_options, **forward_compile}

        def f_at(i: int) -> torch.Tensor:
            if differentiable:  # dL/dt_i's own dependence on t_i, y_i and θ is recorded
                return f_flat(t[i].to(time_dtype(ys.dtype)), ys[i])
            with torch.no_grad():
                return f_flat(torch.full((), times[i], dtype=time_dtype(ys.dtype), device=ys.device), ys[i])

        adaptive = cfg.backward_method.capabilities.adaptive
        need_t = ctx.needs_input_grad[3]

        # Held for this pass: the saved outputs, then the backward state (y, a, *gθ) each interval returns.
        held = HeldStorages()
        held.add(t, ys)

        def solve_interval(i, span, a, g_params, first_step):
            sol = solve(
                dynamics,
                (ys[i], a, *g_params),
                span,
                rtol=cfg.adjoint_rtol,
                atol=cfg.adjoint_atol,
                method=cfg.adjoint_method,
                options=interval_options(backward_options, adaptive, first_step),
            )
            held.note(storage_bytes(sol.ys))
            return sol.ys[1][-1], tuple(g[-1] for g in sol.ys[2:]), sol.stats

        g_params = tuple(torch.zeros_like(p, dtype=acc_dtype) for p in params)
        token = IN_BACKWARD.set(True)
        try:
            a, t_grad, g_params = sweep_intervals(
                times, grad_ys, g_params, t, need_t, f_at, stats, solve_interval, stiff_backward, differentiable
            )
        finally:
            IN_BACKWARD.reset(token)
        stats.held_bytes = max(stats.held_bytes, held.peak)
        g_params = tuple(
            compact((torch.real(g) if g.is_complex() and not p.is_complex() else g).to(p.dtype))
            for g, p in zip(g_params, params)
        )
        return (None, None, a, t_grad.to(t.dtype) if need_t else None, *g_params)


def compact(g: torch.Tensor) -> torch.Tensor:
    """``g`` in a storage of its own where it is a view into a larger one. The backward solve's state is one
    stacked tensor per output time (``(y, a, *gθ)`` at both ends of the interval), so the parameter gradients it
    returns are views of that stack; autograd would keep such a view as ``p.grad`` as it is, and with it the whole
    stack (every parameter's gradient at both ends: about twice their bytes) for as long as the gradients live."""
    return g.clone() if g.untyped_storage().nbytes() > g.nbytes else g


def _adjoint_tolerance(name: str, tol: Any, n_params: int, parts: tuple[torch.Tensor, ...], is_tuple: bool):
    """A forward tolerance carried over to the augmented state (y, a, *gθ)."""
    _check_tolerance(name, tol, parts, is_tuple)  # refused under its own name (adjoint_rtol, not rtol)
    if is_tuple and isinstance(tol, (tuple, list, torch.Tensor)):
        # The backward solve sees a tuple state flattened into one vector: give it the
        # tolerance in that layout (a float, or one flat tensor), checked as solve checks it.
        tol = _check_tolerance(name, tol, parts, is_tuple)
    if isinstance(tol, (tuple, list)) or isinstance(tol, torch.Tensor):
        # Per-element tolerances of y apply to y and a alike; the quadratures get the loosest
        # value (the seminorm ignores them by default anyway).
        if isinstance(tol, (tuple, list)):
            flat = torch.cat([torch.as_tensor(x, dtype=torch.float64).reshape(-1) for x in tol])
        else:
            flat = tol.detach().reshape(-1).double()
        loosest = float(flat.max())
        return tol, tol, *([loosest] * n_params)
    return tol


class _TorchdiffeqNorm:
    """A norm written for torchdiffeq's adjoint (``adjoint_options={"norm": fn}``), called on
    neuralode's backward state.

    torchdiffeq 0.2.5 integrates backwards the augmented state ``(t, y, adj_y, *adj_params)``, ``t``
    being the 0-dim accumulator of ``dL/dt_0``, and calls a user's adjoint norm with ONE argument,
    that tuple (the scaled error estimate, or a scaled state in the initial-step heuristic), with
    ``y`` and ``adj_y`` each split into the parts of a tuple state: ``(t, *y, *adj_y, *adj_params)``.
    neuralode's backward state is ``(y, a, *gθ)`` (``y`` and ``a`` flat for a tuple state), or
    ``(a, *gθ)`` for the interpolating adjoint; this wrapper hands ``fn`` torchdiffeq's tuple built
    from it. Two entries are zeros of their shapes: ``t`` always (neuralode does not integrate
    ``dL/dt_0``: it is computed in closed form after the solve, so it has no error to control;
    torchdiffeq integrates it whenever ``func`` depends on ``t``, even when ``t`` does not require
    grad, so there a norm that reads ``t`` takes more steps than here), and ``y`` when
    interpolating (read from the forward solve's dense output, not integrated).
    ``adj_params`` holds one tensor per distinct parameter that requires grad, in the order of
    ``adjoint_params``.
    """

    def __init__(self, fn: Callable, flat: Flat, interpolating: bool = False):
        self.fn = fn
        self.flat = flat
        self.interpolating = interpolating
        self.called = False

    def _parts(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # cast: a tuple state unflattens to the tuple of its parts
        return cast(tuple[torch.Tensor, ...], self.flat.unflatten(x)) if self.flat.is_tuple else (x,)

    def __call__(self, state: tuple[torch.Tensor, ...]):
        if self.interpolating:
            a, *g = state
            y = torch.zeros_like(a)
        else:
            y, a, *g = state
        args = (a.new_zeros(()), *self._parts(y), *self._parts(a), *g)
        if self.called:
            return self.fn(args)
        # A norm written for another form (neuralode 0.1.0's, the backward state itself) fails on
        # its first call, on shapes or on unpacking; later failures are the norm's own.
        try:
            value = self.fn(args)
        except (TypeError, ValueError, IndexError, RuntimeError) as exc:
            form = "(t, *y, *adj_y, *adj_params)" if self.flat.is_tuple else "(t, y, adj_y, *adj_params)"
            message = (
                f"adjoint_options['norm'] failed ({type(exc).__name__}: {exc}). It is called as torchdiffeq "
                f"calls an adjoint norm: with one tuple {form}, t of shape (), y and adj_y shaped as y0"
                f"{' (its parts)' if self.flat.is_tuple else ''}, one entry per parameter. A norm written for "
                "the backward solve's own state (y, a, *param_grads), neuralode 0.1.0's form, goes in "
                "adjoint_options['augmented_norm'] instead."
            )
            try:
                error = type(exc)(message)
            except Exception:  # an exception type that needs more than a message
                error = TypeError(message)
            raise error from exc
        self.called = True
        return value


def parse_adjoint_options(options: dict | None, adjoint_options: dict | None) -> AdjointOptions:
    """``adjoint_options`` (by default ``options`` without ``norm``, ``compile`` and ``compile_steps``)
    checked and parsed into :class:`~neuralode.solvers.adjoint.common.AdjointOptions` (see
    :func:`solve_adjoint` for what each key means). The backward solve's own options (``first_step``,
    ``controller``, ...) are checked later, by :func:`_check_backward_options`, against its method."""
    solver, interpolate = _split_interpolate(adjoint_options)
    given = solver is not None
    if solver is None:
        # The backward solve's eager dynamics form a vector-Jacobian product with torch.autograd.grad, which
        # torch.compile does not trace in one graph: compile is left out here, and the backward pass adds it back
        # where it can write the dynamics in a traceable form (adjoint/traced.py).
        solver = {k: v for k, v in (options or {}).items() if k not in ("norm", "compile", "compile_steps")}
    elif not isinstance(solver, dict):
        raise TypeError(f"adjoint_options must be a dict or None; got {_type_name(solver)}.")
    solver = dict(solver)
    augmented_norm = solver.pop("augmented_norm", None)
    norm: Literal["seminorm", "full"] | Callable[[tuple[torch.Tensor, ...]], torch.Tensor] | None = None
    if augmented_norm is not None:
        if "norm" in solver:
            raise ValueError(
                "adjoint_options has both 'norm' and 'augmented_norm'; give one: 'norm' (torchdiffeq's form, "
                "norm((t, y, adj_y, *adj_params))) or 'augmented_norm' (norm((y, a, *param_grads)))."
            )
        if not callable(augmented_norm):
            raise TypeError(
                "adjoint_options['augmented_norm'] must be callable as norm((y, a, *param_grads)) -> scalar; "
                f"got {_type_name(augmented_norm)}."
            )
    else:
        norm = solver.pop("norm", None)
        if norm is not None and not (norm in ("seminorm", "full") if isinstance(norm, str) else callable(norm)):
            raise ValueError(
                "adjoint_options['norm'] must be 'seminorm' (the default), 'full' (the default of the interpolating "
                f"adjoint with an implicit method) or a callable; got {norm!r}."
            )
    return AdjointOptions(norm, augmented_norm, interpolate, solver, given)


def _backward_options(
    parsed: AdjointOptions, adaptive: bool, flat: Flat, interpolating: bool, full_by_default: bool = False
) -> dict:
    """The options of the backward solve: ``parsed.solver`` with the norm the solver calls on the
    backward state (none for the solver's default norm over the whole state). ``full_by_default``: the
    interpolating adjoint's backward state carries ``gθ`` and its method is implicit (below).

    The default norm. The backsolve adjoint leaves ``gθ`` out of the error norm (the seminorm; Kidger,
    Chen and Lyons 2021): ``gθ`` feeds back into nothing, and the steps that keep ``y`` and ``a`` accurate
    resolve the integrand ``aᵀ ∂f/∂θ(t, y)``, since ``y`` is integrated beside ``a`` under the same error
    control. The interpolating adjoint reads ``y`` from the forward solve's interpolants instead, so no
    error estimate sees ``y`` vary: a fast transient of ``y`` that the forward solve resolved with small
    steps lies inside one large backward step whenever ``a`` does not feel it, and the stages sample the
    integrand too coarsely there (``tests/test_gauss_adjoint.py``'s stiff problem: 1.9e-3 relative error in
    ``dL/dθ`` at rtol 1e-7). With an implicit backward method (the interpolating adjoint's default case)
    the default is therefore the full norm, which puts that quadrature's error estimate in the control
    (there: 3.8e-11; Robertson's kinetics: 4 % to 6 % more backward steps; a stiff neural ODE with 576
    parameters: none). An explicit backward method keeps the seminorm: its steps are bounded by the
    stability of the fast modes wherever they are, so a fast transient of ``y`` cannot hide in one step,
    and on a smooth problem the full norm only costs steps (an MLP: 18 against 11, the same gradient).
    The Gauss adjoint integrates ``dL/dθ`` by its own quadrature, split at the forward steps."""
    out = dict(parsed.solver)
    norm = parsed.norm
    if norm is None:
        norm = "full" if full_by_default else "seminorm"
    if parsed.augmented_norm is not None:
        out["norm"] = parsed.augmented_norm
    elif isinstance(norm, str):
        if norm == "seminorm" and adaptive:  # fixed-step methods control no error: no norm option
            out["norm"] = seminorm_a if interpolating else seminorm
    else:
        out["norm"] = _TorchdiffeqNorm(norm, flat, interpolating)
    return out


def _check_backward_options(options: dict, adjoint_method: str, explicit: bool) -> None:
    """Parse the backward solve's options now, so that a bad one is refused when ``odeint_adjoint`` is
    called (naming ``adjoint_options``) rather than when ``backward()`` runs."""
    try:
        _parse_options(options, resolve(adjoint_method))
    except (TypeError, ValueError) as exc:
        source = "adjoint_options" if explicit else "adjoint_options (by default options without 'norm')"
        raise type(exc)(f"{source}: {exc}") from None


def _split_interpolate(adjoint_options):
    """``(adjoint_options without "interpolate", the requested value or None)``."""
    if not isinstance(adjoint_options, dict) or "interpolate" not in adjoint_options:
        return adjoint_options, None
    rest = {k: v for k, v in adjoint_options.items() if k != "interpolate"}
    value = adjoint_options["interpolate"]
    if not isinstance(value, bool):
        raise TypeError(f"adjoint_options['interpolate'] must be True or False; got {value!r}.")
    return rest, value


def _resolve_interpolate(requested, forward: Method, backward: Method, y0_parts, events) -> bool:
    """Whether the backward solve reads ``y(t)`` from the forward dense output (see the docstring of
    :func:`solve_adjoint`): the default for an implicit (stiff) backward method, else the backsolve."""
    implicit = backward.capabilities.implicit
    if requested is None:
        return (
            bool(implicit)
            and not events
            and not forward.capabilities.own_driver
            and not (implicit and any(p.is_complex() for p in y0_parts))
        )
    if not requested:
        return False
    if events:
        raise ValueError(
            "adjoint_options['interpolate']=True is not supported with events (the forward interpolant "
            "jumps at resets); use adjoint_options['interpolate']=False (the backsolve adjoint) with events."
        )
    if forward.capabilities.own_driver:
        raise ValueError(
            "adjoint_options['interpolate']=True needs the forward solve's dense output, which method='scipy' "
            "does not keep; use a neuralode method for the forward solve or interpolate=False."
        )
    if implicit and any(p.is_complex() for p in y0_parts):
        raise ValueError(
            "adjoint_options['interpolate']=True with an implicit adjoint_method supports real states only; "
            "got a complex state. Use an explicit adjoint_method or interpolate=False."
        )
    return True


def _takes_norm(method: Method) -> bool:
    """Whether the backward solve's method takes a ``norm`` option (adaptive neuralode methods)."""
    return method.capabilities.adaptive and not method.capabilities.own_driver


def solve_adjoint(
    func: Callable[[torch.Tensor, Any], TensorOrTuple],
    y0: TensorOrTuple,
    t: torch.Tensor,
    *,
    rtol: float | torch.Tensor | tuple = 1e-7,
    atol: float | torch.Tensor | tuple = 1e-9,
    method: str | None = "dopri5",
    options: dict | Options | None = None,
    adjoint_rtol: float | torch.Tensor | tuple | None = None,
    adjoint_atol: float | torch.Tensor | tuple | None = None,
    adjoint_method: str | None = None,
    adjoint_options: dict | Options | None = None,
    adjoint_params: Sequence[torch.Tensor] | None = None,
    events: Sequence[Event] | Event | None = None,
) -> Solution:
    """Like :func:`~neuralode.solvers.api.solve`, differentiated by the adjoint method.

    Gradients flow to ``y0``, ``t`` and ``adjoint_params`` (default: ``func.parameters()``) by
    solving the adjoint ODE backwards; nothing per step is kept for backward. The returned
    ``Solution.adjoint_stats`` is filled in (summed over output intervals) when ``backward`` runs.

    With ``events``, the forward solve locates them once; the solution is then differentiated
    piecewise: one adjoint solve per stretch between events, joined at each event by the
    implicit-function gradient of its time and by the reset, so memory grows with the number
    of events, not of steps.

    Args:
        func, y0, t, rtol, atol, method, options, events: as for :func:`solve`.
        adjoint_rtol, adjoint_atol, adjoint_method: for the backward solve; default to the
            forward ones.
        adjoint_options: options of the backward solve; default to ``options`` without ``norm``.
            Its ``"norm"`` is ``"seminorm"`` (default: parameter gradients do not steer the step
            size), ``"full"`` (every component does, as torchdiffeq's default) or a norm written
            for torchdiffeq's adjoint: a callable of ONE argument, the tuple
            ``(t, y, adj_y, *adj_params)`` (``(t, *y, *adj_y, *adj_params)`` for a tuple state)
            of the scaled error of each component (``t`` of shape ``()``, ``y`` and ``adj_y``
            shaped as ``y0``, one entry per parameter that requires grad), returning a scalar.
            ``t`` is always 0 (``dL/dt_0`` is computed in closed form, not integrated) and ``y``
            is 0 when interpolating (read from the forward solve, not integrated). Or
            ``"augmented_norm"``: a callable on the backward solve's own state
            ``(y, a, *param_grads)`` (``y`` and ``a`` flat for a tuple state;
            ``(a, *param_grads)`` when interpolating), the form ``"norm"`` took in neuralode 0.1.0.
            Its ``"interpolate"``: ``True`` reads ``y(t)`` from the forward solve's kept dense
            output instead of re-solving it backwards (the default when ``adjoint_method`` is
            implicit, without events; refused with events, ``per_sample`` and ``method="scipy"``);
            ``False`` the backsolve (the default for explicit methods). With an implicit method
            the interpolating mode forms the backward Jacobian itself (no ``jacobian`` option).
            Its ``"quadrature"``: ``True`` selects the Gauss adjoint
            (:mod:`~neuralode.solvers.adjoint.gauss`): interpolating as above, but the backward solve
            integrates ``a`` alone and ``dL/dθ`` is a Gauss–Legendre quadrature over its steps
            (``"quadrature_nodes"``: nodes per step, default ``ceil(order / 2)`` of ``adjoint_method``);
            refused where the interpolating mode is, and with ``interpolate=False``. A ``"norm"`` in
            torchdiffeq's form then sees zeros for ``adj_params``; ``"augmented_norm"`` is called on ``(a,)``.
        adjoint_params: tensors to differentiate with respect to; required when ``func`` is not
            an ``nn.Module``. Tensors that do not require grad are skipped; unused ones get zeros.
            Parameters of event functions and resets get their gradients through autograd
            directly and need not be listed.

    Raises:
        TypeError, ValueError: as :func:`solve`, plus the adjoint arguments above.
    """
    if not callable(func):  # its signature is checked by the forward solve's first call
        raise TypeError(f"func must be callable as func(t, y); got {_type_name(func)}.")
    _check_state(y0)
    options = options_dict(options, method)
    adjoint_options = options_dict(adjoint_options, adjoint_method or method, "adjoint_options")
    refuse_checkpoints(options, adjoint_options)
    if isinstance(options, dict) and options.get("per_sample", False) is not False:
        adjoint_options, quadrature = split_quadrature(adjoint_options)
        if quadrature is not None:
            raise ValueError(
                "adjoint_options['quadrature']=True is not supported with options['per_sample']; leave it out "
                "(the per-sample adjoint re-solves y backwards)."
            )
        adjoint_options, interpolate = _split_interpolate(adjoint_options)
        if interpolate:
            raise ValueError(
                "adjoint_options['interpolate']=True is not supported with options['per_sample']; "
                "leave it out (the per-sample adjoint re-solves y backwards)."
            )

        return solve_adjoint_per_sample(
            func,
            y0,
            t,
            rtol=rtol,
            atol=atol,
            method=method,
            options=options,
            adjoint_rtol=adjoint_rtol,
            adjoint_atol=adjoint_atol,
            adjoint_method=adjoint_method,
            adjoint_options=adjoint_options,
            adjoint_params=adjoint_params,
            events=check_events(events),
        )
    times = _check_times(t)
    return _solve_adjoint(
        func,
        y0,
        t,
        times,
        rtol=rtol,
        atol=atol,
        method=method,
        options=options,
        adjoint_rtol=adjoint_rtol,
        adjoint_atol=adjoint_atol,
        adjoint_method=adjoint_method,
        adjoint_options=adjoint_options,
        adjoint_params=adjoint_params,
        events=check_events(events),
    )


def refuse_checkpoints(options, adjoint_options) -> None:
    """``options['checkpoints']`` is a way of backpropagating through the solve (``odeint``/``solve``): under the
    adjoint, whose gradients come from the backward solve, it would have no effect, so it is refused."""
    for name, given in (("options", options), ("adjoint_options", adjoint_options)):
        if isinstance(given, dict) and given.get("checkpoints") is not None:
            raise ValueError(
                f"{name}['checkpoints'] does not apply to odeint_adjoint: it bounds the states stored by "
                "backpropagation through odeint/solve, while the adjoint stores none; drop it, or call odeint with "
                "options={'checkpoints': K} for exact gradients of the discretised solve."
            )


def _solve_adjoint(
    func,
    y0,
    t,
    times,
    *,
    rtol,
    atol,
    method,
    options,
    adjoint_rtol,
    adjoint_atol,
    adjoint_method,
    adjoint_options,
    adjoint_params,
    events,
    mode: Literal["backsolve", "interpolating", "gauss"] | None = None,
) -> Solution:
    """:func:`solve_adjoint` on checked ``times`` (the last may be ``±inf`` in event mode). ``mode``: the adjoint
    that ``solve(..., adjoint=mode)`` asks for, as ``adjoint_options`` ``{"interpolate": False}``,
    ``{"interpolate": True}`` or ``{"quadrature": True}`` would, the backward options left at their default
    (the forward ``options``); ``None``: as ``adjoint_options`` says."""
    is_tuple = isinstance(y0, tuple)
    parts = _check_state(y0)
    forward = resolve(method)
    method = forward.name
    params = differentiated_params(func, adjoint_params)
    flat = Flat(parts, is_tuple)
    adjoint_method = method if adjoint_method is None else adjoint_method
    backward = resolve(adjoint_method)
    check_step_callbacks(func, backward, adjoint=True)
    adjoint_options, quadrature = split_quadrature(adjoint_options)
    parsed = parse_adjoint_options(options, adjoint_options)
    if mode is not None:
        parsed = dataclasses.replace(parsed, interpolate=mode != "backsolve")
        quadrature = QuadratureRequest(None) if mode == "gauss" else None
    nodes = resolve_quadrature(quadrature, parsed.interpolate, forward, backward, parts, events)
    interpolate = bool(nodes) or _resolve_interpolate(parsed.interpolate, forward, backward, parts, events)
    adjoint_rtol, adjoint_atol = (
        _adjoint_tolerance(
            name if value is None else f"adjoint_{name}",
            tol if value is None else value,
            len(params),
            parts,
            is_tuple,
        )
        for name, tol, value in (("rtol", rtol, adjoint_rtol), ("atol", atol, adjoint_atol))
    )
    full_by_default = interpolate and not nodes and backward.capabilities.implicit
    backward_options = _backward_options(parsed, _takes_norm(backward), flat, interpolate, full_by_default)
    if interpolate:
        # The backward state is (a, *gθ), without y ((a,) for the Gauss adjoint): y's tolerance entry goes,
        # and a user Jacobian of f does not apply (the backward one is formed by the adjoint itself).
        adjoint_rtol, adjoint_atol = (
            tol[1 : 2 if nodes else None] if isinstance(tol, tuple) else tol for tol in (adjoint_rtol, adjoint_atol)
        )
        backward_options = _without_jacobian(backward_options, backward, parsed.given)
    _check_backward_options(backward_options, adjoint_method, parsed.given)
    cfg = AdjointConfig(
        func=func,
        flat=flat,
        params=params,
        rtol=rtol,
        atol=atol,
        method=method,
        options=options,
        adjoint_rtol=adjoint_rtol,
        adjoint_atol=adjoint_atol,
        adjoint_method=adjoint_method,
        backward_method=backward,
        adjoint_options=parsed,
        backward_options=backward_options,
        adjoint_stats=SolverStats(),
        interpolate=interpolate,
        quadrature_nodes=nodes,
    )
    y0_flat = flat.flatten(y0)
    if not events:
        run = _ForwardRun()
        ys = _AdjointSolve.apply(cfg, run, y0_flat, t, *params)
        assert run.stats is not None  # the Function's forward solved (it was given no ys) and filled them in
        return Solution(t, flat.unflatten_series(ys), run.stats, method, cfg.adjoint_stats)
    if not forward.capabilities.events:
        raise ValueError(no_events(forward))
    return _adjoint_with_events(cfg, y0_flat, t, times, forward, options, events)


def _without_jacobian(options: dict, backward, given: bool) -> dict:
    """The interpolating adjoint's backward options: without ``jacobian`` and ``batch_dims``, which
    describe ``f``'s Jacobian, not that of the backward dynamics ``-J(y(t))ᵀ a``; refused when given
    explicitly for an implicit ``adjoint_method``, which would otherwise use them."""
    options = dict(options)
    for key in ("jacobian", "batch_dims"):
        if key in options:
            if given and backward.capabilities.implicit:
                raise ValueError(
                    f"adjoint_options[{key!r}] does not apply with adjoint_options['interpolate']=True: the "
                    "backward solve forms the Jacobian of the adjoint dynamics itself (-J(y(t))^T); remove it."
                )
            options.pop(key)
    return options


def _adjoint_with_events(
    cfg: AdjointConfig,
    y0_flat: torch.Tensor,
    t: torch.Tensor,
    times: list[float],
    method: Method,
    options,
    events: tuple[Event, ...],
) -> Solution:
    """The adjoint of a solve with events, stretch by stretch.

    The forward solve (no graph) fixes the event times and the states at the output times and
    events. Each stretch ``[s_k, e_k]`` between events is then one adjoint solve from its
    stored values (no second forward pass); at an event the implicit-function gradient is
    attached (:func:`~neuralode.solvers.events.core.attach_event_gradient`) and the reset applied
    with autograd, and the next stretch starts from the reset state, shifted as the solve
    restart at ``t*`` requires. A non-cutting event ends a stretch too: the next one continues
    from the same state, so only its record needs the event gradient.
    """
    flat = cfg.flat
    func, params = cfg.func, cfg.params
    opts = _parse_options(options, method)
    with torch.no_grad():
        fwd = _run(
            func,
            flat.unflatten(y0_flat.detach()),
            t.detach(),
            times,
            rtol=cfg.rtol,
            atol=cfg.atol,
            method=method,
            opts=opts,
            events=events,
        )
    stats = fwd.stats
    assert isinstance(stats, SolverStats)  # the host clock's solve: events run on it
    fwd_ys = flat.flatten_series(fwd.ys)  # (n_reached, ...)
    n_reached = fwd_ys.shape[0]
    direction = 1.0 if times[-1] > times[0] else -1.0
    helper = _Problem(
        func, tuple(flat.unflatten(y0_flat.detach())) if flat.is_tuple else (y0_flat.detach(),), flat.is_tuple, stats
    )

    records = []
    outputs = [y0_flat]  # differentiable states at the output times reached
    y_start = y0_flat
    t_start = None  # None: the stretch starts at the user's t[0]
    s_k = times[0]
    i_out = 1
    for record in list(fwd.events) + [None]:
        if record is None:
            if fwd.terminated or i_out >= n_reached:
                break
            end, end_state = times[n_reached - 1], None
        else:
            end, end_state = float(record.t), flat.flatten(record.y)
        # Output times inside the stretch (an output at the event itself belongs to it).
        j = i_out
        while j < n_reached and (times[j] - end) * direction <= 0:
            j += 1
        pieces_t = [t[:1] if t_start is None else torch.tensor([s_k], dtype=t.dtype, device=t.device)]
        rows = [y_start.detach()]
        out_at_end = j > i_out and times[j - 1] == end
        pieces_t.append(t[i_out:j])
        rows.extend(fwd_ys[i_out:j].unbind(0))
        if not out_at_end and end != s_k:
            pieces_t.append(torch.tensor([end], dtype=t.dtype, device=t.device))
            assert end_state is not None  # the stretch to the last output ends on that output
            rows.append(end_state)
        t_seg = torch.cat(pieces_t)
        if t_seg.numel() >= 2:
            ys_seg = _AdjointSolve.apply(cfg, _ForwardRun(torch.stack(rows)), y_start, t_seg, *params)
        else:
            ys_seg = y_start.unsqueeze(0)
        outputs.extend(ys_seg[1 : 1 + (j - i_out)].unbind(0))
        i_out = j
        if record is None:
            break
        event = events[record.index]
        y_e = ys_seg[-1]
        element = ravel(record.element, event.fn(helper.time(end), flat.unflatten(y_e.detach())).shape)
        t_star, y_star = attach_event_gradient(event, helper.time, flat.unflatten, helper, end, y_e, element, t.dtype)
        records.append(type(record)(t_star, flat.unflatten(y_star), record.index, record.element, record.terminal))
        if record.terminal:
            break
        if event.reset is not None:
            y_start = apply_reset(helper, event, record.index, end, t_star, y_star)[0]
        else:
            y_start = y_e
        s_k, t_start = end, end

    ys = torch.stack(outputs)
    ts = t if len(outputs) == len(times) else t[: len(outputs)]
    return Solution(ts, flat.unflatten_series(ys), stats, cfg.method, cfg.adjoint_stats, tuple(records))


# As for odeint: the result follows y0's layout; event mode returns (event_t, solution).
@overload
def odeint_adjoint(
    func: Callable[[torch.Tensor, Any], TensorOrTuple],
    y0: torch.Tensor,
    t: torch.Tensor,
    *,
    rtol: float | torch.Tensor | tuple = ...,
    atol: float | torch.Tensor | tuple = ...,
    method: str | None = ...,
    options: dict | Options | None = ...,
    event_fn: None = None,
    adjoint_rtol: float | torch.Tensor | tuple | None = ...,
    adjoint_atol: float | torch.Tensor | tuple | None = ...,
    adjoint_method: str | None = ...,
    adjoint_options: dict | Options | None = ...,
    adjoint_params: Sequence[torch.Tensor] | None = ...,
) -> torch.Tensor: ...
@overload
def odeint_adjoint(
    func: Callable[[torch.Tensor, Any], TensorOrTuple],
    y0: tuple[torch.Tensor, ...],
    t: torch.Tensor,
    *,
    rtol: float | torch.Tensor | tuple = ...,
    atol: float | torch.Tensor | tuple = ...,
    method: str | None = ...,
    options: dict | Options | None = ...,
    event_fn: None = None,
    adjoint_rtol: float | torch.Tensor | tuple | None = ...,
    adjoint_atol: float | torch.Tensor | tuple | None = ...,
    adjoint_method: str | None = ...,
    adjoint_options: dict | Options | None = ...,
    adjoint_params: Sequence[torch.Tensor] | None = ...,
) -> tuple[torch.Tensor, ...]: ...
@overload
def odeint_adjoint(
    func: Callable[[torch.Tensor, Any], TensorOrTuple],
    y0: TensorOrTuple,
    t: torch.Tensor,
    *,
    rtol: float | torch.Tensor | tuple = ...,
    atol: float | torch.Tensor | tuple = ...,
    method: str | None = ...,
    options: dict | Options | None = ...,
    event_fn: Callable[[torch.Tensor, TensorOrTuple], torch.Tensor],
    adjoint_rtol: float | torch.Tensor | tuple | None = ...,
    adjoint_atol: float | torch.Tensor | tuple | None = ...,
    adjoint_method: str | None = ...,
    adjoint_options: dict | Options | None = ...,
    adjoint_params: Sequence[torch.Tensor] | None = ...,
) -> tuple[torch.Tensor, TensorOrTuple]: ...
def odeint_adjoint(
    func: Callable[[torch.Tensor, Any], TensorOrTuple],
    y0: TensorOrTuple,
    t: torch.Tensor,
    *,
    rtol: float | torch.Tensor | tuple = 1e-7,
    atol: float | torch.Tensor | tuple = 1e-9,
    method: str | None = "dopri5",
    options: dict | Options | None = None,
    event_fn: Callable[[torch.Tensor, TensorOrTuple], torch.Tensor] | None = None,
    adjoint_rtol: float | torch.Tensor | tuple | None = None,
    adjoint_atol: float | torch.Tensor | tuple | None = None,
    adjoint_method: str | None = None,
    adjoint_options: dict | Options | None = None,
    adjoint_params: Sequence[torch.Tensor] | None = None,
) -> TensorOrTuple | tuple[torch.Tensor, TensorOrTuple]:
    """Drop-in for torchdiffeq's ``odeint_adjoint``: :func:`solve_adjoint` returning only ``ys``.

    With ``event_fn``, torchdiffeq's event mode as in :func:`~neuralode.solvers.api.odeint`:
    returns ``(event_t, solution)``, differentiated by the adjoint up to the event and by the
    implicit function theorem at it.

    Differences from torchdiffeq 0.2.5: the seminorm is on by default (torchdiffeq needs
    ``adjoint_options={"norm": "seminorm"}``); parameters that are unused get zero gradients; a
    custom ``adjoint_options["norm"]`` is called as torchdiffeq calls it, on
    ``(t, y, adj_y, *adj_params)``, but its ``t`` entry is always 0 (see :func:`solve_adjoint`).
    """
    options = options_dict(options, method)
    adjoint_options = options_dict(adjoint_options, adjoint_method or method, "adjoint_options")
    refuse_checkpoints(options, adjoint_options)
    kw: dict[str, Any] = dict(  # passed through to solve_adjoint
        rtol=rtol,
        atol=atol,
        method=method,
        options=options,
        adjoint_rtol=adjoint_rtol,
        adjoint_atol=adjoint_atol,
        adjoint_method=adjoint_method,
        adjoint_options=adjoint_options,
        adjoint_params=adjoint_params,
    )
    if event_fn is None:
        return solve_adjoint(func, y0, t, **kw).ys
    _, _, times, events = event_mode(func, y0, t, method, options, event_fn)
    kw["options"] = with_event_budget(options)
    sol = _solve_adjoint(func, y0, t, times, events=events, **kw)
    return _event_result(sol, t, y0)
