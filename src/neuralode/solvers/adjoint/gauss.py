"""The Gauss adjoint: the backward solve integrates ``a(t)`` alone; ``dL/dθ`` is a Gauss–Legendre quadrature.

The interpolating adjoint (:mod:`~neuralode.solvers.adjoint.interpolating`) reads ``y(t)`` from the forward
solve's dense output and integrates backwards the ``m + P`` unknowns ``(a, *gθ)`` (``m = y.numel()``, ``P``
the parameter count). The ``gθ`` part is a pure quadrature: nothing depends on it, so it need not be an
unknown of the backward ODE at all. The Gauss adjoint (SciMLSensitivity.jl's ``GaussAdjoint``; its
``QuadratureAdjoint`` is the same idea with one quadrature over the whole interpolant afterwards) solves

    da/dt = -a(t)ᵀ ∂f/∂y (t, y(t))                      y(t) from the forward interpolant, m unknowns,

and accumulates, over every accepted step ``[t_a, t_b]`` of that backward solve,

    ∫ a(t)ᵀ ∂f/∂θ (t, y(t)) dt  ≈  (t_a - t_b) Σ_k w_k a(τ_k)ᵀ ∂f/∂θ (τ_k, y(τ_k)),    τ_k = t_a + x_k (t_b - t_a),

with ``(x_k, w_k)`` the ``s``-point Gauss–Legendre rule on ``[0, 1]`` (:func:`gauss_legendre`). ``a(τ_k)`` is
the backward step's own interpolant (the backward solve runs with ``options={"dense": True}``; its
:class:`~neuralode.solvers.dense.DenseOutput` lists the accepted steps, :meth:`DenseOutput.steps`), ``y(τ_k)``
the forward's. So the loop is not touched: the steps are post-processed once each output interval is solved.

Cost. Every evaluation of the backward dynamics is a vector-Jacobian product with respect to ``y`` alone
(autograd computes no ``∂f/∂θ``), and the backward state has ``m`` entries instead of ``m + P``. In their place
come ``s`` evaluations of ``f`` per accepted step and one backward pass through those ``s`` graphs with respect
to ``θ`` (``torch.autograd.grad`` on the ``s`` outputs at once: the exact sum of the ``s`` products, one call).
An explicit method's step then costs more, not less: dopri5's six products with respect to ``(y, θ)``
become six with respect to ``y`` plus three (or more) evaluations with their backward to ``θ``, and for a
dense layer the ``θ`` part of a product costs no more than the ``y`` part (MLP 32→128→128→32 with dopri5:
1.2–1.4× the backsolve's and the interpolating adjoint's time). The gain is for an implicit backward method,
whose Jacobian ``-Jᵀ`` is ``m × m`` here and ``(m + P) × (m + P)`` in the interpolating adjoint (its LU
factorisation per step falls from ``O((m + P)³)`` to ``O(m³)``): 0.36× the interpolating adjoint's time on a
stiff neural ODE with 4 states and 576 parameters (rodas5p), a tie on Robertson's 3 rates
(``benchmarks/bench_gauss_adjoint.py``, ``benchmarks/results/adjoint.md``).

Number of nodes. The ``s``-point Gauss–Legendre rule integrates polynomials of degree ``2s - 1`` exactly
(Gauss 1814; e.g. Davis & Rabinowitz, "Methods of Numerical Integration", 2nd ed., section 2.7), so on a
step of size ``h`` its error for a smooth integrand is ``O(h^{2s+1})``, and summed over the ``O(1/h)`` steps
of a solve ``O(h^{2s})``. A backward method of order ``p`` has global error ``O(h^p)``; the quadrature does not
lower it when ``2s >= p``: ``s = ceil(p / 2)`` (:func:`nodes_for_order`; dopri5, tsit5, rodas5p and kvaerno5:
3 nodes; rk4: 2; euler: 1), or ``adjoint_options["quadrature_nodes"]`` when given. The integrand's accuracy
is bounded as well by the two interpolants' (dopri5's continuous extension has local error ``O(h^5)``, so
``h ∫`` of it ``O(h^6)`` per step, inside order 5); a fixed-step method's linear interpolant is replaced by
the cubic Hermite one (:meth:`DenseOutput.hermite`), as the interpolating adjoint does for ``y``.

The output-time jumps of ``a`` (``+∂L/∂y(t_i)``) and ``dL/dt_i`` come from the sweep the adjoints share
(:func:`~neuralode.solvers.adjoint.common.sweep_intervals`).

Chosen by ``adjoint_options={"quadrature": True}`` (:func:`split_quadrature`, :func:`resolve_quadrature`); it
is an interpolating adjoint, so it is refused where that one is (events, ``options["per_sample"]``,
``method="scipy"``, an implicit ``adjoint_method`` with a complex state, double backward) and where the
backward solve keeps no dense output (``adjoint_method="scipy"``).
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..api import solve
from ..dense import DenseOutput, dense_tensors
from ..methods.base import Method
from ..options import time_dtype
from ..problem import adjoint_step_callbacks
from ..solution import HeldStorages, SolverStats, storage_bytes
from .common import AdjointConfig, Flat, interval_options, sweep_reading_dense
from .interpolating import dense_rate, forward_state

MAX_NODES = 16
"""The most Gauss–Legendre nodes per step ``adjoint_options["quadrature_nodes"]`` takes (exact to degree 31)."""

FlatFunc = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Dynamics = Callable[[torch.Tensor, tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]]
Jacobian = Callable[[torch.Tensor, tuple[torch.Tensor, ...]], torch.Tensor]


@dataclass(frozen=True)
class QuadratureRequest:
    """``adjoint_options["quadrature"]=True`` as parsed: ``nodes`` is ``adjoint_options["quadrature_nodes"]``,
    or ``None`` for the count chosen from the backward method's order (:func:`nodes_for_order`)."""

    nodes: int | None


