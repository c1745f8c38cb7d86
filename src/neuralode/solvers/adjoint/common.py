"""What the adjoints share, below all of them: the configuration record, the sweep over output intervals,
the backward-work flag and the refusal of double backward.

``backsolve`` (the adjoint entry points and the backsolve adjoint) imports ``gauss``, ``interpolating`` and
``per_sample``; ``gauss`` imports ``interpolating``, and those two and ``per_sample`` import nothing else
from the package's adjoint but this module, so the imports of ``adjoint/`` run one way:

    backsolve  ->  gauss  ->  interpolating  ->  common;   backsolve  ->  per_sample  ->  common

:class:`AdjointConfig` is built once per ``odeint_adjoint`` call, after every argument has been checked,
and read by the backward solves; a stage that needs a variant (the forward solve's dense output for the
interpolating adjoint) makes one with :func:`dataclasses.replace`, never by changing it.
:class:`AdjointOptions` is the user's ``adjoint_options`` dict parsed once into typed fields.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch

from ..dense import DenseOutput
from ..methods.base import Method
from ..options import _type_name
from ..solution import SolverStats, TensorOrTuple

IN_BACKWARD: ContextVar[bool] = ContextVar("neuralode_adjoint_backward", default=False)
"""True while an adjoint backward solve runs (set by each adjoint around its backward sweep)."""


def in_adjoint_backward() -> bool:
    """Whether the caller runs inside an adjoint backward solve (used to count NFE apart)."""
    return IN_BACKWARD.get()


def refuse_double_backward(family: str) -> None:
    """Raise a ValueError when a backward solve that records no graph runs under ``create_graph=True``.

    Autograd runs a custom Function's backward with grad mode on exactly when the caller asked for
    a differentiable gradient (``torch.autograd.grad(..., create_graph=True)``, a Hessian-vector
    product, a gradient penalty). A backward solve that differentiates ``f`` without a graph of
    its own vector-Jacobian products returns a gradient whose derivative misses every term through
    ``∂f/∂y`` and ``∂f/∂θ``: a second derivative computed from it is wrong, not merely slow, so it
    is refused rather than returned. The backsolve adjoint with an explicit ``adjoint_method``
    records its backward solve instead and is differentiable.
    """
    if torch.is_grad_enabled():
        raise ValueError(
            f"create_graph=True is not supported by odeint_adjoint's {family}: the gradient was requested "
            "differentiable (double backward, e.g. a Hessian-vector product), and its backward solve "
            "records no graph, so the second derivative would be wrong. For second derivatives use "
            "odeint (backpropagation through the solver), odeint(..., options={'checkpoint': True}) or "
            "odeint_adjoint's backsolve adjoint with an explicit adjoint_method (the default for explicit "
            "methods, without options['per_sample'] or adjoint_options['interpolate']=True); or compute "
            "the gradient with create_graph=False."
        )


class Flat:
    """The user's state structure (tensor or tuple) seen as one flat tensor."""

    def __init__(self, parts: tuple[torch.Tensor, ...], is_tuple: bool):
        self.is_tuple = is_tuple
        self.shapes = [tuple(p.shape) for p in parts]  # plain ints: a compiled run lifts them as such
        self.sizes = [p.numel() for p in parts]

    def flatten(self, y: TensorOrTuple) -> torch.Tensor:
        if not self.is_tuple:
            return cast(torch.Tensor, y)  # a state that is not a tuple is one tensor
        return torch.cat([p.reshape(-1) for p in y])

    def unflatten(self, y: torch.Tensor) -> TensorOrTuple:
        if not self.is_tuple:
            return y
        return tuple(p.view(s) for p, s in zip(torch.split(y, self.sizes), self.shapes))

    def flatten_series(self, ys: TensorOrTuple) -> torch.Tensor:
        """The user's structure with a leading time axis -> (n, N) (or the tensor itself)."""
        if not self.is_tuple:
            return cast(torch.Tensor, ys)  # a state that is not a tuple is one tensor
        return torch.cat([c.reshape(c.shape[0], -1) for c in ys], dim=1)

    def unflatten_series(self, ys: torch.Tensor) -> TensorOrTuple:
        """(n, N) -> the user's structure with a leading time axis."""
        if not self.is_tuple:
            return ys
        n = ys.shape[0]
        return tuple(c.reshape(n, *s) for c, s in zip(torch.split(ys, self.sizes, dim=1), self.shapes))


