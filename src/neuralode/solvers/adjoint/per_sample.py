"""The adjoint method on per-sample clocks, with ONE parameter-gradient vector.

Forward: :func:`~neuralode.solvers.per_sample.solve_per_sample` without a graph. Backward: one
per-sample solve from each sample's last time to its first, sample ``i`` on its own clock, of the
augmented state ``(y_i, a_i)`` (Chen et al. 2018)::

    dy_i/dt = f_i(t, y_i),        da_i/dt = -a_iᵀ ∂f_i/∂y_i,        dL/dθ = -∫ Σ_i a_iᵀ ∂f_i/∂θ dt

Every output time ``t_{i,j}`` is a stop of sample ``i``: its steps land there, ``y_i`` restarts from
the stored forward value and ``a_i`` jumps by ``∂L/∂y_i(t_{i,j})``; a sample never waits for
another at an output time (an interval-by-interval solve would make every interval as long as
its slowest sample's).

The parameter gradient is not part of the stepped state. A per-sample state would need ``B``
copies of it (``B x p``, what torchode's per-sample adjoint carries); but it feeds nothing back,
so the RK quadrature of one accepted step, ``Σ_i h_i Σ_j b_j (-a_{ij}ᵀ ∂f_i/∂θ)(stage j)``, is one
vector-Jacobian product over the step's stage graphs with sample ``i``'s cotangent at stage ``j``
scaled by ``b_j h_i`` and masked by its acceptance. Each stage costs one VJP for ``∂f/∂y``
(``retain_graph``), each step one more over all its stages for ``θ``. Because ``θ`` is outside
the state it never steers the step size: this is the seminorm (Kidger, Chen & Lyons 2021)
always; the error ratio is ``max(RMS(y_i err), RMS(a_i err))`` per sample.

The backward solve lands on the ``step_t`` of its options (``adjoint_options``, by default the
forward ``options``) inside each sample's span, as the forward one does.

Events. The forward solve locates every sample's events; the backward solve's stops are then,
per sample, its output times up to its end (its terminal event, or its last time) and its
event times, one grid padded with no-op stops to a common length. Each sample starts
backwards from its own end. Landing on one of its events, ``y_i`` restarts from the state
before the event and ``a_i`` is pulled back through the event map: the implicit-function
event time ``t*_i = t_i + δ_i`` (:meth:`~neuralode.solvers.events.per_sample.PerSampleEvents.attach_gradient`),
the state at it ``y*_i = y_i + f_i δ_i`` and the reset with its restart shift, one
vector-Jacobian product over the rows that landed, which also takes the cotangents of the
recorded event times and states (the joint adjoint joins its stretches by the same map). The
parameters it differentiates are ``adjoint_params``: tensors that event functions or resets
use get gradients only when listed there (unlike the joint adjoint, where autograd reaches
them directly).

Every attempt evaluates its first stage afresh (no FSAL), so that the stage graphs of an
attempt are exactly its own calls.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..options import _check_state, _check_times, _parse_options
from ..per_sample import (
    BatchFunc,
    PerSampleStats,
    RMSNorm,
    _Layout,
    _tolerance,
    check_options,
    integrate,
    solve_per_sample,
)
from ..problem import check_step_callbacks
from ..solution import Solution, storage_bytes
from .common import IN_BACKWARD, differentiated_params, refuse_double_backward


def _augmented(func, layout, params, quad, N: int):
    """The backward right-hand side on rows ``z = [y, a]``: ``(f(t, y), -aᵀ ∂f/∂y)``, each stage's
    graph and cotangent kept for the parameter quadrature (one vector-Jacobian product per step)."""

    def aug(tt: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        y, a = z[:, :N], z[:, N:]
        with torch.enable_grad():
            y = y.detach().requires_grad_(True)
            f = layout.flatten(func(tt, layout.unflatten(y)))
            (vjp_y,) = torch.autograd.grad(f, y, -a, retain_graph=bool(params), allow_unused=True)
        quad.stages.append((f, a.detach()))
        return torch.cat([f.detach(), torch.zeros_like(y) if vjp_y is None else vjp_y], 1)

    return aug


class _ParamQuadrature:
    """Accumulates ``dL/dθ`` over accepted steps: one VJP per step over the stage graphs
    (a :class:`~neuralode.solvers.per_sample.Quadrature`)."""

    def __init__(self, params, b: tuple[float, ...]):
        self.params = params
        self.b = b
        self.stages: list[tuple[torch.Tensor, torch.Tensor]] = []  # (f graph, a) of each call
        self.grads = [torch.zeros_like(p) for p in params]

    def begin(self) -> None:
        self.stages = []

    def end(self, accept: torch.Tensor, h: torch.Tensor, rows: torch.Tensor) -> None:
        if not self.params or not bool(accept.any()):
            self.stages = []
            return
        outs, cots = [], []
        for (f, a), bj in zip(self.stages, self.b):
            if bj == 0.0:
                continue
            w = torch.where(accept, bj * h, torch.zeros_like(h)).to(a.dtype)[:, None]
            outs.append(f)
            cots.append(-a * w)
        # retain_graph: the stage graphs may reach the parameters through nodes that outlive them
        # (neuralode.solvers.adjoint.backsolve's docstring); the stages themselves are dropped below.
        grads = torch.autograd.grad(outs, self.params, cots, allow_unused=True, retain_graph=True)
        for acc, g in zip(self.grads, grads):
            if g is not None:
                acc.add_(g)
        self.stages = []


@dataclass(frozen=True)
class PerSampleAdjointConfig:
    """What the backward solve of a per-sample adjoint needs, built once by :func:`solve_adjoint_per_sample`
    after every check and read, never changed, by the autograd Functions below."""

    func: Callable  # the user's func(t (B,), y): the augmented dynamics differentiate through it
    params: tuple[torch.Tensor, ...]  # the parameters whose gradients the quadrature accumulates
    layout: _Layout  # the state (tensor or tuple) as one (B, N) tensor
    times: torch.Tensor  # (B, T) float64 output times of the forward solve
    direction: float  # +1 or -1: the forward solve's direction (the backward solve runs the other way)
    method: Any  # the Method of the backward solve (adjoint_method, else the forward method)
    opts: Any  # its parsed options (AdaptiveOptions; per_sample as the forward solve's)
    rtol: Any  # tolerances of the augmented state [y, a]: a float or a (B, 2N) tensor
    atol: Any
    adjoint_stats: PerSampleStats  # the backward solve's counters, updated in place (Solution.adjoint_stats)

    @property
    def compact(self) -> bool:
        return self.opts.per_sample == "compact"


@dataclass(frozen=True)
class EventStops:
    """The forward solve's events as stops of the backward one (:func:`_stop_grid`), for
    :class:`_PerSampleEventAdjoint`."""

    events: Any  # the PerSampleEvents of the forward solve
    sizes: list[int]  # elements of each event function's value
    which: torch.Tensor  # (E,) the event each record fired
    element: torch.Tensor  # (E,) its element, ravelled
    grid: torch.Tensor  # (B, L) every sample's output and event times, in forward order
    out_idx: torch.Tensor  # (B, L) output index of each stop (-1: an event)
    ev_idx: torch.Tensor  # (B, L) record index of each stop (-1: an output)


class _PerSampleAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cfg: PerSampleAdjointConfig, forward: tuple, y0: torch.Tensor, *params: torch.Tensor):
        """``forward``: ``(ys,)``, the forward solve's states ``(T, B, N)``, returned as the output."""
        ctx.cfg = cfg
        (ys,) = forward
        ctx.save_for_backward(ys)
        return ys

    @staticmethod
    def backward(ctx, grad_ys: torch.Tensor):
        refuse_double_backward("per-sample adjoint (options['per_sample'])")
        cfg = ctx.cfg
        (ys,) = ctx.saved_tensors  # (T, B, N)
        layout = cfg.layout
        func, params, times = cfg.func, cfg.params, cfg.times
        T, B, N = ys.shape
        tableau = cfg.method.tableau
        stats = cfg.adjoint_stats
        quad = _ParamQuadrature(params, tableau.b)
        dtype = ys.dtype

        aug = _augmented(func, layout, params, quad, N)

        # One backward solve over every output time: each is a stop, landed on per sample, where
        # y restarts from its stored forward value and a jumps by ∂L/∂y there. Samples do not
        # wait for each other at output times.
        def jump(mask, i_next, rows, z):
            j = T - i_next  # landed on reversed index i_next - 1, forward index T - i_next
            new = torch.cat([ys[j, rows], z[:, N:] + grad_ys[j, rows]], 1)
            return torch.where(mask[:, None], new, z)

        a_end = _backward_solve(
            cfg, aug, lambda: torch.cat([ys[-1], grad_ys[-1]], 1), times, N, dtype, stats, quad, jump, (ys,)
        )
        return (None, None, a_end + grad_ys[0], *quad.grads)