def split_quadrature(adjoint_options: Any) -> tuple[Any, QuadratureRequest | None]:
    """``(adjoint_options without "quadrature" and "quadrature_nodes", the request or None)``.

    Raises:
        TypeError: ``"quadrature"`` is not a bool, or ``"quadrature_nodes"`` not an int.
        ValueError: ``"quadrature_nodes"`` outside ``1..MAX_NODES``, or given without ``"quadrature": True``.
    """
    if not isinstance(adjoint_options, dict) or not any(
        k in adjoint_options for k in ("quadrature", "quadrature_nodes")
    ):
        return adjoint_options, None
    rest = {k: v for k, v in adjoint_options.items() if k not in ("quadrature", "quadrature_nodes")}
    value = adjoint_options.get("quadrature", False)
    if not isinstance(value, bool):
        raise TypeError(f"adjoint_options['quadrature'] must be True (the Gauss adjoint) or False; got {value!r}.")
    nodes = adjoint_options.get("quadrature_nodes")
    if nodes is not None:
        if not isinstance(nodes, int) or isinstance(nodes, bool):
            raise TypeError(
                f"adjoint_options['quadrature_nodes'] must be an int from 1 to {MAX_NODES} (Gauss-Legendre nodes "
                f"per backward step); got {nodes!r}."
            )
        if not 1 <= nodes <= MAX_NODES:
            raise ValueError(
                f"adjoint_options['quadrature_nodes'] must be from 1 to {MAX_NODES} (Gauss-Legendre nodes per "
                f"backward step); got {nodes}."
            )
        if not value:
            raise ValueError(
                "adjoint_options['quadrature_nodes'] applies to the Gauss adjoint only; add "
                "adjoint_options['quadrature']=True, or drop 'quadrature_nodes'."
            )
    return rest, QuadratureRequest(nodes) if value else None


def nodes_for_order(order: int) -> int:
    """Gauss–Legendre nodes per step that keep a method of global order ``order``: ``ceil(order / 2)``
    (the rule's global error ``O(h^{2s})``; see the module docstring), at least 1."""
    return max(1, math.ceil(order / 2))


def resolve_quadrature(
    request: QuadratureRequest | None,
    interpolate: bool | None,
    forward: Method,
    backward: Method,
    y0_parts: tuple[torch.Tensor, ...],
    events: Any,
) -> int:
    """The number of Gauss–Legendre nodes per backward step, 0 when the Gauss adjoint was not requested.

    Raises:
        ValueError: where the Gauss adjoint cannot run (each message names the option and what works).
    """
    if request is None:
        return 0
    if interpolate is False:
        raise ValueError(
            "adjoint_options['quadrature']=True reads y(t) from the forward solve's dense output, which "
            "adjoint_options['interpolate']=False rules out; drop one of the two."
        )
    if events:
        raise ValueError(
            "adjoint_options['quadrature']=True is not supported with events (the forward interpolant jumps at "
            "resets); leave it out (the backsolve adjoint handles events)."
        )
    if forward.capabilities.own_driver:
        raise ValueError(
            "adjoint_options['quadrature']=True needs the forward solve's dense output, which method='scipy' does "
            "not keep; use a neuralode method for the forward solve or leave 'quadrature' out."
        )
    if backward.capabilities.own_driver:
        raise ValueError(
            "adjoint_options['quadrature']=True needs the backward solve's dense output, which "
            "adjoint_method='scipy' does not keep; use a neuralode adjoint_method or leave 'quadrature' out."
        )
    if backward.capabilities.implicit and any(p.is_complex() for p in y0_parts):
        raise ValueError(
            "adjoint_options['quadrature']=True with an implicit adjoint_method supports real states only; got a "
            "complex state. Use an explicit adjoint_method or leave 'quadrature' out."
        )
    if request.nodes is not None:
        return request.nodes
    assert backward.order is not None  # scipy's solver, the one method without an order, is refused above
    return nodes_for_order(backward.order)