@dataclass(frozen=True)
class AdjointOptions:
    """The user's ``adjoint_options`` (or, when it is ``None``, the forward ``options``) parsed once.

    Built by :func:`~neuralode.solvers.adjoint.backsolve.parse_adjoint_options`, which refuses a bad
    value naming the key; read by ``backsolve`` when it builds :class:`AdjointConfig` (the backward
    solve's norm and options, the choice of the interpolating adjoint). The per-sample adjoint
    parses its own (its norm is always the seminorm).
    """

    norm: Literal["seminorm", "full"] | Callable[[tuple[torch.Tensor, ...]], torch.Tensor] | None
    """``"norm"``: ``"seminorm"`` (the parameter-gradient quadratures are left out of the error norm),
    ``"full"`` (the solver's norm over the whole augmented state), a norm written for torchdiffeq's adjoint,
    called on ``(t, y, adj_y, *adj_params)``, or ``None`` when not given: the seminorm, except the full norm
    for the interpolating adjoint with an implicit method (see ``_backward_options`` in ``backsolve``).
    Unused when ``augmented_norm`` is set."""
    augmented_norm: Callable[[tuple[torch.Tensor, ...]], torch.Tensor] | None
    """``"augmented_norm"``: a norm called on the backward solve's own state ``(y, a, *gθ)``, or ``None``."""
    interpolate: bool | None
    """``"interpolate"``: ``True`` or ``False`` as requested, ``None`` for the default (the interpolating
    adjoint for an implicit ``adjoint_method``)."""
    solver: dict[str, Any]
    """Every other key: options of the backward solve as :func:`~neuralode.solvers.api.solve` takes them
    (``first_step``, ``controller``, ``jacobian``, ...). When ``adjoint_options`` is ``None``, the forward
    ``options`` without ``norm``, ``compile`` and ``compile_steps``."""
    given: bool
    """Whether the user gave ``adjoint_options`` (error messages name it or its default)."""


@dataclass(frozen=True)
class AdjointConfig:
    """Everything the adjoint's forward and backward solves need, fixed when ``odeint_adjoint`` is called.

    Built once by :func:`~neuralode.solvers.adjoint.backsolve.solve_adjoint` after every argument has
    been checked; passed through the autograd Function to the backward sweep (the backsolve's own, or
    :func:`~neuralode.solvers.adjoint.interpolating.interpolating_backward`). ``adjoint_stats`` is the
    one mutable object it holds: the counters the backward solves add to, which the returned
    ``Solution`` shows.
    """

    func: Callable[[torch.Tensor, Any], TensorOrTuple]
    """The user's dynamics ``f(t, y)``: called by the forward solve, and differentiated by every backward
    evaluation and at the output times (``dL/dt_i``)."""
    flat: Flat
    """The user's state structure: the backward solves work on one flat ``y`` (and ``a``) for a tuple state."""
    params: tuple[torch.Tensor, ...]
    """The tensors differentiated (``adjoint_params``, or ``func``'s parameters), each once, only those that
    require grad: the autograd Function's inputs and the backward quadratures' targets."""
    rtol: Any
    """The forward solve's relative tolerance, as given (read by the forward solve)."""
    atol: Any
    """The forward solve's absolute tolerance, as given (read by the forward solve)."""
    method: str
    """The forward method's registered name (the forward solve; ``Solution.method``)."""
    options: dict | None
    """The forward solve's options, as given (the interpolating adjoint adds ``dense``)."""
    adjoint_rtol: Any
    """The backward solve's relative tolerance in the layout of its state: one entry per part of
    ``(y, a, *gθ)`` when given per element (``(a, *gθ)`` when interpolating), else a number."""
    adjoint_atol: Any
    """As ``adjoint_rtol``, the absolute tolerance."""
    adjoint_method: str
    """The backward method's name as given (the forward one by default), handed to each interval's solve."""
    backward_method: Method
    """``adjoint_method`` resolved: the backward sweeps read its capabilities (implicit, adaptive)."""
    adjoint_options: AdjointOptions
    """The user's ``adjoint_options``, parsed; what the backward solve takes of it is ``backward_options``."""
    backward_options: dict[str, Any]
    """The options of every interval's backward solve: ``adjoint_options.solver`` with the norm turned into
    the function the solver calls on the backward state (and, interpolating, without ``jacobian``).
    :func:`interval_options` hands each interval a copy with the step carried over."""
    adjoint_stats: SolverStats
    """The backward solves' counters, summed over intervals (``Solution.adjoint_stats``)."""
    interpolate: bool
    """Whether the backward solve reads ``y(t)`` from the forward solve's dense output (the interpolating
    adjoint) instead of re-solving it backwards (the backsolve)."""
    quadrature_nodes: int = 0
    """Gauss–Legendre nodes per backward step of the Gauss adjoint (``adjoint_options["quadrature"]``; it
    interpolates too, so ``interpolate`` is ``True``), 0 for the other adjoints."""
    dense: DenseOutput | None = None
    """The forward solve's kept interpolant, read by the interpolating adjoint; set (by
    :func:`dataclasses.replace`) once the forward solve has run, ``None`` for the backsolve."""