def _backward_solve(
    cfg: PerSampleAdjointConfig, aug, start, grid: torch.Tensor, N: int, dtype, stats, quad, jump, saved: tuple
) -> torch.Tensor:
    """One per-sample backward solve of ``z = [y, a]`` over ``grid (B, L)`` reversed, landing on every stop
    (``jump`` restarts ``y`` and adds ``∂L/∂y`` to ``a`` there), from ``z = start()``; returns ``a`` at the
    start of each sample's span, before the first output's own ``∂L/∂y``. Everything, the start state
    included, runs as backward work (``in_adjoint_backward``); the backward step is kept for the next call.
    ``stats.held_bytes``: the tensors ``saved`` for backward, the backward state ``z`` (the states at the stops
    the solve returns) and the parameter-gradient sums."""
    token = IN_BACKWARD.set(True)
    try:
        z0 = start()
        fb = BatchFunc(aug, _Layout((z0,), False), dtype, stats)
        norm = RMSNorm([N, N], cfg.rtol, cfg.atol)
        out = integrate(
            fb,
            z0,
            grid.flip(1),
            -cfg.direction,
            method=cfg.method,
            opts=cfg.opts,
            norm=norm,
            stats=stats,
            compact=cfg.compact,
            quad=quad,
            on_land=jump,
            step_t=cfg.opts.step_t,
        )
    finally:
        IN_BACKWARD.reset(token)
    stats.next_step = out.next_dt
    stats.held_bytes = max(stats.held_bytes, storage_bytes(saved, z0, out.ys, quad.grads))
    return out.ys[-1][:, N:]


