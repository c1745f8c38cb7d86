"""Dense output: the solution between the ends of an accepted step.

Three interpolants, chosen by the integration loop:

* ``linear``: ``y0 + theta (y1 - y0)``; what torchdiffeq's fixed-grid solvers use by default.
* ``hermite``: the cubic Hermite polynomial through ``(y0, f0)`` and ``(y1, f1)``; third-order
  accurate (local error O(dt^4)), used by every method without a continuous extension of its own.
* ``continuous_extension``: the method's own dense output ``y0 + dt sum_i b_i(theta) k_i`` with
  ``b_i(theta) = sum_j P_ij theta^(j+1)`` (dopri5: Hairer, Norsett, Wanner I, II.6; tsit5:
  Tsitouras 2011). It reuses the stages of the step, so it costs no function evaluation.
  For a tableau with extra dense-output stages (``tableau.dense_extra``; dopri8 = DOP853, order 7)
  the same function runs over the step's stages followed by the extra ones, which
  :func:`dense_stages` evaluates; a loop calls it only for steps with output times in them::

      k_full = step.k + dense_stages(func, t0, y0, step.k, dt, tableau)    # 13 + 3 = 16 stages
      y_theta = continuous_extension(y0, k_full, dt, tableau.dense_extra, theta)

Here ``theta = (t - t0) / dt`` lies in ``[0, 1]``.
"""

from __future__ import annotations

from array import array
from functools import cache

import torch

from .stepper import Func, combine, combine_rows
from .tableau import ButcherTableau


def linear(y0: torch.Tensor, y1: torch.Tensor, theta: float) -> torch.Tensor:
    """Linear interpolation between ``y0`` (theta = 0) and ``y1`` (theta = 1)."""
    return torch.add(y0, y1 - y0, alpha=theta)


def hermite(
    y0: torch.Tensor, y1: torch.Tensor, f0: torch.Tensor, f1: torch.Tensor, dt: float, theta: float
) -> torch.Tensor:
    """Cubic Hermite interpolation from values and derivatives at both ends of a step.

    ``y(theta) = h00 y0 + h10 dt f0 + h01 y1 + h11 dt f1`` with the Hermite basis
    ``h00 = 2θ³ - 3θ² + 1``, ``h10 = θ³ - 2θ² + θ``, ``h01 = -2θ³ + 3θ²``, ``h11 = θ³ - θ²``.
    Written as ``y0 + h01 (y1 - y0) + dt (h10 f0 + h11 f1)`` so that it is exact on constants
    without rounding.
    """
    h01, h10_dt, h11_dt = _hermite_weights(theta, dt)
    out = torch.add(y0, y1 - y0, alpha=h01)
    out = torch.add(out, f0, alpha=h10_dt)
    return torch.add(out, f1, alpha=h11_dt)


def _hermite_weights(theta, dt):
    """``(h01, dt h10, dt h11)`` of :func:`hermite` at ``theta``: floats, or ``(K,)`` tensors for
    ``(K,)`` tensors ``theta`` and ``dt`` (one step per row, :func:`hermite_rows`)."""
    t2 = theta * theta
    t3 = t2 * theta
    return -2.0 * t3 + 3.0 * t2, (t3 - 2.0 * t2 + theta) * dt, (t3 - t2) * dt


def hermite_rows(
    y0: torch.Tensor, y1: torch.Tensor, f0: torch.Tensor, f1: torch.Tensor, dt: torch.Tensor, theta: torch.Tensor
) -> torch.Tensor:
    """:func:`hermite` with a step and a ``theta`` per row: ``(K, N)`` states, ``(K,)`` float64 ``dt`` and
    ``theta`` (the per-sample clock's interpolant). The same weights (:func:`_hermite_weights`, formed in
    float64 and then cast to the state's dtype) and the same grouping ``y0 + h01 (y1 - y0) + dt h10 f0 +
    dt h11 f1``."""
    h01, h10_dt, h11_dt = (w.to(y0.dtype)[:, None] for w in _hermite_weights(theta, dt))
    out = torch.addcmul(y0, h01, y1 - y0)
    out = torch.addcmul(out, h10_dt, f0)
    return torch.addcmul(out, h11_dt, f1)


def continuous_extension(
    y0: torch.Tensor, k: tuple[torch.Tensor, ...], dt: float, dense: tuple[tuple[float, ...], ...], theta: float
) -> torch.Tensor:
    """A Runge-Kutta method's own dense output ``y0 + dt sum_i b_i(theta) k_i``."""
    return combine(y0, dt, [(i, bi) for i, bi in enumerate(_weights(dense, theta)) if bi != 0.0], k)


