"""The solution inside one accepted step, one class per way of filling it, chosen by the Method.

Every loop reads between the ends of a step the same way: output times inside the step, the event
functions' values while a root is searched, the dense-output record, the interpolating adjoint. Each
:class:`~neuralode.solvers.methods.base.Method` names the class that does it for a solve
(``method.interpolant(opts)``), so that no loop asks which kind of method or interpolant it holds:

======================================  ===========================================================
:class:`Linear`                         ``y0 + θ (y1 - y0)``: a fixed grid's default (torchdiffeq's)
:class:`Hermite`                        cubic through ``(y0, f0)`` and ``(y1, f1)``; ``f1`` from FSAL or
                                        evaluated on first use; every method without a polynomial of
                                        its own
:class:`ContinuousExtension`            the method's own ``y0 + h sum_i b_i(θ) k_i`` from the stages
:class:`ExtendedContinuousExtension`    the same with extra stages, evaluated once on first use
                                        (dopri8's DOP853 interpolant)
:class:`RosenbrockInterpolant`          the Rosenbrock methods' stage polynomial
:class:`RadauInterpolant`               the Radau IIA collocation polynomial
:class:`AutoInterpolant`                whichever of the two the ``auto`` method's step was taken with
======================================  ===========================================================

Calling an interpolant with a list of ``θ`` (the host clock) returns their states in one pass;
:meth:`StepInterpolant.at_rows` evaluates a per-sample step (``t``, ``h`` as ``(B,)`` tensors) at one
``θ`` per row (the per-sample clock), with the same formulas given a step and ``θ`` per row. The formulas
themselves are in :mod:`~neuralode.solvers.methods.interpolation` and the families' modules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .auto import auto_dense
from .interpolation import (
    continuous_extension,
    continuous_extension_many,
    continuous_extension_rows,
    dense_stages,
    hermite,
    hermite_many,
    hermite_rows,
    linear,
)
from .radau import radau_dense
from .rosenbrock import rosenbrock_dense
from .stepper import StepResult
from .tableau import ButcherTableau


class StepInterpolant:
    """The solution inside one accepted step, ``θ in [0, 1]``: ``y(t + θ h)``.

    What is evaluated on first use (``f1``, extra stages) is cached, and the first use may be the event
    root finder, which probes the interpolant under ``torch.no_grad()``. So those evaluations run in the
    autograd mode the step itself was taken in (``grad``, recorded when the interpolant is built): the
    state at an event, the outputs after it and the next step's first stage (``f1``) then carry the same
    gradients as when nothing probed the step first.

    Args:
        problem: ``func`` as the loop calls it, ``problem(t, y, side)``.
        tableau: the method's coefficient record.
        t, y0, f0, h: the step's start, state, ``f(t, y0)`` and size (floats, or ``(B,)`` tensors per sample).
        step: the step's :class:`~neuralode.solvers.methods.stepper.StepResult` (end state, stages).
        f1: ``f(t1, y1)`` when known (FSAL), else ``None``.
        t1, f1_side: the step's end and the side of ``func`` taken there (-1 at a jump: from inside).
        stage_func: the function the step's stages were evaluated with (``None``: ``problem``).
        f0_side: the side of ``func`` at the start (+1 just after a jump).
    """

    __slots__ = (
        "problem",
        "tableau",
        "y0",
        "f0",
        "t",
        "h",
        "step",
        "f1",
        "t1",
        "f1_side",
        "stage_func",
        "k",
        "f0_side",
        "grad",
    )
    windowed = False  # a per-sample loop may evaluate it over a (B, m) window of θ (continuous extensions)

    def __init__(
        self,
        problem: Callable,
        tableau: Any,
        t,
        y0: torch.Tensor,
        f0: torch.Tensor,
        h,
        step: StepResult,
        f1: torch.Tensor | None,
        t1,
        f1_side: int,
        stage_func: Callable | None,
        f0_side: int = 0,
    ):
        self.problem, self.tableau = problem, tableau
        self.t, self.y0, self.f0, self.h, self.step = t, y0, f0, h, step
        self.f1, self.t1, self.f1_side = f1, t1, f1_side
        self.stage_func = problem if stage_func is None else stage_func
        self.k: tuple[torch.Tensor, ...] | None = None  # the stages with the extra ones, once evaluated
        self.f0_side = f0_side
        self.grad = torch.is_grad_enabled()

    def as_hermite(self, following: StepInterpolant | None = None) -> Hermite:
        """This step's cubic Hermite interpolant. ``f(t1, y1)`` is ``following.f0`` when ``following``
        (the next step's interpolant) starts where this step ends, from its end state, and both take
        ``func`` there plainly (no jump, no ``perturb`` side); else it is evaluated on first use."""
        f1 = self.f1
        if (
            f1 is None
            and following is not None
            and getattr(following, "y0", None) is self.step.y1
            and following.t == self.t1
            and self.f1_side == 0
            and following.f0_side == 0
        ):
            f1 = following.f0
        out = Hermite(
            self.problem,
            self.tableau,
            self.t,
            self.y0,
            self.f0,
            self.h,
            self.step,
            f1,
            self.t1,
            self.f1_side,
            self.stage_func,
            self.f0_side,
        )
        out.grad = self.grad
        return out

    def smooth(self, following: StepInterpolant | None = None) -> StepInterpolant:
        """This interpolant where it is smooth in ``θ`` (a polynomial of degree 3 or more); the step's cubic
        Hermite interpolant in place of a linear one. Event roots are located on it (a root of the linear
        interpolant is second-order in the step whatever the method), and so are the interpolating adjoint's
        states."""
        return self

    def __call__(self, thetas: list[float]) -> list[torch.Tensor]:
        """The states at ``thetas`` (floats), one pass: ``θ = 1`` is the end state itself, ``θ = 0`` the start."""
        y0, y1 = self.y0, self.step.y1
        inner = [th for th in thetas if 0.0 < th < 1.0]
        if len(inner) >= 2:
            # Several output times inside one step: one contraction for all of them, where the kind has one.
            values = self.many(inner)
            if values is not None:
                it = iter(values)
                return [y1 if th == 1.0 else y0 if th == 0.0 else next(it) for th in thetas]
        return [y1 if th == 1.0 else y0 if th == 0.0 else self.at(th) for th in thetas]

    def at(self, theta: float) -> torch.Tensor:
        """The state at one ``θ`` strictly inside the step."""
        raise NotImplementedError

    def many(self, thetas: list[float]) -> list[torch.Tensor] | None:
        """The states at several ``θ`` in one contraction, or ``None`` where the kind evaluates them one by one."""
        return None

    def at_rows(self, rows: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """States ``(K, N)`` of rows ``rows (K,)`` of a per-sample step at ``theta (K,)`` float64 (``θ = 1``: the
        end state exactly)."""
        raise NotImplementedError(f"{type(self).__name__} has no per-sample form")

    def at_window(self, theta: torch.Tensor) -> torch.Tensor:
        """States ``(B, m, N)`` of every row of a per-sample step at a ``(B, m)`` window of ``θ`` (float64), in one
        pass; for the kinds with ``windowed = True``. The caller handles ``θ = 1`` (the end state)."""
        raise NotImplementedError(f"{type(self).__name__} has no windowed per-sample form")

    def _extra_stages(self) -> tuple[torch.Tensor, ...]:
        """The step's stages followed by the continuous extension's extra ones, evaluated once; one that is
        ``f(t1, y1)`` (``tableau.end_stage``, dopri8_13m's) also serves as ``f1``, the next step's first stage."""
        k = self.k
        if k is None:
            with torch.set_grad_enabled(self.grad):
                extra = dense_stages(self.stage_func, self.t, self.y0, self.step.k, self.h, self.tableau)
            k = self.k = self.step.k + extra
            end = self.tableau.end_stage
            if self.f1 is None and end is not None and end >= len(self.step.k):
                self.f1 = k[end]
        return k

    def _end_derivative(self) -> torch.Tensor:
        """``f1 = f(t1, y1)`` for the Hermite interpolant, once, unless FSAL already gave it."""
        f1 = self.f1
        if f1 is None:
            with torch.set_grad_enabled(self.grad):
                f1 = self.f1 = self.problem(self.t1, self.step.y1, self.f1_side)
        return f1


class Linear(StepInterpolant):
    """``y0 + θ (y1 - y0)``: torchdiffeq's fixed-grid outputs (``options['interp'] = 'linear'``)."""

    __slots__ = ()

    def at(self, theta: float) -> torch.Tensor:
        return linear(self.y0, self.step.y1, theta)

    def smooth(self, following: StepInterpolant | None = None) -> StepInterpolant:
        return self.as_hermite(following)


class Hermite(StepInterpolant):
    """The cubic Hermite polynomial through ``(y0, f0)`` and ``(y1, f1)``: third-order accurate (local error
    ``O(h^4)``); ``f1`` from FSAL, else evaluated on first use with the side of ``func`` the step ends on."""

    __slots__ = ()

    def at(self, theta: float) -> torch.Tensor:
        return hermite(self.y0, self.step.y1, self.f0, self._end_derivative(), self.h, theta)

    def many(self, thetas: list[float]) -> list[torch.Tensor]:
        return hermite_many(self.y0, self.step.y1, self.f0, self._end_derivative(), self.h, thetas)

    def at_rows(self, rows: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        y0, y1, h = self.y0[rows], self.step.y1[rows], self.h[rows]
        f1 = self._end_derivative()
        out = hermite_rows(y0, y1, self.f0[rows], f1[rows], h, theta)
        return torch.where((theta == 1.0)[:, None], y1, out)


class ContinuousExtension(StepInterpolant):
    """The method's own continuous extension ``y0 + h sum_i b_i(θ) k_i`` from the step's stages
    (``tableau.dense``: dopri5's, tsit5's, ...); no evaluation of ``func``."""

    __slots__ = ()
    windowed = True

    def at(self, theta: float) -> torch.Tensor:
        return continuous_extension(self.y0, self.step.k, self.h, self.tableau.dense, theta)

    def many(self, thetas: list[float]) -> list[torch.Tensor]:
        return continuous_extension_many(self.y0, self.step.k, self.h, self.tableau.dense, thetas)

    def at_rows(self, rows: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        y0, y1, h = self.y0[rows], self.step.y1[rows], self.h[rows]
        out = continuous_extension_rows(y0, torch.stack(self.step.k, 1)[rows], h, self.tableau.dense, theta)
        return torch.where((theta == 1.0)[:, None], y1, out)

    def at_window(self, theta: torch.Tensor) -> torch.Tensor:
        return continuous_extension_rows(self.y0, torch.stack(self.step.k, 1), self.h, self.tableau.dense, theta)


class ExtendedContinuousExtension(StepInterpolant):
    """A continuous extension over the step's stages and extra ones (``tableau.dense_extra``: dopri8's three),
    evaluated once, on first use, with the function the step was taken with."""

    __slots__ = ()

    def at(self, theta: float) -> torch.Tensor:
        return continuous_extension(self.y0, self._extra_stages(), self.h, self.tableau.dense_extra, theta)

    def many(self, thetas: list[float]) -> list[torch.Tensor]:
        return continuous_extension_many(self.y0, self._extra_stages(), self.h, self.tableau.dense_extra, thetas)

    def at_rows(self, rows: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        y0, y1, h = self.y0[rows], self.step.y1[rows], self.h[rows]
        k = self._extra_stages()
        out = continuous_extension_rows(y0, torch.stack(k, 1)[rows], h, self.tableau.dense_extra, theta)
        return torch.where((theta == 1.0)[:, None], y1, out)


class RosenbrockInterpolant(StepInterpolant):
    """The Rosenbrock methods' dense output from their stages (:func:`~neuralode.solvers.methods.rosenbrock.rosenbrock_dense`)."""

    __slots__ = ()

    def at(self, theta: float) -> torch.Tensor:
        return rosenbrock_dense(self.y0, self.step.y1, self.step.k, self.tableau, theta)


class RadauInterpolant(StepInterpolant):
    """The Radau IIA collocation polynomial through the step's stage values (:func:`~neuralode.solvers.methods.radau.radau_dense`)."""

    __slots__ = ()

    def at(self, theta: float) -> torch.Tensor:
        return radau_dense(self.y0, self.step.k, self.tableau, theta)


class AutoInterpolant(StepInterpolant):
    """The ``auto`` method's step's own polynomial, tsit5's or rodas5p's (:func:`~neuralode.solvers.methods.auto.auto_dense`)."""

    __slots__ = ()

    def at(self, theta: float) -> torch.Tensor:
        return auto_dense(self.y0, self.step.y1, self.step.k, self.tableau, self.h, theta)


def fixed_grid_interpolant(interp: str) -> type[StepInterpolant]:
    """The interpolant of a fixed-grid solve: ``options['interp']``, linear (torchdiffeq's) or cubic Hermite."""
    return Linear if interp == "linear" else Hermite


def explicit_interpolant(tableau: ButcherTableau) -> type[StepInterpolant]:
    """An adaptive explicit Runge-Kutta method's: its own continuous extension, else cubic Hermite."""
    if tableau.dense is not None:
        return ContinuousExtension
    return ExtendedContinuousExtension if tableau.dense_extra is not None else Hermite
