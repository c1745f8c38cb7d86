"""The Method protocol: what every integration method declares and provides to the solvers.

A :class:`Method` is one family's behaviour around one coefficient record (``method.tableau``: a
:class:`~neuralode.solvers.methods.tableau.ButcherTableau`, a Rosenbrock, ESDIRK or Radau tableau, an Adams record,
...), which stays plain data. The code that sets up and runs a solve asks the method, never the record's type
or attributes, what it is:

* ``name``, ``order``, ``error_order``: the method's name and orders (``error_order`` is that of the embedded
  solution behind the error estimate; the step-size controller uses ``min(order, error_order) + 1``);
* ``capabilities``: a :class:`Capabilities`, what the method supports; a solve asking for anything it does
  not support is refused before it starts, with an error naming the option;
* ``options_type``: the dataclass its ``options`` dict is parsed into;
* ``stepper(problem, opts=, config=, error=, checkpoint=)``: a
  :class:`~neuralode.solvers.methods.stepper.Stepper` for one solve, which takes the steps and is told of their
  acceptance;
* ``interpolant(opts)``: the class that fills the solution between the ends of a step (a
  :class:`~neuralode.solvers.methods.interpolants.StepInterpolant`: outputs, event roots, dense output).

A method with ``capabilities.own_driver`` (``scipy_solver``) runs a whole solve itself with ``run``; it has no
stepper and no interpolant.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..solution import Solution
    from .tableau import ButcherTableau


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What a method supports; every flag ``False`` is refused at the public boundary when asked for.

    Attributes:
        adaptive: controls its step size from an error estimate (``rtol``/``atol`` apply); else it steps
            on a fixed grid (``step_size``, ``grid_constructor`` or the output times).
        own_dense: has its own continuous extension (else outputs inside a step, dense output and event
            location use cubic Hermite or linear interpolation).
        events: ``events=`` / ``event_fn=`` are watched.
        per_sample: ``options={"per_sample": True}`` (a clock per sample of the batch).
        compile: ``options={"compile": True}`` (the step as one ``torch.compile`` graph).
        checkpoint: ``options={"checkpoint": True}`` is accepted.
        adjoint: usable as the forward method of ``odeint_adjoint``.
        torch_func: runs inside ``torch.func`` transforms (``jvp``, ``jacfwd``, ``vmap``).
        implicit: solves linear systems with the Jacobian of ``func`` (a stiff method).
        half: float16 and bfloat16 states.
        own_driver: runs the whole solve itself (``run``), not the solvers' loop.
    """

    adaptive: bool
    own_dense: bool
    events: bool = True
    per_sample: bool = False
    compile: bool = False
    checkpoint: bool = True
    adjoint: bool = True
    torch_func: bool = False
    implicit: bool = False
    half: bool = True
    own_driver: bool = False


class Method:
    """An integration method: a family's behaviour around one coefficient record (see the module docstring).

    Subclasses set ``tableau`` (the record), ``capabilities`` and ``options_type`` and implement
    :meth:`stepper` and :meth:`interpolant`. ``name``, ``order`` and ``error_order`` are read from the
    record.
    """

    tableau: Any
    capabilities: Capabilities
    options_type: type

    def __init__(self, tableau: Any):
        self.tableau = tableau

    @property
    def name(self) -> str:
        return self.tableau.name

    @property
    def order(self) -> int | None:
        """Order of the propagated solution; ``None`` for a method whose driver chooses it (``scipy_solver``)."""
        return self.tableau.order

    @property
    def error_order(self) -> int | None:
        """Order of the embedded solution behind the error estimate: an int for every adaptive method; ``None``
        for a fixed-step explicit Runge-Kutta method (no estimate) and ``scipy_solver``."""
        return self.tableau.error_order

    @property
    def adaptive(self) -> bool:
        """``capabilities.adaptive``, the flag callers ask most."""
        return self.capabilities.adaptive

    # The generic explicit Runge-Kutta tableau the fast paths (fixed_grid, compiled chunks) and the cached
    # stage times may reproduce the step from: set by the explicit Runge-Kutta methods only.
    explicit_tableau: ButcherTableau | None = None

    def stepper(self, problem, *, opts, config=None, error=None, checkpoint: bool = False):
        """A :class:`~neuralode.solvers.methods.stepper.Stepper` for one solve of ``problem`` (the adapted ``func``).

        Args:
            problem: the solve's :class:`~neuralode.solvers.problem._Problem`.
            opts: the parsed options (an instance of ``options_type``).
            config: what the step needs besides the state (the Adams methods' orders and corrector
                tolerances), or ``None``.
            error: the solve's error norm (adaptive methods; ESDIRK sets its Newton tolerance from it).
            checkpoint: recompute each step in backward (``torch.utils.checkpoint``) when autograd records.
        """
        raise NotImplementedError(f"method {self.name!r} has no stepper (it runs its own driver)")

    def step_config(self, opts, rtol, atol) -> Any:
        """What the steps need besides the state, built once per solve from the options and the tolerances
        (the stepper receives it as ``config``; ``None`` when nothing)."""
        return None

    def interpolant(self, opts) -> type:
        """The :class:`~neuralode.solvers.methods.interpolants.StepInterpolant` subclass that fills the solution
        between step ends for a solve with options ``opts``."""
        raise NotImplementedError(f"method {self.name!r} has no interpolant (it runs its own driver)")

    def run(self, func, y0, t, times, rtol, atol, opts) -> Solution:
        """The whole solve, for a method with ``capabilities.own_driver``: a
        :class:`~neuralode.solvers.solution.Solution`."""
        raise NotImplementedError(f"method {self.name!r} has no driver of its own (it runs in the solvers' loop)")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"