def continuous_extension_rows(
    y0: torch.Tensor,
    stages: torch.Tensor,
    dt: torch.Tensor,
    dense: tuple[tuple[float, ...], ...],
    theta: torch.Tensor,
) -> torch.Tensor:
    """:func:`continuous_extension` with a step per row, at one or ``m`` values of ``theta`` per row.

    Args:
        y0: ``(K, N)`` states at the steps' starts.
        stages: ``(K, s', N)`` the steps' stages stacked (``s' >= s = len(dense)``; the first ``s`` are used).
        dt: ``(K,)`` float64 step sizes.
        dense: the continuous extension's table ``P`` (``b_i(theta) = sum_j P_ij theta^(j+1)``).
        theta: ``(K,)`` or ``(K, m)`` float64.

    Returns:
        ``y0 + dt sum_i b_i(theta) k_i``: ``(K, N)``, or ``(K, m, N)`` for a ``(K, m)`` ``theta``, as one
        batched matrix product of the weights (:func:`weights_rows`, float64, cast to the state's dtype
        and scaled by each row's step) with the stages.
    """
    dtype = y0.dtype
    s = len(dense)
    w = weights_rows(dense, theta.reshape(-1)).view(*theta.shape, s)
    w = w.to(dtype) * dt.to(dtype).view(-1, *([1] * theta.dim()))  # (K, [m,] s): dt b_i(theta)
    if theta.dim() == 1:
        return torch.baddbmm(y0[:, None, :], w[:, None, :], stages[:, :s]).squeeze(1)
    return torch.baddbmm(y0[:, None, :], w, stages[:, :s])


@cache
def _extra_rows(tableau: ButcherTableau) -> tuple[tuple[tuple[int, float], ...], ...]:
    """Nonzero ``(l, a_extra_jl)`` pairs of each extra stage's row, computed once per tableau."""
    return tuple(tuple((l, x) for l, x in enumerate(row) if x != 0.0) for row in tableau.a_extra or ())


def dense_stages(
    func: Func,
    t0: float | torch.Tensor,
    y0: torch.Tensor,
    k: tuple[torch.Tensor, ...],
    dt: float | torch.Tensor,
    tableau: ButcherTableau,
) -> tuple[torch.Tensor, ...]:
    """The stages a tableau evaluates only for dense output (``tableau.extra_stages`` calls of ``func``).

    Extra stage ``j`` is ``f(t0 + c_extra_j dt, y0 + dt * sum_l a_extra_jl k_l)``, where ``k_l`` runs over the
    step's ``s`` stages and then the extra stages before ``j``.

    Args:
        func: ``func(t, y) -> dy/dt`` with ``t`` of the kind of ``t0``, the same function the step was taken with
            (as for :func:`~neuralode.solvers.methods.stepper.rk_step`).
        t0, y0, dt: the start, state and size of the accepted step; ``t0`` and ``dt`` are floats, or
            ``(B,)`` float64 tensors with one step per row of ``y0`` (the per-sample clock, as in
            :func:`~neuralode.solvers.methods.stepper.rk_step`).
        k: the step's ``s = tableau.stages`` stages, ``StepResult.k``. For dopri8 the last of them is
            ``f(t0 + dt, y1)`` (the tableau is FSAL, so :func:`rk_step` computes it and the loop reuses it as
            the next step's ``f0``); nothing has to be appended.
        tableau: the method; a tableau without extra stages gives ``()``.

    Returns:
        The ``e = tableau.extra_stages`` extra stages, to be appended to ``k`` for
        ``continuous_extension(y0, k + extra, dt, tableau.dense_extra, theta)``.

    Raises:
        ValueError: if ``len(k)`` is not ``tableau.stages``.
    """
    if len(k) != tableau.stages:
        raise ValueError(
            f"dense_stages: {tableau.name!r} has {tableau.stages} stages but {len(k)} were given; "
            "pass the step's stages StepResult.k"
        )
    if tableau.c_extra is None:
        return ()
    stages = list(k)
    if isinstance(dt, torch.Tensor):
        col = dt.to(y0.dtype).view(-1, *([1] * (y0.dim() - 1)))
        for c_j, row in zip(tableau.c_extra, _extra_rows(tableau)):
            stages.append(func(torch.add(t0, dt, alpha=c_j), combine_rows(y0, col, row, stages)))
    else:
        for c_j, row in zip(tableau.c_extra, _extra_rows(tableau)):
            stages.append(func(t0 + c_j * dt, combine(y0, dt, row, stages)))
    return tuple(stages[len(k) :])


