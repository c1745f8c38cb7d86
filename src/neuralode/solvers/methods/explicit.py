"""The explicit families: Runge-Kutta methods given by a Butcher tableau, and the Adams methods."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import torch

from ..options import AdamsOptions, AdaptiveOptions, FixedOptions
from ..solution import BackwardRecord
from .adams import AdamsMethod
from .base import Capabilities, Method
from .interpolants import StepInterpolant, explicit_interpolant, fixed_grid_interpolant
from .stepper import Stepper, rk_step, step_plan
from .tableau import ButcherTableau


class RKStepper(Stepper):
    """The generic explicit Runge-Kutta step (:func:`~neuralode.solvers.methods.stepper.rk_step`) of one tableau."""

    __slots__ = ("problem", "tableau", "plan")

    def __init__(self, problem, tableau: ButcherTableau):
        self.problem, self.tableau, self.plan = problem, tableau, step_plan(tableau)

    def __call__(self, side, t, y, f0, h, stage, memory=None):
        if f0 is None:
            f0 = self.problem(t, y, side)
        return f0, rk_step(stage, t, y, f0, h, self.tableau, self.plan)


class FunctionStepper(Stepper):
    """A stepper given as a function with the :class:`Stepper` call signature and no state across steps
    (the compiled Runge-Kutta step, :func:`~neuralode.solvers.methods.compiled.compiled_stepper`)."""

    __slots__ = ("take",)

    def __init__(self, take):
        self.take = take

    def __call__(self, side, t, y, f0, h, stage, memory=None):
        return self.take(side, t, y, f0, h, stage, memory)


class CheckpointedStepper(Stepper):
    """``inner``'s steps run under ``torch.utils.checkpoint``: backward keeps only each step's inputs and
    recomputes its stages (the evaluation of ``f0`` included).

    A ``func`` that differentiates inside itself (``torch.autograd.grad`` in its forward pass, as a continuous
    normalizing flow's exact trace does) reads tensors the checkpoint has not kept, and PyTorch's (non-reentrant)
    checkpoint then re-runs the step so far to serve each such read, during the forward pass: several times the
    evaluations, and more memory than backpropagation. The gradient stays right; the stepper notices the re-runs
    (the step's function entered more than once in one forward call) and warns once, naming the option that
    does not have this cost, ``options={"checkpoints": "auto"}``, which runs the forward pass without a graph.

    The backward pass is counted in the solve's :class:`~neuralode.solvers.solution.BackwardRecord`
    (``Solution.adjoint_stats``): a call of the step outside the forward call is backward's re-run; an accepted
    step's inputs (state, reused derivative, the Adams history) are what the checkpoint keeps for it.
    """

    __slots__ = ("inner", "entered", "warned", "problem", "record", "forwarding")

    def __init__(self, inner: Stepper, problem):
        self.inner = inner
        self.entered = 0
        self.warned = False
        self.problem = problem
        if problem.backward is None:
            problem.backward = BackwardRecord()
        self.record: BackwardRecord = problem.backward
        self.forwarding = False

    def _counted(self, *args):
        self.entered += 1
        if self.forwarding:
            return self.inner(*args)
        return self.record.rerun(self.problem.stats, self.inner, *args)

    def __call__(self, side, t, y, f0, h, stage, memory=None):
        from torch.utils.checkpoint import checkpoint as run_checkpointed

        self.entered = 0
        self.record.attempt(f0, y, memory)
        self.forwarding = True
        try:
            out = run_checkpointed(self._counted, side, t, y, f0, h, stage, memory, use_reentrant=False)
        finally:
            self.forwarding = False
        if self.entered > 1 and not self.warned:
            self.warned = True
            warnings.warn(
                f"options['checkpoint']: func differentiates inside itself (torch.autograd.grad in its forward "
                f"pass, e.g. an exact divergence), so torch.utils.checkpoint re-ran a step {self.entered - 1} "
                f"more time(s) during the forward pass to serve it: more evaluations and memory than without "
                f"checkpointing. options={{'checkpoints': 'auto'}} (adjoint='checkpoints') gives the same "
                f"gradient without this cost.",
                UserWarning,
                stacklevel=2,
            )
        return out

    def settle(self, accepted: bool) -> None:
        self.record.settle(accepted, self.problem.stats)
        self.inner.settle(accepted)


def checkpointed(stepper: Stepper, checkpoint: bool, problem) -> Stepper:
    """``stepper`` (of ``problem``), under gradient checkpointing when asked for and autograd is recording."""
    return CheckpointedStepper(stepper, problem) if checkpoint and torch.is_grad_enabled() else stepper


class ExplicitRK(Method):
    """An explicit Runge-Kutta method: its :class:`~neuralode.solvers.methods.tableau.ButcherTableau` (``tableau``)
    stepped by the generic :func:`~neuralode.solvers.methods.stepper.rk_step`.

    Adaptive when the tableau has an embedded error estimate (``b_err``), fixed-step otherwise. Its own
    continuous extension (``dense`` or ``dense_extra``) fills outputs inside adaptive steps, else cubic
    Hermite; a fixed grid interpolates as ``options['interp']`` says.
    """

    tableau: ButcherTableau

    def __init__(self, tableau: ButcherTableau):
        super().__init__(tableau)
        adaptive = tableau.adaptive
        self.capabilities = Capabilities(
            adaptive=adaptive,
            own_dense=tableau.dense is not None or tableau.dense_extra is not None,
            per_sample=adaptive,
            compile=True,
            torch_func=True,
        )
        self.options_type = AdaptiveOptions if adaptive else FixedOptions
        self.explicit_tableau = tableau

    def stepper(self, problem, *, opts, config=None, error=None, checkpoint: bool = False) -> Stepper:
        if opts.execution.compile:
            from .compiled import compiled_stepper

            backend = "inductor" if opts.execution.compile is True else opts.execution.compile
            return FunctionStepper(compiled_stepper(problem, self.tableau, backend, problem.stats))
        return checkpointed(RKStepper(problem, self.tableau), checkpoint, problem)

    def interpolant(self, opts) -> type[StepInterpolant]:
        if not self.capabilities.adaptive:
            return fixed_grid_interpolant(opts.output.interp)
        return explicit_interpolant(self.tableau)


class AdamsStepper(Stepper):
    """One Adams step (:meth:`~neuralode.solvers.methods.adams.AdamsMethod.step`) from the history ``memory``."""

    __slots__ = ("problem", "record", "config")

    def __init__(self, problem, record: AdamsMethod, config):
        self.problem, self.record, self.config = problem, record, config

    def __call__(self, side, t, y, f0, h, stage, memory=None):
        if f0 is None:
            f0 = self.problem(t, y, side)
        return f0, self.record.step(stage, t, y, f0, h, memory, self.config)


class Adams(Method):
    """The fixed-grid Adams methods (``explicit_adams``, ``implicit_adams`` = ``fixed_adams``): a history of
    derivatives carried by the loop as ``StepResult.memory``, started with rk4_38 steps."""

    tableau: AdamsMethod
    capabilities = Capabilities(adaptive=False, own_dense=False, torch_func=True)
    options_type = AdamsOptions

    @property
    def error_order(self) -> int:
        return self.tableau.order  # no error estimate: the method's order

    def step_config(self, opts: AdamsOptions, rtol, atol) -> SimpleNamespace:
        """The orders and the corrector's iteration limit and tolerances (``rtol``/``atol`` as checked)."""
        adams = opts.method
        return SimpleNamespace(max_order=adams.max_order, max_iters=adams.max_iters, rtol=rtol, atol=atol)

    def stepper(self, problem, *, opts, config=None, error=None, checkpoint: bool = False) -> Stepper:
        return checkpointed(AdamsStepper(problem, self.tableau, config), checkpoint, problem)

    def interpolant(self, opts) -> type[StepInterpolant]:
        return fixed_grid_interpolant(opts.output.interp)
