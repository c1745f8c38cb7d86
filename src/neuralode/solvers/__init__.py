"""The numerical core: the methods (``methods/``: the Method protocol and the one registry), the steppers, step-size control, dense output, events and the loops.

Imports torch only; knows nothing of layers, models, data, plotting or the CLI.
"""

from .adjoint.backsolve import odeint_adjoint, solve_adjoint
from .adjoint.common import in_adjoint_backward
from .adjoint.modes import choose_adjoint
from .api import METHODS, odeint, odeint_dense, odeint_event, solve
from .errors import SolverError
from .events.core import Event
from .methods import Capabilities, Method
from .methods.implicit_options import ImplicitOptions, ImplicitSettings, RadauSettings
from .methods.registry import IMPLICIT_METHODS, get_tableau
from .methods.tableau import ButcherTableau
from .options import (
    AdamsSettings,
    AdaptiveOptions,
    Execution,
    FixedGrid,
    FixedOptions,
    Options,
    Output,
    StepControl,
    Stops,
)
from .problem import Perturb
from .solution import AdjointChoice, EventRecord, PerSampleStats, Solution, SolverStats

__all__ = [
    "AdamsSettings",
    "AdjointChoice",
    "Execution",
    "FixedGrid",
    "ImplicitSettings",
    "Options",
    "Output",
    "RadauSettings",
    "StepControl",
    "Stops",
    "IMPLICIT_METHODS",
    "METHODS",
    "AdaptiveOptions",
    "ButcherTableau",
    "Capabilities",
    "choose_adjoint",
    "Method",
    "Perturb",
    "Event",
    "EventRecord",
    "FixedOptions",
    "ImplicitOptions",
    "PerSampleStats",
    "Solution",
    "SolverError",
    "SolverStats",
    "get_tableau",
    "in_adjoint_backward",
    "odeint",
    "odeint_adjoint",
    "odeint_dense",
    "odeint_event",
    "solve",
    "solve_adjoint",
]
