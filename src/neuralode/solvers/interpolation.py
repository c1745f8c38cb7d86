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
from collections.abc import Callable
from functools import cache

import torch

from .stepper import combine
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


def _hermite_weights(theta: float, dt: float) -> tuple[float, float, float]:
    """``(h01, dt h10, dt h11)`` of :func:`hermite` at ``theta``."""
    t2 = theta * theta
    t3 = t2 * theta
    return -2.0 * t3 + 3.0 * t2, (t3 - 2.0 * t2 + theta) * dt, (t3 - t2) * dt


def continuous_extension(
    y0: torch.Tensor, k: tuple[torch.Tensor, ...], dt: float, dense: tuple[tuple[float, ...], ...], theta: float
) -> torch.Tensor:
    """A Runge-Kutta method's own dense output ``y0 + dt sum_i b_i(theta) k_i``."""
    return combine(y0, dt, [(i, bi) for i, bi in enumerate(_weights(dense, theta)) if bi != 0.0], k)


@cache
def _extra_rows(tableau: ButcherTableau) -> tuple[tuple[tuple[int, float], ...], ...]:
    """Nonzero ``(l, a_extra_jl)`` pairs of each extra stage's row, computed once per tableau."""
    return tuple(tuple((l, x) for l, x in enumerate(row) if x != 0.0) for row in tableau.a_extra or ())


def dense_stages(
    func: Callable[[float, torch.Tensor], torch.Tensor],
    t0: float,
    y0: torch.Tensor,
    k: tuple[torch.Tensor, ...],
    dt: float,
    tableau: ButcherTableau,
) -> tuple[torch.Tensor, ...]:
    """The stages a tableau evaluates only for dense output (``tableau.extra_stages`` calls of ``func``).

    Extra stage ``j`` is ``f(t0 + c_extra_j dt, y0 + dt * sum_l a_extra_jl k_l)``, where ``k_l`` runs over the
    step's ``s`` stages and then the extra stages before ``j``.

    Args:
        func: ``func(t, y) -> dy/dt`` with ``t`` a Python float, the same function the step was taken with
            (as for :func:`~neuralode.solvers.stepper.rk_step`).
        t0, y0, dt: the start, state and size of the accepted step.
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
    for c_j, row in zip(tableau.c_extra, _extra_rows(tableau)):
        stages.append(func(t0 + c_j * dt, combine(y0, dt, row, stages)))
    return tuple(stages[len(k) :])


def _weights(dense: tuple[tuple[float, ...], ...], theta: float) -> list[float]:
    """``b_i(theta) = sum_j P_ij theta^(j+1)`` of a continuous extension for every stage, by
    Horner's rule."""
    out = []
    for row in dense:
        bi = 0.0
        for p in reversed(row):
            bi = (bi + p) * theta
        out.append(bi)
    return out


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