def solve_adjoint_per_sample(
    func,
    y0,
    t,
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
) -> Solution:
    """:func:`~neuralode.solvers.adjoint.backsolve.solve_adjoint` with ``options={"per_sample": True}``.

    Shapes as :func:`~neuralode.solvers.per_sample.solve_per_sample`. ``adjoint_options`` may
    set the backward solve's controller options; its ``norm`` is always the seminorm (the
    parameter gradient is not in the stepped state). Gradients flow to ``y0`` and the parameters,
    and with ``events`` through the recorded event times and states (event functions' and
    resets' tensors: only those in ``adjoint_params``).
    """
    from ..methods.registry import resolve

    forward = resolve(method)
    tableau = forward.tableau
    opts = _parse_options(options, forward)
    check_options(opts)
    if opts.dense:
        raise ValueError(
            "options['dense'] with options['per_sample'] is not supported by the adjoint yet; solve "
            "(backprop) keeps the dense output, or drop dense."
        )
    is_tuple = isinstance(y0, tuple)
    parts = y0 if is_tuple else (y0,)
    _check_state(y0, batch=True)
    B = parts[0].shape[0]
    times, direction = _check_times(t, B)
    params = differentiated_params(func, adjoint_params)
    layout = _Layout(parts, is_tuple)
    adj_method = forward if adjoint_method is None else resolve(adjoint_method)
    adj_tableau = adj_method.tableau
    if not adj_method.capabilities.adaptive:
        raise ValueError(f"adjoint_method must be adaptive with options['per_sample']; got {adj_tableau.name!r}.")
    adj_opts = (
        {k: v for k, v in (options or {}).items() if k != "norm"} if adjoint_options is None else dict(adjoint_options)
    )
    if "augmented_norm" in adj_opts:
        raise ValueError(
            "adjoint_options['augmented_norm'] is not supported with options['per_sample'] (its backward "
            "solve always uses the seminorm: the parameter gradient is not part of the stepped state); remove it."
        )
    if adj_opts.pop("norm", "seminorm") != "seminorm":
        raise ValueError(
            "adjoint_options['norm'] must be 'seminorm' with options['per_sample'] (the parameter "
            "gradient is not part of the stepped state)."
        )
    adj_opts.pop("first_step", None)  # the forward solve's first step is no guide backwards
    adj_opts["per_sample"] = opts.per_sample
    adj_parsed = _parse_options(adj_opts, adj_method)
    check_options(adj_parsed)
    check_step_callbacks(func, adj_tableau, per_sample=True, adjoint=True)

    def aug_tol(name, tol):
        v = _tolerance(name, tol, parts, layout)
        return v if not isinstance(v, torch.Tensor) else torch.cat([v, v], 1)

    with torch.no_grad():
        fwd = solve_per_sample(
            func,
            tuple(p.detach() for p in parts) if is_tuple else y0.detach(),
            t,
            rtol=rtol,
            atol=atol,
            method=forward,
            opts=opts,
            events=events,
        )
    if times.shape[1] == 1:
        return fwd
    adjoint_stats = PerSampleStats.zeros(B, parts[0].device)
    cfg = PerSampleAdjointConfig(
        func=func,
        params=params,
        layout=layout,
        times=times,
        direction=direction,
        method=adj_method,
        opts=adj_parsed,
        rtol=aug_tol(
            "adjoint_rtol" if adjoint_rtol is not None else "rtol", rtol if adjoint_rtol is None else adjoint_rtol
        ),
        atol=aug_tol(
            "adjoint_atol" if adjoint_atol is not None else "atol", atol if adjoint_atol is None else adjoint_atol
        ),
        adjoint_stats=adjoint_stats,
    )
    ys = torch.cat([p.reshape(times.shape[1], B, -1) for p in (fwd.ys if isinstance(fwd.ys, tuple) else (fwd.ys,))], 2)
    if events:
        return _with_events(cfg, ys, fwd, events, y0, t, times, direction, layout, parts, tableau, adjoint_stats)
    ys = _PerSampleAdjoint.apply(cfg, (ys,), layout.flatten(y0), *params)
    return Solution(t, layout.unflatten(ys), fwd.stats, tableau.name, adjoint_stats)


