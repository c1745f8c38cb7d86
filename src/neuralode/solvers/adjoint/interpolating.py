"""The interpolating adjoint: the backward solve reads ``y(t)`` from the forward solve's dense output.

The backsolve adjoint (:mod:`~neuralode.solvers.adjoint.backsolve`) recomputes ``y`` backwards in time together
with ``a``. For a stiff dissipative system (Robertson's kinetics) ``y`` backwards is unstable: the
decaying modes of the forward problem grow backwards at the rate of the fastest one, and the backward
solve fails (step-size underflow) or returns NaN (Kim, Ji, Deng, Ma & Rackauckas 2021, "Stiff neural
ordinary differential equations", Chaos 31, 093122, section III). The interpolating adjoint (Rackauckas
et al. 2018, "A comparison of automatic differentiation and continuous sensitivity analysis for
derivatives of differential equation solutions", InterpolatingAdjoint) keeps the forward solve's
dense output and integrates backwards only

    da/dt    = -a(t)ᵀ ∂f/∂y (t, y(t))
    d(gθ)/dt = -a(t)ᵀ ∂f/∂θ (t, y(t))          y(t) from the forward interpolant,

which is linear in ``a`` and as stiff as the forward problem in the same (stable) sense backwards,
so a stiff method (rodas5p, kvaerno5, radau5, radau9) takes steps as large as forward.

Memory: the forward solve's interpolants are kept, ``O(steps × stages)`` states (each accepted step
keeps its start and end states and its stages; rodas5p: 8 stages). Re-solving each output interval
from checkpoints would hold ``O(steps)`` but cost a second forward solve; for the small stiff systems
this mode is meant for, the stages are cheap to keep.

Jacobian of the backward dynamics (for implicit backward methods). The state ``(a, *gθ)`` is one
flat vector of ``N = m + P`` unknowns (``m = y.numel()``, ``P`` the parameter count); its Jacobian is

    [ -Jᵀ      0 ]      J = ∂f/∂y (m × m), Fθ = ∂f/∂θ (m × P)
    [ -Fθᵀ     0 ]

built from one evaluation of ``f`` at ``y(t)`` and one batched backward with the ``m`` unit
cotangents (``∂f_j/∂(y, θ)`` for every output ``j``), instead of differentiating the augmented
dynamics twice. The quadrature rows must be there: Rosenbrock methods are exact-Jacobian methods, and
without ``-Fθᵀ`` the ``gθ`` stages lose order. ``N × N`` is dense, so the mode suits small systems
with few parameters (the stiff-kinetics case); a batch ``(B, n)`` is one system of ``B n`` unknowns.

The time derivative of the backward dynamics (the Rosenbrock ``h γ_i f_t`` term). They depend on
``t`` through ``y(t)``: ``∂/∂t [-J(y(t))ᵀ a] = -(∂J/∂y · ẏ(t))ᵀ a``, where ``ẏ`` must be the rate of
the interpolant the dynamics read, ``dy_I/dt``. The probe the solver makes with a differentiable ``t``
sees ``y(t + s) ≈ y_I(t) + s ẏ_I(t)`` (exact to first order, all the term needs), with ``ẏ_I`` the
derivative of the forward step's interpolating polynomial (a five-point central difference of that
one polynomial in ``θ``, relative error ~1e-13 in float64: :func:`dense_rate`). Not ``f(t, y_I(t))``:
in a stiff problem the forward solution lies off the slow manifold by up to its tolerance, and ``f`` amplifies
that offset by the fast rate. On Robertson's kinetics (rtol 1e-8, atol 1e-12) ``f₂(y_I)`` is 5 % off
``dy_I₂/dt`` at t = 99 (an offset of 4e-13 in ``y₂`` times the fast rate 4e3), so ``f_t`` was off by
as much and the error estimates of rodas5p's backward steps were noise: 229 accepted + 36 rejected
steps on [1, 100] against the forward's 65 + 0; with ``ẏ_I``, 136 + 13.

Why the backward solve still takes about three times the forward's steps (Robertson, rates and
``y0`` differentiated, loss ``Σ (1, 1e4, 1) · y(t_i)`` at t = 1e-2, 1, 100; forward 124 + 4 steps;
backward before the fix above 464 + 46 steps, 5427 evaluations; now 364 + 17, 3762, all with the
``"pi"`` controller and the seminorm; with the stiff default ``"pi_gustafsson"`` 365 + 6, 3695 against 125 + 4,
and 386 + 2, 3877 with this adjoint's default full norm): at each output
time ``a`` jumps by ``∂L/∂y(t_i)``, which has a component along the fast modes (a perturbation of
``y₂`` relaxes onto the slow manifold at the fast rate |λ| ≈ 2e3 to 4e3). Backwards that component decays at
the same rate, ``a₂`` from 1e4 to its O(1) slow value, and relative error control follows the
exponential over four decades with steps of ``|λ| h ≈ 0.14``: about 100 steps per output interval,
where the forward solve has one such layer (at ``t = 0``). The backward problem is that much harder,
not this solver: scipy's Radau on the same ``a' = -J(y(t))ᵀ a`` at the same tolerances (``y(t)`` from
a solve at rtol 1e-13) takes 403 + 386 + 397 = 1186 accepted steps (its forward solve: 264), BDF 1045
(forward: 332). The backward tolerances default to the forward ones (``adjoint_rtol = rtol``,
``adjoint_atol = atol``), as in torchdiffeq and diffrax; the layer is steered by ``a₂``'s relative
error, so a looser ``adjoint_atol`` buys steps only with accuracy (1e-8: 338 + 21 steps, gradient
error 3.6e-8; 1e-6: 235 + 14, 8.9e-7; against 1.5e-8 at the default 1e-12). At a jump the step
carried over from the interval before is, for an implicit method, one for the slow solution, so there
the initial-step heuristic runs instead (two to four rejections fewer per jump on Robertson); an
explicit method carries its step across jumps (:func:`~neuralode.solvers.adjoint.common.step_after_jump`).

:func:`interpolating_backward` is called by the backsolve's autograd Function with the adjoint's configuration
(:class:`~neuralode.solvers.adjoint.common.AdjointConfig`, whose ``dense`` is the kept interpolant); the sweep over
output intervals it shares with the backsolve comes from :mod:`~neuralode.solvers.adjoint.common`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..api import solve
from ..dense import DenseOutput
from ..options import time_dtype
from ..problem import adjoint_step_callbacks
from ..solution import HeldStorages, storage_bytes
from .common import AdjointConfig, Flat, interval_options, sweep_reading_dense


def dense_rate(dense, s: float, dtype: torch.dtype) -> torch.Tensor:
    """``dy_I/dt`` at time ``s`` of the forward solve's kept interpolant ``dense``
    (:class:`~neuralode.solvers.dense.DenseOutput`), in the solver's flat layout; ``dtype``
    is the state's.

    The derivative of the interpolating polynomial of the forward step that serves ``s`` (the
    piece :class:`DenseOutput` would evaluate), by the fourth-order central difference
    ``(y(θ-2d) - 8 y(θ-d) + 8 y(θ+d) - y(θ+2d)) / (12 d h)`` of that one polynomial (evaluated a
    little beyond its step when ``s`` is near an end), so the stencil never straddles the kink
    between two steps. Costs four evaluations of the polynomial, none of ``f``.
    """
    t0, h, interp = dense.piece(s)
    theta = (s - t0) / h
    # Half-width in units of the step: truncation O(d^4) against rounding O(eps / d) (relative to
    # |y| / h) balance at d = eps^(1/5): 7e-4 in float64 (both ~1e-13), 0.04 in float32.
    d = torch.finfo(dtype).eps ** 0.2
    # One theta per call: a list of several takes the batched path meant for thetas inside (0, 1).
    ym2, ym1, yp1, yp2 = (interp([theta + k * d])[0] for k in (-2, -1, 1, 2))
    return (ym2 - yp2 + 8.0 * (yp1 - ym1)) / (12.0 * d * h)


def forward_state(flat: Flat, dense: DenseOutput) -> Callable[[float], torch.Tensor]:
    """``y(s)`` from the forward solve's kept interpolant ``dense``, flat and detached, for any time ``s`` a
    backward stage asks for.

    A stage may sit beyond its step (kvaerno5 has a node c = 1.23); on the last backward step that is beyond
    the forward span, where ``y`` is the nearest forward step's polynomial extrapolated, not ``y(t0)`` held
    (which cost kvaerno5's gradients 2e-5 at rtol 1e-8). Rounding of the backward clock lands there too.
    """
    span = sorted((dense.t_start, dense.t_end))

    def y_at(s: float) -> torch.Tensor:
        if span[0] <= s <= span[1]:
            return flat.flatten(dense(torch.tensor(s, dtype=torch.float64))).detach()
        t0, h, interp = dense.piece(s)
        return interp([(s - t0) / h])[0].detach()

    return y_at


def backward_dynamics(
    func,
    flat: Flat,
    params: tuple[torch.Tensor, ...],
    dense: DenseOutput,
    acc_dtype: torch.dtype,
    counter: dict,
):
    """``(augmented, jacobian)``: the backward dynamics of ``(a, *gθ)`` for ``func`` (on the flat
    layout ``flat``) and ``params``, with ``y(t)`` read from the forward solve's interpolant ``dense``,
    and their Jacobian for implicit methods (see the module docstring). Evaluations of ``func``
    outside the solver's own counting are added to ``counter["nfe"]``."""

    def f_flat(tt: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return flat.flatten(func(tt, flat.unflatten(y)))

    def clock(tt: torch.Tensor) -> float:
        return float(tt.detach())

    state_at = forward_state(flat, dense)

    def y_at(tt: torch.Tensor) -> torch.Tensor:
        return state_at(clock(tt))

    def augmented(tt: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        a = state[0]
        y = y_at(tt)
        probe = tt.requires_grad  # the Rosenbrock df/dt probe (see the module docstring)
        with torch.enable_grad():
            if probe:
                rate = flat.flatten(dense.unflatten(dense_rate(dense, clock(tt), y.dtype))).detach()
                yv = y.requires_grad_(True)
                y_t = yv + (tt - tt.detach()) * rate
                f = f_flat(tt, y_t)
                inputs = (y_t, *params)
            else:
                yv = y.requires_grad_(True)
                f = f_flat(tt, yv)
                inputs = (yv, *params)
            vjps: tuple[torch.Tensor | None, ...]
            if f.requires_grad:
                # retain_graph: the path to a parameter may be shared (neuralode.solvers.adjoint.backsolve's docstring).
                # allow_unused: an input f does not depend on gets None (the stubs say Tensor)
                vjps = torch.autograd.grad(f, inputs, -a, allow_unused=True, retain_graph=True, create_graph=probe)
            else:
                vjps = (None,) * (1 + len(params))
        vjp_params = tuple(
            torch.zeros_like(p, dtype=acc_dtype) if g is None else g.to(acc_dtype) for g, p in zip(vjps[1:], params)
        )
        vjp_y = torch.zeros_like(a) if vjps[0] is None else vjps[0]
        return (vjp_y, *vjp_params)

    def jacobian(tt: torch.Tensor, state: tuple[torch.Tensor, ...]) -> torch.Tensor:
        a = state[0]
        m = a.numel()
        y = y_at(tt)
        with torch.enable_grad():
            yv = y.requires_grad_(True)
            f = f_flat(tt.detach(), yv)
            counter["nfe"] += 1
            N = m + sum(p.numel() for p in params)
            M = torch.zeros(N, N, dtype=acc_dtype, device=a.device)
            if not f.requires_grad:
                return M
            eye = torch.eye(m, dtype=f.dtype, device=f.device).reshape(m, *f.shape)
            G = torch.autograd.grad(  # retain_graph: as in augmented
                f, (yv, *params), eye, is_grads_batched=True, allow_unused=True, retain_graph=True
            )
        if G[0] is not None:
            M[:m, :m] = -G[0].reshape(m, m).T  # d(-Jᵀa)/da = -Jᵀ
        row = m
        for g, p in zip(G[1:], params):
            k = p.numel()
            if g is not None:
                M[row : row + k, :m] = -g.reshape(m, k).T.to(acc_dtype)  # d(-Fθᵀa)/da = -Fθᵀ
            row += k
        return M

    return augmented, jacobian


def interpolating_backward(
    cfg: AdjointConfig, t: torch.Tensor, ys: torch.Tensor, grad_ys: torch.Tensor, need_t: bool, held: HeldStorages
) -> tuple:
    """``(a(t_0), dL/dt or None, dL/dθ)`` from the kept forward dense output ``cfg.dense``; the backward state
    ``(a, *gθ)`` each interval returns is noted in ``held``."""
    flat = cfg.flat
    func = cfg.func
    params = cfg.params
    stats = cfg.adjoint_stats
    acc_dtype = ys.dtype
    times = t.detach().to("cpu", torch.float64).tolist()
    tdt = time_dtype(ys.dtype)
    implicit = cfg.backward_method.capabilities.implicit
    extra = {"nfe": 0}
    assert cfg.dense is not None, "the interpolating adjoint's forward solve keeps its dense output"
    augmented, jacobian = backward_dynamics(func, flat, params, cfg.dense, acc_dtype, extra)

    def f_flat(tt: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return flat.flatten(func(tt, flat.unflatten(y)))

    for name, callback in adjoint_step_callbacks(func, cfg.backward_method):
        setattr(augmented, name, callback)

    def f_at(i: int) -> torch.Tensor:
        with torch.no_grad():
            return f_flat(torch.full((), times[i], dtype=tdt, device=ys.device), ys[i])

    options = {**cfg.backward_options, "jacobian": jacobian} if implicit else cfg.backward_options
    adaptive = cfg.backward_method.capabilities.adaptive

    def solve_interval(i, span, a, g_params, first_step):
        sol = solve(
            augmented,
            (a, *g_params),
            span,
            rtol=cfg.adjoint_rtol,
            atol=cfg.adjoint_atol,
            method=cfg.adjoint_method,
            options=interval_options(options, adaptive, first_step),
        )
        held.note(storage_bytes(sol.ys))
        return sol.ys[0][-1], tuple(g[-1] for g in sol.ys[1:]), sol.stats

    return sweep_reading_dense(
        times, grad_ys, params, acc_dtype, t, need_t, f_at, stats, solve_interval, implicit, extra
    )
