"""neuralode: Neural Ordinary Differential Equations on PyTorch.

``from neuralode import odeint`` is a drop-in replacement for ``from torchdiffeq import odeint``.
"""

from .solvers import (
    IMPLICIT_METHODS,
    METHODS,
    AdaptiveOptions,
    ButcherTableau,
    Event,
    EventRecord,
    FixedOptions,
    Perturb,
    ImplicitOptions,
    Solution,
    SolverError,
    SolverStats,
    get_tableau,
    odeint,
    odeint_adjoint,
    odeint_dense,
    odeint_event,
    solve,
    solve_adjoint,
)

__version__ = "0.1.0"

__all__ = [
    "IMPLICIT_METHODS",
    "METHODS",
    "AdaptiveOptions",
    "ButcherTableau",
    "Event",
    "EventRecord",
    "FixedOptions",
    "Perturb",
    "ImplicitOptions",
    "Solution",
    "SolverError",
    "SolverStats",
    "get_tableau",
    "odeint",
    "odeint_adjoint",
    "odeint_dense",
    "odeint_event",
    "solve",
    "solve_adjoint",
]