def _with_events(cfg, ys, fwd, events, y0, t, times, direction, layout, parts, tableau, adjoint_stats) -> Solution:
    """The per-sample adjoint of a solve with events (:class:`_PerSampleEventAdjoint`)."""
    from ..events.core import ravel
    from ..events.per_sample import PerSampleEventRecord, PerSampleEvents

    B, dtype, dev = parts[0].shape[0], parts[0].dtype, parts[0].device
    records = list(fwd.events)
    with torch.no_grad():
        y0d = tuple(p.detach() for p in parts) if layout.is_tuple else y0.detach()
        shapes = [e.fn(times[:, 0].to(dtype), y0d).shape[1:] for e in events]
    N = sum(layout.sizes)
    t_ev = torch.tensor([float(r.t) for r in records], dtype=dtype, device=dev)
    y_ev = (
        torch.stack([layout.flatten(_batch_of_one(r.y, layout.is_tuple))[0] for r in records])
        if records
        else torch.zeros(0, N, dtype=dtype, device=dev)
    )
    grid, out_idx, ev_idx = _stop_grid(times, direction, records, B)
    stops = EventStops(
        events=PerSampleEvents(events, layout.unflatten, layout.flatten, dtype),
        sizes=[max(math.prod(s), 1) for s in shapes],
        which=torch.tensor([r.index for r in records], dtype=torch.long, device=dev),
        element=torch.tensor([ravel(r.element, shapes[r.index]) for r in records], dtype=torch.long, device=dev),
        grid=grid,
        out_idx=out_idx,
        ev_idx=ev_idx,
    )
    ys, t_e, y_e = _PerSampleEventAdjoint.apply(cfg, stops, (ys, t_ev, y_ev), layout.flatten(y0), *cfg.params)
    out = [
        PerSampleEventRecord(
            torch.tensor(float(r.t), dtype=t.dtype) + (t_e[k] - t_e[k].detach()).to(t.dtype),
            _row_of(layout.unflatten(y_e[k : k + 1]), layout.is_tuple),
            r.index,
            r.element,
            r.terminal,
            r.sample,
        )
        for k, r in enumerate(records)
    ]
    return Solution(t, layout.unflatten(ys), fwd.stats, tableau.name, adjoint_stats, tuple(out))


