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

Every attempt evaluates its first stage afresh (no FSAL), so that the stage graphs of an
attempt are exactly its own calls.
"""

from __future__ import annotations

import math

import torch

from .options import _parse_options
from .per_sample import (
    BatchFunc,
    PerSampleStats,
    RMSNorm,
    _Layout,
    _tolerance,
    check_batch_state,
    check_batch_times,
    check_options,
    integrate,
    interp_kind,
    solve_per_sample,
)
from .solution import Solution
from .tableau import get_tableau


def _stats(B: int, device) -> PerSampleStats:
    z = torch.zeros(B, dtype=torch.long, device=device)
    nan = torch.full((B,), math.nan, dtype=torch.float64, device=device)
    return PerSampleStats(nfe=z.clone(), n_accepted=z.clone(), n_rejected=z.clone(), last_step=nan.clone(),
                          next_step=nan.clone(), n_event_evals=z.clone(), n_events=z.clone())


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
        grads = torch.autograd.grad(outs, self.params, cots, allow_unused=True)
        for acc, g in zip(self.grads, grads):
            if g is not None:
                acc.add_(g)
        self.stages = []


class _PerSampleAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cfg: dict, y0: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        ctx.cfg = cfg
        ys = cfg.pop("ys")
        ctx.save_for_backward(ys)
        return ys

    @staticmethod
    def backward(ctx, grad_ys: torch.Tensor):
        cfg = ctx.cfg
        (ys,) = ctx.saved_tensors  # (T, B, N)
        layout: _Layout = cfg["layout"]
        func, params, times = cfg["func"], cfg["params"], cfg["times"]
        T, B, N = ys.shape
        tableau = cfg["tableau"]
        stats: PerSampleStats = cfg["adjoint_stats"]
        quad = _ParamQuadrature(params, tableau.b)
        dtype = ys.dtype

        def aug(tt: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            y, a = z[:, :N], z[:, N:]
            with torch.enable_grad():
                y = y.detach().requires_grad_(True)
                f = layout.flatten(func(tt, layout.unflatten(y)))
                (vjp_y,) = torch.autograd.grad(f, y, -a, retain_graph=bool(params), allow_unused=True)
            quad.stages.append((f, a.detach()))
            return torch.cat([f.detach(), torch.zeros_like(y) if vjp_y is None else vjp_y], 1)

        aug_layout = _Layout((ys[0].repeat(1, 2),), False)
        fb = BatchFunc(aug, aug_layout, dtype, stats)
        norm = RMSNorm([N, N], cfg["rtol"], cfg["atol"])
        # One backward solve over every output time: each is a stop, landed on per sample, where
        # y restarts from its stored forward value and a jumps by ∂L/∂y there. Samples do not
        # wait for each other at output times.
        def jump(mask, i_next, rows, z):
            j = T - i_next  # landed on reversed index i_next - 1, forward index T - i_next
            new = torch.cat([ys[j, rows], z[:, N:] + grad_ys[j, rows]], 1)
            return torch.where(mask[:, None], new, z)

        from .adjoint import _IN_BACKWARD

        z0 = torch.cat([ys[-1], grad_ys[-1]], 1)
        token = _IN_BACKWARD.set(True)  # func's evaluations here count as backward ones (in_adjoint_backward)
        try:
            out = integrate(fb, z0, times.flip(1), -cfg["direction"], tableau=tableau, opts=cfg["opts"], norm=norm,
                            stats=stats, interp_kind=interp_kind(tableau), compact=cfg["compact"], quad=quad,
                            on_land=jump, step_t=cfg["opts"].step_t)
        finally:
            _IN_BACKWARD.reset(token)
        a = out.ys[-1][:, N:] + grad_ys[0]
        stats.next_step = out.next_dt
        return (None, a, *quad.grads)


def solve_adjoint_per_sample(func, y0, t, *, rtol, atol, method, options, adjoint_rtol, adjoint_atol,
                             adjoint_method, adjoint_options, adjoint_params, events) -> Solution:
    """:func:`~neuralode.solvers.adjoint.solve_adjoint` with ``options={"per_sample": True}``.

    Shapes as :func:`~neuralode.solvers.per_sample.solve_per_sample`. ``adjoint_options`` may
    set the backward solve's controller options; its ``norm`` is always the seminorm (the
    parameter gradient is not in the stepped state). Gradients flow to ``y0`` and the parameters.
    """
    from .adjoint import _adjoint_params
    from .api import _method

    tableau = _method(method)
    opts = _parse_options(options, tableau)
    check_options(opts)
    if events:
        raise ValueError("options['per_sample'] with events is not supported by the adjoint yet; differentiate "
                         "by backprop (solve(..., events=..., options={'per_sample': True}) gives gradients through "
                         "each sample's event times too) or drop per_sample.")
    is_tuple = isinstance(y0, tuple)
    parts = y0 if is_tuple else (y0,)
    B = check_batch_state(parts, is_tuple)
    times, direction = check_batch_times(t, B)
    params = _adjoint_params(func, adjoint_params)
    layout = _Layout(parts, is_tuple)
    adj_tableau = tableau if adjoint_method is None else get_tableau(adjoint_method)
    if not adj_tableau.adaptive:
        raise ValueError(f"adjoint_method must be adaptive with options['per_sample']; got {adj_tableau.name!r}.")
    adj_opts = {k: v for k, v in (options or {}).items() if k != "norm"} if adjoint_options is None else dict(adjoint_options)
    if adj_opts.pop("norm", "seminorm") != "seminorm":
        raise ValueError("adjoint_options['norm'] must be 'seminorm' with options['per_sample'] (the parameter "
                         "gradient is not part of the stepped state).")
    adj_opts.pop("first_step", None)  # the forward solve's first step is no guide backwards
    adj_opts["per_sample"] = opts.per_sample
    adj_opts = _parse_options(adj_opts, adj_tableau)
    check_options(adj_opts)

    def aug_tol(name, tol):
        v = _tolerance(name, tol, parts, layout)
        return v if not isinstance(v, torch.Tensor) else torch.cat([v, v], 1)

    with torch.no_grad():
        fwd = solve_per_sample(func, tuple(p.detach() for p in parts) if is_tuple else y0.detach(), t, rtol=rtol,
                               atol=atol, tableau=tableau, opts=opts)
    if times.shape[1] == 1:
        return fwd
    adjoint_stats = _stats(B, parts[0].device)
    cfg = {
        "func": func, "params": params, "layout": layout, "times": times, "direction": direction,
        "tableau": adj_tableau, "opts": adj_opts, "compact": adj_opts.per_sample == "compact",
        "rtol": aug_tol("adjoint_rtol" if adjoint_rtol is not None else "rtol", rtol if adjoint_rtol is None else adjoint_rtol),
        "atol": aug_tol("adjoint_atol" if adjoint_atol is not None else "atol", atol if adjoint_atol is None else adjoint_atol),
        "adjoint_stats": adjoint_stats,
        "ys": torch.cat([p.reshape(times.shape[1], B, -1) for p in (fwd.ys if is_tuple else (fwd.ys,))], 2),
    }
    ys = _PerSampleAdjoint.apply(cfg, layout.flatten(y0), *params)
    return Solution(t, layout.unflatten(ys), fwd.stats, tableau.name, adjoint_stats)