def differentiated_params(func: Any, adjoint_params: Sequence[torch.Tensor] | None) -> tuple[torch.Tensor, ...]:
    """The tensors an adjoint differentiates: ``adjoint_params`` (default ``func.parameters()``), checked,
    without those that do not require grad, each once."""
    if adjoint_params is None:
        if not isinstance(func, torch.nn.Module):
            raise ValueError(
                "func is not a torch.nn.Module, so the parameters to differentiate cannot be found; "
                "pass them as adjoint_params=(...) (an empty tuple if there are none)."
            )
        adjoint_params = tuple(func.parameters())
    else:
        if (
            isinstance(adjoint_params, torch.Tensor)
            or not isinstance(adjoint_params, (tuple, list))
            and not hasattr(adjoint_params, "__iter__")
        ):
            raise TypeError(
                "adjoint_params must be a sequence of tensors, e.g. adjoint_params=(w,) or "
                f"adjoint_params=tuple(model.parameters()); got {_type_name(adjoint_params)}."
            )
        adjoint_params = tuple(adjoint_params)
        for i, p in enumerate(adjoint_params):
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"adjoint_params[{i}] must be a torch.Tensor; got {_type_name(p)}.")
    # Parameters that do not require grad get no gradient; duplicates (shared modules) count once.
    seen: set[int] = set()
    out = []
    for p in adjoint_params:
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return tuple(out)


def sweep_intervals(
    times: list[float],
    grad_ys: torch.Tensor,
    g_params: tuple[torch.Tensor, ...],
    t: torch.Tensor,
    need_t: bool,
    f_at,
    stats,
    solve_interval,
    implicit: bool,
    differentiable: bool = False,
):
    """The backward pass over the output intervals, last to first, shared by the adjoints.

    On each interval ``[t_{i-1}, t_i]`` ``solve_interval(i, span, a, g_params, first_step)`` solves the
    backward dynamics from ``a(t_i)`` and returns ``(a(t_{i-1}^+), g_params, its stats)``; at
    ``t_{i-1}`` ``a`` jumps by ``∂L/∂y(t_{i-1})``. The step carried into the next interval follows
    :func:`step_after_jump`. With ``need_t`` the gradients with respect to the output times are
    ``Re <∂L/∂y(t_i), f(t_i, y_i)>`` (complex states too), and ``-Re <a(t_0) - ∂L/∂y(t_0), f(t_0, y_0)>``
    for ``t_0``; ``f_at(i)`` evaluates ``f`` there (counted in ``stats.nfe``).

    Returns:
        ``(a(t_0), dL/dt or None, g_params)``.
    """
    n = len(times)
    t_grad = torch.zeros(n, dtype=t.dtype, device=grad_ys.device) if need_t else None
    a = grad_ys[-1]
    # The step carried across output times is local to this backward call: a second backward
    # on the same graph (retain_graph) must not start from the first one's last step.
    next_step = math.nan
    for i in range(n - 1, 0, -1):
        if t_grad is not None:  # need_t
            t_grad[i] = torch.real(grad_ys[i].conj() * f_at(i)).sum()
            stats.nfe += 1
        if differentiable:  # the interval's ends as tensors of t: the gradient's dependence on t is recorded
            span = torch.stack([t[i], t[i - 1]]).to(torch.float64)
        else:
            span = torch.tensor([times[i], times[i - 1]], dtype=torch.float64, device=t.device)
        a_end, g_params, sol_stats = solve_interval(i, span, a, g_params, next_step)
        next_step = step_after_jump(add_interval_stats(stats, sol_stats), grad_ys[i - 1], implicit)
        a = a_end + grad_ys[i - 1]
    if t_grad is not None:  # need_t
        t_grad[0] = -torch.real((a - grad_ys[0]).conj() * f_at(0)).sum()
        stats.nfe += 1
    return a, t_grad, g_params