def _batch_of_one(y, is_tuple):
    return tuple(p.unsqueeze(0) for p in y) if is_tuple else y.unsqueeze(0)


def _row_of(y, is_tuple):
    return tuple(p[0] for p in y) if is_tuple else y[0]


# --------------------------------------------------------------------------------------------
# Events with the per-sample adjoint.


def _stop_grid(times: torch.Tensor, direction: float, records, B: int):
    """Each sample's stops in forward order, padded to one length.

    Sample ``i``'s stops are its output times up to its terminal event (if any) and its event
    times, merged (an output at an event's time is one stop of both kinds). Rows are padded with
    no-op stops at the midpoints of their widest gaps, so the grid is ``(B, L)`` and every row
    strictly monotonic (the per-sample clock's times). Returns the grid (float64), and per stop the
    output index ``j`` and the event record index ``e`` (``-1`` for none).
    """
    T = times.shape[1]
    rows = []
    for i in range(B):
        mine = [(e, r) for e, r in enumerate(records) if r.sample == i]
        end = next((float(r.t.detach()) for _, r in mine if r.terminal), None)
        stops: dict[float, list[int]] = {}
        for j in range(T):
            tj = float(times[i, j])
            if end is not None and (tj - end) * direction > 0:
                break
            stops.setdefault(tj, [-1, -1])[0] = j
        for e, r in mine:
            stops.setdefault(float(r.t.detach()), [-1, -1])[1] = e
        rows.append(sorted(([s, j, e] for s, (j, e) in stops.items()), key=lambda x: x[0] * direction))
    L = max(len(r) for r in rows)
    for r in rows:
        while len(r) < L:
            k = max(range(len(r) - 1), key=lambda k: abs(r[k + 1][0] - r[k][0]))
            r.insert(k + 1, [0.5 * (r[k][0] + r[k + 1][0]), -1, -1])
    dev = times.device
    grid = torch.tensor([[s for s, _, _ in r] for r in rows], dtype=torch.float64, device=dev)
    out_idx = torch.tensor([[j for _, j, _ in r] for r in rows], dtype=torch.long, device=dev)
    ev_idx = torch.tensor([[e for _, _, e in r] for r in rows], dtype=torch.long, device=dev)
    return grid, out_idx, ev_idx


