"""One generic explicit Runge-Kutta step, the reference form of the stage sums.

:func:`rk_step` is the step the host clock (:mod:`~neuralode.solvers.loop`) takes for an explicit
tableau, and, given a ``(B,)`` tensor of steps, the step of the per-sample clock
(:mod:`~neuralode.solvers.per_sample`, one step size per row). The same sums are written twice more,
each for a driver with its own constraint: :func:`~neuralode.solvers.fast.fixed_grid.run` (the lean
fixed grid, inlined to skip per-step overhead) and :func:`~neuralode.solvers.methods.compiled.rk_stages`
(traced by ``torch.compile``). The first keeps this module's order of operations, so its states are the
same bits; the compiled form and the per-row form equal it to rounding (a per-row step cannot be folded
into the coefficients, so the per-row sums are ``y0 + dt ⊙ sum_j a_ij k_j``).

For a tableau ``(c, a, b, b_err)`` with ``s`` stages, a step of size ``dt`` from ``(t0, y0)`` is::

    k_1 = f(t0, y0)                                    (passed in as ``f0``)
    k_i = f(t0 + c_i dt, y0 + dt * sum_{j<i} a_ij k_j)  for i = 2..s
    y1  = y0 + dt * sum_i b_i k_i
    err = dt * sum_i b_err_i k_i                       (b_err = b - b_hat; adaptive tableaus only)
    err_aux = dt * sum_i b_err_aux_i k_i               (tableaus with a second estimate only: dopri8)

All tensors share the shape of ``y0``; ``t0`` and ``dt`` are Python floats (time is carried in
float64 by the integration loop and only turned into a tensor when ``f`` is called), or on the
per-sample clock ``(B,)`` float64 tensors, one per row of ``y0``.

Stages are combined with a chain of ``torch.add(acc, k_j, alpha=dt * a_ij)``, skipping zero
coefficients. For the state sizes Neural ODEs use, this is cheaper than stacking the stages and
contracting them with the coefficient vector: a stack copies every stage once more, and the small
matrix product (a stage buffer with one ``addmm`` per stage) costs as much as the additions it
replaces, and the chain keeps backpropagation through the solver a plain autograd graph. When autograd is not
recording, the chain accumulates in place after its first term (``acc.add_(k_j, ...)``): the same
arithmetic in the same order, so the same bits, without allocating a tensor per term.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple, TypeAlias

import torch

from .tableau import ButcherTableau

Time: TypeAlias = float | torch.Tensor
"""A time or step size: a Python float on the joint clock, a ``(B,)`` float64 tensor (one per row of the
state) on the per-sample clock."""

Func: TypeAlias = Callable[[Time, torch.Tensor], torch.Tensor]
"""``func(t, y) -> dy/dt`` as a step calls it: ``t`` is of the kind of the step's ``t0`` (a float, or a ``(B,)``
tensor on the per-sample clock)."""


class StepResult(NamedTuple):
    """What one step returns, as values: the explicit stepper here and the Adams, Rosenbrock, ESDIRK, Radau
    and fixed implicit steppers all return one.

    The loop decides with it and keeps from it what the next attempt needs (the FSAL stage, the Adams
    history in ``memory``); what else lives across steps is held outside it: the controller's memory and the
    counters in the loop's state and statistics, and a method's own state (the implicit steppers' Jacobian,
    factorisations, collocation polynomial) in the named record of its :class:`Stepper`, which
    :meth:`Stepper.settle` updates once the loop has decided.

    Attributes:
        y1: the propagated solution at ``t0 + dt``, shape of ``y0``.
        y_err: the local error estimate ``dt * sum_i b_err_i k_i`` (``None`` for fixed-step tableaus).
        k: the ``s`` stage derivatives ``k_1 .. k_s``; for FSAL tableaus ``k_s = f(t0 + dt, y1)``.
        y_err_aux: the second error estimate ``dt * sum_i b_err_aux_i k_i`` for tableaus with ``b_err_aux``
            (dopri8), else ``None``; combine it with ``y_err`` by :func:`combined_error_ratio`. Last, with a
            default, so that ``StepResult(y1, y_err, k)`` keeps working.
        memory: what a multistep method hands to its next step (the Adams methods' derivative history,
            newest first); ``None`` for one-step methods.
        shrink: ``None`` for a step the method completed. A factor in ``(0, 1)`` when it could not complete
            it (an implicit method's Newton iteration did not converge): the step is then no step at all
            (``y1`` is ``y0``, ``y_err`` is ``None``, ``k`` holds ``f0`` only as placeholders), and the loop
            rejects it whatever its error and retries from the same point with the step times ``shrink``.
    """

    y1: torch.Tensor
    y_err: torch.Tensor | None
    k: tuple[torch.Tensor, ...]
    y_err_aux: torch.Tensor | None = None
    memory: tuple[torch.Tensor, ...] | None = None
    shrink: float | None = None


class _Plan(NamedTuple):
    rows: tuple[tuple[tuple[int, float], ...], ...]  # nonzero (j, a_ij) per stage i >= 1
    b: tuple[tuple[int, float], ...]
    b_err: tuple[tuple[int, float], ...] | None
    fsal: bool
    b_err_aux: tuple[tuple[int, float], ...] | None = None
    c: tuple[float, ...] = ()  # c_i of stages i >= 1, beside their rows


_PLANS: dict[int, tuple[ButcherTableau, _Plan]] = {}


def _plan(tableau: ButcherTableau) -> _Plan:
    """The tableau's plan, cached by identity: hashing a frozen tableau (every coefficient) on
    each step would cost more than the rest of the step's bookkeeping. The cache holds the
    tableau itself, so an id is never reused while its entry lives."""
    hit = _PLANS.get(id(tableau))
    if hit is not None and hit[0] is tableau:
        return hit[1]
    plan = _make_plan(tableau)
    _PLANS[id(tableau)] = (tableau, plan)
    return plan


step_plan = _plan  # the public name of a tableau's cached plan, for callers that hold it


def _make_plan(tableau: ButcherTableau) -> _Plan:
    """Nonzero coefficients of a tableau, computed once per tableau."""

    def nz(coeffs):
        return tuple((j, float(x)) for j, x in enumerate(coeffs) if x != 0.0)

    rows = tuple(nz(row) for row in tableau.a[1:])
    b_err = nz(tableau.b_err) if tableau.b_err is not None else None
    b_err_aux = nz(tableau.b_err_aux) if tableau.b_err_aux is not None else None
    c = tuple(float(ci) for ci in tableau.c[1:])
    return _Plan(rows, nz(tableau.b), b_err, tableau.fsal and len(rows) > 0, b_err_aux, c)


def combine(y: torch.Tensor, dt: float, coeffs, k) -> torch.Tensor:
    """``y + dt * sum_j coeffs_j k_j`` over the nonzero ``(j, coeff_j)`` pairs given.

    A new tensor unless ``coeffs`` is empty (then ``y`` itself); ``y`` and ``k`` are never
    modified. Without autograd recording, the terms after the first are added in place into
    the new tensor.
    """
    if not coeffs:
        return y
    (j0, c0) = coeffs[0]
    out = torch.add(y, k[j0], alpha=c0 * dt)
    if torch.is_grad_enabled():
        for j, cj in coeffs[1:]:
            out = torch.add(out, k[j], alpha=cj * dt)
    else:
        for j, cj in coeffs[1:]:
            out.add_(k[j], alpha=cj * dt)
    return out


_ZEROS: dict[torch.dtype, torch.Tensor] = {}


def _zero(dtype: torch.dtype) -> torch.Tensor:
    """A 0-dim CPU zero of ``dtype``, made once per dtype. A 0-dim CPU tensor enters an
    elementwise operation on any device as a scalar, so one serves every device."""
    zero = _ZEROS.get(dtype)
    if zero is None:
        zero = _ZEROS[dtype] = torch.zeros((), dtype=dtype)
    return zero


def _weighted_sum(dt: float, coeffs, k, zero: torch.Tensor) -> torch.Tensor:
    """``dt * sum_j coeffs_j k_j`` (no base term), accumulated as :func:`combine` does.

    The first term is ``zero + (c_0 dt) k_0`` (``torch.add`` of a 0-dim zero of ``k``'s dtype
    with ``alpha``): the same number as the product ``k_0 * (c_0 dt)`` (adding an exact zero
    rounds nothing; a product ``-0.0`` becomes ``+0.0``, which no norm sees), but a float32
    tensor times a Python float goes through a scalar-wrapping path that costs two to three
    elementwise additions.
    """
    (j0, c0), rest = coeffs[0], coeffs[1:]
    out = torch.add(zero, k[j0], alpha=c0 * dt)
    if torch.is_grad_enabled():
        for j, cj in rest:
            out = torch.add(out, k[j], alpha=cj * dt)
    else:
        for j, cj in rest:
            out.add_(k[j], alpha=cj * dt)
    return out


def _lin(coeffs, k) -> torch.Tensor:
    """``sum_j coeffs_j k_j`` over the nonzero ``(j, coeff_j)`` pairs (the step size not folded in)."""
    (j0, c0), rest = coeffs[0], coeffs[1:]
    out = k[j0] * c0
    for j, cj in rest:
        out = torch.add(out, k[j], alpha=cj)
    return out


def combine_rows(y: torch.Tensor, dt: torch.Tensor, coeffs, k) -> torch.Tensor:
    """:func:`combine` with a step per row: ``y + dt ⊙ sum_j coeffs_j k_j``, ``dt`` of shape ``(B, 1, ...)``.

    The coefficients cannot be folded into a per-row step as :func:`combine` folds ``coeff_j dt`` into
    one scalar, so the stage sum is formed first and scaled by each row's step once (``addcmul``).
    """
    if not coeffs:
        return y
    return torch.addcmul(y, dt, _lin(coeffs, k))


def _rows(dt: torch.Tensor, y0: torch.Tensor) -> torch.Tensor:
    """A ``(B,)`` step as a column ``(B, 1, ...)`` that broadcasts over each row of ``y0``, in its dtype."""
    col = dt if dt.dtype == y0.dtype else dt.to(y0.dtype)
    return col.view(-1, *([1] * (y0.dim() - 1)))


def rk_step(
    func: Func,
    t0: float | torch.Tensor,
    y0: torch.Tensor,
    f0: torch.Tensor,
    dt: float | torch.Tensor,
    tableau: ButcherTableau,
    plan: _Plan | None = None,
) -> StepResult:
    """Take one explicit Runge-Kutta step of size ``dt`` (negative to integrate backwards).

    One step for both clocks. On the joint clock ``t0`` and ``dt`` are Python floats and the stage
    sums are :func:`combine`'s chains with ``a_ij dt`` folded into each coefficient. On the
    per-sample clock (:mod:`~neuralode.solvers.per_sample`) ``t0`` and ``dt`` are ``(B,)`` float64
    tensors, one step per row of ``y0`` (its first dimension), and every sum is
    ``y0 + dt ⊙ sum_j a_ij k_j`` (:func:`combine_rows`); a row with ``dt = 0`` keeps ``y1 = y0``.
    Stage ``i`` is evaluated at ``t0 + c_i dt`` (row by row on the per-sample clock).

    Args:
        func: ``func(t, y) -> dy/dt``, ``t`` of the type of ``t0`` (the caller adapts user functions).
        t0: time at the start of the step: a float, or ``(B,)`` float64 per row.
        y0: state at ``t0``, any shape (rows first when ``dt`` is a tensor).
        f0: ``func(t0, y0)``, the first stage, computed by the caller so it can be reused (FSAL,
            rejected steps, dense output).
        dt: the step size: a float, or a ``(B,)`` float64 tensor of per-row steps.
        tableau: the method.
        plan: ``step_plan(tableau)``, when the caller holds it for a whole solve (saves the
            cache lookup on every step).

    Returns:
        A :class:`StepResult` with ``y1``, the error estimate(s) and the stages.
    """
    if plan is None:
        plan = _plan(tableau)
    if isinstance(dt, torch.Tensor):
        return _rk_rows(func, t0, y0, f0, dt, plan)
    k = [f0]
    yi = y0
    for ci, row in zip(plan.c, plan.rows):
        yi = combine(y0, dt, row, k)
        k.append(func(t0 + ci * dt, yi))
    # FSAL: the last stage is evaluated at (t0 + dt, y1), so y1 is that stage's input.
    y1 = yi if plan.fsal else combine(y0, dt, plan.b, k)
    if not plan.b_err:
        return StepResult(y1, None, tuple(k))
    dtype = y0.dtype  # (the test of _error_stages, inline on this hot path)
    if dtype in (torch.float16, torch.bfloat16):
        ke, zero = [x.float() for x in k], _zero(torch.float32)
    else:
        ke, zero = k, _zero(dtype)
    y_err = _weighted_sum(dt, plan.b_err, ke, zero)
    y_err_aux = _weighted_sum(dt, plan.b_err_aux, ke, zero) if plan.b_err_aux else None
    return StepResult(y1, y_err, tuple(k), y_err_aux)


def _error_stages(k, dtype: torch.dtype):
    """The stages the error estimate is formed from, and a zero of their dtype.

    The error estimate is a small difference of large stage sums: for float16/bfloat16 states it is
    formed in float32, or its rounding (an ulp of every stage) would be what the step-size
    controller sees.
    """
    if dtype in (torch.float16, torch.bfloat16):
        return [x.float() for x in k], _zero(torch.float32)
    return k, _zero(dtype)


def _rk_rows(func: Func, t0: Time, y0: torch.Tensor, f0: torch.Tensor, dt: torch.Tensor, plan: _Plan):
    """:func:`rk_step` with a ``(B,)`` step per row: the same plan and order of stages, the sums by
    :func:`combine_rows`."""
    col = _rows(dt, y0)
    k = [f0]
    yi = y0
    for ci, row in zip(plan.c, plan.rows):
        yi = combine_rows(y0, col, row, k)
        k.append(func(torch.add(t0, dt, alpha=ci), yi))
    y1 = yi if plan.fsal else combine_rows(y0, col, plan.b, k)
    if not plan.b_err:
        return StepResult(y1, None, tuple(k))
    ke, _ = _error_stages(k, y0.dtype)
    y_err = col * _lin(plan.b_err, ke)
    y_err_aux = col * _lin(plan.b_err_aux, ke) if plan.b_err_aux else None
    return StepResult(y1, y_err, tuple(k), y_err_aux)


def combined_error_ratio(err, err_aux=None):
    """The error ratio the step-size controller sees, from the scaled norms of one or two error estimates.

    ``err`` is ``||y_err / scale||`` (the loop's norm, e.g. RMS, of the estimate divided by
    ``atol + rtol * max(|y0|, |y1|)``); ``err_aux`` the same norm of ``y_err_aux``, or ``None`` for tableaus
    without ``b_err_aux``, in which case ``err`` is returned unchanged. With both (dopri8 = DOP853), Hairer's
    combination::

        ratio = err**2 / sqrt(err**2 + 0.01 * err_aux**2)        (0 when both are 0)

    For small steps ``err ~ dt^6`` and ``err_aux ~ dt^4``, so ``ratio ~ 10 err**2 / err_aux ~ dt^8``: the ratio
    of an order-7 estimate, which is why dopri8 has ``error_order = 7``. With the RMS norm this is exactly
    Hairer's DOP853 (and scipy's ``DOP853``) error norm. Works on Python floats and on tensors of per-sample
    norms alike; if either norm is infinite the ratio is ``inf`` (a rejected step), if either is NaN it is NaN.
    """
    if err_aux is None:
        return err
    if isinstance(err, torch.Tensor) or isinstance(err_aux, torch.Tensor):
        err, err_aux = torch.as_tensor(err), torch.as_tensor(err_aux)
        e2 = err * err
        deno = e2 + 0.01 * (err_aux * err_aux)
        safe = torch.where(deno > 0, deno, torch.ones_like(deno))
        out = torch.where(deno > 0, e2 / torch.sqrt(safe), torch.zeros_like(deno))
        return torch.where(torch.isfinite(err) & torch.isfinite(err_aux), out, err + err_aux)
    if not (math.isfinite(err) and math.isfinite(err_aux)):
        return err + err_aux  # norms are >= 0: inf, or NaN if either is NaN
    e2 = err * err
    deno = e2 + 0.01 * err_aux * err_aux
    return e2 / math.sqrt(deno) if deno > 0 else 0.0


class Stepper:
    """One method's stepping for one solve, built by its method for that solve.

    ``__call__(side, t, y, f0, h, stage, memory)`` takes one step of size ``h`` from ``(t, y)`` and returns
    ``(f0, StepResult)``, evaluating ``f0 = f(t, y)`` first when it is ``None`` (just after ``t`` when ``side``
    is +1) and the other stages with ``stage``; it never decides acceptance. ``settle(accepted)`` is told,
    after every attempt, whether the loop accepted the step just returned. The base class keeps no state;
    a method with state across steps (Jacobians, factorisations, a collocation polynomial) keeps it in a
    named record on its subclass and updates it in ``settle``.
    """

    def __call__(self, side, t, y, f0, h, stage, memory=None):
        raise NotImplementedError

    def settle(self, accepted: bool) -> None:
        """Told after every attempt whether the loop accepted the step just returned; nothing by default."""