def interval_options(options: dict, adaptive: bool, next_step: float) -> dict:
    """The backward solve's options for one output interval: the step size carried over from the
    interval before instead of re-running the initial-step heuristic in every interval
    (torchdiffeq does the latter, which costs an evaluation and usually a too-small first step)."""
    if adaptive and math.isfinite(next_step) and options.get("first_step") is None:
        return {**options, "first_step": abs(next_step)}
    return options


def sweep_reading_dense(
    times: list[float],
    grad_ys: torch.Tensor,
    params: tuple[torch.Tensor, ...],
    acc_dtype: torch.dtype,
    t: torch.Tensor,
    need_t: bool,
    f_at,
    stats,
    solve_interval,
    implicit: bool,
    extra: dict[str, int],
):
    """:func:`sweep_intervals` for the adjoints that read ``y`` from the forward solve's dense output (the
    interpolating and Gauss adjoints): the parameter gradients start at zero in ``acc_dtype``, the sweep
    runs marked as an adjoint's backward pass (``in_adjoint_backward()``), and the evaluations their
    dynamics count apart (``extra["nfe"]``) are added to ``stats`` however the sweep ends."""
    g_params = tuple(torch.zeros_like(p, dtype=acc_dtype) for p in params)
    token = IN_BACKWARD.set(True)
    try:
        return sweep_intervals(times, grad_ys, g_params, t, need_t, f_at, stats, solve_interval, implicit)
    finally:
        IN_BACKWARD.reset(token)
        stats.nfe += extra["nfe"]


def step_after_jump(next_step: float, jump: torch.Tensor, implicit: bool) -> float:
    """The step to carry into the next output interval, given the jump ``∂L/∂y(t_i)`` of ``a`` there.

    ``da/dt = -a ∂f/∂y`` is linear in ``a``: a jump changes the scale and direction of ``a``, not
    the time scales of ``-Jᵀ``. An explicit method's step is already bounded by the fastest of them
    that matters (by accuracy, or by its stability region on the fast modes), before the jump and
    after it, so the carried step suits the new state and the initial-step heuristic (conservative
    by design: 0.09 to 0.2 of the carried step on an MLP) only starts each interval too short. An
    implicit method's step, by contrast, grows far beyond the fast time scales once the solution
    has relaxed onto its slow manifold, and the jump puts ``a`` back off it, starting a boundary
    layer (Robertson with rodas5p: 0.34 carried where 6.7e-5 is needed; the heuristic proposes
    0.0016 to 0.02 of the carried step). So after a nonzero jump an implicit method restarts from
    the heuristic (NaN = none carried), an explicit one carries its step on. Backward steps
    (accepted + rejected) and evaluations, restart after each jump against carry: tanh MLP with a
    loss at 10 output times, dopri5, 20 + 0 (140) against 11 + 0 (77), rodas5p 20 + 0 (210)
    against 11 + 0 (111) (the price of the implicit rule on a non-stiff problem); a linear system
    with a decaying mode of rate 20 weighted in the loss, 101 + 20 (766) against 100 + 1 (627);
    Van der Pol (mu = 5, 10) within 2.5% either way; Robertson with rodas5p (3 output intervals,
    the seminorm) 365 + 6 (3695) against 365 + 12 (3735). The gradient errors against backpropagation agree
    within 15% (MLP, linear, Robertson) or within a factor of 2.1 either way (Van der Pol).
    """
    return math.nan if implicit and bool(jump.ne(0).any()) else next_step


def add_interval_stats(stats, part) -> float:
    """Add one interval's backward statistics to the solve's; returns the step size to carry on."""
    stats.nfe += part.nfe
    stats.n_accepted += part.n_accepted
    stats.n_rejected += part.n_rejected
    stats.n_jac_evals += part.n_jac_evals
    stats.n_factorizations += part.n_factorizations
    stats.n_linear_solves += part.n_linear_solves
    stats.n_compiles += part.n_compiles  # a compiled backward solve (adjoint/traced.py)
    stats.compile_s += part.compile_s
    stats.last_step = part.last_step
    stats.next_step = part.next_step
    return part.next_step