class _PerSampleEventAdjoint(torch.autograd.Function):
    """Outputs ``(ys (T, B, N), event times (E,), states at the events (E, N))`` of a forward solve
    without a graph; backward: one per-sample backward solve whose stops are every sample's
    output and event times, joined at each event by the vector-Jacobian product of the event map
    (implicit-function time, state at the event, reset and restart shift)."""

    @staticmethod
    def forward(
        ctx, cfg: PerSampleAdjointConfig, stops: EventStops, forward: tuple, y0: torch.Tensor, *params: torch.Tensor
    ):
        """``forward``: ``(ys, t_ev, y_ev)``, the forward solve's states, event times and states at the events."""
        ctx.cfg, ctx.stops = cfg, stops
        ys, t_ev, y_ev = forward
        ctx.save_for_backward(ys, t_ev, y_ev)
        return ys, t_ev, y_ev

    @staticmethod
    def backward(ctx, grad_ys, grad_t, grad_y):
        refuse_double_backward("per-sample adjoint (options['per_sample'])")
        cfg = ctx.cfg
        ys, t_ev, y_ev = ctx.saved_tensors
        stops = ctx.stops
        layout = cfg.layout
        func, params, tableau = cfg.func, cfg.params, cfg.method.tableau
        events, which_ev, fired_at = stops.events, stops.which, stops.element
        grid, out_idx, ev_idx = stops.grid, stops.out_idx, stops.ev_idx
        T, B, N = ys.shape
        L = grid.shape[1]
        E = t_ev.shape[0]
        dtype = ys.dtype
        grad_ys = torch.zeros_like(ys) if grad_ys is None else torch.nan_to_num(grad_ys, nan=0.0)
        grad_t = torch.zeros(E, dtype=dtype, device=ys.device) if grad_t is None else grad_t
        grad_y = torch.zeros(E, N, dtype=dtype, device=ys.device) if grad_y is None else grad_y
        stats = cfg.adjoint_stats
        quad = _ParamQuadrature(params, tableau.b)
        plain = BatchFunc(func, layout, dtype, PerSampleStats.zeros(B, ys.device))

        def event_vjp(m, e, y_other, a):
            """``a`` (the cotangent after the event) pulled back to the state before it, rows ``m``."""
            ee = e.clamp(min=0)
            t_e = t_ev.detach()[ee].double()
            which = which_ev[ee]
            fired = [torch.nn.functional.one_hot(fired_at[ee].clamp(max=n - 1), n).bool() for n in stops.sizes]
            with torch.enable_grad():
                ye = torch.where(m[:, None], y_ev.detach()[ee], y_other).requires_grad_(True)
                res = events.attach_gradient(plain, m, which, fired, t_e, ye, plain.rows)
                delta = torch.zeros_like(t_e, dtype=dtype) if res is None else res[0]
                y_star = ye if res is None else ye + res[1] * delta[:, None]
                t_star = t_e.to(dtype) + delta
                y_next = ye
                for k, ev in enumerate(events.events):
                    mk = m & (which == k)
                    if ev.reset is None or ev.terminal or not bool(mk.any()):
                        continue
                    y_new = events.flatten(ev.reset(t_star, events.unflatten(y_star)))
                    if res is not None:
                        with torch.no_grad():
                            f_new = plain(t_e, y_new.detach())
                        y_new = y_new - f_new * delta[:, None]
                    y_next = torch.where(mk[:, None], y_new, y_next)
                mf = m.to(dtype)
                outs = [y_next, delta, y_star]
                cots = [a * mf[:, None], grad_t[ee] * mf, grad_y[ee] * mf[:, None]]
                keep = [i for i, o in enumerate(outs) if o.requires_grad]
                grads = torch.autograd.grad(
                    [outs[i] for i in keep],
                    (ye, *params),
                    [cots[i] for i in keep],
                    allow_unused=True,
                    retain_graph=True,  # as in _ParamQuadrature.end
                )
            for acc, g in zip(quad.grads, grads[1:]):
                if g is not None:
                    acc.add_(g)
            return torch.where(m[:, None], grads[0], a)

        def at_stop(mask, k, rows, z):
            """The state after landing on forward stop ``k (B',)``, for the rows in ``mask``."""
            j, e = out_idx[rows, k], ev_idx[rows, k]
            y, a = z[:, :N], z[:, N:]
            is_e, is_j = mask & (e >= 0), mask & (j >= 0)
            plain.rows = rows
            if bool(is_e.any()):
                a = event_vjp(is_e, e, y, a)
                y = torch.where(is_e[:, None], y_ev.detach()[e.clamp(min=0)], y)
            jj = j.clamp(min=0)
            y = torch.where(is_j[:, None], ys[jj, rows], y)
            a = a + torch.where(is_j[:, None], grad_ys[jj, rows], torch.zeros_like(a))
            return torch.cat([y, a], 1)

        aug = _augmented(func, layout, params, quad, N)

        def jump(mask, i_next, rows, z):
            return at_stop(mask, (L - i_next).clamp(min=0, max=L - 1), rows, z)

        all_rows = torch.arange(B, device=ys.device)
        z_last = torch.cat([ys[-1].nan_to_num(0.0), torch.zeros_like(ys[-1])], 1)

        def start() -> torch.Tensor:  # the last stop may be an event: its VJP is backward work too
            return at_stop(
                torch.ones(B, dtype=torch.bool, device=ys.device),
                torch.full((B,), L - 1, dtype=torch.long, device=ys.device),
                all_rows,
                z_last,
            )

        a_end = _backward_solve(cfg, aug, start, grid, N, dtype, stats, quad, jump, (ys, t_ev, y_ev))
        return (None, None, None, a_end + grad_ys[0], *quad.grads)