@functools.cache
def gauss_legendre(s: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(nodes, weights)`` of the ``s``-point Gauss–Legendre rule on ``[0, 1]``: ``Σ w_k p(x_k) = ∫_0^1 p`` for
    every polynomial ``p`` of degree ``<= 2s - 1``.

    By Golub & Welsch (1969): the nodes on ``[-1, 1]`` are the eigenvalues of the symmetric tridiagonal
    Jacobi matrix of the Legendre recurrence (off-diagonal ``k / sqrt(4k² - 1)``), the weights twice the
    squared first components of its normalised eigenvectors; then mapped to ``[0, 1]``. Float64, to rounding.
    """
    k = torch.arange(1, s, dtype=torch.float64)
    beta = k / torch.sqrt(4.0 * k * k - 1.0)
    jacobi = torch.diag(beta, 1) + torch.diag(beta, -1)
    x, v = torch.linalg.eigh(jacobi)
    w = 2.0 * v[0] ** 2
    return tuple(((x + 1.0) / 2.0).tolist()), tuple((w / 2.0).tolist())


def adjoint_dynamics(
    func: Callable[[torch.Tensor, Any], Any],
    flat: Flat,
    dense: DenseOutput,
    counter: dict[str, int],
) -> tuple[Dynamics, Jacobian]:
    """``(dynamics, jacobian)`` of the backward state ``(a,)`` alone: ``da/dt = -a(t)ᵀ ∂f/∂y (t, y(t))`` with
    ``y(t)`` from the forward interpolant ``dense``, and its ``m × m`` Jacobian ``-Jᵀ`` for an implicit
    ``adjoint_method``. As :func:`~neuralode.solvers.adjoint.interpolating.backward_dynamics` without the
    parameter rows: the Rosenbrock ``df/dt`` probe reads ``dy_I/dt`` (:func:`dense_rate`) the same way.
    Evaluations of ``func`` for the Jacobian are added to ``counter["nfe"]``."""
    y_at = forward_state(flat, dense)

    def f_flat(tt: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return flat.flatten(func(tt, flat.unflatten(y)))

    def dynamics(tt: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        a = state[0]
        s = float(tt.detach())
        y = y_at(s)
        probe = tt.requires_grad  # the Rosenbrock df/dt probe (interpolating's module docstring)
        with torch.enable_grad():
            yv = y.requires_grad_(True)
            if probe:
                rate = flat.flatten(dense.unflatten(dense_rate(dense, s, y.dtype))).detach()
                y_in = yv + (tt - tt.detach()) * rate
            else:
                y_in = yv
            f = f_flat(tt, y_in)
            if not f.requires_grad:  # f does not depend on y (a forcing of t alone)
                return (torch.zeros_like(a),)
            # Only y is an input: autograd forms no ∂f/∂θ here. retain_graph as in the other adjoints (a path
            # shared with earlier evaluations must survive; see neuralode.solvers.adjoint.backsolve).
            (vjp,) = torch.autograd.grad(f, (y_in,), -a, allow_unused=True, retain_graph=True, create_graph=probe)
        return (torch.zeros_like(a) if vjp is None else vjp,)

    def jacobian(tt: torch.Tensor, state: tuple[torch.Tensor, ...]) -> torch.Tensor:
        a = state[0]
        m = a.numel()
        y = y_at(float(tt.detach()))
        with torch.enable_grad():
            yv = y.requires_grad_(True)
            f = f_flat(tt.detach(), yv)
            counter["nfe"] += 1
            if not f.requires_grad:
                return torch.zeros(m, m, dtype=a.dtype, device=a.device)
            eye = torch.eye(m, dtype=f.dtype, device=f.device).reshape(m, *f.shape)
            (J,) = torch.autograd.grad(f, (yv,), eye, is_grads_batched=True, allow_unused=True, retain_graph=True)
        if J is None:
            return torch.zeros(m, m, dtype=a.dtype, device=a.device)
        return -J.reshape(m, m).T.to(a.dtype)  # d(-Jᵀa)/da

    return dynamics, jacobian


def forward_breaks(dense: DenseOutput) -> list[float]:
    """The forward solve's step boundaries with its two ends, increasing: where ``y(t)`` (its interpolant) may
    change from one polynomial to the next."""
    return sorted([dense.t_start, *(t0 for t0, _, _, _ in dense.steps()[1:]), dense.t_end])


def segment_cuts(t0: float, t1: float, breaks: list[float]) -> list[float]:
    """The backward step ``[t0, t1]`` (either direction) as the segments its quadrature runs over: split at the
    forward boundaries inside it when at least one forward step lies wholly within it (the forward solve
    resolved ``y`` on a shorter time scale there), else whole. One boundary inside between two forward steps
    longer than the backward step is a kink of ``y_I`` at the level of the forward tolerance (dopri5's
    interpolant is C¹ there), which the rule over the whole step integrates to that accuracy; splitting there
    too would double the quadrature's evaluations of an explicit solve whose two step grids interleave."""
    lo, hi = min(t0, t1), max(t0, t1)
    margin = 1e-12 * (hi - lo)
    # A forward step lies within [lo, hi] iff two consecutive boundaries do.
    if bisect.bisect_right(breaks, hi + margin) - bisect.bisect_left(breaks, lo - margin) < 2:
        return [t0, t1]
    inside = breaks[bisect.bisect_right(breaks, lo + margin) : bisect.bisect_left(breaks, hi - margin)]
    return [t0, *(inside if t1 > t0 else inside[::-1]), t1]


def accumulate_quadrature(
    f_flat: FlatFunc,
    y_at: Callable[[float], torch.Tensor],
    breaks: list[float],
    backward_dense: DenseOutput,
    params: tuple[torch.Tensor, ...],
    g_params: tuple[torch.Tensor, ...],
    nodes: int,
    tdt: torch.dtype,
    counter: dict[str, int],
) -> tuple[torch.Tensor, ...]:
    """``g_params`` plus ``-∫ a(t)ᵀ ∂f/∂θ dt`` over the backward solve ``backward_dense`` (from its start to its
    end; the integral of ``d(gθ)/dt = -aᵀ ∂f/∂θ``), by the ``nodes``-point Gauss–Legendre rule on each of its
    steps, split at the forward step boundaries ``breaks`` that fall inside where a forward step lies wholly
    within it (:func:`segment_cuts`).

    The split: the integrand is smooth where both interpolants are, and ``y``'s changes at the forward step
    boundaries. Where ``y`` varies on a time scale the backward solve does not see (the fast transient of a
    stiff problem at ``t = 0``, which the forward solve resolves with small steps while ``a`` is smooth and
    the backward steps are large), one rule over the backward step misses it: on the stiff linear test
    problem of ``tests/test_gauss_adjoint.py`` (rodas5p, rtol 1e-10) ``dL/dθ`` was 1.4e-5 off
    backpropagation's (the interpolating adjoint, whose stages sample ``y`` the same way: 1.4e-4), and
    3e-12 with the split. Each segment costs ``nodes`` evaluations (dopri5 on the tests' MLP: 129 backward
    evaluations, 120 with no split, 153 splitting at every forward boundary).

    ``a`` at the nodes from the backward step's interpolant (the flat state ``(a,)``), ``y`` from ``y_at``;
    per backward step, one evaluation of ``f`` per node (counted in ``counter["nfe"]``) and one backward pass
    through them with respect to ``params``.
    """
    x, w = gauss_legendre(nodes)
    acc = list(g_params)
    for t0, t1, h, interp in backward_dense.steps():
        if t1 == t0 or h == 0.0:
            continue
        cuts = segment_cuts(t0, t1, breaks)
        taus, coefs = [], []
        for c0, c1 in zip(cuts[:-1], cuts[1:]):
            seg = c1 - c0  # signed: negative for a backward solve of a forward-in-time problem
            taus += [c0 + xk * seg for xk in x]
            # d(gθ)/dt = -aᵀ∂f/∂θ integrated from c0 to c1: -seg Σ w_k a(τ_k)ᵀ ∂f/∂θ(τ_k).
            coefs += [-seg * wk for wk in w]
        a_nodes = interp([(tau - t0) / h for tau in taus])  # flat (a,): a in the solver's flat layout
        outputs, cotangents = [], []
        with torch.enable_grad():
            for tau, coef, ak in zip(taus, coefs, a_nodes):
                f = f_flat(torch.full((), tau, dtype=tdt, device=ak.device), y_at(tau))
                counter["nfe"] += 1
                if f.requires_grad:
                    outputs.append(f)
                    cotangents.append(ak.reshape(f.shape) * coef)
            if not outputs:
                continue
            # One backward pass through the nodes' graphs gives the weighted sum of their products exactly.
            grads = torch.autograd.grad(outputs, params, cotangents, allow_unused=True, retain_graph=True)
        acc = [g if d is None else g + d.to(g.dtype) for g, d in zip(acc, grads)]
    return tuple(acc)


def gauss_backward(
    cfg: AdjointConfig, t: torch.Tensor, ys: torch.Tensor, grad_ys: torch.Tensor, need_t: bool, held: HeldStorages
) -> tuple[torch.Tensor, torch.Tensor | None, tuple[torch.Tensor, ...]]:
    """``(a(t_0), dL/dt or None, dL/dθ)`` by the Gauss adjoint, from the kept forward dense output ``cfg.dense``
    with ``cfg.quadrature_nodes`` nodes per backward step (see the module docstring). Each interval notes in
    ``held`` its backward state ``(a,)``, its dense output (read by the quadrature) and the parameter-gradient
    sums."""
    flat, func, params, stats = cfg.flat, cfg.func, cfg.params, cfg.adjoint_stats
    dense = cfg.dense
    assert dense is not None, "the Gauss adjoint's forward solve keeps its dense output"
    acc_dtype = ys.dtype
    times = t.detach().to("cpu", torch.float64).tolist()
    tdt = time_dtype(ys.dtype)
    implicit = cfg.backward_method.capabilities.implicit
    adaptive = cfg.backward_method.capabilities.adaptive
    extra = {"nfe": 0}
    dynamics, jacobian = adjoint_dynamics(func, flat, dense, extra)
    y_at = forward_state(flat, dense)
    breaks = forward_breaks(dense)

    def f_flat(tt: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return flat.flatten(func(tt, flat.unflatten(y)))

    for name, callback in adjoint_step_callbacks(func, cfg.backward_method):
        setattr(dynamics, name, callback)

    options: dict[str, Any] = {**cfg.backward_options, "dense": True}
    if implicit:
        options["jacobian"] = jacobian
    parsed = cfg.adjoint_options
    norm = options.get("norm")
    if norm is not None and parsed.augmented_norm is None and callable(parsed.norm):
        # A norm in torchdiffeq's form is built on the interpolating adjoint's state (a, *gθ) and hands the user
        # (t, y, adj_y, *adj_params); the parameter gradients are not integrated here, so they enter as zeros.
        zeros = tuple(torch.zeros_like(p, dtype=acc_dtype) for p in params)
        options["norm"] = functools.partial(_with_zero_params, norm, zeros)

    def f_at(i: int) -> torch.Tensor:
        with torch.no_grad():
            return f_flat(torch.full((), times[i], dtype=tdt, device=ys.device), ys[i])

    def solve_interval(
        i: int, span: torch.Tensor, a: torch.Tensor, g_params: tuple[torch.Tensor, ...], first_step: float
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], SolverStats]:
        sol = solve(
            dynamics,
            (a,),
            span,
            rtol=cfg.adjoint_rtol,
            atol=cfg.adjoint_atol,
            method=cfg.adjoint_method,
            options=interval_options(options, adaptive, first_step),
        )
        assert isinstance(sol.dense, DenseOutput)  # options["dense"] is set above, on the one clock
        assert isinstance(sol.stats, SolverStats)
        backward_dense = sol.dense.hermite()
        g_params = accumulate_quadrature(
            f_flat, y_at, breaks, backward_dense, params, g_params, cfg.quadrature_nodes, tdt, extra
        )
        held.note(storage_bytes(sol.ys, dense_tensors(backward_dense), g_params))
        return sol.ys[0][-1], g_params, sol.stats

    return sweep_reading_dense(
        times, grad_ys, params, acc_dtype, t, need_t, f_at, stats, solve_interval, implicit, extra
    )


def _with_zero_params(
    norm: Callable[[tuple[torch.Tensor, ...]], torch.Tensor],
    zeros: tuple[torch.Tensor, ...],
    state: tuple[torch.Tensor, ...],
) -> torch.Tensor:
    """``norm`` (written for the state ``(a, *gθ)``) on the Gauss adjoint's state ``(a,)``, ``gθ`` as zeros."""
    return norm((*state, *zeros))