def _horner(coeffs, theta):
    """``sum_j coeffs_j theta^(j+1)`` by Horner's rule, ``((c_m theta + c_(m-1)) theta + ...) theta``.

    Generic over what it is given: float coefficients and a float ``theta`` (one stage's weight on
    the joint clock), or ``(s,)`` tensor coefficients (one column of every stage's polynomial) and a
    ``(K, 1)`` tensor ``theta`` (every stage's weight at ``K`` times at once, ``(K, s)``): the same
    operations in the same order, elementwise.
    """
    out = 0.0
    for p in reversed(coeffs):
        out = (out + p) * theta
    return out


def _weights(dense: tuple[tuple[float, ...], ...], theta: float) -> list[float]:
    """``b_i(theta) = sum_j P_ij theta^(j+1)`` of a continuous extension for every stage, by
    Horner's rule (:func:`_horner`)."""
    return [_horner(row, theta) for row in dense]


_COLUMNS: dict[tuple[int, torch.device], tuple[tuple, tuple[torch.Tensor, ...]]] = {}


def weights_rows(dense: tuple[tuple[float, ...], ...], theta: torch.Tensor) -> torch.Tensor:
    """:func:`_weights` at ``K`` values of ``theta`` at once: ``(K, s)`` float64 for a ``(K,)`` float64 ``theta``.

    Row ``r`` is bit for bit ``_weights(dense, float(theta[r]))``: the same Horner recurrence
    (:func:`_horner`) on the polynomial's columns (float64 ``(s,)`` tensors, made once per table and
    device) instead of one stage's coefficients.
    """
    key = (id(dense), theta.device)
    hit = _COLUMNS.get(key)
    if hit is None or hit[0] is not dense:
        P = torch.tensor(dense, dtype=torch.float64, device=theta.device)
        hit = _COLUMNS[key] = (dense, tuple(P.unbind(1)))
    return _horner(hit[1], theta[:, None])


_ARRAY_CODES = {torch.float32: "f", torch.float64: "d"}


def _weight_matrix(values: list[float], m: int, like: torch.Tensor) -> torch.Tensor:
    """The ``(m, len(values) // m)`` weight matrix of the batched interpolants, in ``like``'s
    dtype and device. On the CPU, float32/float64 weights are read from a packed array
    (``torch.frombuffer``), a third of the cost of building a tensor from a Python list,
    which matters once per step with output times in it."""
    code = _ARRAY_CODES.get(like.dtype)
    if code is not None and like.device.type == "cpu":
        w = torch.frombuffer(array(code, values), dtype=like.dtype)
    else:
        w = torch.tensor(values, dtype=like.dtype, device=like.device)
    return w.view(m, -1)


def continuous_extension_many(
    y0: torch.Tensor, k: tuple[torch.Tensor, ...], dt: float, dense: tuple[tuple[float, ...], ...], thetas: list[float]
) -> list[torch.Tensor]:
    """:func:`continuous_extension` at several ``theta`` of one step, in one matrix product.

    ``y(theta_m) = y0 + dt * sum_i W_mi k_i`` with ``W_mi = b_i(theta_m)``: the stages are stacked
    once into an ``(s, N)`` matrix and ``addmm`` forms every output at once, instead of ``s``
    additions per output time; a step with several output times costs about five tensor
    operations in all.
    """
    s = len(dense)
    w = _weight_matrix([x for th in thetas for x in _weights(dense, th)], len(thetas), y0)  # (m, s)
    stages = torch.stack(k[:s]).reshape(s, -1)  # (s, N)
    out = torch.addmm(y0.reshape(1, -1), w, stages, alpha=dt)  # (m, N)
    return list(out.view(len(thetas), *y0.shape).unbind(0))


def hermite_many(
    y0: torch.Tensor, y1: torch.Tensor, f0: torch.Tensor, f1: torch.Tensor, dt: float, thetas: list[float]
) -> list[torch.Tensor]:
    """:func:`hermite` at several ``theta`` of one step, in one matrix product."""
    w = _weight_matrix([x for th in thetas for x in _hermite_weights(th, dt)], len(thetas), y0)  # (m, 3)
    basis = torch.stack([y1 - y0, f0, f1]).reshape(3, -1)  # (3, N)
    out = torch.addmm(y0.reshape(1, -1), w, basis)
    return list(out.view(len(thetas), *y0.shape).unbind(0))
