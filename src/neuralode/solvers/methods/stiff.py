"""The stiff families: Rosenbrock, ESDIRK, Radau IIA, the fixed-grid implicit Runge-Kutta methods and ``auto``.

Each wraps its coefficient record; its stepper is its own family's (``make_stepper`` of
:mod:`~neuralode.solvers.methods.rosenbrock`, :mod:`~neuralode.solvers.methods.esdirk`, :mod:`~neuralode.solvers.methods.radau`,
:mod:`~neuralode.solvers.methods.implicit_fixed`, :func:`~neuralode.solvers.methods.auto.make_auto_stepper`): a
:class:`~neuralode.solvers.methods.jacobian.ImplicitStepper` with the loop's calling convention, its Jacobian,
factorisations and polynomial in a named record, told of every decision by ``settle``.
"""

from __future__ import annotations

import dataclasses

from .auto import AutoSwitching, make_auto_stepper
from .base import Capabilities, Method
from .esdirk import ESDIRKTableau
from .esdirk import make_stepper as make_esdirk_stepper
from .implicit_fixed import ImplicitFixedOptions, ImplicitRK
from .implicit_fixed import make_stepper as make_fixed_stepper
from .implicit_options import AutoOptions, ImplicitOptions, RadauOptions
from .interpolants import (
    AutoInterpolant,
    Hermite,
    RadauInterpolant,
    RosenbrockInterpolant,
    StepInterpolant,
    fixed_grid_interpolant,
)
from .radau import RadauTableau
from .radau import make_stepper as make_radau_stepper
from .rosenbrock import make_stepper as make_rosenbrock_stepper
from .rosenbrock_tableaus import RosenbrockTableau
from .stepper import Stepper

# What the stiff methods support: Jacobians by torch.autograd.grad (no torch.func transforms), LU
# factorisations (no float16/bfloat16 kernels in torch), one clock for the batch.
STIFF = Capabilities(adaptive=True, own_dense=True, implicit=True, half=False)


class Rosenbrock(Method):
    """Linearly implicit Runge-Kutta (Rosenbrock) methods: one LU factorisation per step, no Newton iteration
    (:class:`~neuralode.solvers.methods.rosenbrock_tableaus.RosenbrockTableau`)."""

    tableau: RosenbrockTableau
    # options['compile']: the run of steps compiled without autograd (fast/device_run.py); elsewhere the
    # solve runs eagerly, with a warning naming why.
    capabilities = dataclasses.replace(STIFF, compile=True)
    options_type = ImplicitOptions

    def __init__(self, tableau: RosenbrockTableau):
        super().__init__(tableau)

    def stepper(self, problem, *, opts, config=None, error=None, checkpoint: bool = False) -> Stepper:
        return make_rosenbrock_stepper(problem, self.tableau, checkpoint, opts, problem, error)

    def interpolant(self, opts) -> type[StepInterpolant]:
        return RosenbrockInterpolant


class ESDIRK(Method):
    """Explicit-first-stage singly diagonally implicit Runge-Kutta methods: Newton per stage
    (:class:`~neuralode.solvers.methods.esdirk.ESDIRKTableau`); outputs inside a step by cubic Hermite."""

    tableau: ESDIRKTableau
    capabilities = Capabilities(adaptive=True, own_dense=False, implicit=True, half=False)
    options_type = ImplicitOptions

    def __init__(self, tableau: ESDIRKTableau):
        super().__init__(tableau)

    def stepper(self, problem, *, opts, config=None, error=None, checkpoint: bool = False) -> Stepper:
        return make_esdirk_stepper(problem, self.tableau, checkpoint, opts, problem, error)

    def interpolant(self, opts) -> type[StepInterpolant]:
        return Hermite


class Radau(Method):
    """Radau IIA collocation methods: simplified Newton on the collocation system
    (:class:`~neuralode.solvers.methods.radau.RadauTableau`); outputs from the collocation polynomial."""

    tableau: RadauTableau
    capabilities = STIFF
    options_type = RadauOptions

    def __init__(self, tableau: RadauTableau):
        super().__init__(tableau)

    def stepper(self, problem, *, opts, config=None, error=None, checkpoint: bool = False) -> Stepper:
        return make_radau_stepper(problem, self.tableau, checkpoint, opts, problem, error)

    def interpolant(self, opts) -> type[StepInterpolant]:
        return RadauInterpolant


class ImplicitFixed(Method):
    """torchdiffeq's fixed-grid implicit Runge-Kutta methods (``implicit_euler``, ...): Newton to convergence on
    every step of the grid (:class:`~neuralode.solvers.methods.implicit_fixed.ImplicitRK`)."""

    tableau: ImplicitRK
    capabilities = Capabilities(adaptive=False, own_dense=False, implicit=True, half=False)
    options_type = ImplicitFixedOptions

    def __init__(self, tableau: ImplicitRK):
        super().__init__(tableau)

    @property
    def error_order(self) -> int:
        return self.tableau.order  # no error estimate: the method's order

    def stepper(self, problem, *, opts, config=None, error=None, checkpoint: bool = False) -> Stepper:
        return make_fixed_stepper(problem, self.tableau, checkpoint, opts, problem, error)

    def interpolant(self, opts) -> type[StepInterpolant]:
        return fixed_grid_interpolant(opts.output.interp)


class Auto(Method):
    """``auto``: tsit5, switching to rodas5p while the problem is stiff and back
    (:class:`~neuralode.solvers.methods.auto.AutoSwitching`); outputs from the dense output of the method that took
    the step."""

    tableau: AutoSwitching
    capabilities = STIFF
    options_type = AutoOptions

    def __init__(self, tableau: AutoSwitching):
        super().__init__(tableau)

    def stepper(self, problem, *, opts, config=None, error=None, checkpoint: bool = False) -> Stepper:
        return make_auto_stepper(problem, self.tableau, checkpoint, opts, problem, error)

    def interpolant(self, opts) -> type[StepInterpolant]:
        return AutoInterpolant
