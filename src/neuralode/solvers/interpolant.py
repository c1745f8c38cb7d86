"""The solution inside one accepted step of the joint loop, from the step's own stages.

:class:`StepInterpolant` is what the loop, its lean fixed-grid stretch and the event root finder read
between the ends of a step: output times inside the step, the event functions' values while a root
is searched, and the dense-output record.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .methods.auto import auto_dense
from .methods.interpolation import (
    continuous_extension,
    continuous_extension_many,
    dense_stages,
    hermite,
    hermite_many,
    linear,
)
from .methods.radau import radau_dense
from .methods.rosenbrock import rosenbrock_dense
from .methods.stepper import StepResult
from .methods.tableau import ButcherTableau
from .problem import _Problem


class StepInterpolant:
    """The solution inside one accepted step, ``theta in [0, 1]``: ``y(t + theta h)``.

    ``kind`` is ``"linear"``, ``"rosenbrock"`` / ``"radau"`` (the stiff methods' own polynomials, from the
    stages), ``"hermite"`` (cubic, needs ``f1 = f(t1, y1)``, evaluated on first
    use unless FSAL already has it), ``"dense"`` (the method's own continuous extension, from
    the stages) or ``"dense_extra"`` (a continuous extension that needs extra stages, dopri8's:
    evaluated once, on first use, with the function the step was taken with). Calling it with a
    list of ``theta`` returns the states in one pass.

    What is evaluated on first use (``f1``, the extra stages) is cached, and the first use may be
    the event root finder, which probes the interpolant under ``torch.no_grad()``. So those
    evaluations run in the autograd mode the step itself was taken in (``grad``, recorded when the
    interpolant is built): the state at an event, the outputs after it and the next step's first
    stage (``f1``) then carry the same gradients as when nothing probed the step first.
    """

    __slots__ = (
        "kind",
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

    def __init__(
        self,
        kind: str,
        problem: _Problem,
        tableau: ButcherTableau,
        t: float,
        y0,
        f0,
        h: float,
        step: StepResult,
        f1,
        t1: float,
        f1_side: int,
        stage_func: Callable | None,
        f0_side: int = 0,
    ):
        self.kind, self.problem, self.tableau = kind, problem, tableau
        self.t, self.y0, self.f0, self.h, self.step = t, y0, f0, h, step
        self.f1, self.t1, self.f1_side = f1, t1, f1_side
        self.stage_func = problem if stage_func is None else stage_func
        self.k = None
        self.f0_side = f0_side
        self.grad = torch.is_grad_enabled()

    def as_hermite(self, following: StepInterpolant | None = None) -> StepInterpolant:
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
        out = StepInterpolant(
            "hermite",
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

    def _extra_stages(self) -> None:
        """The continuous extension's extra stages, once; one that is ``f(t1, y1)`` (``tableau.end_stage``,
        dopri8_13m's) also serves as ``f1``, the next step's first stage."""
        if self.k is None:
            with torch.set_grad_enabled(self.grad):
                extra = dense_stages(self.stage_func, self.t, self.y0, self.step.k, self.h, self.tableau)
            self.k = self.step.k + extra
            end = self.tableau.end_stage
            if self.f1 is None and end is not None and end >= len(self.step.k):
                self.f1 = self.k[end]

    def _end_derivative(self) -> None:
        """``f1 = f(t1, y1)`` for the Hermite interpolant, once, unless FSAL already gave it."""
        if self.f1 is None:
            with torch.set_grad_enabled(self.grad):
                self.f1 = self.problem(self.t1, self.step.y1, self.f1_side)

    def __call__(self, thetas: list[float]) -> list[torch.Tensor]:
        y0, y1, h = self.y0, self.step.y1, self.h
        inner = [th for th in thetas if 0.0 < th < 1.0]
        if len(inner) >= 2 and self.kind in ("dense", "dense_extra", "hermite"):
            # Several output times inside one step: one contraction for all of them.
            if self.kind == "dense":
                values = continuous_extension_many(y0, self.step.k, h, self.tableau.dense, inner)
            elif self.kind == "dense_extra":
                self._extra_stages()
                values = continuous_extension_many(y0, self.k, h, self.tableau.dense_extra, inner)
            else:
                self._end_derivative()
                values = hermite_many(y0, y1, self.f0, self.f1, h, inner)
            it = iter(values)
            return [y1 if th == 1.0 else y0 if th == 0.0 else next(it) for th in thetas]
        out = []
        for theta in thetas:
            if theta == 1.0:
                out.append(y1)
            elif theta == 0.0:
                out.append(y0)
            elif self.kind == "dense":
                out.append(continuous_extension(y0, self.step.k, h, self.tableau.dense, theta))
            elif self.kind == "dense_extra":
                self._extra_stages()
                out.append(continuous_extension(y0, self.k, h, self.tableau.dense_extra, theta))
            elif self.kind == "auto":
                out.append(auto_dense(y0, y1, self.step.k, self.tableau, h, theta))
            elif self.kind == "rosenbrock":
                out.append(rosenbrock_dense(y0, y1, self.step.k, self.tableau, theta))
            elif self.kind == "radau":
                out.append(radau_dense(y0, self.step.k, self.tableau, theta))
            elif self.kind == "linear":
                out.append(linear(y0, y1, theta))
            else:
                self._end_derivative()
                out.append(hermite(y0, y1, self.f0, self.f1, h, theta))
        return out
