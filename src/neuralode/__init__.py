"""neuralode: Neural Ordinary Differential Equations on PyTorch.

``from neuralode import odeint`` is a drop-in replacement for ``from torchdiffeq import odeint``;
``neuralode.install_torchdiffeq_alias()`` makes ``import torchdiffeq`` itself, and the
``torchdiffeq._impl`` imports some programs use, give neuralode.
"""

from importlib import metadata as _metadata

from . import _impl as _impl
from ._impl import install_torchdiffeq_alias
from .solvers import (
    IMPLICIT_METHODS,
    METHODS,
    AdamsSettings,
    AdaptiveOptions,
    AdjointChoice,
    ButcherTableau,
    Event,
    EventRecord,
    Execution,
    FixedGrid,
    FixedOptions,
    ImplicitOptions,
    ImplicitSettings,
    Options,
    Output,
    PerSampleStats,
    Perturb,
    RadauSettings,
    Solution,
    SolverError,
    SolverStats,
    StepControl,
    Stops,
    choose_adjoint,
    get_tableau,
    odeint,
    odeint_adjoint,
    odeint_dense,
    odeint_event,
    solve,
    solve_adjoint,
)

try:
    # The version lives in pyproject.toml only; an installed package (wheel or editable) knows it.
    __version__: str = _metadata.version("neuralode")
except _metadata.PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"

__all__ = [
    "IMPLICIT_METHODS",
    "METHODS",
    "AdamsSettings",
    "AdjointChoice",
    "AdaptiveOptions",
    "ButcherTableau",
    "Event",
    "EventRecord",
    "Execution",
    "FixedGrid",
    "FixedOptions",
    "ImplicitOptions",
    "ImplicitSettings",
    "Options",
    "Output",
    "Perturb",
    "RadauSettings",
    "PerSampleStats",
    "Solution",
    "SolverError",
    "SolverStats",
    "StepControl",
    "Stops",
    "choose_adjoint",
    "get_tableau",
    "install_torchdiffeq_alias",
    "odeint",
    "odeint_adjoint",
    "odeint_dense",
    "odeint_event",
    "solve",
    "solve_adjoint",
]
